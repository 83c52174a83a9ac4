"""Datasets, transforms, the weight/architecture split and the loaders built on them.

DARTS searches on the *training* split only: it is cut in two halves, one to fit the network
weights w and one to fit the architecture parameters alpha (Section 3 of the paper; 50/50 on
CIFAR-10). The test split is used only when a derived genotype is retrained from scratch.

Every dataset is looked up by name in :data:`DATASETS`. Each entry knows its
:class:`DatasetInfo` (channels, classes, size, normalisation, which augmentations are valid) and
how to build its train/test datasets, using torchvision's own dataset classes for the standard
benchmarks, ``ImageFolder`` for a directory of class subfolders (``folder``, and ``imagenet`` for
ILSVRC-2012 laid out as ``train/`` and ``val/`` class folders), and scikit-learn's bundled 8x8
digits for a quick start that needs no download. Files are checked before torchvision is asked
to read them, so a missing or corrupt dataset is a one-sentence :class:`DataError` that says how
to get it, never a torchvision traceback.

Nothing here touches the disk or imports scikit-learn at import time.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import struct
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import datasets as tv_datasets
from torchvision import transforms as T

from .errors import ConfigError, DataError
from .registry import Registry

__all__ = [
    "DatasetInfo",
    "DATASETS",
    "DigitsDataset",
    "Cutout",
    "build_transform",
    "get_info",
    "load_dataset",
    "split_indices",
    "data_split",
    "InfiniteLoader",
    "TransformedSubset",
    "SearchData",
    "search_data",
    "TrainTestData",
    "train_test_data",
]

SPLITS = ("train", "test")

# Per-channel statistics of the training images, after ToTensor (values in [0, 1]).
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
FASHION_MEAN, FASHION_STD = (0.2860,), (0.3530,)
SVHN_MEAN, SVHN_STD = (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# Computed once from the 1497-image train split of DigitsDataset (pixels 0..16 scaled to 0..255).
DIGITS_MEAN, DIGITS_STD = (0.3055,), (0.3760,)

DEFAULT_FOLDER_SIZE = 32
DEFAULT_IMAGENET_SIZE = 224
IMAGENET_CLASSES = 1000  # ILSVRC-2012; what get_info reports when no directory is given

# How the images are augmented, chosen by DatasetInfo.augment (see build_transform):
#   "crop"      the DARTS CIFAR recipe: random crop with zero padding, optional flip
#   "imagenet"  the DARTS ImageNet recipe: random resized crop, flip, colour jitter; the test
#               images are resized to 256/224 of the size and centre-cropped
AUGMENTATIONS = ("crop", "imagenet")


def crop_padding_for(image_size: int) -> int:
    """Padding of the random crop: 4 for 32x32 images (as in DARTS), scaled ~size/8, at least 1."""
    return max(1, image_size // 8)


@dataclass(frozen=True)
class DatasetInfo:
    """What the network and the transforms need to know about a dataset."""

    name: str
    in_channels: int
    num_classes: int
    image_size: int  # side of the square images the network sees, after transforms
    mean: tuple[float, ...]
    std: tuple[float, ...]
    hflip: bool  # is a horizontal flip label-preserving? (not for digits)
    crop_padding: int  # zero padding of the random crop (augment "crop" only)
    # Images come in arbitrary sizes and must be resized to image_size first (augment "crop"
    # prepends a Resize; the "imagenet" recipe's crops resize by themselves).
    resize: bool = False
    augment: str = "crop"  # one of AUGMENTATIONS

    def __post_init__(self) -> None:
        if self.augment not in AUGMENTATIONS:
            raise ConfigError(f"unknown augmentation {self.augment!r}: use one of {', '.join(AUGMENTATIONS)}")


# --------------------------------------------------------------------------------------------
# Helpers shared by the dataset entries
# --------------------------------------------------------------------------------------------


def _as_path(root: str | os.PathLike | None, name: str) -> Path:
    if root is None or str(root) == "":
        raise ConfigError(f"the {name} dataset needs a data directory: pass --data DIR")
    return Path(os.path.expanduser(os.fspath(root)))


def _check_root(root: Path, download: bool, can_download: bool = False, fix: str | None = None) -> None:
    """``root`` must be a directory; with ``download`` it is created (torchvision does the same).

    ``fix`` replaces the generic advice when the directory is missing (the imagenet layout).
    """
    if download and not root.exists():
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DataError(
                f"cannot create the data directory {root} ({exc.strerror}): point --data at a writable directory"
            ) from None
    if fix is None:
        fix = FETCH_HINT if can_download else "point --data at the directory that holds the dataset"
    if not root.exists():
        raise DataError(f"data directory {root} does not exist: {fix}")
    if not root.is_dir():
        raise DataError(f"data path {root} is not a directory: {fix}")


FETCH_HINT = "pass --download to fetch it, or point --data at the directory that holds it"


def _require_files(title: str, root: Path, folder: Path, files: Sequence[str]) -> None:
    """Raise DataError unless every file in ``files`` exists under ``folder``."""
    if not folder.is_dir():
        raise DataError(f"{title} not found under {root} (expected {folder}): {FETCH_HINT}")
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        raise DataError(
            f"{title} under {folder} is incomplete (missing {', '.join(missing)}): "
            f"delete {folder} and pass --download to fetch it again"
        )


# Errors torchvision (or numpy / pickle underneath it) raises on a missing, truncated or corrupt
# file. They are caught only around the call that constructs a torchvision dataset.
_READ_ERRORS = (
    RuntimeError,
    OSError,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    EOFError,
    AssertionError,
    pickle.UnpicklingError,
    struct.error,  # torch.load of a junk legacy MNIST processed/*.pt
)


def _construct(title: str, folder: Path, download: bool, make: Callable[[], Dataset]) -> Dataset:
    """Call ``make`` (a torchvision constructor) and turn its failures into DataError.

    ``folder`` is what the user should delete and fetch again if the files are corrupt.
    """
    try:
        return make()
    except DataError:
        raise
    except _READ_ERRORS as exc:
        # urllib's URLError and socket errors are OSErrors; MNIST wraps them in "Error downloading ...".
        network = isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError)
        if download and (network or str(exc).startswith("Error downloading")):
            reason = str(exc).splitlines()[-1] if network else "every mirror failed"
            raise DataError(
                f"could not download {title} into {folder} ({reason}): check the network connection, "
                f"or download it by hand and point --data at it"
            ) from exc
        # torchvision's own message ("Dataset not found or corrupted. You can use download=True...")
        # names a Python argument, not the fix on the command line, so it is not repeated.
        raise DataError(
            f"{title} at {folder} is corrupted or incomplete (it fails torchvision's checksum or format check): "
            f"delete {folder} and pass --download to fetch it again"
        ) from exc


# --------------------------------------------------------------------------------------------
# Dataset entries
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _DatasetEntry:
    """A registered dataset: how to describe it and how to build one split of it."""

    info: Callable[[Path | None, int | None], DatasetInfo]
    # build(root, train, download, image_size, transform) -> Dataset
    build: Callable[[Path | None, bool, bool, int | None, Callable | None], Dataset]
    needs_root: bool = True  # the files live under --data (all but digits)
    info_reads_root: bool = False  # the info depends on the files (folder: number of classes)
    # Without a root the info is that of the full dataset, read from no file (imagenet: 1000
    # classes), so a network can be built and sized before any data is present.
    info_root_optional: bool = False
    can_download: bool = True  # download=True fetches the files (torchvision datasets only)
    missing_root_fix: str | None = None  # advice when the root is missing, if not the generic one
    # The search's two halves are fixed: the weights train on the train split and the alphas on
    # the test split (cifar10-valid: the two 25k halves of CIFAR-10's training set), not on a
    # seeded split of the train split.
    fixed_halves: bool = False


DATASETS: Registry[_DatasetEntry] = Registry("dataset")


def _fixed_info(info: DatasetInfo) -> Callable[[Path | None, int | None], DatasetInfo]:
    def describe(root: Path | None, image_size: int | None) -> DatasetInfo:
        if image_size is not None and image_size != info.image_size:
            raise ConfigError(
                f"the {info.name} dataset has {info.image_size}x{info.image_size} images, not {image_size}: "
                f"drop the image size setting (it only applies to the folder and imagenet datasets)"
            )
        return info

    return describe


def _register_cifar(name: str, title: str, cls: type, info: DatasetInfo) -> None:
    def build(root, train, download, image_size, transform):
        folder = root / cls.base_folder
        if not download:
            # torchvision verifies every file of both splits plus the metadata, whichever split is read.
            files = [f for f, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
            _require_files(title, root, folder, files)
        return _construct(
            title, folder, download, lambda: cls(str(root), train=train, transform=transform, download=download)
        )

    DATASETS.register(name, _DatasetEntry(info=_fixed_info(info), build=build))


def _register_mnist(name: str, title: str, cls: type, info: DatasetInfo) -> None:
    def build(root, train, download, image_size, transform):
        folder = root / cls.__name__ / "raw"
        legacy = root / cls.__name__ / "processed"
        has_legacy = all((legacy / f).is_file() for f in (cls.training_file, cls.test_file))
        if not download and not has_legacy:
            # The raw idx files, stored uncompressed (torchvision unpacks the .gz downloads).
            files = [os.path.splitext(os.path.basename(url))[0] for url, _ in cls.resources]
            _require_files(title, root, folder, files)
        return _construct(
            title, folder, download, lambda: cls(str(root), train=train, transform=transform, download=download)
        )

    DATASETS.register(name, _DatasetEntry(info=_fixed_info(info), build=build))


_register_cifar(
    "cifar10",
    "CIFAR-10",
    tv_datasets.CIFAR10,
    DatasetInfo("cifar10", 3, 10, 32, CIFAR10_MEAN, CIFAR10_STD, hflip=True, crop_padding=4),
)
_register_cifar(
    "cifar100",
    "CIFAR-100",
    tv_datasets.CIFAR100,
    DatasetInfo("cifar100", 3, 100, 32, CIFAR100_MEAN, CIFAR100_STD, hflip=True, crop_padding=4),
)
_register_mnist(
    "mnist",
    "MNIST",
    tv_datasets.MNIST,
    DatasetInfo("mnist", 1, 10, 28, MNIST_MEAN, MNIST_STD, hflip=False, crop_padding=crop_padding_for(28)),
)
_register_mnist(
    "fashion-mnist",
    "Fashion-MNIST",
    tv_datasets.FashionMNIST,
    DatasetInfo("fashion-mnist", 1, 10, 28, FASHION_MEAN, FASHION_STD, hflip=True, crop_padding=crop_padding_for(28)),
)


def _build_svhn(root, train, download, image_size, transform):
    split = "train" if train else "test"
    filename = tv_datasets.SVHN.split_list[split][1]
    try:
        import scipy.io  # noqa: F401  (torchvision reads the .mat files with it)
    except ImportError:
        raise DataError("the svhn dataset needs scipy to read its .mat files: pip install scipy") from None
    if not download and not (root / filename).is_file():
        raise DataError(f"SVHN not found under {root} (expected {root / filename}): {FETCH_HINT}")
    return _construct(
        "SVHN",
        root / filename,
        download,
        lambda: tv_datasets.SVHN(str(root), split=split, transform=transform, download=download),
    )


DATASETS.register(
    "svhn",
    _DatasetEntry(
        info=_fixed_info(DatasetInfo("svhn", 3, 10, 32, SVHN_MEAN, SVHN_STD, hflip=False, crop_padding=4)),
        build=_build_svhn,
    ),
)


# --- digits: scikit-learn's bundled 8x8 handwritten digits ----------------------------------


class DigitsDataset(Dataset):
    """scikit-learn's 1797 8x8 handwritten digits as (PIL 'L' image, label) pairs.

    The split is fixed and independent of any seed: every sixth image (index % 6 == 0, 300
    images) is the test split, the other 1497 the train split. Pixels (0..16) are scaled to
    0..255 so that torchvision's ToTensor maps them to [0, 1] like any other image.
    """

    def __init__(self, train: bool = True, transform: Callable | None = None) -> None:
        try:
            from sklearn.datasets import load_digits
        except ImportError:
            raise DataError(
                "the digits dataset needs scikit-learn: pip install scikit-learn (or pip install 'darts-nas[digits]')"
            ) from None
        bunch = load_digits()
        images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)  # (1797, 8, 8)
        index = np.arange(len(images))
        keep = index % 6 != 0 if train else index % 6 == 0
        self.train = train
        self.transform = transform
        self.data = images[keep]  # (N, 8, 8) uint8
        self.targets = [int(t) for t in bunch.target[keep]]
        self.classes = [str(d) for d in range(10)]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image = Image.fromarray(self.data[index])  # uint8 (8, 8) -> mode 'L'
        if self.transform is not None:
            image = self.transform(image)
        return image, self.targets[index]


DATASETS.register(
    "digits",
    _DatasetEntry(
        info=_fixed_info(DatasetInfo("digits", 1, 10, 8, DIGITS_MEAN, DIGITS_STD, hflip=False, crop_padding=1)),
        build=lambda root, train, download, image_size, transform: DigitsDataset(train=train, transform=transform),
        needs_root=False,
        can_download=False,
    ),
)


# --- folder: a directory of class subfolders ------------------------------------------------


def load_rgb_image(path: str) -> Image.Image:
    """ImageFolder loader: open any image (grayscale, RGBA, palette...) as RGB; DataError if unreadable."""
    try:
        with open(path, "rb") as f:
            image = Image.open(f)
            if image.mode == "P" and "transparency" in image.info:
                image = image.convert("RGBA")  # avoids Pillow's palette-transparency warning
            return image.convert("RGB")
    except Image.DecompressionBombError as exc:  # not corrupt: larger than Pillow will decode
        size = str(exc).split(",")[0]  # "Image size (N pixels) exceeds limit of M pixels"
        raise DataError(f"image file {path} is too large to decode safely ({size}): shrink or delete it") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"cannot read image file {path} (corrupt or not an image): delete or replace it") from exc


def _is_class_dir(entry: os.DirEntry) -> bool:
    return entry.is_dir() and not entry.name.startswith(".")


def _class_dirs(directory: Path) -> list[str]:
    """Sorted names of the class subfolders of ``directory`` (hidden folders are skipped)."""
    with os.scandir(directory) as entries:
        return sorted(e.name for e in entries if _is_class_dir(e))


def _walk_once(top: Path) -> list[tuple[str, list[str]]]:
    """(directory, file names) of ``top`` and every directory below it, following links to
    directories but entering each directory once and never one that holds ``top``: a link back
    up the tree (a loop) would otherwise repeat images again and again, under other classes too."""
    top_real = os.path.realpath(top)
    seen = {top_real}
    found = []
    for dirpath, dirnames, fnames in os.walk(top, followlinks=True):
        found.append((dirpath, fnames))
        kept = []
        for name in sorted(dirnames):  # sorted: which of two names of a directory is kept is fixed
            real = os.path.realpath(os.path.join(dirpath, name))
            if real in seen or top_real.startswith(real.rstrip(os.sep) + os.sep):
                continue  # walked already under another name, or an ancestor of the class folder
            seen.add(real)
            kept.append(name)
        dirnames[:] = kept
    return found


def _scan_images(directory: Path, class_to_idx: dict[str, int]) -> list[tuple[str, int]]:
    """(path, label) of every image file under ``directory/<class>/``, in torchvision's order.

    Files are recognised by ImageFolder's extensions, so README.txt and the like are ignored.
    A class absent from ``directory`` is skipped (a val/ split may lack a rare class), but a class
    folder that is present and holds no images is an error, named in the message.
    """
    samples: list[tuple[str, int]] = []
    empty: list[Path] = []
    for name, label in sorted(class_to_idx.items(), key=lambda item: item[1]):
        class_dir = directory / name
        if not class_dir.is_dir():
            continue
        found = [
            (os.path.join(dirpath, fname), label)
            for dirpath, fnames in sorted(_walk_once(class_dir))
            for fname in sorted(fnames)
            if tv_datasets.folder.has_file_allowed_extension(fname, tv_datasets.folder.IMG_EXTENSIONS)
        ]
        if not found:
            empty.append(class_dir)
        samples += found
    if not samples:
        extensions = " ".join(tv_datasets.folder.IMG_EXTENSIONS)
        raise DataError(f"no image files found under {directory}: add images with one of the extensions {extensions}")
    if empty:
        raise DataError(
            f"class folder {empty[0]} contains no images: add images (.jpg, .png, ...) or remove the folder"
        )
    return samples


class _ClassFolder(tv_datasets.ImageFolder):
    """torchvision's ImageFolder with a given class list (so val/ shares train/'s label indices).

    Both hooks torchvision offers for this are overridden: ``find_classes`` returns the given
    classes and ``make_dataset`` scans with :func:`_scan_images`, whose errors name the folder.
    """

    def __init__(self, root: str, classes: list[str], transform: Callable | None = None) -> None:
        self._given_classes = list(classes)
        super().__init__(root, transform=transform, loader=load_rgb_image)

    def find_classes(self, directory):
        return self._given_classes, {c: i for i, c in enumerate(self._given_classes)}

    def make_dataset(self, directory, class_to_idx, *args, **kwargs):  # extensions etc. are fixed here
        return _scan_images(Path(directory), class_to_idx)


def _folder_dirs(root: Path) -> tuple[Path, Path | None]:
    """(train dir, test dir or None) of a folder dataset rooted at ``root``."""
    train_dir = root / "train"
    if train_dir.is_dir():
        for name in ("val", "test"):
            if (root / name).is_dir():
                return train_dir, root / name
        return train_dir, None
    return root, None


def _folder_classes(root: Path) -> list[str]:
    train_dir, test_dir = _folder_dirs(root)
    skip = {"val", "test"} if train_dir == root else set()
    classes = [c for c in _class_dirs(train_dir) if c not in skip]
    if not classes:
        raise DataError(
            f"no class subfolders found in {train_dir}: the folder dataset needs one subfolder of images per class "
            f"(e.g. {train_dir / 'cat'}/1.png)"
        )
    if len(classes) == 1:
        # A classifier of one class learns nothing (100% accuracy from the start); most often --data
        # points one level above the class folders.
        raise DataError(
            f"{train_dir} has a single class subfolder ({classes[0]}), and a classification needs at least two: "
            f"point --data at the directory whose subfolders are the classes (e.g. {train_dir / classes[0]} "
            f"if the classes are inside it)"
        )
    return classes


def _image_size(image_size: int | None, default: int) -> int:
    size = default if image_size is None else image_size
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ConfigError(
            f"image size must be a positive integer, got {image_size!r}: pass e.g. --image-size {default}"
        )
    return size


def _folder_info(root: Path | None, image_size: int | None) -> DatasetInfo:
    size = _image_size(image_size, DEFAULT_FOLDER_SIZE)
    classes = _folder_classes(root)
    return DatasetInfo(
        "folder",
        3,
        len(classes),
        size,
        IMAGENET_MEAN,
        IMAGENET_STD,
        hflip=True,
        crop_padding=crop_padding_for(size),
        resize=True,
    )


def _class_folder_test_split(train_dir: Path, test_dir: Path, classes: list[str], transform) -> Dataset:
    """The test split in ``test_dir``, labelled with the class indices of ``train_dir``."""
    extra = sorted(set(_class_dirs(test_dir)) - set(classes))
    if extra:
        raise DataError(
            f"{test_dir} has class folders that {train_dir} lacks ({', '.join(extra)}): "
            f"give both splits the same class subfolders"
        )
    return _ClassFolder(str(test_dir), classes, transform=transform)


def _build_folder(root, train, download, image_size, transform):
    classes = _folder_classes(root)
    train_dir, test_dir = _folder_dirs(root)
    if train:
        return _ClassFolder(str(train_dir), classes, transform=transform)
    if test_dir is None:
        raise DataError(
            f"the folder dataset under {root} has no test split: put the training images in {root / 'train'} "
            f"and the test images in {root / 'val'}, each with one subfolder per class"
        )
    return _class_folder_test_split(train_dir, test_dir, classes, transform)


DATASETS.register(
    "folder", _DatasetEntry(info=_folder_info, build=_build_folder, info_reads_root=True, can_download=False)
)


# --- imagenet: ILSVRC-2012 as train/ and val/ class folders ---------------------------------

IMAGENET_LAYOUT = "<root>/train/<class>/*.JPEG and <root>/val/<class>/*.JPEG"
IMAGENET_FIX = (
    f"point --data at a directory laid out as {IMAGENET_LAYOUT} "
    f"(ILSVRC-2012 from image-net.org, with the validation images sorted into class folders)"
)


def _imagenet_dir(root: Path, split: str) -> Path:
    """``root/train`` or ``root/val``; DataError naming the layout if it is not a directory."""
    directory = root / split
    if not directory.is_dir():
        images = "training" if split == "train" else "validation"
        raise DataError(f"ImageNet {images} images not found under {root} (expected {directory}): {IMAGENET_FIX}")
    return directory


def _imagenet_classes(root: Path) -> list[str]:
    train_dir = _imagenet_dir(root, "train")
    classes = _class_dirs(train_dir)
    if not classes:
        raise DataError(f"no class subfolders found in {train_dir} (e.g. n01440764/): {IMAGENET_FIX}")
    return classes


def _imagenet_info(root: Path | None, image_size: int | None) -> DatasetInfo:
    size = _image_size(image_size, DEFAULT_IMAGENET_SIZE)
    num_classes = IMAGENET_CLASSES if root is None else len(_imagenet_classes(root))
    return DatasetInfo(
        "imagenet",
        3,
        num_classes,
        size,
        IMAGENET_MEAN,
        IMAGENET_STD,
        hflip=True,
        crop_padding=crop_padding_for(size),
        resize=True,
        augment="imagenet",
    )


def _build_imagenet(root, train, download, image_size, transform):
    classes = _imagenet_classes(root)
    train_dir = root / "train"
    if train:
        return _ClassFolder(str(train_dir), classes, transform=transform)
    val_dir = _imagenet_dir(root, "val")
    if not _class_dirs(val_dir):
        # The official archive unpacks val/ flat (50,000 images in one folder), which reads as no classes.
        raise DataError(f"no class subfolders found in {val_dir}: {IMAGENET_FIX}")
    return _class_folder_test_split(train_dir, val_dir, classes, transform)


DATASETS.register(
    "imagenet",
    _DatasetEntry(
        info=_imagenet_info,
        build=_build_imagenet,
        info_reads_root=True,
        info_root_optional=True,
        can_download=False,
        missing_root_fix=IMAGENET_FIX,
    ),
)


# --------------------------------------------------------------------------------------------
# Public lookup
# --------------------------------------------------------------------------------------------


def _entry_root(entry: _DatasetEntry, name: str, root, download: bool) -> Path | None:
    if not entry.needs_root:
        return None
    path = _as_path(root, name)
    _check_root(path, download and entry.can_download, entry.can_download, entry.missing_root_fix)
    return path


def get_info(name: str, root: str | os.PathLike | None = None, image_size: int | None = None) -> DatasetInfo:
    """Describe dataset ``name``.

    Datasets with fixed info never read ``root``. The folder dataset needs ``root`` to count its
    classes; imagenet counts them under ``root/train`` when ``root`` is given and otherwise
    reports the 1000 ILSVRC-2012 classes without touching the disk.
    """
    entry = DATASETS.get(name)
    no_root = root is None or str(root) == ""
    if not entry.info_reads_root or (no_root and entry.info_root_optional):
        return entry.info(None, image_size)
    return entry.info(_entry_root(entry, name, root, download=False), image_size)


def load_dataset(
    name: str,
    root: str | os.PathLike | None,
    split: str,
    download: bool = False,
    image_size: int | None = None,
    transform: Callable | None = None,
) -> tuple[Dataset, DatasetInfo]:
    """Build the ``split`` ("train" or "test") of dataset ``name`` stored under ``root``.

    Items are (image, label) pairs; without a ``transform`` the image is a PIL image.
    """
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}: use 'train' or 'test'")
    entry = DATASETS.get(name)
    path = _entry_root(entry, name, root, download)
    # Download first (build), then describe: the folder info reads the directory.
    dataset = entry.build(path, split == "train", download and entry.can_download, image_size, transform)
    info = entry.info(path, image_size)
    if len(dataset) == 0:
        raise DataError(f"the {split} split of {name} under {path} is empty: check the files under --data")
    return dataset, info


# --------------------------------------------------------------------------------------------
# Transforms
# --------------------------------------------------------------------------------------------


class Cutout:
    """Zero a random ``length`` x ``length`` square of a (C, H, W) tensor (DeVries & Taylor, 2017).

    The square's centre is uniform over the image and the square is clipped at the borders, as in
    the DARTS evaluation code. The centre is drawn from torch's RNG, so ``torch.manual_seed`` (and
    the DataLoader's per-worker seeding) makes it reproducible.
    """

    def __init__(self, length: int) -> None:
        if isinstance(length, bool) or not isinstance(length, int) or length < 1:
            raise ConfigError(f"cutout length must be a positive integer, got {length!r}: pass e.g. --cutout 16")
        self.length = length

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        height, width = image.shape[-2:]
        cy = int(torch.randint(height, (1,)))
        cx = int(torch.randint(width, (1,)))
        half = self.length // 2
        y0, y1 = max(0, cy - half), min(height, cy + self.length - half)
        x0, x1 = max(0, cx - half), min(width, cx + self.length - half)
        image = image.clone()
        image[..., y0:y1, x0:x1] = 0
        return image

    def __repr__(self) -> str:
        return f"{type(self).__name__}(length={self.length})"


def build_transform(info: DatasetInfo, train: bool, cutout: int = 0) -> Callable:
    """Image -> normalised (C, image_size, image_size) tensor, by ``info.augment``.

    "crop" (DARTS on CIFAR). Train: random crop with padding, horizontal flip where it preserves
    the label, normalise. Test: normalise only. Datasets with arbitrary image sizes are resized
    to image_size x image_size first.

    "imagenet" (DARTS on ImageNet, mobile setting). Train: random resized crop to image_size,
    flip, colour jitter (0.4, 0.4, 0.4, 0.2), normalise. Test: resize the short side to
    image_size * 256/224 (256 for 224), centre crop, normalise.

    Either way, cutout (if ``cutout > 0``) follows the normalisation of the train images.
    """
    if isinstance(cutout, bool) or not isinstance(cutout, int) or cutout < 0:
        raise ConfigError(f"cutout length must be a non-negative integer, got {cutout!r}: pass e.g. --cutout 16")
    size = info.image_size
    steps: list[Callable] = []
    if info.augment == "imagenet":
        if train:
            steps.append(T.RandomResizedCrop(size))
            if info.hflip:
                steps.append(T.RandomHorizontalFlip())
            steps.append(T.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.2))
        else:
            steps += [T.Resize(round(size * 256 / 224)), T.CenterCrop(size)]
    else:
        if info.resize:
            steps.append(T.Resize((size, size)))
        if train:
            steps.append(T.RandomCrop(size, padding=info.crop_padding))
            if info.hflip:
                steps.append(T.RandomHorizontalFlip())
    steps += [T.ToTensor(), T.Normalize(info.mean, info.std)]
    if train and cutout > 0:
        steps.append(Cutout(cutout))
    return T.Compose(steps)


# --------------------------------------------------------------------------------------------
# The weight / architecture split and the loaders
# --------------------------------------------------------------------------------------------


def split_indices(n: int, train_portion: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded split of ``range(n)`` into (weight half, architecture half).

    A permutation drawn from ``torch.Generator().manual_seed(seed)``; its first
    floor(train_portion * n) entries go to the weight half, the rest to the architecture half.
    """
    if isinstance(train_portion, bool) or not isinstance(train_portion, (int, float)) or not 0 < train_portion < 1:
        raise ConfigError(
            f"train portion must be strictly between 0 and 1, got {train_portion!r}: pass e.g. --train-portion 0.5"
        )
    if n < 0:
        raise ConfigError(f"dataset size must be non-negative, got {n}")
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=generator).tolist()
    # The tiny epsilon keeps e.g. 0.29 * 100 = 28.999999999999996 from losing an image.
    k = math.floor(train_portion * n + 1e-9)
    weight_idx, arch_idx = order[:k], order[k:]
    if not weight_idx or not arch_idx:
        raise DataError(
            f"the dataset is too small for the split: {n} images with train portion {train_portion} leave "
            f"{len(weight_idx)} for the weights and {len(arch_idx)} for the architecture; "
            f"use more images or a train portion closer to 0.5"
        )
    return weight_idx, arch_idx


