"""The command line itself: help and argument errors without torch, one default per flag, no
prefix matching, messages that name the command the user ran, the CPU threads, progress lines."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from darts_nas import __version__
from darts_nas.cli import build_search_parser, build_train_parser, search_main
from darts_nas.commands import command
from darts_nas.config import PROTOCOLS
from darts_nas.cpu_threads import apply_default_threads, configure_cpu, default_threads
from darts_nas.primitives import BUILTIN_OPS

ROOT = Path(__file__).resolve().parent.parent

# Runs a command's main in a fresh interpreter and reports whether torch (or anything that
# imports it) was loaded by the time it exited, as the last line of stdout.
_PROBE = """
import sys
from darts_nas.cli import {main}
try:
    {main}({argv!r})
except SystemExit as exc:
    code = exc.code
else:
    code = 0
print("torch loaded" if "torch" in sys.modules else "torch not loaded", code)
"""


@pytest.mark.parametrize("main,argv,code", [
    ("search_main", ["--help"], 0),
    ("search_main", ["--version"], 0),
    ("search_main", ["--epochs", "many"], 2),
    ("search_main", ["--epoch", "1"], 2),
    ("train_main", ["--help"], 0),
    ("train_main", [], 2),
    ("train_main", ["--cell", "darts_v2", "--protocol", "tiny"], 2),
])
def test_help_version_and_argument_errors_do_not_import_torch(main, argv, code):
    proc = subprocess.run([sys.executable, "-c", _PROBE.format(main=main, argv=argv)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip().splitlines()[-1] == f"torch not loaded {code}", proc.stdout[-500:] + proc.stderr[-500:]


def test_version(capsys):
    with pytest.raises(SystemExit):
        search_main(["--version"])
    assert capsys.readouterr().out.strip() == f"darts-nas {__version__}"


@pytest.mark.parametrize("build", [build_search_parser, build_train_parser])
def test_prefixes_of_flags_are_refused_but_underscore_aliases_work(build, capsys):
    parser = build()
    with pytest.raises(SystemExit):
        parser.parse_args(["--epoch", "1"])
    assert "unrecognized arguments: --epoch" in capsys.readouterr().err
    assert parser.parse_args(["--batch_size", "8"]).batch_size == 8


@pytest.mark.parametrize("build", [build_search_parser, build_train_parser])
def test_help_shows_each_default_once_and_never_none(build):
    parser = build()
    text = parser.format_help()
    assert "None" not in text
    formatter = parser._get_formatter()
    for action in parser._actions:
        if action.help and "default" in action.help:  # the help says it: nothing is added
            assert formatter._get_help_string(action) == action.help, action.dest
    if build is build_search_parser:
        entries = {e.split()[0]: " ".join(e.split()) for e in text.split("\n  --")[1:]}
        for flag in ("image-size", "out", "steps-per-epoch", "channels-last,", "gpu-data,", "epochs"):
            assert entries[flag].count("default") == 1, entries[flag]


@pytest.mark.parametrize("build", [build_search_parser, build_train_parser])
def test_help_wraps_between_words(build, monkeypatch):
    monkeypatch.setenv("COLUMNS", "60")
    text = build().format_help()
    words = {w for line in text.splitlines() for w in line.split()}
    # the long file name and the dashed dataset names survive whole
    assert "fashion-mnist," in words
    assert not any(line.rstrip().endswith("-") and not line.rstrip().endswith(" -") for line in text.splitlines())


def test_search_help_lists_the_ops():
    text = " ".join(build_search_parser().format_help().split())
    assert all(name in text for name in BUILTIN_OPS)


def test_builtin_op_names_match_the_registry():
    from darts_nas.genotype import PRIMITIVES
    from darts_nas.ops import OPS

    assert tuple(OPS.names()) == BUILTIN_OPS and PRIMITIVES == BUILTIN_OPS[:8]


def test_train_help_shows_the_protocols_values():
    text = " ".join(build_train_parser().format_help().split())
    for flag, key in (("--epochs", "epochs"), ("--batch-size", "batch_size"), ("--init-channels", "init_channels")):
        shown = f"cifar: {PROTOCOLS['cifar'][key]}, imagenet: {PROTOCOLS['imagenet'][key]}"
        assert shown in text, flag
    assert "[cifar: half the image side, imagenet: 0, nas-bench-201: 0, proxyless: 0]" in text  # --cutout


@pytest.mark.parametrize("argv0,kind,expected", [
    ("/usr/bin/darts-search", "search", "darts-search"),
    ("/usr/bin/darts-search", "train", "darts-train"),
    ("train_final.py", "train", "train_final.py"),
    ("/home/u/darts/train_search.py", "search", "train_search.py"),
])
def test_messages_name_the_command_the_user_ran(monkeypatch, argv0, kind, expected):
    monkeypatch.setattr(sys, "argv", [argv0])
    assert command(kind) == expected
    build = build_search_parser if kind == "search" else build_train_parser
    assert build().prog == expected
    assert f"`{expected} --resume RUN_DIR`" in " ".join(build().format_help().split())


def test_resume_hint_of_a_stopped_run_names_the_console_script(monkeypatch):
    from darts_nas import search, train

    monkeypatch.setattr(sys, "argv", ["/venv/bin/darts-train"])
    assert search.resume_command("runs/x") == "darts-search --resume runs/x"
    assert train.resume_command("runs/x") == "darts-train --resume runs/x"


def test_threads_flag_sets_the_thread_count(monkeypatch):
    import torch

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    try:
        configure_cpu(3)
        assert torch.get_num_threads() == 3 and os.environ["OMP_NUM_THREADS"] == "3"
    finally:
        torch.set_num_threads(before)


def test_small_steps_run_on_one_thread_unless_a_count_was_chosen(monkeypatch):
    import torch

    assert default_threads(64, 8, 8) == 1  # the quick start
    assert default_threads(64, 16, 32) is None and default_threads(16, 8, 32) is None  # CIFAR sizes
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        monkeypatch.setenv("OMP_NUM_THREADS", "2")  # chosen (--threads, the user, torchrun): kept
        assert apply_default_threads(64, 8, 8) is None and torch.get_num_threads() == 2
        monkeypatch.delenv("OMP_NUM_THREADS")
        assert apply_default_threads(64, 8, 8) == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("value", ["0", "-1", "two"])
def test_threads_must_be_a_positive_count(value, capsys):
    with pytest.raises(SystemExit):
        build_search_parser().parse_args(["--threads", value])
    assert "--threads" in capsys.readouterr().err


def test_threads_are_set_before_torch_loads(tmp_path):
    """OpenMP reads OMP_NUM_THREADS when torch loads it: the command sets it before its first
    torch import (here with a setting refused later, which must leave no run directory)."""
    probe = ("import os, sys\nfrom darts_nas import cli\n"
             "seen = {}\norig = cli.configure_cpu\n"
             "def spy(n):\n    seen['torch'] = 'torch' in sys.modules\n    orig(n)\n"
             "cli.configure_cpu = spy\n"
             "code = cli.search_main(['--threads', '1', '--dataset', 'nothing-such', '--out', sys.argv[1]])\n"
             "import torch\nprint(seen['torch'], torch.get_num_threads(), code)\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMP_")}
    proc = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "run")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.stdout.split() == ["False", "1", "2"], proc.stderr[-1000:]
    assert "valid datasets are" in proc.stderr and not (tmp_path / "run").exists()


def test_progress_lines_come_by_step_count_and_by_time(monkeypatch):
    from darts_nas import engine

    now = [0.0]
    monkeypatch.setattr(engine.time, "perf_counter", lambda: now[0])
    reports = engine._ReportTimes(every=50, total=12, first=1, seconds=30.0, clock=True)
    due = []
    for step in range(1, 13):
        now[0] += 11.0  # 11 s per step
        if reports.due(step):
            due.append(step)
    # the first step, then every step that ends 30 s or more after the last line, and the last step
    assert due == [1, 4, 7, 10, 12]
    # under torchrun (no clock) only the step counts decide, alike on every process
    reports = engine._ReportTimes(every=5, total=12, first=3, seconds=30.0, clock=False)
    assert [s for s in range(3, 13) if reports.due(s)] == [3, 5, 10, 12]


def test_ctrl_c_while_starting_up_is_one_line(monkeypatch, capsys):
    import importlib

    def interrupted(name):
        raise KeyboardInterrupt

    monkeypatch.setattr(sys, "argv", ["/venv/bin/darts-search"])
    monkeypatch.setattr(importlib, "import_module", interrupted)
    assert search_main(["--dataset", "digits"]) == 130
    err = capsys.readouterr().err.strip()
    assert err == "error: darts-search interrupted while starting up: nothing was written"


def test_ctrl_c_says_checkpoints_are_intact_only_when_there_are_some(tmp_path):
    from types import SimpleNamespace

    from darts_nas.cli import _interrupted

    out = tmp_path / "run"
    out.mkdir()
    config = SimpleNamespace(out=str(out))
    assert "before the first checkpoint was written" in _interrupted("interrupted", config)
    assert "before the first checkpoint was written" in _interrupted("interrupted", None)
    (out / "checkpoint-epoch0001.pt").write_bytes(b"")
    assert "the checkpoints already written are intact" in _interrupted("interrupted", config)


def test_a_long_evaluation_says_how_far_it_is(monkeypatch):
    import torch

    from darts_nas import engine

    monkeypatch.setattr(engine, "REPORT_SECONDS", 0.0)  # every batch counts as "30 s later"
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    batches = [(torch.randn(2, 1, 2, 2), torch.tensor([0, 1])) for _ in range(3)]
    lines = []
    engine.evaluate(model, batches, torch.device("cpu"), log=lines.append, what="epoch 1: testing")
    assert [line.rsplit(",", 1)[0] for line in lines] == [
        "  epoch 1: testing: 0 images", "  epoch 1: testing: 2 images", "  epoch 1: testing: 4 images"]
    assert all(line.endswith(" s") for line in lines)
    lines.clear()
    monkeypatch.setattr(engine, "REPORT_SECONDS", 30.0)
    engine.evaluate(model, batches, torch.device("cpu"), log=lines.append)
    assert lines == []  # a short evaluation prints nothing
