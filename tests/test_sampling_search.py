"""Sampling-based search: random-ws and SPOS supernets, the strategies over them, benchmark-scored search."""

from __future__ import annotations

import bz2
import collections
import json
import pickle
import shutil
import sys
from itertools import product
from pathlib import Path

import pytest
import torch

from darts_nas.arch_string import EDGES, NB201_PRIMITIVES, ArchGenotype
from darts_nas.candidates import DartsCandidates, NB201Candidates
from darts_nas.cli import search_main
from darts_nas.methods import METHODS
from darts_nas.methods.base import draw_generator
from darts_nas.strategies import AgingEvolution, make_strategy
from darts_nas.strategies.stage import kendall_tau, recalibrate_batchnorm
from darts_nas.supernet import Supernet
from darts_nas.tracking import read_jsonl

DIGITS = ["--dataset", "digits", "--init-channels", "4", "--layers", "3", "--batch-size", "32", "--steps-per-epoch",
          "3", "--epochs", "2", "--quiet", "--no-tensorboard", "--device", "cpu"]
SMALL = ["--score-batches", "2", "--bn-batches", "2"]
TWO_OPS = ("skip_connect", "nor_conv_3x3")  # 2^6 = 64 NAS-Bench-201 cells: the test benchmark holds them all


def torch_below(seed: int, draw: int):
    gen = draw_generator(seed, draw)
    return lambda n: int(torch.randint(n, (1,), generator=gen))


def chi_square(counts: dict, categories: int, draws: int) -> float:
    expected = draws / categories
    observed = list(counts.values()) + [0] * (categories - len(counts))
    return sum((o - expected) ** 2 / expected for o in observed)


# ---------------------------------------------------------------------------------------------
# A test benchmark in the NATS-Bench topology directory format (meta + one record per cell)
# ---------------------------------------------------------------------------------------------

def synthetic_accuracy(ops) -> float:
    """Valid accuracy of a cell in the test benchmark: more 3x3 convs, better (a unique optimum)."""
    return 60.0 + 5.0 * sum(op == "nor_conv_3x3" for op in ops) + 0.1 * sum(i for i, op in enumerate(ops) if op == "skip_connect")


def _run_record(name: str, seed: int, epochs: int, accuracy: float, seconds: float, evals: dict[str, float]):
    return {"name": name, "seed": f"{seed:04d}", "epochs": epochs, "params": 0.1, "flop": 10.0, "latency": [0.01],
            "train_acc1es": {e: accuracy for e in range(epochs)}, "train_losses": {e: 1.0 for e in range(epochs)},
            "train_times": {e: seconds / epochs for e in range(epochs)}, "eval_names": list(evals),
            "eval_acc1es": {f"{s}@{epochs - 1}": v for s, v in evals.items()},
            "eval_times": {f"{s}@{epochs - 1}": 2.0 for s in evals}, "eval_losses": {}, "net_state_dict": None,
            "arch_config": {"channel": 16, "num_cells": 5, "class_num": 10}}


def write_test_benchmark(path: Path, ops_subset=TWO_OPS) -> Path:
    """meta.pickle.pbz2 with all 15,625 arch strings and a record (hp 12 and 200, cifar10-valid and
    cifar10) for every cell over ``ops_subset``, in the real files' layout."""
    path.mkdir(parents=True, exist_ok=True)
    archs = [str(ArchGenotype(ops)) for ops in product(NB201_PRIMITIVES, repeat=len(EDGES))]
    with bz2.open(path / "meta.pickle.pbz2", "wb") as f:
        pickle.dump({"meta_archs": archs, "total_archs": len(archs), "arch2infos": None,
                     "evaluated_indexes": set()}, f)
    for index, text in enumerate(archs):
        ops = tuple(item.split("~")[0] for node in text.split("+") for item in node.strip("|").split("|"))
        if not set(ops) <= set(ops_subset):
            continue
        acc = synthetic_accuracy(ops)
        seconds = 100.0 + 10.0 * sum(op == "nor_conv_3x3" for op in ops)
        record = collections.OrderedDict()
        for hp, epochs, shift in (("12", 12, -20.0), ("200", 200, 0.0)):
            results = {("cifar10-valid", 111): _run_record("cifar10-valid", 111, epochs, acc + shift, seconds,
                                                           {"x-valid": acc + shift, "ori-test": acc + shift + 1}),
                       ("cifar10", 111): _run_record("cifar10", 111, epochs, acc + shift, 2 * seconds,
                                                     {"ori-test": acc + shift + 2})}
            record[hp] = {"arch_index": index, "arch_str": text, "all_results": results, "clear_net_done": True,
                          "dataset_seed": {"cifar10-valid": [111], "cifar10": [111]}}
        with bz2.open(path / f"{index:06d}.pickle.pbz2", "wb") as f:
            pickle.dump(record, f)
    return path


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    return write_test_benchmark(tmp_path_factory.mktemp("bench") / "NATS-tss-test")


