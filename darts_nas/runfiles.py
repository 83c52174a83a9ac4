"""The files of a run directory, written so that nobody else can break them and they break nothing.

- **One run at a time.** :class:`RunDirLock` holds an exclusive ``flock`` on ``<out>/.lock`` for
  the life of a run, with the holder's process id in the file; a second run on the same directory
  is refused in one line naming that process. The kernel drops the lock when the holder exits,
  however it exits (SIGKILL included), so a stale lock never blocks a rerun.
- **Never through a link.** Every file a run creates or appends to is opened with ``O_NOFOLLOW``
  (temporary files with ``O_EXCL`` as well), so a link planted under a run file's name is refused
  instead of writing through it to its target; renames and unlinks act on the link itself.
- **Records survive a crash.** :func:`append_record` writes a JSON line whole, with one ``write``
  of the full line, and flushes it to disk; :func:`read_records` drops a torn last line (with a
  warning) and refuses a damaged line in the middle in one line naming the file and line number.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import stat
import time
from pathlib import Path
from typing import Any, Callable

from .errors import RunDirError, RunFileError

LOCK_FILE = ".lock"
ORPHAN_WAIT_S = 15.0  # PyTorch's workers check every 5 s whether their parent is still alive
_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK  # O_NONBLOCK: a planted FIFO must not hang the run


def _opened(path: Path, flags: int) -> int:
    """``os.open(path, flags | no-follow)`` of a regular file; anything else (a link, a FIFO, a
    directory) is refused with a :class:`RunFileError` naming ``path``."""
    try:
        fd = os.open(path, flags | _NOFOLLOW, 0o666)
    except OSError as exc:
        raise RunFileError.from_os_error(exc, path) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise RunFileError.from_os_error(OSError(errno.EINVAL, "not a regular file"), path)
    return fd


def open_for_append(path: str | os.PathLike) -> int:
    """A descriptor appending to the regular file ``path`` (created when missing), never through a link."""
    return _opened(Path(path), os.O_WRONLY | os.O_APPEND | os.O_CREAT)


def read_bytes(path: str | os.PathLike) -> bytes:
    """The contents of the regular file ``path``, never read through a link."""
    fd = _opened(Path(path), os.O_RDONLY)
    try:
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read()
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:  # os.write may write less than asked (a full disk)
        view = view[os.write(fd, view):]


def append_record(path: str | os.PathLike, record: dict[str, Any]) -> None:
    """Append ``record`` as one JSON line: the whole line in one ``write``, then fsync, so a crash
    leaves the line whole or absent (at worst torn at the end, which :func:`read_records` drops)."""
    line = (json.dumps(record, sort_keys=True) + "\n").encode("utf-8")
    fd = open_for_append(path)
    try:
        write_all(fd, line)
        os.fsync(fd)
    except OSError as exc:
        raise RunFileError.from_os_error(exc, path) from None
    finally:
        os.close(fd)


def read_records(path: str | os.PathLike, warn: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """The JSON-object lines of ``path``. A damaged last line (a write torn by a crash) is dropped,
    telling ``warn``; a damaged line before it raises :class:`RunDirError` naming the file and line."""
    path = Path(path)
    lines = read_bytes(path).split(b"\n")
    records: list[dict[str, Any]] = []
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            if i == last:
                if warn is not None:
                    warn(f"warning: dropped the damaged last line {i + 1} of {path} (a write cut short by a "
                         f"crash); the run writes that record again")
                break
            reason = str(exc).split(":")[0]
            raise RunDirError(f"{path} line {i + 1} is not a JSON record ({reason}): delete or repair that "
                              f"line, or pass --overwrite to start the run afresh") from None
        records.append(record)
    return records


def remove_file(path: str | os.PathLike) -> None:
    """Unlink ``path`` if it exists: a link is removed itself, its target is never touched."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


class RunDirLock:
    """An exclusive lock on a run directory, held from :meth:`acquire` until :meth:`release` (or
    the process's end). Under torchrun only rank 0 takes it; the others hold an empty one."""

    def __init__(self) -> None:
        self.fd: int | None = None
        self.path: Path | None = None

    def acquire(self, out: Path) -> None:
        path = out / LOCK_FILE
        fd = _opened(path, os.O_RDWR | os.O_CREAT)
        deadline = None
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    os.close(fd)
                    raise RunFileError.from_os_error(exc, path) from None
                if not (holder.isdigit() and not _alive(int(holder))):
                    os.close(fd)
                    who = f"process {holder}" if holder.isdigit() else "another process"
                    raise RunDirError(f"{out} is in use by another darts-nas run ({who}): wait for it to finish or "
                                      f"stop it, or choose another --out") from None
                # The holder has ended (killed, say) but processes it forked (DataLoader workers)
                # share its lock until they notice, within seconds: wait for them.
                deadline = deadline or time.monotonic() + ORPHAN_WAIT_S
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise RunDirError(f"{out} is still locked by processes left over from process {holder}, which "
                                      f"has ended: wait for them to exit, or choose another --out") from None
                time.sleep(0.1)
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        except OSError as exc:
            os.close(fd)
            raise RunFileError.from_os_error(exc, path) from None
        self.fd, self.path = fd, path

    def released_on_error(self, fn: Callable[[], Any]) -> Any:
        """``fn()``; if it raises, the lock is released first (the caller's ``finally`` is not
        reached yet)."""
        try:
            return fn()
        except BaseException:
            self.release()
            raise

    @property
    def held(self) -> bool:
        return self.fd is not None

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = None
