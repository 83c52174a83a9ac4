"""The datasets NAS-Bench-201 was measured on, in their real on-disk formats.

``imagenet16-120``: the 16x16 downsampled ImageNet of Chrabaszcz, Loshchilov and Hutter (2017),
restricted to its first 120 classes as the benchmark uses it. ``--data`` holds the ten training
files ``train_data_batch_1`` .. ``train_data_batch_10`` and ``val_data``. Each is a Python pickle
of a dict: ``data``, a uint8 array of rows of 768 values (the R, G and B 16x16 planes one after
the other), ``labels``, a list of 1-based class ids 1..1000, and in the training files ``mean``,
a float array. Samples whose label is 1..120 are kept and shifted to 0..119.

Unpickling can run anything a file asks for, so the files are read by :class:`BatchUnpickler`,
which builds plain containers, numbers and strings plus exactly the globals a numpy array needs
to be rebuilt (``numpy.core.multiarray._reconstruct``, spelled ``numpy._core`` by numpy 2,
``numpy.ndarray`` and ``numpy.dtype``) and, for files re-saved by Python 3 with pickle protocols
0-2, ``_codecs.encode`` of a string as latin-1 (how those protocols store bytes). A file that
asks for anything else is refused in one line before any of it runs.

This module registers its datasets in :data:`darts_nas.data.DATASETS` when imported (as
``darts_nas.data`` does at its end).
"""

from __future__ import annotations

import dataclasses
import json
import pickle
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from .bench_files import latin1_encode
from .data import DATASETS, DatasetInfo, _DatasetEntry, _fixed_info
from .errors import ConfigError, DataError

__all__ = ["BatchUnpickler", "read_imagenet16_batch", "ImageNet16", "IMAGENET16_FILES"]

# The benchmark's normalisation (AutoDL's get_dataset_with_transform.py), pixel values / 255.
IMAGENET16_MEAN = tuple(v / 255 for v in (122.68, 116.66, 104.01))
IMAGENET16_STD = tuple(v / 255 for v in (63.22, 61.26, 65.09))
IMAGENET16_TRAIN_FILES = tuple(f"train_data_batch_{i}" for i in range(1, 11))
IMAGENET16_VAL_FILE = "val_data"
IMAGENET16_FILES = IMAGENET16_TRAIN_FILES + (IMAGENET16_VAL_FILE,)
IMAGENET16_SIDE = 16
IMAGENET16_ROW = 3 * IMAGENET16_SIDE * IMAGENET16_SIDE  # 768 values per image
IMAGENET16_FIX = ("point --data at the directory holding the ImageNet16 files train_data_batch_1..10 and "
                  "val_data (the 16x16 downsampled ImageNet from image-net.org, as NAS-Bench-201 uses it)")


def _allowed_globals() -> dict[tuple[str, str], Any]:
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): latin1_encode,
    }
    # The real files name numpy 1's module; numpy 2 writes (and aliases) numpy._core.
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = _reconstruct
    return allowed


class BatchUnpickler(pickle.Unpickler):
    """Reads a pickled batch of the ImageNet16 kind: any global beyond those a numpy array
    needs raises :class:`DataError` before it could be called. Strings are read as latin-1,
    as the files were written by Python 2."""

    ALLOWED = _allowed_globals()

    def __init__(self, file, source: str) -> None:
        super().__init__(file, encoding="latin1")
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise DataError(
                f"{self.source} asks to load {module}.{name}, which an ImageNet16 batch file never holds: "
                f"refused without running it; replace the file with one from the official download") from None

    def persistent_load(self, pid: Any) -> Any:
        raise DataError(f"{self.source} holds persistent references, which ImageNet16 batch files never do: "
                        f"refused; replace the file with one from the official download")


