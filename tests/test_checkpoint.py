import os

import pytest
import torch

from darts_nas.checkpoint import atomic_write_text, load_checkpoint, save_checkpoint
from darts_nas.errors import CheckpointError


def test_round_trip(tmp_path):
    state = {"model": {"w": torch.arange(4.0)}, "epoch": 3}
    save_checkpoint(tmp_path / "c.pt", state)
    loaded = load_checkpoint(tmp_path / "c.pt")
    assert loaded["epoch"] == 3 and torch.equal(loaded["model"]["w"], torch.arange(4.0))
    assert loaded["format_version"] == 1


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
