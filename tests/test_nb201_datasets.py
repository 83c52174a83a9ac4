"""The NAS-Bench-201 datasets, read from tiny files written in their real on-disk formats."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
import torch
from torchvision import transforms as T

from darts_nas.cli import search_main, train_main
from darts_nas.data import build_transform, get_info, load_dataset, search_data, train_test_data
from darts_nas.errors import DataError
from darts_nas.nb201_datasets import read_imagenet16_batch

try:
    import datasets_fixtures as fx
except ImportError:  # tests/ imported as a package
    from tests import datasets_fixtures as fx

TINY_RUN = ["--init-channels", "4", "--layers", "3", "--batch-size", "4", "--epochs", "1",
            "--quiet", "--no-tensorboard", "--device", "cpu"]


@pytest.fixture
def imagenet16(tmp_path):
    root = tmp_path / "ImageNet16"
    return root, fx.write_imagenet16(root)


# --------------------------------------------------------------------------------------------
# imagenet16-120
# --------------------------------------------------------------------------------------------


def test_imagenet16_info_is_the_benchmarks():
    info = get_info("imagenet16-120")
    assert (info.in_channels, info.num_classes, info.image_size, info.hflip, info.crop_padding) == (3, 120, 16, True, 2)
    assert info.mean == pytest.approx((122.68 / 255, 116.66 / 255, 104.01 / 255))
    assert info.std == pytest.approx((63.22 / 255, 61.26 / 255, 65.09 / 255))
    steps = build_transform(info, train=True).transforms
    assert isinstance(steps[0], T.RandomCrop) and steps[0].size == (16, 16) and steps[0].padding == 2
    assert isinstance(steps[1], T.RandomHorizontalFlip)


@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_imagenet16_keeps_the_120_classes_with_their_pixels(tmp_path, protocol):
    root = tmp_path / "ImageNet16"
    written = fx.write_imagenet16(root, protocol=protocol)
    for split in ("train", "test"):
        dataset, info = load_dataset("imagenet16-120", root, split)
        images, labels = written[split]
        # Half the written images are of classes 121..1000 and are dropped.
        assert len(dataset) == len(labels) < (40 if split == "train" else 6)
        assert dataset.targets == labels
        for i in range(len(dataset)):
            image, label = dataset[i]
            assert image.mode == "RGB" and image.size == (16, 16)
            assert np.array_equal(np.asarray(image), images[i]) and label == labels[i]
    train, _ = load_dataset("imagenet16-120", root, "train")
    assert train.targets[:2] == [0, 119]  # labels 1 and 120, the subset's ends, shifted to 0-based


def test_imagenet16_search_and_retraining_loaders(imagenet16):
    root, written = imagenet16
    data = search_data("imagenet16-120", root, batch_size=4, seed=0)
    assert data.num_weight + data.num_arch == len(written["train"][1])
    x, y = next(iter(data.weight_loader))
    assert x.shape == (4, 3, 16, 16) and int(y.max()) < 120
    tt = train_test_data("imagenet16-120", root, batch_size=4)
    assert tt.num_test == len(written["test"][1])
    x, _ = next(iter(tt.test_loader))
    mean = torch.tensor(get_info("imagenet16-120").mean).view(1, 3, 1, 1)
    std = torch.tensor(get_info("imagenet16-120").std).view(1, 3, 1, 1)
    expected = torch.from_numpy(written["test"][0][:4]).permute(0, 3, 1, 2).float() / 255
    assert torch.allclose(x, (expected - mean) / std, atol=1e-6)  # the test split: normalised only


def test_imagenet16_runs_both_scripts(imagenet16, tmp_path):
    root, _ = imagenet16
    out = tmp_path / "search"
    assert search_main(["--dataset", "imagenet16-120", "--data", str(root), "--space", "nas-bench-201",
                        *TINY_RUN, "--steps-per-epoch", "2", "--out", str(out)]) == 0
    arch = json.loads((out / "genotype.json").read_text())["arch"]
    train = tmp_path / "train"
    assert train_main(["--dataset", "imagenet16-120", "--data", str(root), "--space", "nas-bench-201",
                       "--cell", arch, "--epochs", "1", "--batch-size", "4", "--quiet", "--no-tensorboard",
                       "--device", "cpu", "--out", str(train)]) == 0
    assert json.loads((train / "config.json").read_text())["config"]["dataset"] == "imagenet16-120"


class _Payload:
    """Unpickles as a call of os.system: what a malicious batch file would do."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class _Eval:
    def __reduce__(self):
        return (eval, ("__import__('os').getpid()",))