def read_imagenet16_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 rows (N, 768), 1-based int64 labels (N,)) of one ImageNet16 batch file, read by
    :class:`BatchUnpickler` and checked to be what the format holds."""
    corrupt = f"{path} is not a readable ImageNet16 batch file"
    fix = "download it again"
    try:
        with open(path, "rb") as f:
            batch = BatchUnpickler(f, str(path)).load()
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"{path} does not exist: {IMAGENET16_FIX}") from None
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, IndexError, AttributeError,
            KeyError, MemoryError) as exc:  # truncated, not a pickle, mangled
        detail = str(exc).splitlines()[0] if str(exc) else "truncated"
        raise DataError(f"{corrupt} ({type(exc).__name__}: {detail}): {fix}") from None
    if not isinstance(batch, dict) or "data" not in batch or "labels" not in batch:
        raise DataError(f"{corrupt} (not a dict with 'data' and 'labels'): {fix}")
    data, labels = batch["data"], batch["labels"]
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == IMAGENET16_ROW):
        shape = getattr(data, "shape", type(data).__name__)
        raise DataError(f"{corrupt} ('data' is {shape}, not uint8 rows of {IMAGENET16_ROW} values): {fix}")
    if not isinstance(labels, (list, tuple)) or not all(type(v) is int for v in labels):
        raise DataError(f"{corrupt} ('labels' is not a list of integers): {fix}")
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) != len(data):
        raise DataError(f"{corrupt} ({len(data)} images but {len(labels)} labels): {fix}")
    if len(labels) and (labels.min() < 1 or labels.max() > 1000):
        raise DataError(f"{corrupt} (labels outside 1..1000, the 1-based ImageNet classes): {fix}")
    return data, labels


class ImageNet16(Dataset):
    """ImageNet16-``num_classes``: the images of the 16x16 downsampled ImageNet whose 1-based
    label is at most ``num_classes``, as (PIL RGB image, label - 1) pairs, in file order.

    ``train`` reads ``train_data_batch_1`` .. ``10``, else ``val_data``. The batches are read one
    at a time and filtered, so the 120-class subset's 151,700 training images (116 MB) are all
    that stay in memory, not the full 1.28 million.
    """

    def __init__(self, root: Path, train: bool = True, transform: Callable | None = None,
                 num_classes: int = 120) -> None:
        files = IMAGENET16_TRAIN_FILES if train else (IMAGENET16_VAL_FILE,)
        missing = [f for f in files if not (Path(root) / f).is_file()]
        if missing:
            raise DataError(f"ImageNet16 under {root} is incomplete (missing {', '.join(missing)}): {IMAGENET16_FIX}")
        images, targets = [], []
        for name in files:
            data, labels = read_imagenet16_batch(Path(root) / name)
            keep = labels <= num_classes
            # Rows are channel planes: (N, 768) -> (N, 3, 16, 16) -> (N, 16, 16, 3) for PIL.
            images.append(data[keep].reshape(-1, 3, IMAGENET16_SIDE, IMAGENET16_SIDE).transpose(0, 2, 3, 1))
            targets.append(labels[keep] - 1)
        self.root = Path(root)
        self.train = train
        self.transform = transform
        self.data = np.ascontiguousarray(np.concatenate(images))  # (N, 16, 16, 3) uint8
        self.targets = [int(t) for t in np.concatenate(targets)]
        self.classes = [str(c) for c in range(num_classes)]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image = Image.fromarray(self.data[index])  # uint8 (16, 16, 3) -> mode 'RGB'
        if self.transform is not None:
            image = self.transform(image)
        return image, self.targets[index]


DATASETS.register(
    "imagenet16-120",
    _DatasetEntry(
        # The benchmark's augmentation: random crop 16 with padding 2, horizontal flip.
        info=_fixed_info(DatasetInfo("imagenet16-120", 3, 120, IMAGENET16_SIDE, IMAGENET16_MEAN, IMAGENET16_STD,
                                     hflip=True, crop_padding=2)),
        build=lambda root, train, download, image_size, transform: ImageNet16(root, train, transform),
        can_download=False,
        missing_root_fix=IMAGENET16_FIX,
    ),
)


# --- cifar10-valid: the two halves of CIFAR-10's training set --------------------------------

CIFAR10_VALID_NOTE = (
    "with NAS-Bench-201's cifar-split.txt in --data, its train and valid index lists of CIFAR-10's training set; "
    "without it, images 0..24,999 (data_batch_1..5 in order) and 25,000..49,999"
)


class _Part(Dataset):
    """The images ``indices`` of ``dataset``, with ``transform`` applied to each image.

    Not a :class:`darts_nas.data.TransformedSubset`: ``--gpu-data`` unwraps one of those to its
    whole underlying dataset, where this part must stay a part (it copies it without the transform).
    """

    def __init__(self, dataset: Dataset, indices: Sequence[int], transform: Callable | None) -> None:
        self.dataset = dataset
        self.indices = list(indices)  # read by data.data_split to fingerprint the images
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image, label = self.dataset[self.indices[index]]
        if self.transform is not None:
            image = self.transform(image)
        return image, label


CIFAR10_SPLIT_FILE = "cifar-split.txt"


def _build_cifar10_valid(root, train, download, image_size, transform):
    # With the benchmark's cifar-split.txt in --data: its "train" and "valid" index lists of the
    # training set. Without it: the first half of the training set is the train split, the second
    # half the test split (an odd count gives the extra image to the second half).
    full = DATASETS.get("cifar10").build(root, True, download, image_size, None)
    if root is not None and (Path(root) / CIFAR10_SPLIT_FILE).is_file():
        parts = read_split_file(Path(root) / CIFAR10_SPLIT_FILE, len(full), ("train", "valid"))
        return _Part(full, parts["train"] if train else parts["valid"], transform)
    half = len(full) // 2
    return _Part(full, range(half), transform) if train else _Part(full, range(half, len(full)), transform)


def _cifar10_valid_info():
    from .data import CIFAR10_MEAN, CIFAR10_STD

    return DatasetInfo("cifar10-valid", 3, 10, 32, CIFAR10_MEAN, CIFAR10_STD, hflip=True, crop_padding=4)


DATASETS.register(
    "cifar10-valid",
    _DatasetEntry(info=_fixed_info(_cifar10_valid_info()), build=_build_cifar10_valid, fixed_halves=True),
)


# --- the x-valid / x-test halves of CIFAR-100's and ImageNet16-120's test sets --------------

# NAS-Bench-201 evaluates cifar100 and ImageNet16-120 on two halves of their test set, x-valid and
# x-test (5,000 + 5,000 CIFAR-100 test images, 3,000 + 3,000 ImageNet16-120 val_data images), listed
# by index in files of AutoDL-Projects' configs/nas-benchmark/ (methods.md section 2.2, "Splits").
TEST_SPLIT_FILES = {"cifar100": "cifar100-test-split.txt", "imagenet16-120": "imagenet-16-120-test-split.txt"}
HALVES = {"xvalid": "x-valid", "xtest": "x-test"}


def read_split_file(path: Path, size: int, keys: Sequence[str] = tuple(HALVES)) -> dict[str, list[int]]:
    """``{key: [indices]}`` from a NAS-Bench-201 split file: a JSON object whose ``keys`` are AutoDL
    config values ``["int", [indices]]`` (a plain list is also taken), read as JSON (the official
    code ``eval``s it; nothing is evaluated here) and checked: integers within the ``size`` images
    split, no index twice, the parts disjoint."""
    fix = (f"copy {path.name} from AutoDL-Projects' configs/nas-benchmark/ (the NAS-Bench-201 split files) "
           f"into the --data directory {path.parent}")
    if not path.is_file():
        raise DataError(f"{path} does not exist: the benchmark's {'/'.join(keys)} parts are listed in it; {fix}")
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{path} is not a NAS-Bench-201 split file ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0]}): {fix}") from None
    parts: dict[str, list[int]] = {}
    for key in keys:
        value = raw.get(key) if isinstance(raw, dict) else None
        if isinstance(value, list) and len(value) == 2 and value[0] == "int" and isinstance(value[1], list):
            value = value[1]  # AutoDL's [type, value] config entry
        try:
            indices = [int(v) for v in value] if isinstance(value, list) else None
        except (TypeError, ValueError):
            indices = None
        if not indices:
            raise DataError(f"{path} holds no list of {key} indices: {fix}")
        if len(set(indices)) != len(indices) or min(indices) < 0 or max(indices) >= size:
            raise DataError(f"{path}: the {key} indices repeat or fall outside the {size} images they split: the "
                            f"file belongs to another dataset or is damaged; {fix}")
        parts[key] = indices
    seen: set[int] = set()
    for key in keys:
        if seen & set(parts[key]):
            raise DataError(f"{path}: the {' and '.join(keys)} parts share images: {fix}")
        seen |= set(parts[key])
    return parts


def _register_test_half(base: str, half: str) -> None:
    """``<base>-<half>``: the base dataset's training set as the train split and one half of its
    test set as the test split. The ``xvalid`` ones have fixed search halves: as in the
    benchmark's searches on CIFAR-100 and ImageNet16-120, the weights train on the training set
    and the alphas on x-valid; ``train_final.py`` reports the accuracy on the half it names."""
    entry = DATASETS.get(base)

    def build(root, train, download, image_size, transform):
        if train:
            return entry.build(root, True, download, image_size, transform)
        if root is None:
            raise ConfigError(f"{base}-{half} needs --data: the directory of {base} and {TEST_SPLIT_FILES[base]}")
        test = entry.build(root, False, download, image_size, None)
        indices = read_split_file(Path(root) / TEST_SPLIT_FILES[base], len(test))[half]
        return _Part(test, indices, transform)

    def info(root, image_size):
        return dataclasses.replace(entry.info(root, image_size), name=f"{base}-{half}")

    DATASETS.register(f"{base}-{half}", dataclasses.replace(entry, info=info, build=build,
                                                            fixed_halves=half == "xvalid"))


for _base in TEST_SPLIT_FILES:
    for _half in HALVES:
        _register_test_half(_base, _half)
