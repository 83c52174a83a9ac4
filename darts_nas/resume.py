"""Losing as little as possible of a run: checkpoints inside an epoch, a graceful stop on SIGINT
and SIGTERM, and a lower learning rate when a run is resumed after its loss diverged.

:class:`GracefulStop` turns the first SIGINT/SIGTERM into a request; :class:`StepCheckpoints`,
called by the training loops after every step, writes a checkpoint every ``--checkpoint-every``
steps or ``--checkpoint-minutes`` minutes, and when a stop was requested writes one and raises
:class:`~darts_nas.errors.RunStopped` (exit status 130 or 143).
"""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable

import torch

from .checkpoint import (clear_run_files, load_newest_valid, numbered_checkpoints, remove_stale_temporaries,
                         truncate_jsonl)
from .engine import EpochProgress, NonFiniteLossError
from .errors import CheckpointError, RunDirError, RunStopped
from .runfiles import read_bytes
from .runtime import settings_differences

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


# What a checkpoint of each kind must hold for the run to continue from it (besides "epoch"):
# one without them is skipped like a corrupt one, in favour of the previous checkpoint.
CHECKPOINT_KEYS = {
    "search": ("config", "model", "w_optimizer", "a_optimizer", "scheduler", "arch_loader", "rng", "arch_eval"),
    "train": ("config", "model", "optimizer", "scheduler", "genotype", "rng", "test", "best_test_acc"),
}


def resume_or_start_afresh(out: Path, kind: str, what: str, settings: dict, ignore: set[str], run_files,
                           log: Callable[[str], None], *, fresh: bool, resume_only: bool, map_location,
                           title: str | None = None, overwrite: bool = False,
                           expected: dict[str, Any] | None = None) -> dict | None:
    """The newest valid checkpoint of the unfinished run in ``out`` (``kind``: search or train),
    or None after clearing what an earlier attempt left (``fresh`` starts afresh regardless).
    ``resume_only`` (``--resume``) makes a missing checkpoint an error.

    What is compared, all here: the settings (those not in ``ignore``) with ``config.json`` and
    with the checkpoint's own; and each ``expected`` entry (the genotype of a retraining, the
    data split) with the checkpoint's entry of that name. An unfinished run that differs (or was
    started by the other script) is refused in one line naming the difference, unless
    ``overwrite`` (``--overwrite``): then it is replaced. One that matches is resumed either way,
    because the resumed run ends as the uninterrupted one would; its JSON-lines records are cut
    back to the checkpoint's epoch.

    Nothing is deleted without ``overwrite`` that this run cannot tell it wrote: checkpoints are
    resumed (even without ``config.json``) or refused, never cleared, and run files in a
    directory without ``config.json`` are refused, naming them.
    """
    from .tracking import remove_event_files  # tracking imports torch.utils.tensorboard: keep it lazy

    title = title or kind
    remove_stale_temporaries(out)
    resume = None
    if not fresh:
        try:
            resume = resume_checkpoint(out, kind, settings, ignore, log, map_location=map_location, title=title,
                                       expected=expected)
        except (RunDirError, CheckpointError) as exc:
            if not overwrite:
                raise
            log(f"--overwrite: what {out} holds cannot be resumed with these settings, so the {title} "
                f"starts afresh ({exc})")
        else:
            if resume is not None and overwrite:
                log(f"--overwrite replaces finished runs only: {out} holds an unfinished {title} with the "
                    f"same settings, which is resumed (delete the directory to start it afresh)")
    if resume is None and resume_only:
        raise RunDirError(f"{out} holds no valid checkpoint to resume from: start the {what} again with "
                          f"--out {out} --overwrite (and its settings), or resume another run directory")
    if resume is not None:
        for name in run_files:
            if name.endswith(".jsonl"):  # the epochs after the checkpoint are written again
                truncate_jsonl(Path(out) / name, resume["epoch"], log)
        return resume
    if not overwrite:
        refuse_to_clear(out, run_files, title)
    clear_run_files(out, run_files)  # starting afresh: nothing of an earlier attempt may mix in
    remove_event_files(out)
    return None


def refuse_to_clear(out: Path, run_files, title: str) -> None:
    """Before a run starts afresh in ``out`` without ``--overwrite``: refuse when that would delete
    a checkpoint, or files of a run's names in a directory holding no run (no config.json)."""
    checkpoints = [p.name for p in numbered_checkpoints(out)]
    if (Path(out) / "checkpoint.pt").exists():
        checkpoints.append("checkpoint.pt")
    if checkpoints:
        raise RunDirError(f"{out} holds checkpoints ({', '.join(checkpoints)}) this {title} would delete to start "
                          f"afresh: choose another --out, or pass --overwrite to replace them")
    if os.path.lexists(Path(out) / "config.json"):
        return  # an earlier attempt of a run, stopped before its first checkpoint
    found = [name for name in run_files if name != "log.txt" and os.path.lexists(Path(out) / name)]
    if found:
        raise RunDirError(f"{out} holds {', '.join(found)} but no darts-nas run (no config.json), so they were not "
                          f"written by one: nothing was changed; move them away, choose another --out, or pass "
                          f"--overwrite to replace them")


