"""The ProxylessNAS chain space (``--space proxyless``): FairDARTS's ImageNet search space."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from test_fair_darts import GivenWeights, arch_grads, fair
from test_distributed import finish, torchrun
from test_methods import assert_same_run, kill_inside_epoch_2
from test_pdarts import one_thread

from darts_nas.chain_genotype import (CHAIN_PRIMITIVES, MBCONV_OPS, PUBLISHED_CHAINS, STAGE_WIDTHS, ChainGenotype,
                                      derive_chain, layer_plan, parse_chain, resolve_chain, scaled_plan)
from darts_nas.cli import search_main, train_main
from darts_nas.config import CHAIN_METHODS, SearchConfig
from darts_nas.errors import GenotypeError
from darts_nas.methods import METHODS
from darts_nas.methods.fair_darts import zero_one_loss
from darts_nas.network import build_network, count_multiply_adds, count_parameters
from darts_nas.spaces import SEARCH_SPACES
from darts_nas.spaces.proxyless import ChainNetwork, ChainSupernet, MBConv
from darts_nas.tracking import read_jsonl

TINY = ["--dataset", "digits", "--space", "proxyless", "--init-channels", "4", "--layers", "2", "--batch-size", "32",
        "--train-portion", "0.9", "--steps-per-epoch", "1", "--epochs", "2", "--quiet", "--no-tensorboard",
        "--device", "cpu"]
GROUPS = ("conv", "skippable")


def supernet(method=None, seed=0, dtype=torch.float64, classes=5):
    torch.manual_seed(seed)
    model = ChainSupernet(C=4, num_classes=classes, max_depth=2, in_channels=3, method=method).to(dtype)
    with torch.no_grad():  # away from FairDARTS's all-zero start
        for a in model.arch_parameters():
            a.copy_(torch.randn(a.shape, generator=torch.Generator().manual_seed(seed + 7), dtype=dtype))
    return model


def batch(seed=1, n=4, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, 8, generator=g).to(dtype), torch.randint(0, 5, (n,), generator=g)


# ---------------------------------------------------------------------------------------------
# The space: layers, groups, blocks
# ---------------------------------------------------------------------------------------------

def test_the_published_space_has_21_searched_layers_and_none_only_after_each_stage_first():
    plan = layer_plan(STAGE_WIDTHS, (4, 4, 4, 4, 4, 1), 16)
    assert len(plan) == 21
    firsts = [i for i, layer in enumerate(plan) if not layer["skippable"]]
    assert firsts == [0, 4, 8, 12, 16, 20]  # every stage's first layer changes the shape
    assert [plan[i]["stride"] for i in firsts] == [2, 2, 2, 1, 2, 1]
    assert [(plan[i]["C_in"], plan[i]["C_out"]) for i in firsts] == [(16, 24), (24, 40), (40, 80), (80, 96),
                                                                     (96, 192), (192, 320)]
    assert all(layer["stride"] == 1 and layer["C_in"] == layer["C_out"] for layer in plan if layer["skippable"])
    assert CHAIN_PRIMITIVES == ("none", "3x3_MBConv3", "3x3_MBConv6", "5x5_MBConv3", "5x5_MBConv6", "7x7_MBConv3",
                                "7x7_MBConv6")


def test_scaling_down_keeps_which_layers_may_be_skipped():
    # at stem width 4 (multiplier 1/8) stages 3 and 4 both round to 16 channels: the stride-1 first
    # layer of stage 4 then keeps its width, yet stays a block (the space is the published one)
    plan = scaled_plan(4, (2, 2, 2, 2, 2, 1))
    stage4 = plan[6]
    assert (stage4["C_in"], stage4["C_out"], stage4["stride"]) == (16, 16, 1) and not stage4["skippable"]
    assert [layer["skippable"] for layer in plan] == [layer["skippable"] for layer in layer_plan(
        STAGE_WIDTHS, (2, 2, 2, 2, 2, 1), 16)]


@pytest.mark.parametrize("stride", [1, 2])
def test_every_candidate_block_has_its_output_shape(stride):
    x = torch.randn(2, 4, 8, 8)
    for name in MBCONV_OPS + ("3x3_MBConv1",):
        k, e = int(name[0]), int(name[-1])
        block = MBConv(4, 6, k, stride, e)
        assert block(x).shape == (2, 6, 8 // stride, 8 // stride), name
        convs = [m for m in block if isinstance(m, torch.nn.Conv2d)]
        assert len(convs) == (2 if e == 1 else 3) and convs[-2].groups == convs[-2].in_channels == round(4 * e)
        assert sum(isinstance(m, torch.nn.ReLU6) for m in block) == (1 if e == 1 else 2)
        assert isinstance(block[-1], torch.nn.BatchNorm2d) and block[-1].eps == 1e-3  # linear bottleneck


def test_the_supernet_mixes_every_layer_and_gives_logits():
    model = supernet()
    assert model.cell_types() == GROUPS
    assert model.alphas_conv.shape == (6, 6) and model.alphas_skippable.shape == (5, 7)
    assert model.edge_ops["skippable"][0][0] == "none" and "none" not in model.edge_ops["conv"][0]
    x, _ = batch()
    h = model.first(model.stem(x))
    for edge, layer in zip(model.layers, model.plan):
        # every built op of the layer has the layer's output shape; none is not built
        for op in edge.ops:
            side = -(-h.shape[2] // layer["stride"])  # a padded stride-2 conv rounds up
            assert op(h).shape[1:] == (layer["C_out"], side, side)
        h = edge.ops[0](h)
    assert model(x).shape == (4, 5)
    assert {n for n, _ in model.named_parameters() if n.startswith("alphas")} == {"alphas_conv", "alphas_skippable"}


def test_a_skippable_layer_adds_its_input_and_none_skips_it():
    model = supernet()
    weights = {g: torch.zeros_like(model.arch_group(f"alphas_{g}")) for g in GROUPS}
    weights["conv"][:, 0] = 1.0  # every stage's first layer: its first block
    weights["skippable"][:, 0] = 1.0  # every other layer: none
    reference = ChainSupernet(C=4, num_classes=5, max_depth=2, in_channels=3, method=GivenWeights(weights))
    reference = reference.to(torch.float64)
    reference.load_state_dict(model.state_dict())
    reference.eval()
    x, _ = batch()
    h = reference.first(reference.stem(x))
    for edge, layer in zip(reference.layers, reference.plan):
        if not layer["skippable"]:
            h = edge.ops[0](h)
    expected = reference.classifier(reference.head(h).mean(dim=(2, 3)))
    assert torch.allclose(reference(x), expected, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# The genotype
# ---------------------------------------------------------------------------------------------

CHAIN = ("3x3_MBConv3 none | 5x5_MBConv6 7x7_MBConv3 | 7x7_MBConv6 none | 3x3_MBConv6 3x3_MBConv6 | "
         "5x5_MBConv3 none | 7x7_MBConv6")


def test_the_genotype_round_trips_through_text_json_and_files(tmp_path):
    g = parse_chain(CHAIN)
    assert str(g) == CHAIN and g.depths == (2, 2, 2, 2, 2, 1) and g.widths == STAGE_WIDTHS
    assert ChainGenotype.from_dict(json.loads(json.dumps(g.to_dict()))) == g
    assert ChainGenotype.load(g.save(tmp_path / "g.json")) == g == resolve_chain(tmp_path / "g.json")
    assert resolve_chain(CHAIN) == g
    mobile = resolve_chain("ProxylessNAS-mobile".replace("ProxylessNAS-", "proxyless_"))
    assert str(mobile).startswith("widths 32,40,80,96,192,320; 5x5_MBConv3 3x3_MBConv3 none none |")
    assert parse_chain(str(mobile)) == mobile and ChainGenotype.from_dict(mobile.to_dict()) == mobile
    assert "| `s1.3` | 32 | 1 | `none` |" in mobile.markdown() and "l2 " not in mobile.dots()["cell"]


@pytest.mark.parametrize("text,message", [
    ("none 3x3_MBConv3 | 5x5_MBConv6 | 7x7_MBConv6 | 3x3_MBConv6 | 5x5_MBConv3 | 7x7_MBConv6", "cannot be none"),
    ("3x3_MBConv3 | 5x5_MBConv6 | 7x7_MBConv6 | 3x3_MBConv6 | 5x5_MBConv3", "has 5 stage(s)"),
    ("__import__('os') | 5x5_MBConv6 | 7x7_MBConv6 | 3x3_MBConv6 | 5x5_MBConv3 | 7x7_MBConv6", "unknown block"),
    ("4x4_MBConv3 | 5x5_MBConv6 | 7x7_MBConv6 | 3x3_MBConv6 | 5x5_MBConv3 | 7x7_MBConv6", "must be odd"),
    ("3x3_MBConv3 | | 7x7_MBConv6 | 3x3_MBConv6 | 5x5_MBConv3 | 7x7_MBConv6", "has no layer"),
    ("widths 1,2,3; 3x3_MBConv3 | 5x5_MBConv6 | 7x7_MBConv6 | 3x3_MBConv6 | 5x5_MBConv3 | 7x7_MBConv6", "widths"),
])
def test_bad_chains_are_refused_in_one_line(text, message):
    with pytest.raises(GenotypeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_chain(text)


def test_derivation_keeps_each_layers_argmax_with_softmax_and_sigmoid_alike():
    model = supernet()
    alphas = {g: model.arch_group(f"alphas_{g}").detach() for g in GROUPS}
    ops = {g: model.edge_ops[g][0] for g in GROUPS}
    expected_ops = []
    rows = {g: iter(alphas[g].tolist()) for g in GROUPS}
    for layer in model.plan:
        g = "skippable" if layer["skippable"] else "conv"
        row = next(rows[g])
        expected_ops.append(ops[g][row.index(max(row))])
    g = model.genotype()
    assert g.ops == tuple(expected_ops)
    for squash in (torch.sigmoid, lambda a: torch.softmax(a, -1)):
        assert derive_chain({k: squash(v) for k, v in alphas.items()}, ops, model.depths) == g
    # a tie goes to the first column: none on a skippable layer, the first block on the others
    with torch.no_grad():
        model.alphas_skippable.zero_()
        model.alphas_skippable[0, 1] = 1.0
        model.alphas_conv.zero_()
    g = model.genotype()
    assert g.stages[0] == ("3x3_MBConv3", "3x3_MBConv3") and set(g.ops) == {"none", "3x3_MBConv3"}
    assert g.ops.count("none") == 4


def test_fair_darts_derives_per_layer_and_its_loss_covers_both_groups():
    method = fair(space="proxyless")
    model = supernet(method)
    assert torch.equal(method.edge_plan(model, "conv").weights, torch.sigmoid(model.alphas_conv))
    expected = 10.0 * zero_one_loss([model.alphas_conv, model.alphas_skippable], "l2")
    assert torch.equal(method.arch_regulariser(model), expected)
    assert model.genotype() == supernet().genotype()  # same alphas, same argmax as DARTS's


def test_at_weight_zero_fair_darts_gradient_is_the_mixing_weight_gradient_through_the_sigmoid():
    method = fair(space="proxyless", zero_one_weight=0.0)
    model = supernet(method)
    got = arch_grads(model, method)
    sig = {g: torch.sigmoid(model.arch_group(f"alphas_{g}")).detach().requires_grad_() for g in GROUPS}
    reference = ChainSupernet(C=4, num_classes=5, max_depth=2, in_channels=3, method=GivenWeights(sig))
    reference = reference.to(torch.float64)
    reference.load_state_dict(model.state_dict())
    from test_fair_darts import batch as fair_batch

    x, y = fair_batch()
    grad_w = torch.autograd.grad(F.cross_entropy(reference(x), y), [sig[g] for g in GROUPS])
    for g_alpha, g_w, s in zip(got, grad_w, sig.values()):
        s = s.detach()
        assert torch.allclose(g_alpha, g_w * s * (1 - s), rtol=1e-10, atol=1e-14)
        assert g_alpha.abs().sum() > 0


@pytest.mark.parametrize("name", CHAIN_METHODS)
def test_every_accepted_method_steps_the_chain(name):
    method = METHODS.get(name)(SearchConfig(space="proxyless", method=name))
    method.start_epoch(0, 2)
    model = supernet(method, dtype=torch.float32)
    x, y = batch(dtype=torch.float32)
    loss = F.cross_entropy(model(x), y)
    reg = method.arch_regulariser(model)
    grads = torch.autograd.grad(loss + (0 if reg is None else reg), model.arch_parameters())
    assert math.isfinite(loss.item()) and all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)


# ---------------------------------------------------------------------------------------------
# The published net, the command line
# ---------------------------------------------------------------------------------------------

def test_proxylessnas_mobile_has_its_published_parameters_and_mult_adds():
    net = ChainNetwork(resolve_chain("proxyless_mobile"), C=32, num_classes=1000)
    assert count_parameters(net) == PUBLISHED_CHAINS["proxyless_mobile"]["params"] == 4_080_512
    # ours, as the ProxylessNAS code counts them (convs and the classifier): the ~320M MACs the
    # paper's tables quote for the mobile model
    assert count_multiply_adds(net, (1, 3, 224, 224)) == 320_427_584
    assert len(net.blocks) == 19  # 21 searched layers, two of them none
    assert count_parameters(build_network("proxyless", "proxyless_mobile", 32, 4, 1000)) == 4_080_512


def test_search_then_train_final_on_digits(tmp_path):
    out = tmp_path / "search"
    assert search_main([*TINY, "--method", "fair-darts", "--out", str(out)]) == 0
    final = ChainGenotype.load(out / "genotype.json")
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    assert final == derive_chain({g: state["model"][f"alphas_{g}"] for g in GROUPS},
                                 {"conv": MBCONV_OPS, "skippable": CHAIN_PRIMITIVES}, (2, 2, 2, 2, 2, 1))
    assert ChainGenotype.from_dict(read_jsonl(out / "history.jsonl")[-1]["genotype"]) == final
    assert json.loads((out / "summary.json").read_text())["genotype_text"] == str(final)
    from darts_nas.report import cell_graphs

    [chain] = cell_graphs(out / "genotype.json")  # darts-report draws the chain
    assert [op for _, _, op in chain.edges] == [op for op in final.ops if op != "none"]
    train = tmp_path / "train"
    assert train_main(["--space", "proxyless", "--cell", str(out), "--dataset", "digits", "--init-channels", "4",
                       "--batch-size", "32", "--epochs", "1", "--steps-per-epoch", "1", "--quiet",
                       "--no-tensorboard", "--out", str(train)]) == 0
    summary = json.loads((train / "metrics.json").read_text())
    assert summary["finished"] and math.isfinite(summary["final_test_loss"])
    assert ChainGenotype.load(train / "genotype.json") == final
    assert summary["params"] == count_parameters(ChainNetwork(final, C=4, num_classes=10, in_channels=1))


def test_a_search_killed_inside_an_epoch_resumes_bit_identical(tmp_path):
    args = [*TINY, "--method", "fair-darts", "--steps-per-epoch", "2", "--checkpoint-every", "1",
            "--arch-warmup-epochs", "1"]
    reference = tmp_path / "reference"
    assert one_thread([*args, "--out", str(reference)]) == 0
    out = tmp_path / "run"
    kill_inside_epoch_2(args, out)
    assert one_thread([*args, "--out", str(out)]) == 0
    assert_same_run(reference, out)


def test_fair_darts_searches_the_chain_under_torchrun_with_one_model(tmp_path):
    args = [*TINY, "--method", "fair-darts", "--steps-per-epoch", "2", "--report-every", "100",
            "--out", str(tmp_path / "run")]
    args.remove("--quiet")
    stdout = finish(torchrun("train_search.py", args, tmp_path), tmp_path)
    log = (tmp_path / "run" / "log.txt").read_text()
    assert stdout.count("search finished") == 1
    assert "all 2 processes hold the same weights, alphas and BatchNorm statistics" in log
    assert json.loads((tmp_path / "run" / "config.json").read_text())["distributed"]["world_size"] == 2
    assert ChainGenotype.load(tmp_path / "run" / "genotype.json").ops


@pytest.mark.parametrize("args,message", [
    (["--method", "pc-darts"], "--method pc-darts cannot search --space proxyless"),
    (["--method", "darts-minus"], "--method darts-minus cannot search --space proxyless"),
    (["--method", "pdarts"], "--method pdarts cannot search --space proxyless"),
    (["--method", "random-ws"], "--method random-ws cannot search --space proxyless"),
    (["--nodes", "3"], "a chain of layers without nodes"),
    (["--ops", "none,sep_conv_3x3"], "not blocks of --space proxyless"),
    (["--ops", "none"], "at least one MBConv block"),
])
def test_bad_chain_settings_get_one_line_and_write_nothing(tmp_path, capsys, args, message):
    out = tmp_path / "run"
    assert search_main([*TINY, *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not out.exists()


def test_train_final_refuses_a_depth_and_other_protocols(tmp_path, capsys):
    base = ["--space", "proxyless", "--cell", "proxyless_mobile", "--dataset", "digits", "--epochs", "0",
            "--out", str(tmp_path / "t")]
    assert train_main([*base, "--layers", "3"]) == 2
    assert "depth is its genotype's" in capsys.readouterr().err
    assert train_main([*base, "--protocol", "cifar"]) == 2
    assert "--space proxyless does not train under --protocol cifar" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()


def test_the_space_is_registered_with_its_blocks():
    builder = SEARCH_SPACES.get("proxyless")
    assert list(builder.ops) == list(CHAIN_PRIMITIVES)
    model = builder(C=4, num_classes=3, layers=1, steps=1, in_channels=1)
    assert model.cell_types() == ("conv",) and model.alphas_conv.shape == (6, 6)  # one layer per stage
