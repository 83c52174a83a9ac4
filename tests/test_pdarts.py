"""P-DARTS: the staged search in the one run loop (pruning between stages, resume across a
transition, torchrun), the skip dropout schedule and the final cap on skip connections."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from darts_nas.checkpoint import load_checkpoint
from darts_nas.cli import search_main
from darts_nas.config import SearchConfig
from darts_nas.edge_ops import top_k_columns
from darts_nas.errors import ConfigError
from darts_nas.genotype import PRIMITIVES
from darts_nas.methods import METHODS
from darts_nas.methods.pdarts import PDarts, SkipDropout, capped_cell, skip_dropout_rate
from darts_nas.ops import FactorizedReduce
from darts_nas.supernet import Supernet
from darts_nas.tracking import read_jsonl

# three stages of 2 epochs (the first weights only) on 3, 4 and 5 cells
ARGS = ["--dataset", "digits", "--method", "pdarts", "--init-channels", "4", "--layers", "3", "--nodes", "2",
        "--batch-size", "16", "--train-portion", "0.8", "--steps-per-epoch", "2", "--epochs", "2",
        "--arch-warmup-epochs", "1", "--pdarts-add-layers", "0,1,2", "--checkpoint-every", "1",
        "--keep-checkpoints", "30", "--quiet", "--no-tensorboard", "--device", "cpu"]


def one_thread(args) -> int:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # like the killed subprocess: the thread count changes float rounding
    try:
        return search_main(args)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("pdarts") / "run"
    assert one_thread([*ARGS, "--out", str(out)]) == 0
    return out


def assert_same_run(a: Path, b: Path) -> None:
    from test_methods import assert_same_run as same_records_and_model

    same_records_and_model(a, b)
    sa, sb = load_checkpoint(a / "checkpoint.pt"), load_checkpoint(b / "checkpoint.pt")
    assert (sa["stage"], sa["edge_ops"]) == (sb["stage"], sb["edge_ops"])


# ---------------------------------------------------------------------------------------------
# The schedule, the dropout, the cap
# ---------------------------------------------------------------------------------------------

def test_skip_dropout_follows_the_published_schedule():
    # stage of 25 epochs, 10 without architecture steps: p0 (E - e - 1) / E, then p0 exp(-0.2 (e - 10))
    assert skip_dropout_rate(0.4, 0, 25, 10) == pytest.approx(0.4 * 24 / 25)
    assert skip_dropout_rate(0.4, 9, 25, 10) == pytest.approx(0.4 * 15 / 25)
    assert skip_dropout_rate(0.4, 10, 25, 10) == pytest.approx(0.4)
    assert skip_dropout_rate(0.7, 24, 25, 10) == pytest.approx(0.7 * math.exp(-0.2 * 14))
    config = SearchConfig(method="pdarts", epochs=25, layers=5, arch_warmup_epochs=10)
    method = PDarts(config)
    plan = method.stages()
    assert [(s.epochs, s.layers, s.keep, s.settings["skip_dropout"]) for s in plan] == [
        (25, 5, 5, 0.1), (25, 11, 3, 0.4), (25, 17, None, 0.7)]
    method.start_stage(2, plan[2])
    method.start_epoch(12, 25)
    assert method.skip_dropout == pytest.approx(0.7 * math.exp(-0.4)) == method.scalars()["skip_dropout"]


def test_only_stride_one_skips_get_dropout_and_only_in_training():
    method = PDarts(SearchConfig(method="pdarts", layers=3, nodes=2))
    torch.manual_seed(0)
    model = Supernet(C=4, num_classes=3, layers=3, steps=2, in_channels=1, method=method)
    for cell in model.cells:
        for e, edge in enumerate(cell.edges):
            skip = edge.ops[edge.op_index.index(PRIMITIVES.index("skip_connect"))]
            stride_two = cell.reduction and e in (0, 1, 2, 3)  # from inputs 0 and 1 of a reduction cell
            assert isinstance(skip, FactorizedReduce if stride_two else SkipDropout)
    drop = SkipDropout(method)
    x = torch.ones(4000)
    method.skip_dropout = 0.0
    assert drop(x) is x
    method.skip_dropout = 0.25
    y = drop(x)
    assert torch.allclose(y.unique(), torch.tensor([0.0, 1 / 0.75]))  # inverted dropout, as nn.Dropout
    assert (y == 0).float().mean().item() == pytest.approx(0.25, abs=0.03)
    drop.eval()
    assert torch.equal(drop(x), x)


def test_the_cap_removes_the_weakest_skips_and_chooses_edges_again():
    ops = [("skip_connect", "sep_conv_3x3", "max_pool_3x3")] * 5  # 2 nodes: edges 0-1, then 2-4
    rows = [[.6, .3, .1], [.5, .2, .3], [.7, .2, .1], [.4, .35, .25], [.3, .5, .2]]
    assert capped_cell(rows, ops, 2) == (("skip_connect", 0), ("skip_connect", 1), ("skip_connect", 0),
                                         ("sep_conv_3x3", 2))
    # three skips: the weakest kept one (edge 1, 0.5) gives way to its next op
    assert capped_cell(rows, ops, 2, max_skips=2) == (("skip_connect", 0), ("max_pool_3x3", 1),
                                                      ("skip_connect", 0), ("sep_conv_3x3", 2))
    assert capped_cell(rows, ops, 2, max_skips=1) == (("sep_conv_3x3", 0), ("max_pool_3x3", 1),
                                                      ("skip_connect", 0), ("sep_conv_3x3", 2))
    # at 0 the choice of edges changes: edge 3's skip enters when edge 2's goes, and goes too
    assert capped_cell(rows, ops, 2, max_skips=0) == (("sep_conv_3x3", 0), ("max_pool_3x3", 1),
                                                      ("sep_conv_3x3", 2), ("sep_conv_3x3", 1))


def test_without_the_cap_the_final_cell_is_the_darts_derivation_and_only_the_normal_cell_is_capped():
    table = {t: tuple(("none", "skip_connect", "sep_conv_3x3") for _ in range(14)) for t in ("normal", "reduce")}
    method = PDarts(SearchConfig(method="pdarts"))
    torch.manual_seed(3)
    model = Supernet(C=4, num_classes=3, layers=3, steps=4, in_channels=1, method=method, edge_ops=table)
    for seed in range(5):
        torch.manual_seed(seed)
        with torch.no_grad():
            for a in model.arch_parameters():
                a.normal_(0, 1)
        method.max_skips = None
        assert method.final_genotype(model, model.genotype()) == model.genotype()
    with torch.no_grad():  # skip strongest everywhere
        for a in model.arch_parameters():
            a.copy_(torch.tensor([0.0, 2.0, 1.0]) + 0.01 * torch.randn_like(a))
    method.max_skips = 2
    final = method.final_genotype(model, model.genotype())
    assert sum(op == "skip_connect" for op, _ in final.normal) == 2
    assert final.reduce == model.genotype().reduce and all(op == "skip_connect" for op, _ in final.reduce)


def test_pruning_keeps_each_edges_strongest_ops_in_the_published_numbers():
    config = SearchConfig(method="pdarts")
    method = PDarts(config)
    plan = method.stages()
    torch.manual_seed(0)
    model = Supernet(C=4, num_classes=3, layers=3, steps=4, in_channels=1, method=method)
    counts = [len(model.edge_ops["normal"][0])]
    for index in range(2):
        with torch.no_grad():
            for a in model.arch_parameters():
                a.normal_(0, 1)
        table = method.next_edge_ops(model, index, plan[index])
        for t in model.cell_types():
            probs = torch.softmax(model.arch_group(f"alphas_{t}").detach(), -1)
            for e, (ops, row) in enumerate(zip(table[t], probs)):
                assert len(ops) == plan[index].keep
                strongest = row.argsort(descending=True)[:plan[index].keep].sort().values.tolist()
                assert ops == tuple(model.edge_ops[t][e][k] for k in strongest)
        model = Supernet(C=4, num_classes=3, layers=3 + 1, steps=4, in_channels=1, method=method, edge_ops=table)
        counts.append(len(model.edge_ops["normal"][0]))
    final = method.final_genotype(model, model.genotype())  # one op per edge, never none
    assert counts == [8, 5, 3] and all(op != "none" for op, _ in final.normal + final.reduce)


@pytest.mark.parametrize("args,message", [
    (["--pdarts-keep", "5,3"], "need one value per stage, got 3, 2 and 3 values"),
    (["--pdarts-keep", "5,3,2"], "--pdarts-keep must fall from below the 8 ops of --ops to 1"),
    (["--pdarts-keep", "8,3,1"], "--pdarts-keep must fall from below the 8 ops of --ops to 1"),
    (["--pdarts-skip-dropout", "0.1,1,0.7"], "--pdarts-skip-dropout rates must lie in [0, 1)"),
    (["--unrolled"], "--method pdarts has no second-order architecture step"),
])
def test_bad_pdarts_settings_get_one_line_and_write_nothing(tmp_path, capsys, args, message):
    out = tmp_path / "run"
    assert search_main([*ARGS, *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err.strip().splitlines()[-1], err  # the one line (argparse's usage may precede it)
    assert not out.exists()


# ---------------------------------------------------------------------------------------------
# Stages on the run loop: records, resume across a transition, torchrun
# ---------------------------------------------------------------------------------------------

def test_stages_grow_prune_and_record_globally_numbered_epochs(reference):
    metrics, history = read_jsonl(reference / "metrics.jsonl"), read_jsonl(reference / "history.jsonl")
    assert [m["epoch"] for m in metrics] == [1, 2, 3, 4, 5, 6] and [m["stage"] for m in metrics] == [1, 1, 2, 2, 3, 3]
    assert [h["stage"] for h in history] == [1, 1, 2, 2, 3, 3]
    # the dropout rates of (p0 = 0.1, 0.4, 0.7, E = 2, warm-up 1): p0 / 2, then p0
    assert [m["skip_dropout"] for m in metrics] == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.35, 0.7])
    assert math.isnan(metrics[2]["arch_acc"]) and not math.isnan(metrics[3]["arch_acc"])  # warm-up per stage
    assert "primitives" in history[1] and len(history[1]["primitives"]) == 8
    for before, after, keep in ((history[1], history[2], 5), (history[3], history[4], 3)):
        for t in ("normal", "reduce"):
            ops = before["edge_ops"][t] if "edge_ops" in before else [before["primitives"]] * 5
            columns = top_k_columns(before["alphas"][t], ops, keep)
            assert after["edge_ops"][t] == [[o[c] for c in cols] for o, cols in zip(ops, columns)]
    state = load_checkpoint(reference / "checkpoint.pt")
    assert state["stage"] == 2 and state["edge_ops"] == history[-1]["edge_ops"]
    assert len(state["model"]["alphas_normal"][0]) == 3
    assert sum(k.endswith("preprocess1.1.weight") for k in state["model"]) == 5  # 5 cells in stage 3
    log = (reference / "log.txt").read_text()
    assert "stage 3 of 3: 5 cells, 3 candidate ops per edge" in log and "epoch 6/6 (stage 3, epoch 2/2)" in log
    genotype = json.loads((reference / "genotype.json").read_text())
    assert sum(op == "skip_connect" for op, _ in genotype["normal"]) <= 2


def test_a_run_stopped_right_after_a_stage_resumes_bit_identical(tmp_path, reference):
    """The checkpoint at the end of stage 2 (epoch 4 of 6, --epochs 2) is the newest: resuming
    rebuilds stage 2's pruned supernet from it and makes the transition to stage 3 again."""
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    for path in out.glob("checkpoint*.pt"):
        if path.name != "checkpoint-epoch0004.pt":
            path.unlink()
    (out / "summary.json").unlink()
    for name in ("metrics.jsonl", "history.jsonl"):
        lines = (out / name).read_text().splitlines()
        (out / name).write_text("\n".join(lines[:4]) + "\n")
    assert load_checkpoint(out / "checkpoint-epoch0004.pt")["stage"] == 1
    assert one_thread([*ARGS, "--out", str(out)]) == 0
    assert "after epoch 4 of 6 (stage 2 of 3)" in (out / "log.txt").read_text()
    assert_same_run(reference, out)


