"""RobustDARTS's spaces S1-S4 (--space s1 ... s4) and S4's noise op, in the search supernet and in
final networks."""

from __future__ import annotations

import json

import pytest
import torch

from darts_nas.cli import search_main, train_main
from darts_nas.genotype import Genotype
from darts_nas.ops import OPS
from darts_nas.primitives import ROBUST_DARTS_SPACES
from darts_nas.spaces import SEARCH_SPACES
from darts_nas.tracking import read_jsonl

# Written from the published table (fact sheet section 2.1, RobustDARTS src/spaces.py), row by row:
# edge (node <- input) | S1 normal | S1 reduce
S1_TABLE = """
0 (2<-0)  | skip_connect, dil_conv_3x3 | max_pool_3x3, avg_pool_3x3
1 (2<-1)  | skip_connect, dil_conv_5x5 | max_pool_3x3, dil_conv_3x3
2 (3<-0)  | skip_connect, dil_conv_5x5 | max_pool_3x3, avg_pool_3x3
3 (3<-1)  | skip_connect, sep_conv_3x3 | max_pool_3x3, avg_pool_3x3
4 (3<-2)  | skip_connect, dil_conv_3x3 | skip_connect, dil_conv_5x5
5 (4<-0)  | max_pool_3x3, skip_connect | max_pool_3x3, avg_pool_3x3
6 (4<-1)  | skip_connect, sep_conv_3x3 | max_pool_3x3, sep_conv_3x3
7 (4<-2)  | skip_connect, sep_conv_3x3 | skip_connect, dil_conv_3x3
8 (4<-3)  | skip_connect, dil_conv_3x3 | skip_connect, dil_conv_5x5
9 (5<-0)  | skip_connect, sep_conv_3x3 | max_pool_3x3, avg_pool_3x3
10 (5<-1) | max_pool_3x3, skip_connect | max_pool_3x3, avg_pool_3x3
11 (5<-2) | skip_connect, dil_conv_3x3 | skip_connect, dil_conv_5x5
12 (5<-3) | dil_conv_3x3, dil_conv_5x5 | skip_connect, dil_conv_5x5
13 (5<-4) | dil_conv_3x3, dil_conv_5x5 | skip_connect, dil_conv_5x5
"""
EVERY_EDGE = {"s2": ["skip_connect", "sep_conv_3x3"], "s3": ["none", "skip_connect", "sep_conv_3x3"],
              "s4": ["noise", "sep_conv_3x3"]}


def published(space: str) -> dict[str, list[list[str]]]:
    if space != "s1":
        return {cell: [EVERY_EDGE[space]] * 14 for cell in ("normal", "reduce")}
    rows = [line.split("|") for line in S1_TABLE.strip().splitlines()]
    # the node <- input label must match the supernet's edge order
    order = [(node, j) for node in range(2, 6) for j in range(node)]
    assert [tuple(int(v) for v in r[0].split("(")[1].rstrip(") ").split("<-")) for r in rows] == order
    return {cell: [[op.strip() for op in r[col].split(",")] for r in rows] for col, cell in ((1, "normal"), (2, "reduce"))}


