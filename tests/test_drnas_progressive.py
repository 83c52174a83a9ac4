"""DrNAS's progressive schedule (``--drnas-progressive``): the stage plan, partial channels K=6
then 4, the pruning to 4 ops per edge, the alphas and Adam state carried into stage 2, the
learning-rate schedule the authors' code runs, and resume across the transition."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from darts_nas.accel import Speed
from darts_nas.checkpoint import load_checkpoint
from darts_nas.cli import search_main
from darts_nas.config import SearchConfig
from darts_nas.edge_ops import top_k_columns
from darts_nas.errors import ConfigError
from darts_nas.methods.base import SearchParts, draw_generator
from darts_nas.methods.drnas import PROGRESSIONS, DrNAS, kept_columns
from darts_nas.methods.net2wider import widened, widening_maps
from darts_nas.methods.pc_darts import PartialChannelEdge
from darts_nas.search import build_search
from darts_nas.tracking import read_jsonl
from test_pdarts import assert_same_run, one_thread  # one thread: the thread count changes float rounding

OPS7 = ("max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3",
        "dil_conv_5x5")
# two stages of 2 epochs (the first of each weights only), C = 12 (K = 6 and 4 divide it)
ARGS = ["--dataset", "digits", "--method", "drnas", "--drnas-progressive", "--ops", ",".join(OPS7),
        "--init-channels", "12", "--layers", "3", "--nodes", "2", "--batch-size", "16", "--train-portion", "0.8",
        "--steps-per-epoch", "2", "--epochs", "2", "--arch-warmup-epochs", "1", "--checkpoint-every", "1",
        "--keep-checkpoints", "30", "--quiet", "--no-tensorboard", "--device", "cpu"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("drnas-progressive") / "run"
    assert one_thread([*ARGS, "--out", str(out)]) == 0
    return out


def tiny_config(**settings) -> SearchConfig:
    return SearchConfig(**{"method": "drnas", "drnas_progressive": True, "init_channels": 12, "layers": 3,
                           "nodes": 2, "primitives": OPS7, **settings})


def build(config: SearchConfig, method: DrNAS, index: int, edge_ops=None) -> SearchParts:
    """Stage ``index`` as the run loop builds it (start_stage before the supernet)."""
    method.start_stage(index, method.stages()[index])
    info = SimpleNamespace(num_classes=3, in_channels=1)
    model, w_optimizer, architect = build_search(config, info, Speed(torch.device("cpu")), method,
                                                 method.stages()[index].layers, edge_ops)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(w_optimizer, T_max=method.stages()[index].cosine_epochs)
    return SearchParts(model, w_optimizer, architect, scheduler)


# ---------------------------------------------------------------------------------------------
# The plan, the edges, the pruning, what is carried
# ---------------------------------------------------------------------------------------------

def edges_of(model) -> list[PartialChannelEdge]:
    return [m for m in model.modules() if isinstance(m, PartialChannelEdge)]


def test_the_plan_is_the_codes_two_stages_and_pruning_keeps_four_of_seven_ops():
    config = SearchConfig(method="drnas", drnas_progressive=True, epochs=25, layers=20, init_channels=36,
                          primitives=OPS7)
    DrNAS.check(config)
    plan = DrNAS(config).stages()  # ks = [6, 4], num_keeps = [7, 4], train_epochs = [25, 25], one cosine of 50
    assert [(s.epochs, s.layers, s.keep, s.settings["partial_channels"], s.cosine_epochs) for s in plan] == [
        (25, 20, 4, 6, 50), (25, 20, None, 4, 50)]
    assert len(DrNAS(SearchConfig(method="drnas")).stages()) == 1  # without the flag: one stage, no partial channels

    config = tiny_config()
    method = DrNAS(config)
    torch.manual_seed(0)
    first = build(config, method, 0)
    edges = [e for cell in first.model.cells for e in cell.edges]
    assert all(isinstance(e, PartialChannelEdge) and e.k == 6 and len(e.mixed.ops) == 7 for e in edges)
    # every op on C/6 of the first cells' 12 channels (sep_conv_3x3's convolutions: 2 channels out)
    assert {p.shape[0] for p in edges[0].mixed.ops[3].parameters()} == {2}
    with torch.no_grad():
        for a in first.model.arch_parameters():
            a.normal_(0, 1)
    table = method.next_edge_ops(first.model, 0, method.stages()[0])
    for t in first.model.cell_types():
        alphas = first.model.arch_group(f"alphas_{t}").detach()
        for ops, row in zip(table[t], alphas):  # the code's prune: topk of the raw alphas, 4 per edge
            strongest = row.topk(4).indices.sort().values.tolist()
            assert ops == tuple(OPS7[k] for k in strongest)
    second = build(config, method, 1, table)
    edges = [e for cell in second.model.cells for e in cell.edges]
    assert all(isinstance(e, PartialChannelEdge) and e.k == 4 and len(e.mixed.ops) == 4 for e in edges)
    assert {p.shape[0] for op in edges[0].mixed.ops for p in op.parameters()} <= {3}  # C/4
    assert second.model.arch_group("alphas_normal").shape == (5, 4)


def test_the_kept_alphas_and_their_adam_state_are_carried_exactly():
    config = tiny_config()
    method = DrNAS(config)
    torch.manual_seed(1)
    first = build(config, method, 0)
    alphas = list(first.model.arch_parameters())
    weights = list(first.model.weights())
    for _ in range(3):  # some Adam and SGD history to carry
        for a in alphas:
            a.grad = torch.randn_like(a)
        first.architect.optimizer.step()
        for w in weights:
            w.grad = torch.randn_like(w)
        first.w_optimizer.step()
    for _ in range(2):
        first.scheduler.step()
    table = method.next_edge_ops(first.model, 0, method.stages()[0])
    second = build(config, method, 1, table)
    method.carry_over(1, first, second)

    grads = {}
    for t in second.model.cell_types():
        old, new = first.model.arch_group(f"alphas_{t}"), second.model.arch_group(f"alphas_{t}")
        cols = kept_columns(first.model, second.model, t)
        assert torch.equal(new.detach(), old.detach().gather(1, cols))
        s_old, s_new = first.architect.optimizer.state[old], second.architect.optimizer.state[new]
        assert torch.equal(s_new["exp_avg"], s_old["exp_avg"].gather(1, cols))
        assert torch.equal(s_new["exp_avg_sq"], s_old["exp_avg_sq"].gather(1, cols))
        assert float(s_new["step"]) == float(s_old["step"]) == 3
        grads[t] = (old, new, torch.randn_like(old), cols)
    # Adam acts per entry: a step on the kept columns is the code's step on its masked full tensor
    for old, new, g, cols in grads.values():
        old.grad, new.grad = g, g.gather(1, cols)
    first.architect.optimizer.step()
    second.architect.optimizer.step()
    for old, new, _, cols in grads.values():
        assert torch.allclose(new.detach(), old.detach().gather(1, cols), rtol=1e-6, atol=0)

    # outside the edges: the same weights, BatchNorm statistics and momentum
    old_named, new_named = dict(first.model.named_parameters()), dict(second.model.named_parameters())
    assert torch.equal(new_named["stem.0.weight"], old_named["stem.0.weight"])
    assert torch.equal(second.w_optimizer.state[new_named["classifier.weight"]]["momentum_buffer"],
                       first.w_optimizer.state[old_named["classifier.weight"]]["momentum_buffer"])
    # the kept ops: stage 1's widened from C/6 to C/4 (net2wider), with their momentum, by maps drawn
    # from the seed and the stage
    generator = draw_generator(config.seed, 1)
    widened_ops = 0
    for old, new in zip(edges_of(first.model), edges_of(second.model)):
        for name, wide in zip(new.mixed.op_names, new.mixed.ops):
            narrow = old.mixed.ops[old.mixed.op_names.index(name)]
            maps = widening_maps(narrow, wide, generator)
            wide_named = dict(wide.named_parameters())
            for pname, p in narrow.named_parameters():
                assert torch.equal(wide_named[pname], widened(p, maps[pname]))
                assert torch.equal(second.w_optimizer.state[wide_named[pname]]["momentum_buffer"],
                                   widened(first.w_optimizer.state[p]["momentum_buffer"], maps[pname]))
                widened_ops += 1
            for bname, b in narrow.named_buffers():
                assert torch.equal(dict(wide.named_buffers())[bname], widened(b, maps[bname]))
    assert widened_ops > 0
    # the schedule: its state carried (epoch 2 of 4), the fresh SGD at the initial learning rate
    assert second.scheduler.last_epoch == 2 and second.scheduler.T_max == 2 * config.epochs
    assert second.w_optimizer.param_groups[0]["lr"] == config.learning_rate


def test_a_masked_renormalised_dirichlet_draw_is_the_kept_concentrations_dirichlet():
    # why stage 2 draws Dir(beta_kept) where the code draws all 7 and masks: the same distribution
    torch.manual_seed(2)
    beta = torch.tensor([0.5, 2.0, 1.0, 3.0, 0.7, 1.5, 4.0])
    kept = torch.tensor([1, 3, 5, 6])
    full = torch.distributions.Dirichlet(beta).sample((40000,))[:, kept]
    masked = full / full.sum(-1, keepdim=True)
    direct = torch.distributions.Dirichlet(beta[kept]).sample((40000,))
    assert torch.allclose(masked.mean(0), direct.mean(0), atol=0.01)
    assert torch.allclose(masked.var(0), direct.var(0), atol=0.003)
    assert torch.allclose(direct.mean(0), beta[kept] / beta[kept].sum(), atol=0.01)


@pytest.mark.parametrize("settings,message", [
    ({"init_channels": 16}, "choose a multiple of 12"),
    ({"primitives": OPS7[:4]}, "offers 4: give more ops"),
    ({"early_stop": "es", "hessian_every": 1}, "--early-stop would stop the progressive DrNAS search"),
])
def test_bad_progressive_settings_are_refused_in_one_line(settings, message):
    with pytest.raises(ConfigError, match=message):
        DrNAS.check(tiny_config(**settings))


def test_the_progressive_schedule_is_the_darts_and_nas_bench_201_spaces():
    with pytest.raises(ConfigError, match="for --space darts and nas-bench-201, not 's1'"):
        DrNAS.check(SearchConfig(method="drnas", drnas_progressive=True, space="s1"))
    with pytest.raises(ConfigError, match="choose a multiple of 4 \\(published: 16\\)"):
        DrNAS.check(SearchConfig(method="drnas", drnas_progressive=True, space="nas-bench-201", init_channels=6))
    with pytest.raises(ConfigError, match="--drnas-widen must be one of net2wider, fresh"):
        DrNAS.check(tiny_config(drnas_widen="copy"))


def test_with_fresh_widening_stage_two_ops_start_afresh():
    config = tiny_config(drnas_widen="fresh")
    method = DrNAS(config)
    torch.manual_seed(3)
    first = build(config, method, 0)
    for w in first.model.weights():
        w.grad = torch.randn_like(w)
    first.w_optimizer.step()
    second = build(config, method, 1, method.next_edge_ops(first.model, 0, method.stages()[0]))
    before = [p.clone() for e in edges_of(second.model) for p in e.parameters()]
    method.carry_over(1, first, second)
    after = [p for e in edges_of(second.model) for p in e.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    assert all(second.w_optimizer.state.get(p, {}) == {} for p in after)


def test_the_nas_bench_201_plan_is_the_codes_and_pruning_keeps_three_ops_by_alpha():
    config = SearchConfig(method="drnas", drnas_progressive=True, space="nas-bench-201", epochs=50)
    DrNAS.check(config)
    plan = DrNAS(config).stages()  # ks = [4, 2], num_keeps = [5, 3], train_epochs = [50, 50], one cosine of 100
    assert [(s.epochs, s.layers, s.keep, s.settings["partial_channels"], s.cosine_epochs) for s in plan] == [
        (50, 15, 3, 4, 100), (50, 15, None, 2, 100)]
    assert PROGRESSIONS["darts"].ks == (6, 4) and PROGRESSIONS["nas-bench-201"].ks == (4, 2)

    config = SearchConfig(method="drnas", drnas_progressive=True, space="nas-bench-201", init_channels=4, layers=3)
    method = DrNAS(config)
    torch.manual_seed(4)
    first = build(config, method, 0)
    ops5 = first.model.primitives
    assert len(ops5) == 5 and all(e.k == 4 and e.mixed.op_names == [o for o in ops5 if o != "none"]
                                  for e in edges_of(first.model))
    with torch.no_grad():
        first.model.alphas_cell.normal_(0, 1)
    table = method.next_edge_ops(first.model, 0, method.stages()[0])
    for ops, row in zip(table["cell"], first.model.alphas_cell.detach()):  # the code's prune: topk of the alphas
        assert len(ops) == 3 and ops == tuple(ops5[k] for k in row.topk(3).indices.sort().values.tolist())
    second = build(config, method, 1, table)
    assert second.model.alphas_cell.shape == (6, 3) and second.model.edge_ops["cell"] == table["cell"]
    assert all(e.k == 2 for e in edges_of(second.model))
    method.carry_over(1, first, second)
    # the derivation: each edge's argmax among its own kept ops, by the carried alphas
    kept = first.model.alphas_cell.detach().gather(1, kept_columns(first.model, second.model, "cell"))
    assert second.model.genotype().ops == tuple(ops[int(r.argmax())] for ops, r in zip(table["cell"], kept))


def test_the_cli_refuses_before_writing_anything(tmp_path, capsys):
    out = tmp_path / "run"
    args = list(ARGS)
    args[args.index("--init-channels") + 1] = "8"
    assert search_main([*args, "--out", str(out)]) == 2
    assert "choose a multiple of 12" in capsys.readouterr().err.strip().splitlines()[-1]
    assert not out.exists()


def test_the_presets_are_the_published_progressive_searches():
    # the repository's file (an editable install elsewhere may serve another checkout's presets)
    preset = json.loads((Path(__file__).resolve().parent.parent / "presets" / "drnas.json").read_text())["settings"]
    DrNAS.check(SearchConfig(**preset))
    assert preset["drnas_progressive"] is True and preset["epochs"] == 25 and preset["init_channels"] == 36
    assert preset["arch_warmup_epochs"] == 10 and len(preset["primitives"]) == 7
    assert preset["drnas_widen"] == "net2wider"
    nb201 = json.loads((Path(__file__).resolve().parent.parent / "presets" / "drnas_nb201.json").read_text())
    config = SearchConfig(**nb201["settings"])
    DrNAS.check(config)  # 201-space/train_search_progressive.py: 50 + 50 epochs, K 4 then 2, C=16, N=5
    assert [(s.epochs, s.settings["partial_channels"], s.keep) for s in DrNAS(config).stages()] == [
        (50, 4, 3), (50, 2, None)]
    assert (config.layers, config.init_channels, config.learning_rate, config.learning_rate_min,
            config.weight_decay, config.arch_learning_rate, config.batch_size) == (15, 16, 0.025, 0.001, 3e-4, 3e-4, 64)


# ---------------------------------------------------------------------------------------------
# On the run loop: records, learning rates, resume across the transition
# ---------------------------------------------------------------------------------------------

def test_a_progressive_search_on_digits_prunes_carries_and_follows_the_codes_learning_rates(reference):
    metrics, history = read_jsonl(reference / "metrics.jsonl"), read_jsonl(reference / "history.jsonl")
    assert [m["stage"] for m in metrics] == [1, 1, 2, 2]
    assert math.isnan(metrics[2]["arch_acc"]) and not math.isnan(metrics[3]["arch_acc"])  # warm-up per stage
    for t in ("normal", "reduce"):
        columns = top_k_columns(history[1]["alphas"][t], [list(OPS7)] * 5, 4)
        assert history[2]["edge_ops"][t] == [[OPS7[c] for c in cols] for cols in columns]
    # one cosine of period 4 (2 + 2), its state loaded over stage 2's fresh SGD: recursive from 0.025
    lr0, lr_min, period = 0.025, 0.001, 4
    lr2 = lr_min + (lr0 - lr_min) * (1 + math.cos(math.pi / period)) / 2
    lr4 = lr_min + (lr0 - lr_min) * (1 + math.cos(3 * math.pi / period)) / (1 + math.cos(2 * math.pi / period))
    assert [m["lr"] for m in metrics] == pytest.approx([lr0, lr2, lr0, lr4], rel=1e-9)
    state = load_checkpoint(reference / "checkpoint.pt")
    assert state["stage"] == 1 and len(state["model"]["alphas_normal"][0]) == 4
    assert state["scheduler"]["T_max"] == 4 and state["scheduler"]["last_epoch"] == 4
    log = (reference / "log.txt").read_text()
    assert "stage 2 of 2: 3 cells, 4 candidate ops per edge" in log and "--drnas-progressive True" in log
    saved = json.loads((reference / "config.json").read_text())["config"]
    assert saved["drnas_progressive"] is True
    genotype = json.loads((reference / "genotype.json").read_text())
    kept = {t: history[2]["edge_ops"][t] for t in ("normal", "reduce")}
    assert all(op in kept["normal"][0] + kept["normal"][1] + sum(kept["normal"][2:], [])
               for op, _ in genotype["normal"])


def truncated_copy(reference, out, checkpoint: str, records: int) -> None:
    shutil.copytree(reference, out)
    for path in out.glob("checkpoint*.pt"):
        if path.name != checkpoint:
            path.unlink()
    (out / "summary.json").unlink()
    for name in ("metrics.jsonl", "history.jsonl"):
        lines = (out / name).read_text().splitlines()
        (out / name).write_text("\n".join(lines[:records]) + "\n")


def test_a_run_stopped_right_after_stage_one_resumes_bit_identical(tmp_path, reference):
    """The newest checkpoint is the end of stage 1: resuming makes the transition (pruning, the
    carried alphas, Adam state, weights and schedule) again from it."""
    out = tmp_path / "run"
    truncated_copy(reference, out, "checkpoint-epoch0002.pt", 2)
    assert load_checkpoint(out / "checkpoint-epoch0002.pt")["stage"] == 0
    assert one_thread([*ARGS, "--out", str(out)]) == 0
    assert "after epoch 2 of 4" in (out / "log.txt").read_text()
    assert_same_run(reference, out)


def test_a_run_stopped_inside_stage_two_resumes_bit_identical(tmp_path, reference):
    out = tmp_path / "run"
    step = sorted(p.name for p in reference.glob("checkpoint-epoch0004-step*.pt"))[0]  # inside stage 2's epoch 2
    truncated_copy(reference, out, step, 3)
    assert load_checkpoint(out / step)["stage"] == 1
    assert one_thread([*ARGS, "--out", str(out)]) == 0
    assert "(stage 2 of 2)" in (out / "log.txt").read_text()
    assert_same_run(reference, out)


NB201_ARGS = ["--dataset", "digits", "--space", "nas-bench-201", "--method", "drnas", "--drnas-progressive",
              "--init-channels", "4", "--layers", "3", "--batch-size", "16", "--train-portion", "0.8",
              "--steps-per-epoch", "2", "--epochs", "2", "--arch-warmup-epochs", "1", "--keep-checkpoints", "30",
              "--quiet", "--no-tensorboard", "--device", "cpu"]


@pytest.fixture(scope="module")
def reference_nb201(tmp_path_factory):
    out = tmp_path_factory.mktemp("drnas-progressive-nb201") / "run"
    assert one_thread([*NB201_ARGS, "--out", str(out)]) == 0
    return out


def test_a_progressive_nas_bench_201_search_on_digits_keeps_three_ops_per_edge(reference_nb201):
    metrics, history = read_jsonl(reference_nb201 / "metrics.jsonl"), read_jsonl(reference_nb201 / "history.jsonl")
    assert [m["stage"] for m in metrics] == [1, 1, 2, 2]
    ops5 = history[1]["primitives"]
    columns = top_k_columns(history[1]["alphas"]["cell"], [ops5] * 6, 3)
    kept = history[2]["edge_ops"]["cell"]
    assert kept == [[ops5[c] for c in cols] for cols in columns]
    arch = json.loads((reference_nb201 / "genotype.json").read_text())["arch"]
    edges = [part.split("~")[0] for node in arch.strip("|").split("|+|") for part in node.split("|")]
    assert all(op in ops for op, ops in zip(edges, kept))  # each edge's argmax among its kept ops
    lr0, lr_min, period = 0.025, 0.001, 4  # the recursive cosine of period 4, restarted over stage 2's SGD
    lr4 = lr_min + (lr0 - lr_min) * (1 + math.cos(3 * math.pi / period)) / (1 + math.cos(2 * math.pi / period))
    assert [m["lr"] for m in metrics][2:] == pytest.approx([lr0, lr4], rel=1e-9)
    log = (reference_nb201 / "log.txt").read_text()
    assert "stage 2 of 2: 3 cells, 3 candidate ops per edge" in log
    assert "K=4 on every op, then the 3 strongest per edge at K=2, widened from stage 1 by net2wider" in log


def test_a_nas_bench_201_run_stopped_right_after_stage_one_resumes_bit_identical(tmp_path, reference_nb201):
    out = tmp_path / "run"
    truncated_copy(reference_nb201, out, "checkpoint-epoch0002.pt", 2)
    assert one_thread([*NB201_ARGS, "--out", str(out)]) == 0
    assert "after epoch 2 of 4" in (out / "log.txt").read_text()
    assert_same_run(reference_nb201, out)


def test_the_progressive_schedule_runs_under_torchrun_with_one_model(tmp_path):
    from test_distributed import finish, torchrun

    args = [a for a in ARGS if a != "--quiet"] + ["--out", str(tmp_path / "run")]
    args[args.index("--checkpoint-every"):args.index("--checkpoint-every") + 2] = []  # single-process only
    stdout = finish(torchrun("train_search.py", args, tmp_path), tmp_path)
    log = (tmp_path / "run" / "log.txt").read_text()
    assert stdout.count("search finished") == 1 and log.count("stage 2 of 2: 3 cells, 4 candidate ops") == 1
    assert "all 2 processes hold the same weights, alphas and BatchNorm statistics" in log
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["stage"] == 1