BENCH_ARGS = ["--space", "nas-bench-201", "--ops", ",".join(TWO_OPS), "--score", "benchmark",
              "--benchmark-dataset", "cifar10", "--quiet", "--no-tensorboard", "--device", "cpu"]


# ---------------------------------------------------------------------------------------------
# The samplers
# ---------------------------------------------------------------------------------------------

def test_random_ws_draws_uniformly_over_valid_darts_genotypes():
    # 2 nodes, one op: per cell 1 pair for node 0 and 3 for node 1 -> 3 x 3 = 9 genotypes
    space = DartsCandidates(2, ("none", "skip_connect"))
    assert space.size() == 9
    draws = 1800
    counts = collections.Counter(str(space.sample(torch_below(5, d))) for d in range(draws))
    assert len(counts) == 9
    assert chi_square(counts, 9, draws) < 26.1  # chi-square, 8 degrees of freedom, p = 0.001
    for genotype in (space.sample(torch_below(5, d)) for d in range(20)):
        for cell in ("normal", "reduce"):
            pairs = getattr(genotype, cell)
            assert all(pairs[k][1] != pairs[k + 1][1] for k in (0, 2))  # two distinct inputs per node


def test_random_ws_on_nas_bench_201_is_uniform_over_the_cells():
    space = NB201Candidates(TWO_OPS)
    draws = 3200
    counts = collections.Counter(str(space.sample(torch_below(3, d))) for d in range(draws))
    assert chi_square(counts, 64, draws) < 103.4  # 63 degrees of freedom, p = 0.001


def test_spos_draws_each_edge_op_uniformly_none_included():
    model = Supernet(C=4, num_classes=3, layers=3, steps=2, in_channels=1, method=METHODS.get("spos")())
    method = model.method
    draws = 600
    counts = collections.Counter()
    for d in range(draws):
        path = method.sample_path(model, torch_below(1, d))
        counts.update(path["normal"])
    assert chi_square(counts, 8, draws * 5) < 24.3  # 7 degrees of freedom, p = 0.001


def test_only_the_sampled_ops_run_and_get_gradients():
    torch.manual_seed(0)
    model = Supernet(C=4, num_classes=3, layers=3, steps=2, in_channels=1, method=METHODS.get("random-ws")())
    ran = set()
    for cell_index, cell in enumerate(model.cells):
        for e, edge in enumerate(cell.edges):
            for k, op in zip(edge.op_index, edge.ops):
                for module in op.modules():  # (a conv op's after_relu skips the op's own forward)
                    module.register_forward_hook(lambda m, i, o, key=(cell_index, e, k): ran.add(key))
    model.train()

    def used(path):
        return {(c, e, k) for c, cell in enumerate(model.cells)
                for e, k in enumerate(path["reduce" if cell.reduction else "normal"]) if k >= 0}

    with torch.no_grad():  # (the training pass's lean CPU blocks bypass forward hooks)
        model(torch.randn(2, 1, 8, 8))
    assert ran == used(model.method._path)
    model(torch.randn(2, 1, 8, 8)).sum().backward()
    path = model.method._path
    for c, cell in enumerate(model.cells):
        for e, edge in enumerate(cell.edges):
            for k, op in zip(edge.op_index, edge.ops):
                if list(op.parameters()):
                    assert all(p.grad is None for p in op.parameters()) == ((c, e, k) not in used(path))
    assert sum(k < 0 for k in path["normal"]) == 5 - 4  # 5 edges, 2 nodes x 2 inputs


