"""Search methods as plug-ins: PC-DARTS and GDAS against their defining identities, presets, and
every method on the one run loop (resume after SIGKILL, records, board)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from darts_nas.architect import Architect
from darts_nas.cli import search_main
from darts_nas.config import METHOD_NAMES, SearchConfig, list_presets, load_preset
from darts_nas.errors import ConfigError
from darts_nas.genotype import PRIMITIVES
from darts_nas.methods import METHODS, node_slices
from darts_nas.methods.gdas import Gdas, gumbel_noise, straight_through
from darts_nas.methods.pc_darts import PartialChannelEdge, PCDarts, channel_shuffle, normalised_betas
from darts_nas.spaces import SEARCH_SPACES
from darts_nas.supernet import MixedOp, Supernet
from darts_nas.checkpoint import load_checkpoint
from darts_nas.tracking import read_jsonl

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--dataset", "digits", "--init-channels", "4", "--layers", "3", "--nodes", "2", "--batch-size", "16",
        "--steps-per-epoch", "3", "--epochs", "3", "--quiet", "--no-tensorboard", "--device", "cpu"]


def supernet(method, seed=0, C=8, layers=3, steps=2, primitives=PRIMITIVES):
    torch.manual_seed(seed)
    return Supernet(C=C, num_classes=5, layers=layers, steps=steps, in_channels=3, primitives=primitives,
                    method=method)


def batch(seed=1, n=4, size=8):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g), torch.randint(0, 5, (n,), generator=g)


def test_the_registry_and_the_torch_free_list_of_names_agree():
    assert tuple(METHODS.names()) == METHOD_NAMES
    with pytest.raises(ConfigError, match="unknown search method 'pcdarts'; valid search methods are: darts, pc-darts"):
        METHODS.get("pcdarts")


# ---------------------------------------------------------------------------------------------
# PC-DARTS
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("unrolled", [False, True])
def test_pc_darts_with_k1_and_no_edge_normalisation_is_darts_bit_for_bit(unrolled):
    config = SearchConfig(method="pc-darts", partial_channels=1, edge_normalization=False, unrolled=unrolled)
    darts = supernet(None)
    pc = supernet(PCDarts(config))
    # The same weights and alphas (the edges of PC-DARTS wrap a MixedOp as ``mixed``).
    theirs = darts.state_dict()
    pc.load_state_dict({k: theirs[k.replace(".mixed.", ".")] for k in pc.state_dict()})
    x, y = batch()
    assert torch.equal(pc(x), darts(x))
    grads = []
    for model in (darts, pc):
        w_opt = torch.optim.SGD(model.weights(), lr=0.05, momentum=0.9, weight_decay=3e-4)
        architect = Architect(model, w_opt, unrolled=unrolled)
        g, loss, _ = (architect.unrolled_grad(batch(2), (x, y), 0.05) if unrolled
                      else architect.first_order_grad((x, y)))
        grads.append(g)
    assert len(grads[0]) == len(grads[1]) == 2
    for a, b in zip(*grads):
        assert torch.equal(a, b)


def test_channel_shuffle_is_the_shufflenet_permutation():
    x = torch.arange(8.0).reshape(1, 8, 1, 1).expand(2, 8, 3, 3).contiguous()
    y = channel_shuffle(x, 4)
    # groups of 2 channels: [0 1 | 2 3 | 4 5 | 6 7] -> the i-th channel of every group in turn
    assert y[0, :, 0, 0].tolist() == [0, 2, 4, 6, 1, 3, 5, 7]
    assert channel_shuffle(x.contiguous(memory_format=torch.channels_last), 4).is_contiguous(
        memory_format=torch.channels_last)


@pytest.mark.parametrize("stride", [1, 2])
def test_a_partial_channel_edge_mixes_a_quarter_and_bypasses_the_rest(stride):
    torch.manual_seed(0)
    edge = PartialChannelEdge(8, stride, PRIMITIVES, k=4)
    bns = [m for m in edge.mixed.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(bn.num_features == 2 for bn in bns)  # every op is built for C/K channels
    x = torch.randn(2, 8, 6, 6)
    w = torch.softmax(torch.randn(len(PRIMITIVES)), -1)
    out = edge(x, w, bypass_scale=torch.tensor(0.5))
    size = 6 // stride
    assert out.shape == (2, 8, size, size)
    unshuffled = out.reshape(2, 2, 4, size, size).transpose(1, 2).reshape(2, 8, size, size)
    mixed = edge.mixed(x[:, :2].contiguous(), w)
    rest = x[:, 2:] if stride == 1 else F.max_pool2d(x[:, 2:], 2, 2)
    assert torch.equal(unshuffled[:, :2], mixed)
    assert torch.equal(unshuffled[:, 2:], 0.5 * rest)


def test_edge_normalisation_weighs_each_nodes_edges_by_softmaxed_betas_and_trains_them():
    model = supernet(PCDarts(SearchConfig(method="pc-darts")))
    assert list(model.arch_groups()) == ["alphas_normal", "alphas_reduce", "betas_normal", "betas_reduce"]
    assert model.betas_normal.shape == (5,)  # 2 nodes: 2 + 3 edges
    betas = torch.tensor([0.3, -1.0, 2.0, 0.0, 0.5])
    w = normalised_betas(betas)
    assert torch.allclose(w[:2], torch.softmax(betas[:2], 0)) and torch.allclose(w[2:], torch.softmax(betas[2:], 0))
    assert [s.stop for s in node_slices(14)] == [2, 5, 9, 14]
    x, y = batch()
    grads = torch.autograd.grad(F.cross_entropy(model(x), y), model.arch_parameters())
    assert all(bool((g != 0).any()) for g in grads)


def test_the_pc_darts_genotype_ranks_edges_by_beta_weighted_op_weights():
    model = supernet(PCDarts(SearchConfig(method="pc-darts")), steps=2)
    sep = PRIMITIVES.index("sep_conv_3x3")
    with torch.no_grad():
        for a in model.arch_parameters():
            a.zero_()
        # Node 3 (edges 2-4 from inputs 0, 1, 2): input 2's edge has by far the strongest op ...
        model.alphas_normal[4, sep] = 4.0
        model.alphas_normal[2, sep] = 1.0
        model.alphas_normal[3, sep] = 1.0
    darts_pick = {j for _, j in model.genotype().normal[2:]}
    assert 2 in darts_pick
    with torch.no_grad():  # ... but its beta is tiny: edge normalisation ranks it last
        model.betas_normal[4] = -20.0
    genotype = model.genotype()
    assert {j for _, j in genotype.normal[2:]} == {0, 1}
    assert all(op == "sep_conv_3x3" for op, _ in genotype.normal[2:])  # betas never change an edge's op


def test_partial_channels_must_divide_the_channels():
    with pytest.raises(ConfigError, match=r"--partial-channels 3 does not divide the 16 channels .*: choose one of "
                                          r"1, 2, 4, 8, 16"):
        PCDarts.check(SearchConfig(method="pc-darts", partial_channels=3))
    PCDarts.check(SearchConfig(method="pc-darts", partial_channels=16, unrolled=True))


# ---------------------------------------------------------------------------------------------
# GDAS
# ---------------------------------------------------------------------------------------------

def test_a_gdas_edge_outputs_exactly_the_sampled_ops_output_and_computes_no_other():
    torch.manual_seed(0)
    edge = MixedOp(4, 1, PRIMITIVES)
    x = torch.randn(2, 4, 6, 6)
    alphas = torch.randn(1, len(PRIMITIVES), requires_grad=True)
    calls = set()  # positions of the ops any of whose modules ran
    for pos, op in enumerate(edge.ops):
        for module in op.modules():
            module.register_forward_hook(lambda module, inputs, output, pos=pos: calls.add(pos))
    seen = set()
    for draw in range(40):
        weights, active = straight_through(alphas, gumbel_noise((1, len(PRIMITIVES)), 3, draw), tau=1.0)
        assert sorted(weights[0].tolist()) == [0.0] * (len(PRIMITIVES) - 1) + [1.0]
        k = active[0]
        seen.add(k)
        calls.clear()
        with torch.no_grad():  # the plain modules (hooks do not see the CPU's lean blocks)
            out = edge(x, weights[0], k)
        if PRIMITIVES[k] == "none":
            assert calls == set() and torch.equal(out, torch.zeros_like(x))
            continue
        op = edge.ops[edge.op_index.index(k)]
        assert calls == {edge.op_index.index(k)}  # only the sampled op ran
        with torch.no_grad():
            assert torch.equal(out, op(x))  # exactly its output: the weight is exactly 1
    assert len(seen) >= 5  # the draws do vary


def test_gdas_gradients_reach_every_logit_of_an_edge():
    torch.manual_seed(0)
    edge = MixedOp(4, 1, PRIMITIVES)
    x = torch.randn(2, 4, 6, 6)
    alphas = torch.randn(1, len(PRIMITIVES), requires_grad=True)
    draw = next(d for d in range(100) if PRIMITIVES[straight_through(
        alphas, gumbel_noise((1, len(PRIMITIVES)), 0, d), 5.0)[1][0]] != "none")
    weights, active = straight_through(alphas, gumbel_noise((1, len(PRIMITIVES)), 0, draw), 5.0)
    (grad,) = torch.autograd.grad((edge(x, weights[0], active[0]) * torch.randn(2, 4, 6, 6)).sum(), alphas)
    assert bool((grad != 0).all()), grad


def test_gdas_samples_are_a_pure_function_of_the_seed_and_the_step():
    config = SearchConfig(method="gdas", seed=7)
    model = supernet(Gdas(config))
    model.train()

    def plans(method, n):
        model.method = method
        out = []
        for _ in range(n):
            out.append([method.edge_plan(model, t).active for t in model.cell_types()])
        return out

    first = Gdas(config)
    seq = plans(first, 6)
    assert seq == plans(Gdas(config), 6)  # same seed: same samples
    assert seq != plans(Gdas(SearchConfig(method="gdas", seed=8)), 6)
    assert len({str(p) for p in seq}) > 1  # each step draws anew
    resumed = Gdas(config)
    resumed.load_state_dict(json.loads(json.dumps(plans_state(seq, config))))
    assert plans(resumed, 3) == seq[3:]  # a resumed method continues the same sequence
    model.eval()  # evaluation draws nothing: the most likely op of each edge
    method = Gdas(config)
    model.method = method
    plan = method.edge_plan(model, "normal")
    assert plan.active == model.alphas_normal.argmax(-1).tolist() and method.draws == 0


def plans_state(seq, config):
    method = Gdas(config)
    method.draws = 3
    return method.state_dict()


def test_gdas_temperature_falls_linearly_from_tau_max_to_tau_min():
    method = Gdas(SearchConfig(method="gdas", tau_max=10, tau_min=0.1, epochs=5))
    taus = []
    for epoch in range(5):
        method.start_epoch(epoch, 5)
        taus.append(method.tau)
    assert taus == pytest.approx([10, 7.525, 5.05, 2.575, 0.1])
    assert method.scalars() == {"tau": pytest.approx(0.1)}


@pytest.mark.parametrize("settings,message", [
    ({"tau_min": 0.0}, "--tau-min must be positive"),
    ({"tau_min": 5.0, "tau_max": 1.0}, "--tau-min 5.0 is above --tau-max 1.0"),
    ({"unrolled": True}, "--method gdas has no second-order architecture step: drop --unrolled"),
])
def test_gdas_refuses_bad_settings(settings, message):
    with pytest.raises(ConfigError, match=message):
        Gdas.check(SearchConfig(method="gdas", **settings))


# ---------------------------------------------------------------------------------------------
# Presets and the command line
# ---------------------------------------------------------------------------------------------

def test_presets_hold_the_published_protocols():
    assert list_presets() == ["beta-darts", "darts-1st", "darts-2nd", "darts-minus", "drnas", "drnas-nb201",
                              "fair-darts", "gdas", "pc-darts", "pdarts", "random-ws", "robust-darts", "sdarts-adv", "sdarts-rs"]
    pc = load_preset("PC_DARTS")["settings"]
    assert (pc["batch_size"], pc["learning_rate"], pc["arch_learning_rate"], pc["arch_warmup_epochs"]) == (
        256, 0.1, 6e-4, 15)
    for name in list_presets():
        preset = load_preset(name)
        config = SearchConfig(**{**preset["settings"], "preset": name})
        assert config.method == preset["method"] and preset["published"]["source"]
        METHODS.get(config.method).check(config)


def test_a_flag_wins_over_the_preset_and_config_json_records_both(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--preset", "pc-darts", "--dataset", "digits", "--epochs", "2", "--arch-warmup-epochs", "1",
            "--batch-size", "16", "--init-channels", "4", "--layers", "3", "--nodes", "2", "--steps-per-epoch", "2",
            "--quiet", "--no-tensorboard", "--out", str(out)]
    assert search_main(args) == 0
    saved = json.loads((out / "config.json").read_text())["config"]
    assert saved["preset"] == "pc-darts" and saved["method"] == "pc-darts"
    assert saved["learning_rate"] == 0.1 and saved["arch_learning_rate"] == 6e-4  # from the preset
    assert saved["batch_size"] == 16 and saved["arch_warmup_epochs"] == 1  # from the command line
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "pc-darts"
    log = (out / "log.txt").read_text()
    assert "PC-DARTS search, first order, --partial-channels 4, --edge-normalization True, on digits" in log
    metrics = read_jsonl(out / "metrics.jsonl")
    assert metrics[0]["arch_acc"] != metrics[0]["arch_acc"]  # NaN: no architecture step in the warm-up
    assert metrics[1]["arch_acc"] == metrics[1]["arch_acc"]
    history = read_jsonl(out / "history.jsonl")
    assert set(history[-1]["arch_views"]) == {"betas_normal", "betas_reduce"}
    assert sum(history[-1]["arch_views"]["betas_normal"][:2]) == pytest.approx(1.0)
    # The warm-up epoch left the alphas alone: epoch 1's history equals their initial softmax.
    state = load_checkpoint(out / "checkpoint-epoch0001.pt")
    assert torch.allclose(torch.tensor(history[0]["alphas"]["normal"]),
                          torch.softmax(state["model"]["alphas_normal"], -1))


@pytest.mark.parametrize("args,message", [
    (["--method", "nope"], "unknown search method 'nope'"),
    (["--preset", "nope"], "unknown preset 'nope'; valid presets are: beta-darts, darts-1st, darts-2nd"),
    (["--method", "gdas", "--unrolled"], "--method gdas has no second-order architecture step"),
    (["--method", "gdas", "--tau-min", "2", "--tau-max", "1"], "--tau-min 2.0 is above --tau-max 1.0"),
    (["--method", "pc-darts", "--partial-channels", "3"], "--partial-channels 3 does not divide the 4 channels"),
    (["--arch-warmup-epochs", "3"], "--arch-warmup-epochs 3 leaves no epoch of architecture updates"),
])
def test_bad_method_settings_get_one_line_and_write_nothing(tmp_path, capsys, args, message):
    out = tmp_path / "run"
    assert search_main([*TINY, *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not out.exists()


def test_preset_list_describes_every_preset(capsys):
    assert search_main(["--preset", "list"]) == 0
    text = capsys.readouterr().out
    for name in list_presets():
        assert f"{name} (--method " in text
    assert "2.57 +- 0.07% test error on cifar10" in text


# ---------------------------------------------------------------------------------------------
# Every method on the one run loop: exact resume after SIGKILL, board, old checkpoints
# ---------------------------------------------------------------------------------------------

def comparable(out: Path):
    metrics = [{k: v for k, v in m.items() if k not in {"epoch_time", "elapsed"}}
               for m in read_jsonl(out / "metrics.jsonl")]
    state = load_checkpoint(out / "checkpoint.pt")
    return json.dumps(metrics), read_jsonl(out / "history.jsonl"), (out / "genotype.json").read_text(), state


def assert_same_run(a: Path, b: Path) -> None:
    ma, ha, ga, sa = comparable(a)
    mb, hb, gb, sb = comparable(b)
    assert (ma, ha, ga) == (mb, hb, gb)
    assert sa["method"] == sb["method"]
    for key in sa["model"]:
        assert torch.equal(sa["model"][key], sb["model"][key]), key


def kill_inside_epoch_2(args: list[str], out: Path) -> None:
    """Run train_search.py with ``args`` (which must checkpoint every step) into ``out`` and SIGKILL
    it after its first checkpoint inside epoch 2 (the first epoch with architecture steps)."""
    import time

    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, str(ROOT / "train_search.py"), *args, "--out", str(out)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not list(out.glob("checkpoint-epoch0001-step*.pt")):
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (out / "summary.json").exists()


@pytest.mark.parametrize("method", ["pc-darts", "gdas", "darts-minus", "beta-darts", "sdarts-rs", "sdarts-adv",
                                    "drnas", "fair-darts"])
def test_every_method_resumes_bit_identical_after_sigkill_inside_an_epoch(tmp_path, method):
    args = [*TINY, "--method", method, "--checkpoint-every", "1", "--arch-warmup-epochs", "1"]
    reference = tmp_path / "reference"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert search_main([*args, "--out", str(reference)]) == 0
    finally:
        torch.set_num_threads(threads)
    out = tmp_path / "run"
    kill_inside_epoch_2(args, out)
    assert search_main([*args, "--out", str(out)]) == 0
    assert_same_run(reference, out)
    if method == "gdas":
        state = load_checkpoint(out / "checkpoint.pt")
        assert state["method"]["draws"] == 3 + 2 * 3 * 2 and state["method"]["tau"] == pytest.approx(0.1)


def test_the_board_shows_betas_and_the_temperature(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for method, tags in (("pc-darts", {"arch/betas_normal", "arch/betas_reduce"}), ("gdas", {"method/tau"})):
        out = tmp_path / method
        args = [a for a in TINY if a != "--no-tensorboard"]
        assert search_main([*args, "--epochs", "2", "--method", method, "--out", str(out)]) == 0
        events = EventAccumulator(str(out), size_guidance={"images": 0, "scalars": 0}).Reload()
        found = set(events.Tags()["images"]) | set(events.Tags()["scalars"])
        assert tags <= found, found
        if method == "gdas":
            assert [e.value for e in events.Scalars("method/tau")] == pytest.approx([10.0, 0.1])


def test_a_checkpoint_from_before_the_method_plug_ins_still_resumes(tmp_path):
    """Checkpoints and config.json files written before methods existed lack the "method" state
    and the new settings: they resume as the DARTS runs they are, to the same end."""
    args = [*TINY, "--epochs", "2"]
    reference = tmp_path / "reference"
    assert search_main([*args, "--out", str(reference)]) == 0
    old = tmp_path / "old"
    assert search_main([*args, "--epochs", "2", "--out", str(old)]) == 0
    # Make it an interrupted run of the old format: epoch 1's checkpoint, no method state, old settings.
    for name in ("summary.json", "checkpoint-epoch0002.pt"):
        (old / name).unlink()
    state = load_checkpoint(old / "checkpoint-epoch0001.pt")
    del state["method"]
    new_settings = ("preset", "nesterov", "arch_warmup_epochs", "partial_channels", "edge_normalization",
                    "tau_max", "tau_min")
    for key in new_settings:
        del state["config"][key]
    torch.save(state, old / "checkpoint-epoch0001.pt")
    (old / "checkpoint.pt").unlink()
    config = json.loads((old / "config.json").read_text())
    for key in new_settings:
        del config["config"][key]
    (old / "config.json").write_text(json.dumps(config))
    for name in ("metrics.jsonl", "history.jsonl"):
        lines = (old / name).read_text().splitlines()
        (old / name).write_text(lines[0] + "\n")
    assert search_main([*args, "--out", str(old)]) == 0
    assert "resuming" in (old / "log.txt").read_text()
    assert_same_run(reference, old)


def test_every_space_builder_takes_the_method():
    model = SEARCH_SPACES.get("darts")(C=4, num_classes=3, layers=3, steps=2, in_channels=1,
                                       method=Gdas(SearchConfig(method="gdas")))
    assert isinstance(model.method, Gdas)
    model.train()
    model(torch.randn(2, 1, 8, 8))
    assert model.method.draws == 1


# ---------------------------------------------------------------------------------------------
# The robust methods: each is DARTS at coefficient 0
# ---------------------------------------------------------------------------------------------

def darts_and(method, *, strict=True):
    """A DARTS supernet and one of ``method`` with the same weights and alphas."""
    darts = supernet(None)
    other = supernet(method)
    theirs = darts.state_dict()
    mine = {k: theirs[k.replace(".mixed.", ".")] for k in other.state_dict() if k.replace(".mixed.", ".") in theirs}
    missing = other.load_state_dict(mine, strict=False).missing_keys
    assert strict is False or not missing, missing
    return darts, other


def arch_grads(model, unrolled=False, regulariser=None):
    w_opt = torch.optim.SGD(model.weights(), lr=0.05, momentum=0.9, weight_decay=3e-4)
    architect = Architect(model, w_opt, unrolled=unrolled, regulariser=regulariser)
    x, y = batch()
    return architect.unrolled_grad(batch(2), (x, y), 0.05)[0] if unrolled else architect.first_order_grad((x, y))[0]


@pytest.mark.parametrize("name,settings", [
    ("darts-minus", {"skip_beta": 0.0}),
    ("beta-darts", {"beta_decay_scale": 0.0}),
    ("sdarts-rs", {"sdarts_epsilon_min": 0.0, "sdarts_epsilon_max": 0.0}),
    ("sdarts-adv", {"sdarts_epsilon_min": 0.0, "sdarts_epsilon_max": 0.0}),
])
@pytest.mark.parametrize("unrolled", [False, True])
def test_at_coefficient_zero_the_architecture_gradient_is_darts(name, settings, unrolled):
    method = METHODS.get(name)(SearchConfig(method=name, unrolled=unrolled, **settings))
    method.start_epoch(3, 10)
    darts, other = darts_and(method, strict=name != "darts-minus")  # DARTS-'s skips have weights of their own
    mine = arch_grads(other, unrolled, method.arch_regulariser)
    for a, b in zip(arch_grads(darts, unrolled), mine):
        assert torch.equal(a, b)
    # ... and the weight step is DARTS's too
    x, y = batch(3)
    grads = []
    for model in (darts, other):
        with model.method.weight_pass(model, (x, y)):
            loss = F.cross_entropy(model(x), y)
        grads.append(torch.autograd.grad(loss, [p for n, p in model.named_weights() if ".skip." not in n]))
    for a, b in zip(*grads):
        assert torch.equal(a, b)


def test_darts_minus_adds_the_decaying_skip_outside_the_softmax():
    from darts_nas.methods.darts_minus import AuxiliarySkipEdge, skip_beta

    assert [skip_beta("linear", 1.0, e, 50) for e in (0, 25, 49)] == pytest.approx([1.0, 0.5, 0.02])
    assert [skip_beta("cosine", 1.0, e, 4) for e in (0, 2)] == pytest.approx([1.0, 0.5])
    method = METHODS.get("darts-minus")(SearchConfig(method="darts-minus"))
    method.start_epoch(1, 4)
    edge = AuxiliarySkipEdge(4, 1, PRIMITIVES, method)
    x = torch.randn(2, 4, 6, 6)
    w = torch.softmax(torch.randn(len(PRIMITIVES)), -1)
    with torch.no_grad():
        assert torch.allclose(edge(x, w), edge.mixed(x, w) + 0.75 * x)
    darts, model = darts_and(method, strict=False)
    assert model.genotype() == darts.genotype()  # the skip is never part of the genotype


def test_beta_decay_regulariser_is_the_mean_logsumexp_with_its_gradient():
    from darts_nas.methods.beta_darts import beta_decay_loss

    method = METHODS.get("beta-darts")(SearchConfig(method="beta-darts"))
    method.start_epoch(4, 50)
    assert method.weight == 2.0 and method.scalars() == {"beta_decay_weight": 2.0}
    model = supernet(method)
    term = method.arch_regulariser(model)
    lse = torch.cat([torch.logsumexp(model.alphas_normal, -1), torch.logsumexp(model.alphas_reduce, -1)])
    assert torch.allclose(term, 2.0 * lse.mean())
    (g,) = torch.autograd.grad(beta_decay_loss([model.alphas_normal, model.alphas_reduce]), [model.alphas_normal])
    n_edges = 2 * model.alphas_normal.shape[0]
    assert torch.allclose(g, torch.softmax(model.alphas_normal, -1) / n_edges)


def test_sdarts_perturbations_stay_on_the_simplex_and_the_attack_raises_the_loss():
    from darts_nas.methods.sdarts import project_to_simplex

    clean = torch.softmax(torch.randn(5, 8), -1)
    projected = project_to_simplex(clean + torch.empty(5, 8).uniform_(-0.3, 0.3), clean)
    assert torch.allclose(projected.sum(-1), torch.ones(5)) and bool((projected >= 0).all())
    lost = project_to_simplex(torch.full((1, 8), -1.0), clean[:1])  # a row clamped to zeros
    assert lost.tolist()[0] == F.one_hot(clean[0].argmax(), 8).float().tolist()
    for name in ("sdarts-rs", "sdarts-adv"):
        config = SearchConfig(method=name, seed=3)
        method = METHODS.get(name)(config)
        method.start_epoch(5, 10)
        assert method.epsilon == pytest.approx(0.03 + 0.27 * 0.5)
        model = supernet(method)
        x, y = batch(4)
        clean_w = method.clean_weights(model)
        perturbed = method.perturb(model, (x, y))
        for t in model.cell_types():
            assert torch.allclose(perturbed[t].sum(-1), torch.ones(len(perturbed[t])))
        if name == "sdarts-adv":
            model.eval()
            with torch.no_grad():
                attacked, plain = method._loss(model, (x, y), perturbed), method._loss(model, (x, y), clean_w)
            assert attacked >= plain
            model.train()
        # the weight pass trains on exactly these weights, and leaves the plan alone afterwards
        with method.weight_pass(model, (x, y)):
            assert method._perturbed is not None
        assert method._perturbed is None
        again = METHODS.get(name)(config)
        again.start_epoch(5, 10)
        again.load_state_dict(json.loads(json.dumps({**method.state_dict(), "draws": 0})))
        model.method = again
        assert torch.equal(again.perturb(model, (x, y))["normal"], perturbed["normal"])  # a pure function of the draw


def test_drnas_samples_lie_on_the_simplex_and_follow_the_expected_loss():
    from darts_nas.methods.drnas import concentration

    torch.manual_seed(0)
    alphas = torch.tensor([[0.3, -0.5, 1.2, 0.0]], requires_grad=True)
    cost = torch.tensor([1.0, -2.0, 0.5, 3.0])
    samples = torch.distributions.Dirichlet(concentration(alphas).expand(20000, 4)).rsample()
    assert torch.allclose(samples.sum(-1), torch.ones(20000)) and bool((samples >= 0).all())
    (mc,) = torch.autograd.grad((samples @ cost).mean(), alphas)

    def expected(a):  # E[theta . cost] = (beta / sum beta) . cost
        beta = concentration(a)
        return float((beta / beta.sum()) @ cost)

    fd = torch.zeros(4)
    for k in range(4):
        step = torch.zeros(1, 4)
        step[0, k] = 1e-3
        fd[k] = (expected(alphas.detach() + step) - expected(alphas.detach() - step)) / 2e-3
    assert torch.allclose(mc[0], fd, atol=0.05), (mc, fd)
    method = METHODS.get("drnas")(SearchConfig(method="drnas", drnas_regulariser="kl"))
    model = supernet(method)
    with torch.no_grad():
        for a in model.arch_parameters():
            a.zero_()  # beta = 1 everywhere: the anchor itself
    assert float(method.arch_regulariser(model)) == pytest.approx(0.0, abs=1e-6)
    model.eval()
    assert torch.allclose(method.edge_plan(model, "normal").weights, torch.full((5, 8), 1 / 8))


def test_gdas_evaluates_the_most_likely_path_with_batch_statistics_and_keeps_the_running_ones():
    from darts_nas.engine import evaluate

    method = Gdas(SearchConfig(method="gdas"))
    model = supernet(method)
    model.train()
    x, y = batch(5, n=8)
    for _ in range(3):  # sampled training passes move the running statistics
        model(x)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = evaluate(model, [(x, y)], torch.device("cpu"))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing moved
    assert model.training and method.draws == 3  # back in training mode, no draw made
    # the same as the most likely path, normalised with the batch's own statistics
    model.eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.train()
    with torch.no_grad():
        logits = model(x)
    assert result["loss"] == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-6)
