"""The benchmark's files read without running anything from them.

Every NAS-Bench-201 and NATS-Bench file is a pickle, and unpickling calls whatever a file names.
:class:`SafeUnpickler` builds plain containers, numbers and strings, and of the globals only
those the benchmark's data structures need (``../shared/reference/benchmark-data.md`` B2, B3):

- ``collections.OrderedDict`` (records, ``train_times``), numpy's scalar constructor and
  ``numpy.dtype`` (numpy floats such as ``params``): the only globals an opcode scan of the NATS
  sample files found;
- ``set`` (``evaluated_indexes``) and ``_codecs.encode`` of a str as latin-1, which is how pickle
  protocol 2, the one ``torch.save`` writes, spells a set and bytes (the bytes of a numpy scalar);
- a torch tensor in a ``.pth`` (``net_state_dict`` is None in NB201 v1_1; weights are not part of
  a lookup) becomes :data:`SKIPPED_TENSOR`: its storage is never read and no torch code runs.

A file that names anything else (``os.system``, ``builtins.eval``, any class) is refused in one
line, before any of it runs.

Layouts (:func:`read_benchmark_file` tells them apart by their first bytes):

- ``NAS-Bench-201-v1_0-e61699.pth`` / ``v1_1-096897.pth``: ``torch.save`` output, either the zip
  archive (torch >= 1.6: ``<name>/data.pkl`` beside ``<name>/data/<key>`` storages) or the legacy
  stream (a pickled magic number, protocol version 1001 and system info, then the object's
  pickle, then the storages);
- ``NATS-tss-v1_0-3ffb9.pickle.pbz2`` and the fast-mode directory's files: a bz2-compressed pickle;
- an uncompressed pickle of the same dict.
"""

from __future__ import annotations

import bz2
import codecs
import collections
import pickle
import zipfile
from pathlib import Path
from typing import IO, Any

from .errors import BenchmarkError

# torch.serialization's legacy header: the magic number, then the protocol version.
TORCH_MAGIC = 0x1950A86A20F9469CFC6C
TORCH_LEGACY_PROTOCOL = 1001
ZIP_MAGIC = b"PK\x03\x04"
BZ2_MAGIC = b"BZh"
SQLITE_MAGIC = b"SQLite format 3\x00"


class _SkippedTensor:
    """Stands in for a tensor of a ``.pth`` file (model weights): never loaded, never needed.
    No ``__dict__``: a file cannot set attributes on the shared instance."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<tensor not loaded>"

    def __reduce__(self):  # never written anywhere
        raise TypeError("a skipped tensor is not data")


SKIPPED_TENSOR = _SkippedTensor()


def _skip_tensor(*args: Any) -> _SkippedTensor:
    return SKIPPED_TENSOR


def latin1_encode(text: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as Python 3's pickle protocols 0-2 use it to store bytes: a str
    encoded as latin-1, and nothing else (no other codec is ever needed, so none is reached)."""
    if not isinstance(text, str) or encoding != "latin1" or errors != "strict":
        raise pickle.UnpicklingError("_codecs.encode is accepted only for a str as latin1")
    return codecs.encode(text, "latin1")


def _allowed_globals() -> dict[tuple[str, str], Any]:
    allowed: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("builtins", "set"): set, ("__builtin__", "set"): set,
        ("builtins", "frozenset"): frozenset, ("__builtin__", "frozenset"): frozenset,
        ("_codecs", "encode"): latin1_encode,
        # a tensor (torch's rebuild functions) is replaced, never rebuilt
        ("torch._utils", "_rebuild_tensor"): _skip_tensor,
        ("torch._utils", "_rebuild_tensor_v2"): _skip_tensor,
        ("torch._utils", "_rebuild_parameter"): _skip_tensor,
    }
    try:
        import numpy as np

        try:
            from numpy._core.multiarray import scalar
        except ImportError:  # numpy < 2
            from numpy.core.multiarray import scalar
        for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            allowed[(module, "scalar")] = scalar
        allowed[("numpy", "dtype")] = np.dtype
    except ImportError:
        pass
    return allowed


