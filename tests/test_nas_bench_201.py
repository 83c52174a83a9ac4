"""The NAS-Bench-201 space: arch strings, ops, the search supernet under every method, the
benchmark's network and its sizes, and the benchmark's data read safely."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from darts_nas.arch_string import EDGES, NB201_PRIMITIVES, ArchGenotype, derive_arch, parse_arch, resolve_arch
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
                                  ["--method", "gdas"], ["--method", "pc-darts", "--partial-channels", "2"],
                                  ["--method", "darts-minus"], ["--method", "beta-darts"], ["--method", "sdarts-rs"],
                                  ["--method", "sdarts-adv"], ["--method", "drnas"]],
                         ids=["darts-1st", "darts-2nd", "gdas", "pc-darts", "darts-minus", "beta-darts", "sdarts-rs",
                              "sdarts-adv", "drnas"])
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


# ---------------------------------------------------------------------------------------------
# The benchmark's network: its sizes equal the records'
# ---------------------------------------------------------------------------------------------

# (dataset setting in the records, classes, image side)
RECORD_SETTINGS = [("cifar10", 10, 32), ("cifar100", 100, 32), ("ImageNet16-120", 120, 16)]


@pytest.mark.parametrize("index", sorted(SAMPLE_ARCHS))
def test_the_tiny_network_has_the_records_params_and_flops(index):
    from darts_nas.bench import load_pickle
    from darts_nas.spaces.nas_bench_201 import TinyNetwork

    record = load_pickle(sample_dir() / f"{index:06d}.pickle.pbz2")["200"]
    assert record["arch_str"] == SAMPLE_ARCHS[index]
    for dataset, classes, side in RECORD_SETTINGS:
        run = record["all_results"][(dataset, record["dataset_seed"][dataset][0])]
        assert run["arch_config"]["class_num"] == classes
        model = TinyNetwork(parse_arch(record["arch_str"]), C=run["arch_config"]["channel"],
                            N=run["arch_config"]["num_cells"], num_classes=classes)
        sizes = model.benchmark_sizes((1, 3, side, side))
        assert sizes["params"] == pytest.approx(float(run["params"]), abs=1e-12), dataset
        assert sizes["flop"] == pytest.approx(float(run["flop"]), abs=1e-9), dataset
    assert len(model.cells) == 17


def test_train_final_reports_the_benchmarks_sizes_with_epochs_0(tmp_path):
    from darts_nas.cli import train_main

    out = tmp_path / "train"
    assert train_main(["--space", "nas-bench-201", "--cell", SAMPLE_ARCHS[11], "--epochs", "0", "--out", str(out),
                       "--no-tensorboard", "--quiet", "--device", "cpu"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["sizes"]["benchmark"] == {"params": pytest.approx(0.802426, abs=1e-12),
                                            "flop": pytest.approx(113.95137, abs=1e-9)}
    assert config["sizes"]["params"] == 802426
    settings = config["config"]
    assert (settings["protocol"], settings["network"], settings["layers"], settings["init_channels"]) == \
        ("nas-bench-201", "nas-bench-201", 15, 16)
    assert (settings["epochs"], settings["batch_size"], settings["learning_rate"], settings["nesterov"],
            settings["weight_decay"], settings["cutout"], settings["auxiliary"]) == (0, 256, 0.1, True, 5e-4, 0, False)
    assert json.loads((out / "genotype.json").read_text())["arch"] == SAMPLE_ARCHS[11]
    assert "params 0.802426 MB, FLOPs 113.95137 M" in (out / "log.txt").read_text()


@pytest.mark.parametrize("args, message", [
    (["--protocol", "cifar"], "--space nas-bench-201 does not train under --protocol cifar"),
    (["--auxiliary"], "no auxiliary head and no drop-path"),
    (["--layers", "4"], "--layers 4 is not a multiple of 3"),
    (["--cell", "|nor_conv_3x3~0|+|nor_conv_3x3~0|+|none~0|none~1|none~2|"], "node 2 of arch string"),
])
def test_bad_nas_bench_201_training_settings_get_one_line(tmp_path, capsys, args, message):
    from darts_nas.cli import train_main

    argv = ["--space", "nas-bench-201", "--cell", SAMPLE_ARCHS[0], "--epochs", "0", "--quiet",
            "--out", str(tmp_path / "t"), *args]
    assert train_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.count("\n") == 0


# ---------------------------------------------------------------------------------------------
# The benchmark data, read safely
# ---------------------------------------------------------------------------------------------

# The published numbers of the three sample records (benchmark-data.md B1; 200 epochs, mean of 3 seeds).
GOLDEN = {
    (0, "cifar10"): (81.98, 85.86), (0, "cifar100"): (52.70, 52.91), (0, "ImageNet16-120"): (28.21, 26.63),
    (11, "cifar10"): (87.94, 91.58), (11, "cifar100"): (67.45, 67.61), (11, "ImageNet16-120"): (30.41, 30.17),
    (284, "cifar10"): (86.05, 88.79), (284, "cifar100"): (61.68, 62.14), (284, "ImageNet16-120"): (33.40, 32.47),
}


def test_darts_bench_query_reports_the_sample_records(capsys):
    from darts_nas.bench import main, open_benchmark

    bench = open_benchmark(sample_dir())
    assert len(bench.archs) == 15625
    for (index, dataset), (valid, test) in GOLDEN.items():
        result = bench.query(SAMPLE_ARCHS[index], dataset)
        assert result["index"] == index and result["seeds"] == [777, 888, 999]
        assert round(result["valid_acc"], 2) == valid and round(result["test_acc"], 2) == test
    assert main(["query", str(sample_dir()), SAMPLE_ARCHS[11], "--dataset", "cifar10"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["params"] == pytest.approx(0.802426) and printed["flop"] == pytest.approx(113.95137)
    assert printed["arch"] == SAMPLE_ARCHS[11] and printed["dataset"] == "cifar10"


def test_bad_queries_get_one_line(capsys, tmp_path):
    from darts_nas.bench import main

    sample = str(sample_dir())
    all_skip = "|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|"
    cases = [
        ([sample, SAMPLE_ARCHS[0], "--dataset", "svhn"], "holds no dataset 'svhn'"),
        ([sample, all_skip], "has no record of architecture 1835"),  # in the meta list, not in the sample
        ([sample, "|conv~0|+|none~0|none~1|+|none~0|none~1|none~2|"], "unknown NAS-Bench-201 op"),
        ([str(tmp_path), SAMPLE_ARCHS[0]], "holds no meta.pickle.pbz2"),
        ([str(tmp_path / "nothing"), SAMPLE_ARCHS[0]], "does not exist: give NAS-Bench-201"),
    ]
    for args, message in cases:
        assert main(["query", *args]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and err.count("\n") == 0, err


class _Payload:
    """Unpickling this calls ``os.system`` (what a malicious benchmark file would do)."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_a_malicious_benchmark_file_cannot_run_code(tmp_path, capsys):
    import bz2
    import pickle

    from darts_nas.bench import main

    proof = tmp_path / "pwned"
    directory = tmp_path / "bench"
    directory.mkdir()
    with bz2.open(directory / "meta.pickle.pbz2", "wb") as f:
        pickle.dump({"meta_archs": [SAMPLE_ARCHS[0]], "evil": _Payload(f"touch {proof}")}, f)
    assert main(["query", str(directory), SAMPLE_ARCHS[0]]) == 2
    err = capsys.readouterr().err.strip()
    assert "asks to load posix.system" in err or "asks to load os.system" in err
    assert "refused without running it" in err and err.count("\n") == 0
    assert not proof.exists()
    # a truncated file: one line too
    good = bz2.compress(pickle.dumps({"meta_archs": list(SAMPLE_ARCHS.values()) * 100}))
    (directory / "meta.pickle.pbz2").write_bytes(good[: len(good) // 2])
    assert main(["query", str(directory), SAMPLE_ARCHS[0]]) == 2
    err = capsys.readouterr().err.strip()
    assert "is not a readable benchmark file" in err and err.count("\n") == 0
