"""Never lose a run: a search killed at any moment and run again ends bit-identical."""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import darts_nas.checkpoint as checkpoint_module
import darts_nas.engine as engine_module
from darts_nas.checkpoint import load_checkpoint, numbered_checkpoints, save_checkpoint
from darts_nas.cli import search_main, train_main
from darts_nas.runfiles import LOCK_FILE
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


def start(out: Path, *extra: str, script: str = "train_search.py", args=ARGS, wrapper: Path | None = None,
          env: dict[str, str] | None = None, stdout=subprocess.DEVNULL) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env or {})}
    command = [str(wrapper)] if wrapper else []
    return subprocess.Popen([sys.executable, *command, str(ROOT / script), *args, "--out", str(out), *extra],
                            env=env, stdout=stdout, stderr=subprocess.PIPE)


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


def test_every_checkpoint_unreadable_is_refused_not_restarted(tmp_path, reference, capsys):
    # Starting afresh would silently replace the run's history: only --overwrite may.
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    (out / "summary.json").unlink()  # an unfinished run
    for path in numbered_checkpoints(out):
        path.write_bytes(path.read_bytes()[:100])
    (out / "checkpoint-epoch0001.pt").write_bytes(save_and_read({"format_version": 2, "kind": "search"}))
    metrics = (out / "metrics.jsonl").read_text()
    assert search_main([*ARGS, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "none of the 3 checkpoint(s)" in err and "records no epoch" in err
    assert "--overwrite to start the run afresh" in err
    assert (out / "metrics.jsonl").read_text() == metrics and len(numbered_checkpoints(out)) == 3
    assert search_main([*ARGS, "--out", str(out), "--overwrite"]) == 0  # now it starts afresh
    assert_same_run(reference, out)


def test_a_damaged_config_json_gets_one_line(tmp_path, reference, capsys):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    (out / "summary.json").unlink()  # an unfinished run
    for settings, message in [({"layers": "3"}, "holds a setting this version cannot use"),
                              ("x", "is unreadable")]:
        saved = json.loads((reference / "config.json").read_text())
        saved["config"] = {**saved["config"], **settings} if isinstance(settings, dict) else settings
        (out / "config.json").write_text(json.dumps(saved))
        assert search_main(["--resume", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: --resume ") and "\n" not in err and message in err, err
        assert search_main([*ARGS, "--out", str(out)]) == 2  # the same command: refused, in one line
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and "--overwrite" in err, err


def save_and_read(state: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


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
    # With --overwrite the run that cannot be resumed is replaced.
    assert search_main([*changed, "--epochs", "1", "--out", str(out), "--overwrite"]) == 0
    assert "cannot be resumed with these settings, so the search starts afresh" in (out / "log.txt").read_text()
    assert json.loads((out / "config.json").read_text())["config"]["layers"] == 5
    assert [m["epoch"] for m in read_jsonl(out / "metrics.jsonl")] == [1]


def test_same_command_with_overwrite_resumes_an_unfinished_run(tmp_path, reference):
    # --overwrite replaces a finished run, never an interrupted one with the same settings: the
    # README's quick start has it, and "run the same command again" must still resume.
    out = tmp_path / "run"
    process = start(out, "--overwrite")
    kill_when(process, lambda: (out / "checkpoint-epoch0001.pt").exists())
    assert search_main([*ARGS, "--out", str(out), "--overwrite"]) == 0
    log = (out / "log.txt").read_text()
    assert "--overwrite replaces finished runs only" in log and "resuming" in log
    assert_same_run(reference, out)
    # Finished: now the same command replaces it (log included), with the same result.
    assert search_main([*ARGS, "--out", str(out), "--overwrite"]) == 0
    assert "resuming" not in (out / "log.txt").read_text()
    assert_same_run(reference, out)


def test_checkpoint_holds_every_random_state(reference):
    state = load_checkpoint(reference / "checkpoint.pt")
    assert {"python", "numpy", "torch"} <= set(state["rng"])
    assert set(state["arch_loader"]) == {"passes", "position"}
    for key in ("model", "w_optimizer", "a_optimizer", "scheduler", "config", "arch_eval"):
        assert key in state
    assert json.loads((reference / "summary.json").read_text())["finished"]


TRAIN_ARGS = ["--cell", "darts_v2", "--dataset", "digits", "--init-channels", "4", "--layers", "3",
              "--batch-size", "32", "--steps-per-epoch", "4", "--epochs", "3", "--quiet", "--no-tensorboard"]


@pytest.fixture(scope="module")
def train_reference(tmp_path_factory):
    reference = tmp_path_factory.mktemp("train-reference") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert train_main([*TRAIN_ARGS, "--out", str(reference)]) == 0
    finally:
        torch.set_num_threads(threads)
    return reference


def assert_same_training(reference: Path, out: Path) -> None:
    def strip(path):
        return [{k: v for k, v in m.items() if k not in TIMING | {"images_per_s"}} for m in read_jsonl(path)]

    assert strip(reference / "metrics.jsonl") == strip(out / "metrics.jsonl")
    a, b = load_checkpoint(reference / "checkpoint.pt")["model"], load_checkpoint(out / "checkpoint.pt")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    summary_a = json.loads((reference / "metrics.json").read_text())
    summary_b = json.loads((out / "metrics.json").read_text())
    assert summary_a["final_test_acc"] == summary_b["final_test_acc"]
    assert summary_a["best_test_acc"] == summary_b["best_test_acc"]


def test_killed_retraining_resumes_bit_identical(tmp_path, train_reference):
    out = tmp_path / "run"
    process = start(out, script="train_final.py", args=TRAIN_ARGS)
    kill_when(process, lambda: (out / "checkpoint-epoch0001.pt").exists())
    assert not (out / "metrics.json").exists()
    assert train_main([*TRAIN_ARGS, "--out", str(out)]) == 0  # drop-path, cutout and aux loss included
    assert_same_training(train_reference, out)


# --------------------------------------------------------------------------------------------
# Inside an epoch: checkpoints every N steps, a graceful stop on SIGINT/SIGTERM, --resume
# --------------------------------------------------------------------------------------------


def logged(out: Path, text: str) -> bool:
    path = out / "log.txt"
    return path.exists() and text in path.read_text()


def wait_for_log(process: subprocess.Popen, out: Path, text: str, timeout: float) -> None:
    """Wait until ``text`` appears in ``out``'s log while ``process`` runs."""
    deadline = time.monotonic() + timeout
    while not logged(out, text):
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)


def no_temporaries(out: Path) -> bool:
    return not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


def wait_for_exit(process: subprocess.Popen, timeout: float = 60.0) -> tuple[int, str]:
    _, err = process.communicate(timeout=timeout)
    return process.returncode, err.decode().strip()


def test_sigint_stops_after_the_step_and_resume_flag_continues(tmp_path, reference, capsys):
    out = tmp_path / "run"
    process = start(out, "--report-every", "1", stdout=subprocess.PIPE)
    wait_for_log(process, out, "epoch 1 step 1/4", timeout=120)
    process.send_signal(signal.SIGINT)
    printed, err = (text.decode().strip() for text in process.communicate(timeout=60))
    code = process.returncode
    assert code == 130, err
    assert "\n" not in err and err.startswith("stopped by SIGINT at epoch 1, step ")
    # the stop line shows once on the console (on stderr), and is in log.txt
    assert "stopped by SIGINT" not in printed and err in (out / "log.txt").read_text()
    assert f"train_search.py --resume {out}" in err and "same command" in err
    newest = load_checkpoint(numbered_checkpoints(out)[0])
    assert newest["epoch"] == 0 and 1 <= newest["step"] <= 4
    assert not (out / "summary.json").exists() and no_temporaries(out)
    assert search_main(["--resume", str(out), "--quiet"]) == 0  # the settings come from config.json
    assert_same_run(reference, out)


def test_sigterm_stops_a_retraining_and_resume_flag_continues(tmp_path, train_reference):
    out = tmp_path / "run"
    # Started with --overwrite, which --resume must not apply again (it would clear the run).
    process = start(out, "--report-every", "1", "--overwrite", script="train_final.py", args=TRAIN_ARGS)
    wait_for_log(process, out, "epoch 1 step 2/4", timeout=120)
    process.send_signal(signal.SIGTERM)
    code, err = wait_for_exit(process)
    assert code == 143, err
    assert "\n" not in err and "stopped by SIGTERM at epoch 1" in err and f"train_final.py --resume {out}" in err
    assert load_checkpoint(numbered_checkpoints(out)[0])["step"] >= 2
    assert train_main(["--resume", str(out), "--quiet"]) == 0
    assert_same_training(train_reference, out)


def test_stop_while_comparing_continues_the_comparison(tmp_path, train_reference):
    # --compare trains the cell, writes metrics.json, then trains each compared cell: a stop in
    # the latter must not leave a run that neither the same command nor --resume can continue.
    from darts_nas.cli import comparison_pending

    out = tmp_path / "run"
    args = [a if a != "darts_v2" else "darts_v1" for a in TRAIN_ARGS] + ["--compare", "darts_v2"]
    process = start(out, "--report-every", "1", script="train_final.py", args=args)
    sub = out / "compare-darts_v2"
    wait_for_log(process, sub, "epoch 1 step 2/4", timeout=180)
    process.send_signal(signal.SIGINT)
    code, err = wait_for_exit(process)
    assert code == 130, err
    assert "comparison" not in json.loads((out / "metrics.json").read_text())
    assert comparison_pending(out, json.loads((out / "config.json").read_text())["config"], "metrics.json")
    trained = (out / "metrics.jsonl").read_text()

    assert train_main([*args, "--out", str(out)]) == 0  # the same command
    assert (out / "metrics.jsonl").read_text() == trained  # darts_v1 was not trained again
    assert "continuing its comparison" in (out / "log.txt").read_text()
    summary = json.loads((out / "metrics.json").read_text())
    assert [r["cell"] for r in summary["comparison"]] == ["darts_v1", "darts_v2"]
    assert_same_training(train_reference, sub)  # resumed inside its first epoch, bit-identical


# Runs a script with os.replace slowed down for the checkpoint named in $BLOCK_CHECKPOINT: it
# writes $MARKER and sleeps, so a test can signal the process in the middle of the write.
SLOW_WRITE = """
import os, runpy, sys, time
from pathlib import Path

real_replace = os.replace

def slow_replace(src, dst, *args, **kwargs):
    if os.environ["BLOCK_CHECKPOINT"] in Path(dst).name:
        Path(os.environ["MARKER"]).write_text(str(src))
        time.sleep(60)
    return real_replace(src, dst, *args, **kwargs)

os.replace = slow_replace
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def slow_writer(tmp_path: Path, block: str) -> tuple[Path, dict[str, str], Path]:
    wrapper = tmp_path / "slow_write.py"
    wrapper.write_text(SLOW_WRITE)
    marker = tmp_path / "writing"
    return wrapper, {"BLOCK_CHECKPOINT": block, "MARKER": str(marker)}, marker


def test_sigkill_during_a_checkpoint_write_resumes_inside_the_epoch_bit_identical(tmp_path, reference):
    out = tmp_path / "run"
    wrapper, env, marker = slow_writer(tmp_path, "checkpoint-epoch0001.pt")
    process = start(out, "--checkpoint-every", "2", wrapper=wrapper, env=env)
    kill_when(process, marker.exists)
    assert Path(marker.read_text()).exists()  # the unfinished temporary file
    newest = load_checkpoint(numbered_checkpoints(out)[0])  # the one taken inside epoch 1
    assert (newest["epoch"], newest["step"], newest["format_version"]) == (0, 2, 2)
    assert {"step", "seen", "sums", "elapsed"} <= set(newest["progress"])
    assert search_main([*ARGS, "--out", str(out), "--checkpoint-every", "2"]) == 0
    assert_same_run(reference, out)
    assert no_temporaries(out)


def test_second_signal_while_stopping_exits_at_once(tmp_path):
    out = tmp_path / "run"
    wrapper, env, marker = slow_writer(tmp_path, "-step")  # only the stop's checkpoint is inside an epoch
    process = start(out, "--report-every", "1", wrapper=wrapper, env=env)
    wait_for_log(process, out, "epoch 1 step 1/4", timeout=120)
    process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 120
    while not marker.exists():  # stopping: its checkpoint is being written
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    began = time.monotonic()
    process.send_signal(signal.SIGTERM)
    code, err = wait_for_exit(process)
    assert code == 143 and time.monotonic() - began < 20, err
    assert "\n" not in err and "stopped at once by a second SIGTERM" in err
    assert no_temporaries(out)  # the interrupted write cleaned up after itself
    assert numbered_checkpoints(out) == []


def test_full_disk_during_a_checkpoint_keeps_the_previous_one(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    real_write = os.write

    def write_then_fill_the_disk(fd, data):
        if "checkpoint-epoch0001.pt" in os.readlink(f"/proc/self/fd/{fd}"):
            real_write(fd, bytes(data)[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    if not os.path.exists("/proc/self/fd"):
        pytest.skip("needs /proc to tell which file is written")
    monkeypatch.setattr(checkpoint_module.os, "write", write_then_fill_the_disk)
    assert search_main([*ARGS, "--checkpoint-every", "2", "--out", str(out)]) == 2
    monkeypatch.undo()
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: cannot write ") and "checkpoint-epoch0001.pt" in err
    assert "No space left on device" in err and "free disk space or choose another --out" in err
    assert no_temporaries(out)
    assert [p.name for p in numbered_checkpoints(out)] == ["checkpoint-epoch0001-step000002.pt"]
    previous = load_checkpoint(out / "checkpoint.pt")
    assert (previous["epoch"], previous["step"]) == (0, 2)


class PoisonedF:
    """torch.nn.functional for the engine, whose training loss turns NaN at the n-th step."""

    def __init__(self, at_call: int) -> None:
        self.calls = 0
        self.at_call = at_call

    def __getattr__(self, name):
        return getattr(torch.nn.functional, name)

    def cross_entropy(self, logits, target, **kwargs):
        loss = torch.nn.functional.cross_entropy(logits, target, **kwargs)
        if "reduction" not in kwargs:  # the training step's loss, not evaluate()'s
            self.calls += 1
            if self.calls == self.at_call:
                return loss * float("nan")
        return loss


def test_non_finite_loss_keeps_the_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.setattr(engine_module, "F", PoisonedF(at_call=3))  # epoch 1, step 3
    assert search_main([*ARGS, "--checkpoint-every", "2", "--out", str(out)]) == 2
    monkeypatch.undo()
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "the training loss became nan at epoch 1, step 3" in err
    assert "learning rate too high" in err and "NaNs or infinities in the data" in err
    assert "checkpoint-epoch0001-step000002.pt is kept" in err
    assert f"train_search.py --resume {out} --learning-rate 0.0025" in err
    newest = load_checkpoint(numbered_checkpoints(out)[0])
    assert (newest["epoch"], newest["step"]) == (0, 2)
    assert all(torch.isfinite(t).all() for t in newest["model"].values() if t.is_floating_point())
    assert not (out / "metrics.jsonl").exists() or read_jsonl(out / "metrics.jsonl") == []

    # Refused without --resume (the settings differ); --resume may lower the learning rate.
    assert search_main([*ARGS, "--out", str(out), "--learning-rate", "0.0025"]) == 2
    assert search_main(["--resume", str(out), "--learning-rate", "0.0025", "--quiet"]) == 0
    metrics = read_jsonl(out / "metrics.jsonl")
    cosine = 0.001 + (0.0025 - 0.001) * (1 + torch.cos(torch.tensor(torch.pi / 3, dtype=torch.float64))) / 2
    assert [m["lr"] for m in metrics[:2]] == pytest.approx([0.0025, float(cosine)])  # the schedule restarted
    assert json.loads((out / "config.json").read_text())["config"]["learning_rate"] == 0.0025


@pytest.mark.parametrize("script", ["search", "train"])
def test_weights_poisoned_by_an_epochs_last_step_stop_before_its_records(tmp_path, capsys, monkeypatch, script):
    # The loss of the last step was finite, but its update made the weights infinite.
    import darts_nas.search as search_module
    import darts_nas.train as train_module

    module, name = (search_module, "search_one_epoch") if script == "search" else (train_module, "train_one_epoch")
    real = getattr(module, name)

    def poisoning(model, *args, **kwargs):
        metrics = real(model, *args, **kwargs)
        with torch.no_grad():
            next(model.parameters()).fill_(float("inf"))
        return metrics

    monkeypatch.setattr(module, name, poisoning)
    out = tmp_path / "run"
    main, args = (search_main, ARGS) if script == "search" else (train_main, TRAIN_ARGS)
    assert main([*args, "--checkpoint-every", "2", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "became non-finite at epoch 1, step 4" in err
    assert "checkpoint-epoch0001-step000002.pt is kept" in err and f"--resume {out} --learning-rate" in err
    assert not (out / "metrics.jsonl").exists() or read_jsonl(out / "metrics.jsonl") == []
    assert not (out / "history.jsonl").exists() or read_jsonl(out / "history.jsonl") == []
    assert [p.name for p in numbered_checkpoints(out)] == ["checkpoint-epoch0001-step000002.pt"]


def test_resume_flag_refuses_what_it_cannot_resume(tmp_path, reference, train_reference, capsys):
    def error(main, *argv):
        assert main(list(argv)) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err, err
        return err

    assert "no such run directory" in error(search_main, "--resume", str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    assert "no config.json" in error(search_main, "--resume", str(tmp_path / "empty"))
    assert "finished search" in error(search_main, "--resume", str(reference))
    assert "holds a search, not a training run: resume it with train_search.py --resume" in error(
        train_main, "--resume", str(reference))
    assert "train_final.py --resume" in error(search_main, "--resume", str(train_reference))

    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    shutil.copy(reference / "config.json", unfinished)
    assert "no checkpoint to resume from" in error(search_main, "--resume", str(unfinished))
    shutil.copy(reference / "checkpoint-epoch0002.pt", unfinished)
    err = error(search_main, "--resume", str(unfinished), "--layers", "5", "--seed", "9")
    assert "cannot change --layers (3 -> 5), --seed (2 -> 9)" in err
    assert "--overwrite" in error(search_main, "--resume", str(unfinished), "--overwrite")


def test_a_checkpoint_of_another_model_is_refused(tmp_path, reference, train_reference, capsys):
    out = tmp_path / "run"
    out.mkdir()
    shutil.copy(reference / "config.json", out)
    shutil.copy(train_reference / "checkpoint-epoch0002.pt", out)  # a retraining's, in a search directory
    assert search_main([*ARGS, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "belongs to a train run, not a search run" in err

    state = load_checkpoint(reference / "checkpoint-epoch0002.pt")
    state["model"]["alphas_normal"] = torch.zeros(3, 3)  # another search space's alphas
    (out / "checkpoint-epoch0002.pt").unlink()
    save_checkpoint(out / "checkpoint-epoch0002.pt", {k: v for k, v in state.items() if k != "format_version"})
    assert search_main([*ARGS, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "does not fit this search (" in err and "alphas_normal" in err


def test_a_run_of_the_other_script_is_never_replaced(tmp_path, reference, train_reference, capsys):
    # Its files differ: clearing this script's would leave a directory mixing both runs.
    for main, args, theirs, name in [(train_main, TRAIN_ARGS, reference, "search (train_search.py)"),
                                     (search_main, ARGS, train_reference, "training run (train_final.py)")]:
        out = tmp_path / theirs.parent.name
        shutil.copytree(theirs, out)
        before = sorted((p.name, p.stat().st_size) for p in out.iterdir() if p.name != LOCK_FILE)
        for extra in ([], ["--overwrite"]):
            assert main([*args, "--out", str(out), *extra]) == 2
            err = capsys.readouterr().err.strip()
            assert "\n" not in err and f"{out} holds a {name}: choose another --out" in err
        # Only the lock file is touched (it names the process holding it).
        assert sorted((p.name, p.stat().st_size) for p in out.iterdir() if p.name != LOCK_FILE) == before


def test_checkpoint_intervals_are_validated_and_may_change(tmp_path, capsys):
    assert search_main([*ARGS, "--checkpoint-every", "0", "--out", str(tmp_path / "a")]) == 2
    assert "--checkpoint-every must be at least 1" in capsys.readouterr().err
    assert search_main([*ARGS, "--checkpoint-minutes", "-1", "--out", str(tmp_path / "a")]) == 2
    assert "--checkpoint-minutes must be a positive" in capsys.readouterr().err


def test_checkpoints_every_n_steps_and_every_m_minutes():
    from darts_nas.engine import EpochProgress
    from darts_nas.resume import GracefulStop, StepCheckpoints

    def saved_steps(every_steps, every_minutes, seconds_per_step):
        now, saved = [0.0], []
        checkpoints = StepCheckpoints(every_steps, every_minutes, GracefulStop(),
                                      lambda p: saved.append(p.step) or Path("c.pt"), "x --resume y", print,
                                      clock=lambda: now[0])
        for step in range(1, 11):  # one epoch of 10 steps
            now[0] += seconds_per_step
            checkpoints(EpochProgress(0, step, 10, step * 4, torch.zeros(2), now[0]))
        return saved

    assert saved_steps(4, None, 1.0) == [4, 8]
    assert saved_steps(None, 0.5, 7.0) == [5]  # 35 s; the next would be due at 70 s, at the last step
    assert saved_steps(4, 0.5, 7.0) == [4, 8]  # each checkpoint restarts the timer
    assert saved_steps(None, None, 100.0) == []  # the last step is left to the epoch's own checkpoint


def test_graceful_stop_restores_the_previous_handlers_and_only_in_the_main_thread():
    import threading

    from darts_nas.resume import GracefulStop, StopNow

    before = signal.getsignal(signal.SIGTERM)
    with GracefulStop() as stop:
        assert signal.getsignal(signal.SIGTERM) == stop._handle
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        assert stop.requested and stop.signum == signal.SIGTERM
        with pytest.raises(StopNow) as second:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
        assert second.value.exit_code == 143
    assert signal.getsignal(signal.SIGTERM) == before

    result = []
    thread = threading.Thread(target=lambda: result.append(GracefulStop().__enter__()._previous))
    thread.start()
    thread.join()
    assert result == [{}]  # a thread installs nothing


# --------------------------------------------------------------------------------------------
# A run directory nobody else can break: what resume compares, what is never deleted, the lock
# --------------------------------------------------------------------------------------------


def unfinished_copy(reference: Path, out: Path, *drop: str) -> Path:
    """``reference`` as a run stopped after epoch 2 (its epoch-3 checkpoint and summary gone),
    without the files named in ``drop``."""
    shutil.copytree(reference, out)
    for name in ("summary.json", "metrics.json", "checkpoint-epoch0003.pt", *drop):
        (out / name).unlink(missing_ok=True)
    shutil.copy(out / "checkpoint-epoch0002.pt", out / "checkpoint.pt")
    return out


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def test_a_retraining_never_resumes_on_another_cell(tmp_path, capsys):
    # --cell names a file whose genotype changed (an unfinished search keeps rewriting it): two
    # pooling ops swapped keep every shape, so only the checkpoint's own genotype tells.
    cell = tmp_path / "cell.json"
    shutil.copy(ROOT / "cells" / "darts_v2.json", cell)
    args = [*TRAIN_ARGS[2:], "--cell", str(cell), "--epochs", "1", "--steps-per-epoch", "1"]
    out = tmp_path / "run"
    assert train_main([*args, "--out", str(out)]) == 0
    (out / "metrics.json").unlink()  # as if stopped before its end
    text = cell.read_text()
    assert "max_pool_3x3" in text and "skip_connect" in text
    swapped = text.replace("max_pool_3x3", "@").replace("skip_connect", "max_pool_3x3").replace("@", "skip_connect")
    cell.write_text(swapped)
    checkpoints = sorted(p.name for p in out.iterdir())
    assert train_main([*args, "--out", str(out)]) == 2
    err = one_line_error(capsys)
    assert "checkpoint-epoch0001.pt trained another cell (" in err and "pass that cell to resume" in err
    assert sorted(p.name for p in out.iterdir()) == checkpoints


def test_resume_compares_the_checkpoints_own_settings(tmp_path, reference, capsys):
    out = unfinished_copy(reference, tmp_path / "run")
    saved = json.loads((out / "config.json").read_text())
    saved["config"]["seed"] = 9  # config.json edited to match another seed
    (out / "config.json").write_text(json.dumps(saved))
    assert search_main([*ARGS, "--seed", "9", "--out", str(out)]) == 2
    err = one_line_error(capsys)
    assert "whose checkpoint checkpoint-epoch0002.pt was written with other settings (seed: 2 -> 9)" in err
    assert search_main(["--resume", str(out)]) == 2  # --resume reads the edited config.json: refused all the same
    assert "(seed: 2 -> 9)" in one_line_error(capsys)


def test_a_checkpoint_with_a_missing_key_or_an_impossible_epoch_is_not_resumed(tmp_path, reference, capsys):
    out = unfinished_copy(reference, tmp_path / "run")
    for name in ("checkpoint-epoch0002.pt", "checkpoint.pt"):
        state = load_checkpoint(out / name)
        del state["arch_eval"]
        save_checkpoint(out / name, {k: v for k, v in state.items() if k != "format_version"})
    state = load_checkpoint(reference / "checkpoint-epoch0003.pt")
    state["epoch"] = 99
    save_checkpoint(out / "checkpoint-epoch0099.pt", {k: v for k, v in state.items() if k != "format_version"})
    assert search_main([*ARGS, "--out", str(out)]) == 2
    err = one_line_error(capsys)
    assert "none of the 2 checkpoint(s)" in err and "lacks arch_eval" in err
    log = (out / "log.txt").read_text()
    assert "checkpoint-epoch0099.pt records epoch 99 of a run of 3 epochs; falling back" in log
    assert {p.name for p in numbered_checkpoints(out)} == {"checkpoint-epoch0002.pt", "checkpoint-epoch0099.pt"}


def test_a_changed_data_split_is_refused(tmp_path, capsys):
    from datasets_fixtures import write_image_folder

    data = tmp_path / "images"
    images = write_image_folder(data, classes=("a", "b", "c"), per_class=10)
    args = [*ARGS, "--dataset", "folder", "--data", str(data), "--image-size", "15", "--batch-size", "4",
            "--epochs", "1", "--steps-per-epoch", "1"]
    out = tmp_path / "run"
    assert search_main([*args, "--out", str(out)]) == 0
    (out / "summary.json").unlink()
    images[3].unlink()  # "a corrupt image": deleted, as the data error advises
    assert search_main([*args, "--out", str(out)]) == 2
    err = one_line_error(capsys)
    assert "checkpoint-epoch0001.pt was trained on other data (30 images then, 29 now" in err
    assert (out / "checkpoint-epoch0001.pt").exists()


@pytest.mark.parametrize("left", ["numbered checkpoints", "only checkpoint.pt"])
def test_a_run_without_config_json_resumes_from_its_checkpoints(tmp_path, reference, left):
    out = unfinished_copy(reference, tmp_path / "run", "config.json")
    if left == "only checkpoint.pt":
        for path in numbered_checkpoints(out):
            path.unlink()
    assert search_main([*ARGS, "--out", str(out)]) == 0
    assert "config.json is missing; resuming from" in (out / "log.txt").read_text()
    assert_same_run(reference, out)
    assert json.loads((out / "config.json").read_text())["config"]["seed"] == 2


def test_resume_flag_reads_the_settings_of_a_checkpoint_when_config_json_is_gone(tmp_path, reference):
    out = unfinished_copy(reference, tmp_path / "run", "config.json")
    assert search_main(["--resume", str(out)]) == 0
    assert_same_run(reference, out)


def test_files_no_run_wrote_are_never_deleted(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "genotype.json").write_text("my own genotype\n")
    (out / "metrics.jsonl").write_text("my own metrics\n")
    assert search_main([*ARGS, "--out", str(out)]) == 2
    err = one_line_error(capsys)
    assert "holds metrics.jsonl, genotype.json but no darts-nas run (no config.json)" in err and "--overwrite" in err
    assert (out / "genotype.json").read_text() == "my own genotype\n"
    assert (out / "metrics.jsonl").read_text() == "my own metrics\n"
    (out / "checkpoint.pt").write_bytes(b"my own checkpoint")
    assert search_main([*ARGS, "--out", str(out)]) == 2
    assert "checkpoint.pt is corrupt or not a darts-nas checkpoint" in one_line_error(capsys)
    assert (out / "checkpoint.pt").read_bytes() == b"my own checkpoint"


def test_a_torn_last_record_is_dropped_and_a_damaged_one_refused(tmp_path, reference, capsys):
    out = unfinished_copy(reference, tmp_path / "run")
    for name in ("metrics.jsonl", "history.jsonl"):
        with open(out / name, "a") as f:
            f.write('{"epoch": 3, "train_lo')  # a write cut short by a crash
    assert search_main([*ARGS, "--out", str(out)]) == 0
    assert "dropped the damaged last line 4 of" in (out / "log.txt").read_text()
    assert_same_run(reference, out)

    out = unfinished_copy(reference, tmp_path / "damaged")
    lines = (out / "metrics.jsonl").read_text().splitlines()
    (out / "metrics.jsonl").write_text("\n".join(["garbage", *lines]) + "\n")
    assert search_main([*ARGS, "--out", str(out)]) == 2
    assert f"{out / 'metrics.jsonl'} line 1 is not a JSON record" in one_line_error(capsys)


def test_a_second_run_on_the_same_directory_is_refused_naming_the_first(tmp_path, reference, capsys):
    out = tmp_path / "run"
    first = start(out)
    try:
        wait_for_log(first, out, "DARTS search", timeout=60)
        first.send_signal(signal.SIGSTOP)  # hold it mid-run, lock taken
        assert search_main([*ARGS, "--out", str(out)]) == 2
        err = one_line_error(capsys)
        assert f"{out} is in use by another darts-nas run (process {first.pid})" in err
    finally:
        first.send_signal(signal.SIGCONT)
    assert wait_for_exit(first)[0] == 0
    assert [m["epoch"] for m in read_jsonl(out / "metrics.jsonl")] == [1, 2, 3]  # nothing interleaved
    assert_same_run(reference, out)


def test_run_files_are_never_written_through_links(tmp_path, capsys):
    target = tmp_path / "precious.txt"
    target.write_text("keep me\n")
    out = tmp_path / "run"
    out.mkdir()
    (out / "log.txt").symlink_to(target)
    assert search_main([*ARGS, "--out", str(out)]) == 2
    err = one_line_error(capsys)
    assert f"will not use {out / 'log.txt'} (it is a symbolic link): remove it" in err
    assert target.read_text() == "keep me\n"


@pytest.mark.parametrize("setting,value,message", [
    ("epochs", 2.5, "--epochs must be a whole number, got 2.5"),
    ("seed", 2**70, "--seed must be a whole number from 0 to"),
])
def test_resume_flag_refuses_unusable_settings_in_config_json_in_one_line(tmp_path, reference, capsys, setting,
                                                                           value, message):
    out = unfinished_copy(reference, tmp_path / "run")
    saved = json.loads((out / "config.json").read_text())
    saved["config"][setting] = value
    (out / "config.json").write_text(json.dumps(saved))
    assert search_main(["--resume", str(out)]) == 2
    assert message in one_line_error(capsys)


INTERRUPT_AT_START = """
import os, signal, sys, threading
sys.argv = [sys.argv[1], *sys.argv[2:]]
signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal (a background job inherits SIG_IGN)
threading.Timer(float(os.environ["INTERRUPT_AFTER"]), lambda: os.kill(os.getpid(), signal.SIGINT)).start()
exec(compile(open(sys.argv[0]).read(), sys.argv[0], "exec"), {"__name__": "__main__"})
"""


@pytest.mark.parametrize("after", ["0.05", "1.5"])  # while importing torch, while loading the data or later
def test_ctrl_c_during_start_up_is_one_line(tmp_path, after):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "INTERRUPT_AFTER": after}
    result = subprocess.run([sys.executable, "-c", INTERRUPT_AT_START, str(ROOT / "train_search.py"), *ARGS,
                             "--out", str(tmp_path / "run")], env=env, capture_output=True, text=True, timeout=120)
    err = result.stderr.strip()
    assert result.returncode == 130 and err.startswith("error: ") and "\n" not in err, err
