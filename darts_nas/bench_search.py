"""Searches scored by NAS-Bench-201: ``train_search.py --space nas-bench-201 --benchmark PATH``.

After every epoch the derived cell is looked up in the benchmark (:mod:`darts_nas.bench`, which
never runs anything from its files): its 200-epoch validation and test accuracy, averaged over
the benchmark's seeds, go into metrics.jsonl (``benchmark_valid_acc``, ``benchmark_test_acc``,
``benchmark_index``), TensorBoard (``benchmark/valid_acc``, ``benchmark/test_acc``: the
accuracy-of-the-derived-cell curve the papers plot) and summary.json (``benchmark``). This costs
one small file read per epoch, no training.

The benchmark's dataset is the search's (``cifar10``, ``cifar10-valid``, ``cifar100`` and its
halves, ``imagenet16-120`` and its halves) unless ``--benchmark-dataset`` names one, as a search on another dataset
(digits, say) must.
"""

from __future__ import annotations

from typing import Any, Callable

from .bench import DATASETS as BENCH_DATASETS
from .bench import _dataset, open_benchmark
from .errors import BenchmarkError, ConfigError

# The search's dataset -> the benchmark's name for the same data.
SEARCH_TO_BENCH = {"cifar10": "cifar10", "cifar10-valid": "cifar10-valid", "cifar100": "cifar100",
                   "cifar100-xvalid": "cifar100", "cifar100-xtest": "cifar100", "imagenet16-120": "ImageNet16-120",
                   "imagenet16-120-xvalid": "ImageNet16-120", "imagenet16-120-xtest": "ImageNet16-120"}


class BenchmarkScorer:
    """Looks up a search's derived cells in an opened benchmark, for one dataset."""

    def __init__(self, benchmark: Any, dataset: str) -> None:
        self.benchmark = benchmark
        self.dataset = dataset
        self.last: dict[str, Any] | None = None  # the newest lookup, for summary.json

    @classmethod
    def from_config(cls, config: Any) -> "BenchmarkScorer | None":
        """None without ``config.benchmark``; else the opened benchmark, or one line naming the
        fix (a wrong space, a dataset the benchmark does not hold, a file of another kind)."""
        path = getattr(config, "benchmark", None)
        if not path:
            return None
        if config.space != "nas-bench-201":
            raise ConfigError(f"--benchmark scores NAS-Bench-201 cells, not --space {config.space} ones: "
                              f"add --space nas-bench-201 or drop --benchmark")
        name = getattr(config, "benchmark_dataset", None) or SEARCH_TO_BENCH.get(config.dataset)
        if name is None:
            raise ConfigError(f"NAS-Bench-201 holds no results on {config.dataset}: pass --benchmark-dataset, one of "
                              f"{', '.join(BENCH_DATASETS)}, to score the derived cells by those")
        try:
            dataset = _dataset(name)
        except BenchmarkError as exc:
            raise ConfigError(f"--benchmark-dataset: {exc}") from None
        return cls(open_benchmark(path), dataset)

    def score(self, arch: Any, warn: Callable[[str], None]) -> dict[str, Any]:
        """The metrics.jsonl fields of ``arch`` (a derived NAS-Bench-201 cell). An arch the
        benchmark lacks is a warning and null fields, not the end of the search."""
        try:
            result = self.benchmark.query(str(arch), self.dataset)
        except BenchmarkError as exc:
            warn(f"  warning: no benchmark result for the derived cell: {exc}")
            self.last = None
            return {"benchmark_valid_acc": None, "benchmark_test_acc": None, "benchmark_index": None}
        self.last = result
        def pct(value: float | None) -> str:
            return "n/a" if value is None else f"{value:.2f}%"

        match = "" if result.get("match", "exact") == "exact" else ", an isomorphic cell's entry"
        warn(f"  benchmark ({self.dataset}, {result['hp']} epochs, mean of seeds {result['seeds']}): valid "
             f"{pct(result['valid_acc'])}  test {pct(result['test_acc'])}  (index {result['index']}{match})")
        return {"benchmark_valid_acc": result["valid_acc"], "benchmark_test_acc": result["test_acc"],
                "benchmark_index": result["index"]}

    def to_board(self, writer: Any, fields: dict[str, Any], epoch: int) -> None:
        """The accuracies as ``benchmark/valid_acc`` and ``benchmark/test_acc`` (when found)."""
        if writer is None:
            return
        for key in ("valid_acc", "test_acc"):
            value = fields.get(f"benchmark_{key}")
            if value is not None:
                writer.add_scalar(f"benchmark/{key}", value, epoch)

    def summary(self) -> dict[str, Any]:
        return {"benchmark": self.last}


def score_epoch(scorer: BenchmarkScorer | None, arch: Any, record: dict[str, Any], board: Any,
                log: Callable[[str], None]) -> None:
    """Add the benchmark's numbers for ``arch`` to the epoch's ``record`` (before it is written)
    and to the board; nothing without a scorer. The one call the search loop makes."""
    if scorer is None:
        return
    fields = scorer.score(arch, log)
    record.update(fields)
    scorer.to_board(getattr(board, "writer", None), fields, record["epoch"])
