"""Speed settings that do not change what is computed, only how: mixed precision, memory
format, compilation, and a clear answer when a batch does not fit in GPU memory.

* ``--amp``: forward passes run under ``torch.autocast`` in bfloat16 (convolutions and matrix
  products in bf16, reductions and the loss in float32; weights, gradients and optimizer state
  stay float32). bf16 has float32's range, so no loss scaling is needed. The finite-difference
  Hessian-vector product of the second-order search always runs in float32: the difference of two
  nearly equal gradients divided by a tiny epsilon would be bf16 rounding noise otherwise.
* ``--channels-last``: weights and input batches in NHWC order. oneDNN runs the depthwise
  convolutions that fill a DARTS cell several times faster this way, so it is the default on the
  CPU; on CUDA it measured slower (BENCHMARKS.md), so there it is off unless asked for.
* ``--compile``: ``nn.Module.compile`` (torch.compile in place, so parameter names, state dicts
  and ``torch.func.functional_call`` keep working).
* On the CPU under glibc, :meth:`Speed.prepare` asks malloc to keep the memory that tensors free
  for reuse instead of handing it back to the kernel (:func:`keep_freed_cpu_memory`): otherwise
  every pass whose allocations do not fit the heap's current top touches fresh pages again, about
  a gigabyte of page faults per finite-difference pass of a second-order step at the paper setting
  (BENCHMARKS.md). ``DARTS_NAS_KEEP_FREED_MEMORY=0`` leaves malloc at its defaults.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import sys
from dataclasses import dataclass
from typing import Callable, ContextManager, TypeVar

import torch
from torch import nn

from .errors import ConfigError, DartsNasError

T = TypeVar("T")


@dataclass(frozen=True)
class Speed:
    """How a run executes: ``amp``, ``channels_last`` and ``compile`` flags on ``device``.
    ``channels_last=None`` chooses for the device: on for the CPU, off for CUDA."""

    device: torch.device
    amp: bool = False
    channels_last: bool | None = None
    compile: bool = False

    def __post_init__(self) -> None:
        if self.channels_last is None:
            object.__setattr__(self, "channels_last", self.device.type == "cpu")
        if self.amp and self.device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError(
                f"--amp uses bfloat16, which {torch.cuda.get_device_name(self.device)} does not support: "
                f"drop --amp (bf16 needs an NVIDIA Ampere GPU or newer)")

    def autocast(self) -> ContextManager:
        """The context for forward passes: bf16 autocast with ``amp``, else nothing."""
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    def prepare(self, model: nn.Module) -> nn.Module:
        """Move ``model`` to the device in the chosen memory format, compiled if asked (in place)."""
        if self.device.type == "cpu":
            keep_freed_cpu_memory()
        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if self.compile:
            model.compile()
        return model

    def batch(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(images, labels) on the device, images in the chosen memory format."""
        x, y = batch
        x = x.to(self.device, non_blocking=True)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y.to(self.device, non_blocking=True)

    def describe(self) -> str:
        parts = [name for name, on in (("bf16 autocast", self.amp), ("channels_last", self.channels_last),
                                       ("torch.compile", self.compile)) if on]
        if self.device.type == "cpu":  # see darts_nas.cpu_threads
            threads = torch.get_num_threads()
            parts.append(f"{threads} thread{'s' if threads != 1 else ''}")
        return ", ".join(parts) if parts else "float32"


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_MAX = 32 << 20  # glibc's largest accepted value on 64-bit systems
_kept_freed_memory: bool | None = None


