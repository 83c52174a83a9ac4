"""How darts-nas shares the CPU with other programs: threads and OpenMP waiting.

PyTorch runs its CPU kernels on OpenMP threads. By default an OpenMP thread that finishes its
share of a kernel spins, waiting for the next one, instead of sleeping. On a machine where other
programs are busy, the spinning threads take the cores from the threads that have work, and
every one of the thousands of small kernels of a search step waits for its slowest thread: a
step took 40x its time on an idle machine with two competing busy processes on two cores
(BENCHMARKS.md, "Busy CPU"). With ``OMP_WAIT_POLICY=PASSIVE`` waiting threads sleep, and the same
step takes about twice its idle time, while the idle step keeps its speed.

OpenMP reads the policy once, when torch loads it, so :func:`configure_cpu` must run before the
first ``import torch``: the command-line entry points and the benchmark scripts call it first.
This module imports nothing heavy for that reason.
"""

from __future__ import annotations

import argparse
import os
import sys

WAIT_POLICY = "PASSIVE"


def configure_cpu(threads: int | None = None) -> None:
    """Make idle OpenMP threads sleep (unless ``OMP_WAIT_POLICY`` is already set: the user's
    choice wins) and, if ``threads`` is given, use that many CPU threads.

    Call before torch is imported for the wait policy to take effect; the thread count also
    applies when torch is already loaded (in-process callers, tests)."""
    os.environ.setdefault("OMP_WAIT_POLICY", WAIT_POLICY)
    if threads is None:
        return
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)


def thread_count(text: str) -> int:
    """argparse type of ``--threads``: a positive integer."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number of threads, e.g. 2; got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


THREADS_HELP = ("CPU threads for PyTorch's kernels (default: PyTorch's choice, one per core). Idle threads "
                "sleep rather than spin (OMP_WAIT_POLICY=PASSIVE unless set), so other busy programs slow a "
                "step about 2x rather than 40x; on a machine that is always busy, fewer threads than cores "
                "can be faster still")


def add_threads_flag(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument("--threads", type=thread_count, default=None, metavar="N", help=THREADS_HELP)
