"""``run(config)``: a whole DARTS search, from data to the final genotype.

The run directory receives ``config.json``, ``metrics.jsonl`` (one line per epoch),
``history.jsonl`` (genotype and softmaxed alphas per epoch), ``genotype.json`` (the latest, and at
the end the final genotype), ``checkpoint.pt``, ``log.txt`` and, once the search has finished,
``summary.json`` and the final cell diagrams (``cell_normal.dot``, ``cell_reduce.dot``, and their
``.png``/``.svg`` when Graphviz is installed). Unless ``config.tensorboard`` is off, TensorBoard
event files go into the same directory (see :class:`darts_nas.tracking.SearchBoard`).
"""

from __future__ import annotations

import json
import time
from typing import Any

import torch

from .accel import Speed, batch_too_large, free_device_memory, is_out_of_memory, largest_fitting_batch
from .architect import METHODS
from .checkpoint import atomic_write_text, clear_run_files, resume_checkpoint, save_rotating, truncate_jsonl
from .config import SearchConfig
from .data import search_data, set_epoch
from .device_data import describe as describe_loader
from .device_data import search_data_on_device, use_device_data
from .engine import evaluate, search_one_epoch
from .runtime import (FINISHED_MARKER, capture_rng_states, environment, prepare_run_dir, resolve_device,
                      restore_rng_states, seed_everything)
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
                     "tensorboard", "keep_checkpoints", "amp", "channels_last", "compile", "gpu_data"}


def run(config: SearchConfig, quiet: bool = False) -> dict[str, Any]:
    """Run the search described by ``config``; returns the summary also written to summary.json.

    An unfinished run in ``config.out`` with the same settings is resumed from its newest valid
    checkpoint and ends bit-identical (on CPU, with ``--workers 0``) to a run never interrupted.
    """
    device = resolve_device(config.device)
    speed = Speed(device, amp=config.amp, channels_last=config.channels_last, compile=config.compile)
    SEARCH_SPACES.get(config.space)
    METHODS.get(config.method)
    # Data first: a missing dataset should fail before anything is written.
    data = search_data(config.dataset, config.data, config.batch_size, config.train_portion,
                       seed=config.seed, workers=config.workers, download=config.download,
                       image_size=config.image_size, device_type=device.type)
    if use_device_data(config.gpu_data, device, data.info):
        data = search_data_on_device(data, device)
    out = prepare_run_dir(config.out, "search", config.dataset, config.overwrite, RUN_FILES,
                          allow_unfinished=True)
    config = config.replace(out=str(out))
    log = RunLog(out, quiet=quiet)
    try:
        resume = None if config.overwrite else resume_checkpoint(
            out, "search", config.to_dict(), RESUMABLE_CHANGES, log.info, map_location=device)
        if resume is None:  # starting afresh: nothing of an earlier attempt may mix in
            clear_run_files(out, RUN_FILES)
            remove_event_files(out)
        # TensorBoard: the board writes nothing when disabled; the diagrams are written either way.
        diagrams = CellDiagrams(warn=log.info)
        board = SearchBoard(out, enabled=config.tensorboard, diagrams=diagrams,
                            purge_step=resume["epoch"] + 1 if resume else None)
        try:
            try:
                return _search(config, data, device, log, board, resume, speed)
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
            # Out of memory: outside the except block, so the failed step's tensors (held by the
            # traceback) are freed before probing which batch size fits.
            free_device_memory(device)
            fitting = largest_fitting_batch(
                lambda b: probe_step(config, data.info, speed, b), config.batch_size, device)
            raise batch_too_large(device, config.batch_size, fitting)
        finally:
            board.close()
    finally:
        log.close()


