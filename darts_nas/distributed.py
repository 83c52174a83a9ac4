"""Several processes, one run: ``torchrun`` support on top of ``torch.distributed``.

``torchrun --nproc-per-node N train_search.py ...`` (or ``train_final.py``) starts N copies of
the script; each finds ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` in its environment and
:func:`session` joins them into one process group (NCCL on GPUs, each process on the GPU of its
local rank; gloo on the CPU). Without those variables a run is the single process it always was:
:func:`session` yields a one-process :class:`Distributed` whose collectives are never called, so
single-process results do not change by a bit.

The data-parallel contract
--------------------------
``--batch-size`` is the *global* batch: every process reads ``batch_size / world_size`` images
per step. Each shuffled loader's order stays the single-process pass order of
:class:`darts_nas.data.PassSampler` (a function of the seed and the pass), and
:class:`ShardedPassSampler` hands rank ``r`` the ``r``-th slice of every global batch, so at step
``k`` the union of the ranks' batches is exactly the single-process batch ``k``. Evaluation
shards its loader without padding (:class:`ShardSampler`) and sums losses, hits and counts over
the ranks, so every image counts exactly once.

What differs from one process with the same global batch: BatchNorm in training mode normalises
with the statistics of each process's own share of the batch (``SyncBatchNorm`` fixes that for
the final training on GPUs; the search's functional architecture step keeps plain BatchNorm),
the augmentation's random draws, and the order of floating-point sums. The shuffled loaders
drop a last partial global batch (one process keeps it), so an epoch has ``floor(n / batch)``
steps.

Search: why ``all_reduce`` and not ``DistributedDataParallel``
--------------------------------------------------------------
The search takes gradients with ``torch.autograd.grad`` through ``torch.func.functional_call``
(with copied BatchNorm buffers and, for the second order, virtual weights that are not the
module's parameters); DDP's hooks fire only on ``backward()`` into the module's own parameters,
so they would average the weight step but not the architecture step, and not at all the virtual
step of the second order. The search therefore averages explicitly with
``torch.distributed.all_reduce``, one flattened bucket per gradient it needs
(:meth:`Distributed.average`): the weight gradients of the weight step
(:func:`darts_nas.engine.search_one_epoch`), and in the architecture step
(:class:`darts_nas.architect.Architect`) the alpha gradients of the first order; for the second
order the virtual step's weight gradients, then ``grad_alpha`` and ``grad_w'`` of ``L_val(w')``
together, then the finite-difference Hessian-vector product. Every rank thus computes the same
``w'``, the same ``eps`` and the same update, and after every step holds bit-identical weights
and alphas; at the end of every epoch the BatchNorm running statistics are averaged and
:meth:`Distributed.check_replicas` compares a SHA-256 of every rank's model state and genotype,
stopping the run loudly if they differ. The final training uses ``DistributedDataParallel``
(plus ``SyncBatchNorm`` on GPUs: it has no CPU implementation).

One writer
----------
Rank 0 prepares the run directory while the others wait, and alone writes logs, TensorBoard
files, genotypes, checkpoints and summaries (:meth:`Distributed.run_log` gives the others a
silent log; an error still reaches each process's stderr). Rank 0 reads a checkpoint and
broadcasts it, so the other nodes of a multi-node job need no shared filesystem. Checkpoints
hold the global state (model, optimizers, scheduler, loader position) plus every rank's random
states: resumed on the same number of processes a run continues exactly as if uninterrupted; on
another number it continues with the same data order, weights, alphas and optimizer states, but
other augmentation draws and BatchNorm batches. A restart by ``torchrun --max-restarts`` resumes
from the newest checkpoint (``--overwrite`` applies to the first attempt only). Collectives time
out after ``DARTS_NAS_DIST_TIMEOUT`` seconds (default 600), so a rank that hangs cannot hold the
others forever; a rank that dies ends the job through ``torchrun``.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import pickle
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from .data import InfiniteLoader, PassSampler, SearchData, TrainTestData
from .errors import ConfigError, DartsNasError
from .runtime import capture_rng_states, resolve_device, restore_rng_states, seed_everything
from .tracking import RunLog

T = TypeVar("T")

TIMEOUT_ENV = "DARTS_NAS_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 600.0
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


class DistributedError(DartsNasError):
    """The processes of a distributed run disagree, or cannot form a group."""


def launched_by_torchrun(environ: dict[str, str] | None = None) -> bool:
    """True when torchrun (or another launcher with its variables) started this process."""
    environ = os.environ if environ is None else environ
    return all(name in environ for name in TORCHRUN_VARIABLES)


def per_rank_batch(batch_size: int, world_size: int) -> int:
    """``batch_size`` is global: each of ``world_size`` processes reads an equal share of it."""
    if batch_size % world_size:
        lower = batch_size - batch_size % world_size
        raise ConfigError(
            f"--batch-size {batch_size} is the global batch and must be divisible by the {world_size} "
            f"processes: pass --batch-size {max(lower, world_size)} or {lower + world_size}")
    return batch_size // world_size


def timeout_seconds(environ: dict[str, str] | None = None) -> float:
    environ = os.environ if environ is None else environ
    text = environ.get(TIMEOUT_ENV)
    if text is None:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ConfigError(f"{TIMEOUT_ENV}={text!r} must be a positive number of seconds, e.g. 600")
    return value


# ---------------------------------------------------------------------------------------------
# Samplers: each rank's share of the single-process order
# ---------------------------------------------------------------------------------------------


class ShardedPassSampler(PassSampler):
    """Rank ``rank``'s share of every global batch of :class:`PassSampler`'s pass order.

    Global batch ``k`` of a pass is ``order[k * B : (k + 1) * B]`` (``B = batch_size``, global);
    this rank reads its ``r``-th slice of ``B / world_size`` indices, so the ranks' batches at
    step ``k`` together are exactly the single-process batch ``k``. A last partial global batch is
    dropped. ``start`` (set by :class:`darts_nas.data.InfiniteLoader` when resuming) counts
    indices of this rank's stream, ``B / world_size`` per global batch consumed.
    """

    def __init__(self, n: int, seed: int, batch_size: int, rank: int, world_size: int) -> None:
        super().__init__(n, seed)
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.per_rank = per_rank_batch(batch_size, world_size)

    def indices(self, pass_index: int) -> list[int]:
        order = self.order(pass_index)
        lo = self.rank * self.per_rank
        return [i for k in range(0, self.n - self.batch_size + 1, self.batch_size)
                for i in order[k + lo: k + lo + self.per_rank]]

    def __iter__(self):
        start, self.start = self.start, 0
        return iter(self.indices(self.pass_index)[start:])

    def __len__(self) -> int:
        return (self.n // self.batch_size) * self.per_rank


class ShardSampler(torch.utils.data.Sampler):
    """Indices ``rank, rank + world_size, ...`` of ``range(n)``: every index on exactly one rank,
    none repeated (``DistributedSampler`` pads with repeats to equal lengths)."""

    def __init__(self, n: int, rank: int, world_size: int) -> None:
        self.n, self.rank, self.world_size = n, rank, world_size

    def __iter__(self):
        return iter(range(self.rank, self.n, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world_size))


def _rebuild(loader: DataLoader, sampler: torch.utils.data.Sampler, batch_size: int, seed_offset: int
             ) -> DataLoader:
    """``loader`` with another sampler and batch size; its workers' seeds move by ``seed_offset``
    so that the ranks draw different augmentations."""
    extra: dict[str, Any] = {}
    if loader.num_workers > 0:
        extra = {"persistent_workers": loader.persistent_workers, "worker_init_fn": loader.worker_init_fn,
                 "prefetch_factor": loader.prefetch_factor}
    generator = torch.Generator().manual_seed(
        (loader.generator.initial_seed() if loader.generator is not None else 0) + seed_offset)
    return DataLoader(loader.dataset, batch_size=batch_size, sampler=sampler, drop_last=False,
                      num_workers=loader.num_workers, pin_memory=loader.pin_memory,
                      collate_fn=loader.collate_fn, generator=generator, **extra)


# ---------------------------------------------------------------------------------------------
# The processes of a run
# ---------------------------------------------------------------------------------------------


class SilentLog:
    """:class:`darts_nas.tracking.RunLog`'s interface for every rank but 0: writes nothing."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.quiet = True

    def info(self, message: str, console: bool = True) -> None:
        pass

    def to_file(self, message: str) -> None:
        pass

    def append_jsonl(self, name: str, record: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


def _shareable(error: BaseException) -> BaseException:
    """``error`` if it survives pickling (to be raised on the other ranks), else a summary."""
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:
        return DistributedError(f"{type(error).__name__}: {error}")


@dataclass
class Distributed:
    """This process's place in the run, and the collectives the loops use.

    With ``world_size == 1`` (no torchrun) every method is the single-process behaviour and no
    collective is ever called.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None
    restart_count: int = 0  # TORCHELASTIC_RESTART_COUNT: how often torchrun restarted the job
    log: Any = None  # the run's log once run_log made it (for notes from rank 0)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def sync(self) -> "Distributed | None":
        """What the loops of :mod:`darts_nas.engine` take as ``dist``: None for one process."""
        return self if self.is_distributed else None

    @property
    def checkpoint_location(self) -> torch.device:
        # Rank 0 reads and broadcasts checkpoints: through pickling, so on the CPU.
        return torch.device("cpu") if self.is_distributed else self.device

    def describe(self) -> dict[str, Any]:
        return {"world_size": self.world_size, "backend": self.backend, "restarts": self.restart_count}

    def _info(self, message: str) -> None:
        if self.log is not None:
            self.log.info(message)

    # -- collectives used by the loops -------------------------------------------------------
    def average(self, tensors: Sequence[torch.Tensor | None]) -> list[torch.Tensor | None]:
        """The mean over the ranks of each tensor (None stays None), through one flattened
        ``all_reduce`` per dtype: one bucket, one collective, whatever the number of tensors."""
        tensors = list(tensors)
        if not self.is_distributed:
            return tensors
        out: list[torch.Tensor | None] = list(tensors)
        by_dtype: dict[torch.dtype, list[int]] = {}
        for i, t in enumerate(tensors):
            if t is not None:
                by_dtype.setdefault(t.dtype, []).append(i)
        for positions in by_dtype.values():
            flat = torch.cat([tensors[i].detach().reshape(-1) for i in positions])
            dist.all_reduce(flat)
            flat /= self.world_size
            offset = 0
            for i in positions:
                n = tensors[i].numel()
                out[i] = flat[offset:offset + n].view_as(tensors[i])
                offset += n
        return out

    def average_gradients(self, parameters: Sequence[nn.Parameter]) -> None:
        """Replace each ``p.grad`` by its mean over the ranks (one bucket)."""
        params = [p for p in parameters if p.grad is not None]
        for p, g in zip(params, self.average([p.grad for p in params])):
            p.grad.copy_(g)

    def all_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The elementwise sum of ``tensor`` over the ranks (in place)."""
        if self.is_distributed:
            dist.all_reduce(tensor)
        return tensor

    def average_buffers(self, model: nn.Module) -> None:
        """Average the floating-point buffers (BatchNorm running statistics) over the ranks, so
        that evaluation and checkpoints see one model. For equal shares of a global batch the
        averaged running mean is the running mean of the global batches' means."""
        buffers = [b for b in model.buffers() if b.is_floating_point()]
        if self.is_distributed and buffers:
            with torch.no_grad():
                for b, mean in zip(buffers, self.average(buffers)):
                    b.copy_(mean)

    def check_replicas(self, model: nn.Module, genotype: Any = None) -> str:
        """SHA-256 of the model's state (weights, alphas, buffers) and the genotype; raises
        :class:`DistributedError` unless every rank has the same ("" for one process: nothing
        to compare)."""
        if not self.is_distributed:
            return ""
        digest = hashlib.sha256()
        for name, tensor in model.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        digest.update(str(genotype).encode())
        mine = digest.hexdigest()
        everyone: list[Any] = [None] * self.world_size
        dist.all_gather_object(everyone, (mine, str(genotype)))
        if len({d for d, _ in everyone}) != 1:
            detail = "; ".join(f"rank {r}: {d[:12]} {g}" for r, (d, g) in enumerate(everyone))
            raise DistributedError(f"the {self.world_size} processes no longer hold the same model ({detail}): "
                                   f"this is a bug in darts-nas's gradient averaging, please report it")
        return mine

    def barrier(self) -> None:
        if self.is_distributed:
            dist.barrier()

    # -- who does what -------------------------------------------------------------------------
    def on_main(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on rank 0 only and hand its result, or its exception, to every rank (the
        others wait meanwhile: preparing the run directory, reading a checkpoint)."""
        if not self.is_distributed:
            return fn()
        payload: list[Any] = [None, None]
        error: BaseException | None = None
        if self.is_main:
            try:
                payload[1] = fn()
            except Exception as exc:
                error = exc
                payload = [_shareable(exc), None]
        dist.broadcast_object_list(payload, src=0)
        if error is not None:
            raise error
        if payload[0] is not None:
            raise payload[0]
        return payload[1]

    def local_main_first(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on local rank 0 of every node first, then on the other ranks (a download
        into a directory the node's processes share happens once)."""
        if not self.is_distributed:
            return fn()
        result, error = None, None
        if self.local_rank == 0:
            try:
                result = fn()
            except Exception as exc:
                error = exc
        errors: list[Any] = [None] * self.world_size
        dist.all_gather_object(errors, None if error is None else _shareable(error))
        if error is not None:
            raise error
        first = next((e for e in errors if e is not None), None)
        if first is not None:
            raise first
        return fn() if self.local_rank != 0 else result

    def run_log(self, out: Path, quiet: bool = False):
        """The run's log on rank 0; a silent one on the others."""
        self.log = RunLog(out, quiet=quiet) if self.is_main else SilentLog(out)
        return self.log

    def resume_instead_of_overwrite(self, config):
        """After a torchrun restart, ``--overwrite`` would throw away the checkpoints written
        before the failure: a restarted run resumes instead."""
        if self.restart_count > 0 and getattr(config, "overwrite", False):
            return config.replace(overwrite=False)
        return config

    # -- data ------------------------------------------------------------------------------------
    def _offset(self) -> int:
        return 7919 * self.rank

    def shard_search_data(self, data: SearchData, batch_size: int) -> SearchData:
        """Each rank's share of both halves (global ``batch_size``) and of the evaluation pass."""
        if not self.is_distributed:
            return data
        b = per_rank_batch(batch_size, self.world_size)

        def sharded(loader: DataLoader) -> DataLoader:
            sampler = ShardedPassSampler(len(loader.dataset), loader.sampler.seed, batch_size, self.rank,
                                         self.world_size)
            return _rebuild(loader, sampler, b, self._offset())

        eval_loader = data.arch_eval_loader
        if eval_loader is not None:
            eval_loader = _rebuild(eval_loader, ShardSampler(len(eval_loader.dataset), self.rank, self.world_size),
                                   b, self._offset())
        return replace(data, weight_loader=sharded(data.weight_loader),
                       arch_loader=InfiniteLoader(sharded(data.arch_loader.loader)), arch_eval_loader=eval_loader)

    def shard_train_data(self, data: TrainTestData, batch_size: int) -> TrainTestData:
        """Each rank's share of the training batches (global ``batch_size``) and of the test set."""
        if not self.is_distributed:
            return data
        b = per_rank_batch(batch_size, self.world_size)
        train = data.train_loader
        sampler = ShardedPassSampler(len(train.dataset), train.sampler.seed, batch_size, self.rank, self.world_size)
        test, heldout = data.test_loader, data.heldout_loader
        return replace(data, train_loader=_rebuild(train, sampler, b, self._offset()),
                       test_loader=_rebuild(test, ShardSampler(len(test.dataset), self.rank, self.world_size),
                                            b, self._offset()),
                       heldout_loader=heldout if heldout is None else _rebuild(
                           heldout, ShardSampler(len(heldout.dataset), self.rank, self.world_size), b, self._offset()))

    # -- random states -------------------------------------------------------------------------
    def seed_ranks(self, seed: int, salt: int = 0) -> None:
        """Give every rank its own random stream (augmentation, drop-path) once the model is
        built from the common seed; nothing changes for one process."""
        if self.is_distributed:
            seed_everything(seed + 1_000_003 * (self.rank + 1) + 7919 * salt)

    def rng_states(self) -> dict[str, Any]:
        """The checkpoint's random states: ``rng`` (rank 0's, as a single process writes it)
        and, for several processes, every rank's in ``rng_ranks``. A collective."""
        states = capture_rng_states()
        if not self.is_distributed:
            return {"rng": states}
        everyone: list[Any] = [None] * self.world_size
        dist.all_gather_object(everyone, states)
        return {"rng": everyone[0], "rng_ranks": everyone, "world_size": self.world_size}

    def restore_rng_states(self, checkpoint: dict[str, Any], seed: int) -> None:
        """Each rank's own random states when the checkpoint's number of processes is this
        run's (an exact resume); otherwise fresh per-rank streams, said in the log."""
        ranks = checkpoint.get("rng_ranks")
        written_by = checkpoint.get("world_size", 1)
        if ranks is not None and len(ranks) == self.world_size:
            restore_rng_states(ranks[self.rank])
            return
        restore_rng_states(checkpoint["rng"])
        if written_by != self.world_size:
            self.seed_ranks(seed, salt=int(checkpoint.get("epoch", 0)) + 1)
            self._info(f"the checkpoint was written by {written_by} process(es) and this run has "
                       f"{self.world_size}: the data order, weights, alphas and optimizer states continue "
                       f"exactly; augmentation draws and per-process BatchNorm batches differ from an "
                       f"uninterrupted run")

    # -- the final training's model --------------------------------------------------------------
    def data_parallel(self, model: nn.Module, find_unused_parameters: bool = False) -> tuple[nn.Module, nn.Module]:
        """``(model, trained)``: on GPUs ``model`` with SyncBatchNorm, and the module the
        training loop calls (``DistributedDataParallel`` of it). One process: ``(model, model)``."""
        if not self.is_distributed:
            return model, model
        if self.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            self._info("SyncBatchNorm: BatchNorm statistics are computed over the global batch")
            trained = nn.parallel.DistributedDataParallel(model, device_ids=[self.device.index],
                                                          find_unused_parameters=find_unused_parameters)
        else:
            self._info("on the CPU each process's BatchNorm normalises with its own share of the batch "
                       "(SyncBatchNorm runs only on GPUs)")
            trained = nn.parallel.DistributedDataParallel(model, find_unused_parameters=find_unused_parameters)
        return model, trained

    def broadcast_parameters(self, model: nn.Module) -> None:
        """Rank 0's parameters and buffers on every rank (they start equal from the common seed;
        this makes sure)."""
        if self.is_distributed:
            with torch.no_grad():
                for t in list(model.parameters()) + list(model.buffers()):
                    dist.broadcast(t.data, src=0)


# ---------------------------------------------------------------------------------------------
# Joining and leaving the process group
# ---------------------------------------------------------------------------------------------

_ACTIVE: Distributed | None = None


def _device_for(name: str, local_rank: int) -> torch.device:
    """The device of this rank: the GPU of its local rank, or the CPU."""
    if name.startswith("cuda:"):
        raise ConfigError(f"--device {name}: under torchrun each process uses the GPU of its LOCAL_RANK; pass "
                          f"--device cuda (or auto) and choose the GPUs with CUDA_VISIBLE_DEVICES")
    device = resolve_device(name)  # auto -> cuda when available; cuda without a GPU -> ConfigError
    if device.type != "cuda":
        return device
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise ConfigError(f"LOCAL_RANK {local_rank} needs GPU {local_rank} but this node has {count}: start at "
                          f"most {count} processes per node (--nproc-per-node {count})")
    return torch.device("cuda", local_rank)


def _attempt_store(world_size: int, restart_count: int, timeout: datetime.timedelta) -> dist.Store | None:
    """torchrun's own store, with keys private to this attempt; None outside torchrun's agent.

    torchrun's agent shares one TCPStore between its rendezvous and the workers' process group
    and keeps it across ``--max-restarts`` restarts, so a restarted group would read the
    addresses its dead predecessors published under the same keys (gloo then connects to a
    dead port, NCCL to a stale unique id: pytorch/pytorch#135712). A prefix per restart keeps
    each attempt's keys apart; ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1`` on the torchrun command
    line avoids the shared store altogether.
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size,
                          is_master=False, timeout=timeout)
    return dist.PrefixStore(f"darts_nas/attempt{restart_count}", store)


@contextmanager
def session(device_name: str) -> Iterator[Distributed]:
    """This process's :class:`Distributed` for the length of a run.

    Under torchrun the process group is created here (and destroyed on leaving); a run inside a
    run (``train_final.py --compare``) shares the group of the outer one. Otherwise a
    one-process :class:`Distributed` on ``device_name``.
    """
    global _ACTIVE
    if _ACTIVE is not None:
        yield _ACTIVE
        return
    if not launched_by_torchrun():
        yield Distributed(device=resolve_device(device_name))
        return
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    restart_count = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    device = _device_for(device_name, local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    timeout = datetime.timedelta(seconds=timeout_seconds())
    kwargs: dict[str, Any] = {"backend": backend, "timeout": timeout}
    if device.type == "cuda":
        torch.cuda.set_device(device)
        kwargs["device_id"] = device
    try:
        store = _attempt_store(world_size, restart_count, timeout)
        if store is not None:
            kwargs.update(store=store, rank=rank, world_size=world_size)
        dist.init_process_group(**kwargs)
    except (RuntimeError, ValueError) as exc:
        raise DistributedError(f"rank {rank} could not join the process group of {world_size} ({exc}): check "
                               f"torchrun's --rdzv-endpoint / --master-addr and that every node can reach it") from None
    ctx = Distributed(rank=rank, world_size=world_size, local_rank=local_rank, device=device, backend=backend,
                      restart_count=restart_count)
    _ACTIVE = ctx
    finished = False
    try:
        yield ctx
        finished = True
    finally:
        _ACTIVE = None
        try:
            if finished:
                dist.barrier()  # every rank leaves once rank 0 has written everything
        finally:
            dist.destroy_process_group()
