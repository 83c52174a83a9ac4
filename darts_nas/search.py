"""``run(config)``: a whole search of any method (:mod:`darts_nas.methods`) in any space
(:mod:`darts_nas.spaces`), from data to the final genotype.

The loop names no method and no architecture parameter: it builds the space's supernet with the
method, lets the method's architect step the architecture parameters, calls the method's
per-epoch schedule, and checkpoints, records and shows whatever groups the supernet holds
(``arch_groups()``) and whatever state the method keeps (``state_dict()``).

The run directory receives ``config.json``, ``metrics.jsonl`` (one line per epoch),
``history.jsonl`` (genotype and softmaxed alphas per epoch), ``genotype.json`` (the latest, and at
the end the final genotype), ``checkpoint.pt``, ``log.txt`` and, once the search has finished,
``summary.json`` and the final cell diagrams (``cell_normal.dot``, ``cell_reduce.dot``, and their
``.png``/``.svg`` when Graphviz is installed). Unless ``config.tensorboard`` is off, TensorBoard
event files go into the same directory (see :class:`darts_nas.tracking.SearchBoard`).
Under torchrun the processes share the search and rank 0 alone writes (:mod:`darts_nas.distributed`).

A staged search (P-DARTS) follows the method's stage plan (:meth:`Method.stages`): each stage
trains a fresh supernet of its own depth on the candidate ops per edge that the method kept from
the previous stage's alphas (:meth:`Method.next_edge_ops`), with a fresh weight optimiser, cosine
schedule over the stage's epochs (or :attr:`Stage.cosine_epochs`) and architect, into which the
method copies what it carries across the transition (:meth:`Method.carry_over`; DrNAS's progressive
schedule: the kept alphas, their Adam state, the kept ops widened, the schedule). Epochs are
numbered globally (1 .. the sum of the stages' epochs) in every record, on the board and in the
checkpoints; metrics.jsonl and history.jsonl also carry ``"stage"`` (1-based). The checkpoint records the stage and its edge-op
table, so that a resumed run rebuilds the stage's supernet before loading it; a run checkpointed
at the end of a stage makes the transition again on resuming, from the same alphas and the same
random state.
"""

from __future__ import annotations

import json
import time
from itertools import islice
from typing import Any

import torch

from .accel import Speed, answer_out_of_memory
from .bench_search import BenchmarkScorer, score_epoch
from .checkpoint import (atomic_write_text, checkpoint_name, load_checkpoint, numbered_checkpoints,
                         remove_checkpoints_after, save_rotating, truncate_jsonl)
from .commands import command
from .config import ADA_SLACK, SearchConfig, wants_strategy
from .data import search_data, set_epoch
from .device_data import describe as describe_loader
from .device_data import search_data_on_device, use_device_data
from .distributed import Distributed, session
from .engine import EpochProgress, NonFiniteLossError, evaluate, search_one_epoch
from .errors import CheckpointError, ConfigError
from .network import check_image_size, check_stem_fits_in_memory
from .resume import (GracefulStop, StepCheckpoints, change_learning_rate, check_finite_state, first_line,
                     non_finite_message, resume_or_start_afresh)
from .runtime import FINISHED_MARKER, environment, prepare_run_dir, seed_everything
from .edge_ops import table_from_json, table_to_json
from .diagnostics import collapse_warnings, dominant_eigenvalue, epoch_diagnostics, es_stop
from .methods import METHODS
from .methods.base import SearchParts
from .runfiles import RunDirLock
from .spaces import SEARCH_SPACES
from .supernet import check_primitives
from .tracking import CELL_DIAGRAM_FILES, CellDiagrams, RunLog, SearchBoard, read_jsonl, search_legend

RUN_FILES = ("config.json", "metrics.jsonl", "history.jsonl", "genotype.json", "checkpoint.pt",
             "log.txt", FINISHED_MARKER, *CELL_DIAGRAM_FILES)


def softmaxed_alphas(model) -> dict[str, list[list[float]]]:
    """softmax(alpha) of each cell type: ``{"normal": (num_edges, num_ops), ...}``."""
    return {t: torch.softmax(model.arch_group(f"alphas_{t}").detach().float().cpu(), -1).tolist()
            for t in model.cell_types()}


def _ops_of(model):
    """The supernet's candidate ops as the board and the diagnostics take them: the shared op
    list, or the edge-op table when the edges differ (:mod:`darts_nas.edge_ops`)."""
    return model.primitives if model.primitives is not None else model.edge_ops


def candidate_ops(model) -> dict[str, Any]:
    """What history.jsonl says the alpha columns are: ``{"primitives": [...]}`` when every edge
    offers the same ops, else ``{"edge_ops": {cell type: [per-edge op lists]}}``."""
    if model.primitives is not None:
        return {"primitives": list(model.primitives)}
    return {"edge_ops": table_to_json(model.edge_ops)}


