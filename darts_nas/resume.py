"""Losing as little as possible of a run: checkpoints inside an epoch, a graceful stop on SIGINT
and SIGTERM, and a lower learning rate when a run is resumed after its loss diverged.

:class:`GracefulStop` turns the first SIGINT/SIGTERM into a request; :class:`StepCheckpoints`,
called by the training loops after every step, writes a checkpoint every ``--checkpoint-every``
steps or ``--checkpoint-minutes`` minutes, and when a stop was requested writes one and raises
:class:`~darts_nas.errors.RunStopped` (exit status 130 or 143).
"""

from __future__ import annotations

import math
import signal
import threading
import time
from pathlib import Path
from typing import Callable

import torch

from .checkpoint import clear_run_files, remove_stale_temporaries, resume_checkpoint
from .engine import EpochProgress, NonFiniteLossError
from .errors import CheckpointError, RunDirError, RunStopped

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def resume_or_start_afresh(out: Path, kind: str, what: str, settings: dict, ignore: set[str], run_files,
                           log: Callable[[str], None], *, fresh: bool, resume_only: bool, map_location,
                           title: str | None = None, overwrite: bool = False) -> dict | None:
    """The newest valid checkpoint of the unfinished run in ``out`` (``kind``: search or train),
    or None after clearing what an earlier attempt left (``fresh`` starts afresh regardless).
    ``resume_only`` (``--resume``) makes a missing checkpoint an error.

    An unfinished run started with other settings (or by the other script) is refused, unless
    ``overwrite`` (``--overwrite``): then it is replaced. One with the same settings is resumed
    either way, because the resumed run ends as the uninterrupted one would."""
    from .tracking import remove_event_files  # tracking imports torch.utils.tensorboard: keep it lazy

    remove_stale_temporaries(out)
    resume = None
    if not fresh:
        try:
            resume = resume_checkpoint(out, kind, settings, ignore, log, map_location=map_location, title=title)
        except (RunDirError, CheckpointError) as exc:
            if not overwrite:
                raise
            log(f"--overwrite: what {out} holds cannot be resumed with these settings, so the {title or kind} "
                f"starts afresh ({exc})")
        else:
            if resume is not None and overwrite:
                log(f"--overwrite replaces finished runs only: {out} holds an unfinished {title or kind} with the "
                    f"same settings, which is resumed (delete the directory to start it afresh)")
    if resume is None and resume_only:
        raise RunDirError(f"{out} holds no valid checkpoint to resume from: start the {what} again with "
                          f"--out {out} --overwrite (and its settings), or resume another run directory")
    if resume is None:  # starting afresh: nothing of an earlier attempt may mix in
        clear_run_files(out, run_files)
        remove_event_files(out)
    return resume


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
