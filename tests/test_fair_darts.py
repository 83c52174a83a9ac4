"""FairDARTS (--method fair-darts): its identities, its threshold derivation and the sparse cells
(nodes with one input or none) it makes, from genotype text to a trained final network."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from darts_nas.architect import Architect
from darts_nas.cli import search_main, train_main
from darts_nas.config import SearchConfig
from darts_nas.errors import ConfigError, GenotypeError
from darts_nas.genotype import Genotype, derive_threshold, parse, resolve
from darts_nas.methods import METHODS, EdgePlan, Method
from darts_nas.methods.fair_darts import FairDarts, zero_one_loss
from darts_nas.network import Cell, NetworkCIFAR, count_parameters
from darts_nas.ops import OPS
from darts_nas.supernet import Supernet
from darts_nas.tracking import read_jsonl

OPS7 = ("max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3",
        "dil_conv_5x5")
TINY = ["--dataset", "digits", "--init-channels", "4", "--layers", "3", "--nodes", "2", "--batch-size", "16",
        "--steps-per-epoch", "3", "--epochs", "2", "--quiet", "--no-tensorboard", "--device", "cpu"]

# FairDARTS-a as the authors' genotypes.py writes it: node 3 of the normal cell keeps no input.
FAIRDARTS_A = """Genotype(normal=[('sep_conv_3x3', 2, 0), ('sep_conv_5x5', 2, 1), ('max_pool_3x3', 4, 0),
('sep_conv_3x3', 5, 0)], normal_concat=range(2, 6), reduce=[('max_pool_3x3', 2, 0), ('avg_pool_3x3', 2, 1),
('avg_pool_3x3', 3, 0), ('dil_conv_5x5', 3, 1), ('avg_pool_3x3', 4, 0), ('sep_conv_5x5', 4, 1),
('skip_connect', 5, 0), ('skip_connect', 5, 1)], reduce_concat=range(2, 6))"""
FAIRDARTS_B = """Genotype(normal=[('sep_conv_3x3', 2, 0), ('sep_conv_3x3', 2, 1), ('sep_conv_3x3', 3, 1),
('dil_conv_3x3', 4, 0), ('sep_conv_5x5', 4, 1), ('dil_conv_5x5', 5, 1)], normal_concat=range(2, 6),
reduce=[('skip_connect', 2, 0), ('dil_conv_3x3', 2, 1), ('skip_connect', 3, 0), ('dil_conv_3x3', 3, 1),
('max_pool_3x3', 4, 0), ('sep_conv_3x3', 4, 1), ('skip_connect', 5, 2), ('max_pool_3x3', 5, 0)],
reduce_concat=range(2, 6))"""
# Nodes with 2, 0, 1 and 3 inputs; node 5 also reads the dropped node 3 (that edge computes nothing).
SPARSE = ("normal: sep_conv_3x3 0, skip_connect 1 | - | dil_conv_3x3 2 | max_pool_3x3 3, sep_conv_5x5 1, "
          "avg_pool_3x3 4 ; concat 2-5 / reduce: max_pool_3x3 0 | skip_connect 2, sep_conv_3x3 1 ; concat 2-3")


def fair(**settings) -> FairDarts:
    return FairDarts(SearchConfig(method="fair-darts", **settings))


def supernet(method, seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    model = Supernet(C=4, num_classes=5, layers=3, steps=2, in_channels=3, primitives=OPS7, method=method).to(dtype)
    with torch.no_grad():  # away from FairDARTS's all-zero start, where the zero-one loss has no gradient
        for a in model.arch_parameters():
            a.copy_(torch.randn(a.shape, generator=torch.Generator().manual_seed(seed + 7), dtype=dtype))
    return model


def batch(seed=1, n=4, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, 8, generator=g).to(dtype), torch.randint(0, 5, (n,), generator=g)


def arch_grads(model, method, unrolled=False):
    w_opt = torch.optim.SGD(model.weights(), lr=0.05, momentum=0.9, weight_decay=3e-4)
    architect = Architect(model, w_opt, unrolled=unrolled, regulariser=method.arch_regulariser)
    if unrolled:
        return architect.unrolled_grad(batch(2), batch(), 0.05)[0]
    return architect.first_order_grad(batch())[0]


class GivenWeights(Method):
    """DARTS's supernet fed mixing weights given from outside (leaves whose gradient we read)."""

    def __init__(self, weights):
        super().__init__()
        self.given = weights

    def edge_plan(self, model, cell_type):
        return EdgePlan(self.given[cell_type])