def keep_freed_cpu_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse; True if the setting is in effect.

    By default glibc returns the top of its heap to the kernel once more than a (dynamically
    chosen) threshold of it is free, and serves blocks above another dynamic threshold with
    ``mmap``, unmapping them on free. A search step frees and reallocates gigabytes of
    activations several times per step, and each time the freed pages come back as page faults
    that zero them again. This sets the ``mmap`` threshold to its maximum (32 MiB; larger blocks
    are still mapped and unmapped) and turns trimming off, so the process's resident memory
    stays at its peak instead of falling between passes; the peak itself is unchanged
    (BENCHMARKS.md). A no-op returning False where the C library is not glibc, or when the
    environment sets ``DARTS_NAS_KEEP_FREED_MEMORY=0``. Process-wide, applied once.
    """
    global _kept_freed_memory
    if _kept_freed_memory is None:
        _kept_freed_memory = False
        if os.environ.get("DARTS_NAS_KEEP_FREED_MEMORY", "1") != "0" and sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL("libc.so.6")
                libc.gnu_get_libc_version  # glibc only: musl has no such symbol
                mallopt = libc.mallopt
            except (OSError, AttributeError):
                return False
            mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
            # -1 as the trim threshold is glibc's documented "never trim"
            _kept_freed_memory = (mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX) == 1
                                  and mallopt(_M_TRIM_THRESHOLD, -1) == 1)
    return _kept_freed_memory


def is_out_of_memory(exc: BaseException) -> bool:
    """True for CUDA out-of-memory errors (and the CPU allocator's 'not enough memory')."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and ("out of memory" in str(exc) or "not enough memory" in str(exc))


class BatchTooLargeError(DartsNasError):
    """The batch size does not fit in the device's memory."""


def free_device_memory(device: torch.device) -> None:
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def largest_fitting_batch(try_batch: Callable[[int], None], batch_size: int, device: torch.device) -> int:
    """The largest batch size below ``batch_size`` for which ``try_batch(b)`` runs without running
    out of memory (0 if not even 1 fits): halve until one fits, then bisect between that size and
    the failing one. ``try_batch`` runs one full step at batch size ``b``; its effects on the
    model must be undone by the caller (it is called on copies)."""
    low, high = 0, batch_size  # low fits (0 trivially), high does not
    candidate = batch_size // 2
    while candidate >= 1:
        if _fits(try_batch, candidate, device):
            low = candidate
            break
        high = candidate
        candidate //= 2
    if low == 0:
        return 0
    # Bisect to within ~5% of the answer: each probe is one training step.
    while high - low > max(1, math.ceil(0.05 * low)):
        middle = (low + high) // 2
        if _fits(try_batch, middle, device):
            low = middle
        else:
            high = middle
    return low


def _fits(try_batch: Callable[[int], None], batch_size: int, device: torch.device) -> bool:
    try:
        try_batch(batch_size)
        return True
    except Exception as exc:  # noqa: BLE001 - only out-of-memory errors are answered here
        if not is_out_of_memory(exc):
            raise
        return False
    finally:
        free_device_memory(device)


def answer_out_of_memory(run: Callable[[], T], probe: Callable[[int], None], batch_size: int,
                         device: torch.device) -> T:
    """``run()``; if it runs out of memory, raise :class:`BatchTooLargeError` naming the largest
    batch size for which ``probe(b)`` (one step on a fresh model) fits."""
    try:
        return run()
    except Exception as exc:  # noqa: BLE001 - only out-of-memory errors are answered here
        if not is_out_of_memory(exc):
            raise
    # Outside the except block, so the failed step's tensors (held by the traceback) are freed
    # before probing which batch size fits.
    free_device_memory(device)
    raise batch_too_large(device, batch_size, largest_fitting_batch(probe, batch_size, device))


def batch_too_large(device: torch.device, batch_size: int, fitting: int, flag: str = "--batch-size") -> BatchTooLargeError:
    where = str(device)
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory / 2**30
        where = f"{torch.cuda.get_device_name(device)} ({device}, {total:.0f} GiB)"
    if fitting < 1:
        return BatchTooLargeError(
            f"out of memory on {where} even at batch size 1: use fewer --layers or --init-channels, "
            f"or another device")
    return BatchTooLargeError(
        f"batch size {batch_size} does not fit in the memory of {where}; the largest that fits is about "
        f"{fitting} (measured): pass {flag} {fitting} or smaller, and scale the learning rate by the same "
        f"factor (see the README)")
