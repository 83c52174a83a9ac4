"""The loops: one plain function per loop, each returning a metrics dict."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from itertools import islice
from typing import Any, Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .data import skip_batches
from .errors import DartsNasError


class NonFiniteLossError(DartsNasError):
    """The loss became NaN or infinite."""


NON_FINITE_CAUSES = "likely causes: a learning rate too high, or NaNs or infinities in the data"


@dataclass
class EpochProgress:
    """Where an epoch stands after a completed step: what a checkpoint inside the epoch records
    so that the epoch can be finished later with bit-identical metrics."""

    epoch: int  # 0-based
    step: int  # steps completed in this epoch
    total: int  # steps this epoch will have
    seen: int  # weight-half images seen
    sums: torch.Tensor  # float64 running sums on the device (loss * n, correct, ...)
    elapsed: float  # seconds spent in the epoch, earlier attempts included

    def state_dict(self) -> dict[str, Any]:
        # .tolist() gives Python floats, which hold float64 sums exactly.
        return {"step": self.step, "seen": self.seen, "sums": self.sums.tolist(), "elapsed": self.elapsed}


def _initial_sums(progress: dict[str, Any] | None, size: int, device: torch.device
                  ) -> tuple[torch.Tensor, int, float]:
    if progress is None:
        return torch.zeros(size, dtype=torch.float64, device=device), 0, 0.0
    return (torch.tensor(progress["sums"], dtype=torch.float64, device=device), int(progress["seen"]),
            float(progress.get("elapsed", 0.0)))


def _check_finite(losses: dict[str, torch.Tensor], epoch: int, step: int) -> None:
    """One device synchronisation for all the step's losses; names the first bad one."""
    values = torch.stack([v.detach().float().reshape(()) for v in losses.values()])
    if not bool(torch.isfinite(values).all()):
        name, value = next((n, v.item()) for n, v in losses.items() if not torch.isfinite(v).all())
        raise NonFiniteLossError(f"the {name} loss became {value} at epoch {epoch + 1}, step {step}; "
                                 f"{NON_FINITE_CAUSES}")


def _to(batch, device: torch.device, speed=None):
    if speed is not None:
        return speed.batch(batch)
    x, y = batch
    return x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def _autocast(speed):
    return contextlib.nullcontext() if speed is None else speed.autocast()


def _weight_pass(model: nn.Module, batch):
    """The search method's context for the weight step's forward pass (SDARTS perturbs there)."""
    method = getattr(model, "method", None)
    return contextlib.nullcontext() if method is None else method.weight_pass(model, batch)


def _eval_pass(model: nn.Module):
    """The search method's context for an evaluation (GDAS normalises with batch statistics)."""
    method = getattr(model, "method", None)
    return contextlib.nullcontext() if method is None else method.eval_pass(model)


REPORT_SECONDS = 30.0
"""A progress line at least this often (seconds) within an epoch and during an evaluation."""


class _ReportTimes:
    """Which steps print a progress line: the first one of the run (life within seconds of the
    start, with a first s/step), every ``every``-th, the last, and, in a single process, any step
    that ends ``seconds`` or more after the previous line (an epoch of 12 slow steps would print
    nothing for minutes otherwise). Under torchrun a line sums the metrics of every process (a
    collective), so all must decide alike: there the clock plays no part."""

    def __init__(self, every: int, total: int, first: int, seconds: float, clock: bool) -> None:
        self.every, self.total, self.first, self.seconds, self.clock = every, total, first, seconds, clock
        self.last = time.perf_counter()

    def due(self, step: int) -> bool:
        now = time.perf_counter()
        due = (step == self.first or step % self.every == 0 or step == self.total
               or (self.clock and now - self.last >= self.seconds))
        if due:
            self.last = now
        return due


def _totals(sums: torch.Tensor, seen: int, dist) -> tuple[list[float], int]:
    """The metric sums and the image count of every process (of this one without ``dist``)."""
    if dist is None:
        return sums.tolist(), seen
    total = dist.all_sum(torch.cat([sums, sums.new_tensor([seen])]))
    return total[:-1].tolist(), int(total[-1].item())


