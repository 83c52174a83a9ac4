"""NAS-Bench-201 results looked up safely: ``darts-bench query PATH '<arch string>' --dataset cifar10``.

``PATH`` is any of the benchmark's layouts (``../shared/reference/benchmark-data.md`` B2, B3):

- ``NAS-Bench-201-v1_0-e61699.pth`` or ``NAS-Bench-201-v1_1-096897.pth`` (``torch.save`` of a
  dict; the zip and the legacy torch formats are both read);
- ``NATS-tss-v1_0-3ffb9.pickle.pbz2``, the NATS-Bench topology space in one bz2 pickle;
- the NATS-Bench topology fast-mode directory ``NATS-tss-v1_0-3ffb9-simple/`` (``meta.pickle.pbz2``
  with the 15,625 arch strings in index order and one ``{index:06d}.pickle.pbz2`` per
  architecture): a query reads the meta file and the one record it needs;
- a compact index written once by ``darts-bench index SRC DST`` (:mod:`darts_nas.bench_index`),
  which opens in milliseconds; the single files must be read whole (the NB201 v1_1 file is 4.7 GB).

Nothing in a file is run: :mod:`darts_nas.bench_files` builds only the data structures the
formats hold and refuses anything else in one line.

Numbers are the benchmark's 200-epoch results (``hp='200'``; ``--hp 12`` gives the 12-epoch
ones), averaged over its seeds, with the official API's conventions
(``get_more_info(..., is_random=False)``): ``cifar10`` reports the test accuracy of the cifar10
run (``ori-test``) and, as the papers do, the validation accuracy of the ``cifar10-valid`` run
(``x-valid``); ``cifar10-valid`` reports ``x-valid`` and ``ori-test`` of its own runs; ``cifar100``
and ``ImageNet16-120`` report ``x-valid`` and ``x-test``, the two halves of their test set.
``train_time`` is the recorded training time (s, all epochs, mean over seeds) of the runs the
validation accuracy comes from and ``valid_time`` the time of one evaluation on its validation set.
``per_seed`` holds each seed's accuracies and times (the official API's ``is_random=True`` draws
one seed's), keyed by the seed as text.

Isomorphic cells: the benchmark trained each of the 15,625 strings, equivalent ones included, and
its API looks strings up exactly; so does :meth:`Benchmark.query`. Every answer carries
``unique_id``, the lowest index of the cell's isomorphism class
(:func:`darts_nas.arch_string.isomorphism_key`, the benchmark's 6,466 unique topologies), the same
for equivalent strings; when the exact string has no record (a partial directory, a file that has
not evaluated it) an evaluated equivalent answers (``"match": "isomorphic"``), and
``isomorphic=True`` (``--isomorphic``) always answers with the class's first evaluated entry.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from statistics import mean
from typing import Any, Mapping, Sequence

from .arch_string import isomorphism_key, parse_arch
from .bench_files import SKIPPED_TENSOR, SafeUnpickler, load_pickle, read_benchmark_file  # noqa: F401
from .errors import BenchmarkError, DartsNasError

DATASETS = ("cifar10-valid", "cifar10", "cifar100", "ImageNet16-120")
HPS = ("12", "200")
# NAS-Bench-201 files name the two training lengths "less" and "full" (its API's hp '12' and '200').
HP_NAMES = {"less": "12", "full": "200", "12": "12", "200": "200"}
META = "meta.pickle.pbz2"
# What one answer holds beyond index/arch/dataset/hp (the index stores exactly these).
SUMMARY_FIELDS = ("seeds", "valid_acc", "test_acc", "params", "flop", "train_time", "valid_time", "per_seed")
JSON_FIELDS = ("seeds", "per_seed")  # the index stores these as JSON text
FULL_FILES = ("NAS-Bench-201-v1_1-096897.pth, NAS-Bench-201-v1_0-e61699.pth, NATS-tss-v1_0-3ffb9.pickle.pbz2 or "
              "the NATS-tss-v1_0-3ffb9-simple directory")


def _dataset(name: str) -> str:
    for known in DATASETS:
        if name.lower() == known.lower():
            return known
    raise BenchmarkError(f"the benchmark holds no dataset {name!r}; it holds: {', '.join(DATASETS)}")


def _hp(hp: Any) -> str:
    if str(hp) not in HPS:
        raise BenchmarkError(f"the benchmark holds results of 12 and 200 epochs, not {hp!r}: use --hp 12 or --hp 200")
    return str(hp)


def _number(value: Any, what: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise BenchmarkError(f"{what} is {type(value).__name__}, not a number: the file is not the benchmark's "
                             f"format; download it again") from None


def summarize(results: Mapping[str, Any], dataset: str, hp: str, index: int) -> dict[str, Any]:
    """The :data:`SUMMARY_FIELDS` of one architecture's ArchResults-state ``results`` (one hp) on
    ``dataset``: mean over seeds of the last epoch's accuracies, and the run's sizes and times."""
    try:
        seeds_of = results["dataset_seed"]
        all_results = results["all_results"]

        def runs(name: str) -> list[tuple[int, Mapping[str, Any]]]:
            return [(int(seed), all_results[(name, seed)]) for seed in seeds_of.get(name) or []]

        own = runs(dataset)
        if not own:
            raise BenchmarkError(f"architecture {index} was not evaluated on {dataset} at {hp} epochs (it was on: "
                                 f"{', '.join(d for d in seeds_of if seeds_of[d]) or 'nothing'})")
        valid_runs = runs("cifar10-valid") if dataset == "cifar10" else own
        test_split = "ori-test" if dataset in ("cifar10", "cifar10-valid") else "x-test"

        def last(run: Mapping[str, Any], table: str, split: str) -> float | None:
            value = (run.get(table) or {}).get(f"{split}@{run['epochs'] - 1}")
            return None if value is None else _number(value, f"{table}[{split}] of architecture {index}")

        def train_time(run: Mapping[str, Any]) -> float | None:
            times = run.get("train_times")
            return sum(_number(t, f"train_times of architecture {index}") for t in times.values()) if times else None

        # per seed (the official API's is_random=True picks one of these), then their means
        per_seed = {"valid_acc": {seed: last(r, "eval_acc1es", "x-valid") for seed, r in valid_runs},
                    "test_acc": {seed: last(r, "eval_acc1es", test_split) for seed, r in own},
                    "train_time": {seed: train_time(r) for seed, r in valid_runs},
                    "valid_time": {seed: last(r, "eval_times", "x-valid") for seed, r in valid_runs}}

        def average(values: Mapping[int, float | None]) -> float | None:
            known = [v for v in values.values() if v is not None]
            return mean(known) if known else None

        first = own[0][1]
        return {
            "seeds": [seed for seed, _ in own],
            "valid_acc": average(per_seed["valid_acc"]),
            "test_acc": average(per_seed["test_acc"]),
            "params": _number(first["params"], f"params of architecture {index}"),
            "flop": _number(first["flop"], f"flop of architecture {index}"),
            "train_time": average(per_seed["train_time"]),
            "valid_time": average(per_seed["valid_time"]),
            # JSON keys are strings: the seeds are written as text here and everywhere
            "per_seed": {k: {str(seed): v for seed, v in values.items()} for k, values in per_seed.items()},
        }
    except BenchmarkError:
        raise
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise BenchmarkError(f"the {hp}-epoch record of architecture {index} is not in the benchmark's format "
                             f"({type(exc).__name__}: {exc}): download the file again") from None


class Benchmark:
    """What every layout offers: the arch list, which entries have a record, and their numbers."""

    source: str
    _classes: dict[str, list[int]] | None = None

    # -- what a layout provides ---------------------------------------------------------------
    def index_of(self, text: str) -> int:
        """The position of a (canonically written) arch string in the benchmark's list."""
        raise NotImplementedError

    def arch_at(self, index: int) -> str:
        raise NotImplementedError

    def holds(self, index: int) -> bool:
        """Whether architecture ``index`` has a record here."""
        raise NotImplementedError

    def summary(self, index: int, dataset: str, hp: str) -> dict[str, Any]:
        raise NotImplementedError

    def all_archs(self) -> list[str]:
        raise NotImplementedError

    def isomorphic(self, index: int) -> list[int]:
        """The indices of every cell isomorphic to ``index`` (itself included), ascending."""
        if self._classes is None:
            classes: dict[str, list[int]] = {}
            for i, arch in enumerate(self.all_archs()):
                classes.setdefault(isomorphism_key(arch), []).append(i)
            self._classes = classes
        return self._classes[isomorphism_key(self.arch_at(index))]

    # -- the lookup -------------------------------------------------------------------------------
    def query(self, arch: str, dataset: str, hp: str = "200", isomorphic: bool = False) -> dict[str, Any]:
        """The benchmark's numbers for ``arch`` on ``dataset`` (see the module's docstring)."""
        dataset, hp = _dataset(dataset), _hp(hp)
        text = str(parse_arch(arch))  # a malformed string gets the parser's one line
        index = self.index_of(text)
        members = self.isomorphic(index)
        order = members if isomorphic else [index] + [m for m in members if m != index]
        found = next((i for i in order if self.holds(i)), None)
        if found is None:
            others = f" nor of the {len(members) - 1} cells isomorphic to it" if len(members) > 1 else ""
            raise BenchmarkError(f"{self.source} has no record of architecture {index} ({text}){others}: the file "
                                 f"has not evaluated it; use the complete {FULL_FILES}")
        result = {"index": found, "arch": self.arch_at(found), "dataset": dataset, "hp": hp,
                  "match": "exact" if found == index else "isomorphic", "unique_id": members[0]}
        if found != index:
            result["queried"] = text
        result.update(self.summary(found, dataset, hp))
        return result


