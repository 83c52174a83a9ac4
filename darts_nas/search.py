"""``run(config)``: a whole DARTS search, from data to the final genotype.

The run directory receives ``config.json``, ``metrics.jsonl`` (one line per epoch),
``history.jsonl`` (genotype and softmaxed alphas per epoch), ``genotype.json`` (the latest, and at
the end the final genotype), ``checkpoint.pt``, ``log.txt`` and, once the search has finished,
``summary.json`` and the final cell diagrams (``cell_normal.dot``, ``cell_reduce.dot``, and their
``.png``/``.svg`` when Graphviz is installed). Unless ``config.tensorboard`` is off, TensorBoard
event files go into the same directory (see :class:`darts_nas.tracking.SearchBoard`).
Under torchrun the processes share the search and rank 0 alone writes (:mod:`darts_nas.distributed`).
"""

from __future__ import annotations

import json
import time
from typing import Any

import torch

from .architect import METHODS
from .checkpoint import atomic_write_text, clear_run_files, resume_checkpoint, save_rotating, truncate_jsonl
from .config import SearchConfig
from .data import search_data, set_epoch
from .distributed import Distributed, session
from .engine import evaluate, search_one_epoch
from .runtime import FINISHED_MARKER, environment, prepare_run_dir, seed_everything
from .supernet import SEARCH_SPACES
from .tracking import CELL_DIAGRAM_FILES, CellDiagrams, RunLog, SearchBoard, remove_event_files

RUN_FILES = ("config.json", "metrics.jsonl", "history.jsonl", "genotype.json", "checkpoint.pt",
             "log.txt", FINISHED_MARKER, *CELL_DIAGRAM_FILES)


def softmaxed_alphas(model) -> dict[str, list[list[float]]]:
    return {
        "normal": torch.softmax(model.alphas_normal.detach().float().cpu(), -1).tolist(),
        "reduce": torch.softmax(model.alphas_reduce.detach().float().cpu(), -1).tolist(),
    }


# Settings that may change between a run and its resumption: where things are, how they are
# shown, how fast they load. Everything else changes the model or the data and must match.
RESUMABLE_CHANGES = {"out", "overwrite", "data", "download", "workers", "device", "report_every",
                     "tensorboard", "keep_checkpoints"}


def run(config: SearchConfig, quiet: bool = False) -> dict[str, Any]:
    """Run the search described by ``config``; returns the summary also written to summary.json.

    An unfinished run in ``config.out`` with the same settings is resumed from its newest valid
    checkpoint and ends bit-identical (on CPU, with ``--workers 0``) to a run never interrupted.
    Under torchrun, every process calls this (see :mod:`darts_nas.distributed`).
    """
    with session(config.device) as ctx:
        return _run(config, quiet, ctx)


def _run(config: SearchConfig, quiet: bool, ctx: Distributed) -> dict[str, Any]:
    device = ctx.device
    SEARCH_SPACES.get(config.space)
    METHODS.get(config.method)
    config = ctx.resume_instead_of_overwrite(config)
    # Data first: a missing dataset should fail before anything is written.
    def load():
        return search_data(config.dataset, config.data, config.batch_size, config.train_portion,
                           seed=config.seed, workers=config.workers, download=config.download,
                           image_size=config.image_size, device_type=device.type)

    data = ctx.local_main_first(load) if config.download else load()  # one download per node
    data = ctx.shard_search_data(data, config.batch_size)
    out = ctx.on_main(lambda: prepare_run_dir(config.out, "search", config.dataset, config.overwrite, RUN_FILES,
                                              allow_unfinished=True))
    config = config.replace(out=str(out))
    log = ctx.run_log(out, quiet=quiet)
    try:
        def newest_checkpoint():
            resume = None if config.overwrite else resume_checkpoint(
                out, "search", config.to_dict(), RESUMABLE_CHANGES, log.info, map_location=ctx.checkpoint_location)
            if resume is None:  # starting afresh: nothing of an earlier attempt may mix in
                clear_run_files(out, RUN_FILES)
                remove_event_files(out)
            return resume

        resume = ctx.on_main(newest_checkpoint)  # rank 0 reads it, every rank gets it
        # TensorBoard: the board writes nothing when disabled; the diagrams are written either way.
        diagrams = CellDiagrams(warn=log.info)
        board = SearchBoard(out, enabled=config.tensorboard, diagrams=diagrams,
                            purge_step=resume["epoch"] + 1 if resume else None)
        try:
            return _search(config, data, device, log, board, resume, ctx)
        finally:
            board.close()
    finally:
        log.close()


