"""Tests of darts_nas.data on tiny datasets written to disk in their real formats."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import datasets as tv_datasets
from torchvision import transforms as T

from darts_nas import data
from darts_nas.data import (
    DATASETS,
    Cutout,
    DatasetInfo,
    InfiniteLoader,
    build_transform,
    get_info,
    load_dataset,
    search_data,
    split_indices,
    train_test_data,
)
from darts_nas.errors import ConfigError, DataError

try:
    import datasets_fixtures as fx
except ImportError:  # tests/ imported as a package
    from tests import datasets_fixtures as fx


def _tensor_of(image) -> torch.Tensor:
    return T.ToTensor()(image)


# --------------------------------------------------------------------------------------------
# Fixtures: one tiny dataset of each kind, in the real on-disk format
# --------------------------------------------------------------------------------------------


@pytest.fixture
def cifar10(tmp_path, monkeypatch):
    written = fx.write_cifar10(tmp_path)
    fx.patch_cifar_md5(monkeypatch, tv_datasets.CIFAR10, tmp_path)
    return tmp_path, written


@pytest.fixture
def imagenet(tmp_path):
    root = tmp_path / "ilsvrc"
    fx.write_imagenet(root)
    return root


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "imgs"
    fx.write_image_folder(root / "train", per_class=5)
    fx.write_image_folder(root / "val", per_class=2, seed=1)
    return root


# --------------------------------------------------------------------------------------------
# Registry and import hygiene
# --------------------------------------------------------------------------------------------


def test_registry_lists_every_dataset():
    assert set(DATASETS.names()) == {
        "cifar10", "cifar100", "mnist", "fashion-mnist", "svhn", "folder", "digits", "imagenet", "imagenet16-120",
        "cifar10-valid", "cifar100-xvalid", "cifar100-xtest", "imagenet16-120-xvalid", "imagenet16-120-xtest",
    }
    with pytest.raises(ConfigError, match="cifar10.*digits|digits.*cifar10"):
        get_info("imagenet-22k")


def test_import_loads_nothing():
    code = "import sys, darts_nas.data; assert 'sklearn' not in sys.modules, 'sklearn imported at import time'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


@pytest.mark.parametrize(
    "name, channels, classes, size, hflip, padding",
    [
        ("cifar10", 3, 10, 32, True, 4),
        ("cifar100", 3, 100, 32, True, 4),
        ("mnist", 1, 10, 28, False, 3),
        ("fashion-mnist", 1, 10, 28, True, 3),
        ("svhn", 3, 10, 32, False, 4),
        ("digits", 1, 10, 8, False, 1),
    ],
)
def test_static_info(name, channels, classes, size, hflip, padding):
    info = get_info(name)
    assert (info.name, info.in_channels, info.num_classes, info.image_size) == (name, channels, classes, size)
    assert (info.hflip, info.crop_padding) == (hflip, padding)
    assert len(info.mean) == len(info.std) == channels
    assert not info.resize and info.augment == "crop"
    assert get_info(name, root=None) == info


def test_unknown_augmentation():
    with pytest.raises(ConfigError, match="crop, imagenet"):
        DatasetInfo("t", 3, 10, 4, (0.5,) * 3, (0.5,) * 3, hflip=True, crop_padding=1, augment="autoaugment")


def test_image_size_only_for_folder():
    assert get_info("cifar10", image_size=32).image_size == 32
    with pytest.raises(ConfigError, match="folder"):
        get_info("cifar10", image_size=64)


# --------------------------------------------------------------------------------------------
# Each dataset, read from its real on-disk format
# --------------------------------------------------------------------------------------------


def test_cifar10_reads_pixels_and_labels(cifar10):
    root, written = cifar10
    for split in ("train", "test"):
        ds, info = load_dataset("cifar10", root, split)
        images, labels = written[split]
        assert len(ds) == len(labels)
        for i in range(len(ds)):
            image, label = ds[i]
            assert label == labels[i]
            np.testing.assert_array_equal(np.asarray(image), images[i])
    assert (info.in_channels, info.num_classes) == (3, 10)
    ds, _ = load_dataset("cifar10", root, "train", transform=build_transform(info, train=True))
    assert ds[0][0].shape == (3, 32, 32)


def test_cifar100_uses_fine_labels(tmp_path, monkeypatch):
    written = fx.write_cifar100(tmp_path)
    fx.patch_cifar_md5(monkeypatch, tv_datasets.CIFAR100, tmp_path)
    ds, info = load_dataset("cifar100", tmp_path, "test", transform=build_transform(get_info("cifar100"), False))
    assert info.num_classes == 100
    assert [ds[i][1] for i in range(len(ds))] == written["test"][1]
    assert ds[0][0].shape == (3, 32, 32)
    train, _ = load_dataset("cifar100", tmp_path, "train")
    np.testing.assert_array_equal(np.asarray(train[3][0]), written["train"][0][3])


@pytest.mark.parametrize("name, folder_name", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_mnist_family_reads_idx_files(tmp_path, name, folder_name):
    written = fx.write_mnist(tmp_path, folder_name)
    for split in ("train", "test"):
        ds, info = load_dataset(name, tmp_path, split)
        images, labels = written[split]
        assert [ds[i][1] for i in range(len(ds))] == labels
        image = ds[1][0]
        assert image.mode == "L"
        np.testing.assert_array_equal(np.asarray(image), images[1])
    ds, _ = load_dataset(name, tmp_path, "train", transform=build_transform(info, train=True))
    assert ds[0][0].shape == (1, 28, 28)


def test_svhn_reads_mat_files_and_maps_10_to_0(tmp_path, monkeypatch):
    written = fx.write_svhn(tmp_path)
    fx.patch_svhn_md5(monkeypatch, tv_datasets.SVHN, tmp_path)
    ds, info = load_dataset("svhn", tmp_path, "train")
    images, labels = written["train"]
    assert [ds[i][1] for i in range(len(ds))] == labels
    assert 0 in labels and 10 not in labels
    np.testing.assert_array_equal(np.asarray(ds[2][0]), images[2])
    test, _ = load_dataset("svhn", tmp_path, "test", transform=build_transform(info, train=False))
    assert len(test) == 4 and test[0][0].shape == (3, 32, 32)


def test_digits_fixed_split():
    train, info = load_dataset("digits", None, "train")
    test, _ = load_dataset("digits", None, "test")
    assert (len(train), len(test)) == (1497, 300)
    image, label = test[1]
    assert image.mode == "L" and image.size == (8, 8) and isinstance(label, int)
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # test item 1 is image 6; its pixels are the 0..16 values scaled to 0..255
    np.testing.assert_allclose(np.asarray(image, dtype=np.float64), bunch.images[6] * 255 / 16, atol=0.5)
    assert label == bunch.target[6]
    x = torch.stack([_tensor_of(train[i][0]) for i in range(len(train))])
    assert x.shape == (1497, 1, 8, 8)
    # the hard-coded statistics are those of the train split
    assert x.mean().item() == pytest.approx(info.mean[0], abs=1e-3)
    assert x.std().item() == pytest.approx(info.std[0], abs=1e-3)
    ds, _ = load_dataset("digits", None, "train", transform=build_transform(info, train=True))
    assert ds[0][0].shape == (1, 8, 8)


def test_folder_dataset(folder):
    (folder / "train" / ".ipynb_checkpoints").mkdir()  # hidden folders are not classes
    info = get_info("folder", folder, image_size=16)
    assert (info.in_channels, info.num_classes, info.image_size, info.crop_padding) == (3, 2, 16, 2)
    assert info.resize and info.hflip
    train, info2 = load_dataset("folder", folder, "train", image_size=16, transform=build_transform(info, True))
    assert info2 == info
    assert len(train) == 10  # README.txt is ignored
    assert sorted(set(train.targets)) == [0, 1]
    for i in range(len(train)):  # grayscale, RGBA, palette and 15x13 images all come out RGB 16x16
        assert train[i][0].shape == (3, 16, 16)
    test, _ = load_dataset("folder", folder, "test", image_size=16, transform=build_transform(info, False))
    assert len(test) == 4 and test[0][0].shape == (3, 16, 16)
    assert test.class_to_idx == train.class_to_idx
    assert get_info("folder", folder).image_size == 32  # default size


def test_folder_without_train_dir_is_all_train(tmp_path):
    fx.write_image_folder(tmp_path, classes=("a", "b", "c"), per_class=2)
    ds, info = load_dataset("folder", tmp_path, "train")
    assert info.num_classes == 3 and len(ds) == 6
    with pytest.raises(DataError, match="val"):
        load_dataset("folder", tmp_path, "test")


def test_folder_test_split_under_test_dir(tmp_path):
    fx.write_image_folder(tmp_path / "train", per_class=2)
    fx.write_image_folder(tmp_path / "test", classes=("cat",), per_class=1)
    ds, _ = load_dataset("folder", tmp_path, "test")
    assert len(ds) == 1 and ds.targets == [0]


def test_imagenet_info_without_root_reads_no_files(monkeypatch):
    def no_disk(*args, **kwargs):
        raise AssertionError("get_info touched the disk")

    monkeypatch.setattr(data, "_class_dirs", no_disk)
    monkeypatch.setattr(data, "_check_root", no_disk)
    info = get_info("imagenet")
    assert (info.in_channels, info.num_classes, info.image_size) == (3, 1000, 224)
    assert (info.mean, info.std) == (data.IMAGENET_MEAN, data.IMAGENET_STD)
    assert info.hflip and info.augment == "imagenet"
    assert get_info("imagenet", root=None, image_size=64).image_size == 64


def test_imagenet_dataset(imagenet):
    (imagenet / "train" / ".cache").mkdir()  # hidden folders are not classes
    info = get_info("imagenet", imagenet, image_size=32)
    assert (info.in_channels, info.num_classes, info.image_size, info.augment) == (3, 3, 32, "imagenet")
    assert get_info("imagenet", imagenet).image_size == 224  # default size
    train, info2 = load_dataset("imagenet", imagenet, "train", image_size=32, transform=build_transform(info, True))
    assert info2 == info
    assert len(train) == 9  # LOC_synset_mapping.txt is ignored
    assert train.classes == ["n01440764", "n01443537", "n01484850"]
    assert sorted(set(train.targets)) == [0, 1, 2]
    torch.manual_seed(0)
    for i in range(len(train)):  # odd-sized RGB and grayscale JPEGs all come out RGB 32x32
        assert train[i][0].shape == (3, 32, 32)
    test, _ = load_dataset("imagenet", imagenet, "test", image_size=32, transform=build_transform(info, False))
    assert len(test) == 9 and test[0][0].shape == (3, 32, 32)
    assert test.class_to_idx == train.class_to_idx


def test_imagenet_val_uses_train_class_indices(tmp_path):
    root = tmp_path / "ilsvrc"
    fx.write_imagenet(root, splits=("train",))
    fx.write_imagenet(root, classes=("n01484850",), per_class=2, splits=("val",), seed=1)  # only the third class
    test, info = load_dataset("imagenet", root, "test")
    assert info.num_classes == 3  # counted from train/
    assert test.targets == [2, 2]
    fx.write_imagenet(root / "extra", classes=("n99999999",), per_class=1, splits=("val",))
    (root / "extra" / "val" / "n99999999").rename(root / "val" / "n99999999")
    with pytest.raises(DataError, match="n99999999"):
        load_dataset("imagenet", root, "test")


def test_imagenet_transforms(imagenet):
    steps = lambda t: [type(s).__name__ for s in t.transforms]  # noqa: E731
    info = get_info("imagenet", imagenet, image_size=32)
    train = build_transform(info, train=True)
    assert steps(train) == ["RandomResizedCrop", "RandomHorizontalFlip", "ColorJitter", "ToTensor", "Normalize"]
    assert train.transforms[0].size == (32, 32)
    jitter = train.transforms[2]
    assert (jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue) == (
        (0.6, 1.4), (0.6, 1.4), (0.6, 1.4), (-0.2, 0.2)
    )
    test = build_transform(info, train=False)
    assert steps(test) == ["Resize", "CenterCrop", "ToTensor", "Normalize"]
    assert test.transforms[0].size == 37 and test.transforms[1].size == (32, 32)  # round(32 * 256 / 224)
    full = build_transform(get_info("imagenet"), train=False)
    assert full.transforms[0].size == 256 and full.transforms[1].size == (224, 224)
    assert steps(build_transform(info, True, cutout=8))[-1] == "Cutout"
    assert "Cutout" not in steps(build_transform(info, False, cutout=8))
    image = Image.new("RGB", (41, 37))
    assert test(image).shape == train(image).shape == (3, 32, 32)


def test_imagenet_test_transform_is_deterministic(imagenet):
    info = get_info("imagenet", imagenet, image_size=32)
    test, _ = load_dataset("imagenet", imagenet, "test", image_size=32, transform=build_transform(info, False))
    assert torch.equal(test[4][0], test[4][0])


def test_imagenet_missing_layout(tmp_path, imagenet):
    layout = r"<root>/train/<class>/\*\.JPEG and <root>/val/<class>/\*\.JPEG"
    with pytest.raises(DataError, match=f"does not exist.*{layout}"):
        get_info("imagenet", tmp_path / "nope")
    with pytest.raises(DataError, match=f"does not exist.*{layout}"):
        load_dataset("imagenet", tmp_path / "nope", "train")
    with pytest.raises(ConfigError, match="--data"):
        load_dataset("imagenet", None, "train")
    no_train = tmp_path / "no_train"
    fx.write_imagenet(no_train, splits=("val",))
    with pytest.raises(DataError, match=f"training images not found.*train.*{layout}"):
        get_info("imagenet", no_train)
    with pytest.raises(DataError, match=f"training images not found.*{layout}"):
        load_dataset("imagenet", no_train, "test")
    for item in (imagenet / "val").iterdir():  # only the split's own error remains
        if item.is_dir():
            for f in item.iterdir():
                f.unlink()
            item.rmdir()
        else:
            item.unlink()
    (imagenet / "val" / "ILSVRC2012_val_00000001.JPEG").write_bytes(b"")  # the archive's flat val/
    with pytest.raises(DataError, match=f"no class subfolders.*val.*{layout}"):
        load_dataset("imagenet", imagenet, "test")
    (imagenet / "val" / "ILSVRC2012_val_00000001.JPEG").unlink()
    (imagenet / "val").rmdir()
    ds, _ = load_dataset("imagenet", imagenet, "train")  # train alone still works
    assert len(ds) == 9
    with pytest.raises(DataError, match=f"validation images not found.*val.*{layout}") as caught:
        load_dataset("imagenet", imagenet, "test")
    assert str(caught.value).count(". ") == 0  # one sentence
    with pytest.raises(DataError, match=layout):
        train_test_data("imagenet", imagenet, batch_size=2)


# --------------------------------------------------------------------------------------------
# Errors a user can cause: the right type and a message that says what to do
# --------------------------------------------------------------------------------------------


def test_missing_root(tmp_path):
    with pytest.raises(DataError, match="does not exist.*--data"):
        load_dataset("cifar10", tmp_path / "nope", "train")
    with pytest.raises(DataError, match="--data"):
        get_info("folder", tmp_path / "nope")
    with pytest.raises(ConfigError, match="--data"):
        get_info("folder", None)
    with pytest.raises(DataError, match="does not exist"):  # nothing to download for a folder
        load_dataset("folder", tmp_path / "nope", "train", download=True)
    assert not (tmp_path / "nope").exists()


@pytest.mark.parametrize(
    "name, expected",
    [
        ("cifar10", "cifar-10-batches-py"),
        ("cifar100", "cifar-100-python"),
        ("mnist", "MNIST"),
        ("fashion-mnist", "FashionMNIST"),
        ("svhn", "train_32x32.mat"),
    ],
)
def test_missing_files_say_how_to_get_them(tmp_path, name, expected):
    with pytest.raises(DataError, match=f"not found under .*{expected}.*--download"):
        load_dataset(name, tmp_path, "train")


def test_incomplete_and_corrupt_cifar(cifar10):
    root, _ = cifar10
    folder = root / "cifar-10-batches-py"
    original = (folder / "test_batch").read_bytes()
    (folder / "test_batch").write_bytes(original[:-10])  # truncated: md5 no longer matches
    with pytest.raises(DataError, match="corrupted.*--download"):  # not torchvision's RuntimeError
        load_dataset("cifar10", root, "train")
    (folder / "test_batch").unlink()
    with pytest.raises(DataError, match="missing test_batch.*--download"):
        load_dataset("cifar10", root, "train")


def test_corrupt_mnist_file(tmp_path):
    fx.write_mnist(tmp_path)
    (tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08")
    with pytest.raises(DataError, match="corrupted"):
        load_dataset("mnist", tmp_path, "train")


def test_junk_legacy_mnist_processed_files(tmp_path):
    processed = tmp_path / "MNIST" / "processed"
    processed.mkdir(parents=True)
    for name in ("training.pt", "test.pt"):
        (processed / name).write_bytes(b"junk")  # too short for torch.load: struct.error
    with pytest.raises(DataError, match="corrupted"):
        load_dataset("mnist", tmp_path, "train")


def test_folder_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no class subfolders"):
        load_dataset("folder", empty, "train")

    only_text = tmp_path / "only_text"
    for c in ("a", "b"):
        (only_text / c).mkdir(parents=True)
        (only_text / c / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="no image files"):
        load_dataset("folder", only_text, "train")

    lonely = tmp_path / "lonely"
    fx.write_image_folder(lonely, classes=("full",), per_class=2)
    (lonely / "hollow").mkdir()
    with pytest.raises(DataError, match="hollow.*no images"):
        load_dataset("folder", lonely, "train")

    single = tmp_path / "single"  # --data one level above the class folders
    fx.write_image_folder(single / "images", classes=("cat", "dog"), per_class=2)
    with pytest.raises(DataError, match=r"single class subfolder \(images\).*--data.*single/images"):
        load_dataset("folder", single, "train")


def test_folder_val_with_unknown_class(folder):
    fx.write_image_folder(folder / "val", classes=("zebra",), per_class=1)
    with pytest.raises(DataError, match="zebra"):
        load_dataset("folder", folder, "test")


def test_corrupt_image_named_when_met(folder):
    bad = folder / "train" / "dog" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    ds, _ = load_dataset("folder", folder, "train")
    index = [p for p, _ in ds.samples].index(str(bad))
    ds[0]  # a good image still loads
    with pytest.raises(DataError, match="broken.png"):
        ds[index]


def test_a_decompression_bomb_is_named_too_large_not_corrupt(folder, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # a 20x20 image is then a "bomb" (over 2 x 100 pixels)
    ds, _ = load_dataset("folder", folder, "train")
    with pytest.raises(DataError, match=r"is too large to decode safely \(Image size \(400 pixels\) exceeds limit"):
        ds[0]


def test_symlink_loops_in_a_folder_dataset_are_walked_once(folder):
    plain = len(load_dataset("folder", folder, "train")[0])
    (folder / "train" / "cat" / "up").symlink_to("..")  # a loop, and the other classes
    (folder / "train" / "dog" / "self").symlink_to(".")
    (folder / "train" / "dog" / "again").symlink_to(folder / "train" / "dog")
    ds, _ = load_dataset("folder", folder, "train")
    assert len(ds) == plain
    assert all("/up/" not in p and "/self/" not in p and "/again/" not in p for p, _ in ds.samples)


def test_a_corrupt_image_met_by_a_worker_is_one_line(tmp_path, capsys):
    from darts_nas.cli import search_main

    images = fx.write_image_folder(tmp_path / "images", classes=("a", "b", "c"), per_class=10)
    for path in images:
        path.write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    code = search_main(["--dataset", "folder", "--data", str(tmp_path / "images"), "--image-size", "15",
                        "--batch-size", "4", "--layers", "3", "--init-channels", "4", "--nodes", "2",
                        "--epochs", "1", "--steps-per-epoch", "1", "--workers", "1", "--quiet",
                        "--no-tensorboard", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: cannot read image file ") and "\n" not in err, err


# --------------------------------------------------------------------------------------------
# Transforms
# --------------------------------------------------------------------------------------------


def test_test_transform_normalises():
    info = DatasetInfo("t", 3, 10, 4, (0.5, 0.25, 0.0), (0.5, 0.25, 1.0), hflip=True, crop_padding=1)
    pixels = np.arange(48, dtype=np.uint8).reshape(4, 4, 3) * 5
    out = build_transform(info, train=False)(Image.fromarray(pixels))
    expected = torch.from_numpy(pixels).permute(2, 0, 1).float() / 255
    expected = (expected - torch.tensor(info.mean)[:, None, None]) / torch.tensor(info.std)[:, None, None]
    torch.testing.assert_close(out, expected)


def test_train_transform_steps():
    steps = lambda t: [type(s).__name__ for s in t.transforms]  # noqa: E731
    assert steps(build_transform(get_info("cifar10"), True)) == [
        "RandomCrop",
        "RandomHorizontalFlip",
        "ToTensor",
        "Normalize",
    ]
    assert "RandomHorizontalFlip" not in steps(build_transform(get_info("mnist"), True))
    assert steps(build_transform(get_info("cifar10"), True, cutout=16))[-1] == "Cutout"
    assert steps(build_transform(get_info("cifar10"), False, cutout=16)) == ["ToTensor", "Normalize"]
    crop = build_transform(get_info("cifar10"), True).transforms[0]
    assert crop.padding == 4 and crop.size == (32, 32)


def test_folder_transform_resizes_first(folder):
    info = get_info("folder", folder, image_size=12)
    for train in (True, False):
        t = build_transform(info, train)
        assert type(t.transforms[0]).__name__ == "Resize"
        assert t(Image.new("RGB", (15, 13))).shape == (3, 12, 12)


def test_train_transform_is_seeded_by_torch():
    info = get_info("cifar10")
    t = build_transform(info, train=True, cutout=8)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    torch.manual_seed(3)
    a = t(image)
    torch.manual_seed(3)
    b = t(image)
    torch.manual_seed(4)
    c = t(image)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_cutout_zeros_one_square():
    torch.manual_seed(0)
    cut = Cutout(4)
    seen_full = False
    for _ in range(50):
        x = torch.rand(3, 12, 12) + 1  # no zeros to begin with
        y = cut(x)
        assert torch.count_nonzero(x == 0) == 0  # input untouched
        zero = y == 0
        assert torch.equal(zero[0], zero[1]) and torch.equal(zero[0], zero[2])  # same square in every channel
        rows = zero[0].any(1).nonzero().flatten()
        cols = zero[0].any(0).nonzero().flatten()
        # a single axis-aligned rectangle, at most 4x4 (clipped at the border), and nothing else changed
        assert 1 <= len(rows) <= 4 and 1 <= len(cols) <= 4
        assert zero[0].sum() == len(rows) * len(cols)
        assert rows[-1] - rows[0] + 1 == len(rows) and cols[-1] - cols[0] + 1 == len(cols)
        assert torch.equal(y[~zero], x[~zero])
        seen_full |= zero[0].sum().item() == 16
    assert seen_full
    with pytest.raises(ConfigError):
        Cutout(0)


# --------------------------------------------------------------------------------------------
# The weight / architecture split
# --------------------------------------------------------------------------------------------


def test_split_indices_partition_and_seed():
    w, a = split_indices(101, 0.5, seed=7)
    assert len(w) == 50 and len(a) == 51
    assert set(w).isdisjoint(a) and sorted(w + a) == list(range(101))
    assert split_indices(101, 0.5, seed=7) == (w, a)
    assert split_indices(101, 0.5, seed=8) != (w, a)
    w3, a3 = split_indices(100, 0.29, seed=0)
    assert (len(w3), len(a3)) == (29, 71)


@pytest.mark.parametrize("portion", [0, 1, 1.5, -0.2])
def test_split_indices_rejects_bad_portion(portion):
    with pytest.raises(ConfigError, match="train.portion"):
        split_indices(10, portion, seed=0)


def test_split_indices_too_small():
    with pytest.raises(DataError, match="too small"):
        split_indices(1, 0.5, seed=0)
    with pytest.raises(DataError, match="too small"):
        split_indices(10, 0.01, seed=0)


# --------------------------------------------------------------------------------------------
# Loaders
# --------------------------------------------------------------------------------------------


def _labels(batches) -> list[int]:
    return [int(v) for _, y in batches for v in y]


def test_infinite_loader_crosses_passes():
    dataset = torch.utils.data.TensorDataset(torch.arange(10).float()[:, None], torch.arange(10))

    def make(seed):
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(seed)
        )
        return InfiniteLoader(loader)

    it = make(0)
    assert iter(it) is it
    batches = [next(it) for _ in range(9)]  # 3 batches a pass: 3 full passes
    assert it.passes == 2  # the third pass is still open
    labels = _labels(batches)
    for p in range(3):
        assert sorted(labels[10 * p : 10 * (p + 1)]) == list(range(10))
    assert labels[:10] != labels[10:20]  # every pass is reshuffled
    again, other = make(0), make(1)
    assert _labels(next(again) for _ in range(9)) == labels
    assert _labels(next(other) for _ in range(9)) != labels


def test_search_data_on_cifar10(cifar10):
    root, _ = cifar10
    sd = search_data("cifar10", root, batch_size=2, seed=0)
    assert (sd.num_weight, sd.num_arch) == (5, 5)
    assert sd.info.num_classes == 10
    assert not sd.weight_loader.pin_memory
    x, y = next(iter(sd.weight_loader))
    assert x.shape == (2, 3, 32, 32) and y.shape == (2,)
    # 5 images in batches of 2 would end with a batch of one, which BatchNorm cannot train on:
    # that batch alone is dropped. With batch 3 the short batch of 2 is kept.
    assert len(list(sd.weight_loader)) == 2
    assert len(list(search_data("cifar10", root, batch_size=3, seed=0).weight_loader)) == 2
    for _ in range(7):  # 2 full batches a pass: crosses three passes
        x, y = next(sd.arch_loader)
        assert x.shape == (2, 3, 32, 32)
    assert sd.arch_loader.passes == 3


def test_search_data_halves_come_from_the_seeded_split():
    sd = search_data("digits", None, batch_size=32, train_portion=0.5, seed=5)
    w, a = split_indices(1497, 0.5, seed=5)
    assert sd.weight_loader.dataset.indices == w
    assert sd.arch_loader.loader.dataset.indices == a
    assert (sd.num_weight, sd.num_arch) == (748, 749)
    for loader in (sd.weight_loader, sd.arch_loader.loader):  # search-time augmentation, no cutout
        assert [type(t).__name__ for t in loader.dataset.transform.transforms] == [
            "RandomCrop",
            "ToTensor",
            "Normalize",
        ]
    # each loader owns a generator, seeded differently
    assert sd.weight_loader.generator.initial_seed() != sd.arch_loader.loader.generator.initial_seed()


def test_arch_eval_loader_reads_the_arch_half_in_order_without_augmentation():
    sd = search_data("digits", None, batch_size=100, seed=2)
    _, a = split_indices(1497, 0.5, seed=2)
    plain, info = load_dataset("digits", None, "train", transform=build_transform(get_info("digits"), train=False))
    first = [(x, y) for x, y in sd.arch_eval_loader]
    assert torch.cat([y for _, y in first]).tolist() == [plain.targets[i] for i in a]
    assert torch.equal(first[0][0][3], plain[a[3]][0])  # test transform: no crop or noise
    assert torch.equal(torch.cat([x for x, _ in sd.arch_eval_loader]), torch.cat([x for x, _ in first]))
    assert not sd.arch_eval_loader.drop_last


def test_search_data_reproducible():
    def run(seed):
        torch.manual_seed(123)  # augmentation in the main process uses the global RNG
        sd = search_data("digits", None, batch_size=256, seed=seed)
        batches = iter(sd.weight_loader)
        weight = [torch.cat([x.flatten(), y.float()]) for x, y in (next(batches) for _ in range(2))]
        arch = [next(sd.arch_loader) for _ in range(5)]  # 2 batches a pass: crosses passes
        return torch.cat(weight), torch.cat([torch.cat([x.flatten(), y.float()]) for x, y in arch])

    w1, a1 = run(0)
    w2, a2 = run(0)
    w3, a3 = run(1)
    assert torch.equal(w1, w2) and torch.equal(a1, a2)
    assert not torch.equal(w1, w3) and not torch.equal(a1, a3)


def test_search_data_with_workers_is_reproducible():
    def run():
        sd = search_data("digits", None, batch_size=400, seed=0, workers=1)
        assert sd.weight_loader.persistent_workers
        return torch.cat([next(sd.arch_loader)[0] for _ in range(3)])

    assert torch.equal(run(), run())  # augmentation in the worker is seeded from the loader


def test_search_data_too_few_images(cifar10):
    root, _ = cifar10
    with pytest.raises(DataError, match="5 images.*needs 6.*--batch-size"):
        search_data("cifar10", root, batch_size=6)


def test_search_data_bad_settings():
    with pytest.raises(ConfigError, match="--batch-size"):
        search_data("digits", None, batch_size=0)
    with pytest.raises(ConfigError, match="train.portion"):
        search_data("digits", None, batch_size=8, train_portion=1.5)
    with pytest.raises(ConfigError, match="valid datasets"):
        search_data("cifar11", None, batch_size=8)


def test_search_data_on_folder(folder):
    sd = search_data("folder", folder, batch_size=4, image_size=16)
    assert sd.num_weight + sd.num_arch == 10
    x, y = next(sd.arch_loader)
    assert x.shape == (4, 3, 16, 16) and int(y.max()) < 2


def test_train_test_data():
    tt = train_test_data("digits", None, batch_size=100, seed=0, cutout=4)
    assert (tt.num_train, tt.num_test) == (1497, 300)
    x, y = next(iter(tt.train_loader))
    assert x.shape == (100, 1, 8, 8)
    assert any(type(s).__name__ == "Cutout" for s in tt.train_loader.dataset.transform.transforms)
    # the test loader keeps the dataset's order and applies no augmentation
    test_labels = torch.cat([y for _, y in tt.test_loader]).tolist()
    assert test_labels == tt.test_loader.dataset.targets
    a = torch.cat([x for x, _ in tt.test_loader])
    b = torch.cat([x for x, _ in tt.test_loader])
    assert torch.equal(a, b)


def test_train_test_data_on_imagenet(imagenet):
    tt = train_test_data("imagenet", imagenet, batch_size=4, image_size=32, cutout=8)
    assert (tt.num_train, tt.num_test, tt.info.num_classes) == (9, 9, 3)
    x, y = next(iter(tt.train_loader))
    assert x.shape == (4, 3, 32, 32) and int(y.max()) < 3
    assert [type(s).__name__ for s in tt.train_loader.dataset.transform.transforms][0] == "RandomResizedCrop"
    assert tt.train_loader.dataset.transform.transforms[-1].length == 8
    assert [type(s).__name__ for s in tt.test_loader.dataset.transform.transforms][:2] == ["Resize", "CenterCrop"]
    a = torch.cat([x for x, _ in tt.test_loader])
    assert a.shape == (9, 3, 32, 32)
    assert torch.equal(a, torch.cat([x for x, _ in tt.test_loader]))
    assert torch.cat([y for _, y in tt.test_loader]).tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_train_test_data_needs_a_test_split(tmp_path):
    fx.write_image_folder(tmp_path, per_class=2)
    with pytest.raises(DataError, match="val"):
        train_test_data("folder", tmp_path, batch_size=2)


def test_pin_memory_only_for_cuda():
    loader = data._make_loader(torch.utils.data.TensorDataset(torch.zeros(4)), 2, False, 0, 0, "cuda")
    assert loader.pin_memory
    loader = data._make_loader(torch.utils.data.TensorDataset(torch.zeros(4)), 2, False, 0, 0, "cpu")
    assert not loader.pin_memory


def test_each_epoch_has_its_own_reproducible_order():
    from darts_nas.data import set_epoch

    sd = search_data("digits", None, batch_size=64, seed=0)
    first = [y.tolist() for _, y in sd.weight_loader]
    set_epoch(sd.weight_loader, 1)
    second = [y.tolist() for _, y in sd.weight_loader]
    set_epoch(sd.weight_loader, 0)
    again = [y.tolist() for _, y in sd.weight_loader]
    assert first != second and first == again


def test_infinite_loader_resumes_mid_pass_without_loading_the_skipped_batches():
    def labels(loader, n):
        return [next(loader)[1].tolist() for _ in range(n)]

    uninterrupted = search_data("digits", None, batch_size=64, seed=0).arch_loader
    expected = labels(uninterrupted, 30)  # 11 full batches a pass: crosses two pass boundaries
    first = search_data("digits", None, batch_size=64, seed=0).arch_loader
    head = labels(first, 17)
    state = first.state_dict()
    assert state == {"passes": 1, "position": 6}
    resumed = search_data("digits", None, batch_size=64, seed=0).arch_loader
    resumed.load_state_dict(state)
    assert head + labels(resumed, 13) == expected


def test_stratified_folds_partition_stratify_and_follow_the_seed():
    from darts_nas.data import stratified_folds

    labels = [0] * 10 + [1] * 7 + [2] * 3 + [0] * 3  # classes of 13, 7 and 3 images, not contiguous
    folds = stratified_folds(labels, 4, seed=5)
    assert sorted(i for fold in folds for i in fold) == list(range(len(labels)))  # a partition
    sizes = [len(f) for f in folds]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == 23
    for c in (0, 1, 2):
        counts = [sum(labels[i] == c for i in fold) for fold in folds]
        assert max(counts) - min(counts) <= 1, (c, counts)  # 13 -> 4,3,3,3; 7 -> 2,2,2,1 in some order
    assert stratified_folds(labels, 4, seed=5) == folds
    assert stratified_folds(labels, 4, seed=6) != folds
    with pytest.raises(ConfigError, match="--folds"):
        stratified_folds(labels, 1, seed=0)
    with pytest.raises(DataError, match="fewer folds"):
        stratified_folds([0, 1], 3, seed=0)
