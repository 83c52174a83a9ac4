"""Tiny datasets written to disk in the real on-disk formats torchvision reads.

Each writer puts a few images under ``root`` exactly where torchvision looks for them and returns
what it wrote, so a test can compare what the loader gives back. torchvision checks the md5 sums
of the CIFAR and SVHN files against those of the real downloads; ``patch_*_md5`` set the class
attributes to the sums of the files written here (through pytest's monkeypatch, so they are
restored after the test).
"""

from __future__ import annotations

import hashlib
import pickle
import struct
from pathlib import Path

import numpy as np
from PIL import Image


def md5_of(path: Path) -> str:
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def _pickle(path: Path, obj: dict) -> None:
    # The real files are Python 2 pickles whose str keys torchvision reads back (encoding="latin1")
    # as Python 3 str; pickling str keys gives the loader exactly the same dictionaries.
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def _images(rng: np.random.Generator, n: int, shape: tuple[int, ...]) -> np.ndarray:
    return rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)


# --- CIFAR ------------------------------------------------------------------------------------


def write_cifar10(root: Path, per_batch: int = 2, n_test: int = 4, seed: int = 0) -> dict:
    """``root/cifar-10-batches-py/`` with data_batch_1..5, test_batch and batches.meta.

    Returns {"train": (data (N, 32, 32, 3), labels), "test": (...)} in file order.
    """
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    out = {}
    train_data, train_labels = [], []
    for b in range(1, 6):
        data = _images(rng, per_batch, (3072,))  # rows are R plane, G plane, B plane (3 x 32 x 32)
        labels = [int(x) for x in rng.integers(0, 10, size=per_batch)]
        _pickle(folder / f"data_batch_{b}", {"batch_label": f"training batch {b} of 5", "data": data, "labels": labels})
        train_data.append(data)
        train_labels += labels
    test_data = _images(rng, n_test, (3072,))
    test_labels = [int(x) for x in rng.integers(0, 10, size=n_test)]
    _pickle(folder / "test_batch", {"batch_label": "testing batch 1 of 1", "data": test_data, "labels": test_labels})
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    _pickle(folder / "batches.meta", {"label_names": names, "num_cases_per_batch": per_batch, "num_vis": 3072})
    to_hwc = lambda d: d.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # noqa: E731
    out["train"] = (to_hwc(np.vstack(train_data)), train_labels)
    out["test"] = (to_hwc(test_data), test_labels)
    return out


def write_cifar100(root: Path, n_train: int = 8, n_test: int = 4, seed: int = 0) -> dict:
    """``root/cifar-100-python/`` with train, test and meta (fine and coarse labels)."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        data = _images(rng, n, (3072,))
        fine = [int(x) for x in rng.integers(0, 100, size=n)]
        coarse = [f // 5 for f in fine]
        _pickle(folder / split, {"data": data, "fine_labels": fine, "coarse_labels": coarse})
        out[split] = (data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), fine)
    _pickle(
        folder / "meta",
        {"fine_label_names": [f"class{i}" for i in range(100)], "coarse_label_names": [f"super{i}" for i in range(20)]},
    )
    return out


def patch_cifar_md5(monkeypatch, cls, root: Path) -> None:
    """Point ``cls``'s (CIFAR10 or CIFAR100) expected md5 sums at the files under ``root``."""
    folder = Path(root) / cls.base_folder
    monkeypatch.setattr(cls, "train_list", [[f, md5_of(folder / f)] for f, _ in cls.train_list])
    monkeypatch.setattr(cls, "test_list", [[f, md5_of(folder / f)] for f, _ in cls.test_list])
    meta = dict(cls.meta)
    meta["md5"] = md5_of(folder / meta["filename"])
    monkeypatch.setattr(cls, "meta", meta)


# --- MNIST / Fashion-MNIST --------------------------------------------------------------------


def _write_idx_images(path: Path, images: np.ndarray) -> None:
    n, h, w = images.shape
    # magic 0x00000803: two zero bytes, type 0x08 (unsigned byte), 3 dimensions; then big-endian dims.
    path.write_bytes(struct.pack(">iiii", 2051, n, h, w) + images.astype(np.uint8).tobytes())


def _write_idx_labels(path: Path, labels: np.ndarray) -> None:
    path.write_bytes(struct.pack(">ii", 2049, len(labels)) + labels.astype(np.uint8).tobytes())


def write_mnist(root: Path, folder_name: str = "MNIST", n_train: int = 10, n_test: int = 4, seed: int = 0) -> dict:
    """Uncompressed idx files in ``root/<folder_name>/raw/`` (MNIST or FashionMNIST)."""
    rng = np.random.default_rng(seed)
    raw = Path(root) / folder_name / "raw"
    raw.mkdir(parents=True)
    out = {}
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        images = _images(rng, n, (28, 28))
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        _write_idx_images(raw / f"{prefix}-images-idx3-ubyte", images)
        _write_idx_labels(raw / f"{prefix}-labels-idx1-ubyte", labels)
        out[split] = (images, [int(x) for x in labels])
    return out


# --- SVHN -------------------------------------------------------------------------------------


