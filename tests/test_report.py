"""darts-report over real run directories made by the scripts: the table holds their numbers, the
figures are PNGs of the expected size."""

from __future__ import annotations

import csv
import json
import shutil
import sys

import pytest
from PIL import Image

from darts_nas.cli import search_main, train_main
from darts_nas.report import CELL_PANEL, CURVES_SIZE, alphas_size, main as report_main

TINY = ["--dataset", "digits", "--epochs", "2", "--layers", "3", "--init-channels", "4", "--batch-size", "16",
        "--steps-per-epoch", "2", "--no-tensorboard", "--quiet"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    # --preset darts-1st: the flags given win, so the search stays tiny; the preset brings its published result.
    assert search_main([*TINY, "--nodes", "2", "--preset", "darts-1st", "--seeds", "1,2",
                        "--out", str(root / "search")]) == 0
    assert train_main(["--cell", "darts_v2", *TINY, "--out", str(root / "train")]) == 0
    return root


def test_alphas_size_by_hand():
    assert alphas_size(5) == (1250, 200)  # 5 panels of 250 px in one row of 200 px
    assert alphas_size(14) == (1750, 400)  # 7 columns, two rows


def test_report_table_holds_the_runs_numbers_and_figures(runs, tmp_path, capsys):
    out = tmp_path / "report"
    assert report_main([str(runs / "search"), str(runs / "train"), "--out", str(out)]) == 0
    seeds = [json.loads((runs / "search" / f"seed-{s}" / "summary.json").read_text())["valid_acc"] for s in (1, 2)]
    test_acc = json.loads((runs / "train" / "metrics.json").read_text())["final_test_acc"]
    with open(out / "report.csv") as f:
        rows = {r["kind"]: r for r in csv.DictReader(f)}
    mean = sum(seeds) / 2
    std = abs(seeds[0] - seeds[1]) / 2 ** 0.5  # sample std of two values: |a - b| / sqrt(2)
    assert float(rows["search"]["mean"]) == pytest.approx(mean)
    assert float(rows["search"]["std"]) == pytest.approx(std)
    assert rows["search"]["n"] == "2" and rows["search"]["metric"] == "valid_acc"
    assert rows["search"]["method"] == "darts (preset darts-1st)" and "3.00 +- 0.14" in rows["search"]["published"]
    assert float(rows["train"]["mean"]) == pytest.approx(test_acc) and rows["train"]["n"] == "1"
    assert rows["train"]["std"] == "" and "2.76 +- 0.09" in rows["train"]["published"]  # cells/darts_v2.json
    table = (out / "report.md").read_text()
    assert f"| {mean:.2f} ± {std:.2f} | 2 |" in table and f"| {test_acc:.2f} ± n/a | 1 |" in table

    pngs = sorted(out.glob("*.png"))
    curves = [p for p in pngs if p.name.startswith("curves-")]
    alphas = [p for p in pngs if p.name.startswith("alphas-")]
    cells = [p for p in pngs if p.name.startswith("cells-")]
    assert len(curves) == 2 and len(alphas) == 2  # one per row; one per search run
    assert len(cells) == 3  # one per search run, one for the retrained cell
    for p in cells:
        with Image.open(p) as im:  # a normal and a reduction cell, one panel each
            assert im.format == "PNG" and im.size == (CELL_PANEL[0], 2 * CELL_PANEL[1])
    for p in curves:
        with Image.open(p) as im:
            assert im.format == "PNG" and im.size == CURVES_SIZE
    edges = len(json.loads((runs / "search" / "seed-1" / "history.jsonl").read_text().splitlines()[0])["alphas"]
                ["normal"])
    assert edges == 5  # 2 nodes: 2 + 3 edges
    for p in alphas:
        with Image.open(p) as im:
            im.verify()
        with Image.open(p) as im:  # two cell types under a 60-pixel legend
            assert im.format == "PNG" and im.size == (1250, 2 * 200 + 60)
            assert sum(1 for count in im.convert("L").histogram() if count) > 10  # something was drawn
    for p in pngs:
        assert f"]({p.name})" in table


def test_report_without_matplotlib_unfinished_and_bad_input(runs, tmp_path, capsys, monkeypatch):
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    shutil.copy(runs / "train" / "config.json", unfinished / "config.json")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    out = tmp_path / "report"
    assert report_main([str(runs / "train"), str(unfinished), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "matplotlib is not installed" in err and "not finished" in err
    assert not list(out.glob("*.png")) and (out / "report.csv").read_text().count("\n") == 2  # header + 1 row
    assert report_main([str(tmp_path / "empty-or-missing"), "--out", str(out)]) == 2
    assert "holds neither a run" in capsys.readouterr().err
    assert report_main([]) == 2


def test_cell_graph_of_a_sparse_genotype_follows_its_nodes(tmp_path):
    """A FairDARTS cell (node 3 without input, node 4 with one) is drawn from its own targets."""
    from darts_nas.genotype import load_cell
    from darts_nas.report import cell_graphs

    genotype = load_cell("fairdarts_a")
    genotype.save(tmp_path / "genotype.json")
    normal = cell_graphs(tmp_path / "genotype.json")[0]
    assert [t for _, t, _ in normal.edges] == list(genotype.targets("normal"))
    assert len(normal.nodes) == genotype.steps("normal") + 3  # two inputs, the intermediate nodes, the output
