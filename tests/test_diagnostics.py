"""Collapse diagnostics: the Hessian's dominant eigenvalue (exact and Lanczos), RobustDARTS's ES
rule, and the per-epoch statistics a search records."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from darts_nas.cli import search_main
from darts_nas.config import SearchConfig
from darts_nas.diagnostics import (SKIP_CAP, collapse_warnings, dominant_eigenvalue, es_ratio, es_rule,
                                   flat_hessian, lanczos_top)
from darts_nas.genotype import Genotype
from darts_nas.methods.gdas import Gdas
from darts_nas.supernet import Supernet
from darts_nas.tracking import read_jsonl

OPS = ("none", "max_pool_3x3", "skip_connect", "sep_conv_3x3")


def small_supernet(method=None, dtype=torch.float64, layers=3):
    torch.manual_seed(0)
    model = Supernet(C=4, num_classes=3, layers=layers, steps=2, in_channels=1, primitives=OPS,
                     method=method).to(dtype)
    with torch.no_grad():
        for a in model.arch_parameters():
            a.normal_(0, 0.5)  # away from uniform, so the Hessian has some structure
    return model


def batches(n=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(6, 1, 8, 8, generator=g, dtype=dtype), torch.randint(0, 3, (6,), generator=g))
            for _ in range(n)]


def test_the_exact_hessian_matches_finite_differences_of_the_gradient():
    model = small_supernet()
    data = batches()
    params = model.arch_parameters()
    n = sum(p.numel() for p in params)
    assert n == 2 * 5 * len(OPS)

    def loss_fn():
        return F.cross_entropy(model(data[0][0]), data[0][1])

    model.train()
    h = flat_hessian(loss_fn, params, weight_decay=1e-3)
    assert torch.allclose(h, h.T)

    def grad_at(flat):
        offset = 0
        with torch.no_grad():
            for p in params:
                p.copy_(flat[offset:offset + p.numel()].view_as(p))
                offset += p.numel()
        g = torch.autograd.grad(loss_fn(), params)
        return torch.cat([x.reshape(-1) for x in g])

    base = torch.cat([p.detach().reshape(-1) for p in params]).clone()
    eps = 1e-5
    for i in (0, 7, n - 1):
        step = torch.zeros(n, dtype=base.dtype)
        step[i] = eps
        column = (grad_at(base + step) - grad_at(base - step)) / (2 * eps)
        column[i] += 1e-3  # the weight decay on the diagonal
        assert torch.allclose(h[:, i], column, atol=1e-6), (i, (h[:, i] - column).abs().max())
    grad_at(base)


@pytest.mark.parametrize("layers", [3, 2])  # with 2 cells both reduce: the normal alphas are unused
def test_lanczos_finds_the_exact_dominant_eigenvalue_of_a_small_supernet(layers):
    model = small_supernet(layers=layers)
    data = batches(2)
    exact = dominant_eigenvalue(model, data, weight_decay=1e-3, exact_limit=10_000)
    iterative = dominant_eigenvalue(model, data, weight_decay=1e-3, exact_limit=0, steps=40)
    assert exact["how"] == "exact" and iterative["how"].startswith("lanczos")
    assert iterative["value"] == pytest.approx(exact["value"], rel=1e-6)


def test_the_eigenvalue_of_a_known_quadratic():
    q, _ = torch.linalg.qr(torch.randn(20, 20, generator=torch.Generator().manual_seed(3), dtype=torch.float64))
    eigen = torch.linspace(-3.0, 2.5, 20, dtype=torch.float64)
    a = q @ torch.diag(eigen) @ q.T
    x = torch.randn(20, dtype=torch.float64, requires_grad=True)
    h = flat_hessian(lambda: 0.5 * x @ a @ x, [x])
    assert torch.allclose(h, (a + a.T) / 2)
    # the largest eigenvalue (2.5), not the largest in magnitude (-3)
    assert lanczos_top(lambda v: a @ v, 20, steps=20) == pytest.approx(2.5, rel=1e-9)


def test_computing_the_eigenvalue_changes_nothing_in_the_run():
    method = Gdas(SearchConfig(method="gdas"))
    model = small_supernet(method)
    model.train()
    model(batches()[0][0])  # a sampled pass: running statistics and a draw
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    dominant_eigenvalue(model, batches(), exact_limit=0, steps=5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(rng, torch.get_rng_state()) and method.draws == 1 and model.training


def test_the_es_rule_fires_at_the_right_measurement():
    assert es_rule([1.0] * 20) is None
    assert es_rule([1.0, 1.1, 0.9, 1.05, 1.0, 0.95, 1.1, 1.0, 1.05, 1.0, 1.1]) is None  # noise, no rise
    # local averages of 5 compared 4 apart: [1]*9 then 2s -> 1.2 at index 9, 1.4 at index 10
    assert es_rule([1.0] * 9 + [2.0] * 5) == 10
    assert es_ratio([1.0] * 9 + [2.0] * 2) == pytest.approx(1.4)
    assert es_ratio([1.0] * 8) is None  # fewer than window + delta measurements
    assert es_rule([1.0] * 9 + [2.0] * 5, ratio=1.5) == 11


def test_collapse_warnings_name_their_threshold_and_source():
    skip3 = Genotype(normal=(("skip_connect", 0), ("skip_connect", 1), ("skip_connect", 0), ("sep_conv_3x3", 2)),
                     normal_concat=(2, 3), reduce=(("max_pool_3x3", 0), ("max_pool_3x3", 1),
                                                   ("max_pool_3x3", 0), ("max_pool_3x3", 2)), reduce_concat=(2, 3))
    (sign,) = collapse_warnings([], skip3)
    assert "3 skip connections" in sign and f"caps it at {SKIP_CAP}" in sign and "P-DARTS" in sign
    (sign,) = collapse_warnings([1.0] * 9 + [2.0] * 2, Genotype(normal=skip3.reduce, normal_concat=(2, 3),
                                                                reduce=skip3.reduce, reduce_concat=(2, 3)))
    assert "rose 1.40x" in sign and "DARTS-ES" in sign


def test_a_search_records_the_diagnostics_every_epoch(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    args = ["--dataset", "digits", "--init-channels", "4", "--layers", "3", "--nodes", "2", "--batch-size", "16",
            "--steps-per-epoch", "2", "--epochs", "3", "--quiet", "--hessian-every", "2", "--ops",
            ",".join(OPS), "--out", str(out)]
    assert search_main(args) == 0
    records = read_jsonl(out / "metrics.jsonl")
    for r in records:
        assert 0 <= r["parameter_free_normal"] <= 1 and r["entropy_reduce"] > 0 and r["normal_skip_connections"] >= 0
    # every 2 epochs and after the last: epochs 2 and 3; 2 x 5 x 4 = 40 parameters: exact
    assert ["hessian_eigenvalue" in r for r in records] == [False, True, True]
    assert records[1]["hessian_method"] == "exact"
    log = (out / "log.txt").read_text()
    assert log.count("collapse signs: parameter-free share normal") == 3 and "Hessian eigenvalue" in log
    events = EventAccumulator(str(out)).Reload()
    assert [e.step for e in events.Scalars("diagnostics/hessian_eigenvalue")] == [2, 3]
    assert json.loads((out / "config.json").read_text())["config"]["hessian_every"] == 2


def test_es_stop_points_back_delta_measurements_from_the_start_epoch_on():
    from darts_nas.diagnostics import es_stop

    values = [1.0] * 9 + [2.0] * 2
    epochs = [2 * (i + 1) for i in range(len(values))]  # measured every 2 epochs
    assert es_stop(values, epochs) == (epochs[-1 - 4], pytest.approx(1.4))
    assert es_stop(values, epochs, start_epoch=epochs[-1 - 4] + 1) is None  # too early to stop
    assert es_stop([1.0] * 11, epochs) is None


def test_early_stop_es_returns_the_genotype_of_the_epoch_it_points_back_to(tmp_path, monkeypatch):
    import darts_nas.search as search_module

    rising = iter([1.0, 1.0, 1.0, 3.0, 3.0, 3.0, 3.0, 3.0])
    monkeypatch.setattr(search_module, "dominant_eigenvalue",
                        lambda *a, **k: {"value": next(rising), "how": "fake", "parameters": 0})
    out = tmp_path / "run"
    args = ["--dataset", "digits", "--init-channels", "4", "--layers", "3", "--nodes", "2", "--batch-size", "16",
            "--steps-per-epoch", "2", "--epochs", "8", "--quiet", "--no-tensorboard", "--hessian-every", "1",
            "--early-stop", "es", "--es-start-epoch", "1", "--es-window", "2", "--es-delta", "2", "--out", str(out)]
    assert search_main(args) == 0
    # local averages of 2, 2 apart: after epoch 4, (1 + 3) / 2 = 2 against (1 + 1) / 2 = 1: fires, back to epoch 2
    summary = json.loads((out / "summary.json").read_text())
    assert summary["early_stop"] == {"rule": "es", "after_epoch": 4, "genotype_epoch": 2, "ratio": 2.0}
    history = read_jsonl(out / "history.jsonl")
    assert len(history) == 4 and summary["genotype"] == history[1]["genotype"]
    assert json.loads((out / "genotype.json").read_text()) == history[1]["genotype"]
    # a run that stopped before writing its summary stops again at once when rerun, with the same result
    (out / "summary.json").unlink()
    rising = iter([])  # no measurement may be taken again
    assert search_main(args) == 0
    again = json.loads((out / "summary.json").read_text())
    assert again["early_stop"] == summary["early_stop"] and again["genotype"] == summary["genotype"]
    assert len(read_jsonl(out / "history.jsonl")) == 4


@pytest.mark.parametrize("args,message", [
    (["--early-stop", "es"], "--early-stop es watches the Hessian's eigenvalue: add --hessian-every N"),
    (["--hessian-every", "-1"], "--hessian-every must be 0 (never) or a number of epochs"),
])
def test_bad_diagnostics_settings_get_one_line(tmp_path, capsys, args, message):
    out = tmp_path / "run"
    assert search_main(["--dataset", "digits", "--epochs", "2", *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and not out.exists()