def write_svhn(root: Path, n_train: int = 10, n_test: int = 4, seed: int = 0) -> dict:
    """``root/train_32x32.mat`` and ``root/test_32x32.mat`` (X: 32x32x3xN, y: Nx1 with 10 for digit 0)."""
    import scipy.io

    rng = np.random.default_rng(seed)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images = _images(rng, n, (32, 32, 3))  # (N, H, W, C)
        digits = np.arange(n) % 10  # every digit, 0 included
        y = np.where(digits == 0, 10, digits).astype(np.uint8).reshape(n, 1)
        scipy.io.savemat(str(Path(root) / f"{split}_32x32.mat"), {"X": images.transpose(1, 2, 3, 0), "y": y})
        out[split] = (images, [int(d) for d in digits])
    return out


def patch_svhn_md5(monkeypatch, cls, root: Path) -> None:
    for split in ("train", "test"):
        url, filename, _ = cls.split_list[split]
        path = Path(root) / filename
        if path.exists():
            monkeypatch.setitem(cls.split_list, split, [url, filename, md5_of(path)])


# --- image folders ----------------------------------------------------------------------------


def write_image_folder(root: Path, classes=("cat", "dog"), per_class: int = 3, seed: int = 0) -> list[Path]:
    """Class subfolders of PNG/JPEG images in assorted modes and sizes, plus a README to ignore.

    Each class gets an RGB 20x20 PNG, then a grayscale, an RGBA, an odd-sized 15x13 and a palette
    PNG, cycling, ``per_class`` images in all. Returns the image paths.
    """
    rng = np.random.default_rng(seed)
    makers = [
        lambda: Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)),
        lambda: Image.fromarray(rng.integers(0, 256, (20, 20), dtype=np.uint8)),  # mode L
        lambda: Image.fromarray(rng.integers(0, 256, (20, 20, 4), dtype=np.uint8)),  # RGBA
        lambda: Image.fromarray(rng.integers(0, 256, (13, 15, 3), dtype=np.uint8)),  # 15 wide, 13 high
        lambda: Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).convert("P"),
    ]
    paths = []
    for c in classes:
        folder = Path(root) / c
        folder.mkdir(parents=True)
        for i in range(per_class):
            path = folder / f"img{i}.png"
            makers[i % len(makers)]().save(path)
            paths.append(path)
    (Path(root) / classes[0] / "README.txt").write_text("not an image\n")
    return paths


def write_imagenet(
    root: Path,
    classes=("n01440764", "n01443537", "n01484850"),
    per_class: int = 3,
    splits=("train", "val"),
    seed: int = 0,
) -> dict[str, list[Path]]:
    """``root/<split>/<wnid>/*.JPEG``: RGB JPEGs of odd, unequal sizes (37x41, 50x29, 23x64, ...).

    A grayscale JPEG (as some real ImageNet files are) comes third in each class, and
    ``root/<split>/LOC_synset_mapping.txt`` is a non-image file to ignore. Returns the paths per split.
    """
    rng = np.random.default_rng(seed)
    sizes = [(37, 41), (50, 29), (23, 64)]  # (width, height)
    out: dict[str, list[Path]] = {}
    for split in splits:
        paths = []
        for c in classes:
            folder = Path(root) / split / c
            folder.mkdir(parents=True)
            for i in range(per_class):
                w, h = sizes[i % len(sizes)]
                shape = (h, w) if i % 3 == 2 else (h, w, 3)
                path = folder / f"{c}_{i}.JPEG"
                Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path)
                paths.append(path)
        (Path(root) / split / "LOC_synset_mapping.txt").write_text("n01440764 tench\n")
        out[split] = paths
    return out


# --- ImageNet16 (NAS-Bench-201's ImageNet16-120) ----------------------------------------------


def write_imagenet16(root: Path, per_file: int = 4, n_val: int = 6, seed: int = 0, protocol: int = 2) -> dict:
    """``root/train_data_batch_1..10`` and ``root/val_data`` as the real files are: pickled dicts of
    ``data`` (uint8 rows of 768 values, the R, G, B 16x16 planes in turn) and ``labels`` (a list of
    1-based ImageNet class ids), plus ``mean`` (float64) in the training files.

    Labels alternate between the 120-class subset (1..120, including both ends) and classes
    outside it (121..1000). Returns {"train": (images (N, 16, 16, 3), labels 0..119), "test": ...}
    with only the kept images, in file order.
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    kept = {"train": ([], []), "test": ([], [])}
    files = [(f"train_data_batch_{i}", "train", per_file) for i in range(1, 11)] + [("val_data", "test", n_val)]
    for name, split, n in files:
        data = _images(rng, n, (768,))
        inside = [int(x) for x in rng.integers(1, 121, size=n)]
        outside = [int(x) for x in rng.integers(121, 1001, size=n)]
        labels = [inside[i] if i % 2 == 0 else outside[i] for i in range(n)]
        if name == "train_data_batch_1":
            labels[0], labels[2] = 1, 120  # both ends of the subset
        batch = {"data": data, "labels": labels}
        if split == "train":
            batch["mean"] = data.mean(axis=0)
        with open(root / name, "wb") as f:
            pickle.dump(batch, f, protocol=protocol)
        for row, label in zip(data, labels):
            if label <= 120:
                kept[split][0].append(row.reshape(3, 16, 16).transpose(1, 2, 0))
                kept[split][1].append(label - 1)
    return {split: (np.stack(images), labels) for split, (images, labels) in kept.items()}
