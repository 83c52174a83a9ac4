"""NAS-Bench-201 results looked up safely: ``darts-bench query PATH '<arch string>' --dataset cifar10``.

The benchmark's files are pickles, and unpickling runs whatever a file asks for. Here a file is
read with :class:`SafeUnpickler`, which builds only plain containers, numbers and strings plus the
three globals the real files hold (``collections.OrderedDict``, numpy's scalar constructor and
``numpy.dtype``; an opcode scan of the NATS-Bench sample files found no other). A file that asks
for anything else (``os.system``, ``builtins.eval``, any class) is refused in one line and nothing
of it runs.

Supported so far: the NATS-Bench topology (``tss``) fast-mode directory
(``NATS-tss-v1_0-3ffb9-simple/``: ``meta.pickle.pbz2`` with the 15,625 arch strings in index
order, and one ``{index:06d}.pickle.pbz2`` per architecture). A query reads the meta file and the
one record it needs (``../shared/reference/benchmark-data.md`` B3). The single-file NATS format,
the NAS-Bench-201 ``.pth`` files and a compact index are not implemented yet.

Numbers are the benchmark's 200-epoch results (``hp='200'``), averaged over its seeds, with the
official API's conventions (``get_more_info(..., is_random=False)``): ``cifar10`` reports the test
accuracy of the cifar10 run (``ori-test``) and, as the papers do, the validation accuracy of the
``cifar10-valid`` run (``x-valid``); ``cifar10-valid`` reports ``x-valid`` and ``ori-test`` of its
own runs; ``cifar100`` and ``ImageNet16-120`` report ``x-valid`` and ``x-test``, the two halves of
their test set.
"""

from __future__ import annotations

import argparse
import bz2
import collections
import json
import pickle
import sys
from pathlib import Path
from statistics import mean
from typing import Any, Sequence

from .arch_string import parse_arch
from .errors import BenchmarkError, DartsNasError

DATASETS = ("cifar10-valid", "cifar10", "cifar100", "ImageNet16-120")
META = "meta.pickle.pbz2"


def _allowed_globals() -> dict[tuple[str, str], Any]:
    allowed: dict[tuple[str, str], Any] = {("collections", "OrderedDict"): collections.OrderedDict}
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

    def __init__(self, file, source: str) -> None:
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise BenchmarkError(
                f"{self.source} asks to load {module}.{name}, which a NAS-Bench-201/NATS-Bench file never holds: "
                f"refused without running it; is it really a benchmark file from the official download?") from None

    def persistent_load(self, pid: Any) -> Any:
        raise BenchmarkError(f"{self.source} holds persistent references, which benchmark files never do: refused")


def load_pickle(path: Path, compressed: bool = True) -> Any:
    """The object in ``path`` (bz2-compressed when ``compressed``), read by :class:`SafeUnpickler`."""
    try:
        with (bz2.open(path, "rb") if compressed else open(path, "rb")) as f:
            return SafeUnpickler(f, str(path)).load()
    except BenchmarkError:
        raise
    except FileNotFoundError:
        raise BenchmarkError(f"{path} does not exist") from None
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, IndexError,
            AttributeError, KeyError) as exc:  # truncated, not bz2, not a pickle, mangled
        raise BenchmarkError(f"{path} is not a readable benchmark file ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else 'truncated'}): download it again") from None


def _dataset(name: str) -> str:
    for known in DATASETS:
        if name.lower() == known.lower():
            return known
    raise BenchmarkError(f"the benchmark holds no dataset {name!r}; it holds: {', '.join(DATASETS)}")


