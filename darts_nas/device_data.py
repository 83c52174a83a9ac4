"""The whole dataset on the GPU, augmented there in batches (``--gpu-data``).

For CIFAR-sized data the DataLoader's per-image PIL augmentation in Python costs more than a
DARTS step on a modern GPU, which then idles. :class:`DeviceLoader` keeps the decoded images as
uint8 on the device (50,000 CIFAR images are 150 MiB) and applies the same recipe as
:func:`darts_nas.data.build_transform` for ``augment == "crop"`` to a whole batch at once: random
crop with zero padding, horizontal flip where it preserves the label, normalisation, cutout.

It behaves like the DataLoader it replaces where the rest of the code looks: ``sampler`` is the
same :class:`darts_nas.data.PassSampler` (so ``set_epoch``, :class:`darts_nas.data.InfiniteLoader`
and exact resume work unchanged), ``batch_size``, ``drop_last``, ``len()``. The random crop
offsets, flips and cutout centres of a batch are drawn from a CPU generator seeded by
``(seed, pass, batch number)``, so a batch is a pure function of its position: the same on any
device, and the same after a resume.
"""

from __future__ import annotations

import copy
from typing import Any, Iterator

import torch
import torchvision.transforms as T
from torch.utils.data import DataLoader, Dataset

from .data import DatasetInfo, PassSampler, SearchData, TrainTestData, TransformedSubset
from .errors import ConfigError

# Refuse to copy more than this to the device: such datasets belong to the DataLoader path.
MAX_DEVICE_BYTES = 8 * 2**30


