"""Searches scored by NAS-Bench-201 (--benchmark): the real NATS-Bench sample records."""

from __future__ import annotations

import json

import pytest

from darts_nas.arch_string import parse_arch
from darts_nas.cli import search_main
from darts_nas.spaces.nas_bench_201 import NB201Supernet
from darts_nas.tracking import read_jsonl

try:
    from test_nas_bench_201 import SAMPLE_ARCHS, TINY, sample_dir
except ImportError:  # tests/ imported as a package
    from tests.test_nas_bench_201 import SAMPLE_ARCHS, TINY, sample_dir


def _derive(monkeypatch, *archs):
    """Make the supernet derive ``archs`` in turn (the last one from then on)."""
    cells = [parse_arch(a) for a in archs]
    calls = {"n": 0}

    def genotype(self):
        calls["n"] += 1
        return cells[min(calls["n"] - 1, len(cells) - 1)]

    monkeypatch.setattr(NB201Supernet, "genotype", genotype)


def test_each_epoch_records_the_benchmarks_accuracy_of_the_derived_cell(tmp_path, monkeypatch):
    bench = sample_dir()
    # genotype() is called once before the loop, then once per epoch: epoch 1 derives arch 11,
    # epoch 2 arch 284 (the sample records; benchmark-data.md B1 gives their numbers).
    _derive(monkeypatch, SAMPLE_ARCHS[0], SAMPLE_ARCHS[11], SAMPLE_ARCHS[284])
    out = tmp_path / "run"
    args = [a for a in TINY if a != "--no-tensorboard"]
    assert search_main([*args, "--benchmark", str(bench), "--benchmark-dataset", "cifar10", "--out", str(out)]) == 0
    metrics = read_jsonl(out / "metrics.jsonl")
    assert [m["benchmark_index"] for m in metrics] == [11, 284]
    assert [round(m["benchmark_valid_acc"], 2) for m in metrics] == [87.94, 86.05]
    assert [round(m["benchmark_test_acc"], 2) for m in metrics] == [91.58, 88.79]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["benchmark"]["index"] == 284 and round(summary["benchmark"]["test_acc"], 2) == 88.79
    assert "benchmark (cifar10, 200 epochs" in (out / "log.txt").read_text()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out)).Reload()
    curve = [(e.step, round(e.value, 2)) for e in events.Scalars("benchmark/test_acc")]
    assert curve == [(1, 91.58), (2, 88.79)]


def test_a_cell_the_benchmark_lacks_is_a_warning_not_the_end(tmp_path, monkeypatch):
    bench = sample_dir()  # holds three records only
    missing = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"
    _derive(monkeypatch, missing)
    out = tmp_path / "run"
    assert search_main([*TINY, "--epochs", "1", "--benchmark", str(bench), "--benchmark-dataset", "cifar100",
                        "--out", str(out)]) == 0
    (record,) = read_jsonl(out / "metrics.jsonl")
    assert record["benchmark_test_acc"] is None and record["benchmark_index"] is None
    assert "warning: no benchmark result for the derived cell" in (out / "log.txt").read_text()
    assert json.loads((out / "summary.json").read_text())["benchmark"] is None


@pytest.mark.parametrize("args, message", [
    (["--benchmark", "{bench}"], "NAS-Bench-201 holds no results on digits: pass --benchmark-dataset"),
    (["--benchmark", "{bench}", "--benchmark-dataset", "svhn"], "the benchmark holds no dataset 'svhn'"),
    (["--benchmark", "{tmp}", "--benchmark-dataset", "cifar10"], "holds no meta.pickle.pbz2"),
    (["--benchmark", "{bench}", "--benchmark-dataset", "cifar10", "--space", "darts"],
     "--benchmark scores NAS-Bench-201 cells, not --space darts ones"),
])
def test_bad_benchmark_settings_get_one_line_before_anything_is_written(tmp_path, capsys, args, message):
    bench = sample_dir()
    out = tmp_path / "run"
    argv = [*TINY, *[a.format(bench=bench, tmp=tmp_path) for a in args], "--out", str(out)]
    assert search_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.count("\n") == 0
    assert not out.exists()
