"""torch.distributed: sharding, gradient averaging, one writer, killed ranks (real processes, gloo).

The spawned checks run two gloo processes on the CPU; the end-to-end ones launch the real scripts
with ``python -m torch.distributed.run`` (torchrun).
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from darts_nas.methods import METHODS
from darts_nas.architect import Architect
from darts_nas.checkpoint import load_checkpoint
from darts_nas.data import DigitsDataset, build_transform, get_info
from darts_nas.distributed import (Distributed, DistributedError, ShardedPassSampler, ShardSampler,
                                   launched_by_torchrun, per_rank_batch, timeout_seconds)
from darts_nas.engine import search_one_epoch
from darts_nas.errors import ConfigError
from darts_nas.runfiles import RunDirLock
from darts_nas.supernet import Supernet
from darts_nas.tracking import read_jsonl

ROOT = Path(__file__).resolve().parent.parent
TIMING = {"epoch_time", "elapsed", "images_per_s"}


# ---------------------------------------------------------------------------------------------
# Sharding (no processes needed)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("world_size", [1, 2, 4])
def test_ranks_batches_at_step_k_are_the_single_process_batch_k(world_size):
    n, batch = 37, 8
    single = ShardedPassSampler(n, seed=5, batch_size=batch, rank=0, world_size=1)
    ranks = [ShardedPassSampler(n, seed=5, batch_size=batch, rank=r, world_size=world_size)
             for r in range(world_size)]
    for pass_index in (0, 3):
        for s in [single, *ranks]:
            s.pass_index = pass_index
        order = single.order(pass_index)
        streams = [list(s) for s in ranks]
        b = batch // world_size
        assert all(len(stream) == len(s) == (n // batch) * b for stream, s in zip(streams, ranks))
        for k in range(n // batch):
            union = [i for stream in streams for i in stream[k * b:(k + 1) * b]]
            assert union == order[k * batch:(k + 1) * batch]  # the last partial batch is dropped
    # Resuming after 2 global batches skips 2 * b indices of each rank's stream.
    rank = ranks[-1]
    rank.pass_index, rank.start = 3, 2 * (batch // world_size)
    assert list(rank) == rank.indices(3)[2 * (batch // world_size):]


def test_evaluation_shards_count_every_image_once():
    for n, world_size in ((300, 2), (7, 3), (2, 4)):
        shards = [list(ShardSampler(n, r, world_size)) for r in range(world_size)]
        assert sorted(i for s in shards for i in s) == list(range(n))
        assert [len(ShardSampler(n, r, world_size)) for r in range(world_size)] == [len(s) for s in shards]


def test_batch_size_is_global_and_must_divide():
    assert per_rank_batch(64, 4) == 16
    message = r"--batch-size 30 is the global batch .* 4 processes: pass --batch-size 28 or 32"
    with pytest.raises(ConfigError, match=message):
        per_rank_batch(30, 4)


def test_torchrun_is_detected_by_its_variables():
    assert not launched_by_torchrun({})
    assert not launched_by_torchrun({"RANK": "0", "WORLD_SIZE": "2"})
    assert launched_by_torchrun({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"})
    assert timeout_seconds({}) == 600.0
    assert timeout_seconds({"DARTS_NAS_DIST_TIMEOUT": "30"}) == 30.0
    with pytest.raises(ConfigError, match="DARTS_NAS_DIST_TIMEOUT"):
        timeout_seconds({"DARTS_NAS_DIST_TIMEOUT": "soon"})


# ---------------------------------------------------------------------------------------------
# Two gloo processes: the search step under torch.distributed against one process
# ---------------------------------------------------------------------------------------------


def _without_batchnorm(model: nn.Module) -> nn.Module:
    """BatchNorm in training mode couples the images of a batch; without it a step on the
    global batch and the average of steps on its shards must agree to rounding."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.BatchNorm2d):
                setattr(module, name, nn.Identity())
    return model


def _supernet(batchnorm: bool, dtype: torch.dtype) -> Supernet:
    torch.manual_seed(0)
    model = Supernet(C=4, num_classes=10, layers=3, steps=2, in_channels=1).to(dtype)
    if not batchnorm:
        _without_batchnorm(model)
        with torch.no_grad():  # spread the alphas so the test is not degenerate
            for a in model.arch_parameters():
                a.normal_(0, 0.5)
    return model


