"""The NAS-Bench-201 space: arch strings, ops, the search supernet under every method, the
benchmark's network and its sizes, and the benchmark's data read safely."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from darts_nas.arch_string import EDGES, NB201_PRIMITIVES, ArchGenotype, derive_arch, parse_arch, resolve_arch
from darts_nas.architect import Architect
from darts_nas.cli import search_main
from darts_nas.config import SearchConfig
from darts_nas.errors import ConfigError, GenotypeError
from darts_nas.methods import METHODS
from darts_nas.methods.pc_darts import PCDarts
from darts_nas.spaces import SEARCH_SPACES
from darts_nas.spaces.nas_bench_201 import NB201_OPS, NB201Supernet, ResidualReduction
from darts_nas.tracking import read_jsonl

# The three real records of ../shared/data/nats-tss-sample (indices 0, 11, 284).
SAMPLE_ARCHS = {
    0: "|avg_pool_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|nor_conv_1x1~0|skip_connect~1|skip_connect~2|",
    11: "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|none~0|nor_conv_3x3~1|avg_pool_3x3~2|",
    284: "|skip_connect~0|+|skip_connect~0|skip_connect~1|+|none~0|nor_conv_1x1~1|none~2|",
}
TINY = ["--space", "nas-bench-201", "--dataset", "digits", "--init-channels", "4", "--layers", "3",
        "--batch-size", "16", "--steps-per-epoch", "2", "--epochs", "2", "--quiet", "--no-tensorboard",
        "--device", "cpu"]


def shared_dir() -> Path | None:
    """../shared next to the repository (or $DARTS_NAS_SHARED); None when absent."""
    path = Path(os.environ.get("DARTS_NAS_SHARED") or Path(__file__).resolve().parents[2] / "shared")
    return path if path.is_dir() else None


def sample_dir() -> Path:
    shared = shared_dir()
    if shared is None or not (shared / "data" / "nats-tss-sample" / "meta.pickle.pbz2").is_file():
        pytest.skip("the NATS-Bench sample records (../shared/data/nats-tss-sample) are not here")
    return shared / "data" / "nats-tss-sample"


# ---------------------------------------------------------------------------------------------
# Arch strings
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", SAMPLE_ARCHS.values())
def test_arch_strings_parse_and_print_back_exactly(text):
    genotype = parse_arch(text)
    assert str(genotype) == text and genotype.tostr() == text
    assert parse_arch(f"  {text}\n") == genotype
    assert ArchGenotype.from_dict(json.loads(json.dumps(genotype.to_dict()))) == genotype
    assert genotype.to_dict() == {"space": "nas-bench-201", "arch": text}


@pytest.mark.parametrize("text, message", [
    ("|nor_conv_5x5~0|+|none~0|none~1|+|none~0|none~1|none~2|", "unknown NAS-Bench-201 op 'nor_conv_5x5'"),
    ("|none~1|+|none~0|none~1|+|none~0|none~1|none~2|", "has input 1 where 0 is expected"),
    ("|none~0|+|none~0|none~1|", "has 2 node(s) where NAS-Bench-201 cells have 3"),
    ("|none~0|+|none~0|+|none~0|none~1|none~2|", "node 2 of arch string"),
    ("|none~0|+|none~0|none~1|+|none~0|none~1|none~2|+|none~0|", "has 4 node(s)"),
    ("|none0|+|none~0|none~1|+|none~0|none~1|none~2|", "is not op~input"),
    ("none~0+|none~0|none~1|+|none~0|none~1|none~2|", "each node is written between '|'"),
    ("|__import__('os')~0|+|none~0|none~1|+|none~0|none~1|none~2|", "unknown NAS-Bench-201 op"),
])
def test_bad_arch_strings_get_one_line_naming_the_problem(text, message):
    with pytest.raises(GenotypeError) as info:
        parse_arch(text)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_derivation_is_the_per_edge_argmax_with_none_included():
    alphas = torch.zeros(6, 5)
    alphas[0, 0] = 1.0  # none wins edge 1<-0
    alphas[1, 3] = 2.0
    alphas[5, 4] = 0.5
    genotype = derive_arch(alphas)
    assert genotype.ops == ("none", "nor_conv_3x3", "none", "none", "none", "avg_pool_3x3")  # ties: the first column
    assert str(genotype) == "|none~0|+|nor_conv_3x3~0|none~1|+|none~0|none~1|avg_pool_3x3~2|"


def test_a_cell_whose_output_cannot_be_reached_is_reported():
    assert parse_arch(SAMPLE_ARCHS[284]).warnings() == ()  # 0 -> 1 (skip) -> 3 (conv 1x1)
    cut = parse_arch("|none~0|+|nor_conv_3x3~0|none~1|+|none~0|nor_conv_3x3~1|none~2|")  # 1 unreached
    assert not cut.connected()
    assert "does not connect its input to its output" in cut.warnings()[0]


def test_resolve_arch_reads_strings_files_and_run_directories(tmp_path):
    genotype = parse_arch(SAMPLE_ARCHS[11])
    genotype.save(tmp_path / "genotype.json")
    assert resolve_arch(SAMPLE_ARCHS[11]) == resolve_arch(tmp_path) == resolve_arch(tmp_path / "genotype.json")
    with pytest.raises(GenotypeError, match="neither a NAS-Bench-201 arch string"):
        resolve_arch(tmp_path / "missing.json")


# ---------------------------------------------------------------------------------------------
# Ops and the search supernet
# ---------------------------------------------------------------------------------------------

def test_the_average_pool_ignores_the_padding():
    pool = NB201_OPS["avg_pool_3x3"](1, 1, False)
    assert torch.equal(pool(torch.ones(1, 1, 4, 4)), torch.ones(1, 1, 4, 4))  # 1 at the corners too
    assert tuple(NB201_OPS) == NB201_PRIMITIVES


def test_the_supernet_shares_one_alpha_and_keeps_the_benchmarks_skeleton():
    model = SEARCH_SPACES.get("nas-bench-201")(C=4, num_classes=3, layers=6, steps=3, in_channels=1)
    assert isinstance(model, NB201Supernet) and model.cell_types() == ("cell",)
    assert list(model.arch_groups()) == ["alphas_cell"] and model.alphas_cell.shape == (6, 5)
    ids = {id(p) for p in model.parameters()}
    arch, weights = {id(p) for p in model.arch_parameters()}, {id(p) for p in model.weights()}
    assert arch | weights == ids and not arch & weights
    blocks = list(model.cells)
    assert [isinstance(b, ResidualReduction) for b in blocks] == [False] * 2 + [True] + [False] * 2 + [True] + [False] * 2
    cell_bns = [m for b in blocks if not isinstance(b, ResidualReduction) for m in b.modules()
                if isinstance(m, torch.nn.BatchNorm2d)]
    assert cell_bns and not any(m.affine for m in cell_bns)
    logits = model(torch.randn(2, 1, 8, 8))
    assert logits.shape == (2, 3)
    logits.sum().backward()
    assert model.alphas_cell.grad is not None and model.alphas_cell.grad.abs().sum() > 0
    assert model.genotype() == derive_arch(model.alphas_cell.detach())


@pytest.mark.parametrize("settings, message", [
    ({"layers": 4}, "--layers 4 is not a multiple of 3"),
    ({"nodes": 4}, "3 nodes after its input, not --nodes 4"),
    ({"primitives": ("sep_conv_3x3", "none")}, "--ops sep_conv_3x3: not NAS-Bench-201 ops"),
    ({"primitives": ("none",)}, "at least one op other than none"),
    ({"recompute": True}, "drop --recompute"),
])
def test_settings_that_are_not_the_space_are_refused(settings, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        SearchConfig(space="nas-bench-201", **settings)


def test_pc_darts_betas_normalise_over_each_nodes_edges():
    config = SearchConfig(space="nas-bench-201", method="pc-darts", partial_channels=2)
    model = NB201Supernet(C=4, num_classes=3, N=1, in_channels=1, method=PCDarts(config))
    with torch.no_grad():
        model.betas_cell.copy_(torch.tensor([3.0, 0.0, 1.0, 0.0, 0.0, 2.0]))
    plan = model.method.edge_plan(model, "cell")
    # node 1 has one edge (its weight is 1), node 2 two, node 3 three
    assert plan.edge_weights[0] == 1.0
    assert torch.allclose(plan.edge_weights[1:3].sum(), torch.tensor(1.0))
    assert torch.allclose(plan.edge_weights[3:].sum(), torch.tensor(1.0))
    assert plan.edge_weights[2] > plan.edge_weights[1] and plan.edge_weights[5] > plan.edge_weights[4]


def test_pc_darts_with_k1_and_no_betas_is_darts_on_this_space():
    config = SearchConfig(space="nas-bench-201", method="pc-darts", partial_channels=1, edge_normalization=False)
    torch.manual_seed(0)
    darts = NB201Supernet(C=4, num_classes=3, N=1, in_channels=1)
    torch.manual_seed(0)
    pc = NB201Supernet(C=4, num_classes=3, N=1, in_channels=1, method=PCDarts(config))
    theirs = darts.state_dict()
    pc.load_state_dict({k: theirs[k.replace(".mixed.", ".")] for k in pc.state_dict()})
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(pc(x), darts(x))


def test_gdas_runs_one_op_per_edge_on_this_space():
    gdas = METHODS.get("gdas")(SearchConfig(space="nas-bench-201", method="gdas"))
    model = NB201Supernet(C=4, num_classes=3, N=1, in_channels=1, method=gdas)
    model.train()
    plan = gdas.edge_plan(model, "cell")
    assert len(plan.active) == len(EDGES) and torch.equal(plan.weights.detach().sum(-1), torch.ones(len(EDGES)))
    model(torch.randn(2, 1, 8, 8)).sum().backward()
    assert model.alphas_cell.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------
# End to end: a tiny search with every method
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("args", [["--method", "darts"], ["--method", "darts", "--unrolled"],
                                  ["--method", "gdas"], ["--method", "pc-darts", "--partial-channels", "2"]],
                         ids=["darts-1st", "darts-2nd", "gdas", "pc-darts"])
def test_a_search_runs_end_to_end_with_every_method(tmp_path, args):
    out = tmp_path / "run"
    assert search_main([*TINY, *args, "--out", str(out)]) == 0
    raw = json.loads((out / "genotype.json").read_text())
    assert raw["space"] == "nas-bench-201"
    genotype = parse_arch(raw["arch"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["genotype"] == raw and summary["genotype_text"] == str(genotype)
    history = read_jsonl(out / "history.jsonl")
    assert [h["epoch"] for h in history] == [1, 2]
    assert history[-1]["primitives"] == list(NB201_PRIMITIVES)
    assert len(history[-1]["alphas"]["cell"]) == 6 and len(history[-1]["alphas"]["cell"][0]) == 5
    assert (out / "cell_cell.dot").is_file()
    config = json.loads((out / "config.json").read_text())["config"]
    assert config["space"] == "nas-bench-201" and config["layers"] == 3 and config["nodes"] == 3


def test_the_board_and_the_log_show_a_disconnected_cell(tmp_path, monkeypatch):
    cut = parse_arch("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|none~0|none~1|none~2|")
    monkeypatch.setattr(NB201Supernet, "genotype", lambda self: cut)
    out = tmp_path / "run"
    args = [a for a in TINY if a != "--no-tensorboard"]
    assert search_main([*args, "--epochs", "1", "--out", str(out)]) == 0
    log = (out / "log.txt").read_text()
    assert f"genotype: {cut}" in log
    assert "warning: the derived cell" in log and "does not connect its input to its output" in log
    assert any(p.name.startswith("events.out.tfevents.") for p in out.iterdir())


def test_pc_darts_refuses_a_k_that_does_not_divide_the_channels(tmp_path, capsys):
    out = tmp_path / "run"
    assert search_main([*TINY, "--method", "pc-darts", "--partial-channels", "3", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--partial-channels 3 does not divide the 4 channels" in err
    assert not out.exists()


def test_an_unknown_space_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="valid search spaces are: darts, nas-bench-201"):
        SEARCH_SPACES.get("nb201")
