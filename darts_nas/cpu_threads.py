"""How darts-nas uses the CPU's cores when other programs want them too.

PyTorch runs its CPU kernels on OpenMP threads, one per core by default, and every kernel waits
for its slowest thread. When another program takes a core from one of them, each of the
thousands of small kernels of a step waits for that thread's next turn: with two competing busy
processes on two cores a quick-start search step took 4.5x its idle time and a training step
up to 300x. One thread cannot be held up that way (1.4x and 1.9x), and in a small step it is only
about 10% slower than two on an idle machine, because its kernels are too short to share (and since
the small-image paths of :mod:`darts_nas.kernels`, one thread is faster than two were before
them: the issue's "idle step no slower than before" holds); at 32x32
CIFAR sizes a second core makes a step 1.6-1.7x faster. Hence :func:`default_threads`: one thread
for small steps, PyTorch's count otherwise, and ``--threads N`` to choose. The count is never
adapted to the load while running: it changes the results, and a run must compute the same way
when it is repeated or resumed.

OpenMP's wait policy stays as it is: ``OMP_WAIT_POLICY=PASSIVE`` (idle threads sleep instead of
spinning) helps a loaded machine but made every step 1.5-2.6x slower on an idle one, at every
size measured. All numbers: BENCHMARKS.md, "Busy CPU".

OpenMP reads ``OMP_NUM_THREADS`` once, when torch loads it, so :func:`configure_cpu` runs before
the first ``import torch`` in the command-line entry points and the benchmark scripts; this module
imports nothing heavy for that reason.
"""

from __future__ import annotations

import argparse
import os
import sys


def configure_cpu(threads: int | None = None) -> None:
    """Use ``threads`` CPU threads, if given: in the environment (for OpenMP, MKL and oneDNN when
    torch loads later) and in torch when it is already loaded (in-process callers, tests)."""
    if threads is None:
        return
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)


SMALL_STEP = 65_536
"""Elements of one activation (batch x channels x image side^2 at the first cell) below which a
step runs on one thread by default (see :func:`default_threads`)."""


def default_threads(batch_size: int, channels: int, image_size: int) -> int | None:
    """The thread count darts-nas picks when none was chosen: 1 for a small step, else None
    (PyTorch's choice, one per core).

    In a small step (the quick start's 64 x 8 x 8 x 8 = 32,768 elements) every kernel is too short
    for a second thread to pay much (two are about 10% faster on an idle machine), and one thread
    cannot be held up by a second one whose core another program has taken (a 1.4-1.9x slower step
    with two competing busy processes instead of 4.5-300x). At 32x32 CIFAR sizes a second core pays
    (1.6-1.7x faster idle), so those keep PyTorch's count (BENCHMARKS.md, "Busy CPU"). The choice
    depends on the settings only, never on the load of the moment, so a run and its resumption
    compute alike."""
    return 1 if batch_size * channels * image_size * image_size < SMALL_STEP else None


def apply_default_threads(batch_size: int, channels: int, image_size: int) -> int | None:
    """Use :func:`default_threads` unless the thread count was already chosen (``--threads``,
    ``OMP_NUM_THREADS``, which torchrun also sets); returns the count set, or None."""
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    threads = default_threads(batch_size, channels, image_size)
    torch = sys.modules.get("torch")
    if threads is not None and torch is not None:
        torch.set_num_threads(threads)
    return threads


def thread_count(text: str) -> int:
    """argparse type of ``--threads``: a positive integer."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number of threads, e.g. 2; got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


THREADS_HELP = ("CPU threads for PyTorch's kernels (default: OMP_NUM_THREADS if set; else 1 when batch x "
                "channels x image side^2 is under 65,536, as in the quick start, where more threads gain little "
                "and a busy machine would stall them; else one per core). On a machine busy with other "
                "programs, fewer threads than cores keep a step from slowing several-fold")


def add_threads_flag(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument("--threads", type=thread_count, default=None, metavar="N", help=THREADS_HELP)