def _search_steps(ctx, rank: int, world_size: int, *, unrolled: bool, batches):
    """Search steps (float64, no BatchNorm) on ``batches`` of global (weight, architecture)
    batches, reading this rank's share when ``ctx`` is given and the whole batches otherwise;
    returns (model, metrics)."""
    model = _supernet(batchnorm=False, dtype=torch.float64)
    w_opt = torch.optim.SGD(model.weights(), lr=0.05, momentum=0.9, weight_decay=3e-4)
    architect = Architect(model, w_opt, lr=0.01, unrolled=unrolled)

    def share(batch):
        if ctx is None:
            return batch
        b = batch[0].shape[0] // world_size
        return batch[0][rank * b:(rank + 1) * b], batch[1][rank * b:(rank + 1) * b]

    if ctx is not None:
        architect.average_gradients = ctx.average
    weight_batches = [share(w) for w, _ in batches]
    arch_batches = iter([share(a) for _, a in batches])
    # A small clip so that clipping acts: it must use the norm of the global gradient.
    metrics = search_one_epoch(model, architect, weight_batches, arch_batches, w_opt, device=torch.device("cpu"),
                               grad_clip=0.5, epoch=0, dist=ctx)
    return model, metrics


def _random_batches(steps: int, batch: int):
    g = torch.Generator().manual_seed(1)

    def one():
        images = torch.randn(batch, 1, 8, 8, generator=g, dtype=torch.float64)
        return images, torch.randint(0, 10, (batch,), generator=g)

    return [(one(), one()) for _ in range(steps)]


def _digits_batch(n: int):
    """The first ``n`` real 8x8 training digits, normalised, without augmentation."""
    transform = build_transform(get_info("digits", None, None), train=False)
    data = DigitsDataset(train=True, transform=transform)
    return torch.stack([data[i][0] for i in range(n)]), torch.tensor(data.targets[:n])


def _rank_main(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=60))
    try:
        ctx = Distributed(rank=rank, world_size=world_size, backend="gloo")
        # One bucket: means of every tensor, None kept.
        mean = ctx.average([torch.full((2, 3), float(rank)), None, torch.tensor([2.0 * rank], dtype=torch.float64)])
        assert torch.equal(mean[0], torch.full((2, 3), 0.5)) and mean[1] is None
        assert mean[2].dtype == torch.float64 and mean[2].item() == 1.0

        # Without BatchNorm, first and second order on shards equal one process on the global batch.
        batches = _random_batches(steps=2, batch=4)
        for unrolled in (False, True):
            ref, ref_metrics = _search_steps(None, rank, world_size, unrolled=unrolled, batches=batches)
            mine, metrics = _search_steps(ctx, rank, world_size, unrolled=unrolled, batches=batches)
            for key, value in ref.state_dict().items():
                assert torch.allclose(mine.state_dict()[key], value, rtol=1e-9, atol=1e-12), (unrolled, key)
            for key in ("train_loss", "train_acc", "arch_loss", "arch_acc"):
                assert metrics[key] == pytest.approx(ref_metrics[key], rel=1e-9), (unrolled, key)
            ctx.check_replicas(mine, mine.genotype())  # bit-identical on both ranks
        replica = mine

        # With BatchNorm (training mode), on a global batch of 32 real digits: each rank normalises
        # its 16 images with their own statistics, so the averaged gradients differ from the
        # global batch's (measured in the test below).
        x, y = _digits_batch(32)
        result = {}
        for name, reduce in (("single", None), ("ranks", ctx)):
            model = _supernet(batchnorm=True, dtype=torch.float32)
            architect = Architect(model, torch.optim.SGD(model.weights(), lr=0.05))
            b = 32 // world_size
            xs, ys = (x, y) if reduce is None else (x[rank * b:(rank + 1) * b], y[rank * b:(rank + 1) * b])
            architect.average_gradients = None if reduce is None else reduce.average
            alphas, _, _ = architect.first_order_grad((xs, ys))
            F.cross_entropy(model(xs), ys).backward(inputs=model.weights())
            if reduce is not None:
                reduce.average_gradients(model.weights())
            result[name] = {"alphas": torch.cat([g.flatten() for g in alphas]),
                            "weights": torch.cat([p.grad.flatten() for p in model.weights()])}
        if rank == 0:
            measured = {k: F.cosine_similarity(result["single"][k], result["ranks"][k], dim=0).item()
                        for k in ("alphas", "weights")}
            Path(out_dir, "batchnorm.json").write_text(json.dumps(measured))

        # Diverged replicas are caught by every rank.
        with torch.no_grad():
            replica.alphas_normal[0, 0] += 1e-6 * rank
        try:
            ctx.check_replicas(replica, replica.genotype())
        except DistributedError as exc:
            assert "no longer hold the same model" in str(exc)
        else:
            raise AssertionError("diverged replicas went unnoticed")

        # Random states: each rank has its own stream, and a checkpoint restores each rank's.
        ctx.seed_ranks(2)
        states = ctx.rng_states()
        assert len(states["rng_ranks"]) == world_size and states["world_size"] == world_size
        draw = torch.rand(3)
        torch.rand(5)
        ctx.restore_rng_states(states, seed=2)
        assert torch.equal(torch.rand(3), draw)
        gathered = [None] * world_size
        dist.all_gather_object(gathered, draw)
        assert not torch.equal(gathered[0], gathered[1])
    finally:
        dist.destroy_process_group()


