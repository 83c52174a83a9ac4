"""``run(config)``: retrain a genotype from scratch under the paper's protocols (REFERENCE section 4).

The run directory receives ``config.json``, ``genotype.json`` (the trained cell), ``metrics.jsonl``
(one line per epoch), ``checkpoint.pt``, ``log.txt`` and, once finished, ``metrics.json`` (final
and best test accuracy, parameters with and without the auxiliary head, multiply-adds, wall time),
the cell diagrams ``cell_normal.dot``/``cell_reduce.dot`` (and ``.png``/``.svg`` with Graphviz) and,
unless ``config.tensorboard`` is off, TensorBoard event files (:class:`darts_nas.tracking.TrainBoard`).
With ``--epochs 0`` only the network is built and its sizes are written. Under torchrun the
network is trained with DistributedDataParallel and rank 0 alone writes (:mod:`darts_nas.distributed`).
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

import torch

from .accel import Speed, answer_out_of_memory
from .checkpoint import atomic_write_text, numbered_checkpoints, save_rotating
from .commands import command
from .config import TrainConfig
from .data import DatasetInfo, get_info, set_epoch, train_test_data
from .distributed import Distributed, session
from .engine import EpochProgress, NonFiniteLossError, evaluate, train_one_epoch
from .errors import CheckpointError, ConfigError
from .device_data import describe as describe_loader
from .device_data import train_test_data_on_device, use_device_data
from .chain_genotype import SPACE as CHAIN_SPACE
from .genotype import Genotype
from .network import (NETWORKS, check_image_size, check_stem_fits_in_memory, count_auxiliary_parameters,
                      count_multiply_adds, count_parameters, resolve_cell)
from .resume import (GracefulStop, StepCheckpoints, change_learning_rate, check_finite_state, first_line,
                     non_finite_message, resume_or_start_afresh)
from .runtime import FINISHED_MARKER, environment, prepare_run_dir, seed_everything, settings_differences
from .runfiles import RunDirLock
from .tracking import CELL_DIAGRAM_FILES, CellDiagrams, RunLog, TrainBoard, train_legend

FINISHED = "metrics.json"
# Settings that may change when an interrupted run is resumed; all others must match.
RESUMABLE_CHANGES = {"out", "overwrite", "data", "download", "workers", "device", "report_every",
                     "tensorboard", "keep_checkpoints", "compare", "checkpoint_every",
                     "checkpoint_minutes", "amp", "channels_last", "compile", "gpu_data"}
# What ``--resume`` may also change: lowering the learning rate after a non-finite loss.
RESUME_LEARNING_RATES = {"learning_rate"}


def resume_command(out) -> str:
    return f"{command('train')} --resume {out}"
RUN_FILES = ("config.json", "genotype.json", "metrics.jsonl", "checkpoint.pt", "log.txt", FINISHED,
             *CELL_DIAGRAM_FILES)


def network_sizes(model: torch.nn.Module, info: DatasetInfo) -> dict[str, int]:
    """Parameters (auxiliary head excluded and separately) and multiply-adds of one image; for a
    network with benchmark records (NAS-Bench-201's), also its sizes as the records count them."""
    shape = (1, info.in_channels, info.image_size, info.image_size)
    return {
        "params": count_parameters(model),
        "params_auxiliary": count_auxiliary_parameters(model),
        "params_with_auxiliary": count_parameters(model, exclude_auxiliary=False),
        "multiply_adds": count_multiply_adds(model, shape),
        "input_size": [info.in_channels, info.image_size, info.image_size],
        **({"benchmark": model.benchmark_sizes(shape)} if hasattr(model, "benchmark_sizes") else {}),
    }


def drop_path_schedule(max_prob: float, epoch: int, epochs: int) -> float:
    """Drop-path probability of ``epoch`` (0-based): ramped linearly from 0 as in the paper's code."""
    return max_prob * epoch / max(epochs, 1)


def resolved_cutout(config: TrainConfig, info: DatasetInfo) -> int:
    """The paper's cutout of 16 pixels is half a CIFAR image; other sizes get half their side."""
    if config.cutout is not None:
        return config.cutout
    return info.image_size // 2 if config.protocol == "cifar" else 0


def _info_without_training(config: TrainConfig) -> DatasetInfo:
    root = Path(os.path.expanduser(config.data))  # Path.expanduser raises for an unknown ~user
    # Named datasets have a known shape; their files are needed only to train.
    return get_info(config.dataset, str(root) if root.exists() else None, config.image_size)


def run(config: TrainConfig, quiet: bool = False, resume_only: bool = False) -> dict[str, Any]:
    """Train ``config.cell`` and return the summary written to metrics.json. With
    ``config.compare``, the same protocol then trains each compared cell in a subdirectory and the
    summary lists all results.

    Resuming, checkpoints inside an epoch and the graceful stop work as in
    :func:`darts_nas.search.run`; ``resume_only`` (``--resume``) lets the learning rate change.
    Under torchrun, every process calls this."""
    with session(config.device) as ctx:
        return _run(config, quiet, resume_only, ctx)


def _run(config: TrainConfig, quiet: bool, resume_only: bool, ctx: Distributed) -> dict[str, Any]:
    device = ctx.device
    speed = Speed(device, amp=config.amp, channels_last=config.channels_last, compile=config.compile)
    check_distributed_settings(config, ctx)
    check_batch_for_the_auxiliary_head(config, ctx.world_size)
    config = ctx.resume_instead_of_overwrite(config)
    genotype = resolve_cell(config.network, config.cell)
    NETWORKS.get(config.network)
    compare = [(spec, resolve_cell(config.network, spec)) for spec in config.compare]
    if config.epochs == 0:
        data, info = None, _info_without_training(config)
        config = config.replace(cutout=resolved_cutout(config, info))
    else:
        info = get_info(config.dataset, config.data, config.image_size)
        config = config.replace(cutout=resolved_cutout(config, info))
        pending = ctx.on_main(lambda: interrupted_comparison(config))
        if pending is not None:
            # The cell itself was trained; what stopped was the training of a compared cell.
            log = ctx.run_log(Path(config.out), quiet=quiet)
            log.info(f"{config.out} holds the finished training of {config.cell!r}: continuing its comparison")
            log.close()
            return _compare(config, pending, compare, quiet, ctx, continued=True)

        def load():
            return train_test_data(config.dataset, config.data, config.batch_size, seed=config.seed,
                                   workers=config.workers, download=config.download,
                                   image_size=config.image_size, cutout=config.cutout,
                                   device_type=device.type, folds=config.folds, fold=config.fold)

        data = ctx.local_main_first(load) if config.download else load()  # one download per node
        info = data.info
    check_image_size(info.image_size, config.network, config.layers)
    if config.epochs > 0:
        check_stem_fits_in_memory(info.image_size, max(config.batch_size // ctx.world_size, 1), config.network,
                                  config.init_channels)  # per process under torchrun
    if data is not None:
        data = ctx.shard_train_data(data, config.batch_size)
        if not ctx.is_distributed and data.heldout_loader is None and use_device_data(config.gpu_data, device, info):
            data = train_test_data_on_device(data, device, config.cutout)
    lock = RunDirLock()  # held by rank 0 for the whole run: one run per directory
    out = ctx.on_main(lambda: prepare_run_dir(config.out, "train", config.dataset, config.overwrite, RUN_FILES,
                                              FINISHED, allow_unfinished=True, lock=lock))
    config = config.replace(out=str(out))
    log = lock.released_on_error(lambda: ctx.run_log(out, quiet=quiet))
    warn_if_unfinished_search(config.cell, log.info)
    try:
        ignore = RESUMABLE_CHANGES | (RESUME_LEARNING_RATES if resume_only else set())
        resume = ctx.on_main(lambda: resume_or_start_afresh(  # rank 0 reads it, every rank gets it
            out, "train", "training", config.to_dict(), ignore, RUN_FILES, log.info,
            fresh=config.epochs == 0, overwrite=config.overwrite, resume_only=resume_only,
            map_location=ctx.checkpoint_location, title="training run",
            expected={"genotype": genotype.to_dict(), **({"data_split": data.split} if data else {})}))
        # TensorBoard: the board writes nothing when disabled; the diagrams are written either way.
        board = TrainBoard(out, enabled=config.tensorboard, diagrams=CellDiagrams(warn=log.info),
                           purge_step=resume["epoch"] + 1 if resume else None)
        def train():
            # Under torchrun a stop request means another process died: stop at once (see search).
            with GracefulStop(enabled=not ctx.is_distributed) as stop:
                return _train(config, genotype, data, info, device, log, board, resume, stop, speed, ctx)

        try:
            summary = answer_out_of_memory(train, lambda b: probe_step(config, genotype, info, speed, b),
                                           config.batch_size, device)
        finally:
            board.close()
    finally:
        log.close()
        lock.release()
    return _compare(config, summary, compare, quiet, ctx) if compare else summary


def warn_if_unfinished_search(cell: str, log) -> None:
    """A --cell that names the directory of a search still running (or stopped) gets the genotype
    of its last finished epoch: say so."""
    path = Path(os.path.expanduser(cell))
    if path.is_dir() and (path / "genotype.json").is_file() and not (path / FINISHED_MARKER).exists():
        try:
            epochs = sum(1 for line in (path / "history.jsonl").read_text().splitlines() if line.strip())
        except OSError:
            epochs = "?"
        log(f"warning: {cell} holds an unfinished search: its genotype.json is the one derived after epoch "
            f"{epochs}, not the search's final genotype")


def interrupted_comparison(config: TrainConfig) -> dict[str, Any] | None:
    """The summary of the finished training in ``config.out`` when only its ``--compare`` part is
    missing (it was stopped while a compared cell trained) and the settings match; else None."""
    if not config.compare or config.out is None:
        return None
    summary = _finished_summary(config)
    return summary if summary is not None and "comparison" not in summary else None


def _compare(config: TrainConfig, summary: dict[str, Any], compare, quiet: bool, ctx: Distributed,
             continued: bool = False) -> dict[str, Any]:
    """Train each compared cell under the same settings in ``<out>/compare-<cell>`` and add the
    table to the summary. ``continued``: an earlier attempt stopped during the comparison, so a
    compared cell it finished is taken as it is and an unfinished one is resumed."""
    out = Path(summary["out"])
    results = [{"cell": config.cell, **_headline(summary)}]
    for spec, _ in compare:
        sub = config.replace(cell=spec, compare=(), out=str(out / f"compare-{_slug(spec)}"))
        done = ctx.on_main(lambda: _finished_summary(sub)) if continued else None
        other = done if done is not None else run(sub, quiet=quiet)
        results.append({"cell": spec, **_headline(other)})
    summary["comparison"] = results
    if ctx.is_main:
        atomic_write_text(out / FINISHED, json.dumps(summary, indent=2, sort_keys=True))
    if ctx.is_main:  # on the console (unless --quiet) and in log.txt
        log = ctx.run_log(out, quiet=quiet)
        try:
            log.info("comparison under identical settings:\n" + comparison_table(results))
        finally:
            log.close()
    return summary


def _finished_summary(config: TrainConfig) -> dict[str, Any] | None:
    """The summary of the finished training in ``config.out`` with the same settings, or None."""
    out = Path(config.out)
    try:
        summary = json.loads((out / FINISHED).read_text())
        saved = json.loads((out / "config.json").read_text())["config"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    same = (isinstance(summary, dict) and isinstance(saved, dict)
            and not settings_differences(saved, config.to_dict(), RESUMABLE_CHANGES))
    return summary if same else None


def _finite(value: float) -> float | None:
    """None instead of NaN (no test was run), so metrics.json stays strict JSON."""
    return value if value == value else None


def _augmentation(config: TrainConfig, info: DatasetInfo) -> str:
    """What the training images go through, in words, e.g. "random crop and flip, cutout 16, drop-path up to 0.2"."""
    kind = {"crop": "random crop" + (" and flip" if info.hflip else ""),
            "imagenet": "random resized crop, flip and colour jitter"}.get(info.augment, info.augment)
    parts = [kind] + ([f"cutout {config.cutout}"] if config.cutout else [])
    parts += [f"drop-path up to {config.drop_path_prob:g}"] if config.drop_path_prob > 0 else []
    return ", ".join(parts)


def _network_name(network: str) -> str:
    """The network kind as a user reads it: the kind is the architecture family (CIFAR-style: a
    3x3 stem, for small images; ImageNet-style: a strided stem), not the data set."""
    return {"cifar": "CIFAR-style network", "imagenet": "ImageNet-style network"}.get(network, f"{network} network")


def _headline(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: summary[k] for k in ("final_test_acc", "best_test_acc", "params", "multiply_adds", "out")}


def _slug(spec: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(spec).name if "/" in spec else spec)[:40] or "cell"


def comparison_table(results: list[dict[str, Any]]) -> str:
    """One row per cell; columns as wide as their widest entry, separated by " | "."""
    header = ("cell", "final test acc", "best test acc", "params", "mult-adds")
    rows = [header]
    for r in results:
        final, best = (f"{v:.2f}%" if v is not None else "-" for v in (r["final_test_acc"], r["best_test_acc"]))
        rows.append((r["cell"], final, best, f"{r['params']:,}", f"{r['multiply_adds']:,}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join(" | ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in
                                enumerate(zip(row, widths))).rstrip() for row in rows)


def check_distributed_settings(config: TrainConfig, ctx: Distributed) -> None:
    from .search import check_distributed_settings as check

    check(config, ctx)


def check_batch_for_the_auxiliary_head(config: TrainConfig, world_size: int = 1) -> None:
    """The auxiliary head's BatchNorm sees one value per channel and image (its input is pooled to
    1x1), so in training it needs two images per batch and process; refused before anything is written."""
    if config.epochs > 0 and config.auxiliary and config.batch_size // world_size < 2:
        per = " per process" if world_size > 1 else ""
        raise ConfigError(f"--batch-size {config.batch_size} gives batches of one image{per}, which the auxiliary "
                          f"head's BatchNorm cannot train on: use --batch-size {2 * world_size} or more, or "
                          f"--no-auxiliary")


def build_network(config: TrainConfig, genotype: Genotype, info: DatasetInfo) -> torch.nn.Module:
    return NETWORKS.get(config.network)(
        genotype=genotype, C=config.init_channels, layers=config.layers, num_classes=info.num_classes,
        auxiliary=config.auxiliary, in_channels=info.in_channels)


def probe_step(config: TrainConfig, genotype: Genotype, info: DatasetInfo, speed: Speed, batch_size: int) -> None:
    """One training step at ``batch_size`` on random data with a fresh network: raises the
    device's out-of-memory error if that batch does not fit."""
    model = speed.prepare(build_network(config, genotype, info))
    model.drop_path_prob = config.drop_path_prob
    optimizer = torch.optim.SGD(model.parameters(), lr=config.learning_rate, momentum=config.momentum)
    x = torch.randn(batch_size, info.in_channels, info.image_size, info.image_size)
    y = torch.randint(0, info.num_classes, (batch_size,))
    train_one_epoch(model, [(x, y)], optimizer, device=speed.device, grad_clip=config.grad_clip, epoch=0,
                    auxiliary_weight=config.auxiliary_weight if config.auxiliary else 0.0, speed=speed)
    if speed.device.type == "cuda":
        torch.cuda.synchronize(speed.device)


def _train(config: TrainConfig, genotype: Genotype, data, info: DatasetInfo, device: torch.device,
           log: RunLog, board: TrainBoard, resume: dict[str, Any] | None = None,
           stop: GracefulStop | None = None, speed: Speed | None = None, ctx: Distributed | None = None
           ) -> dict[str, Any]:
    ctx = ctx if ctx is not None else Distributed(device=device)
    out = log.out
    speed = speed or Speed(device)
    seed_everything(config.seed)
    model = build_network(config, genotype, info)
    sizes = network_sizes(model, info)
    model = speed.prepare(model)
    if ctx.is_main:
        genotype.save(out / "genotype.json", extra={"cell": config.cell})
        board.diagrams.write(genotype, out)
    board.start(genotype, sizes)
    if ctx.is_main:
        atomic_write_text(out / "config.json", json.dumps({
            "config": config.to_dict(), "protocol": config.protocol,
            "dataset": {"name": info.name, "in_channels": info.in_channels, "num_classes": info.num_classes,
                        "image_size": info.image_size,
                        "train_images": data.num_train if data else None,
                        **({"heldout_images": data.num_heldout} if data and data.heldout_loader else {}),
                        "test_images": data.num_test if data else None},
            "sizes": sizes, "environment": environment(device),
            **({"distributed": ctx.describe()} if ctx.is_distributed else {}),
        }, indent=2, sort_keys=True))
    shape = (f"{len(genotype.ops)} searched layers ({genotype.ops.count('none')} skipped), stem width "
             f"{config.init_channels}" if config.network == CHAIN_SPACE
             else f"{config.layers} cells, C={config.init_channels}")
    log.info(f"{info.name}: {_network_name(config.network)} of {config.cell!r}: {shape}, "
             f"{sizes['params']:,} parameters (+{sizes['params_auxiliary']:,} in the auxiliary head), "
             f"{sizes['multiply_adds'] / 1e6:.1f}M multiply-adds at {info.in_channels}x{info.image_size}x"
             f"{info.image_size}, on {device} ({speed.describe()}"
             f"{', ' + describe_loader(data.train_loader) + ' data' if data else ''}) -> {out}")
    if config.epochs > 0:
        for line in train_legend(out, config.tensorboard, _augmentation(config, info)):
            log.info(line)
    if "benchmark" in sizes:
        log.info(f"as the benchmark's records count them: params {sizes['benchmark']['params']} MB, "
                 f"FLOPs {sizes['benchmark']['flop']} M")

    start = time.perf_counter()
    final = {"loss": float("nan"), "acc": float("nan")}
    heldout = None  # --folds: the held-out fold's loss and accuracy after the last epoch
    best_acc = float("nan")
    if config.epochs > 0:
        # Under torchrun: SyncBatchNorm on GPUs, and the DistributedDataParallel the loop trains;
        # the auxiliary head takes no gradient when its loss has weight 0.
        model, trained = ctx.data_parallel(model, find_unused_parameters=config.auxiliary and not
                                           config.auxiliary_weight > 0)
        if ctx.is_distributed:
            ctx.seed_ranks(config.seed)  # own augmentation and drop-path draws per rank
            log.info(f"{ctx.world_size} processes ({ctx.backend}), global batch {config.batch_size} = "
                     f"{ctx.world_size} x {config.batch_size // ctx.world_size}")
        optimizer = torch.optim.SGD(model.parameters(), lr=config.learning_rate, momentum=config.momentum,
                                    weight_decay=config.weight_decay, nesterov=config.nesterov)
        if config.lr_schedule == "cosine":
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs,
                                                                   eta_min=config.learning_rate_min)
        else:
            scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=config.lr_decay)
        start_epoch = start_step = 0
        if resume is not None:
            try:
                model.load_state_dict(resume["model"])
                optimizer.load_state_dict(resume["optimizer"])
                scheduler.load_state_dict(resume["scheduler"])
                ctx.restore_rng_states(resume, config.seed)
            except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as exc:
                raise CheckpointError(
                    f"checkpoint {resume['path']} does not fit this network ({first_line(exc)}): it belongs to "
                    f"another model or data set; choose another --out, or pass --overwrite to start again") from None
            start_epoch, start_step = resume["epoch"], resume["step"]
            final, best_acc, heldout = resume["test"], resume["best_test_acc"], resume.get("heldout")
            if resume["config"].get("learning_rate") != config.learning_rate:
                change_learning_rate(optimizer, scheduler, config.learning_rate)
                log.info(f"learning rate changed from {resume['config'].get('learning_rate')} to "
                         f"{config.learning_rate} on resuming (from here on the run differs from the original)")
            where = f"at step {start_step} of epoch {start_epoch + 1}" if start_step else f"after epoch {start_epoch}"
            log.info(f"resuming {out} {where} of {config.epochs}")

        def state(epochs_done: int, progress: EpochProgress | None = None) -> dict[str, Any]:
            """Everything the rest of the run depends on, after ``epochs_done`` epochs and, inside
            the next one, ``progress.step`` steps."""
            check_finite_state(model, epochs_done if progress else epochs_done - 1,
                               progress.step if progress else 0)
            return {
                "kind": "train", "epoch": epochs_done, "step": progress.step if progress else 0,
                "progress": progress.state_dict() if progress else None, "config": config.to_dict(),
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "genotype": genotype.to_dict(), **ctx.rng_states(),
                "test": final, "best_test_acc": best_acc, "data_split": data.split, "heldout": heldout,
            }

        checkpoints = StepCheckpoints(
            config.checkpoint_every, config.checkpoint_minutes, stop or GracefulStop(),
            lambda progress: save_rotating(out, progress.epoch, state(progress.epoch, progress),
                                           keep=config.keep_checkpoints, step=progress.step),
            resume_command(out), log.to_file)  # the command prints the stop line
        for epoch in range(start_epoch, config.epochs):
            set_epoch(data.train_loader, epoch)
            model.drop_path_prob = drop_path_schedule(config.drop_path_prob, epoch, config.epochs)
            resumed = resume is not None and epoch == start_epoch and start_step > 0
            try:
                metrics = train_one_epoch(
                    trained, data.train_loader, optimizer, device=device, grad_clip=config.grad_clip, epoch=epoch,
                    auxiliary_weight=config.auxiliary_weight if config.auxiliary else 0.0,
                    label_smoothing=config.label_smoothing, max_steps=config.steps_per_epoch,
                    report_every=config.report_every, log=log.info, start_step=start_step if resumed else 0,
                    progress=resume["progress"] if resumed else None, on_step=checkpoints, speed=speed,
                    dist=ctx.sync)
                # The last step's update may poison the weights after a finite loss: stop before
                # anything of this epoch is written.
                check_finite_state(model, epoch, metrics["steps"])
            except NonFiniteLossError as exc:
                newest = next(iter(numbered_checkpoints(out)), None)
                raise NonFiniteLossError(non_finite_message(
                    exc, newest, resume_command(out), f"--learning-rate {config.learning_rate / 10:g}",
                    getattr(config, "amp", False))) from None
            ctx.average_buffers(model)  # one set of BatchNorm statistics for the test and checkpoint
            final = evaluate(model, data.test_loader, device, speed, dist=ctx.sync, log=log.info,
                             what=f"epoch {epoch + 1}: testing")
            if data.heldout_loader is not None:
                heldout = evaluate(model, data.heldout_loader, device, speed, dist=ctx.sync, log=log.info,
                                   what=f"epoch {epoch + 1}: testing on the held-out fold {config.fold}")
            scheduler.step()
            best_acc = final["acc"] if not best_acc >= final["acc"] else best_acc
            record = {"epoch": epoch + 1, **metrics, "drop_path_prob": model.drop_path_prob,
                      "test_loss": final["loss"], "test_acc": final["acc"],
                      **({"heldout_loss": heldout["loss"], "heldout_acc": heldout["acc"]} if heldout else {}),
                      "elapsed": time.perf_counter() - start}
            log.append_jsonl("metrics.jsonl", record)
            board.epoch(epoch + 1, record)
            ctx.check_replicas(model)
            snapshot = state(epoch + 1)  # every rank's random states: a collective
            path = ctx.on_main(lambda: save_rotating(out, epoch + 1, snapshot, keep=config.keep_checkpoints))
            log.info(f"epoch {epoch + 1}/{config.epochs}  lr {metrics['lr']:.5f}  drop-path "
                     f"{model.drop_path_prob:.3f}  train loss {metrics['train_loss']:.4f} acc "
                     f"{metrics['train_acc']:.2f}%  test loss {final['loss']:.4f} acc {final['acc']:.2f}%  "
                     + (f"held-out fold {config.fold} loss {heldout['loss']:.4f} acc {heldout['acc']:.2f}%  "
                        if heldout else "")
                     + f"{metrics['epoch_time']:.1f} s ({metrics['images_per_s']:.0f} images/s)")
            checkpoints.epoch_saved(epoch + 1, path, last=epoch + 1 == config.epochs)
    summary = {
        "finished": True, "cell": config.cell, "genotype": genotype.to_dict(), "epochs": config.epochs,
        "final_test_acc": _finite(final["acc"]), "final_test_loss": _finite(final["loss"]),
        "best_test_acc": _finite(best_acc),
        **({"fold": config.fold, "folds": config.folds, "final_heldout_acc": _finite(heldout["acc"]) if heldout else None,
            "final_heldout_loss": _finite(heldout["loss"]) if heldout else None} if config.folds else {}),
        **sizes, "wall_time": time.perf_counter() - start, "out": str(out),
    }
    board.finish(config, summary)
    if ctx.is_main:
        atomic_write_text(out / FINISHED, json.dumps(summary, indent=2, sort_keys=True))
    if config.epochs > 0:
        log.info(f"training finished in {summary['wall_time']:.1f} s: final test accuracy "
                 f"{final['acc']:.2f}% (best {best_acc:.2f}%)")
    return summary