def test_draws_are_a_pure_function_of_seed_and_step():
    def paths(seed):
        model = Supernet(C=4, num_classes=3, layers=3, steps=2, in_channels=1,
                         method=METHODS.get("random-ws")(type("C", (), {"seed": seed})()))
        model.train()
        out = []
        for _ in range(3):
            model(torch.randn(2, 1, 8, 8))
            out.append(model.method._path)
        return out, model.method.state_dict()

    assert paths(4) == paths(4)
    assert paths(4)[0] != paths(5)[0]
    assert paths(4)[1] == {"draws": 3}


# ---------------------------------------------------------------------------------------------
# The strategies (torch-free, on synthetic objectives)
# ---------------------------------------------------------------------------------------------

TARGET = ("nor_conv_3x3", "skip_connect", "avg_pool_3x3", "nor_conv_1x1", "none", "nor_conv_3x3")


def matches(genotype) -> float:
    return float(sum(a == b for a, b in zip(genotype.ops, TARGET)))


def run_strategy(name: str, seed: int, n: int, objective=matches, space=None):
    strategy = make_strategy(name, space or NB201Candidates(NB201_PRIMITIVES), seed)
    scores = []
    for _ in range(n):
        g = strategy.ask()
        scores.append(objective(g))
        strategy.tell(g, scores[-1])
    return strategy, scores


def test_aging_evolution_keeps_the_youngest_population_and_mutates_one_choice():
    space = NB201Candidates(NB201_PRIMITIVES)
    strategy = AgingEvolution(space, 0, type("C", (), {"population": 5, "sample_size": 2})())
    told = []
    for i in range(30):
        g = strategy.ask()
        if i >= 5:  # a child: one edge changed from some member of the population
            assert any(sum(a != b for a, b in zip(g.ops, m.ops)) == 1 for m, _ in strategy.population)
        told.append((g, matches(g)))
        strategy.tell(g, matches(g))
        assert len(strategy.population) == min(i + 1, 5)
        assert list(strategy.population) == told[-5:]  # the oldest died, whatever its score


def test_local_search_never_returns_worse_than_its_start_and_climbs():
    for seed in range(5):
        strategy, scores = run_strategy("local", seed, 60)
        assert strategy.best[1] >= scores[0]
        for (start, s0) in strategy.starts:
            assert strategy.best[1] >= s0
    # on an objective with one optimum and no plateaus, a climb reaches it
    strategy, scores = run_strategy("local", 1, 400, objective=lambda g: matches(g) + 0.01 * len(set(g.ops)))
    assert strategy.best[1] >= 6


def test_evolution_bo_and_local_find_the_optimum_much_faster_than_random():
    pytest.importorskip("optuna")
    ops = ("skip_connect", "nor_conv_1x1", "nor_conv_3x3")  # 3^6 = 729 cells
    target = ("nor_conv_3x3", "skip_connect", "nor_conv_1x1", "nor_conv_1x1", "skip_connect", "nor_conv_3x3")

    def evaluations_to_optimum(name: str, seed: int, cap: int = 300) -> int:
        strategy = make_strategy(name, NB201Candidates(ops), seed)
        for i in range(cap):
            g = strategy.ask()
            score = float(sum(a == b for a, b in zip(g.ops, target)))
            strategy.tell(g, score)
            if score == 6:
                return i + 1
        return cap

    mean = {name: sum(evaluations_to_optimum(name, s) for s in range(6)) / 6
            for name in ("random", "evolution", "bo", "local")}
    assert mean["random"] > 250  # 729 expected, capped at 300
    for name in ("evolution", "bo", "local"):
        assert mean[name] < mean["random"] / 2, mean


