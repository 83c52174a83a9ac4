"""The loops: one plain function per loop, each returning a metrics dict."""

from __future__ import annotations

import time
from itertools import islice
from typing import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .errors import DartsNasError


class NonFiniteLossError(DartsNasError):
    """The loss became NaN or infinite."""


def _to(batch, device: torch.device):
    x, y = batch
    return x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def _totals(sums: torch.Tensor, seen: int, dist) -> tuple[list[float], int]:
    """The metric sums and the image count of every process (of this one without ``dist``)."""
    if dist is None:
        return sums.tolist(), seen
    total = dist.all_sum(torch.cat([sums, sums.new_tensor([seen])]))
    return total[:-1].tolist(), int(total[-1].item())


def search_one_epoch(model: nn.Module, architect, weight_loader: Iterable, arch_batches: Iterator,
                     w_optimizer: torch.optim.Optimizer, *, device: torch.device, grad_clip: float,
                     epoch: int, max_steps: int | None = None, report_every: int = 50,
                     log: Callable[[str], None] | None = None, dist=None) -> dict[str, float]:
    """One epoch of the alternating bilevel search.

    Per step (REFERENCE section 3): an architecture step on the next batch of the architecture
    half, then an SGD step on the weights with a batch of the weight half. ``xi`` of the
    second-order step is the weights' learning rate of this epoch. Under torchrun ``dist``
    (:class:`darts_nas.distributed.Distributed`) averages the weight gradients over the
    processes and sums the metrics; every process must then pass a ``log`` (or none) alike.
    """
    model.train()
    weights = model.weights()
    xi = w_optimizer.param_groups[0]["lr"]
    total = len(weight_loader) if max_steps is None else min(max_steps, len(weight_loader))
    # Sums stay on the device and are read only when reporting, so a GPU is not synchronised
    # on every step.
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, correct, arch loss, arch correct
    seen = 0
    start = time.perf_counter()
    step = 0
    for step, batch in enumerate(islice(weight_loader, total), start=1):
        x, y = _to(batch, device)
        xv, yv = _to(next(arch_batches), device)
        arch_out = architect.step((x, y), (xv, yv), xi)

        w_optimizer.zero_grad(set_to_none=True)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"the training loss became {loss.item()} at epoch {epoch + 1}, step {step}: lower "
                f"--learning-rate or --arch-learning-rate, or check the data for NaNs")
        loss.backward(inputs=weights)
        if dist is not None:  # the gradient of the global batch, before clipping its norm
            dist.average_gradients(weights)
        if grad_clip > 0:
            nn.utils.clip_grad_norm_(weights, grad_clip)
        w_optimizer.step()

        with torch.no_grad():
            n = y.numel()
            sums += torch.stack([
                loss.detach().double() * n,
                (logits.argmax(1) == y).sum().double(),
                arch_out["loss"].double() * yv.numel(),
                (arch_out["logits"].argmax(1) == yv).sum().double(),
            ])
            seen += n
        if log is not None and (step % report_every == 0 or step == total):
            s, n = _totals(sums, seen, dist)
            elapsed = time.perf_counter() - start
            log(f"  epoch {epoch + 1} step {step}/{total}  loss {s[0] / n:.4f}  acc {100 * s[1] / n:.2f}%  "
                f"arch loss {s[2] / n:.4f}  arch acc {100 * s[3] / n:.2f}%  "
                f"{elapsed / step:.3f} s/step")
    s, seen = _totals(sums, seen, dist)
    seen = max(seen, 1)
    return {
        "train_loss": s[0] / seen,
        "train_acc": 100.0 * s[1] / seen,
        "arch_loss": s[2] / seen,
        "arch_acc": 100.0 * s[3] / seen,
        "steps": step,
        "lr": xi,
        "epoch_time": time.perf_counter() - start,
    }


def train_one_epoch(model: nn.Module, loader: Iterable, optimizer: torch.optim.Optimizer, *,
                    device: torch.device, grad_clip: float, epoch: int, auxiliary_weight: float = 0.0,
                    label_smoothing: float = 0.0, max_steps: int | None = None, report_every: int = 50,
                    log: Callable[[str], None] | None = None, dist=None) -> dict[str, float]:
    """One epoch of ordinary training of a final network (``forward -> (logits, logits_aux)``).

    The auxiliary head's loss is added with weight ``auxiliary_weight`` when the model returns
    auxiliary logits (training mode with an auxiliary head). Under torchrun ``model`` is a
    ``DistributedDataParallel`` and ``dist`` sums the metrics over the processes, so loss,
    accuracy and images per second are those of the whole job.
    """
    model.train()
    total = len(loader) if max_steps is None else min(max_steps, len(loader))
    sums = torch.zeros(2, dtype=torch.float64, device=device)  # loss, correct
    seen = 0
    start = time.perf_counter()
    step = 0
    for step, batch in enumerate(islice(loader, total), start=1):
        x, y = _to(batch, device)
        optimizer.zero_grad(set_to_none=True)
        logits, logits_aux = model(x)
        loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
        if logits_aux is not None and auxiliary_weight > 0:
            loss = loss + auxiliary_weight * F.cross_entropy(logits_aux, y, label_smoothing=label_smoothing)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"the training loss became {loss.item()} at epoch {epoch + 1}, step {step}: lower "
                f"--learning-rate, or check the data for NaNs")
        loss.backward()
        if grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        with torch.no_grad():
            n = y.numel()
            sums += torch.stack([loss.detach().double() * n, (logits.argmax(1) == y).sum().double()])
            seen += n
        if log is not None and (step % report_every == 0 or step == total):
            s, n = _totals(sums, seen, dist)
            elapsed = time.perf_counter() - start
            log(f"  epoch {epoch + 1} step {step}/{total}  loss {s[0] / n:.4f}  acc {100 * s[1] / n:.2f}%  "
                f"{elapsed / step:.3f} s/step  {n / elapsed:.1f} images/s")
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
def evaluate(model: nn.Module, loader: Iterable, device: torch.device, dist=None) -> dict[str, float]:
    """Loss and top-1 accuracy (%) in eval mode (BatchNorm running statistics). Under torchrun
    each process reads its shard and ``dist`` sums losses, hits and counts over them."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.float64, device=device)
    seen = 0
    for batch in loader:
        x, y = _to(batch, device)
        logits = model(x)
        if isinstance(logits, tuple):  # final networks return (logits, logits_aux)
            logits = logits[0]
        loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
        correct += (logits.argmax(1) == y).sum().double()
        seen += y.numel()
    model.train(was_training)
    (loss_total, correct_total), seen = _totals(torch.stack([loss_sum, correct]), seen, dist)
    seen = max(seen, 1)
    return {"loss": loss_total / seen, "acc": 100.0 * correct_total / seen}