def stratified_folds(labels: Sequence[int], k: int, seed: int) -> list[list[int]]:
    """Seeded, stratified split of ``range(len(labels))`` into ``k`` folds (for cross-validated
    evaluation): each class's indices, in an order drawn from ``torch.Generator().manual_seed(seed)``,
    are dealt round-robin to the folds, the deal continuing from class to class, so every class's
    count and every fold's size differ by at most one between folds. Each fold is sorted."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        raise ConfigError(f"the number of folds must be an integer of at least 2, got {k!r}: pass e.g. --folds 5")
    if len(labels) < k:
        raise DataError(f"{len(labels)} images cannot fill {k} folds: use fewer folds or more images")
    generator = torch.Generator().manual_seed(seed)
    by_class: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        by_class.setdefault(int(label), []).append(index)
    folds: list[list[int]] = [[] for _ in range(k)]
    dealt = 0
    for label in sorted(by_class):
        members = by_class[label]
        for position in torch.randperm(len(members), generator=generator).tolist():
            folds[dealt % k].append(members[position])
            dealt += 1
    return [sorted(fold) for fold in folds]


def _images_of(dataset: Dataset) -> Any:
    """What identifies the images of ``dataset``, in order: each file (relative to its root, so a
    moved ``--data`` still matches) and label for folder datasets, else their number."""
    samples = getattr(dataset, "samples", None)
    if isinstance(samples, list):
        root = str(getattr(dataset, "root", "") or "")
        return [[os.path.relpath(str(p), root) if root else str(p), int(c)] for p, c in samples]
    inner, indices = getattr(dataset, "dataset", None), getattr(dataset, "indices", None)
    if inner is not None and indices is not None:  # Subset, TransformedSubset
        return {"of": _images_of(inner), "indices": [int(i) for i in indices]}
    return len(dataset)


def data_split(train: Dataset, *parts: Sequence[int] | Dataset) -> dict[str, Any]:
    """The fingerprint of which images a run trains on, stored in its checkpoints: the number of
    training images and a SHA-256 of their files (or count) and of ``parts`` (the search's two
    halves as index lists, or a retraining's test set). A resumed run must see the same."""
    identity = [_images_of(train), *[_images_of(p) if isinstance(p, Dataset) else [int(i) for i in p]
                                     for p in parts]]
    digest = hashlib.sha256(json.dumps(identity, separators=(",", ":")).encode("utf-8")).hexdigest()
    return {"images": len(train), "sha256": digest[:32]}


class InfiniteLoader:
    """Endless batches from a DataLoader, through one persistent iterator.

    When a pass ends the next one starts at once (with the next pass's shuffle), so the
    architecture step can call ``next`` every step. ``next(iter(loader))`` per step instead would
    restart the worker processes every step and draw each batch from a fresh shuffle, so a pass
    would no longer visit every image once. With a :class:`PassSampler`, :meth:`state_dict`
    records the pass and the batches consumed in it, and :meth:`load_state_dict` resumes there.
    """

    def __init__(self, loader: DataLoader) -> None:
        self.loader = loader
        self.passes = 0  # completed passes over the data
        self.position = 0  # batches consumed in the current pass
        self._iterator = None

    @property
    def _sampler(self) -> PassSampler | None:
        sampler = self.loader.sampler
        return sampler if isinstance(sampler, PassSampler) else None

    def __iter__(self) -> "InfiniteLoader":
        return self

    def _start_pass(self, skip: int = 0) -> None:
        if self._sampler is not None:
            self._sampler.pass_index = self.passes
            self._sampler.start = skip * (self.loader.batch_size or 1)
        self._iterator = iter(self.loader)

    def __next__(self):
        if self._iterator is None:
            self._start_pass(self.position)
        try:
            batch = next(self._iterator)
        except StopIteration:
            self.passes += 1
            self.position = 0
            self._start_pass()
            try:
                batch = next(self._iterator)
            except StopIteration:
                raise DataError(
                    "the architecture loader yields no batches: use more images or a smaller --batch-size"
                ) from None
        self.position += 1
        return batch

    def state_dict(self) -> dict[str, int]:
        return {"passes": self.passes, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue after ``position`` batches of pass ``passes`` (needs a PassSampler and full
        batches, i.e. drop_last, so that batches map to index offsets)."""
        self.passes, self.position = int(state["passes"]), int(state["position"])
        self._iterator = None


def _seed_worker(worker_id: int) -> None:
    """Seed Python's and numpy's RNGs in a DataLoader worker from the seed torch gave it."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def _check_loader_args(batch_size: int, workers: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch size must be a positive integer, got {batch_size!r}: pass e.g. --batch-size 64")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ConfigError(f"workers must be a non-negative integer, got {workers!r}: pass e.g. --workers 2")


class PassSampler(torch.utils.data.Sampler):
    """A shuffling sampler whose order is a pure function of ``(seed, pass_index)``.

    Unlike ``shuffle=True`` (which draws each pass's order from a generator whose state moves
    on), the order of any pass can be recreated on its own, and ``start`` skips the first indices
    of the next pass without loading them: exactly what resuming a run mid-pass needs. Set
    ``pass_index`` before iterating (the training loops set it to the epoch).
    """

    def __init__(self, n: int, seed: int) -> None:
        self.n = n
        self.seed = seed
        self.pass_index = 0
        self.start = 0  # indices of the next pass to skip (consumed before a resume)

    def order(self, pass_index: int) -> list[int]:
        generator = torch.Generator().manual_seed((self.seed * 1_000_003 + pass_index) % 2**63)
        return torch.randperm(self.n, generator=generator).tolist()

    def __iter__(self):
        start, self.start = self.start, 0
        return iter(self.order(self.pass_index)[start:])

    def __len__(self) -> int:
        return self.n


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Give a shuffled loader the order of ``epoch`` (each epoch has its own, reproducibly)."""
    sampler = loader.sampler
    if isinstance(sampler, PassSampler) or hasattr(sampler, "set_epoch"):
        if isinstance(sampler, PassSampler):
            sampler.pass_index = epoch
            sampler.start = 0  # a skip left by an interrupted epoch never carries over
        else:
            sampler.set_epoch(epoch)


def skip_batches(loader: DataLoader, batches: int) -> None:
    """Make the next pass of ``loader`` start after its first ``batches`` batches, without loading
    them (to finish an epoch interrupted inside); needs a :class:`PassSampler`."""
    if batches == 0:
        return
    sampler = getattr(loader, "sampler", None)
    if not isinstance(sampler, PassSampler):
        raise ValueError("only a loader with a PassSampler can skip the batches of an interrupted epoch")
    sampler.start = batches * (loader.batch_size or 1)


def _make_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool,
    seed: int,
    workers: int,
    device_type: str | torch.device,
    drop_last: bool = False,
) -> DataLoader:
    extra: dict[str, Any] = {}
    if workers > 0:
        extra = {"persistent_workers": True, "worker_init_fn": _seed_worker}
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=PassSampler(len(dataset), seed) if shuffle else None,
        drop_last=drop_last,
        num_workers=workers,
        pin_memory=torch.device(device_type).type == "cuda",
        # Each loader owns its generator: the shuffle order and the workers' seeds come from it.
        generator=torch.Generator().manual_seed(seed),
        **extra,
    )


class TransformedSubset(Dataset):
    """``dataset[indices[i]]`` with ``transform`` applied to the image.

    The two halves of the search share one copy of the train split (loaded once, untransformed)
    and differ only in indices and transform.
    """

    def __init__(self, dataset: Dataset, indices: Sequence[int], transform: Callable | None) -> None:
        self.dataset = dataset
        self.indices = list(indices)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        image, label = self.dataset[self.indices[index]]
        if self.transform is not None:
            image = self.transform(image)
        return image, label


@dataclass
class SearchData:
    """The two halves of the training split used by the search."""

    weight_loader: DataLoader  # one pass per epoch, shuffled, augmented
    arch_loader: InfiniteLoader  # next() forever, shuffled, augmented, full batches
    info: DatasetInfo
    num_weight: int
    num_arch: int
    # One ordered pass over the architecture half without augmentation, to measure the
    # supernet's validation loss/accuracy; search_data always sets it.
    arch_eval_loader: DataLoader | None = None
    split: dict[str, Any] | None = None  # data_split(): which images, in which half


def _fixed_halves(name: str, root, train_portion: float, download: bool, image_size: int | None
                  ) -> tuple[Dataset, DatasetInfo, list[int], list[int]]:
    """(train split + test split, info, weight indices, architecture indices) of a dataset whose
    search halves are fixed: the weights get its train split, the alphas its test split."""
    if train_portion != 0.5:
        raise ConfigError(f"the {name} dataset has fixed halves (its train split for the weights, its test split "
                          f"for the alphas): drop --train-portion {train_portion}")
    weight_set, info = load_dataset(name, root, "train", download=download, image_size=image_size)
    arch_set, _ = load_dataset(name, root, "test", download=download, image_size=image_size)
    both = torch.utils.data.ConcatDataset([weight_set, arch_set])
    return both, info, list(range(len(weight_set))), list(range(len(weight_set), len(both)))


def search_data(
    name: str,
    root: str | os.PathLike | None,
    batch_size: int,
    train_portion: float = 0.5,
    seed: int = 0,
    workers: int = 0,
    download: bool = False,
    image_size: int | None = None,
    device_type: str | torch.device = "cpu",
    cutout: int = 0,
) -> SearchData:
    """Split the train split of ``name`` into a weight half and an architecture half, with loaders.

    Both halves use the search-time augmentation (random crop, flip where valid, and cutout of
    ``cutout`` pixels when positive: RobustDARTS searches with cutout 16, DARTS without);
    ``arch_eval_loader`` reads the architecture half with the test transform, in order.
    The split, both shuffles and the workers' seeds derive from ``seed``. A dataset with fixed
    halves (``cifar10-valid``) gives the weights its train split and the alphas its test split.
    """
    _check_loader_args(batch_size, workers)
    if DATASETS.get(name).fixed_halves:
        dataset, info, weight_idx, arch_idx = _fixed_halves(name, root, train_portion, download, image_size)
    else:
        dataset, info = load_dataset(name, root, "train", download=download, image_size=image_size)
        weight_idx, arch_idx = split_indices(len(dataset), train_portion, seed)
    for half, idx in (("weight", weight_idx), ("architecture", arch_idx)):
        if len(idx) < batch_size:
            raise DataError(
                f"the {half} half of {name} has {len(idx)} images but a batch needs {batch_size}: "
                f"pass a smaller --batch-size (at most {min(len(weight_idx), len(arch_idx))}) or use more data"
            )
    augment = build_transform(info, train=True, cutout=cutout)
    # A last batch of one image would break BatchNorm in training mode; drop it in that case only.
    weight_loader = _make_loader(
        TransformedSubset(dataset, weight_idx, augment), batch_size, True, seed + 1, workers, device_type,
        drop_last=len(weight_idx) % batch_size == 1,
    )
    # Full batches only: the architecture step never sees a runt batch at the end of a pass.
    arch_loader = _make_loader(
        TransformedSubset(dataset, arch_idx, augment), batch_size, True, seed + 2, workers, device_type, drop_last=True
    )
    arch_eval_loader = _make_loader(
        TransformedSubset(dataset, arch_idx, build_transform(info, train=False)),
        batch_size,
        False,
        seed + 3,
        workers,
        device_type,
    )
    return SearchData(
        weight_loader=weight_loader,
        arch_loader=InfiniteLoader(arch_loader),
        info=info,
        num_weight=len(weight_idx),
        num_arch=len(arch_idx),
        arch_eval_loader=arch_eval_loader,
        split=data_split(dataset, weight_idx, arch_idx),
    )


@dataclass
class TrainTestData:
    """Loaders for retraining a genotype: augmented train split, plain test split."""

    train_loader: DataLoader
    test_loader: DataLoader
    info: DatasetInfo
    num_train: int
    num_test: int
    split: dict[str, Any] | None = None  # data_split(): which training and test images
    # --folds K --fold i: the held-out fold i of the train split (test transform, in order); the
    # training loader then reads the other K - 1 folds.
    heldout_loader: DataLoader | None = None
    num_heldout: int = 0


def train_test_data(
    name: str,
    root: str | os.PathLike | None,
    batch_size: int,
    seed: int = 0,
    workers: int = 0,
    download: bool = False,
    image_size: int | None = None,
    cutout: int = 0,
    device_type: str | torch.device = "cpu",
    folds: int | None = None,
    fold: int | None = None,
) -> TrainTestData:
    """Loaders over the full train split (augmentation + cutout, shuffled) and the test split.

    With ``folds`` K and ``fold`` i (cross-validated evaluation), the train split is dealt into K
    stratified folds seeded by ``seed`` (:func:`stratified_folds`; the same folds for every i):
    the training loader reads the other K - 1 folds and ``heldout_loader`` reads fold i with the
    test transform."""
    _check_loader_args(batch_size, workers)
    info = get_info(name, root, image_size)
    train_transform = build_transform(info, train=True, cutout=cutout)
    test_transform = build_transform(info, train=False)
    heldout_set = None
    if folds is None:
        train_set, info = load_dataset(name, root, "train", download, image_size, train_transform)
    else:
        whole, info = load_dataset(name, root, "train", download, image_size)
        parts = stratified_folds(dataset_labels(whole), folds, seed)
        kept = sorted(i for k, part in enumerate(parts) if k != fold for i in part)
        train_set = TransformedSubset(whole, kept, train_transform)
        heldout_set = TransformedSubset(whole, parts[fold], test_transform)
        if len(kept) < batch_size:
            raise DataError(f"{len(kept)} training images in the other folds of {name} cannot fill a batch of "
                            f"{batch_size}: pass a smaller --batch-size or fewer --folds")
    test_set, _ = load_dataset(name, root, "test", download, image_size, test_transform)
    return TrainTestData(
        train_loader=_make_loader(train_set, batch_size, True, seed + 1, workers, device_type,
                                  drop_last=len(train_set) % batch_size == 1),
        test_loader=_make_loader(test_set, batch_size, False, seed + 2, workers, device_type),
        info=info,
        num_train=len(train_set),
        num_test=len(test_set),
        split=data_split(train_set, test_set, *([heldout_set] if heldout_set is not None else [])),
        heldout_loader=(None if heldout_set is None else
                        _make_loader(heldout_set, batch_size, False, seed + 3, workers, device_type)),
        num_heldout=0 if heldout_set is None else len(heldout_set),
    )


def dataset_labels(dataset: Dataset) -> list[int]:
    """The label of every item of ``dataset``, read without decoding images where the dataset
    keeps its labels (``targets``, ``labels``, ``samples``: torchvision's classes, digits, the
    image folders); otherwise (a dataset that only yields pairs) by reading every item."""
    if isinstance(dataset, torch.utils.data.ConcatDataset):
        return [label for part in dataset.datasets for label in dataset_labels(part)]
    inner, indices = getattr(dataset, "dataset", None), getattr(dataset, "indices", None)
    if inner is not None and indices is not None:  # Subset, TransformedSubset
        labels = dataset_labels(inner)
        return [labels[int(i)] for i in indices]
    for attribute in ("targets", "labels"):
        found = getattr(dataset, attribute, None)
        if found is not None and not isinstance(found, (str, bytes)) and len(found) == len(dataset):
            return [int(label) for label in (found.tolist() if hasattr(found, "tolist") else found)]
    samples = getattr(dataset, "samples", None)
    if isinstance(samples, list) and len(samples) == len(dataset):
        return [int(label) for _, label in samples]
    return [int(dataset[i][1]) for i in range(len(dataset))]


# The NAS-Bench-201 datasets (imagenet16-120, ...) register themselves in DATASETS; imported last
# because that module builds on the helpers above.
from . import nb201_datasets  # noqa: E402,F401
