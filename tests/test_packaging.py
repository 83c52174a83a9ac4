"""The built wheel carries the published cells, the presets, the method and space plug-ins and both
console scripts."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_contains_cells_and_entry_points(tmp_path):
    setuptools = pytest.importorskip("setuptools")
    major, minor = (int(x) for x in setuptools.__version__.split(".")[:2])
    if (major, minor) < (70, 1):
        pytest.skip("setuptools older than 70.1 needs the separate 'wheel' package to build wheels")
    src = tmp_path / "src"
    src.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    for name in ("darts_nas", "cells", "presets"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-c", f"from setuptools import build_meta; build_meta.build_wheel({str(dist)!r})"],
                   cwd=src, check=True, capture_output=True)
    (wheel,) = dist.glob("darts_nas-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        entry_points = next(zf.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    cells = {Path(n).name for n in names if n.startswith("darts_nas/cells/") and n.endswith(".json")}
    assert {p.name for p in (ROOT / "cells").glob("*.json")} == cells
    presets = {Path(n).name for n in names if n.startswith("darts_nas/presets/") and n.endswith(".json")}
    assert {p.name for p in (ROOT / "presets").glob("*.json")} == presets and "pc_darts.json" in presets
    assert {"darts_nas/methods/gdas.py", "darts_nas/methods/pc_darts.py", "darts_nas/spaces/darts.py",
            "darts_nas/methods/sampling.py", "darts_nas/strategies/stage.py"} <= names
    assert "darts-search = darts_nas.cli:search_main" in entry_points
    assert "darts-train = darts_nas.cli:train_main" in entry_points
    assert "darts-report = darts_nas.report:main" in entry_points
    assert not any(n.startswith("tests/") for n in names)