def test_kendall_tau_b():
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    assert kendall_tau([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)
    # tau-b with ties: scipy.stats.kendalltau([1, 1, 2, 3], [1, 2, 2, 3]) gives 0.8
    assert kendall_tau([1, 1, 2, 3], [1, 2, 2, 3]) == pytest.approx(0.8)
    try:
        from scipy.stats import kendalltau
    except ImportError:
        return
    xs, ys = [3, 1, 4, 1, 5, 9, 2, 6], [2, 7, 1, 8, 2, 8, 1, 8]
    assert kendall_tau(xs, ys) == pytest.approx(kendalltau(xs, ys).statistic)
    assert kendall_tau([1, 1], [2, 3]) is None


# ---------------------------------------------------------------------------------------------
# BatchNorm recalibration
# ---------------------------------------------------------------------------------------------

def test_bn_recalibration_changes_only_the_batchnorm_statistics():
    torch.manual_seed(0)
    model = Supernet(C=4, num_classes=3, layers=3, steps=2, in_channels=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batches = [torch.randn(4, 1, 8, 8) + 3.0 for _ in range(3)]
    recalibrate_batchnorm(model, batches)
    after = model.state_dict()
    bn = {f"{name}.{b}" for name, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)
          for b in ("running_mean", "running_var", "num_batches_tracked")}
    assert all(torch.equal(before[k], after[k]) for k in before if k not in bn)
    assert not torch.equal(before["stem.1.running_mean"], after["stem.1.running_mean"])
    assert int(after["stem.1.num_batches_tracked"]) == 3
    # the running mean is the plain average of the three batches' means (cumulative, not momentum)
    stem_out = [model.stem[0](x) for x in batches]
    expected = torch.stack([y.mean(dim=(0, 2, 3)) for y in stem_out]).mean(0)
    assert torch.allclose(after["stem.1.running_mean"], expected, atol=1e-5)
    assert all(m.momentum == 0.1 for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))


# ---------------------------------------------------------------------------------------------
# End to end on digits, records and exact resume
# ---------------------------------------------------------------------------------------------

def test_random_ws_with_random_strategy_end_to_end(tmp_path):
    out = tmp_path / "run"
    assert search_main([*DIGITS, *SMALL, "--method", "random-ws", "--candidates", "6", "--rescore-top", "2",
                        "--out", str(out)]) == 0
    records = read_jsonl(out / "candidates.jsonl")
    assert [r["stage"] for r in records] == ["search"] * 6 + ["rescore"] * 2
    assert all({"genotype", "score", "seconds"} <= set(r) for r in records)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["strategy"]["strategy"] == "random" and summary["strategy"]["chosen_by"] == "whole architecture half"
    best = max((r for r in records if r["stage"] == "rescore"), key=lambda r: r["score"])
    assert json.loads((out / "genotype.json").read_text())["normal"] == best["genotype"]["normal"]
    assert summary["valid_acc"] == best["score"] and "supernet_valid_acc" in summary  # what --seeds aggregates
    assert "alphas" not in read_jsonl(out / "history.jsonl")[0]


