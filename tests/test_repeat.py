"""Repeated runs (--seeds): the aggregate's arithmetic, and real seed directories made by the scripts."""

from __future__ import annotations

import json
import math

import pytest

from darts_nas.cli import search_main, train_main
from darts_nas.errors import ConfigError, RunDirError
from darts_nas.repeat import aggregate, parse_seeds, summarise
from darts_nas.report import main as report_main

SEARCH = ["--dataset", "digits", "--epochs", "1", "--layers", "3", "--init-channels", "4", "--nodes", "2",
          "--batch-size", "16", "--steps-per-epoch", "2", "--no-tensorboard", "--quiet"]
TRAIN = ["--cell", "darts_v2", "--dataset", "digits", "--epochs", "1", "--layers", "3", "--init-channels", "4",
         "--batch-size", "16", "--steps-per-epoch", "2", "--no-tensorboard", "--quiet"]


def test_summarise_by_hand():
    # mean (1 + 2 + 4) / 3 = 7/3; squared deviations 16/9 + 1/9 + 25/9 = 42/9; / (n - 1) = 7/3
    s = summarise([1.0, 2.0, 4.0])
    assert s["mean"] == pytest.approx(7 / 3)
    assert s["std"] == pytest.approx(math.sqrt(7 / 3))
    assert (s["min"], s["max"], s["n"]) == (1.0, 4.0, 3)
    assert summarise([5.0]) == {"mean": 5.0, "std": None, "min": 5.0, "max": 5.0, "n": 1}


@pytest.mark.parametrize("text", ["", "1,,2", "a", "1,-2", "1,1", str(2**32)])
def test_parse_seeds_refuses(text):
    with pytest.raises(ConfigError, match="--seeds"):
        parse_seeds(text)


def test_parse_seeds():
    assert parse_seeds("3, 1,2") == (3, 1, 2)


def _fake_seed(parent, seed, acc, finished=True, lr=0.025):
    d = parent / f"seed-{seed}"
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"config": {"dataset": "digits", "seed": seed, "out": str(d),
                                                          "learning_rate": lr}}))
    if finished:
        (d / "summary.json").write_text(json.dumps({"finished": True, "valid_acc": acc, "valid_loss": 1.0}))


def test_aggregate_lists_unfinished_and_refuses_mixed_protocols(tmp_path):
    _fake_seed(tmp_path, 1, 90.0)
    _fake_seed(tmp_path, 2, 80.0)
    _fake_seed(tmp_path, 7, 0.0, finished=False)
    (tmp_path / "notes").mkdir()  # not a seed directory: ignored
    result = aggregate(tmp_path)
    acc = result["metrics"]["valid_acc"]
    assert (result["finished"], result["unfinished"], result["headline"]) == ([1, 2], [7], "valid_acc")
    assert acc["values"] == {"1": 90.0, "2": 80.0}
    assert acc["mean"] == 85.0 and acc["std"] == pytest.approx(math.sqrt(50.0))  # (25 + 25) / 1
    _fake_seed(tmp_path, 3, 70.0, lr=0.1)
    with pytest.raises(RunDirError, match="learning_rate"):
        aggregate(tmp_path)


def test_search_seeds_resume_skip_and_separate_jobs(tmp_path, capsys):
    parent = tmp_path / "search"
    assert search_main([*SEARCH, "--seeds", "1,2", "--out", str(parent)]) == 0
    summary = json.loads((parent / "summary.json").read_text())
    runs = {s: json.loads((parent / f"seed-{s}" / "summary.json").read_text()) for s in (1, 2)}
    assert summary["metrics"]["valid_acc"]["values"] == {str(s): runs[s]["valid_acc"] for s in (1, 2)}
    assert summary["metrics"]["valid_acc"]["mean"] == pytest.approx((runs[1]["valid_acc"] + runs[2]["valid_acc"]) / 2)
    assert json.loads((parent / "seed-2" / "config.json").read_text())["config"]["seed"] == 2

    # The same command again: finished seeds are skipped (their files untouched).
    mtime = (parent / "seed-1" / "summary.json").stat().st_mtime_ns
    assert search_main([*SEARCH, "--seeds", "1,2", "--out", str(parent)]) == 0
    assert (parent / "seed-1" / "summary.json").stat().st_mtime_ns == mtime
    # An unfinished seed (its end lost) is resumed from its checkpoint to the same result.
    (parent / "seed-2" / "summary.json").unlink()
    assert search_main([*SEARCH, "--seeds", "1,2", "--out", str(parent)]) == 0
    assert json.loads((parent / "seed-2" / "summary.json").read_text())["valid_acc"] == runs[2]["valid_acc"]

    # Another job writing seed 3 into the same parent; the aggregate then holds all three.
    assert search_main([*SEARCH, "--seeds", "3", "--out", str(parent)]) == 0
    assert json.loads((parent / "summary.json").read_text())["finished"] == [1, 2, 3]
    (parent / "summary.json").unlink()
    assert report_main(["--aggregate", str(parent)]) == 0
    assert json.loads((parent / "summary.json").read_text())["metrics"]["valid_acc"]["n"] == 3

    # Other settings over finished seeds: one line, nothing run.
    assert search_main([*SEARCH, "--seeds", "1", "--out", str(parent), "--learning-rate", "0.1"]) == 2
    assert "other settings" in capsys.readouterr().err


