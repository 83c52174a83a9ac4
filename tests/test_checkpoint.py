import os

import pytest
import torch

from darts_nas.checkpoint import (FORMAT_VERSION, atomic_write_text, checkpoint_name, load_checkpoint,
                                  load_newest_valid, numbered_checkpoints, remove_stale_temporaries,
                                  save_checkpoint, save_rotating)
from darts_nas.errors import CheckpointError, RunFileError


def test_round_trip(tmp_path):
    state = {"model": {"w": torch.arange(4.0)}, "epoch": 3}
    save_checkpoint(tmp_path / "c.pt", state)
    loaded = load_checkpoint(tmp_path / "c.pt")
    assert loaded["epoch"] == 3 and torch.equal(loaded["model"]["w"], torch.arange(4.0))
    assert loaded["format_version"] == FORMAT_VERSION == 2


def test_no_temporary_files_are_left_behind(tmp_path):
    save_checkpoint(tmp_path / "c.pt", {"x": 1})
    save_checkpoint(tmp_path / "c.pt", {"x": 2})
    assert os.listdir(tmp_path) == ["c.pt"]
    assert load_checkpoint(tmp_path / "c.pt")["x"] == 2


def test_a_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    save_checkpoint(tmp_path / "c.pt", {"x": 1})

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path / "c.pt", {"x": 2})
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "c.pt")["x"] == 1
    assert os.listdir(tmp_path) == ["c.pt"]


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    save_checkpoint(tmp_path / "c.pt", {"w": torch.randn(100)})
    data = (tmp_path / "c.pt").read_bytes()
    (tmp_path / "c.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(tmp_path / "c.pt")


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


class Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format_version": 1, "x": Payload()}, path)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_foreign_file_is_refused(tmp_path):
    torch.save({"w": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a darts-nas checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "text.pt")


def test_atomic_text(tmp_path):
    atomic_write_text(tmp_path / "a.json", "{}")
    assert (tmp_path / "a.json").read_text() == "{}"


def test_new_files_get_the_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        save_checkpoint(tmp_path / "c.pt", {"x": 1})
        atomic_write_text(tmp_path / "a.json", "{}")
    finally:
        os.umask(old)
    for name in ("c.pt", "a.json"):
        assert os.stat(tmp_path / name).st_mode & 0o777 == 0o644, name


def test_a_version_1_checkpoint_still_resumes_at_the_end_of_its_epoch(tmp_path):
    torch.save({"format_version": 1, "kind": "search", "epoch": 2}, tmp_path / "checkpoint-epoch0002.pt")
    state = load_newest_valid(tmp_path, print, kind="search")
    assert (state["epoch"], state["step"]) == (2, 0)


def test_checkpoints_inside_an_epoch_sort_between_the_epochs(tmp_path):
    assert checkpoint_name(1) == "checkpoint-epoch0001.pt"
    assert checkpoint_name(1, 12) == "checkpoint-epoch0002-step000012.pt"  # 12 steps into epoch 2
    for epoch, step in [(0, 3), (1, 0), (1, 2), (1, 10), (2, 0)]:
        save_rotating(tmp_path, epoch, {"epoch": epoch, "step": step}, keep=10, step=step)
    assert [p.name for p in numbered_checkpoints(tmp_path)] == [
        "checkpoint-epoch0002.pt", "checkpoint-epoch0002-step000010.pt", "checkpoint-epoch0002-step000002.pt",
        "checkpoint-epoch0001.pt", "checkpoint-epoch0001-step000003.pt"]
    save_rotating(tmp_path, 2, {"epoch": 2, "step": 1}, keep=2, step=1)
    assert [p.name for p in numbered_checkpoints(tmp_path)] == [
        "checkpoint-epoch0003-step000001.pt", "checkpoint-epoch0002.pt"]
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 1


def test_a_checkpoint_of_another_kind_is_refused(tmp_path):
    save_checkpoint(tmp_path / "checkpoint-epoch0001.pt", {"kind": "train", "epoch": 1})
    with pytest.raises(CheckpointError, match="belongs to a train run, not a search run"):
        load_newest_valid(tmp_path, print, kind="search")


def test_a_failed_write_names_the_file_and_the_fix(tmp_path, monkeypatch):
    def full(fd, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(RunFileError, match=r"cannot write .*c\.pt \(No space left on device\): free disk space"):
        save_checkpoint(tmp_path / "c.pt", {"x": 1})
    monkeypatch.undo()
    assert os.listdir(tmp_path) == []


def test_stale_temporaries_are_removed(tmp_path):
    (tmp_path / ".checkpoint-epoch0001.pt.123.0123abcd.tmp").write_bytes(b"torn")
    (tmp_path / "notes.tmp").write_text("a user's file")
    assert [p.name for p in remove_stale_temporaries(tmp_path)] == [".checkpoint-epoch0001.pt.123.0123abcd.tmp"]
    assert os.listdir(tmp_path) == ["notes.tmp"]