def test_two_processes_search_like_one_on_the_global_batch(tmp_path):
    mp.spawn(_rank_main, args=(2, str(tmp_path / "rendezvous"), str(tmp_path)), nprocs=2, join=True)
    # Cosine similarity between the gradients of 2 x 16 images (per-rank BatchNorm) and of the
    # same 32 images in one process: measured 0.976 for the alphas and 0.956 for the weights.
    measured = json.loads((tmp_path / "batchnorm.json").read_text())
    assert measured["alphas"] > 0.9 and measured["weights"] > 0.9, measured


# ---------------------------------------------------------------------------------------------
# The real scripts under torchrun (python -m torch.distributed.run), two gloo ranks on the CPU
# ---------------------------------------------------------------------------------------------

SEARCH_ARGS = ["--dataset", "digits", "--init-channels", "4", "--layers", "3", "--nodes", "2", "--batch-size", "32",
               "--train-portion", "0.8", "--steps-per-epoch", "3", "--epochs", "2", "--no-tensorboard",
               "--device", "cpu", "--report-every", "100"]


def torchrun(script: str, args: list[str], cwd: Path, max_restarts: int = 0) -> subprocess.Popen:
    """Start ``script`` on two CPU ranks; stdout and stderr go to files in ``cwd``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "DARTS_NAS_DIST_TIMEOUT": "120"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "--max-restarts", str(max_restarts), "--monitor-interval", "0.1", str(ROOT / script), *args]
    # A session of its own, so that a failed test can end torchrun and its workers together.
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=open(cwd / "stdout.txt", "w"),
                            stderr=open(cwd / "stderr.txt", "w"), start_new_session=True)


def finish(process: subprocess.Popen, cwd: Path, timeout: float = 180) -> str:
    try:
        code = process.wait(timeout=timeout)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert code == 0, (cwd / "stderr.txt").read_text()[-4000:]
    return (cwd / "stdout.txt").read_text()


def comparable(out: Path):
    metrics = [{k: v for k, v in m.items() if k not in TIMING} for m in read_jsonl(out / "metrics.jsonl")]
    return metrics, read_jsonl(out / "history.jsonl"), (out / "genotype.json").read_text()


@pytest.fixture(scope="module")
def two_rank_search(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("two-ranks")
    stdout = finish(torchrun("train_search.py", [*SEARCH_ARGS, "--out", str(cwd / "run")], cwd), cwd)
    return cwd / "run", stdout


def test_two_rank_search_has_one_writer_and_one_model(two_rank_search):
    out, stdout = two_rank_search
    # Rank 0 alone logs (to the console and log.txt); the other rank prints nothing.
    assert stdout.count("search finished") == 1 and stdout.count("DARTS search") == 1
    log = (out / "log.txt").read_text()
    assert log.count("DARTS search") == 1 and "2 processes (gloo), global batch 32 = 2 x 16" in log
    # The run compared a checksum of every rank's weights, alphas, BN statistics and genotype.
    assert "all 2 processes hold the same weights, alphas and BatchNorm statistics" in log
    config = json.loads((out / "config.json").read_text())
    assert config["distributed"] == {"world_size": 2, "backend": "gloo", "restarts": 0}
    assert [m["steps"] for m in read_jsonl(out / "metrics.jsonl")] == [3, 3]
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["world_size"] == 2 and len(state["rng_ranks"]) == 2
    assert "module." not in "".join(state["model"])  # the plain model's state: resumable anywhere


@pytest.mark.parametrize("method", ["pc-darts", "gdas", "darts-minus", "beta-darts", "sdarts-rs", "sdarts-adv",
                                    "drnas", "fair-darts"])
def test_every_method_runs_under_torchrun_with_one_model(tmp_path, method):
    """Two gloo ranks: the betas are averaged like the alphas, and GDAS's samples are the same on
    every rank (a pure function of seed and step), so the replicas stay identical."""
    args = [*SEARCH_ARGS, "--method", method, "--out", str(tmp_path / "run")]
    stdout = finish(torchrun("train_search.py", args, tmp_path), tmp_path)
    log = (tmp_path / "run" / "log.txt").read_text()
    title = METHODS.get(method).title
    assert stdout.count("search finished") == 1 and log.count(f"{title} search, first order") == 1
    assert "all 2 processes hold the same weights, alphas and BatchNorm statistics" in log
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    if method == "gdas":
        assert state["method"]["draws"] == 2 * 3 * 2  # 2 epochs of 3 steps, 2 passes each, on every rank
    elif method == "pc-darts":
        assert "betas_normal" in state["model"]


def test_a_locked_directory_stops_every_rank_at_once(tmp_path):
    # Rank 0 alone takes the lock; its refusal must reach rank 1 too, which would otherwise wait
    # forever in the next collective.
    out = tmp_path / "run"
    out.mkdir()
    lock = RunDirLock()
    lock.acquire(out)  # this test's process holds the directory
    try:
        process = torchrun("train_search.py", [*SEARCH_ARGS, "--out", str(out)], tmp_path)
        try:
            code = process.wait(timeout=120)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
    finally:
        lock.release()
    err = (tmp_path / "stderr.txt").read_text()
    assert code != 0 and f"{out} is in use by another darts-nas run (process {os.getpid()})" in err, err[-3000:]
    assert sorted(p.name for p in out.iterdir()) == [".lock"]  # nothing written


def _worker_pids(parent: int) -> dict[int, int]:
    """{rank: pid} of the worker processes torchrun (pid ``parent``) started."""
    workers = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent:
            for item in environ:
                if item.startswith(b"RANK="):
                    workers[int(item[5:])] = int(entry.name)
    return workers


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the rank's process through /proc")
def test_killed_rank_restarts_and_resumes_exactly(tmp_path, two_rank_search):
    reference, _ = two_rank_search
    out = tmp_path / "run"
    process = torchrun("train_search.py", [*SEARCH_ARGS, "--out", str(out)], tmp_path, max_restarts=1)
    deadline = time.monotonic() + 180
    try:
        while not (out / "checkpoint-epoch0001.pt").exists():
            assert process.poll() is None, (tmp_path / "stderr.txt").read_text()[-4000:]
            assert time.monotonic() < deadline, "the run never wrote its first checkpoint"
            time.sleep(0.02)
        os.kill(_worker_pids(process.pid)[1], signal.SIGKILL)  # rank 1, during the second epoch
    finally:
        finish(process, tmp_path)
    log = (out / "log.txt").read_text()
    assert "resuming" in log and "after epoch 1 of 2" in log
    assert json.loads((out / "config.json").read_text())["distributed"]["restarts"] == 1
    # Same number of processes: the restarted job ends bit-identical to the uninterrupted one.
    assert comparable(out) == comparable(reference)
    a, b = load_checkpoint(out / "checkpoint.pt")["model"], load_checkpoint(reference / "checkpoint.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


TRAIN_ARGS = ["--cell", "darts_v2", "--dataset", "digits", "--init-channels", "4", "--layers", "3",
              "--batch-size", "32", "--steps-per-epoch", "3", "--epochs", "1", "--no-tensorboard", "--device", "cpu",
              "--report-every", "100"]


def test_two_rank_final_training_counts_every_test_image_once(tmp_path):
    from darts_nas.data import train_test_data
    from darts_nas.engine import evaluate
    from darts_nas.genotype import load_cell
    from darts_nas.network import NETWORKS

    out = tmp_path / "run"
    stdout = finish(torchrun("train_final.py", [*TRAIN_ARGS, "--out", str(out)], tmp_path), tmp_path)
    assert stdout.count("training finished") == 1
    log = (out / "log.txt").read_text()
    assert "SyncBatchNorm runs only on GPUs" in log and "images/s" in log
    summary = json.loads((out / "metrics.json").read_text())
    # The sharded evaluation of the two ranks equals one process reading all 300 test images.
    model = NETWORKS.get("cifar")(genotype=load_cell("darts_v2"), C=4, layers=3, num_classes=10, auxiliary=True,
                                  in_channels=1)
    model.load_state_dict(load_checkpoint(out / "checkpoint.pt")["model"])
    data = train_test_data("digits", None, 32)
    single = evaluate(model, data.test_loader, torch.device("cpu"))
    assert data.num_test == 300
    assert round(summary["final_test_acc"] * 3) == round(single["acc"] * 3)  # hits out of 300
    assert summary["final_test_loss"] == pytest.approx(single["loss"], rel=1e-5)


class _WorldOfOne(Distributed):
    """A one-process group that takes every distributed code path (collectives, DDP, SyncBN)."""

    is_distributed = property(lambda self: True)


@pytest.mark.parametrize("backend", ["gloo", pytest.param("nccl", marks=pytest.mark.needs_cuda)])
def test_distributed_code_paths_in_a_world_of_one(tmp_path, backend):
    from darts_nas.genotype import load_cell
    from darts_nas.network import NETWORKS

    device = torch.device("cuda", 0) if backend == "nccl" else torch.device("cpu")
    extra = {"device_id": device} if backend == "nccl" else {}
    dist.init_process_group(backend, init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1, **extra)
    try:
        ctx = _WorldOfOne(device=device, backend=backend)
        assert ctx.sync is ctx
        # The search's loop, gradients averaged through the backend: one rank changes nothing.
        model = _supernet(batchnorm=True, dtype=torch.float32).to(device)
        architect = Architect(model, torch.optim.SGD(model.weights(), lr=0.05, momentum=0.9), unrolled=True)
        architect.average_gradients = ctx.average
        batches = [((torch.randn(4, 1, 8, 8, device=device), torch.randint(0, 10, (4,), device=device)),) * 2]
        metrics = search_one_epoch(model, architect, [b for b, _ in batches], iter([a for _, a in batches]),
                                   architect.w_optimizer, device=device, grad_clip=5.0, epoch=0, dist=ctx)
        assert metrics["steps"] == 1 and metrics["train_loss"] > 0
        ctx.average_buffers(model)
        assert len(ctx.check_replicas(model, model.genotype())) == 64
        # The final network: DistributedDataParallel, with SyncBatchNorm on GPUs only.
        network = NETWORKS.get("cifar")(genotype=load_cell("darts_v2"), C=4, layers=3, num_classes=10,
                                        auxiliary=True, in_channels=1).to(device)
        network, trained = ctx.data_parallel(network)
        assert isinstance(trained, nn.parallel.DistributedDataParallel)
        synced = sum(isinstance(m, nn.SyncBatchNorm) for m in network.modules())
        assert (synced > 0) == (device.type == "cuda")
        x, y = torch.randn(8, 1, 8, 8, device=device), torch.randint(0, 10, (8,), device=device)
        logits, aux = trained(x)
        (F.cross_entropy(logits, y) + 0.4 * F.cross_entropy(aux, y)).backward()
        assert all(p.grad is not None for p in network.parameters())
        assert ctx.on_main(lambda: "rank 0's") == "rank 0's"
        assert set(ctx.rng_states()) == {"rng", "rng_ranks", "world_size"}
    finally:
        dist.destroy_process_group()


@pytest.mark.needs_cuda
def test_torchrun_on_one_gpu_uses_nccl(tmp_path):
    args = ["--dataset", "digits", "--init-channels", "4", "--layers", "3", "--nodes", "2", "--batch-size", "32",
            "--steps-per-epoch", "2", "--epochs", "1", "--no-tensorboard", "--device", "cuda", "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1",
               str(ROOT / "train_search.py"), *args, "--out", str(tmp_path / "run")]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["environment"]["device"] == "cuda:0"


def test_single_process_features_are_refused_under_torchrun():
    from types import SimpleNamespace

    from darts_nas.config import SearchConfig, TrainConfig
    from darts_nas.errors import ConfigError
    from darts_nas.search import check_distributed_settings

    several = SimpleNamespace(is_distributed=True)
    one = SimpleNamespace(is_distributed=False)
    for config in (SearchConfig(checkpoint_every=5), SearchConfig(checkpoint_minutes=1.0),
                   TrainConfig(gpu_data=True)):
        check_distributed_settings(config, one)  # fine in one process
        with pytest.raises(ConfigError, match="single-process feature"):
            check_distributed_settings(config, several)
    check_distributed_settings(SearchConfig(gpu_data=False), several)


def test_a_disabled_graceful_stop_leaves_the_signal_handlers_alone():
    import signal

    from darts_nas.resume import GracefulStop

    before = signal.getsignal(signal.SIGTERM)
    with GracefulStop(enabled=False) as stop:
        assert signal.getsignal(signal.SIGTERM) is before and not stop.requested
    with GracefulStop() as stop:
        assert signal.getsignal(signal.SIGTERM) is not before
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.parametrize("rank,error,printed", [
    (None, "config", True), ("0", "config", True), ("1", "config", False),
    ("1", "data", True),  # may be this rank's own problem (its node's data): every rank says it
])
def test_a_settings_error_is_printed_once_under_torchrun(monkeypatch, capsys, rank, error, printed):
    from darts_nas import cli
    from darts_nas.errors import ConfigError, DataError

    if rank is None:
        monkeypatch.delenv("RANK", raising=False)
    else:
        monkeypatch.setenv("RANK", rank)
    exc = ConfigError("--epochs must be 0 or more, got -1") if error == "config" else DataError("no data here")

    def make_config():
        raise exc

    assert cli._run(lambda config, quiet: None, make_config, quiet=True) == 2
    assert (str(exc) in capsys.readouterr().err) == printed


def test_folds_under_torchrun_share_one_process_group(tmp_path):
    """--folds (and --seeds) run several runs in the same processes: one process group serves them
    all (a destroyed gloo group cannot be created again), and rank 0 alone writes the aggregate."""
    out = tmp_path / "cv"
    args = [*TRAIN_ARGS, "--folds", "2", "--out", str(out)]
    stdout = finish(torchrun("train_final.py", args, tmp_path), tmp_path)
    assert stdout.count("2 of 2 folds aggregated") == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["finished"] == [0, 1]
    for fold in range(2):
        assert json.loads((out / f"fold-{fold}" / "config.json").read_text())["distributed"]["world_size"] == 2


def test_darts_ada_rolls_back_every_rank_together_under_torchrun(tmp_path):
    """Rank 0 measures the eigenvalue and hands it to every rank, so the ranks take the DARTS-ADA
    decision together; the rollback's checkpoint, read by rank 0, reaches every rank."""
    args = [*SEARCH_ARGS, "--nodes", "1", "--epochs", "3", "--ops", "none,skip_connect,sep_conv_3x3",
            "--hessian-every", "1", "--early-stop", "ada", "--es-start-epoch", "1", "--es-window", "1", "--es-delta",
            "1", "--es-ratio", "0.5", "--ada-factor", "3", "--ada-max-weight-decay", "0.003", "--keep-checkpoints", "1",
            "--out", str(tmp_path / "run")]
    finish(torchrun("train_search.py", args, tmp_path), tmp_path)
    out = tmp_path / "run"
    log = (out / "log.txt").read_text()
    assert log.count("DARTS-ADA after epoch 2: ") == 1 and "rolled back to epoch 1" in log
    assert "all 2 processes hold the same weights, alphas and BatchNorm statistics" in log
    summary = json.loads((out / "summary.json").read_text())
    assert [(r["after_epoch"], r["to_epoch"]) for r in summary["early_stop"]["rollbacks"]] == [(2, 1)]
    assert [r["epoch"] for r in read_jsonl(out / "metrics.jsonl")] == [1, 2, 3]
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["w_optimizer"]["param_groups"][0]["weight_decay"] == pytest.approx(9e-4)