def decode_images(dataset: Dataset, info: DatasetInfo, indices: list[int] | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 images (N, C, S, S), int64 labels (N,)) of ``dataset`` (items are PIL images),
    resized to ``info.image_size`` where the dataset needs it, with no other transform."""
    indices = list(range(len(dataset))) if indices is None else indices
    size = info.image_size
    n_bytes = len(indices) * info.in_channels * size * size
    if n_bytes > MAX_DEVICE_BYTES:
        raise ConfigError(f"--gpu-data would put {n_bytes / 2**30:.1f} GiB of images on the GPU: "
                          f"drop --gpu-data for a dataset this large (the DataLoader path with --workers scales)")
    resize = T.Resize((size, size)) if info.resize else None
    to_tensor = T.PILToTensor()
    images = torch.empty((len(indices), info.in_channels, size, size), dtype=torch.uint8)
    labels = torch.empty(len(indices), dtype=torch.int64)
    for i, index in enumerate(indices):
        image, label = dataset[index]
        if resize is not None:
            image = resize(image)
        image = to_tensor(image)
        if image.shape != images.shape[1:]:
            raise ConfigError(f"image {index} of {info.name} has shape {tuple(image.shape)} where "
                              f"{tuple(images.shape[1:])} was expected: drop --gpu-data")
        images[i] = image
        labels[i] = int(label)
    return images, labels


class DeviceLoader:
    """Batches of (normalised float images, labels) cut from uint8 images held on ``device``.

    ``augment`` applies the random crop (padding ``info.crop_padding``) and flip (if
    ``info.hflip``); ``cutout > 0`` zeroes a random square after normalisation, as
    :class:`darts_nas.data.Cutout` does.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, info: DatasetInfo, batch_size: int, *,
                 device: torch.device, shuffle: bool, seed: int, augment: bool, cutout: int = 0,
                 drop_last: bool = False) -> None:
        self.images = images.to(device)
        self.labels = labels.to(device)
        self.info = info
        self.batch_size = batch_size
        self.device = device
        self.sampler = PassSampler(len(labels), seed) if shuffle else None
        self.seed = seed
        self.augment = augment
        self.cutout = cutout
        self.drop_last = drop_last
        shape = (1, info.in_channels, 1, 1)
        self.mean = torch.tensor(info.mean, device=device).view(shape) * 255.0
        self.std = torch.tensor(info.std, device=device).view(shape) * 255.0

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.sampler is None:
            order, pass_index, first = torch.arange(len(self.labels)), 0, 0
        else:
            first = self.sampler.start // self.batch_size  # batches skipped on a resume
            pass_index = self.sampler.pass_index
            order = torch.tensor(list(iter(self.sampler)), dtype=torch.int64)
        order = order.to(self.device, non_blocking=True)
        for k, begin in enumerate(range(0, len(order), self.batch_size)):
            index = order[begin: begin + self.batch_size]
            if self.drop_last and len(index) < self.batch_size:
                return
            yield self._batch(index, pass_index, first + k)

    def _batch(self, index: torch.Tensor, pass_index: int, number: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.images[index]  # (B, C, S, S) uint8
        if self.augment:
            generator = torch.Generator().manual_seed(
                (self.seed * 1_000_003 + pass_index * 100_003 + number) % 2**63)
            x = self._crop_flip(x, generator)
        x = (x.float() - self.mean) / self.std
        if self.augment and self.cutout > 0:
            x = self._cutout(x, generator)
        return x, self.labels[index]

    def _crop_flip(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        b, _, size, _ = x.shape
        pad = self.info.crop_padding
        offsets = torch.randint(0, 2 * pad + 1, (b, 2), generator=generator).to(self.device, non_blocking=True)
        flips = torch.rand(b, generator=generator) < 0.5
        padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))  # zeros: black, as RandomCrop pads
        steps = torch.arange(size, device=self.device)
        rows = (offsets[:, 0, None] + steps)[:, :, None]  # (B, S, 1)
        cols = (offsets[:, 1, None] + steps)[:, None, :]  # (B, 1, S)
        if self.info.hflip:
            flips = flips.to(self.device, non_blocking=True)
            cols = torch.where(flips[:, None, None], cols.flip(-1), cols)
        batch = torch.arange(b, device=self.device)[:, None, None]
        # (B, S, S, C) -> (B, C, S, S)
        return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)

    def _cutout(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        b, _, h, w = x.shape
        cy = torch.randint(h, (b,), generator=generator).to(self.device)
        cx = torch.randint(w, (b,), generator=generator).to(self.device)
        half = self.cutout // 2
        ys = torch.arange(h, device=self.device)
        xs = torch.arange(w, device=self.device)
        # The square [c - half, c - half + length) clipped to the image, as Cutout does.
        in_y = (ys[None, :] >= cy[:, None] - half) & (ys[None, :] < cy[:, None] - half + self.cutout)
        in_x = (xs[None, :] >= cx[:, None] - half) & (xs[None, :] < cx[:, None] - half + self.cutout)
        mask = in_y[:, :, None] & in_x[:, None, :]  # (B, H, W)
        return x.masked_fill(mask[:, None], 0.0)


def supports_device_data(info: DatasetInfo) -> bool:
    """Only the crop recipe (CIFAR-like data) runs on the device; ImageNet-style data does not."""
    return info.augment == "crop"


def _plain(dataset: Dataset) -> Dataset:
    """The dataset with its transform removed (items become PIL images again)."""
    if isinstance(dataset, TransformedSubset):
        return dataset.dataset
    plain = copy.copy(dataset)
    if hasattr(plain, "transform"):
        plain.transform = None
    if hasattr(plain, "transforms"):
        plain.transforms = None
    return plain


def _like(loader: DataLoader, images, labels, info, device, augment: bool, cutout: int = 0) -> DeviceLoader:
    sampler = loader.sampler
    shuffle = isinstance(sampler, PassSampler)
    return DeviceLoader(images, labels, info, loader.batch_size, device=device, shuffle=shuffle,
                        seed=sampler.seed if shuffle else 0, augment=augment, cutout=cutout,
                        drop_last=loader.drop_last)


def _check(info: DatasetInfo) -> None:
    if not supports_device_data(info):
        raise ConfigError(f"--gpu-data supports CIFAR-style datasets (random-crop augmentation); {info.name} uses "
                          f"the ImageNet recipe: drop --gpu-data and use --workers instead")


def search_data_on_device(data: SearchData, device: torch.device, cutout: int = 0) -> SearchData:
    """The same split, shuffles and seeds as ``data``, with every loader replaced by a
    :class:`DeviceLoader` over images decoded once (``cutout``: as the search's ``--cutout``)."""
    _check(data.info)
    from .data import InfiniteLoader

    weight_set: TransformedSubset = data.weight_loader.dataset
    arch_set: TransformedSubset = data.arch_loader.loader.dataset
    base = _plain(weight_set)
    indices = weight_set.indices + arch_set.indices
    images, labels = decode_images(base, data.info, indices)
    images, labels = images.to(device), labels.to(device)
    n = len(weight_set.indices)
    w_images, w_labels, a_images, a_labels = images[:n], labels[:n], images[n:], labels[n:]
    arch = InfiniteLoader(_like(data.arch_loader.loader, a_images, a_labels, data.info, device, augment=True,
                                cutout=cutout))
    arch.load_state_dict(data.arch_loader.state_dict())
    return SearchData(
        weight_loader=_like(data.weight_loader, w_images, w_labels, data.info, device, augment=True, cutout=cutout),
        arch_loader=arch, info=data.info, num_weight=data.num_weight, num_arch=data.num_arch,
        arch_eval_loader=_like(data.arch_eval_loader, a_images, a_labels, data.info, device, augment=False),
        split=data.split,
    )


def train_test_data_on_device(data: TrainTestData, device: torch.device, cutout: int) -> TrainTestData:
    """``data`` with both loaders replaced by :class:`DeviceLoader` s (train: crop, flip, cutout)."""
    _check(data.info)
    train_images, train_labels = decode_images(_plain(data.train_loader.dataset), data.info)
    test_images, test_labels = decode_images(_plain(data.test_loader.dataset), data.info)
    return TrainTestData(
        train_loader=_like(data.train_loader, train_images, train_labels, data.info, device, True, cutout),
        test_loader=_like(data.test_loader, test_images, test_labels, data.info, device, False),
        info=data.info, num_train=data.num_train, num_test=data.num_test, split=data.split,
    )


def describe(loader: Any) -> str:
    return "GPU-resident" if isinstance(loader, DeviceLoader) else "DataLoader"


def use_device_data(setting: bool | None, device: torch.device, info: DatasetInfo) -> bool:
    """``--gpu-data``: on by request (on any device), off by request, or by default on CUDA for
    data the device loader supports."""
    if setting is None:
        return device.type == "cuda" and supports_device_data(info)
    return setting
