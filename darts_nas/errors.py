"""The project's own error types.

Every problem a user can cause (a bad flag, a missing dataset, a malformed genotype, a corrupt
checkpoint) raises a subclass of :class:`DartsNasError` with a one-sentence message naming the
problem and the fix. The command-line entry points print that message and exit with status 2
instead of showing a traceback.
"""

from __future__ import annotations

import errno
import sys
from pathlib import Path


def print_error(message: str) -> None:
    """The one line a command prints for a problem it cannot go on with."""
    print(f"error: {message}", file=sys.stderr, flush=True)


class DartsNasError(Exception):
    """Base class of every error darts-nas raises on purpose."""


class ConfigError(DartsNasError, ValueError):
    """An invalid setting (flag value, unknown name, inconsistent options)."""


class GenotypeError(DartsNasError, ValueError):
    """A genotype that cannot be parsed or is not a valid cell."""


class DataError(DartsNasError):
    """A dataset that is missing, empty or unusable."""


class CheckpointError(DartsNasError):
    """A checkpoint that is missing, corrupt or belongs to another run."""


class RunDirError(DartsNasError):
    """An output directory that cannot be used (finished run, unwritable)."""


class RunFileError(RunDirError, OSError):
    """A run file could not be written (full disk, read-only or unwritable directory).

    Also an ``OSError``, so code that handles OS errors keeps working.
    """

    @classmethod
    def from_os_error(cls, exc: OSError, path) -> "RunFileError":
        reason = exc.strerror or str(exc)
        full = exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG)
        fix = "free disk space" if full else f"make {Path(path).parent} writable"
        if exc.errno == errno.ELOOP or exc.errno == errno.EINVAL and reason == "not a regular file":
            # O_NOFOLLOW met a planted link (or a FIFO, a directory): never written through.
            reason = "it is a symbolic link" if exc.errno == errno.ELOOP else "it is not a regular file"
            fix = "remove it (a run never writes through links or into special files)"
        error = cls(exc.errno, reason, str(path))
        verb = "cannot write" if fix.startswith(("free", "make")) else "will not use"
        error.message = (f"{verb} {path} ({reason}): {fix} or choose another --out (any checkpoints "
                         f"already written are intact; run the same command again to resume)")
        return error

    def __str__(self) -> str:
        return getattr(self, "message", None) or super().__str__()


class BenchmarkError(DartsNasError):
    """A benchmark file that cannot be read safely, or a query it cannot answer."""


class RunStopped(DartsNasError):
    """A run stopped on a signal (SIGINT or SIGTERM) after writing a checkpoint to resume from.

    ``exit_code`` is 128 + the signal number (130 for SIGINT, 143 for SIGTERM), as a shell
    reports a process killed by the signal.
    """

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code