def test_train_seeds_aggregate_test_accuracy(tmp_path):
    parent = tmp_path / "train"
    assert train_main([*TRAIN, "--seeds", "4,5", "--out", str(parent)]) == 0
    summary = json.loads((parent / "summary.json").read_text())
    accs = {str(s): json.loads((parent / f"seed-{s}" / "metrics.json").read_text())["final_test_acc"] for s in (4, 5)}
    assert summary["headline"] == "final_test_acc" and summary["metrics"]["final_test_acc"]["values"] == accs


def test_seeds_flag_errors(tmp_path, capsys):
    assert search_main([*SEARCH, "--seeds", "1,x", "--out", str(tmp_path / "p")]) == 2
    assert search_main([*SEARCH, "--seeds", "1", "--seed", "2", "--out", str(tmp_path / "p")]) == 2
    assert search_main([*SEARCH, "--seeds", "1"]) == 2
    err = capsys.readouterr().err
    assert "'x' is not a seed" in err and "--seed and --seeds" in err and "needs --out" in err
    assert not (tmp_path / "p").exists()
    assert report_main(["--aggregate", str(tmp_path / "none")]) == 2


def test_folds_partition_the_train_split_and_hold_one_out():
    from darts_nas.data import dataset_labels, train_test_data

    held, labels = [], None
    for fold in range(3):
        data = train_test_data("digits", None, 16, seed=3, folds=3, fold=fold)
        train_idx, held_idx = data.train_loader.dataset.indices, data.heldout_loader.dataset.indices
        labels = labels or dataset_labels(data.train_loader.dataset.dataset)
        assert sorted(train_idx + held_idx) == list(range(len(labels)))  # fold i out, the rest in
        assert data.num_heldout == len(held_idx) and data.num_train == len(train_idx)
        held.append(held_idx)
    assert sorted(i for h in held for i in h) == list(range(len(labels)))  # the folds partition the split
    for h in held:  # stratified: each class's share of a fold is its share of the split, to one image
        for c in set(labels):
            assert abs(sum(labels[i] == c for i in h) - labels.count(c) / 3) <= 1


def test_train_folds_aggregate_heldout_accuracy_resume_and_report(tmp_path, capsys):
    parent = tmp_path / "cv"
    assert train_main([*TRAIN, "--folds", "2", "--out", str(parent)]) == 0
    summary = json.loads((parent / "summary.json").read_text())
    runs = [json.loads((parent / f"fold-{i}" / "metrics.json").read_text()) for i in range(2)]
    assert summary["unit"] == "fold" and summary["folds"] == [0, 1] and summary["headline"] == "final_heldout_acc"
    assert summary["metrics"]["final_heldout_acc"]["values"] == {str(i): r["final_heldout_acc"] for i, r in enumerate(runs)}
    assert summary["metrics"]["final_test_acc"]["values"] == {str(i): r["final_test_acc"] for i, r in enumerate(runs)}
    assert [r["fold"] for r in runs] == [0, 1]
    sizes = [json.loads((parent / f"fold-{i}" / "config.json").read_text())["dataset"] for i in range(2)]
    assert sizes[0]["train_images"] + sizes[0]["heldout_images"] == sizes[1]["train_images"] + sizes[1]["heldout_images"]
    lines = (parent / "fold-0" / "metrics.jsonl").read_text().splitlines()
    assert "heldout_acc" in json.loads(lines[-1])
    stamps = [(parent / f"fold-{i}" / "metrics.json").stat().st_mtime_ns for i in range(2)]
    assert train_main([*TRAIN, "--folds", "2", "--out", str(parent)]) == 0  # again: both folds skipped
    assert [(parent / f"fold-{i}" / "metrics.json").stat().st_mtime_ns for i in range(2)] == stamps
    out = tmp_path / "report"
    assert report_main([str(parent), "--out", str(out)]) == 0
    table = (out / "report.md").read_text()
    assert "(2-fold cross-validation)" in table and "final_heldout_acc" in table
    assert f"| {summary['metrics']['final_heldout_acc']['mean']:.2f} ± " in table


def test_folds_flag_errors(tmp_path, capsys):
    assert train_main([*TRAIN, "--folds", "1", "--out", str(tmp_path / "a")]) == 2
    assert train_main([*TRAIN, "--folds", "2", "--seeds", "1,2", "--out", str(tmp_path / "b")]) == 2
    assert train_main([*TRAIN, "--folds", "2"]) == 2
    err = capsys.readouterr().err
    assert "--folds must be at least 2" in err and "--seeds and --folds both given" in err and "needs --out" in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