def search_one_epoch(model: nn.Module, architect, weight_loader: Iterable, arch_batches: Iterator,
                     w_optimizer: torch.optim.Optimizer, *, device: torch.device, grad_clip: float,
                     epoch: int, max_steps: int | None = None, report_every: int = 50,
                     log: Callable[[str], None] | None = None, start_step: int = 0,
                     progress: dict[str, Any] | None = None,
                     on_step: Callable[[EpochProgress], None] | None = None, speed=None,
                     dist=None, arch_update: bool = True) -> dict[str, float]:
    """One epoch of the alternating bilevel search.

    Per step (REFERENCE section 3): an architecture step on the next batch of the architecture
    half, then an SGD step on the weights with a batch of the weight half. ``xi`` of the
    second-order step is the weights' learning rate of this epoch.

    To finish an epoch interrupted after ``start_step`` steps, pass ``start_step`` and the
    ``progress`` (:meth:`EpochProgress.state_dict`) recorded then; the weight loader (with a
    :class:`~darts_nas.data.PassSampler`) skips the images already used. ``on_step`` is called
    after every completed step (to checkpoint inside the epoch). ``speed`` (a
    :class:`darts_nas.accel.Speed`) sets autocast and the input memory format. Under torchrun
    ``dist`` (:class:`darts_nas.distributed.Distributed`) averages the weight gradients over the
    processes and sums the metrics; every process must then pass a ``log`` (or none) alike.
    Without ``arch_update`` (the warm-up epochs of ``--arch-warmup-epochs``) only the weights
    train: no architecture batch is drawn, and the architecture-half metrics are NaN.
    """
    model.train()
    weights = model.weights()
    xi = w_optimizer.param_groups[0]["lr"]
    total = len(weight_loader) if max_steps is None else min(max_steps, len(weight_loader))
    # Sums stay on the device and are read only when reporting, so a GPU is not synchronised
    # on every step.
    sums, seen, before = _initial_sums(progress, 4, device)  # loss, correct, arch loss, arch correct
    skip_batches(weight_loader, start_step)
    start = time.perf_counter() - before
    reports = _ReportTimes(report_every, total, start_step + 1, REPORT_SECONDS, clock=dist is None)
    step = start_step
    for step, batch in enumerate(islice(weight_loader, max(total - start_step, 0)), start=start_step + 1):
        x, y = _to(batch, device, speed)
        if arch_update:
            xv, yv = _to(next(arch_batches), device, speed)
            arch_out = architect.step((x, y), (xv, yv), xi)

        w_optimizer.zero_grad(set_to_none=True)
        with _autocast(speed), _weight_pass(model, (x, y)):
            logits = model(x)
            loss = F.cross_entropy(logits, y)
        _check_finite({"architecture": arch_out["loss"], "training": loss} if arch_update else {"training": loss},
                      epoch, step)
        loss.backward(inputs=weights)
        if dist is not None:  # the gradient of the global batch, before clipping its norm
            dist.average_gradients(weights)
        if grad_clip > 0:
            nn.utils.clip_grad_norm_(weights, grad_clip)
        w_optimizer.step()

        with torch.no_grad():
            n = y.numel()
            if arch_update:
                sums += torch.stack([
                    loss.detach().double() * n,
                    (logits.argmax(1) == y).sum().double(),
                    arch_out["loss"].double() * yv.numel(),
                    (arch_out["logits"].argmax(1) == yv).sum().double(),
                ])
            else:
                sums[:2] += torch.stack([loss.detach().double() * n, (logits.argmax(1) == y).sum().double()])
            seen += n
        if log is not None and reports.due(step):
            s, n = _totals(sums, seen, dist)
            elapsed = time.perf_counter() - start
            arch = f"arch loss {s[2] / n:.4f}  arch acc {100 * s[3] / n:.2f}%  " if arch_update else ""
            log(f"  epoch {epoch + 1} step {step}/{total}  loss {s[0] / n:.4f}  acc {100 * s[1] / n:.2f}%  "
                f"{arch}{elapsed / step:.3f} s/step")
        if on_step is not None:
            on_step(EpochProgress(epoch, step, total, seen, sums, time.perf_counter() - start))
    s, seen = _totals(sums, seen, dist)
    seen = max(seen, 1)
    return {
        "train_loss": s[0] / seen,
        "train_acc": 100.0 * s[1] / seen,
        "arch_loss": s[2] / seen if arch_update else float("nan"),
        "arch_acc": 100.0 * s[3] / seen if arch_update else float("nan"),
        "steps": step,
        "lr": xi,
        "epoch_time": time.perf_counter() - start,
    }


