"""Per-edge candidate op lists (darts_nas.edge_ops): the supernet builds and computes only each
edge's own ops, genotypes read each edge with its own list, and the run loop's records, board and
diagnostics follow them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from darts_nas.cli import search_main
from darts_nas.diagnostics import epoch_diagnostics
from darts_nas.edge_ops import (edge_op_table, keep_columns, op_columns, shared_ops, spread, top_k_columns,
                                uniform_edge_ops)
from darts_nas.errors import ConfigError
from darts_nas.genotype import PRIMITIVES, derive
from darts_nas.methods import METHODS
from darts_nas.ops import OPS
from darts_nas.supernet import Supernet
from darts_nas.tracking import alpha_heatmap, parameter_free_weight, read_jsonl

# A 2-node cell (5 edges) whose edges offer different ops, two each.
NORMAL = (("skip_connect", "sep_conv_3x3"), ("none", "dil_conv_3x3"), ("max_pool_3x3", "skip_connect"),
          ("sep_conv_3x3", "avg_pool_3x3"), ("none", "skip_connect"))
REDUCE = (("max_pool_3x3", "sep_conv_3x3"), ("avg_pool_3x3", "skip_connect"), ("skip_connect", "dil_conv_3x3"),
          ("sep_conv_3x3", "max_pool_3x3"), ("dil_conv_3x3", "none"))
TABLE = {"normal": NORMAL, "reduce": REDUCE}


def supernet(edge_ops=TABLE, method=None, **kw):
    torch.manual_seed(0)
    return Supernet(C=4, num_classes=3, layers=3, steps=2, in_channels=1, method=method, edge_ops=edge_ops, **kw)


def test_only_each_edges_own_ops_are_built_with_alphas_of_its_width():
    model = supernet()
    assert model.alphas_normal.shape == (5, 2) and model.alphas_reduce.shape == (5, 2)
    assert model.primitives is None and model.edge_ops == TABLE
    for cell in model.cells:
        lists = REDUCE if cell.reduction else NORMAL
        for edge, ops in zip(cell.edges, lists):
            built = [op for op in ops if op != "none"]
            assert len(edge.ops) == len(built)  # none is not built, nothing else beyond the list
            assert edge.op_index == [ops.index(op) for op in built]
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 3)


def test_a_uniform_table_is_the_usual_supernet():
    ops = ("none", "skip_connect", "sep_conv_3x3")
    torch.manual_seed(0)
    a = Supernet(C=4, num_classes=3, layers=3, steps=2, in_channels=1, primitives=ops)
    b = supernet(uniform_edge_ops(ops, ("normal", "reduce"), 5))
    assert b.primitives == ops and shared_ops(b.edge_ops) == ops
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(a(x), b(x)) and a.genotype() == b.genotype()


def test_the_genotype_reads_each_edge_with_its_own_ops_none_excluded():
    model = supernet()
    with torch.no_grad():
        model.alphas_normal.zero_()
        model.alphas_reduce.zero_()
        # node 2 (edges 0, 1): edge 1's none is strongest, yet its real op is read
        model.alphas_normal[0] = torch.tensor([2.0, 0.0])  # skip_connect 0.88
        model.alphas_normal[1] = torch.tensor([9.0, 1.0])  # none 0.9997, dil_conv_3x3 0.0003
        # node 3 (edges 2..4): column 1 of edge 3 wins (avg_pool_3x3); edge 4's none never counts
        model.alphas_normal[3] = torch.tensor([0.0, 3.0])
        model.alphas_normal[4] = torch.tensor([5.0, -1.0])
        model.alphas_normal[2] = torch.tensor([1.0, 0.0])
    g = model.genotype()
    # written by hand from NORMAL: edge 0 col 0 = skip_connect (input 0); edge 1 = dil_conv_3x3 (input 1);
    # edge 3 col 1 = avg_pool_3x3 (input 1); edge 2 col 0 = max_pool_3x3 (input 0) beats edge 4's skip (0.0025)
    assert g.normal == (("skip_connect", 0), ("dil_conv_3x3", 1), ("avg_pool_3x3", 1), ("max_pool_3x3", 0))
    assert all(op != "none" for op, _ in g.reduce)


def test_derive_takes_a_table_or_per_edge_lists_and_checks_them():
    a = torch.zeros(5, 2)
    assert derive(a, a, TABLE).normal[0] == ("skip_connect", 0)
    with pytest.raises(Exception, match="4 per-edge op lists for 5 edges"):
        derive(a, a, {"normal": NORMAL[:4], "reduce": REDUCE})


@pytest.mark.parametrize("method", ["darts", "gdas", "pc-darts", "drnas", "sdarts-rs", "beta-darts", "darts-minus"])
def test_every_method_searches_per_edge_ops(method):
    from darts_nas.config import SearchConfig

    model = supernet(method=METHODS.get(method)(SearchConfig(method=method)))
    loss = torch.nn.functional.cross_entropy(model(torch.randn(2, 1, 8, 8)), torch.tensor([0, 1]))
    loss.backward()
    assert model.alphas_normal.grad is not None and model.alphas_normal.grad.shape == (5, 2)
    assert genotype_ops_are_offered(model.genotype().normal, NORMAL)


def genotype_ops_are_offered(pairs, lists) -> bool:
    """Each (op, input j) of a 2-node cell's pairs is among the ops of its edge (node k // 2, input j)."""
    offsets = [0, 2]
    return all(op in lists[offsets[k // 2] + j] and op != "none" for k, (op, j) in enumerate(pairs))


def test_bad_tables_are_one_line_config_errors():
    cells, n = ("normal", "reduce"), 5
    with pytest.raises(ConfigError, match="offer 1 or 2 ops"):
        edge_op_table({"normal": (("skip_connect",),) + NORMAL[1:], "reduce": REDUCE}, cells, n, OPS)
    with pytest.raises(ConfigError, match="no op other than 'none'"):
        edge_op_table({"normal": (("none",),) * 5, "reduce": ((("skip_connect",),) * 5)}, cells, n, OPS)
    with pytest.raises(ConfigError, match="lists an op twice"):
        edge_op_table({"normal": (("skip_connect", "skip_connect"),) * 5, "reduce": REDUCE}, cells, n, OPS)
    with pytest.raises(ConfigError, match="sep_conv_9x9"):
        edge_op_table({"normal": (("skip_connect", "sep_conv_9x9"),) * 5, "reduce": REDUCE}, cells, n, OPS)
    with pytest.raises(ConfigError, match="5 edges but 4 op lists"):
        edge_op_table({"normal": NORMAL[:4], "reduce": REDUCE}, cells, n, OPS)
    with pytest.raises(ConfigError, match="cell types"):
        edge_op_table({"normal": NORMAL}, cells, n, OPS)


def test_pruning_keeps_each_edges_top_k_and_a_new_supernet_continues_from_the_kept_alphas():
    model = Supernet(C=4, num_classes=3, layers=3, steps=2, in_channels=1, primitives=PRIMITIVES)
    table = {}
    kept_alphas = {}
    for cell in model.cell_types():
        alphas = model.arch_group(f"alphas_{cell}").detach()
        columns = top_k_columns(torch.softmax(alphas, -1).tolist(), model.edge_ops[cell], 3, drop=("none",))
        table[cell] = keep_columns(model.edge_ops[cell], columns)
        kept_alphas[cell] = alphas.gather(1, torch.tensor(columns))
        for ops, cols, row in zip(table[cell], columns, alphas):
            assert "none" not in ops and len(ops) == 3
            rest = [c for c in range(8) if c not in cols and PRIMITIVES[c] != "none"]
            assert min(row[cols]) >= max(row[rest])
    pruned = supernet(table)
    with torch.no_grad():
        pruned.alphas_normal.copy_(kept_alphas["normal"])
        pruned.alphas_reduce.copy_(kept_alphas["reduce"])
    # without none in the softmax the ranking of edges can change, but each kept edge's op is the same argmax
    full = model.genotype()
    ops_of = {j: op for op, j in full.normal[:2]}
    for op, j in pruned.genotype().normal[:2]:
        if j in ops_of:
            assert op == ops_of[j]


def test_top_k_ties_and_errors():
    assert top_k_columns([[0.5, 0.5, 0.0]], [("a", "b", "c")], 1) == [[0]]
    with pytest.raises(ConfigError, match="fewer than the 3"):
        top_k_columns([[0.5, 0.5]], [("none", "b")], 3, drop=("none",))


def test_diagnostics_and_heatmaps_read_each_edge_with_its_own_ops():
    model = supernet()
    with torch.no_grad():
        model.alphas_normal.zero_()
    probs = torch.softmax(model.alphas_normal.detach(), -1).numpy()
    # parameter-free columns per NORMAL edge: {0}, {}, {0, 1}, {1}, {1} -> shares .5, 0, 1, .5, .5
    assert parameter_free_weight(probs, NORMAL) == pytest.approx((0.5 + 0 + 1 + 0.5 + 0.5) / 5)
    d = epoch_diagnostics(model, model.genotype())
    assert d["parameter_free_normal"] == pytest.approx(0.5) and d["entropy_normal"] == pytest.approx(np.log(2))
    heatmap = alpha_heatmap("normal", model.alphas_normal, NORMAL, model.genotype())
    assert heatmap.columns == op_columns(NORMAL) == ("skip_connect", "sep_conv_3x3", "none", "dil_conv_3x3",
                                                     "max_pool_3x3", "avg_pool_3x3")
    assert np.isnan(heatmap.values[0, 2]) and heatmap.values[0, 0] == pytest.approx(0.5)
    from darts_nas.drawing import draw_heatmap

    assert draw_heatmap(heatmap).size[0] > 0
    assert spread([[0.25, 0.75]], [("b", "a")], ("a", "b", "c"), fill=0.0) == [[0.75, 0.25, 0.0]]


def test_a_search_records_and_checkpoints_its_per_edge_ops(tmp_path, monkeypatch):
    import darts_nas.search as search_module

    real = search_module.build_search

    def build(config, info, speed):  # the run loop with a per-edge supernet, whatever the space builds
        model, w, a = real(config, info, speed)
        model2 = speed.prepare(Supernet(C=config.init_channels, num_classes=info.num_classes, layers=config.layers,
                                        steps=config.nodes, in_channels=info.in_channels, method=model.method,
                                        edge_ops=TABLE))
        w2 = torch.optim.SGD(model2.weights(), lr=config.learning_rate, momentum=config.momentum,
                             weight_decay=config.weight_decay)
        return model2, w2, model.method.make_architect(model2, w2)

    monkeypatch.setattr(search_module, "build_search", build)
    out = tmp_path / "run"
    args = ["--dataset", "digits", "--init-channels", "4", "--layers", "3", "--nodes", "2", "--batch-size", "8",
            "--steps-per-epoch", "1", "--epochs", "2", "--quiet", "--out", str(out)]
    assert search_main(args) == 0
    history = read_jsonl(out / "history.jsonl")
    assert history[-1]["edge_ops"] == {t: [list(o) for o in e] for t, e in TABLE.items()}
    assert "primitives" not in history[-1] and len(history[-1]["alphas"]["normal"][0]) == 2
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    assert state["edge_ops"] == history[-1]["edge_ops"]
    summary = json.loads((out / "summary.json").read_text())
    assert genotype_ops_are_offered(summary["genotype"]["normal"], NORMAL)
    assert genotype_ops_are_offered(summary["genotype"]["reduce"], REDUCE)