def _check_arch_list(archs: Any, where: str) -> list[str]:
    if not isinstance(archs, list) or not archs or not all(isinstance(a, str) for a in archs):
        raise BenchmarkError(f"{where} holds no list of arch strings (meta_archs): it is not a NAS-Bench-201 / "
                             f"NATS-Bench topology file; give {FULL_FILES}")
    try:
        parse_arch(archs[0])
    except DartsNasError:
        raise BenchmarkError(f"{where} lists {archs[0]!r}, not a NAS-Bench-201 cell: only the topology space "
                             f"(NAS-Bench-201, NATS-Bench tss) is supported, not the size space (sss)") from None
    return archs


class _ArchList(Benchmark):
    """A layout whose arch list is in memory (the meta list of the files and the directory)."""

    archs: list[str]

    def _set_archs(self, archs: list[str]) -> None:
        self.archs = archs
        self._positions = {a: i for i, a in enumerate(archs)}

    def index_of(self, text: str) -> int:
        if text not in self._positions:
            raise BenchmarkError(f"{text} is not among the {len(self.archs):,} architectures of {self.source}: "
                                 f"the file's arch list is incomplete; download it again")
        return self._positions[text]

    def arch_at(self, index: int) -> str:
        return self.archs[index]

    def all_archs(self) -> list[str]:
        return self.archs

    def record(self, index: int) -> Mapping[str, Any]:
        """{hp '12' | '200': ArchResults-state} of architecture ``index``."""
        raise NotImplementedError

    def summary(self, index: int, dataset: str, hp: str) -> dict[str, Any]:
        record = self.record(index)
        if hp not in record:
            raise BenchmarkError(f"architecture {index} has no {hp}-epoch results (it holds: "
                                 f"{', '.join(record) or 'none'}): use --hp {' or '.join(record) or '200'}")
        return summarize(record[hp], dataset, hp, index)