def _search(config: SearchConfig, data, device: torch.device, log: RunLog,
            board: SearchBoard, resume: dict[str, Any] | None = None, ctx: Distributed | None = None
            ) -> dict[str, Any]:
    ctx = ctx if ctx is not None else Distributed(device=device)
    out = log.out
    info = data.info
    seed_everything(config.seed)
    model = SEARCH_SPACES.get(config.space)(
        C=config.init_channels, num_classes=info.num_classes, layers=config.layers,
        steps=config.nodes, in_channels=info.in_channels, primitives=config.primitives,
    ).to(device)
    w_optimizer = torch.optim.SGD(model.weights(), lr=config.learning_rate, momentum=config.momentum,
                                  weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        w_optimizer, T_max=max(config.epochs, 1), eta_min=config.learning_rate_min)
    architect = METHODS.get(config.method)(
        model, w_optimizer, lr=config.arch_learning_rate, betas=config.arch_betas,
        weight_decay=config.arch_weight_decay, unrolled=config.unrolled)
    if ctx.is_distributed:  # gradients of the global batch, one model on every rank
        architect.average_gradients = ctx.average
        ctx.broadcast_parameters(model)
        ctx.seed_ranks(config.seed)
    start_epoch = 0
    if resume is not None:
        model.load_state_dict(resume["model"])
        w_optimizer.load_state_dict(resume["w_optimizer"])
        architect.optimizer.load_state_dict(resume["a_optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        data.arch_loader.load_state_dict(resume["arch_loader"])
        ctx.restore_rng_states(resume, config.seed)
        start_epoch = resume["epoch"]
        if ctx.is_main:
            truncate_jsonl(out / "metrics.jsonl", start_epoch)
            truncate_jsonl(out / "history.jsonl", start_epoch)
        log.info(f"resuming {out} after epoch {start_epoch} of {config.epochs}")

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
    order = "second order (unrolled)" if config.unrolled else "first order"
    log.info(f"DARTS search, {order}, on {info.name} ({data.num_weight} weight / {data.num_arch} "
             f"architecture images, {info.in_channels}x{info.image_size}x{info.image_size}, "
             f"{info.num_classes} classes), {device}, {n_weights:,} weights -> {out}")
    if ctx.is_distributed:
        log.info(f"{ctx.world_size} processes ({ctx.backend}), global batch {config.batch_size} = "
                 f"{ctx.world_size} x {config.batch_size // ctx.world_size}")

    start = time.perf_counter()
    arch_eval = resume["arch_eval"] if resume else {"loss": float("nan"), "acc": float("nan")}
    genotype = model.genotype()
    for epoch in range(start_epoch, config.epochs):
        set_epoch(data.weight_loader, epoch)
        metrics = search_one_epoch(
            model, architect, data.weight_loader, data.arch_loader, w_optimizer, device=device,
            grad_clip=config.grad_clip, epoch=epoch, max_steps=config.steps_per_epoch,
            report_every=config.report_every, log=log.info, dist=ctx.sync)
        ctx.average_buffers(model)  # one set of BatchNorm statistics for evaluation and checkpoint
        arch_eval = evaluate(model, data.arch_eval_loader, device, dist=ctx.sync)
        scheduler.step()
        genotype = model.genotype()
        ctx.check_replicas(model, genotype)
        record = {"epoch": epoch + 1, **metrics, "arch_lr": config.arch_learning_rate,
                  "valid_loss": arch_eval["loss"], "valid_acc": arch_eval["acc"],
                  "elapsed": time.perf_counter() - start}
        log.append_jsonl("metrics.jsonl", record)
        log.append_jsonl("history.jsonl", {"epoch": epoch + 1, "genotype": genotype.to_dict(),
                                           "primitives": list(config.primitives),
                                           "alphas": softmaxed_alphas(model)})
        if ctx.is_main:
            genotype.save(out / "genotype.json")
        board.epoch(epoch + 1, record, {"normal": model.alphas_normal, "reduce": model.alphas_reduce},
                    config.primitives, genotype)
        # Everything the rest of the run depends on, captured after the last draw of the epoch.
        rng = ctx.rng_states()  # every rank's: a collective
        if ctx.is_main:
            save_rotating(out, epoch + 1, {
                "kind": "search", "epoch": epoch + 1, "config": config.to_dict(),
                "model": model.state_dict(), "w_optimizer": w_optimizer.state_dict(),
                "a_optimizer": architect.optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "arch_loader": data.arch_loader.state_dict(), **rng,
                "arch_eval": arch_eval,
            }, keep=config.keep_checkpoints)
        log.info(f"epoch {epoch + 1}/{config.epochs}  lr {metrics['lr']:.5f}  train loss "
                 f"{metrics['train_loss']:.4f} acc {metrics['train_acc']:.2f}%  arch-half loss "
                 f"{arch_eval['loss']:.4f} acc {arch_eval['acc']:.2f}%  {metrics['epoch_time']:.1f} s")
        log.info(f"  genotype: {genotype}")

    digest = ctx.check_replicas(model, genotype)
    if ctx.is_distributed:
        log.info(f"all {ctx.world_size} processes hold the same weights, alphas and BatchNorm statistics "
                 f"(sha256 {digest[:16]}) and genotype")
    if ctx.is_main:
        genotype.save(out / "genotype.json")
    board.diagrams.write(genotype, out)
    summary = {
        "finished": True, "epochs": config.epochs, "genotype": genotype.to_dict(),
        "genotype_text": str(genotype), "valid_loss": arch_eval["loss"], "valid_acc": arch_eval["acc"],
        "wall_time": time.perf_counter() - start, "out": str(out),
    }
    board.finish(config, summary)
    if ctx.is_main:
        atomic_write_text(out / FINISHED_MARKER, json.dumps(summary, indent=2, sort_keys=True))
    log.info(f"search finished in {summary['wall_time']:.1f} s; architecture-half accuracy "
             f"{arch_eval['acc']:.2f}%; genotype written to {out / 'genotype.json'}")
    return summary
