"""The files of a run directory: the lock, no writes through links, records that survive a crash."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from darts_nas.checkpoint import atomic_write_text, numbered_checkpoints, save_rotating, truncate_jsonl
from darts_nas.errors import RunDirError, RunFileError
from darts_nas.runfiles import LOCK_FILE, RunDirLock, append_record, read_records
from darts_nas.runtime import prepare_run_dir
from darts_nas.tracking import RunLog

ROOT = Path(__file__).resolve().parent.parent


def planted_link(tmp_path: Path, name: str) -> tuple[Path, Path]:
    """``<tmp>/run/<name>`` a link to ``<tmp>/precious.txt``; returns (run dir, target)."""
    target = tmp_path / "precious.txt"
    target.write_text("keep me\n")
    out = tmp_path / "run"
    out.mkdir(exist_ok=True)
    (out / name).symlink_to(target)
    return out, target


def test_records_are_whole_lines_and_a_torn_last_one_is_dropped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    append_record(path, {"epoch": 1, "loss": 0.5})
    append_record(path, {"epoch": 2, "loss": float("nan")})
    assert path.read_bytes().count(b"\n") == 2
    with open(path, "ab") as f:
        f.write(b'{"epoch": 3, "lo')  # a write cut short
    warnings = []
    records = read_records(path, warnings.append)
    assert [r["epoch"] for r in records] == [1, 2] and records[1]["loss"] != records[1]["loss"]
    assert len(warnings) == 1 and "dropped the damaged last line 3" in warnings[0]
    truncate_jsonl(path, 1, warnings.append)
    assert read_records(path) == [{"epoch": 1, "loss": 0.5}]


@pytest.mark.parametrize("garbage", [b"garbage", b"[1, 2]", b"\xff\xfe"])
def test_a_damaged_record_in_the_middle_is_one_line_naming_the_file_and_line(tmp_path, garbage):
    path = tmp_path / "history.jsonl"
    path.write_bytes(b'{"epoch": 1}\n' + garbage + b'\n{"epoch": 3}\n')
    with pytest.raises(RunDirError, match=rf"{path} line 2 is not a JSON record .*--overwrite") as info:
        read_records(path)
    assert "\n" not in str(info.value)


def test_records_and_logs_are_never_written_through_links(tmp_path):
    for name in ("metrics.jsonl", "log.txt"):
        out, target = planted_link(tmp_path, name)
        with pytest.raises(RunFileError, match="it is a symbolic link"):
            append_record(out / name, {"epoch": 1}) if name.endswith(".jsonl") else RunLog(out, quiet=True)
        with pytest.raises(RunFileError, match="it is a symbolic link"):
            read_records(out / name)
        assert target.read_text() == "keep me\n"


def test_a_planted_fifo_does_not_hang_the_run(tmp_path):
    os.mkfifo(tmp_path / "log.txt")
    with pytest.raises(RunFileError):  # no reader: refused at once instead of blocking forever
        RunLog(tmp_path, quiet=True)


def test_atomic_writes_replace_a_link_and_never_touch_its_target(tmp_path):
    out, target = planted_link(tmp_path, "genotype.json")
    atomic_write_text(out / "genotype.json", "{}\n")
    assert not (out / "genotype.json").is_symlink() and (out / "genotype.json").read_text() == "{}\n"
    assert target.read_text() == "keep me\n"


def test_a_planted_write_test_link_is_left_alone(tmp_path):
    out, target = planted_link(tmp_path, ".write-test")
    lock = RunDirLock()
    assert prepare_run_dir(str(out), "search", "digits", False, (), lock=lock) == out
    lock.release()
    assert target.read_text() == "keep me\n" and (out / ".write-test").is_symlink()
    assert sorted(p.name for p in out.iterdir()) == sorted([".write-test", LOCK_FILE])


def test_an_empty_out_is_refused(tmp_path):
    with pytest.raises(RunDirError, match="--out is empty"):
        prepare_run_dir("", "search", "digits", False, ())


def test_rotation_never_counts_junk_newer_than_the_checkpoint_written(tmp_path):
    out, target = planted_link(tmp_path, "checkpoint-epoch0001.pt")
    (out / "checkpoint-epoch0009.pt").write_bytes(b"junk")
    path = save_rotating(out, 2, {"epoch": 2}, keep=1)
    assert path.exists() and (out / "checkpoint.pt").exists()
    assert [p.name for p in numbered_checkpoints(out)] == ["checkpoint-epoch0009.pt", "checkpoint-epoch0002.pt"]
    assert (out / "checkpoint-epoch0001.pt").is_symlink() and target.read_text() == "keep me\n"
    save_rotating(out, 3, {"epoch": 3}, keep=1)
    assert [p.name for p in numbered_checkpoints(out)] == ["checkpoint-epoch0009.pt", "checkpoint-epoch0003.pt"]


HOLD = """
import os, sys, time
from pathlib import Path
from darts_nas.runfiles import RunDirLock
lock = RunDirLock()
lock.acquire(Path(sys.argv[1]))
if len(sys.argv) > 2 and os.fork() == 0:  # a child sharing the lock, like a DataLoader worker
    time.sleep(float(sys.argv[2]))
    os._exit(0)
print("locked", flush=True)
sys.stdin.readline()
"""


def test_the_lock_is_exclusive_between_processes_and_dies_with_its_holder(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], env=env, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert (tmp_path / LOCK_FILE).read_text() == f"{holder.pid}\n"
        with pytest.raises(RunDirError, match=rf"in use by another darts-nas run \(process {holder.pid}\)"):
            RunDirLock().acquire(tmp_path)
    finally:
        holder.kill()
        holder.wait()
    lock = RunDirLock()  # the kernel dropped the killed holder's lock: no stale lock
    lock.acquire(tmp_path)
    assert (tmp_path / LOCK_FILE).read_text() == f"{os.getpid()}\n"
    lock.release()


def test_a_killed_holders_leftover_children_are_waited_for(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path), "1.0"], env=env, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    holder.kill()  # its forked child still shares the lock for a second
    holder.wait()
    lock = RunDirLock()
    lock.acquire(tmp_path)  # waits for the leftover child instead of refusing
    assert lock.held
    lock.release()
