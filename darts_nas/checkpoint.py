"""Atomic checkpoint writes and safe loads.

A checkpoint is written to a temporary file in the same directory, flushed to disk, then renamed
over the old one, so a crash at any moment leaves either the old or the new file, never a torn
one. Loading uses ``torch.load(..., weights_only=True)``: nothing in a checkpoint can run code.
"""

from __future__ import annotations

import io
import json
import os
import re
import secrets
from pathlib import Path
from typing import Any, Collection

import torch

from .errors import CheckpointError, RunDirError, RunFileError
from .runfiles import read_records, remove_file

# 2: checkpoints may be taken inside an epoch ("step" > 0, with the epoch's partial "progress").
# A version-1 checkpoint (end of epoch only) reads as step 0 and still resumes.
FORMAT_VERSION = 2


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory, fsync, rename.

    The temporary file is created with mode 0o666 so the umask decides the permissions, as for
    any new file (``tempfile.mkstemp`` would make it owner-only). On any failure the temporary
    file is removed and the previous ``path`` is left as it was; an OS error (full disk,
    read-only or unwritable directory) becomes a :class:`RunFileError` naming ``path``.
    """
    path = Path(path)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        # O_EXCL: never an existing file, nor through a link planted under the temporary's name.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    except OSError as exc:
        raise RunFileError.from_os_error(exc, path) from exc
    try:
        try:
            view = memoryview(data)
            while view:  # os.write may write less than asked
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError) and not isinstance(exc, RunFileError):
            raise RunFileError.from_os_error(exc, path) from exc
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def remove_stale_temporaries(out: str | os.PathLike) -> list[Path]:
    """Remove the temporary files of writes that a killed process never finished (a run is the
    only writer of its directory, so any left when it starts are stale)."""
    stale = [p for p in Path(out).glob(".*.tmp") if _TEMPORARY.fullmatch(p.name)]
    for path in stale:
        remove_file(path)
    return stale


_TEMPORARY = re.compile(r"\..+\.\d+\.[0-9a-f]{8}\.tmp")


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save({"format_version": FORMAT_VERSION, **state}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist: check the path or the run's --out directory")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many kinds for truncated or foreign files
        raise CheckpointError(f"checkpoint {path} is corrupt or not a darts-nas checkpoint "
                              f"({type(exc).__name__}): use an earlier checkpoint or start the run again") from None
    if not isinstance(state, dict) or "format_version" not in state:
        raise CheckpointError(f"checkpoint {path} is not a darts-nas checkpoint (no format version)")
    if not isinstance(state["format_version"], int) or state["format_version"] > FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} has format {state['format_version']}, newer than this "
                              f"darts-nas understands ({FORMAT_VERSION}): upgrade darts-nas")
    return state


_NUMBERED = re.compile(r"checkpoint-epoch(\d+)(?:-step(\d+))?\.pt")


def checkpoint_name(epoch: int, step: int = 0) -> str:
    """``checkpoint-epochNNNN.pt`` after ``epoch`` whole epochs; inside an epoch,
    ``checkpoint-epochNNNN-stepSSSSSS.pt`` after ``step`` steps of epoch ``epoch + 1`` (numbered
    from 1, like the log)."""
    return f"checkpoint-epoch{epoch + 1:04d}-step{step:06d}.pt" if step else f"checkpoint-epoch{epoch:04d}.pt"


def _position(path: Path) -> tuple[int, float]:
    match = _NUMBERED.fullmatch(path.name)
    epoch, step = int(match.group(1)), match.group(2)
    # Inside epoch N, after S steps: (N, S); at the end of epoch N: (N, inf).
    return epoch, float(step) if step is not None else float("inf")


def numbered_checkpoints(out: str | os.PathLike) -> list[Path]:
    """The run's numbered checkpoints, newest first (those taken inside an epoch included); a link
    under such a name is not one (it is neither read nor removed)."""
    paths = [p for p in Path(out).glob("checkpoint-epoch*.pt")
             if _NUMBERED.fullmatch(p.name) and not p.is_symlink() and p.is_file()]
    return sorted(paths, key=_position, reverse=True)


def save_rotating(out: str | os.PathLike, epoch: int, state: dict[str, Any], keep: int, step: int = 0,
                  protect: Collection[int] = ()) -> Path:
    """Write the numbered checkpoint (:func:`checkpoint_name`) atomically, point ``checkpoint.pt``
    at it (a hard link, replaced atomically; a copy where links are not supported) and keep the
    newest ``keep`` of those up to this one: a file that names a later position (junk, or a
    checkpoint from elsewhere) never pushes out the checkpoint just written. The end-of-epoch
    checkpoints of the epochs in ``protect`` are kept as well (DARTS-ADA may roll back to them)."""
    out = Path(out)
    path = out / checkpoint_name(epoch, step)
    save_checkpoint(path, state)
    latest = out / "checkpoint.pt"
    tmp = out / f".checkpoint.pt.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        os.link(path, tmp)
        os.replace(tmp, latest)
    except OSError:
        remove_file(tmp)
        atomic_write_bytes(latest, path.read_bytes())
    here = _position(path)
    for old in [p for p in numbered_checkpoints(out) if _position(p) <= here][max(keep, 1):]:
        if _position(old) not in {(e, float("inf")) for e in protect}:
            remove_file(old)
    return path


def remove_checkpoints_after(out: str | os.PathLike, epoch: int) -> None:
    """Remove the numbered checkpoints taken after the end of ``epoch`` (those of a stretch a
    rollback discards), newest first, so that the newest left is always a valid place to resume."""
    for path in numbered_checkpoints(out):
        if _position(path) > (epoch, float("inf")):
            remove_file(path)


def load_newest_valid(out: str | os.PathLike, warn, map_location: str | torch.device = "cpu",
                      kind: str | None = None, check=None) -> dict[str, Any] | None:
    """The newest numbered checkpoint that loads; a corrupt one is skipped with a one-line
    warning (the previous one is used), and a run none of whose checkpoints loads is refused.
    Without numbered checkpoints, ``checkpoint.pt`` (the latest) is used when it is there.
    None when the run has no checkpoint yet. With ``kind``,
    a checkpoint of another kind of run (a retraining's in a search directory) is refused.
    ``check(state, path)`` may raise :class:`CheckpointError` for a checkpoint that loads but is
    incomplete or inconsistent: it is skipped like a corrupt one."""
    paths = numbered_checkpoints(out)
    latest = Path(out) / "checkpoint.pt"
    if not paths and latest.is_file() and not latest.is_symlink():
        paths = [latest]
    for path in paths:
        try:
            state = load_checkpoint(path, map_location)
            if not isinstance(state.get("epoch"), int) or isinstance(state.get("epoch"), bool):
                raise CheckpointError(f"checkpoint {path} is incomplete (it records no epoch)")
            if check is not None and state.get("kind", kind) == kind:
                check(state, path)
        except CheckpointError as exc:
            if path == paths[-1]:
                # Starting afresh would throw away the run's history with its (perhaps recoverable) files.
                raise CheckpointError(
                    f"none of the {len(paths)} checkpoint(s) in {out} can be read (the oldest: {exc}): pass "
                    f"--overwrite to start the run afresh, or choose another --out") from None
            warn(f"warning: {exc}; falling back to the previous checkpoint")
            continue
        if kind is not None and state.get("kind") != kind:
            raise CheckpointError(
                f"checkpoint {path} belongs to a {state.get('kind', 'different')} run, not a {kind} run: "
                f"choose another --out, or pass --overwrite to start a new {kind} run in {out}")
        state["path"] = str(path)
        state.setdefault("step", 0)  # format 1: end of epoch only
        return state
    return None


def clear_run_files(out: Path, run_files: tuple[str, ...]) -> None:
    """Remove what a run writes (but its log) before it starts afresh in ``out``."""
    for name in run_files:
        if name != "log.txt":
            remove_file(Path(out) / name)
    for path in numbered_checkpoints(out):
        remove_file(path)


def truncate_jsonl(path: Path, epochs: int, warn=None) -> None:
    """Keep the records of the first ``epochs`` epochs (a resumed run writes the rest again). A
    torn last line is dropped (``warn`` is told); a damaged one before it, or a record without an
    epoch number, is refused naming the file and the line."""
    if not os.path.lexists(path):
        return
    records = read_records(path, warn)
    for i, record in enumerate(records):
        if not isinstance(record.get("epoch"), int):
            raise RunDirError(f"{path}: record {i + 1} has no epoch number: delete or repair that line, or pass "
                              f"--overwrite to start the run afresh")
    atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records if r["epoch"] <= epochs))