class NatsTopologyDirectory:
    """The NATS-Bench topology fast-mode directory: the meta file's arch list, and one file per
    architecture read only when queried."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        if not self.path.is_dir():
            raise BenchmarkError(f"{self.path} is not a benchmark directory: give the NATS-Bench topology directory "
                                 f"(NATS-tss-v1_0-3ffb9-simple, holding {META}); single files are not supported yet")
        if not (self.path / META).is_file():
            raise BenchmarkError(f"{self.path} holds no {META}: it is not a NATS-Bench topology directory (give "
                                 f"NATS-tss-v1_0-3ffb9-simple)")
        meta = load_pickle(self.path / META)
        archs = meta.get("meta_archs") if isinstance(meta, dict) else None
        if not isinstance(archs, list) or not all(isinstance(a, str) for a in archs):
            raise BenchmarkError(f"{self.path / META} holds no list of arch strings (meta_archs): it is not the "
                                 f"meta file of a NATS-Bench topology directory")
        self.archs = archs
        self.index = {a: i for i, a in enumerate(archs)}

    def index_of(self, arch: str) -> int:
        text = str(parse_arch(arch))  # a malformed string gets the parser's one line
        if text not in self.index:
            raise BenchmarkError(f"{text} is not among the {len(self.archs):,} architectures of {self.path}")
        return self.index[text]

    def record(self, index: int) -> dict[str, Any]:
        path = self.path / f"{index:06d}.pickle.pbz2"
        if not path.is_file():
            raise BenchmarkError(f"{self.path} has no record of architecture {index} ({path.name} is missing): the "
                                 f"directory is incomplete; use the full NATS-tss-v1_0-3ffb9-simple download")
        data = load_pickle(path)
        if not isinstance(data, dict):
            raise BenchmarkError(f"{path} does not hold an architecture's results")
        return data

    def query(self, arch: str, dataset: str, hp: str = "200") -> dict[str, Any]:
        """The benchmark's numbers for ``arch`` on ``dataset``: mean valid/test accuracy (%) over
        the seeds, params (MB), FLOPs (M), the seeds and the index."""
        dataset = _dataset(dataset)
        index = self.index_of(arch)
        record = self.record(index)
        if hp not in record:
            raise BenchmarkError(f"architecture {index} has no {hp}-epoch results (it holds: {', '.join(record)})")
        results = record[hp]

        def runs(name: str) -> list[dict[str, Any]]:
            seeds = results["dataset_seed"].get(name) or []
            if not seeds:
                raise BenchmarkError(f"architecture {index} was not evaluated on {name} at {hp} epochs")
            return [results["all_results"][(name, seed)] for seed in seeds]

        def accuracy(name: str, split: str) -> float:
            values = []
            for run in runs(name):
                key = f"{split}@{run['epochs'] - 1}"
                if key not in run["eval_acc1es"]:
                    raise BenchmarkError(f"architecture {index} has no {split} accuracy on {name}")
                values.append(float(run["eval_acc1es"][key]))
            return mean(values)

        if dataset == "cifar10":
            valid, test = accuracy("cifar10-valid", "x-valid"), accuracy("cifar10", "ori-test")
        elif dataset == "cifar10-valid":
            valid, test = accuracy(dataset, "x-valid"), accuracy(dataset, "ori-test")
        else:
            valid, test = accuracy(dataset, "x-valid"), accuracy(dataset, "x-test")
        first = runs(dataset)[0]
        return {"index": index, "arch": self.archs[index], "dataset": dataset, "hp": hp,
                "seeds": list(results["dataset_seed"][dataset]), "valid_acc": valid, "test_acc": test,
                "params": float(first["params"]), "flop": float(first["flop"])}


def open_benchmark(path: str | Path) -> NatsTopologyDirectory:
    """The benchmark at ``path``, by its layout (only the NATS topology directory so far)."""
    return NatsTopologyDirectory(path)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="darts-bench", description="Look up NAS-Bench-201 / NATS-Bench topology results "
                                "without running anything from the benchmark's files.")
    sub = p.add_subparsers(dest="command", required=True)
    q = sub.add_parser("query", help="one architecture's benchmark numbers as JSON")
    q.add_argument("path", help="the NATS-Bench topology directory (NATS-tss-v1_0-3ffb9-simple)")
    q.add_argument("arch", help="the arch string, |op~0|+|op~0|op~1|+|op~0|op~1|op~2|")
    q.add_argument("--dataset", default="cifar10", help=f"one of {', '.join(DATASETS)}")
    q.add_argument("--hp", default="200", choices=["12", "200"],
                   help="the training length of the results: 200 epochs (the papers' numbers) or 12")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = open_benchmark(args.path).query(args.arch, args.dataset, args.hp)
    except DartsNasError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