def test_spos_with_evolution_on_nas_bench_201_and_kendall_tau(tmp_path, bench):
    out = tmp_path / "run"
    args = [a for a in DIGITS if a != "--no-tensorboard"]
    assert search_main([*args, *SMALL, "--space", "nas-bench-201", "--ops", ",".join(TWO_OPS), "--method", "spos",
                        "--candidates", "12", "--benchmark", str(bench), "--benchmark-dataset", "cifar10",
                        "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())["strategy"]
    assert summary["strategy"] == "evolution" and summary["candidates"] == 12
    assert summary["kendall_pairs"] >= 2 and -1.0 <= summary["kendall_tau"] <= 1.0
    assert summary["benchmark_200"]["valid_acc"] == pytest.approx(synthetic_accuracy(
        ArchGenotype.from_dict(summary["genotype"]).ops))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    curve = [e.value for e in EventAccumulator(str(out / "strategy")).Reload().Scalars("strategy/best_score")]
    assert len(curve) == 12 and curve == sorted(curve)


@pytest.fixture(scope="module")
def darts_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("darts") / "run"
    assert search_main([*DIGITS, "--nodes", "2", "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("strategy", ["local", "bo"])
def test_strategies_search_a_trained_darts_supernet(tmp_path, darts_run, strategy):
    if strategy == "bo":
        pytest.importorskip("optuna")
    out = tmp_path / strategy
    assert search_main(["--supernet", str(darts_run), "--strategy", strategy, "--candidates", "5", *SMALL,
                        "--quiet", "--no-tensorboard", "--device", "cpu", "--out", str(out)]) == 0
    assert len(read_jsonl(out / "candidates.jsonl")) == 5
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best_score"] == max(r["score"] for r in read_jsonl(out / "candidates.jsonl"))
    assert (out / "genotype.json").is_file()


def without_seconds(out: Path):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in read_jsonl(out / "candidates.jsonl")]


def test_a_killed_strategy_on_a_supernet_resumes_exactly(tmp_path, darts_run):
    args = ["--supernet", str(darts_run), "--strategy", "evolution", "--population", "3", "--candidates", "8",
            *SMALL, "--quiet", "--no-tensorboard", "--device", "cpu"]
    reference, out = tmp_path / "reference", tmp_path / "run"
    assert search_main([*args, "--out", str(reference)]) == 0
    assert search_main([*args, "--out", str(out)]) == 0
    # a kill after the fifth candidate: the records so far, no summary
    lines = (out / "candidates.jsonl").read_text().splitlines(keepends=True)
    (out / "candidates.jsonl").write_text("".join(lines[:5]) + lines[5][:20])  # and a torn line
    (out / "summary.json").unlink()
    assert search_main([*args, "--out", str(out)]) == 0
    assert without_seconds(out) == without_seconds(reference)
    assert (out / "genotype.json").read_text() == (reference / "genotype.json").read_text()


def test_a_killed_search_resumes_its_training_and_its_strategy_exactly(tmp_path):
    args = [*DIGITS, *SMALL, "--method", "random-ws", "--nodes", "2", "--candidates", "5", "--rescore-top", "2"]
    reference, out = tmp_path / "reference", tmp_path / "run"
    assert search_main([*args, "--out", str(reference)]) == 0
    assert search_main([*args, "--out", str(out)]) == 0
    # killed after epoch 1: its checkpoint is the newest
    (out / "checkpoint-epoch0002.pt").unlink()
    shutil.copy(out / "checkpoint-epoch0001.pt", out / "checkpoint.pt")
    (out / "summary.json").unlink()
    (out / "candidates.jsonl").unlink()
    assert search_main([*args, "--out", str(out)]) == 0
    assert without_seconds(out) == without_seconds(reference)
    a, b = torch.load(reference / "checkpoint.pt"), torch.load(out / "checkpoint.pt")
    assert a["method"] == b["method"] == {"draws": 6}
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    # killed during the strategy's second stage
    lines = (out / "candidates.jsonl").read_text().splitlines(keepends=True)
    (out / "candidates.jsonl").write_text("".join(lines[:6]))
    (out / "summary.json").unlink()
    assert search_main([*args, "--out", str(out)]) == 0
    assert without_seconds(out) == without_seconds(reference)


# ---------------------------------------------------------------------------------------------
# Benchmark-scored search
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("strategy", ["evolution", "random", "local", "bo"])
def test_benchmark_scored_strategies_charge_the_recorded_training_time(tmp_path, bench, strategy):
    if strategy == "bo":
        pytest.importorskip("optuna")
    out = tmp_path / "run"
    assert search_main([*BENCH_ARGS, "--benchmark", str(bench), "--strategy", strategy, "--strategy-seconds", "3000",
                        "--out", str(out)]) == 0
    records = read_jsonl(out / "candidates.jsonl")
    for r in records:
        ops = ArchGenotype.from_dict(r["genotype"]).ops
        assert r["score"] == pytest.approx(synthetic_accuracy(ops) - 20.0)  # the 12-epoch record
        # 12 epochs' training time of the cifar10-valid run plus its validation pass
        assert r["seconds"] == pytest.approx(100.0 + 10.0 * ops.count("nor_conv_3x3") + 2.0)
    spent = [sum(r["seconds"] for r in records[:i]) for i in range(len(records) + 1)]
    assert spent[-2] < 3000 <= spent[-1]  # the query that crosses the budget is the last
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best_score"] == max(r["score"] for r in records)


def test_a_killed_benchmark_strategy_resumes_exactly(tmp_path, bench):
    pytest.importorskip("optuna")
    args = [*BENCH_ARGS, "--benchmark", str(bench), "--strategy", "bo", "--candidates", "15"]
    reference, out = tmp_path / "reference", tmp_path / "run"
    assert search_main([*args, "--out", str(reference)]) == 0
    assert search_main([*args, "--out", str(out)]) == 0
    lines = (out / "candidates.jsonl").read_text().splitlines(keepends=True)
    (out / "candidates.jsonl").write_text("".join(lines[:11]))
    (out / "summary.json").unlink()
    assert search_main([*args, "--out", str(out)]) == 0
    assert read_jsonl(out / "candidates.jsonl") == read_jsonl(reference / "candidates.jsonl")


# ---------------------------------------------------------------------------------------------
# Bad input: one line each, nothing written
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--supernet", "{tmp}", "--strategy", "local"], "is not a search run directory"),
    (["--supernet", "{unfinished}", "--strategy", "local"], "has not finished its supernet training"),
    (["--supernet", "{darts}", "--strategy", "local", "--space", "nas-bench-201"],
     "is a supernet of the darts space, not --space nas-bench-201"),
    (["--method", "random-ws", "--candidates", "0"], "--candidates 0 is no budget"),
    (["--method", "spos", "--strategy-seconds", "0"], "--strategy-seconds 0.0 is no budget"),
    (["--method", "spos", "--hessian-every", "1"], "learns no architecture parameters"),
    (["--strategy", "random", "--score", "benchmark"], "--score benchmark looks candidates up in NAS-Bench-201"),
    (["--supernet", "{darts}"], "--supernet needs a --strategy"),
])
def test_bad_strategy_settings_get_one_line_before_anything_is_written(tmp_path, capsys, darts_run, args, message):
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    shutil.copy(darts_run / "config.json", unfinished / "config.json")
    out = tmp_path / "out"
    argv = [*DIGITS, *[a.format(tmp=tmp_path, darts=darts_run, unfinished=unfinished) for a in args], "--out", str(out)]
    assert search_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.count("\n") == 0
    assert not out.exists()


def test_bo_without_optuna_gets_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna raises ImportError
    out = tmp_path / "out"
    assert search_main([*DIGITS, "--method", "random-ws", "--strategy", "bo", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "--strategy bo needs Optuna: pip install optuna" in err and err.count("\n") == 0
    assert not out.exists()


# ---------------------------------------------------------------------------------------------
# torchrun
# ---------------------------------------------------------------------------------------------

def test_random_ws_under_torchrun_trains_one_architecture_on_every_rank(tmp_path):
    """Two gloo ranks draw the same architecture at every step (a pure function of seed and
    step), so their replicas stay identical; the strategy is refused there (--strategy none)."""
    try:
        from test_distributed import SEARCH_ARGS, finish, torchrun
    except ImportError:  # tests/ imported as a package
        from tests.test_distributed import SEARCH_ARGS, finish, torchrun
    from darts_nas.checkpoint import load_checkpoint

    args = [*SEARCH_ARGS, "--method", "random-ws", "--strategy", "none", "--out", str(tmp_path / "run")]
    stdout = finish(torchrun("train_search.py", args, tmp_path), tmp_path)
    log = (tmp_path / "run" / "log.txt").read_text()
    assert stdout.count("search finished") == 1
    assert "all 2 processes hold the same weights, alphas and BatchNorm statistics" in log
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["method"] == {"draws": 2 * 3}
    assert not (tmp_path / "run" / "candidates.jsonl").exists()


def test_a_strategy_is_refused_under_torchrun():
    from types import SimpleNamespace

    from darts_nas.config import SearchConfig
    from darts_nas.errors import ConfigError
    from darts_nas.search import check_distributed_settings

    with pytest.raises(ConfigError, match="--strategy runs in one process"):
        check_distributed_settings(SearchConfig(method="spos"), SimpleNamespace(is_distributed=True))
    check_distributed_settings(SearchConfig(method="spos", strategy="none"), SimpleNamespace(is_distributed=True))
