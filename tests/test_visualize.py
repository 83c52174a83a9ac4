"""``python -m darts_nas.visualize``: cell diagrams from a name, a file or a run directory, the
search animation, and the one-line errors."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from darts_nas.cli import search_main
from darts_nas.drawing import genotype_dots
from darts_nas.genotype import Genotype, load_cell
from darts_nas.visualize import main

ROOT = Path(__file__).resolve().parent.parent
HAVE_DOT = shutil.which("dot") is not None
needs_dot = pytest.mark.skipif(not HAVE_DOT, reason="Graphviz's dot is not installed")
TINY_SEARCH = ["--dataset", "digits", "--init-channels", "4", "--layers", "3", "--nodes", "2",
               "--batch-size", "32", "--steps-per-epoch", "2", "--epochs", "3", "--quiet", "--no-tensorboard"]


@pytest.fixture(scope="module")
def search_run(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("visualize") / "search"
        assert search_main([*TINY_SEARCH, "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    return out


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def opened(path: Path) -> Image.Image:
    image = Image.open(path)
    image.load()
    return image


@needs_dot
def test_a_published_cell_by_name(tmp_path, capsys):
    assert main(["darts_v2", "-o", str(tmp_path / "v2.png")]) == 0
    for cell in ("normal", "reduce"):
        assert opened(tmp_path / f"v2_{cell}.png").width > 100
        assert (tmp_path / f"v2_{cell}.dot").read_text() == genotype_dots(load_cell("darts_v2"), "darts_v2")[cell]
    printed = capsys.readouterr().out.split()
    assert len(printed) == 4 and str(tmp_path / "v2_normal.png") in printed


@needs_dot
def test_a_genotype_file_as_svg(tmp_path):
    path = load_cell("pdarts").save(tmp_path / "g.json")
    assert main([str(path), "-o", str(tmp_path / "out.svg")]) == 0
    text = (tmp_path / "out_reduce.svg").read_text()
    assert "<svg" in text and "c_{k}" in text
    assert (tmp_path / "out_normal.dot").is_file()


@needs_dot
def test_a_search_run_directory_and_its_animation(search_run, tmp_path):
    assert main([str(search_run), "-o", str(tmp_path / "cell.png"), "--gif", str(tmp_path / "search.gif")]) == 0
    genotype = Genotype.load(search_run / "genotype.json")
    assert (tmp_path / "cell_normal.dot").read_text() == genotype_dots(genotype, "search")["normal"]
    gif = opened(tmp_path / "search.gif")
    assert gif.format == "GIF" and gif.n_frames == 3  # one frame per epoch
    assert gif.width > 200


def test_dot_output_needs_no_graphviz(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert main(["darts_v1", "-o", str(tmp_path / "cell.dot")]) == 0
    assert (tmp_path / "cell_normal.dot").read_text().startswith("digraph")
    assert (tmp_path / "cell_reduce.dot").is_file()


def test_png_without_dot_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert main(["darts_v1", "-o", str(tmp_path / "cell.png")]) == 2
    err = one_line_error(capsys)
    assert "Graphviz 'dot' not found" in err and "apt-get install graphviz" in err
    assert (tmp_path / "cell_normal.dot").is_file() and not (tmp_path / "cell_normal.png").exists()


def test_gif_without_dot_is_a_one_line_error(search_run, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert main([str(search_run), "--gif", str(tmp_path / "a.gif")]) == 2
    assert "graphviz" in one_line_error(capsys)


@pytest.mark.parametrize("args,message", [
    (["darts_v3", "-o", "{tmp}/x.png"], "valid cells are"),
    (["{tmp}/no-such-run", "-o", "{tmp}/x.png"], "neither a file, a directory nor a known cell"),
    (["{tmp}/no-such-run", "--gif", "{tmp}/x.gif"], "not a directory"),
    (["{tmp}", "--gif", "{tmp}/x.gif"], "no history.jsonl"),
    (["darts_v2", "-o", "{tmp}/x.jpg"], ".png, .svg or .dot"),
    (["darts_v2", "-o", "{tmp}/missing/x.png"], "does not exist"),
])
def test_bad_input_gives_one_line_error(tmp_path, capsys, args, message):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert main(args) == 2
    assert message in one_line_error(capsys)


@pytest.mark.parametrize("spec,name", [("DARTS-V2", "darts_v2"), ("{tmp}/my-cell.json", "my-cell"),
                                       ("{tmp}", None)])
def test_without_out_a_file_named_after_the_cell_is_written_here(tmp_path, monkeypatch, capsys, spec, name):
    (tmp_path / "my-cell.json").write_text(load_cell("pdarts").to_json())
    load_cell("pdarts").save(tmp_path / "genotype.json")  # tmp_path as a run directory
    name = name or tmp_path.name
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no Graphviz: the .dot sources
    assert main([spec.replace("{tmp}", str(tmp_path))]) == 0
    assert sorted(p.name for p in here.iterdir()) == [f"{name}_normal.dot", f"{name}_reduce.dot"]
    title = f'label="{name}: reduction cell"'
    assert title in (here / f"{name}_reduce.dot").read_text()
    assert capsys.readouterr().out.split() == [f"{name}_normal.dot", f"{name}_reduce.dot"]


def test_runs_as_a_module(tmp_path):
    result = subprocess.run([sys.executable, "-m", "darts_nas.visualize", "darts_v2", "-o", str(tmp_path / "c.dot")],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "c_normal.dot").is_file()
    result = subprocess.run([sys.executable, "-m", "darts_nas.visualize", "nope", "-o", str(tmp_path / "c.png")],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2 and result.stderr.startswith("error: ")
