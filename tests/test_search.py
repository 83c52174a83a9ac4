"""End-to-end tests of the search: the CLI, the run directory, determinism, bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from darts_nas.checkpoint import load_checkpoint
from darts_nas.cli import build_search_parser, search_config_from_args, search_main
from darts_nas.errors import ConfigError
from darts_nas.genotype import Genotype, derive
from darts_nas.tracking import read_jsonl

from datasets_fixtures import write_image_folder, write_mnist

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--dataset", "digits", "--init-channels", "4", "--layers", "3", "--nodes", "2",
        "--batch-size", "32", "--steps-per-epoch", "3", "--epochs", "2", "--quiet"]


def search(tmp_path, *extra, name="run"):
    out = tmp_path / name
    code = search_main([*TINY, "--out", str(out), *extra])
    return code, out


def test_search_writes_a_complete_run_directory(tmp_path):
    code, out = search(tmp_path)
    assert code == 0
    for name in ("config.json", "genotype.json", "metrics.jsonl", "history.jsonl", "checkpoint.pt",
                 "log.txt", "summary.json"):
        assert (out / name).is_file(), name

    config = json.loads((out / "config.json").read_text())
    assert config["config"]["init_channels"] == 4 and config["config"]["out"] == str(out)
    assert config["environment"]["darts_nas_version"]
    assert config["dataset"] == {"name": "digits", "in_channels": 1, "num_classes": 10, "image_size": 8,
                                 "weight_half": 748, "arch_half": 749}

    genotype = Genotype.load(out / "genotype.json")
    raw = json.loads((out / "genotype.json").read_text())
    assert set(raw) >= {"normal", "normal_concat", "reduce", "reduce_concat"}
    assert raw["normal_concat"] == [2, 3]

    log = (out / "log.txt").read_text()
    # a line after the first step (life within seconds), the accuracies explained, TensorBoard's command
    assert "epoch 1 step 1/3" in log and "epoch 1 step 2/3" not in log and "epoch 1 step 3/3" in log
    assert "the epoch line's 'arch-half acc' is the whole architecture half after the epoch in eval mode" in log
    assert f"tensorboard --logdir {out}" in log

    metrics = read_jsonl(out / "metrics.jsonl")
    assert [m["epoch"] for m in metrics] == [1, 2]
    for m in metrics:
        assert m["steps"] == 3
        for key in ("train_loss", "train_acc", "arch_loss", "arch_acc", "valid_loss", "valid_acc", "lr", "epoch_time"):
            assert key in m
    assert metrics[1]["lr"] < metrics[0]["lr"]  # cosine schedule

    history = read_jsonl(out / "history.jsonl")
    assert [h["epoch"] for h in history] == [1, 2]
    for h in history:
        probs = {k: torch.tensor(v) for k, v in h["alphas"].items()}
        assert probs["normal"].shape == (5, 8)
        assert torch.allclose(probs["normal"].sum(1), torch.ones(5))
        # The recorded genotype is the discretisation of the recorded alphas.
        assert derive(probs["normal"].log(), probs["reduce"].log()) == Genotype.from_dict(h["genotype"])
    assert Genotype.from_dict(history[-1]["genotype"]) == genotype

    state = load_checkpoint(out / "checkpoint.pt")
    assert state["epoch"] == 2 and state["kind"] == "search"
    assert derive(state["model"]["alphas_normal"], state["model"]["alphas_reduce"]) == genotype

    summary = json.loads((out / "summary.json").read_text())
    assert summary["finished"] and Genotype.from_dict(summary["genotype"]) == genotype


def test_refuses_to_overwrite_a_finished_run(tmp_path, capsys):
    code, out = search(tmp_path, "--epochs", "1")
    assert code == 0
    before = (out / "genotype.json").read_bytes()
    code, _ = search(tmp_path, "--epochs", "1")
    assert code == 2
    err = capsys.readouterr().err
    assert "finished search run" in err and "--overwrite" in err
    assert (out / "genotype.json").read_bytes() == before
    code, _ = search(tmp_path, "--epochs", "1", "--overwrite", "--seed", "5")
    assert code == 0
    assert len(read_jsonl(out / "metrics.jsonl")) == 1  # replaced, not appended


def alphas_of(out):
    state = load_checkpoint(out / "checkpoint.pt")
    return state["model"]["alphas_normal"], state["model"]["alphas_reduce"]


def test_same_seed_gives_bit_identical_alphas_and_genotype(tmp_path):
    _, a = search(tmp_path, name="a")
    _, b = search(tmp_path, name="b")
    _, c = search(tmp_path, "--seed", "3", name="c")
    for x, y in zip(alphas_of(a), alphas_of(b)):
        assert torch.equal(x, y)
    assert (a / "genotype.json").read_text() == (b / "genotype.json").read_text()
    assert not torch.equal(alphas_of(a)[0], alphas_of(c)[0])


def test_too_few_cells_for_a_normal_cell_are_warned_about(tmp_path):
    # --layers 2 puts reductions at 0 and 1: no cell ever uses the normal alphas
    code, out = search(tmp_path, "--layers", "2", "--epochs", "1", name="two")
    assert code == 0
    assert "warning: with --layers 2 every cell is a reduction cell" in (out / "log.txt").read_text()
    _, three = search(tmp_path, "--epochs", "1", name="three")  # --layers 3: cell 0 is normal
    assert "warning" not in (three / "log.txt").read_text()


def test_second_order_search_runs(tmp_path):
    code, out = search(tmp_path, "--unrolled", "--epochs", "1")
    assert code == 0
    assert json.loads((out / "config.json").read_text())["config"]["unrolled"] is True
    assert Genotype.load(out / "genotype.json")


def test_folder_dataset_with_odd_sizes_and_mixed_modes(tmp_path):
    data = tmp_path / "images"
    write_image_folder(data, classes=("a", "b", "c"), per_class=10)
    code, out = search(tmp_path, "--dataset", "folder", "--data", str(data), "--image-size", "15",
                       "--batch-size", "4", "--epochs", "1")
    assert code == 0
    config = json.loads((out / "config.json").read_text())
    assert config["dataset"]["num_classes"] == 3 and config["dataset"]["image_size"] == 15
    assert config["dataset"]["in_channels"] == 3


def test_grayscale_28x28_mnist_files(tmp_path):
    write_mnist(tmp_path / "data", n_train=24)
    code, out = search(tmp_path, "--dataset", "mnist", "--data", str(tmp_path / "data"),
                       "--batch-size", "4", "--epochs", "1")
    assert code == 0
    assert json.loads((out / "config.json").read_text())["dataset"]["in_channels"] == 1


@pytest.mark.parametrize("args,message", [
    (["--dataset", "cifar10", "--data", "{tmp}/nowhere"], "--download"),
    (["--dataset", "imagenette"], "valid datasets are"),
    (["--train-portion", "1.5"], "between 0 and 1"),
    (["--ops", "skip_connect,conv_9x9"], "valid ops are"),
    (["--ops", "skip_connect,skip_connect"], "twice"),
    (["--space", "nasbench201"], "valid search spaces are"),
    (["--batch-size", "5000"], "--batch-size"),
    (["--layers", "0"], "--layers"),
    (["--seed", "99999999999999999999999"], "--seed must be a whole number from 0 to 4294967295"),
    (["--momentum", "1e6"], "--momentum must be below 1"),
    (["--out", ""], "--out is empty"),
])
def test_bad_input_gives_one_line_error_and_writes_nothing(tmp_path, capsys, args, message):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    code, out = search(tmp_path, *args)
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and message in err, err
    assert not out.exists()  # not even an empty log or an event file


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a GPU")
def test_cuda_requested_without_a_gpu(tmp_path, capsys):
    code, _ = search(tmp_path, "--device", "cuda")
    assert code == 2
    err = capsys.readouterr().err
    assert "--device cpu" in err
    # a CUDA build of torch needs a GPU and its driver, not another torch
    assert ("install a CUDA build" in err) == (torch.version.cuda is None), err


def test_original_darts_flag_spellings_are_aliases():
    parser = build_search_parser()
    dashed = search_config_from_args(parser.parse_args(
        ["--batch-size", "16", "--init-channels", "4", "--learning-rate", "0.1", "--arch-learning-rate", "0.01",
         "--weight-decay", "0.5", "--arch-weight-decay", "0.2", "--grad-clip", "3", "--train-portion", "0.7",
         "--learning-rate-min", "0.0", "--out", "x", "--report-every", "7"]))
    original = search_config_from_args(parser.parse_args(
        ["--batch_size", "16", "--init_channels", "4", "--learning_rate", "0.1", "--arch_learning_rate", "0.01",
         "--weight_decay", "0.5", "--arch_weight_decay", "0.2", "--grad_clip", "3", "--train_portion", "0.7",
         "--learning_rate_min", "0.0", "--save", "x", "--report_freq", "7"]))
    assert dashed == original
    assert dashed.batch_size == 16 and dashed.out == "x"


def test_defaults_are_the_paper_protocol():
    config = search_config_from_args(build_search_parser().parse_args([]))
    assert (config.init_channels, config.layers, config.nodes, config.batch_size, config.epochs) == (16, 8, 4, 64, 50)
    assert (config.learning_rate, config.learning_rate_min, config.momentum, config.weight_decay) == (0.025, 0.001, 0.9, 3e-4)
    assert (config.arch_learning_rate, config.arch_betas, config.arch_weight_decay) == (3e-4, (0.5, 0.999), 1e-3)
    assert (config.grad_clip, config.train_portion, config.unrolled) == (5.0, 0.5, False)


def test_help_documents_every_flag():
    text = subprocess.run([sys.executable, str(ROOT / "train_search.py"), "--help"], capture_output=True,
                          text=True, check=True, cwd=ROOT).stdout
    for action in build_search_parser()._actions:
        for flag in action.option_strings:
            assert flag in text
        if action.dest != "help":
            assert action.help and action.help.strip(), action.dest


def test_script_runs_as_a_subprocess(tmp_path):
    out = tmp_path / "sub"
    result = subprocess.run([sys.executable, str(ROOT / "train_search.py"), *TINY, "--epochs", "1", "--out", str(out)],
                            capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    assert Genotype.load(out / "genotype.json")


def test_console_entry_point_is_installed():
    from importlib import metadata

    try:
        dist = metadata.distribution("darts-nas")
    except metadata.PackageNotFoundError:
        pytest.skip("darts-nas is not pip-installed here (pip install -e . adds the console script)")
    scripts = {ep.name: ep.value for ep in dist.entry_points if ep.group == "console_scripts"}
    assert scripts["darts-search"] == "darts_nas.cli:search_main"


@pytest.mark.needs_cuda
def test_search_runs_on_cuda_with_the_same_command(tmp_path):
    code, out = search(tmp_path, "--device", "cuda", "--unrolled", "--epochs", "1")
    assert code == 0
    config = json.loads((out / "config.json").read_text())
    assert config["environment"]["device"].startswith("cuda")
    assert Genotype.load(out / "genotype.json")


def _placeholder_file(root: Path) -> list[str]:
    root.write_text("put the CIFAR-10 files here\n")
    return ["--dataset", "cifar10", "--data", str(root)]


def _empty_directory(root: Path) -> list[str]:
    root.mkdir()
    return ["--dataset", "cifar10", "--data", str(root)]


def _folder_without_class_subfolders(root: Path) -> list[str]:
    write_image_folder(root / "tmp", classes=("a",), per_class=1)
    (root / "tmp" / "a" / "img0.png").rename(root / "img0.png")  # loose images, no class folder
    shutil.rmtree(root / "tmp")
    return ["--dataset", "folder", "--data", str(root)]


def _folder_with_an_empty_class(root: Path) -> list[str]:
    write_image_folder(root, classes=("a", "b"), per_class=4)
    (root / "empty").mkdir()
    return ["--dataset", "folder", "--data", str(root)]


def _folder_of_non_images(root: Path) -> list[str]:
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        (root / c / "notes.txt").write_text("not an image")
    return ["--dataset", "folder", "--data", str(root)]


def _folder_of_one_class(root: Path) -> list[str]:
    write_image_folder(root, classes=("images",), per_class=8)
    return ["--dataset", "folder", "--data", str(root), "--batch-size", "2"]


def _images_too_small(root: Path) -> list[str]:
    write_image_folder(root, classes=("a", "b"), per_class=4)
    return ["--dataset", "folder", "--data", str(root), "--image-size", "2", "--batch-size", "2"]


@pytest.mark.parametrize("make_args,message", [
    (_placeholder_file, "is not a directory"),
    (_empty_directory, "not found under"),
    (_folder_without_class_subfolders, "no class subfolders"),
    (_folder_with_an_empty_class, "contains no images"),
    (_folder_of_non_images, "no image files"),
    (_images_too_small, "need images of at least 3x3"),
    (_folder_of_one_class, "single class subfolder"),
    (lambda root: ["--train-portion", "0"], "between 0 and 1"),
    (lambda root: ["--train-portion", "1"], "between 0 and 1"),
])
def test_bad_data_gives_one_line_error_and_writes_nothing(tmp_path, capsys, make_args, message):
    code, out = search(tmp_path, *make_args(tmp_path / "data"))
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and message in err, err
    assert not out.exists()


def test_images_too_large_for_this_machine_are_refused_before_anything_is_written(tmp_path, capsys, monkeypatch):
    # Otherwise the first batch gets the process killed by the OS, with no message.
    import darts_nas.network as network

    monkeypatch.setattr(network, "physical_memory", lambda: 64 * 2**20)  # a 64 MiB machine
    write_image_folder(tmp_path / "data", classes=("a", "b"), per_class=8)
    folder = ["--dataset", "folder", "--data", str(tmp_path / "data"), "--batch-size", "4"]
    code, out = search(tmp_path, *folder, "--image-size", "1000")
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "1000x1000 images cannot be trained here" in err
    assert "(12 channels, float32) alone takes 0.2 GiB, more than this machine's 0.1 GiB" in err
    assert not (out / "config.json").exists()
    code, _ = search(tmp_path, *folder, "--image-size", "16", "--epochs", "1", name="small")
    assert code == 0

    # The ImageNet network's stem halves the size into C // 2 channels.
    network.check_stem_fits_in_memory(1000, 4, "imagenet", 24)  # 4 x 12 x 500^2 x 4 B = 46 MiB: fits
    with pytest.raises(ConfigError, match="12 channels"):
        network.check_stem_fits_in_memory(1200, 4, "imagenet", 24)  # 66 MiB


def test_output_below_a_regular_file_is_refused(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    code = search_main([*TINY, "--out", str(tmp_path / "file" / "run")])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "cannot write to the output directory" in err and "Not a directory" in err


def test_odd_33x33_images_work(tmp_path):
    data = tmp_path / "images"
    write_image_folder(data, classes=("a", "b"), per_class=6)
    code, out = search(tmp_path, "--dataset", "folder", "--data", str(data), "--image-size", "33",
                       "--batch-size", "4", "--epochs", "1", "--steps-per-epoch", "1", "--no-tensorboard")
    assert code == 0
    assert json.loads((out / "config.json").read_text())["dataset"]["image_size"] == 33