# ---------------------------------------------------------------------------------------------
# Identities (issue part 7)
# ---------------------------------------------------------------------------------------------

def test_at_weight_zero_the_architecture_gradient_is_the_mixing_weight_gradient_through_the_sigmoid():
    """DARTS and FairDARTS differ only in the map from alphas to mixing weights (softmax, sigmoid):
    with the zero-one loss off, FairDARTS's architecture gradient is sigma'(alpha) times the gradient
    of the same network's loss with respect to its mixing weights, taken at w = sigma(alpha)."""
    method = fair(zero_one_weight=0.0)
    assert method.arch_regulariser(None) is None
    model = supernet(method)
    got = arch_grads(model, method)
    sig = {t: torch.sigmoid(model.arch_group(f"alphas_{t}")).detach().requires_grad_() for t in ("normal", "reduce")}
    reference = supernet(GivenWeights(sig))
    reference.load_state_dict(model.state_dict())
    x, y = batch()
    loss = F.cross_entropy(reference(x), y)
    grad_w = torch.autograd.grad(loss, [sig["normal"], sig["reduce"]])
    for g_alpha, g_w, s in zip(got, grad_w, sig.values()):
        s = s.detach()
        assert torch.allclose(g_alpha, g_w * s * (1 - s), rtol=1e-10, atol=1e-14)
        assert g_alpha.abs().sum() > 0
    # The weights' gradient of the weight step is the same network's too.
    x, y = batch(3)
    mine = torch.autograd.grad(F.cross_entropy(model(x), y), model.weights())
    theirs = torch.autograd.grad(F.cross_entropy(reference(x), y), reference.weights())
    for a, b in zip(mine, theirs):
        assert torch.equal(a, b)