@pytest.mark.parametrize("space", ["s1", "s2", "s3", "s4"])
def test_the_op_lists_are_the_published_ones_and_the_supernet_builds_them(space):
    table = {cell: [list(ops) for ops in edges] for cell, edges in ROBUST_DARTS_SPACES[space].items()}
    assert table == published(space)
    model = SEARCH_SPACES.get(space)(C=4, num_classes=3, layers=3, steps=4, in_channels=1)
    assert {t: [list(o) for o in e] for t, e in model.edge_ops.items()} == published(space)
    width = len(published(space)["normal"][0])
    assert model.alphas_normal.shape == model.alphas_reduce.shape == (14, width)
    genotype = model.genotype()
    edge = {(node, j): e for e, (node, j) in enumerate((n, j) for n in range(2, 6) for j in range(n))}
    for cell in ("normal", "reduce"):
        for k, (op, j) in enumerate(getattr(genotype, cell)):
            assert op != "none" and op in published(space)[cell][edge[(2 + k // 2, j)]]


def test_noise_replaces_its_input_by_standard_normal_noise_subsampled_at_stride_two():
    op = OPS["noise"](8, 2, False)
    x = torch.full((64, 8, 16, 16), 100.0)
    torch.manual_seed(3)
    y = op(x)
    torch.manual_seed(3)
    y_other = op(torch.zeros(64, 8, 16, 16))
    assert y.shape == (64, 8, 8, 8) and torch.equal(y, y_other)  # nothing of x passes
    assert abs(float(y.mean())) < 0.02 and abs(float(y.std()) - 1) < 0.02
    op.eval()
    assert not torch.equal(op(x), op(x))  # still noise in eval mode, as RobustDARTS's op
    assert OPS["noise"](8, 1, False)(x).shape == x.shape and sum(p.numel() for p in op.parameters()) == 0


def test_a_final_network_trains_a_genotype_with_noise(tmp_path):
    pairs = [["noise", 0], ["sep_conv_3x3", 1]] * 2
    cell = tmp_path / "cell.json"
    Genotype(normal=pairs, normal_concat=[2, 3], reduce=pairs, reduce_concat=[2, 3]).save(cell)
    out = tmp_path / "train"
    assert train_main(["--cell", str(cell), "--dataset", "digits", "--init-channels", "4", "--layers", "3",
                       "--batch-size", "32", "--epochs", "1", "--steps-per-epoch", "2", "--quiet",
                       "--out", str(out)]) == 0
    assert Genotype.load(out / "genotype.json").normal[0] == ("noise", 0)
    assert "training finished" in (out / "log.txt").read_text() and (out / "metrics.json").exists()


def test_done_when_s3_search_with_hessian_and_darts_es_shows_the_diagnostics_in_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    args = ["--dataset", "digits", "--space", "s3", "--hessian-every", "1", "--early-stop", "es",
            "--es-start-epoch", "1", "--es-window", "1", "--es-delta", "1", "--init-channels", "2", "--layers", "3",
            "--batch-size", "8", "--steps-per-epoch", "1", "--epochs", "1", "--quiet", "--out", str(out)]
    assert search_main(args) == 0
    events = EventAccumulator(str(out)).Reload()
    assert [e.step for e in events.Scalars("diagnostics/hessian_eigenvalue")] == [1]
    assert [e.step for e in events.Scalars("alphas/normal/parameter_free")] == [1]
    records = read_jsonl(out / "metrics.jsonl")
    # S3: one parameter-free op (skip) of three per edge, none excluded: a third at the start
    assert records[0]["parameter_free_normal"] == pytest.approx(1 / 3, abs=0.01)
    saved = json.loads((out / "genotype.json").read_text())
    assert saved["space"] == "s3" and json.loads((out / "summary.json").read_text())["space"] == "s3"
    assert json.loads((out / "config.json").read_text())["config"]["primitives"] == ["none", "skip_connect",
                                                                                     "sep_conv_3x3"]


def test_search_cutout_zeroes_a_square_of_the_augmented_images_of_both_halves(tmp_path):
    from darts_nas.data import search_data

    def first_batches(cutout):
        torch.manual_seed(0)
        data = search_data("digits", str(tmp_path), 16, seed=0, cutout=cutout)
        return next(iter(data.weight_loader))[0], next(iter(data.arch_loader))[0], next(iter(data.arch_eval_loader))[0]

    plain, cut = first_batches(0), first_batches(4)
    for a, b in zip(plain[:2], cut[:2]):  # exact zeros (normalised pixels are never exactly 0 otherwise)
        zeros_plain, zeros_cut = (a == 0).flatten(1).sum(1), (b == 0).flatten(1).sum(1)
        assert int(zeros_plain.max()) == 0
        assert bool((zeros_cut >= 4).all()) and bool((zeros_cut <= 16).all())  # a 4x4 square, clipped at borders
    assert torch.equal(plain[2], cut[2])  # the evaluation of the architecture half is not augmented


@pytest.mark.parametrize("args,message", [
    (["--cutout", "-1"], "--cutout must be 0 (none) or a length in pixels"),
    (["--space", "s1", "--ops", "skip_connect,sep_conv_3x3"], "--space s1 gives each edge its published ops"),
    (["--space", "s2", "--nodes", "3"], "--space s2 lists ops for the 14 edges of a 4-node DARTS cell"),
])
def test_bad_robust_darts_settings_get_one_line(tmp_path, capsys, args, message):
    out = tmp_path / "run"
    assert search_main(["--dataset", "digits", "--epochs", "2", *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and not out.exists()


@pytest.mark.parametrize("settings, expected", [
    ({"space": "s2", "method": "spos"}, "built for the darts and nas-bench-201 spaces"),
    ({"space": "s1", "strategy": "random"}, "built for the darts and nas-bench-201 spaces"),
])
def test_sampling_search_refuses_the_robust_spaces(settings, expected):
    from darts_nas.config import SearchConfig
    from darts_nas.errors import ConfigError

    with pytest.raises(ConfigError, match=expected):
        SearchConfig(**settings)
