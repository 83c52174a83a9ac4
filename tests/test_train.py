"""End-to-end tests of train_final.py: protocols, sizes, the run directory, bad cells."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from darts_nas.cli import build_train_parser, train_config_from_args, train_main
from darts_nas.config import PROTOCOLS, TrainConfig
from darts_nas.data import build_transform, get_info, load_dataset
from darts_nas.engine import evaluate
from darts_nas.genotype import Genotype, load_cell
from darts_nas.network import NetworkCIFAR
from darts_nas.tracking import read_jsonl
from darts_nas.train import drop_path_schedule

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--dataset", "digits", "--init-channels", "4", "--layers", "3", "--batch-size", "32", "--quiet"]


def train(tmp_path, *extra, name="run"):
    out = tmp_path / name
    return train_main(["--cell", "darts_v2", *TINY, "--out", str(out), *extra]), out


def test_epochs_zero_reports_sizes_without_dataset_files(tmp_path):
    out = tmp_path / "sizes"
    code = train_main(["--cell", "darts_v2", "--epochs", "0", "--data", str(tmp_path / "no-such-dir"),
                       "--out", str(out), "--quiet"])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["params"] == 3_349_342
    assert metrics["params_with_auxiliary"] == 3_825_768
    assert metrics["params_auxiliary"] == 3_825_768 - 3_349_342
    assert 500e6 < metrics["multiply_adds"] < 560e6
    assert metrics["final_test_acc"] is None and metrics["epochs"] == 0
    config = json.loads((out / "config.json").read_text())
    assert config["config"]["cutout"] == 16  # half of CIFAR's 32 pixels
    assert Genotype.load(out / "genotype.json") == load_cell("darts_v2")


def test_imagenet_protocol_builds_the_mobile_network(tmp_path):
    out = tmp_path / "imagenet"
    code = train_main(["--cell", "darts_v2", "--protocol", "imagenet", "--epochs", "0", "--out", str(out), "--quiet"])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["input_size"] == [3, 224, 224]
    assert round(metrics["params"] / 1e6, 3) == 4.719
    assert 500e6 < metrics["multiply_adds"] < 560e6
    config = json.loads((out / "config.json").read_text())["config"]
    for key, value in PROTOCOLS["imagenet"].items():
        assert config[key] == (0 if key == "epochs" else value), key


def test_flags_override_the_protocol():
    parser = build_train_parser()
    config = train_config_from_args(parser.parse_args(
        ["--cell", "pdarts", "--protocol", "imagenet", "--epochs", "3", "--learning-rate", "0.05",
         "--no-auxiliary", "--label-smoothing", "0"]))
    assert (config.epochs, config.learning_rate, config.auxiliary, config.label_smoothing) == (3, 0.05, False, 0.0)
    assert (config.layers, config.init_channels, config.lr_schedule, config.weight_decay) == (14, 48, "step", 3e-5)
    cifar = train_config_from_args(parser.parse_args(["--cell", "darts_v2"]))
    assert cifar == TrainConfig.for_protocol("cifar", cell="darts_v2", device="auto", data="data", seed=0)
    assert (cifar.epochs, cifar.batch_size, cifar.drop_path_prob, cifar.auxiliary_weight) == (600, 96, 0.2, 0.4)


def test_original_flag_spellings():
    parser = build_train_parser()
    a = train_config_from_args(parser.parse_args(["--arch", "darts_v1", "--cutout_length", "8", "--drop_path_prob",
                                                  "0.3", "--auxiliary_weight", "0.5", "--save", "x"]))
    b = train_config_from_args(parser.parse_args(["--cell", "darts_v1", "--cutout", "8", "--drop-path-prob",
                                                  "0.3", "--auxiliary-weight", "0.5", "--out", "x"]))
    assert a == b


def test_short_training_improves_test_accuracy_and_writes_the_run(tmp_path):
    code, out = train(tmp_path, "--epochs", "3", "--no-auxiliary", "--cutout", "0")
    assert code == 0
    metrics = read_jsonl(out / "metrics.jsonl")
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    for m in metrics:
        for key in ("train_loss", "train_acc", "test_loss", "test_acc", "lr", "drop_path_prob", "epoch_time"):
            assert key in m
    assert [m["drop_path_prob"] for m in metrics] == pytest.approx([0.0, 0.2 / 3, 0.4 / 3])
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["final_test_acc"] == metrics[-1]["test_acc"]
    assert summary["best_test_acc"] == max(m["test_acc"] for m in metrics)
    assert summary["params_auxiliary"] == 0
    log = (out / "log.txt").read_text()
    # the header names the data and the network built; the first step has a line; the accuracies explained
    assert "digits: CIFAR-style network of 'darts_v2'" in log and "cifar network" not in log
    assert "epoch 1 step 1/" in log
    assert "train 'acc' is on training images as they are trained on (random crop, drop-path up to 0.2" in log
    assert f"tensorboard --logdir {out}" in log

    # The same network before training, built with the same seed, is near chance.
    torch.manual_seed(0)
    untrained = NetworkCIFAR(4, 10, 3, False, load_cell("darts_v2"), in_channels=1)
    info = get_info("digits")
    test_set, _ = load_dataset("digits", None, "test", transform=build_transform(info, train=False))
    before = evaluate(untrained, torch.utils.data.DataLoader(test_set, batch_size=100), torch.device("cpu"))
    assert summary["final_test_acc"] > max(before["acc"] + 25, 50)


def test_auxiliary_head_loss_is_used_and_counted_separately(tmp_path):
    code, out = train(tmp_path, "--epochs", "1", "--steps-per-epoch", "2")
    assert code == 0
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["params_auxiliary"] > 0
    assert summary["params_with_auxiliary"] == summary["params"] + summary["params_auxiliary"]


def test_compare_trains_both_cells_under_the_same_settings(tmp_path, capsys):
    out = tmp_path / "cmp"
    code = train_main(["--cell", "darts_v1", "--compare", "pdarts", *TINY[:-1], "--epochs", "1",
                       "--steps-per-epoch", "2", "--out", str(out)])
    assert code == 0
    summary = json.loads((out / "metrics.json").read_text())
    assert [r["cell"] for r in summary["comparison"]] == ["darts_v1", "pdarts"]
    other = json.loads((out / "compare-pdarts" / "metrics.json").read_text())
    assert other["cell"] == "pdarts" and other["epochs"] == 1
    printed = capsys.readouterr().out
    assert "darts_v1" in printed and "pdarts" in printed and "final test acc" in printed
    # the table's columns are separated, and the table is in log.txt too
    log = (out / "log.txt").read_text()
    header = next(line for line in log.splitlines() if line.startswith("cell "))
    assert header.split(" | ")[1:3] == ["final test acc", "best test acc"] and header in printed
    assert "pdarts " in log


def test_trains_a_searched_genotype_from_its_run_directory(tmp_path):
    run = tmp_path / "search"
    run.mkdir()
    load_cell("pdarts").save(run / "genotype.json")
    (run / "history.jsonl").write_text('{"epoch": 1}\n{"epoch": 2}\n')  # a search stopped after 2 epochs
    code = train_main(["--cell", str(run), *TINY, "--epochs", "0", "--out", str(tmp_path / "t")])
    assert code == 0
    assert Genotype.load(tmp_path / "t" / "genotype.json") == load_cell("pdarts")
    log = (tmp_path / "t" / "log.txt").read_text()
    assert f"warning: {run} holds an unfinished search: its genotype.json is the one derived after epoch 2" in log

    (run / "summary.json").write_text("{}")  # finished: no warning
    assert train_main(["--cell", str(run), *TINY, "--epochs", "0", "--out", str(tmp_path / "u")]) == 0
    assert "warning" not in (tmp_path / "u" / "log.txt").read_text()


BAD_CELLS = {
    "unknown name": ("darts_v9", "darts_v2"),
    "malformed json": ("{file:{\"normal\": [}", "JSON"),
    "unknown op": ("{file:" + json.dumps({"normal": [["sep_conv_9x9", 0], ["skip_connect", 1]], "normal_concat": [2],
                                         "reduce": [["skip_connect", 0], ["skip_connect", 1]], "reduce_concat": [2]}) + "}",
                   "sep_conv_9x9"),
    "node out of range": ("{file:" + json.dumps({"normal": [["skip_connect", 0], ["skip_connect", 5]], "normal_concat": [2],
                                                "reduce": [["skip_connect", 0], ["skip_connect", 1]], "reduce_concat": [2]}) + "}",
                          "5"),
    "unknown user's home": ("~nosuchuser/cell.json", "is neither a file"),
    "missing key": ("{file:" + json.dumps({"normal": [["skip_connect", 0], ["skip_connect", 1]], "normal_concat": [2]})
                    + "}", "reduce"),
    "legacy text beyond the grammar": ("Genotype(normal=__import__('os').system('true'), normal_concat=[2], "
                                       "reduce=[], reduce_concat=[2])", "is not allowed"),
    "none in a cell": ("{file:" + json.dumps({"normal": [["none", 0], ["skip_connect", 1]], "normal_concat": [2],
                                             "reduce": [["skip_connect", 0], ["skip_connect", 1]], "reduce_concat": [2]}) + "}",
                       "none"),
}


@pytest.mark.parametrize("case", sorted(BAD_CELLS))
def test_bad_cell_gives_one_line_error(tmp_path, capsys, case):
    spec, expected = BAD_CELLS[case]
    if spec.startswith("{file:"):
        path = tmp_path / "cell.json"
        path.write_text(spec[len("{file:"):-1])
        spec = str(path)
    code = train_main(["--cell", spec, *TINY, "--epochs", "0", "--out", str(tmp_path / "t")])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and expected in err, err
    assert not (tmp_path / "t").exists()


def test_unknown_users_home_in_compare_and_data_is_one_line(tmp_path, capsys):
    for extra, expected in [(["--compare", "~nosuchuser/x"], "'~nosuchuser/x' is neither a file"),
                            (["--dataset", "folder", "--data", "~nosuchuser/x"], "~nosuchuser/x does not exist")]:
        assert train_main(["--cell", "darts_v2", *TINY, "--epochs", "1", *extra, "--out", str(tmp_path / "t")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and expected in err, err
@pytest.mark.parametrize("args,expected", [
    (["--batch-size", "1"], "--no-auxiliary"),  # the auxiliary head's BatchNorm needs two images
    (["--compare", "darts_v9"], "valid cells are"),
    (["--network", "resnet"], "valid networks are"),
])
def test_bad_settings_give_one_line_and_leave_no_run_directory(tmp_path, capsys, args, expected):
    code, out = train(tmp_path, "--epochs", "1", "--steps-per-epoch", "1", *args)
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and expected in err, err
    assert not out.exists()


def test_refuses_to_overwrite_a_finished_training_run(tmp_path, capsys):
    code, out = train(tmp_path, "--epochs", "0")
    assert code == 0
    code, _ = train(tmp_path, "--epochs", "0")
    assert code == 2 and "finished train run" in capsys.readouterr().err


def test_drop_path_schedule_is_linear_from_zero():
    assert [drop_path_schedule(0.2, e, 4) for e in range(4)] == pytest.approx([0.0, 0.05, 0.1, 0.15])
    assert drop_path_schedule(0.0, 3, 4) == 0.0


def test_help_documents_every_flag():
    text = subprocess.run([sys.executable, str(ROOT / "train_final.py"), "--help"], capture_output=True,
                          text=True, check=True, cwd=ROOT).stdout
    for action in build_train_parser()._actions:
        for flag in action.option_strings:
            assert flag in text
        if action.dest != "help":
            assert action.help and action.help.strip(), action.dest


@pytest.mark.needs_cuda
def test_training_runs_on_cuda(tmp_path):
    code, out = train(tmp_path, "--device", "cuda", "--epochs", "1", "--steps-per-epoch", "2")
    assert code == 0
    assert json.loads((out / "config.json").read_text())["environment"]["device"].startswith("cuda")


def test_a_split_smaller_than_one_batch_trains_in_one_short_batch(tmp_path):
    code, out = train(tmp_path, "--batch-size", "5000", "--epochs", "1", "--steps-per-epoch", "1",
                      "--no-auxiliary", "--no-tensorboard")
    assert code == 0
    assert read_jsonl(out / "metrics.jsonl")[0]["steps"] == 1


def test_images_too_small_for_the_imagenet_stem_are_refused(tmp_path, capsys):
    from datasets_fixtures import write_image_folder

    for split in ("train", "val"):
        write_image_folder(tmp_path / "img" / split, classes=("a", "b"), per_class=2)
    code = train_main(["--cell", "darts_v2", "--protocol", "imagenet", "--dataset", "folder", "--data",
                       str(tmp_path / "img"), "--image-size", "16", "--epochs", "1", "--out", str(tmp_path / "t")])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "16x16 images are too small for the imagenet network" in err and "17x17" in err
    assert not (tmp_path / "t").exists()