def train_one_epoch(model: nn.Module, loader: Iterable, optimizer: torch.optim.Optimizer, *,
                    device: torch.device, grad_clip: float, epoch: int, auxiliary_weight: float = 0.0,
                    label_smoothing: float = 0.0, max_steps: int | None = None, report_every: int = 50,
                    log: Callable[[str], None] | None = None, start_step: int = 0,
                    progress: dict[str, Any] | None = None,
                    on_step: Callable[[EpochProgress], None] | None = None, speed=None,
                    dist=None) -> dict[str, float]:
    """One epoch of ordinary training of a final network (``forward -> (logits, logits_aux)``).

    The auxiliary head's loss is added with weight ``auxiliary_weight`` when the model returns
    auxiliary logits (training mode with an auxiliary head). ``start_step``, ``progress`` and
    ``on_step`` work as in :func:`search_one_epoch`. Under torchrun ``model`` is a
    ``DistributedDataParallel`` and ``dist`` sums the metrics over the processes, so loss,
    accuracy and images per second are those of the whole job.
    """
    model.train()
    total = len(loader) if max_steps is None else min(max_steps, len(loader))
    sums, seen, before = _initial_sums(progress, 2, device)  # loss, correct
    skip_batches(loader, start_step)
    start = time.perf_counter() - before
    reports = _ReportTimes(report_every, total, start_step + 1, REPORT_SECONDS, clock=dist is None)
    step = start_step
    for step, batch in enumerate(islice(loader, max(total - start_step, 0)), start=start_step + 1):
        x, y = _to(batch, device, speed)
        optimizer.zero_grad(set_to_none=True)
        with _autocast(speed):
            logits, logits_aux = model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
            if logits_aux is not None and auxiliary_weight > 0:
                loss = loss + auxiliary_weight * F.cross_entropy(logits_aux, y, label_smoothing=label_smoothing)
        _check_finite({"training": loss}, epoch, step)
        loss.backward()
        if grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        with torch.no_grad():
            n = y.numel()
            sums += torch.stack([loss.detach().double() * n, (logits.argmax(1) == y).sum().double()])
            seen += n
        if log is not None and reports.due(step):
            s, n = _totals(sums, seen, dist)
            elapsed = time.perf_counter() - start
            log(f"  epoch {epoch + 1} step {step}/{total}  loss {s[0] / n:.4f}  acc {100 * s[1] / n:.2f}%  "
                f"{elapsed / step:.3f} s/step  {n / elapsed:.1f} images/s")
        if on_step is not None:
            on_step(EpochProgress(epoch, step, total, seen, sums, time.perf_counter() - start))
    s, seen = _totals(sums, seen, dist)
    elapsed = time.perf_counter() - start
    return {
        "train_loss": s[0] / max(seen, 1),
        "train_acc": 100.0 * s[1] / max(seen, 1),
        "steps": step,
        "lr": optimizer.param_groups[0]["lr"],
        "epoch_time": elapsed,
        "images_per_s": seen / elapsed if elapsed > 0 else 0.0,
    }


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, device: torch.device, speed=None, dist=None,
             log: Callable[[str], None] | None = None, what: str = "evaluating") -> dict[str, float]:
    """Loss and top-1 accuracy (%) in eval mode (BatchNorm running statistics). Under torchrun
    each process reads its shard and ``dist`` sums losses, hits and counts over them. With
    ``log``, an evaluation that runs longer than REPORT_SECONDS says so every REPORT_SECONDS
    (``what``: "evaluating" ...: 300/1000 images, 31 s)."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.float64, device=device)
    seen = 0
    start = last = time.perf_counter()
    with _eval_pass(model):
        for batch in loader:
            if log is not None and time.perf_counter() - last >= REPORT_SECONDS:
                last = time.perf_counter()
                total = _dataset_size(loader)
                log(f"  {what}: {seen}{f'/{total}' if total else ''} images, {last - start:.0f} s")
            x, y = _to(batch, device, speed)
            with _autocast(speed):
                logits = model(x)
            if isinstance(logits, tuple):  # final networks return (logits, logits_aux)
                logits = logits[0]
            loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").double()
            correct += (logits.argmax(1) == y).sum().double()
            seen += y.numel()
    model.train(was_training)
    (loss_total, correct_total), seen = _totals(torch.stack([loss_sum, correct]), seen, dist)
    seen = max(seen, 1)
    return {"loss": loss_total / seen, "acc": 100.0 * correct_total / seen}


def _dataset_size(loader) -> int | None:
    try:
        return len(loader.dataset)
    except (AttributeError, TypeError):
        return None