@pytest.mark.parametrize("kind", ["l2", "l1"])
def test_the_zero_one_loss_and_its_gradient_are_the_closed_form(kind):
    g = torch.Generator().manual_seed(0)
    alphas = [torch.randn(5, 7, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    loss = zero_one_loss(alphas, kind)
    s = [torch.sigmoid(a.detach()) for a in alphas]
    n = sum(t.numel() for t in s)  # the mean over every op of every edge of both cell types
    gaps = torch.cat([t.reshape(-1) for t in s]) - 0.5
    assert loss.item() == pytest.approx(-(gaps ** 2 if kind == "l2" else gaps.abs()).sum().item() / n, rel=1e-12)
    for a, t, grad in zip(alphas, s, torch.autograd.grad(loss, alphas)):
        factor = 2 * (t - 0.5) if kind == "l2" else torch.sign(t - 0.5)
        assert torch.allclose(grad, -factor * t * (1 - t) / n, rtol=1e-12, atol=1e-16)
    # Every weight is pushed away from 0.5: gradient descent raises alpha above 0, lowers it below.
    assert all(bool((grad * a.detach() < 0).all()) for a, grad in zip(alphas, torch.autograd.grad(
        zero_one_loss(alphas, kind), alphas)))


@pytest.mark.parametrize("unrolled", [False, True])
def test_with_weight_w_the_gradient_is_the_plain_one_plus_w_times_the_closed_form(unrolled):
    plain_method, method = fair(zero_one_weight=0.0, unrolled=unrolled), fair(zero_one_weight=10.0, unrolled=unrolled)
    plain = arch_grads(supernet(plain_method), plain_method, unrolled)
    model = supernet(method)
    total = arch_grads(model, method, unrolled)
    s = [torch.sigmoid(model.arch_group(f"alphas_{t}")).detach() for t in ("normal", "reduce")]
    n = sum(t.numel() for t in s)
    for a, b, t in zip(plain, total, s):
        assert torch.allclose(b, a + 10.0 * (-2 * (t - 0.5) * t * (1 - t) / n), rtol=1e-9, atol=1e-13)


def test_the_supernet_mixes_with_sigmoids_from_zero_alphas():
    method = fair()
    torch.manual_seed(0)
    model = Supernet(C=4, num_classes=5, layers=3, steps=2, primitives=OPS7, method=method)
    torch.manual_seed(0)
    darts = Supernet(C=4, num_classes=5, layers=3, steps=2, primitives=OPS7)
    assert all(bool((a == 0).all()) for a in model.arch_parameters())  # the code's zeros: every weight 0.5
    assert torch.equal(method.edge_plan(model, "normal").weights, torch.full((5, 7), 0.5))
    for (name, a), (_, b) in zip(model.named_weights(), darts.named_weights()):  # the same random stream
        assert torch.equal(a, b), name


# ---------------------------------------------------------------------------------------------
# The threshold derivation
# ---------------------------------------------------------------------------------------------

def logits(rows):
    """Alphas whose sigmoids are ``rows`` (each row: {op: weight}, 0.1 elsewhere)."""
    sig = torch.full((len(rows), len(OPS7)), 0.1, dtype=torch.float64)
    for e, row in enumerate(rows):
        for op, w in row.items():
            sig[e, OPS7.index(op)] = w
    return torch.log(sig / (1 - sig))


def test_each_node_keeps_its_two_strongest_edges_only_where_the_best_op_passes_the_threshold():
    normal = logits([
        {"sep_conv_3x3": 0.9, "skip_connect": 0.88},  # node 2 <- 0: kept, its argmax op
        {"dil_conv_3x3": 0.8},  # node 2 <- 1: among the top two, below 0.85: dropped
        {"skip_connect": 0.5}, {"avg_pool_3x3": 0.6}, {"max_pool_3x3": 0.84},  # node 3: no input
        {"sep_conv_5x5": 0.99}, {"skip_connect": 0.2}, {"dil_conv_5x5": 0.86}, {"sep_conv_3x3": 0.95},  # node 4
    ])
    reduce = logits([{"max_pool_3x3": 0.9}, {"avg_pool_3x3": 0.9}, {}, {}, {"skip_connect": 0.97},
                     {}, {}, {}, {"skip_connect": 0.2}])
    g = derive_threshold(normal, reduce, OPS7)
    assert g == parse("Genotype(normal=[('sep_conv_3x3', 2, 0), ('sep_conv_5x5', 4, 0), ('sep_conv_3x3', 4, 3)], "
                      "normal_concat=[2, 3, 4], reduce=[('max_pool_3x3', 2, 0), ('avg_pool_3x3', 2, 1), "
                      "('skip_connect', 3, 2)], reduce_concat=[2, 3, 4])")
    assert g.live_nodes("normal") == (2, 4) and g.live_concat("normal") == (2, 4)
    assert g.live_nodes("reduce") == (2, 3) and g.live_concat("reduce") == (2, 3)  # node 4 dropped
    assert any("drops intermediate node(s) 1" in w for w in g.warnings())
    # threshold 0 is the code's --parse_method darts: the top two edges by sigmoid, an ordinary cell
    dense = derive_threshold(normal, reduce, OPS7, threshold=0.0)
    assert not dense.is_sparse() and dense.normal[:2] == (("sep_conv_3x3", 0), ("dil_conv_3x3", 1))
    assert dense.normal[2:4] == (("max_pool_3x3", 2), ("avg_pool_3x3", 1))
    # a fair-darts supernet derives by this rule
    method = fair()
    model = Supernet(C=4, num_classes=5, layers=3, steps=3, primitives=OPS7, method=method)
    with torch.no_grad():
        model.alphas_normal.copy_(normal)
        model.alphas_reduce.copy_(reduce)
    assert model.genotype() == g


def test_a_derived_cell_may_keep_nothing_and_still_records():
    g = derive_threshold(torch.zeros(5, 7), torch.zeros(5, 7), OPS7)  # all weights 0.5: FairDARTS's start
    assert g.normal == () and g.normal_concat == (2, 3) and g.normal_steps == 2
    assert parse(str(g)) == g == Genotype.from_json(g.to_json()) == parse(g.to_compact())
    assert g.to_compact().startswith("normal: - | - ; concat 2-3")
    assert any("no network can be built" in w for w in g.warnings())
    with pytest.raises(ConfigError, match="keeps no path from its inputs"):
        NetworkCIFAR(4, 5, 3, False, g)


# ---------------------------------------------------------------------------------------------
# Sparse genotypes: text forms and checks
# ---------------------------------------------------------------------------------------------

def test_sparse_cells_round_trip_through_every_form(tmp_path):
    for g in (parse(SPARSE), parse(FAIRDARTS_A), parse(FAIRDARTS_B)):
        assert g.is_sparse("normal")
        assert parse(str(g)) == g and parse(repr(g)) == g and parse(g.to_compact()) == g
        assert Genotype.from_json(g.to_json()) == g and parse(g.to_json()) == g
        path = g.save(tmp_path / "genotype.json")
        assert Genotype.load(path) == g and resolve(str(tmp_path)) == g
    g = parse(SPARSE)
    assert [len(node) for node in g.node_inputs("normal")] == [2, 0, 1, 3]
    assert g.targets("normal") == (2, 2, 4, 5, 5, 5) and g.normal_steps == 4 and g.reduce_steps == 2
    assert g.live_nodes("normal") == (2, 4, 5) and g.live_concat("normal") == (2, 4, 5)
    assert str(g).startswith("Genotype(normal=[('sep_conv_3x3', 2, 0), ('skip_connect', 2, 1), "
                             "('dil_conv_3x3', 4, 2), ('max_pool_3x3', 5, 3)")
    a = parse(FAIRDARTS_A)
    assert a.normal_nodes == (2, 2, 4, 5) and a.reduce_nodes is None  # two inputs per node: an ordinary cell
    assert a.normal_concat == (2, 3, 4, 5) and a.live_concat("normal") == (2, 4, 5)
    # Given as pairs with their nodes, or as triples of an ordinary cell: the same values
    assert Genotype(normal=a.normal, normal_nodes=a.normal_nodes, normal_concat=a.normal_concat,
                    reduce=a.reduce, reduce_concat=a.reduce_concat) == a
    triples = [(op, 2 + k // 2, j) for k, (op, j) in enumerate(a.reduce)]
    assert Genotype(normal=triples, normal_concat=[2, 3, 4, 5], reduce=a.reduce,
                    reduce_concat=[2, 3, 4, 5]).normal_nodes is None


@pytest.mark.parametrize("normal, fragment", [
    ([("sep_conv_3x3", 3, 0), ("skip_connect", 2, 1)], "increasing node order"),
    ([("sep_conv_3x3", 1, 0)], "not an intermediate node"),
    ([("sep_conv_3x3", 2, 2)], "can only take indices 0..1"),
    ([("sep_conv_3x3", 2, 0), ("skip_connect", 1)], "normal[1] must be an (op, node, input) triple"),
    ([("sep_conv_3x3", 2, 0), ("sep_conv_3x3", 2, 0)], "listed twice"),
    ([("none", 2, 0)], "'none'"),
    ([("sep_conv_3x3", 2, "0")], "integer"),
])
def test_bad_sparse_cells_are_refused(normal, fragment):
    with pytest.raises(GenotypeError) as info:
        Genotype(normal=normal, normal_concat=[2], reduce=[("max_pool_3x3", 0), ("max_pool_3x3", 1)],
                 reduce_concat=[2])
    assert fragment in str(info.value)


def test_sparse_cells_are_drawn_and_tabled_with_their_dropped_nodes():
    from darts_nas.drawing import genotype_dots
    from darts_nas.tracking import alpha_heatmap, genotype_markdown

    g = parse(SPARSE)
    dot = genotype_dots(g)["normal"]
    assert 'n1 [label="1", fillcolor="#dddddd"]' in dot  # the dropped node, grey
    assert 'n1 -> n3 [label="max_pool_3x3", style=dotted' in dot  # its edge computes nothing
    assert 'in1 -> n3 [label="sep_conv_5x5"]' in dot and "n1 -> out" not in dot and "n3 -> out" in dot
    table = genotype_markdown(g)
    assert "| `1` | none: dropped | |" in table and "| `c_{k}` | `0`, `2`, `3` | concat |" in table
    heat = alpha_heatmap("normal", torch.zeros(14, 7), OPS7, g)
    assert (0, OPS7.index("sep_conv_3x3")) in heat.marked and (9 + 3, OPS7.index("max_pool_3x3")) in heat.marked
    assert len(heat.marked) == 6


# ---------------------------------------------------------------------------------------------
# The final network
# ---------------------------------------------------------------------------------------------

def test_fairdarts_a_and_b_have_their_published_sizes():
    # The README's 2.83 M and 3.88 M count every parameter, the auxiliary head's included; node 3 of
    # FairDARTS-a's normal cell is left out of the concatenation (with it the count would differ).
    for text, millions in ((FAIRDARTS_A, 2.837), (FAIRDARTS_B, 3.884)):
        model = NetworkCIFAR(36, 10, 20, True, parse(text))
        assert round(count_parameters(model, exclude_auxiliary=False) / 1e6, 3) == millions


def test_a_sparse_cell_builds_only_what_it_computes_and_trains():
    g = parse(SPARSE)
    C = 4
    cell = Cell(g.normal, g.normal_concat, 8, 8, C, False, False, nodes=g.normal_nodes)
    # live edges: node 2 <- 0, 1; node 4 <- 2; node 5 <- 1, 4 (the edge from the dropped node 3 is not built)
    live = [("sep_conv_3x3", 0), ("skip_connect", 1), ("dil_conv_3x3", 2), ("sep_conv_5x5", 1), ("avg_pool_3x3", 4)]
    expected = sum(p.numel() for op, _ in live for p in OPS.get(op)(C, 1, True).parameters())
    expected += sum(p.numel() for p in cell.preprocess0.parameters()) + sum(p.numel() for p in cell.preprocess1.parameters())
    assert sum(p.numel() for p in cell.parameters()) == expected
    assert cell.C_out == 3 * C and cell.concat == (2, 4, 5)
    torch.manual_seed(0)
    model = NetworkCIFAR(C, 5, 3, True, g)
    model.drop_path_prob = 0.2
    model.train()
    logits, aux = model(torch.randn(2, 3, 16, 16))
    assert logits.shape == aux.shape == (2, 5)
    (logits.sum() + aux.sum()).backward()
    assert all(p.grad is not None for p in model.parameters())  # nothing unused: safe under DDP


def test_train_final_on_digits_with_a_sparse_cell(tmp_path):
    spec = tmp_path / "sparse.json"
    parse(SPARSE).save(spec)
    out = tmp_path / "train"
    code = train_main(["--cell", str(spec), "--dataset", "digits", "--init-channels", "4", "--layers", "3",
                       "--batch-size", "32", "--epochs", "1", "--steps-per-epoch", "2", "--quiet", "--no-tensorboard",
                       "--out", str(out)])
    assert code == 0
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["finished"] and math.isfinite(summary["final_test_loss"])
    assert Genotype.from_dict(summary["genotype"]) == parse(SPARSE) == Genotype.load(out / "genotype.json")
    torch.manual_seed(0)
    assert summary["params"] == count_parameters(NetworkCIFAR(4, 10, 3, True, parse(SPARSE), in_channels=1))


# ---------------------------------------------------------------------------------------------
# The search: command line, preset, records
# ---------------------------------------------------------------------------------------------

def test_a_fair_darts_search_on_digits_records_its_sparse_genotypes(tmp_path):
    out = tmp_path / "run"
    # a large architecture step so that some weights cross the threshold in six steps
    assert search_main([*TINY, "--method", "fair-darts", "--ops", ",".join(OPS7), "--arch-learning-rate", "0.2",
                        "--fair-threshold", "0.6", "--out", str(out)]) == 0
    log = (out / "log.txt").read_text()
    assert "FairDARTS search, first order, --zero-one-weight 10.0, --zero-one-loss l2, --fair-threshold 0.6" in log
    final = Genotype.load(out / "genotype.json")
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    alphas = (state["model"]["alphas_normal"], state["model"]["alphas_reduce"])
    assert final == derive_threshold(*alphas, OPS7, threshold=0.6)
    assert Genotype.from_dict(read_jsonl(out / "history.jsonl")[-1]["genotype"]) == final


@pytest.mark.parametrize("args,message", [
    (["--fair-threshold", "1.5"], "--fair-threshold is a sigmoid weight in [0, 1), got 1.5"),
    (["--zero-one-weight", "-1"], "--zero-one-weight must not be negative"),
    (["--space", "nas-bench-201", "--layers", "3", "--nodes", "3"], "--method fair-darts runs in the darts space"),
])
def test_bad_fair_darts_settings_get_one_line_and_write_nothing(tmp_path, capsys, args, message):
    out = tmp_path / "run"
    assert search_main([*TINY, "--method", "fair-darts", *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not out.exists()


def test_the_preset_is_the_published_search():
    from darts_nas.config import load_preset

    preset = load_preset("fair-darts")
    s = preset["settings"]
    assert (s["batch_size"], s["learning_rate"], s["learning_rate_min"], s["arch_learning_rate"]) == (
        128, 0.005, 0.001, 3e-3)
    assert (tuple(s["arch_betas"]), s["zero_one_weight"], s["fair_threshold"], s["epochs"]) == (
        (0.9, 0.999), 10.0, 0.85, 50)
    assert tuple(s["primitives"]) == OPS7 and preset["published"]["test_error"].startswith("2.54")
    config = SearchConfig(**{**s, "preset": "fair-darts"})
    METHODS.get("fair-darts").check(config)