def test_a_malicious_imagenet16_file_is_refused_without_running_code(imagenet16, tmp_path, capsys):
    root, _ = imagenet16
    proof = tmp_path / "pwned"
    with open(root / "val_data", "wb") as f:
        pickle.dump({"data": np.zeros((1, 768), np.uint8), "labels": [1], "x": _Payload(f"touch {proof}")}, f)
    with pytest.raises(DataError, match=r"asks to load (posix|os)\.system.*refused without running it"):
        load_dataset("imagenet16-120", root, "test")
    assert not proof.exists()
    with open(root / "val_data", "wb") as f:
        pickle.dump({"data": _Eval(), "labels": [1]}, f)
    with pytest.raises(DataError, match="asks to load builtins.eval"):
        load_dataset("imagenet16-120", root, "test")
    # The one codec call Python 3's protocols 0-2 make (latin-1 bytes) is all _codecs.encode may do.
    payload = b"c_codecs\nencode\n(Vx\nVrot13\ntR."
    (root / "val_data").write_bytes(payload)
    with pytest.raises(DataError, match="not a readable ImageNet16 batch file .*only for a str as latin1"):
        load_dataset("imagenet16-120", root, "test")
    # and through the script: one line, exit code 2, nothing written
    with open(root / "val_data", "wb") as f:
        pickle.dump({"x": _Payload(f"touch {proof}")}, f)
    out = tmp_path / "run"
    assert train_main(["--dataset", "imagenet16-120", "--data", str(root), "--space", "nas-bench-201",
                       "--cell", "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|none~0|none~1|none~2|",
                       "--epochs", "1", "--quiet", "--device", "cpu", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "refused without running it" in err and err.count("\n") == 0
    assert not proof.exists()


@pytest.mark.parametrize("content, message", [
    ("truncated", r"not a readable ImageNet16 batch file \(.*\): download it again"),
    ({"data": np.zeros((2, 768), np.uint8)}, "not a dict with 'data' and 'labels'"),
    ({"data": np.zeros((2, 3072), np.uint8), "labels": [1, 2]}, r"'data' is \(2, 3072\), not uint8 rows of 768"),
    ({"data": np.zeros((2, 768), np.float32), "labels": [1, 2]}, "not uint8 rows"),
    ({"data": np.zeros((2, 768), np.uint8), "labels": ["a", "b"]}, "'labels' is not a list of integers"),
    ({"data": np.zeros((2, 768), np.uint8), "labels": [1]}, "2 images but 1 labels"),
    ({"data": np.zeros((2, 768), np.uint8), "labels": [0, 1]}, "labels outside 1..1000"),
], ids=["truncated", "no-labels", "cifar-rows", "float", "str-labels", "lengths", "zero-based"])
def test_bad_imagenet16_files_get_one_line(tmp_path, content, message):
    path = tmp_path / "val_data"
    if content == "truncated":
        good = pickle.dumps({"data": np.zeros((4, 768), np.uint8), "labels": [1] * 4}, protocol=2)
        path.write_bytes(good[: len(good) // 2])
    else:
        path.write_bytes(pickle.dumps(content, protocol=2))
    with pytest.raises(DataError, match=message) as caught:
        read_imagenet16_batch(path)
    assert "\n" not in str(caught.value)


def test_missing_imagenet16_files_name_the_layout(imagenet16, tmp_path):
    root, _ = imagenet16
    (root / "train_data_batch_7").unlink()
    with pytest.raises(DataError, match="incomplete \\(missing train_data_batch_7\\).*train_data_batch_1..10"):
        load_dataset("imagenet16-120", root, "train")
    with pytest.raises(DataError, match="does not exist.*train_data_batch_1..10 and val_data"):
        load_dataset("imagenet16-120", tmp_path / "nowhere", "train")


# --------------------------------------------------------------------------------------------
# cifar10-valid
# --------------------------------------------------------------------------------------------


@pytest.fixture
def cifar10(tmp_path, monkeypatch):
    from torchvision import datasets as tv_datasets

    written = fx.write_cifar10(tmp_path)  # 10 training images (2 per batch file), 4 test images
    fx.patch_cifar_md5(monkeypatch, tv_datasets.CIFAR10, tmp_path)
    return tmp_path, written


def test_cifar10_valid_splits_the_training_set_in_two_halves_by_index(cifar10):
    root, written = cifar10
    images, labels = written["train"]
    assert get_info("cifar10-valid") == get_info("cifar10").__class__(
        **{**get_info("cifar10").__dict__, "name": "cifar10-valid"})
    for split, span in (("train", range(0, 5)), ("test", range(5, 10))):
        dataset, _ = load_dataset("cifar10-valid", root, split)
        assert len(dataset) == 5
        for i, k in enumerate(span):
            image, label = dataset[i]
            assert np.array_equal(np.asarray(image), images[k]) and label == labels[k]


def test_cifar10_valid_follows_the_benchmarks_split_file_when_given(cifar10):
    root, written = cifar10
    images, labels = written["train"]
    (root / "cifar-split.txt").write_text(json.dumps({"train": ["int", [9, 0, 4]], "valid": ["int", [1, 8]]}))
    for split, picked in (("train", [9, 0, 4]), ("test", [1, 8])):
        dataset, _ = load_dataset("cifar10-valid", root, split)
        assert [int(dataset[i][1]) for i in range(len(dataset))] == [labels[k] for k in picked]
        assert all(np.array_equal(np.asarray(dataset[i][0]), images[k]) for i, k in enumerate(picked))
    (root / "cifar-split.txt").write_text(json.dumps({"train": ["int", [1, 2]], "valid": ["int", [2, 3]]}))
    with pytest.raises(DataError, match="the train and valid parts share images: copy cifar-split.txt"):
        load_dataset("cifar10-valid", root, "train")


def test_cifar10_valid_search_uses_the_halves_and_retraining_tests_on_the_second(cifar10):
    root, written = cifar10
    images, _ = written["train"]
    data = search_data("cifar10-valid", root, batch_size=2, seed=3)
    assert (data.num_weight, data.num_arch) == (5, 5)
    weight, arch = data.weight_loader.dataset, data.arch_eval_loader.dataset
    plain = lambda ds, i: np.asarray(ds.dataset[ds.indices[i]][0])  # noqa: E731  the untransformed image
    assert sorted(weight.indices) == [0, 1, 2, 3, 4] and sorted(arch.indices) == [5, 6, 7, 8, 9]
    assert all(np.array_equal(plain(weight, i), images[i]) for i in range(5))
    assert all(np.array_equal(plain(arch, i), images[5 + i]) for i in range(5))
    # the seed shuffles the batches, never what is in each half
    assert sorted(search_data("cifar10-valid", root, batch_size=2, seed=4).weight_loader.dataset.indices) == \
        [0, 1, 2, 3, 4]
    with pytest.raises(Exception, match="fixed halves.*drop --train-portion 0.3"):
        search_data("cifar10-valid", root, batch_size=2, train_portion=0.3)
    tt = train_test_data("cifar10-valid", root, batch_size=2)
    assert (tt.num_train, tt.num_test) == (5, 5)
    x, _ = next(iter(tt.test_loader))
    info = get_info("cifar10-valid")
    mean, std = torch.tensor(info.mean).view(1, 3, 1, 1), torch.tensor(info.std).view(1, 3, 1, 1)
    expected = torch.from_numpy(images[5:7]).permute(0, 3, 1, 2).float() / 255
    assert torch.allclose(x, (expected - mean) / std, atol=1e-6)
    # the two halves are other images than CIFAR-10's own test split
    assert data.split != search_data("cifar10", root, batch_size=2, seed=3).split


def test_cifar10_valid_runs_a_search(cifar10, tmp_path):
    root, _ = cifar10
    out = tmp_path / "search"
    assert search_main(["--dataset", "cifar10-valid", "--data", str(root), "--space", "nas-bench-201",
                        *TINY_RUN, "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["config"]["dataset"] == "cifar10-valid"
    assert "on cifar10-valid (5 weight / 5 architecture images" in (out / "log.txt").read_text()


# --------------------------------------------------------------------------------------------
# The x-valid / x-test halves of the CIFAR-100 and ImageNet16-120 test sets
# --------------------------------------------------------------------------------------------


def _split_file(path, xvalid, xtest):
    # AutoDL's config format: each entry is [type, value]
    path.write_text(json.dumps({"xvalid": ["int", xvalid], "xtest": ["int", xtest]}))


@pytest.fixture
def cifar100(tmp_path, monkeypatch):
    from torchvision import datasets as tv_datasets

    written = fx.write_cifar100(tmp_path, n_train=8, n_test=4)
    fx.patch_cifar_md5(monkeypatch, tv_datasets.CIFAR100, tmp_path)
    _split_file(tmp_path / "cifar100-test-split.txt", [1, 3], [0, 2])
    return tmp_path, written


def test_cifar100_halves_follow_the_split_file(cifar100):
    root, written = cifar100
    test_images, test_labels = written["test"]
    assert get_info("cifar100-xvalid").num_classes == 100 and get_info("cifar100-xtest").name == "cifar100-xtest"
    for name, picked in (("cifar100-xvalid", [1, 3]), ("cifar100-xtest", [0, 2])):
        train, _ = load_dataset(name, root, "train")
        assert len(train) == 8  # the whole training set
        test, _ = load_dataset(name, root, "test")
        assert len(test) == 2
        for i, k in enumerate(picked):
            image, label = test[i]
            assert np.array_equal(np.asarray(image), test_images[k]) and label == test_labels[k]
    # a search on cifar100-xvalid fits the weights on the training set and the alphas on x-valid,
    # as the benchmark's searches do; cifar100-xtest splits its training set as usual
    data = search_data("cifar100-xvalid", root, batch_size=2, seed=0)
    assert (data.num_weight, data.num_arch) == (8, 2)
    assert (search_data("cifar100-xtest", root, batch_size=2, seed=0).num_arch) == 4


def test_imagenet16_halves_follow_the_split_file(imagenet16):
    root, written = imagenet16
    images, labels = written["test"]  # the 3 val_data images of the 120 classes, in order
    _split_file(root / "imagenet-16-120-test-split.txt", [2], [0, 1])
    test, _ = load_dataset("imagenet16-120-xtest", root, "test")
    assert [test[i][1] for i in range(len(test))] == [labels[0], labels[1]]
    assert np.array_equal(np.asarray(load_dataset("imagenet16-120-xvalid", root, "test")[0][0][0]), images[2])


@pytest.mark.parametrize("content, message", [
    (None, "does not exist: the benchmark's xvalid/xtest parts are listed in it; copy cifar100-test-split.txt"),
    ("{'xvalid': [1]}", "is not a NAS-Bench-201 split file (JSONDecodeError"),
    (json.dumps({"xvalid": ["int", [1]]}), "holds no list of xtest indices"),
    (json.dumps({"xvalid": ["int", [1, 9]], "xtest": ["int", [0]]}), "fall outside the 4 images they split"),
    (json.dumps({"xvalid": [1, 2], "xtest": [2, 3]}), "the xvalid and xtest parts share images"),
])
def test_bad_split_files_get_one_line_naming_the_fix(cifar100, content, message):
    root, _ = cifar100
    path = root / "cifar100-test-split.txt"
    if content is None:
        path.unlink()
    else:
        path.write_text(content)
    with pytest.raises(DataError) as exc:
        load_dataset("cifar100-xvalid", root, "test")
    assert message in str(exc.value) and "\n" not in str(exc.value), str(exc.value)


def test_cifar100_halves_run_both_scripts(cifar100, tmp_path):
    root, _ = cifar100
    out = tmp_path / "search"
    assert search_main(["--dataset", "cifar100-xvalid", "--data", str(root), "--space", "nas-bench-201",
                        "--init-channels", "4", "--layers", "3", "--batch-size", "2", "--epochs", "1",
                        "--steps-per-epoch", "1", "--quiet", "--no-tensorboard", "--device", "cpu",
                        "--out", str(out)]) == 0
    arch = json.loads((out / "genotype.json").read_text())["arch"]
    train = tmp_path / "train"
    assert train_main(["--dataset", "cifar100-xtest", "--data", str(root), "--space", "nas-bench-201",
                       "--cell", arch, "--epochs", "1", "--batch-size", "4", "--init-channels", "4", "--layers", "3",
                       "--quiet", "--no-tensorboard", "--device", "cpu", "--out", str(train)]) == 0
    assert json.loads((train / "config.json").read_text())["config"]["dataset"] == "cifar100-xtest"