class SafeUnpickler(pickle.Unpickler):
    """Builds only what the benchmark's files hold; any other global (a function, a class, a
    module attribute) raises :class:`BenchmarkError` before it could be called."""

    ALLOWED = _allowed_globals()

    def __init__(self, file: IO[bytes], source: str) -> None:
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and name.endswith("Storage") and name.isidentifier():
            return f"torch.{name}"  # a tensor's storage type, inside its persistent id: a name only
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise BenchmarkError(
                f"{self.source} asks to load {module}.{name}, which a NAS-Bench-201/NATS-Bench file never holds: "
                f"refused without running it; is it really a benchmark file from the official download?") from None

    def persistent_load(self, pid: Any) -> Any:
        # torch.save's reference to a tensor's storage: ('storage', type, key, location, size)
        if isinstance(pid, tuple) and pid and pid[0] == "storage":
            return SKIPPED_TENSOR
        raise BenchmarkError(f"{self.source} holds persistent references other than torch storages, which "
                             f"benchmark files never do: refused; is it really a benchmark file?")


def _unreadable(path: Path, exc: BaseException, what: str = "benchmark file") -> BenchmarkError:
    detail = str(exc).splitlines()[0] if str(exc) else "truncated"
    return BenchmarkError(f"{path} is not a readable {what} ({type(exc).__name__}: {detail}): download it again")


# What a truncated, mangled or foreign file raises while it is read.
_READ_ERRORS = (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, IndexError, AttributeError,
                KeyError, MemoryError, zipfile.BadZipFile, RecursionError)


def load_pickle(path: Path, compressed: bool = True) -> Any:
    """The object in ``path`` (bz2-compressed when ``compressed``), read by :class:`SafeUnpickler`."""
    try:
        with (bz2.open(path, "rb") if compressed else open(path, "rb")) as f:
            return SafeUnpickler(f, str(path)).load()
    except BenchmarkError:
        raise
    except FileNotFoundError:
        raise BenchmarkError(f"{path} does not exist") from None
    except _READ_ERRORS as exc:  # truncated, not bz2, not a pickle, mangled
        raise _unreadable(path, exc) from None


def _load_torch_zip(path: Path) -> Any:
    with zipfile.ZipFile(path) as archive:
        names = [n for n in archive.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
        if len(names) != 1:
            raise BenchmarkError(f"{path} is a zip archive without exactly one data.pkl: it is not a torch-saved "
                                 f"NAS-Bench-201 file; download NAS-Bench-201-v1_1-096897.pth again")
        with archive.open(names[0]) as f:
            return SafeUnpickler(f, str(path)).load()


def _load_pickle_stream(path: Path) -> Any:
    """A legacy ``torch.save`` stream (magic number first) or a plain pickle."""
    with open(path, "rb") as f:
        first = SafeUnpickler(f, str(path)).load()
        if first != TORCH_MAGIC:
            return first  # a plain pickle of the benchmark's dict
        version = SafeUnpickler(f, str(path)).load()
        if version != TORCH_LEGACY_PROTOCOL:
            raise BenchmarkError(f"{path} is a torch file of protocol {version!r}, not {TORCH_LEGACY_PROTOCOL}: "
                                 f"re-save it with torch.save, or download it again")
        SafeUnpickler(f, str(path)).load()  # sys_info: byte order and type sizes; no storages are read
        return SafeUnpickler(f, str(path)).load()


def file_kind(path: Path) -> str:
    """``"zip"``, ``"bz2"``, ``"sqlite"`` or ``"pickle"``, by the file's first bytes."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as exc:
        raise BenchmarkError(f"{path} cannot be read ({exc.strerror or exc}): check the path") from None
    if head.startswith(ZIP_MAGIC):
        return "zip"
    if head.startswith(BZ2_MAGIC):
        return "bz2"
    if head.startswith(SQLITE_MAGIC):
        return "sqlite"
    if head[:1] == b"\x80" or head[:1] in (b"(", b"}", b"]"):  # pickle protocol 2+ or 0/1 opening opcodes
        return "pickle"
    raise BenchmarkError(f"{path} is not a benchmark file of a known kind (neither a torch .pth, a .pickle.pbz2, "
                         f"a pickle nor a darts-bench index): give NAS-Bench-201-v1_[01]-*.pth, "
                         f"NATS-tss-v1_0-3ffb9.pickle.pbz2, its -simple directory or an index")


def read_benchmark_file(path: Path) -> Any:
    """The object held by a single benchmark file (torch zip, torch legacy, bz2 pickle, pickle)."""
    kind = file_kind(path)
    try:
        if kind == "zip":
            return _load_torch_zip(path)
        if kind == "bz2":
            return load_pickle(path, compressed=True)
        if kind == "pickle":
            return _load_pickle_stream(path)
    except BenchmarkError:
        raise
    except _READ_ERRORS as exc:
        raise _unreadable(path, exc) from None
    raise BenchmarkError(f"{path} is a {kind} file, not a pickled benchmark")