def test_sigkill_inside_a_later_stage_resumes_bit_identical(tmp_path, reference):
    from test_resume import kill_when, start

    out = tmp_path / "run"
    process = start(out, args=ARGS)
    kill_when(process, lambda: list(out.glob("checkpoint-epoch0005-step*.pt")))  # inside epoch 5, stage 3's first
    assert not (out / "summary.json").exists()
    assert one_thread([*ARGS, "--out", str(out)]) == 0
    resumed = [line for line in (out / "log.txt").read_text().splitlines() if " resuming " in line]
    assert len(resumed) == 1 and resumed[0].endswith("of 6 (stage 3 of 3)"), resumed  # epoch 5 > --epochs 2
    assert_same_run(reference, out)


def test_stages_run_under_torchrun_with_one_model(tmp_path):
    from test_distributed import finish, torchrun

    args = [a for a in ARGS if a != "--quiet"] + ["--out", str(tmp_path / "run")]
    args[args.index("--checkpoint-every"):args.index("--checkpoint-every") + 2] = []  # single-process only
    stdout = finish(torchrun("train_search.py", args, tmp_path), tmp_path)
    log = (tmp_path / "run" / "log.txt").read_text()
    assert stdout.count("search finished") == 1 and log.count("stage 3 of 3: 5 cells") == 1
    assert "all 2 processes hold the same weights, alphas and BatchNorm statistics" in log
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["stage"] == 2


def test_a_list_that_is_not_numbers_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exc:
        search_main([*ARGS, "--pdarts-add-layers", "0,6,x"])
    assert exc.value.code == 2 and "expected comma-separated whole numbers" in capsys.readouterr().err


def test_the_method_registry_knows_pdarts():
    assert METHODS.get("pdarts") is PDarts
    with pytest.raises(ConfigError, match="--method pdarts searches the darts space"):
        PDarts.check(SearchConfig(method="pdarts", space="nas-bench-201"))
    with pytest.raises(ConfigError, match="early-stop"):
        PDarts.check(SearchConfig(method="pdarts", early_stop="es", hessian_every=1))


def test_the_report_draws_alphas_whose_ops_change_between_stages(tmp_path, reference):
    pytest.importorskip("matplotlib")
    from darts_nas.report import main as report_main

    assert report_main([str(reference), "--out", str(tmp_path)]) == 0
    assert len(list(tmp_path.glob("alphas-*.png"))) == 1
