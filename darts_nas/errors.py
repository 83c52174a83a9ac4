"""The project's own error types.

Every problem a user can cause (a bad flag, a missing dataset, a malformed genotype, a corrupt
checkpoint) raises a subclass of :class:`DartsNasError` with a one-sentence message naming the
problem and the fix. The command-line entry points print that message and exit with status 2
instead of showing a traceback.
"""

from __future__ import annotations


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
