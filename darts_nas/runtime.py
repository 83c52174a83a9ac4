"""What every run needs before it starts: a device, seeds, and a run directory."""

from __future__ import annotations

import json
import os
import platform
import random
import secrets
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__
from .checkpoint import numbered_checkpoints
from .commands import command
from .errors import ConfigError, RunDirError
from .runfiles import RunDirLock

FINISHED_MARKER = "summary.json"


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available, else the CPU; asking for CUDA without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name} was requested but PyTorch sees no CUDA GPU here: "
                              f"use --device cpu (or auto){_no_gpu_fix()}")
        device = torch.device(name)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {name} does not exist: this machine has "
                              f"{torch.cuda.device_count()} GPU(s), numbered from 0")
        return device
    if name == "cpu":
        return torch.device("cpu")
    raise ConfigError(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}")


def _no_gpu_fix() -> str:
    """What else to try when CUDA was asked for and none is seen: a CPU-only build of torch needs
    a CUDA build; a CUDA build needs a GPU and its driver (or CUDA_VISIBLE_DEVICES lets none be seen)."""
    if torch.version.cuda is None:
        return ", or install a CUDA build of torch"
    return (f", or check that this machine has an NVIDIA GPU and its driver (this torch is built for CUDA "
            f"{torch.version.cuda}) and that CUDA_VISIBLE_DEVICES does not hide it")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng_states() -> dict[str, Any]:
    """Every global random state a run depends on, in types ``torch.load(weights_only=True)`` reads."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    states: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [name, keys.tolist(), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def settings_differences(saved: dict[str, Any], current: dict[str, Any], ignore: set[str]) -> list[str]:
    """``name: saved -> current`` for every setting that differs, except those in ``ignore``. A
    setting added after ``saved`` was written counts as its value that reproduces older runs."""
    from .config import ADDED_SEARCH_SETTINGS

    saved = {**{k: v for k, v in ADDED_SEARCH_SETTINGS.items() if k in current}, **saved}
    keys = sorted((set(saved) | set(current)) - ignore)
    return [f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in keys if saved.get(k) != current.get(k)]


def run_kind(settings: dict[str, Any]) -> str:
    """'train' or 'search': which script's settings (a config.json's "config") these are."""
    return "train" if "cell" in settings else "search"


def _other_kind_of_run(path: Path, kind: str) -> str | None:
    """'search (train_search.py)' or 'training run (train_final.py)' (darts-search, darts-train under
    those) when ``path`` holds a run of the other script than ``kind`` ('search' or 'train'), judged
    by its config.json; else None."""
    try:
        theirs = run_kind(json.loads((path / "config.json").read_text())["config"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if theirs == kind:
        return None
    return f"search ({command('search')})" if theirs == "search" else f"training run ({command('train')})"


def prepare_run_dir(out: str | None, kind: str, dataset: str, overwrite: bool,
                    owned_files: tuple[str, ...], finished_marker: str = FINISHED_MARKER,
                    allow_unfinished: bool = False, lock: RunDirLock | None = None) -> Path:
    """Create (or reuse) the run directory, refusing to clobber an earlier run silently.

    With ``lock``, the directory is locked (:class:`~darts_nas.runfiles.RunDirLock`) before
    anything in it is looked at, and stays locked until the caller releases the lock: a second
    run on the same directory is refused, naming the first one's process.

    With ``overwrite`` a finished run's files (``owned_files``) are removed first; anything else a
    user keeps in the directory is left alone. An unfinished run is left as it is, overwrite or
    not: :func:`darts_nas.resume.resume_or_start_afresh` resumes it when its settings match and
    (with ``overwrite``) starts afresh when they do not, so rerunning a command that has
    ``--overwrite`` never throws away an interrupted run it could continue.
    """
    if out is None:
        out = os.path.join("runs", f"{kind}-{dataset}-{time.strftime('%Y%m%d-%H%M%S')}")
    if not str(out).strip():
        raise RunDirError("--out is empty: give the run directory (or leave --out out for "
                          "runs/<kind>-<dataset>-<time>)")
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise RunDirError(f"--out {path} is a file, not a directory: choose another --out")
    try:
        path.mkdir(parents=True, exist_ok=True)
        if lock is not None:
            lock.acquire(path)
        # O_EXCL: a fresh name of our own, never a file (or link) that is already there.
        probe = path / f".write-test.{os.getpid()}.{secrets.token_hex(4)}"
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666))
        os.unlink(probe)
    except RunDirError:
        raise
    except OSError as exc:
        if lock is not None:
            lock.release()
        raise RunDirError(f"cannot write to the output directory {path} ({exc.strerror}): "
                          f"choose a writable --out") from None
    try:
        _check_earlier_run(path, kind, overwrite, finished_marker, allow_unfinished)
    except RunDirError:
        if lock is not None:
            lock.release()
        raise
    if overwrite and (path / finished_marker).exists():
        for name in owned_files:
            target = path / name
            if target.is_file() or target.is_symlink():
                target.unlink()  # a link itself, never its target
        for target in numbered_checkpoints(path):  # the finished run's: it starts afresh, not resumed
            target.unlink()
    return path


def _check_earlier_run(path: Path, kind: str, overwrite: bool, finished_marker: str, allow_unfinished: bool) -> None:
    other = _other_kind_of_run(path, kind)
    if other is not None:
        # Never replaced, --overwrite or not: the two scripts own different files, and clearing
        # one's would leave a directory mixing both.
        mine = "search" if kind == "search" else "training run"
        raise RunDirError(f"{path} holds a {other}: choose another --out (--overwrite replaces only a {mine})")
    if path.is_dir() and not overwrite:
        if (path / finished_marker).exists():
            raise RunDirError(f"{path} already holds a finished {kind} run: choose another --out, "
                              f"or pass --overwrite to replace it")
        if (path / "config.json").exists() and not allow_unfinished:
            raise RunDirError(f"{path} already holds an unfinished {kind} run: choose another --out, "
                              f"or pass --overwrite to start it again")


def git_commit() -> str | None:
    """The commit of the darts-nas checkout in use, if it is one."""
    here = Path(__file__).resolve().parent.parent
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                                text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def environment(device: torch.device) -> dict[str, Any]:
    env = {
        "darts_nas_version": __version__,
        "git_commit": git_commit(),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "device": str(device),
        "threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env