def _hp_record(record: Any, index: int, source: str) -> dict[str, Any]:
    """{'12'|'200': ArchResults-state}, the NB201 names less/full mapped to the NATS ones."""
    if not isinstance(record, Mapping) or not all(k in HP_NAMES for k in record):
        keys = ", ".join(map(repr, record)) if isinstance(record, Mapping) else type(record).__name__
        raise BenchmarkError(f"the record of architecture {index} in {source} holds {keys}, not results of "
                             f"12/200 (less/full) epochs: it is not the benchmark's format; download it again")
    return {HP_NAMES[k]: v for k, v in record.items()}


class NatsTopologyDirectory(_ArchList):
    """The NATS-Bench topology fast-mode directory: the meta file's arch list, and one file per
    architecture read only when queried."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        self.source = str(self.path)
        if not (self.path / META).is_file():
            raise BenchmarkError(f"{self.path} holds no {META}: it is not a NATS-Bench topology directory (give "
                                 f"NATS-tss-v1_0-3ffb9-simple)")
        meta = load_pickle(self.path / META)
        self._set_archs(_check_arch_list(meta.get("meta_archs") if isinstance(meta, dict) else None,
                                         str(self.path / META)))

    def _file(self, index: int) -> Path:
        return self.path / f"{index:06d}.pickle.pbz2"

    def holds(self, index: int) -> bool:
        return self._file(index).is_file()

    def record(self, index: int) -> Mapping[str, Any]:
        path = self._file(index)
        if not path.is_file():
            raise BenchmarkError(f"{self.path} has no record of architecture {index} ({path.name} is missing): the "
                                 f"directory is incomplete; use the full NATS-tss-v1_0-3ffb9-simple download")
        return _hp_record(load_pickle(path), index, str(path))


class BenchmarkFile(_ArchList):
    """A single file holding every record: NB201 v1_0 / v1_1 (``.pth``) or the NATS topology
    ``.pickle.pbz2``. It is read whole (the official API needs ~28 GB for NB201 v1_1; convert it
    once with ``darts-bench index`` for fast lookups)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        self.source = str(self.path)
        data = read_benchmark_file(self.path)
        if not isinstance(data, dict):
            raise BenchmarkError(f"{self.path} holds a {type(data).__name__}, not the benchmark's dict of meta_archs "
                                 f"and arch2infos: give {FULL_FILES}")
        self._set_archs(_check_arch_list(data.get("meta_archs"), self.source))
        infos = data.get("arch2infos")
        if infos is None and "total_archs" in data:
            raise BenchmarkError(f"{self.path} is the meta file of a NATS-Bench fast-mode directory, which holds no "
                                 f"results: give the directory holding it and the per-architecture files")
        if not isinstance(infos, dict):
            raise BenchmarkError(f"{self.path} holds no arch2infos dict: it is not a NAS-Bench-201 / NATS-Bench "
                                 f"topology file; give {FULL_FILES}")
        self.infos = infos
        self.kind = "NAS-Bench-201" if any(isinstance(r, Mapping) and "full" in r for r in infos.values()) \
            else "NATS-Bench topology"

    def holds(self, index: int) -> bool:
        return index in self.infos

    def record(self, index: int) -> Mapping[str, Any]:
        if index not in self.infos:
            raise BenchmarkError(f"{self.path} has no record of architecture {index}: the file has not evaluated it")
        return _hp_record(self.infos[index], index, self.source)