def build_search(config: SearchConfig, info, speed: Speed):
    """The supernet (on the device, in the chosen format), its weights' SGD and the architect."""
    model = speed.prepare(SEARCH_SPACES.get(config.space)(
        C=config.init_channels, num_classes=info.num_classes, layers=config.layers,
        steps=config.nodes, in_channels=info.in_channels, primitives=config.primitives,
    ))
    w_optimizer = torch.optim.SGD(model.weights(), lr=config.learning_rate, momentum=config.momentum,
                                  weight_decay=config.weight_decay)
    architect = METHODS.get(config.method)(
        model, w_optimizer, lr=config.arch_learning_rate, betas=config.arch_betas,
        weight_decay=config.arch_weight_decay, unrolled=config.unrolled, autocast=speed.autocast)
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
            board: SearchBoard, resume: dict[str, Any] | None = None, speed: Speed | None = None
            ) -> dict[str, Any]:
    out = log.out
    info = data.info
    speed = speed or Speed(device)
    seed_everything(config.seed)
    model, w_optimizer, architect = build_search(config, info, speed)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        w_optimizer, T_max=max(config.epochs, 1), eta_min=config.learning_rate_min)
    start_epoch = 0
    if resume is not None:
        model.load_state_dict(resume["model"])
        w_optimizer.load_state_dict(resume["w_optimizer"])
        architect.optimizer.load_state_dict(resume["a_optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        data.arch_loader.load_state_dict(resume["arch_loader"])
        restore_rng_states(resume["rng"])
        start_epoch = resume["epoch"]
        truncate_jsonl(out / "metrics.jsonl", start_epoch)
        truncate_jsonl(out / "history.jsonl", start_epoch)
        log.info(f"resuming {out} after epoch {start_epoch} of {config.epochs}")

    n_weights = sum(p.numel() for p in model.weights())
    atomic_write_text(out / "config.json", json.dumps({
        "config": config.to_dict(),
        "dataset": {"name": info.name, "in_channels": info.in_channels, "num_classes": info.num_classes,
                    "image_size": info.image_size, "weight_half": data.num_weight, "arch_half": data.num_arch},
        "model": {"weights": n_weights, "arch_parameters": sum(a.numel() for a in model.arch_parameters())},
        "environment": environment(device),
    }, indent=2, sort_keys=True))
    order = "second order (unrolled)" if config.unrolled else "first order"
    log.info(f"DARTS search, {order}, on {info.name} ({data.num_weight} weight / {data.num_arch} "
             f"architecture images, {info.in_channels}x{info.image_size}x{info.image_size}, "
             f"{info.num_classes} classes), {device} ({speed.describe()}, "
             f"{describe_loader(data.weight_loader)} data), "
             f"{n_weights:,} weights -> {out}")

    start = time.perf_counter()
    arch_eval = resume["arch_eval"] if resume else {"loss": float("nan"), "acc": float("nan")}
    genotype = model.genotype()
    for epoch in range(start_epoch, config.epochs):
        set_epoch(data.weight_loader, epoch)
        metrics = search_one_epoch(
            model, architect, data.weight_loader, data.arch_loader, w_optimizer, device=device,
            grad_clip=config.grad_clip, epoch=epoch, max_steps=config.steps_per_epoch,
            report_every=config.report_every, log=log.info, speed=speed)
        arch_eval = evaluate(model, data.arch_eval_loader, device, speed)
        scheduler.step()
        genotype = model.genotype()
        record = {"epoch": epoch + 1, **metrics, "arch_lr": config.arch_learning_rate,
                  "valid_loss": arch_eval["loss"], "valid_acc": arch_eval["acc"],
                  "elapsed": time.perf_counter() - start}
        log.append_jsonl("metrics.jsonl", record)
        log.append_jsonl("history.jsonl", {"epoch": epoch + 1, "genotype": genotype.to_dict(),
                                           "primitives": list(config.primitives),
                                           "alphas": softmaxed_alphas(model)})
        genotype.save(out / "genotype.json")
        board.epoch(epoch + 1, record, {"normal": model.alphas_normal, "reduce": model.alphas_reduce},
                    config.primitives, genotype)
        # Everything the rest of the run depends on, captured after the last draw of the epoch.
        save_rotating(out, epoch + 1, {
            "kind": "search", "epoch": epoch + 1, "config": config.to_dict(),
            "model": model.state_dict(), "w_optimizer": w_optimizer.state_dict(),
            "a_optimizer": architect.optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "arch_loader": data.arch_loader.state_dict(), "rng": capture_rng_states(),
            "arch_eval": arch_eval,
        }, keep=config.keep_checkpoints)
        log.info(f"epoch {epoch + 1}/{config.epochs}  lr {metrics['lr']:.5f}  train loss "
                 f"{metrics['train_loss']:.4f} acc {metrics['train_acc']:.2f}%  arch-half loss "
                 f"{arch_eval['loss']:.4f} acc {arch_eval['acc']:.2f}%  {metrics['epoch_time']:.1f} s")
        log.info(f"  genotype: {genotype}")

    genotype.save(out / "genotype.json")
    board.diagrams.write(genotype, out)
    summary = {
        "finished": True, "epochs": config.epochs, "genotype": genotype.to_dict(),
        "genotype_text": str(genotype), "valid_loss": arch_eval["loss"], "valid_acc": arch_eval["acc"],
        "wall_time": time.perf_counter() - start, "out": str(out),
    }
    board.finish(config, summary)
    atomic_write_text(out / FINISHED_MARKER, json.dumps(summary, indent=2, sort_keys=True))
    log.info(f"search finished in {summary['wall_time']:.1f} s; architecture-half accuracy "
             f"{arch_eval['acc']:.2f}%; genotype written to {out / 'genotype.json'}")
    return summary
