"""Never lose a run: a search killed at any moment and run again ends bit-identical."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from darts_nas.checkpoint import load_checkpoint
from darts_nas.cli import search_main
from darts_nas.tracking import read_jsonl

ROOT = Path(__file__).resolve().parent.parent
ARGS = ["--dataset", "digits", "--init-channels", "4", "--layers", "3", "--nodes", "2", "--batch-size", "32",
        "--steps-per-epoch", "4", "--epochs", "3", "--quiet", "--no-tensorboard"]
TIMING = {"epoch_time", "elapsed"}


def comparable(out: Path):
    metrics = [{k: v for k, v in m.items() if k not in TIMING} for m in read_jsonl(out / "metrics.jsonl")]
    state = load_checkpoint(out / "checkpoint.pt")
    return metrics, read_jsonl(out / "history.jsonl"), (out / "genotype.json").read_text(), state["model"]


def assert_same_run(a: Path, b: Path) -> None:
    metrics_a, history_a, genotype_a, model_a = comparable(a)
    metrics_b, history_b, genotype_b, model_b = comparable(b)
    assert metrics_a == metrics_b
    assert history_a == history_b
    assert genotype_a == genotype_b
    assert model_a.keys() == model_b.keys()
    for key in model_a:
        assert torch.equal(model_a[key], model_b[key]), key


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "run"
    # One thread like every run here: the thread count changes float reduction order.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert search_main([*ARGS, "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    return out


def start(out: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(ROOT / "train_search.py"), *ARGS, "--out", str(out)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def kill_when(process: subprocess.Popen, condition, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline, "the run never reached the kill point"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()


def epochs_done(out: Path) -> int:
    path = out / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.mark.parametrize("kill_point", ["first-epoch", "after-epoch-1", "after-epoch-2"])
def test_sigkill_then_rerun_is_bit_identical(tmp_path, reference, kill_point):
    out = tmp_path / "run"
    process = start(out)
    if kill_point == "first-epoch":
        kill_when(process, lambda: (out / "config.json").exists())
    else:
        n = int(kill_point[-1])
        kill_when(process, lambda: epochs_done(out) >= n)
    assert not (out / "summary.json").exists()
    # Running the same command again continues from the newest valid checkpoint.
    assert search_main([*ARGS, "--out", str(out)]) == 0
    assert_same_run(reference, out)


def test_corrupt_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, reference, capsys):
    out = tmp_path / "run"
    process = start(out)
    kill_when(process, lambda: epochs_done(out) >= 2 and (out / "checkpoint-epoch0002.pt").exists())
    newest = sorted(out.glob("checkpoint-epoch*.pt"))[-1]
    newest.write_bytes(newest.read_bytes()[:100])  # a write torn by the kill
    assert search_main([*ARGS, "--out", str(out)]) == 0
    log = (out / "log.txt").read_text()
    assert "falling back to the previous checkpoint" in log
    assert_same_run(reference, out)


def test_only_the_newest_checkpoints_are_kept(reference):
    assert sorted(p.name for p in reference.glob("checkpoint-epoch*.pt")) == [
        "checkpoint-epoch0002.pt", "checkpoint-epoch0003.pt"]
    assert load_checkpoint(reference / "checkpoint.pt")["epoch"] == 3


def test_resume_with_other_settings_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    process = start(out)
    kill_when(process, lambda: epochs_done(out) >= 1)
    changed = [a if a != "3" else "5" for a in ARGS]  # --layers 3 -> 5 and --epochs 3 -> 5
    assert search_main([*changed, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "other settings" in err and "layers: 3 -> 5" in err and "--overwrite" in err
    assert epochs_done(out) == 1  # nothing lost


def test_checkpoint_holds_every_random_state(reference):
    state = load_checkpoint(reference / "checkpoint.pt")
    assert {"python", "numpy", "torch"} <= set(state["rng"])
    assert set(state["arch_loader"]) == {"passes", "position"}
    for key in ("model", "w_optimizer", "a_optimizer", "scheduler", "config", "arch_eval"):
        assert key in state
    assert json.loads((reference / "summary.json").read_text())["finished"]


TRAIN_ARGS = ["--cell", "darts_v2", "--dataset", "digits", "--init-channels", "4", "--layers", "3",
              "--batch-size", "32", "--steps-per-epoch", "4", "--epochs", "3", "--quiet", "--no-tensorboard"]


def test_killed_retraining_resumes_bit_identical(tmp_path):
    from darts_nas.cli import train_main

    reference = tmp_path / "reference"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert train_main([*TRAIN_ARGS, "--out", str(reference)]) == 0
    finally:
        torch.set_num_threads(threads)

    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, str(ROOT / "train_final.py"), *TRAIN_ARGS, "--out", str(out)],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    kill_when(process, lambda: (out / "checkpoint-epoch0001.pt").exists())
    assert not (out / "metrics.json").exists()
    assert train_main([*TRAIN_ARGS, "--out", str(out)]) == 0  # drop-path, cutout and aux loss included

    def strip(path):
        return [{k: v for k, v in m.items() if k not in TIMING | {"images_per_s"}} for m in read_jsonl(path)]

    assert strip(reference / "metrics.jsonl") == strip(out / "metrics.jsonl")
    a, b = load_checkpoint(reference / "checkpoint.pt")["model"], load_checkpoint(out / "checkpoint.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    summary_a = json.loads((reference / "metrics.json").read_text())
    summary_b = json.loads((out / "metrics.json").read_text())
    assert summary_a["final_test_acc"] == summary_b["final_test_acc"]
    assert summary_a["best_test_acc"] == summary_b["best_test_acc"]