def open_benchmark(path: str | Path) -> Benchmark:
    """The benchmark at ``path``, by its layout (a directory, an index, or a single file)."""
    path = Path(path).expanduser()
    if path.is_dir():
        return NatsTopologyDirectory(path)
    if not path.exists():
        raise BenchmarkError(f"{path} does not exist: give {FULL_FILES}, or an index made by darts-bench index")
    from .bench_files import file_kind

    if file_kind(path) == "sqlite":
        from .bench_index import BenchmarkIndex

        return BenchmarkIndex(path)
    return BenchmarkFile(path)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="darts-bench", description="Look up NAS-Bench-201 / NATS-Bench topology results "
                                "without running anything from the benchmark's files.")
    sub = p.add_subparsers(dest="command", required=True)
    q = sub.add_parser("query", help="one architecture's benchmark numbers as JSON")
    q.add_argument("path", help="NAS-Bench-201-v1_[01]-*.pth, NATS-tss-v1_0-3ffb9.pickle.pbz2, the "
                   "NATS-tss-v1_0-3ffb9-simple directory, or an index made by 'darts-bench index'")
    q.add_argument("arch", help="the arch string, |op~0|+|op~0|op~1|+|op~0|op~1|op~2|")
    q.add_argument("--dataset", default="cifar10", help=f"one of {', '.join(DATASETS)}")
    q.add_argument("--hp", default="200", choices=list(HPS),
                   help="the training length of the results: 200 epochs (the papers' numbers) or 12")
    q.add_argument("--isomorphic", action="store_true",
                   help="answer with the first evaluated cell isomorphic to the arch (the same entry for every "
                        "equivalent string) instead of the arch's own entry")
    i = sub.add_parser("index", help="convert a benchmark once into a compact index that opens in milliseconds")
    i.add_argument("src", help="any layout 'query' reads")
    i.add_argument("dst", help="the index file to write (SQLite; a few MB)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "index":
            from .bench_index import build_index

            result: dict[str, Any] = build_index(args.src, args.dst,
                                                 progress=lambda m: print(m, file=sys.stderr, flush=True))
        else:
            result = open_benchmark(args.path).query(args.arch, args.dataset, args.hp, args.isomorphic)
    except DartsNasError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