def save_genotype(genotype, out, config: SearchConfig) -> None:
    """genotype.json; a space other than the usual two is recorded with it (``"space": "s3"``), so
    that the file says which candidate lists its ops came from."""
    if config.space not in ("darts", "nas-bench-201"):
        genotype.save(out / "genotype.json", extra={"space": config.space})
    else:
        genotype.save(out / "genotype.json")


def arch_history(model) -> dict[str, Any]:
    """The architecture parameters as history.jsonl records them: the softmaxed alphas, and the
    method's view of its other groups (PC-DARTS's betas, softmaxed per node)."""
    views = model.method.arch_views(model)
    return {"alphas": softmaxed_alphas(model), **({"arch_views": {k: v.tolist() for k, v in views.items()}}
                                                   if views else {})}


# Settings that may change between a run and its resumption: where things are, how they are
# shown, how fast they load. Everything else changes the model or the data and must match.
RESUMABLE_CHANGES = {"out", "overwrite", "data", "download", "workers", "device", "report_every",
                     "tensorboard", "keep_checkpoints", "checkpoint_every", "checkpoint_minutes",
                     "amp", "channels_last", "compile", "gpu_data", "recompute",
                     "benchmark", "benchmark_dataset"}
# What ``--resume`` may also change: lowering the learning rates after a non-finite loss.
RESUME_LEARNING_RATES = {"learning_rate", "arch_learning_rate"}


def resume_command(out) -> str:
    return f"{command('search')} --resume {out}"


def run(config: SearchConfig, quiet: bool = False, resume_only: bool = False) -> dict[str, Any]:
    """Run the search described by ``config``; returns the summary also written to summary.json.

    An unfinished run in ``config.out`` with the same settings is resumed from its newest valid
    checkpoint (taken after an epoch or inside one) and ends bit-identical (on CPU, with
    ``--workers 0``) to a run never interrupted. ``resume_only`` (``--resume``) requires such a
    checkpoint and lets the learning rates change. SIGINT and SIGTERM stop the run after the
    current step with a checkpoint (:class:`~darts_nas.errors.RunStopped`). Under torchrun, every
    process calls this (see :mod:`darts_nas.distributed`).
    """
    if config.supernet or config.strategy_score == "benchmark":  # a strategy without supernet training
        from .strategies.stage import run_strategy_only

        return run_strategy_only(config, quiet)
    with session(config.device) as ctx:
        return _run(config, quiet, resume_only, ctx)