def resume_checkpoint(out: Path, kind: str, current: dict[str, Any], ignore: set[str], warn,
                      map_location: str | torch.device = "cpu", title: str | None = None,
                      expected: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The newest valid checkpoint of an unfinished run in ``out``, or None when it has none.

    ``kind`` is the checkpoints' kind (``search`` or ``train``). Refused, naming the difference:
    a ``config.json`` or a checkpoint whose settings (those not in ``ignore``) differ from
    ``current``, and a checkpoint whose entry differs from one in ``expected``.
    """
    title = title or kind
    config_file = Path(out) / "config.json"
    has_config = os.path.lexists(config_file)
    if has_config:
        try:
            saved = json.loads(read_bytes(config_file))["config"]
            if not isinstance(saved, dict):
                raise TypeError("the settings are not a JSON object")
        except (ValueError, KeyError, TypeError, OSError):
            raise RunDirError(f"{config_file} is unreadable, so the unfinished {title} in {out} cannot be "
                              f"resumed: pass --overwrite to start again, or choose another --out") from None
        _refuse_differences(out, title, settings_differences(saved, current, ignore))
    state = load_newest_valid(out, warn, map_location, kind=kind, check=lambda s, p: check_complete(s, p, kind))
    if state is None:
        return None
    name = Path(state["path"]).name
    _refuse_differences(out, title, settings_differences(state["config"], current, ignore), f"checkpoint {name}")
    for key, value in (expected or {}).items():
        if key in state and state[key] != value:  # older checkpoints lack some entries: nothing to compare
            raise RunDirError(f"{out} holds an unfinished {title} whose checkpoint {name} "
                              f"{_what_differs(key, state[key], value)}: choose another --out, or pass --overwrite "
                              f"to start again")
    if not has_config:
        warn(f"warning: {config_file} is missing; resuming from {name}, whose own settings match (config.json is "
             f"written again)")
    return state


def checkpoint_settings(out: Path) -> dict[str, Any] | None:
    """The settings recorded in the newest readable checkpoint in ``out`` (for ``--resume`` of a
    run whose config.json is gone), or None."""
    try:
        state = load_newest_valid(out, lambda message: None)
    except CheckpointError:
        return None
    return state["config"] if state is not None and isinstance(state.get("config"), dict) else None


def _refuse_differences(out: Path, title: str, differences: list[str], where: str = "") -> None:
    if differences:
        started = f"whose {where} was written with" if where else "started with"
        raise RunDirError(f"{out} holds an unfinished {title} {started} other settings ({'; '.join(differences)}): "
                          f"rerun with the original settings to resume it, or choose another --out, or pass "
                          f"--overwrite to start again")


def _what_differs(key: str, saved: Any, now: Any) -> str:
    """How a checkpoint's ``expected`` entry ``key`` differs, as the end of a sentence."""
    if key == "genotype" and isinstance(saved, dict) and isinstance(now, dict):
        parts = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
        return (f"trained another cell ({', '.join(parts)} differ from the --cell given now; the run's cell is "
                f"in its genotype.json): pass that cell to resume")
    if key == "data_split" and isinstance(saved, dict) and isinstance(now, dict):
        counts = f"{saved.get('images')} images then, {now.get('images')} now"
        return (f"was trained on other data ({counts}; the images or their split changed): restore the "
                f"images the run started with to resume")
    return f"records another {key} than this run has"


def check_complete(state: dict[str, Any], path: Path, kind: str) -> None:
    """Raise :class:`CheckpointError` unless ``state`` holds what a ``kind`` run continues from,
    with an epoch and step inside its own run (``"epoch": 99`` of a 3-epoch run is damaged)."""
    missing = [key for key in CHECKPOINT_KEYS.get(kind, ()) if key not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} is incomplete (it lacks {', '.join(missing)})")
    epochs = state["config"].get("epochs") if isinstance(state["config"], dict) else None
    # a staged search (P-DARTS) runs more epochs than --epochs: its checkpoints record the total
    epochs = state.get("total_epochs", epochs)
    epoch, step = state["epoch"], state.get("step", 0)
    if not isinstance(epochs, int) or not 0 <= epoch <= epochs:
        raise CheckpointError(f"checkpoint {path} records epoch {epoch} of a run of {epochs} epochs")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0 or step > 0 and (
            epoch >= epochs or not isinstance(state.get("progress"), dict)):
        raise CheckpointError(f"checkpoint {path} records an impossible position (epoch {epoch}, step {step!r})")


class StopNow(KeyboardInterrupt):
    """A second stop signal: the run ends at once (the newest checkpoint on disk stays intact)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped at once by a second {signal.Signals(signum).name}")
        self.exit_code = 128 + signum


class GracefulStop:
    """While entered, the first SIGINT or SIGTERM only sets :attr:`signum`; the run finishes its
    step, writes a checkpoint and stops. A second one raises :class:`StopNow` at once.

    Handlers are installed only in the main thread (Python delivers signals there only) and the
    previous ones are restored on exit, so a library caller keeps its own handling. With
    ``enabled=False`` (under torchrun, where the signal means another process died and no
    checkpoint can be taken together) nothing is installed and signals act as usual.
    """

    def __init__(self, enabled: bool = True) -> None:
        self.signum: int | None = None
        self.enabled = enabled
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "GracefulStop":
        if self.enabled and threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        if self.signum is not None:
            raise StopNow(signum)
        self.signum = signum

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def stopped(self, where: str, path: Path, resume_hint: str) -> RunStopped:
        name = signal.Signals(self.signum).name
        return RunStopped(f"stopped by {name} {where}; checkpoint {path} written: to resume, run the same "
                          f"command again or {resume_hint}", 128 + self.signum)


class StepCheckpoints:
    """The ``on_step`` callback of the training loops: decides when to checkpoint inside an epoch.

    ``save(progress)`` writes the checkpoint and returns its path. A periodic checkpoint is
    skipped at the last step of an epoch, whose own checkpoint follows at once.
    """

    def __init__(self, every_steps: int | None, every_minutes: float | None, stop: GracefulStop,
                 save: Callable[[EpochProgress], Path], resume_hint: str, log: Callable[[str], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.every_steps = every_steps
        self.every_seconds = every_minutes * 60 if every_minutes else None
        self.stop = stop
        self.save = save
        self.resume_hint = resume_hint
        self.log = log
        self.clock = clock
        self.last = clock()

    def __call__(self, progress: EpochProgress) -> None:
        if self.stop.requested:
            path = self.save(progress)
            error = self.stop.stopped(f"at epoch {progress.epoch + 1}, step {progress.step}/{progress.total}",
                                      path, self.resume_hint)
            self.log(str(error))
            raise error
        if progress.step >= progress.total:
            return
        due_steps = self.every_steps is not None and progress.step % self.every_steps == 0
        due_time = self.every_seconds is not None and self.clock() - self.last >= self.every_seconds
        if due_steps or due_time:
            self.save(progress)
            self.last = self.clock()

    def epoch_saved(self, epoch: int, path: Path, last: bool) -> None:
        """After the checkpoint at the end of ``epoch`` (1-based): restart the timer, and stop
        here if asked to (unless the run is finishing anyway)."""
        self.last = self.clock()
        if self.stop.requested and not last:
            error = self.stop.stopped(f"after epoch {epoch}", path, self.resume_hint)
            self.log(str(error))
            raise error


def check_finite_state(model: torch.nn.Module, epoch: int, step: int) -> None:
    """Refuse to checkpoint a poisoned model: the newest checkpoint must stay a good one."""
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise NonFiniteLossError(f"{name} became non-finite at epoch {epoch + 1}, step {step}; likely "
                                     f"causes: a learning rate too high, or NaNs or infinities in the data")


def first_line(exc: BaseException) -> str:
    """A (possibly long, multi-line) torch error as one short line."""
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def non_finite_message(exc: NonFiniteLossError, newest: Path | None, resume_command: str, lower: str,
                       amp: bool = False) -> str:
    """The engine's message, completed with what the run keeps and how to go on; ``lower`` is
    an example of the flags that lower the learning rate (``--learning-rate 0.0125``)."""
    text = str(exc)
    if amp:
        text += ", or a mixed-precision (--amp) overflow"
    if newest is None:
        return f"{text}; no checkpoint was written yet: rerun with a lower learning rate ({lower}) and --overwrite"
    return (f"{text}; nothing after the last good checkpoint was saved and {newest.name} is kept: resume from it "
            f"with a lower learning rate: {resume_command} {lower}")


def change_learning_rate(optimizer: torch.optim.Optimizer, scheduler, new_lr: float) -> None:
    """Restart ``optimizer``'s schedule from base learning rate ``new_lr`` at the scheduler's
    current epoch (a run resumed with a lower ``--learning-rate``). Handles the cosine and
    step schedules of darts-nas and constant learning rates (``scheduler`` None)."""
    for group in optimizer.param_groups:
        group["initial_lr"] = new_lr
    if scheduler is None:
        lrs = [new_lr for _ in optimizer.param_groups]
    else:
        t = scheduler.last_epoch
        scheduler.base_lrs = [new_lr for _ in optimizer.param_groups]
        if isinstance(scheduler, torch.optim.lr_scheduler.CosineAnnealingLR):
            eta = scheduler.eta_min
            lrs = [eta + (new_lr - eta) * (1 + math.cos(math.pi * t / scheduler.T_max)) / 2
                   for _ in optimizer.param_groups]
        elif isinstance(scheduler, torch.optim.lr_scheduler.StepLR):
            lrs = [new_lr * scheduler.gamma ** (t // scheduler.step_size) for _ in optimizer.param_groups]
        else:
            raise TypeError(f"cannot change the learning rate of a {type(scheduler).__name__} schedule")
        scheduler._last_lr = list(lrs)
    for group, lr in zip(optimizer.param_groups, lrs):
        group["lr"] = lr