def _run(config: SearchConfig, quiet: bool, resume_only: bool, ctx: Distributed) -> dict[str, Any]:
    device = ctx.device
    speed = Speed(device, amp=config.amp, channels_last=config.channels_last, compile=config.compile)
    space = SEARCH_SPACES.get(config.space)
    METHODS.get(config.method).check(config)
    if wants_strategy(config):
        from .strategies.stage import check_strategy

        check_strategy(config)
    plan = METHODS.get(config.method)(config).stages()
    # before anything is written (an unknown op leaves no run directory)
    check_primitives(config.primitives, getattr(space, "ops", None))
    check_distributed_settings(config, ctx)
    scorer = BenchmarkScorer.from_config(config)  # a bad --benchmark fails before anything is written
    config = ctx.resume_instead_of_overwrite(config)

    # Data first: a missing dataset should fail before anything is written.
    def load():
        return search_data(config.dataset, config.data, config.batch_size, config.train_portion,
                           seed=config.seed, workers=config.workers, download=config.download,
                           image_size=config.image_size, device_type=device.type, cutout=config.cutout)

    data = ctx.local_main_first(load) if config.download else load()  # one download per node
    check_image_size(data.info.image_size, "search", max(stage.layers for stage in plan))
    check_stem_fits_in_memory(data.info.image_size, max(config.batch_size // ctx.world_size, 1), "search",
                              config.init_channels)  # per process under torchrun
    data = ctx.shard_search_data(data, config.batch_size)
    if not ctx.is_distributed and use_device_data(config.gpu_data, device, data.info):
        data = search_data_on_device(data, device, cutout=config.cutout)
    lock = RunDirLock()  # held by rank 0 for the whole run: one run per directory
    out = ctx.on_main(lambda: prepare_run_dir(config.out, "search", config.dataset, config.overwrite, RUN_FILES,
                                              allow_unfinished=True, lock=lock))
    config = config.replace(out=str(out))
    log = lock.released_on_error(lambda: ctx.run_log(out, quiet=quiet))
    try:
        ignore = RESUMABLE_CHANGES | (RESUME_LEARNING_RATES if resume_only else set())
        resume = ctx.on_main(lambda: resume_or_start_afresh(  # rank 0 reads it, every rank gets it
            out, "search", "search", config.to_dict(), ignore, RUN_FILES, log.info, fresh=False,
            overwrite=config.overwrite, resume_only=resume_only, map_location=ctx.checkpoint_location,
            expected={"data_split": data.split}))
        # TensorBoard: the board writes nothing when disabled; the diagrams are written either way.
        diagrams = CellDiagrams(warn=log.info)
        board = SearchBoard(out, enabled=config.tensorboard, diagrams=diagrams,
                            purge_step=resume["epoch"] + 1 if resume else None)
        def search():
            # Under torchrun a stop request comes from torchrun itself (a rank died): the
            # survivors cannot take a checkpoint together, so they stop at once and the job
            # resumes from the last epoch's checkpoint.
            with GracefulStop(enabled=not ctx.is_distributed) as stop:
                return _search(config, data, device, log, board, resume, stop, speed, ctx, scorer)

        try:
            return answer_out_of_memory(search, lambda b: probe_step(config, data.info, speed, b),
                                        config.batch_size, device)
        finally:
            board.close()
    finally:
        log.close()
        lock.release()


def check_distributed_settings(config, ctx: Distributed) -> None:
    """What does not work under torchrun yet gets a clear refusal rather than a hang."""
    if not ctx.is_distributed:
        return
    if wants_strategy(config):
        raise ConfigError(f"--strategy runs in one process: train the supernet under torchrun with --strategy none, "
                          f"then search it with --supernet RUN_DIR --strategy {config.strategy} in one process")
    if config.checkpoint_every or config.checkpoint_minutes:
        raise ConfigError("--checkpoint-every and --checkpoint-minutes are single-process features for now: under "
                          "torchrun drop them (checkpoints are written after every epoch)")
    if config.gpu_data:
        raise ConfigError("--gpu-data is a single-process feature for now: under torchrun drop it "
                          "(use --workers to feed each process)")


def build_search(config: SearchConfig, info, speed: Speed, method=None, layers: int | None = None,
                 edge_ops=None):
    """The supernet of the space built for the method (on the device, in the chosen format), its
    weights' SGD and the method's architect. The method is ``model.method``. A stage of a staged
    search passes its method, its depth and its edge-op table (None: ``--ops`` on every edge)."""
    method = method if method is not None else METHODS.get(config.method)(config)
    model = speed.prepare(SEARCH_SPACES.get(config.space)(
        C=config.init_channels, num_classes=info.num_classes, layers=config.layers if layers is None else layers,
        steps=config.nodes, in_channels=info.in_channels, primitives=config.primitives, method=method,
        **({} if edge_ops is None else {"edge_ops": edge_ops}),
    ))
    model.recompute = config.recompute
    if not method.learns_architecture:  # the alphas only give the edges' shape: nothing trains them
        for a in model.arch_parameters():
            a.requires_grad_(False)
    w_optimizer = torch.optim.SGD(model.weights(), lr=config.learning_rate, momentum=config.momentum,
                                  weight_decay=config.weight_decay, nesterov=config.nesterov)
    architect = method.make_architect(model, w_optimizer, autocast=speed.autocast)
    return model, w_optimizer, architect


def probe_step(config: SearchConfig, info, speed: Speed, batch_size: int) -> None:
    """One search step at ``batch_size`` on random data with a fresh supernet: raises the
    device's out-of-memory error if that batch does not fit."""
    model, w_optimizer, architect = build_search(config, info, speed)
    shape = (batch_size, info.in_channels, info.image_size, info.image_size)

    def batch():
        return torch.randn(shape), torch.randint(0, info.num_classes, (batch_size,))

    search_one_epoch(model, architect, [batch()], iter([batch()]), w_optimizer, device=speed.device,
                     grad_clip=config.grad_clip, epoch=0, speed=speed)
    if speed.device.type == "cuda":
        torch.cuda.synchronize(speed.device)


def _search(config: SearchConfig, data, device: torch.device, log: RunLog,
            board: SearchBoard, resume: dict[str, Any] | None = None,
            stop: GracefulStop | None = None, speed: Speed | None = None, ctx: Distributed | None = None,
            scorer: BenchmarkScorer | None = None) -> dict[str, Any]:
    ctx = ctx if ctx is not None else Distributed(device=device)
    out = log.out
    info = data.info
    speed = speed or Speed(device)
    seed_everything(config.seed)
    method = METHODS.get(config.method)(config)
    plan = method.stages()
    first_epoch = [sum(s.epochs for s in plan[:i]) for i in range(len(plan))]  # global, 0-based
    total_epochs = sum(s.epochs for s in plan)

    def stage_of(epoch: int) -> int:
        return max(i for i, first in enumerate(first_epoch) if first <= epoch)

    def build_stage(index: int, edge_ops=None):
        """The supernet, weight SGD, architect and cosine schedule of stage ``index``."""
        method.start_stage(index, plan[index])  # before the build: the method's edges may depend on the stage
        model, w_optimizer, architect = build_search(config, info, speed, method, plan[index].layers, edge_ops)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            w_optimizer, T_max=max(plan[index].cosine_epochs or plan[index].epochs, 1),
            eta_min=config.learning_rate_min)
        if ctx.is_distributed:  # gradients of the global batch, one model on every rank
            architect.average_gradients = ctx.average
            ctx.broadcast_parameters(model)
        return model, w_optimizer, architect, scheduler

    # a run resumed inside a later stage rebuilds that stage's supernet from its recorded ops
    stage = resume.get("stage", 0) if resume is not None else 0
    if not 0 <= stage < len(plan):
        raise CheckpointError(f"checkpoint {resume['path']} was taken in stage {stage + 1} of a search of "
                              f"{len(plan)} stages: choose another --out, or pass --overwrite to start again")
    model, w_optimizer, architect, scheduler = build_stage(
        stage, table_from_json(resume["edge_ops"]) if stage > 0 else None)
    if ctx.is_distributed:
        ctx.seed_ranks(config.seed)
    start_epoch = start_step = 0

    def restore(saved: dict[str, Any]) -> None:
        """The run's state as a checkpoint holds it (on resume, and on a DARTS-ADA rollback)."""
        model.load_state_dict(saved["model"])
        w_optimizer.load_state_dict(saved["w_optimizer"])  # with its weight decay (DARTS-ADA raises it)
        architect.optimizer.load_state_dict(saved["a_optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        data.arch_loader.load_state_dict(saved["arch_loader"])
        method.load_state_dict(saved.get("method", {}))  # absent from checkpoints before methods
        ctx.restore_rng_states(saved, config.seed)

    if resume is not None:
        saved_ops = resume.get("edge_ops")  # absent from checkpoints before per-edge op lists
        if saved_ops is not None and table_from_json(saved_ops) != model.edge_ops:
            raise CheckpointError(f"checkpoint {resume['path']} was taken with other candidate ops per edge than "
                                  f"this search builds: choose another --out, or pass --overwrite to start again")
        try:
            restore(resume)
        except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as exc:
            raise CheckpointError(
                f"checkpoint {resume['path']} does not fit this search ({first_line(exc)}): it belongs to another "
                f"model or data set; choose another --out, or pass --overwrite to start again") from None
        start_epoch, start_step = resume["epoch"], resume["step"]
        _lower_learning_rates(resume["config"], config, w_optimizer, scheduler, architect.optimizer, log)
        where = f"at step {start_step} of epoch {start_epoch + 1}" if start_step else f"after epoch {start_epoch}"
        log.info(f"resuming {out} {where} of {total_epochs}" + (f" (stage {stage + 1} of {len(plan)})"
                                                                 if len(plan) > 1 else ""))

    n_weights = sum(p.numel() for p in model.weights())
    if ctx.is_main:
        atomic_write_text(out / "config.json", json.dumps({
            "config": config.to_dict(),
            "dataset": {"name": info.name, "in_channels": info.in_channels, "num_classes": info.num_classes,
                        "image_size": info.image_size, "weight_half": data.num_weight, "arch_half": data.num_arch},
            "model": {"weights": n_weights, "arch_parameters": sum(a.numel() for a in model.arch_parameters())},
            "environment": environment(device),
            **({"distributed": ctx.describe()} if ctx.is_distributed else {}),
        }, indent=2, sort_keys=True))
    log.info(f"{method.describe()}, on {info.name} ({data.num_weight} weight / {data.num_arch} "
             f"architecture images, {info.in_channels}x{info.image_size}x{info.image_size}, "
             f"{info.num_classes} classes), {device} ({speed.describe()}, "
             f"{describe_loader(data.weight_loader)} data), "
             f"{n_weights:,} weights -> {out}")
    for line in search_legend(out, config.tensorboard):
        log.info(line)
    if ctx.is_distributed:
        log.info(f"{ctx.world_size} processes ({ctx.backend}), global batch {config.batch_size} = "
                 f"{ctx.world_size} x {config.batch_size // ctx.world_size}")
    if len(plan) > 1:
        log.info(f"{len(plan)} stages: " + "; ".join(
            f"{s.epochs} epochs on {s.layers} cells" + (f", then {s.keep} ops per edge kept" if s.keep else "")
            for s in plan))
    if min(s.layers for s in plan) < 3 and model.cell_types() == ("normal", "reduce"):
        # Reductions sit at layers // 3 and 2 * layers // 3: below 3 cells every cell reduces.
        log.info(f"warning: with --layers {config.layers} every cell is a reduction cell, so the normal "
                 f"cell's alphas are never trained and its genotype is meaningless: use --layers 3 or more "
                 f"to search a normal cell")

    start = time.perf_counter()
    # the eigenvalues measured so far (the warnings compare them), from the records kept on resume
    kept = ctx.on_main(lambda: read_jsonl(out / "metrics.jsonl") if resume and (out / "metrics.jsonl").exists()
                       else [])  # every rank: under torchrun they take the early-stop decisions together
    eigenvalues = [r["hessian_eigenvalue"] for r in kept if "hessian_eigenvalue" in r]
    eigen_epochs = [r["epoch"] for r in kept if "hessian_eigenvalue" in r]
    early_stop = None  # (epoch returned to, ratio) once DARTS-ES fires
    # DARTS-ADA: the weight decay, the rollbacks so far, and the eigenvalues since the last one (checkpointed)
    ada = {"weight_decay": config.weight_decay, "rollbacks": [], "capped": []}
    if config.early_stop == "ada" and resume and resume.get("ada") is not None:
        ada = {k: v for k, v in resume["ada"].items() if k not in ("eigenvalues", "eigen_epochs")}
        eigenvalues, eigen_epochs = list(resume["ada"]["eigenvalues"]), list(resume["ada"]["eigen_epochs"])
    arch_eval = resume["arch_eval"] if resume else {"loss": float("nan"), "acc": float("nan")}
    genotype = method.genotype(model)

    def state(epochs_done: int, progress: EpochProgress | None = None) -> dict[str, Any]:
        """Everything the rest of the run depends on, after ``epochs_done`` epochs and, inside
        the next one, ``progress.step`` steps."""
        check_finite_state(model, epochs_done if progress else epochs_done - 1,
                           progress.step if progress else 0)
        return {
            "kind": "search", "epoch": epochs_done, "step": progress.step if progress else 0,
            "progress": progress.state_dict() if progress else None, "config": config.to_dict(),
            "model": model.state_dict(), "w_optimizer": w_optimizer.state_dict(),
            "a_optimizer": architect.optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "arch_loader": data.arch_loader.state_dict(), **ctx.rng_states(),
            "arch_eval": arch_eval, "method": method.state_dict(), "data_split": data.split,
            "edge_ops": table_to_json(model.edge_ops), "stage": stage, "total_epochs": total_epochs,
            **({"ada": {**ada, "eigenvalues": list(eigenvalues), "eigen_epochs": list(eigen_epochs)}}
               if config.early_stop == "ada" else {}),
        }

    def protected() -> set[int]:
        """The epochs DARTS-ADA may still roll back to: the rule points ``es_delta`` measurements back."""
        return set(eigen_epochs[-(config.es_delta + 1):]) if config.early_stop == "ada" else set()

    def rollback(back: int, rise: float, after: int) -> None:
        """DARTS-ADA: back to the checkpoint of epoch ``back`` with the weight decay raised; the
        epochs after it are discarded (checkpoints, records, TensorBoard events) and run again.
        Safe to repeat after a kill: a checkpoint of ``back`` that already holds this rollback is
        taken as it is."""
        nonlocal arch_eval, ada, eigenvalues, eigen_epochs, genotype
        path = out / checkpoint_name(back)

        def load() -> dict[str, Any]:
            if not path.is_file():
                raise CheckpointError(f"DARTS-ADA rolls back to epoch {back}, but {path} is gone (it was removed by "
                                      f"hand); start the search again with --overwrite")
            return load_checkpoint(path, ctx.checkpoint_location)

        saved = ctx.on_main(load)  # rank 0 reads it, every rank gets it (as on resume)
        restore(saved)
        arch_eval = saved["arch_eval"]
        done = saved.get("ada") is not None and len(saved["ada"]["rollbacks"]) > len(ada["rollbacks"])
        if done:  # killed after the rolled-back checkpoint was written: it is this rollback's
            ada = {k: v for k, v in saved["ada"].items() if k not in ("eigenvalues", "eigen_epochs")}
        else:
            raised = ada["weight_decay"] * config.ada_factor
            for group in w_optimizer.param_groups:
                group["weight_decay"] = raised
            ada = {**ada, "weight_decay": raised,
                   "rollbacks": [*ada["rollbacks"], {"after_epoch": after, "to_epoch": back, "ratio": rise,
                                                     "weight_decay": raised,
                                                     "eigenvalues": dict(zip(map(str, eigen_epochs), eigenvalues))}]}
        eigenvalues, eigen_epochs = [], []  # the rule starts afresh under the new weight decay
        snapshot = state(back)  # every rank's random states (a collective)

        def rewrite() -> None:
            save_rotating(out, back, snapshot, keep=config.keep_checkpoints, protect={back})
            remove_checkpoints_after(out, back)
            for name in ("metrics.jsonl", "history.jsonl"):
                truncate_jsonl(out / name, back, log.info)
            board.purge_from(back + 1)
            save_genotype(genotype, out, config)

        genotype = model.genotype()
        ctx.on_main(rewrite)
        log.info(f"DARTS-ADA after epoch {after}: the Hessian's eigenvalue rose {rise:.2f}x (above "
                 f"{config.es_ratio}x); rolled back to epoch {back} with the weights' weight decay raised to "
                 f"{ada['weight_decay']:g} (rollback {len(ada['rollbacks'])}; at most {config.ada_max_weight_decay:g})")

    def ada_can_raise() -> bool:
        return ada["weight_decay"] * config.ada_factor <= config.ada_max_weight_decay * ADA_SLACK

    checkpoints = StepCheckpoints(
        config.checkpoint_every, config.checkpoint_minutes, stop or GracefulStop(),
        lambda progress: save_rotating(out, progress.epoch, state(progress.epoch, progress),
                                       keep=config.keep_checkpoints, step=progress.step, protect=protected()),
        f"{resume_command(out)}", log.to_file)  # the command prints the stop line
    if config.early_stop == "es" and eigen_epochs and eigen_epochs[-1] == start_epoch:
        # stopped early before the run could finish: the rule fires again on the same eigenvalues
        early_stop = _es_stop(eigenvalues, eigen_epochs, config)
        if early_stop is not None:
            genotype = ctx.on_main(lambda: _genotype_of_epoch(out, early_stop[0], genotype))
    if (config.early_stop == "ada" and eigen_epochs and eigen_epochs[-1] == start_epoch < config.epochs
            and not start_step and ada_can_raise()):
        # killed after an epoch whose measurement fired DARTS-ADA, before its rollback was complete
        fired = _es_stop(eigenvalues, eigen_epochs, config)
        if fired is not None:
            rollback(*fired, after=start_epoch)
            start_epoch = fired[0]
    # (DARTS-ADA's rollbacks move next_epoch back; a staged search has no early stop: SearchConfig)
    epoch, next_epoch, first = start_epoch - 1, start_epoch, True
    while next_epoch < (total_epochs if early_stop is None else start_epoch):
        epoch, next_epoch = next_epoch, next_epoch + 1
        if stage_of(epoch) != stage:  # the previous stage has finished: prune its ops, build the next
            table = method.next_edge_ops(model, stage, plan[stage])
            stage = stage_of(epoch)
            previous = SearchParts(model, w_optimizer, architect, scheduler)
            del model, w_optimizer, architect, scheduler
            model, w_optimizer, architect, scheduler = build_stage(stage, table)
            method.carry_over(stage, previous, SearchParts(model, w_optimizer, architect, scheduler))
            del previous
            log.info(f"stage {stage + 1} of {len(plan)}: {plan[stage].layers} cells, "
                     f"{_ops_per_edge(model)} candidate ops per edge")
        local = epoch - first_epoch[stage]  # the epoch within its stage
        set_epoch(data.weight_loader, epoch)
        resumed = resume is not None and first and start_step > 0
        first = False
        ada_fired = None
        method.start_epoch(local, plan[stage].epochs)
        try:
            metrics = search_one_epoch(
                model, architect, data.weight_loader, data.arch_loader, w_optimizer, device=device,
                grad_clip=config.grad_clip, epoch=epoch, max_steps=config.steps_per_epoch,
                report_every=config.report_every, log=log.info, start_step=start_step if resumed else 0,
                progress=resume["progress"] if resumed else None, on_step=checkpoints, speed=speed,
                dist=ctx.sync, arch_update=local >= config.arch_warmup_epochs and method.learns_architecture)
            # The last step's update may poison the weights after a finite loss: stop before
            # anything of this epoch is written.
            check_finite_state(model, epoch, metrics["steps"])
        except NonFiniteLossError as exc:
            newest = next(iter(numbered_checkpoints(out)), None)
            raise NonFiniteLossError(non_finite_message(
                exc, newest, resume_command(out),
                f"--learning-rate {config.learning_rate / 10:g} (or --arch-learning-rate "
                f"{config.arch_learning_rate / 10:g})", getattr(config, "amp", False))) from None
        ctx.average_buffers(model)  # one set of BatchNorm statistics for evaluation and checkpoint
        arch_eval = evaluate(model, data.arch_eval_loader, device, speed, dist=ctx.sync, log=log.info,
                             what=f"epoch {epoch + 1}: evaluating the architecture half")
        scheduler.step()
        genotype = method.genotype(model)
        ctx.check_replicas(model, genotype)
        learns = method.learns_architecture  # without: no alphas to record, show or diagnose
        diagnostics = epoch_diagnostics(model, genotype) if learns else {}
        if config.hessian_every and ((epoch + 1) % config.hessian_every == 0 or epoch + 1 == total_epochs):
            def measure() -> dict[str, Any]:  # under torchrun rank 0 measures on its shard, every rank gets it
                batches = [speed.batch(b) for b in islice(data.arch_eval_loader, config.hessian_batches)]
                return dominant_eigenvalue(model, batches, weight_decay=config.arch_weight_decay, seed=config.seed)

            hessian = ctx.on_main(measure)
            diagnostics.update(hessian_eigenvalue=hessian["value"], hessian_method=hessian["how"])
            eigenvalues.append(hessian["value"])
            eigen_epochs.append(epoch + 1)
            if config.early_stop == "es":
                early_stop = _es_stop(eigenvalues, eigen_epochs, config)
            elif config.early_stop == "ada" and epoch + 1 < config.epochs:
                ada_fired = _es_stop(eigenvalues, eigen_epochs, config)
                if ada_fired is not None and not ada_can_raise():
                    ada["capped"] = [*ada["capped"], epoch + 1]  # recorded before the epoch's checkpoint
                    log.info(f"DARTS-ADA after epoch {epoch + 1}: the rule fired ({ada_fired[1]:.2f}x), but the "
                             f"weight decay {ada['weight_decay']:g} x {config.ada_factor:g} would pass "
                             f"--ada-max-weight-decay {config.ada_max_weight_decay:g}: the search goes on unchanged")
                    ada_fired = None
        staged = {"stage": stage + 1} if len(plan) > 1 else {}
        record = {"epoch": epoch + 1, **staged, **metrics, "arch_lr": config.arch_learning_rate,
                  "valid_loss": arch_eval["loss"], "valid_acc": arch_eval["acc"], **method.scalars(),
                  **diagnostics, "elapsed": time.perf_counter() - start}
        score_epoch(scorer if ctx.is_main else None, genotype, record, board, log.info)  # --benchmark
        log.append_jsonl("metrics.jsonl", record)
        log.append_jsonl("history.jsonl", {"epoch": epoch + 1, **staged, "genotype": genotype.to_dict(),
                                           **candidate_ops(model), **(arch_history(model) if learns else {})})
        if ctx.is_main:
            save_genotype(genotype, out, config)
        board.epoch(epoch + 1, record,
                    {t: model.arch_group(f"alphas_{t}") for t in model.cell_types()} if learns else {},
                    _ops_of(model), genotype, views=method.arch_views(model), scalars=method.scalars())
        # Captured after the last draw of the epoch; every rank's random states (a collective).
        snapshot = state(epoch + 1)
        path = ctx.on_main(lambda: save_rotating(out, epoch + 1, snapshot, keep=config.keep_checkpoints,
                                                 protect=protected()))
        log.info(f"epoch {epoch + 1}/{total_epochs}" + (f" (stage {stage + 1}, epoch {local + 1}/"
                                                         f"{plan[stage].epochs})" if staged else "")
                 + f"  lr {metrics['lr']:.5f}  train loss "
                 f"{metrics['train_loss']:.4f} acc {metrics['train_acc']:.2f}%  arch-half loss "
                 f"{arch_eval['loss']:.4f} acc {arch_eval['acc']:.2f}%  {metrics['epoch_time']:.1f} s"
                 + "".join(f"  {k} {v:.4g}" for k, v in method.scalars().items())
                 + ("  (architecture warm-up: no architecture step yet)" if local < config.arch_warmup_epochs else ""))
        if learns:
            log.info("  collapse signs: parameter-free share " + ", ".join(
                f"{t} {diagnostics[f'parameter_free_{t}']:.3f}" for t in model.cell_types())
                + (f", normal-cell skips {diagnostics['normal_skip_connections']}"
                   if "normal_skip_connections" in diagnostics else "")
                + (f", Hessian eigenvalue {diagnostics['hessian_eigenvalue']:.4g} ({diagnostics['hessian_method']})"
                   if "hessian_eigenvalue" in diagnostics else ""))
        else:
            log.info(f"  probe architecture (a uniform draw; the search's answer is the strategy's): "
                     f"architecture-half accuracy {arch_eval['acc']:.2f}%")
        for sign in collapse_warnings(eigenvalues, genotype):
            log.info(f"  warning: collapse ahead? {sign}")
        log.info(f"  {'genotype' if learns else 'probe'}: {genotype}")
        for warning in genotype.warnings():  # the space's (a NAS-Bench-201 cell with no input-output path)
            log.info(f"  warning: {warning}")
        checkpoints.epoch_saved(epoch + 1, path, last=epoch + 1 == total_epochs or early_stop is not None)
        if early_stop is not None:
            back, rise = early_stop
            genotype = ctx.on_main(lambda: _genotype_of_epoch(out, back, genotype))
            log.info(f"early stop (DARTS-ES) after epoch {epoch + 1}: the Hessian's eigenvalue rose {rise:.2f}x "
                     f"(above {config.es_ratio}x); the search returns the genotype of epoch {back}")
            break
        if ada_fired is not None:  # DARTS-ADA, after this epoch's checkpoint (a kill here repeats the rollback)
            rollback(*ada_fired, after=epoch + 1)
            next_epoch = ada_fired[0]

    if early_stop is None:
        final = method.final_genotype(model, genotype)
        if final != genotype:
            log.info(f"  final genotype ({method.title}'s derivation): {final}")
        genotype = final
    digest = ctx.check_replicas(model, genotype)
    if ctx.is_distributed:
        log.info(f"all {ctx.world_size} processes hold the same weights, alphas and BatchNorm statistics "
                 f"(sha256 {digest[:16]}) and genotype")
    strategy = None
    if wants_strategy(config):  # the strategy stage (darts_nas.strategies): a single process, rank 0
        from .strategies.stage import supernet_stage

        genotype, strategy = supernet_stage(config, model, data, speed, log, out,
                                            resuming=resume is not None and resume["epoch"] >= total_epochs,
                                            bench_scorer=scorer)
    if ctx.is_main:
        save_genotype(genotype, out, config)
        board.diagrams.write(genotype, out)
    summary = {
        "finished": True, "method": config.method, "space": config.space, "epochs": total_epochs,
        "genotype": genotype.to_dict(),
        **({"early_stop": {"rule": "es", "after_epoch": epoch + 1, "genotype_epoch": early_stop[0],
                           "ratio": early_stop[1]}} if early_stop is not None else {}),
        **({"early_stop": {"rule": "ada", "rollbacks": ada["rollbacks"], "weight_decay": ada["weight_decay"],
                           "fired_at_maximum": ada["capped"]}} if config.early_stop == "ada" else {}),
        "genotype_text": str(genotype), "valid_loss": arch_eval["loss"], "valid_acc": arch_eval["acc"],
        "wall_time": time.perf_counter() - start, "out": str(out), **(scorer.summary() if scorer else {}),
        **({"strategy": strategy, "supernet_valid_acc": arch_eval["acc"], "valid_acc": strategy["best_score"],
            "valid_loss": strategy.get("loss")} if strategy else {}),
    }
    board.finish(config, summary)
    if ctx.is_main:
        atomic_write_text(out / FINISHED_MARKER, json.dumps(summary, indent=2, sort_keys=True))
    log.info(f"search finished in {summary['wall_time']:.1f} s; architecture-half accuracy "
             f"{arch_eval['acc']:.2f}%; genotype written to {out / 'genotype.json'}")
    return summary


def _ops_per_edge(model) -> str:
    """``5`` when every edge offers 5 ops, else ``normal 5, reduce 4``."""
    counts = {t: len(model.edge_ops[t][0]) for t in model.cell_types()}
    return str(next(iter(counts.values()))) if len(set(counts.values())) == 1 else ", ".join(
        f"{t} {n}" for t, n in counts.items())


def _es_stop(eigenvalues: list[float], epochs: list[int], config: SearchConfig) -> tuple[int, float] | None:
    """DARTS-ES (``--early-stop es``) with the run's constants, at the latest measurement."""
    return es_stop(eigenvalues, epochs, config.es_start_epoch, config.es_window, config.es_delta, config.es_ratio)


def _genotype_of_epoch(out, epoch: int, like):
    """The genotype recorded in history.jsonl after ``epoch`` (of the same type as ``like``)."""
    for record in read_jsonl(out / "history.jsonl"):
        if record.get("epoch") == epoch:
            return type(like).from_dict(record["genotype"])
    raise CheckpointError(f"{out / 'history.jsonl'} holds no genotype of epoch {epoch}, which the early stop "
                          f"returns to: the file was edited; start the search again with --overwrite")


def _lower_learning_rates(saved: dict[str, Any], config: SearchConfig, w_optimizer, scheduler,
                          a_optimizer, log: RunLog) -> None:
    """Apply learning rates changed by ``--resume`` (only it lets them differ from the checkpoint's)."""
    if saved.get("learning_rate") != config.learning_rate:
        change_learning_rate(w_optimizer, scheduler, config.learning_rate)
        log.info(f"weight learning rate changed from {saved.get('learning_rate')} to {config.learning_rate} "
                 f"on resuming (from here on the run differs from the original)")
    if saved.get("arch_learning_rate") != config.arch_learning_rate:
        change_learning_rate(a_optimizer, None, config.arch_learning_rate)
        log.info(f"architecture learning rate changed from {saved.get('arch_learning_rate')} to "
                 f"{config.arch_learning_rate} on resuming (from here on the run differs from the original)")
