"""The final networks that retrain a genotype from scratch (REFERENCE section 4).

A :class:`Cell` is built from one cell of a :class:`~darts_nas.genotype.Genotype`: two
preprocessed inputs, one op per ``(op, input)`` pair, each intermediate node the sum of its two
ops, and the output the channel concatenation of the nodes in ``concat``. Stacking cells gives
:class:`NetworkCIFAR` (3x3 stem, reductions at ``layers // 3`` and ``2 * layers // 3``) and
:class:`NetworkImageNet` (three stride-2 stem convs, so cells start at 1/8 of the input size).
Both return ``(logits, logits_aux)``; ``logits_aux`` comes from an auxiliary head after the
second reduction cell and only in training mode.

Regularisation is drop-path (:func:`drop_path`) on every op output except identities, with the
probability in the network's ``drop_path_prob`` attribute, which the training loop ramps up.

:data:`NETWORKS` maps a kind (``"cifar"``, ``"imagenet"``) to a builder; :func:`build_network`
looks one up. :func:`count_parameters` and :func:`count_multiply_adds` give the sizes the papers
report (REFERENCE section 6).
"""

from __future__ import annotations

import operator
import os
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .arch_string import SPACE as NB201_SPACE
from .arch_string import resolve_arch
from .chain_genotype import SPACE as CHAIN_SPACE
from .chain_genotype import resolve_chain
from .errors import ConfigError, DataError
from .genotype import Genotype, resolve
from .ops import OPS, FactorizedReduce, GlobalAvgPool, Identity, ReLUConvBN
from .registry import Registry

NETWORKS: Registry = Registry("network")


# ---------------------------------------------------------------------------------------------
# Drop-path
# ---------------------------------------------------------------------------------------------


def drop_path(x: torch.Tensor, drop_prob: float, training: bool = True) -> torch.Tensor:
    """Zero whole samples of ``x`` with probability ``drop_prob`` and scale the rest by
    ``1 / (1 - drop_prob)``, so the expectation is unchanged. Identity when not ``training`` or
    when ``drop_prob`` is 0.

    The mask has one entry per sample, (B, 1, 1, 1) for images, and lives on ``x``'s device
    and dtype.
    """
    if not training or drop_prob == 0.0:
        return x
    if not 0.0 <= drop_prob < 1.0:
        raise ConfigError(f"drop-path probability must be in [0, 1), got {drop_prob}; use e.g. 0.2")
    keep = 1.0 - drop_prob
    mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)  # (B, 1, 1, 1)
    return x / keep * mask


# ---------------------------------------------------------------------------------------------
# Cells
# ---------------------------------------------------------------------------------------------


def _odd_channels_error(what: str, C: int) -> ConfigError:
    return ConfigError(
        f"{what} needs an even number of channels (FactorizedReduce splits them in two halves), "
        f"but the cell has C={C}; use an even number of initial channels"
    )


class Cell(nn.Module):
    """One cell of the final network, built from a genotype cell.

    ``pairs`` are the cell's ``(op, input)`` pairs, two per intermediate node (pair ``k`` feeds
    node ``2 + k // 2``); ``concat`` lists the nodes whose outputs are concatenated. Inputs are
    the outputs of the cell two back (``C_pp`` channels) and of the previous cell (``C_p``
    channels); both are brought to ``C`` channels (and to the same resolution, with a
    FactorizedReduce, when the previous cell was a reduction). In a reduction cell the ops on
    edges from the two inputs have stride 2. The output has ``len(concat) * C`` channels.

    ``nodes`` (a sparse cell, FairDARTS): the node each pair feeds, in increasing order, any number
    of pairs per node. A node without an input from a cell input or a computed node is dropped as
    in the FairDARTS code: not computed, its outgoing edges not built, and left out of the concat
    (the output has ``len(concat minus the dropped nodes) * C`` channels).
    """

    def __init__(self, pairs: Sequence[tuple[str, int]], concat: Sequence[int], C_pp: int,
                 C_p: int, C: int, reduction: bool, reduction_prev: bool,
                 nodes: Sequence[int] | None = None) -> None:
        super().__init__()
        pairs = tuple((str(op), int(j)) for op, j in pairs)
        concat = tuple(int(n) for n in concat)
        if nodes is None:
            if not pairs or len(pairs) % 2:
                raise ConfigError(
                    f"a cell needs two (op, input) pairs per intermediate node, got {len(pairs)} pairs"
                )
            targets = tuple(2 + k // 2 for k in range(len(pairs)))
            self.steps = len(pairs) // 2
        else:
            targets = tuple(int(n) for n in nodes)
            if len(targets) != len(pairs) or list(targets) != sorted(targets) or any(n < 2 for n in targets):
                raise ConfigError(f"nodes {list(targets)} must give one intermediate node (>= 2) per pair, "
                                  f"in increasing order; fix the genotype")
            self.steps = max(targets + concat + (1,)) - 1
        last = self.steps + 1
        for k, ((op, j), node) in enumerate(zip(pairs, targets)):
            if not 0 <= j < node:
                raise ConfigError(
                    f"pair {k} ({op!r}, {j}) feeds intermediate node {node - 2} (index {node}) from index "
                    f"{j}; use an input index below {node} (0 is c_{{k-2}}, 1 is c_{{k-1}}, 2 is node 0)"
                )
        if not concat or any(not 0 <= n <= last for n in concat):
            raise ConfigError(f"concat {list(concat)} must list nodes in 0..{last}; fix the genotype")
        if reduction and any(n < 2 for n in concat):
            # Inputs keep their resolution while every intermediate node of a reduction cell is
            # halved, so they could not be concatenated.
            raise ConfigError(
                f"a reduction cell cannot concatenate its input nodes 0 or 1 (concat {list(concat)}): "
                f"they are at twice the resolution of the other nodes; concatenate only nodes >= 2"
            )
        # The edges that compute something: from an input or a node that has such an edge.
        live = {0, 1}
        for (_, j), node in zip(pairs, targets):
            if j in live:
                live.add(node)
        kept = [k for k, ((_, j), _) in enumerate(zip(pairs, targets)) if j in live]
        concat = tuple(n for n in concat if n in live)
        if not concat:
            raise ConfigError("the cell keeps no path from its inputs to its output (every concatenated node "
                              "is dropped for want of an input), so no network can be built from it; search "
                              "longer or derive the genotype with a lower --fair-threshold")
        self.reduction = reduction
        self.reduction_prev = reduction_prev
        self.concat = concat
        self.multiplier = len(concat)
        self.C = C
        self.C_out = self.multiplier * C

        # The cell two back is at twice our input resolution when the previous cell reduced.
        if reduction_prev:
            if C % 2:
                raise _odd_channels_error("a cell after a reduction cell", C)
            self.preprocess0 = FactorizedReduce(C_pp, C, affine=True)
        else:
            self.preprocess0 = ReLUConvBN(C_pp, C, 1, 1, 0, affine=True)
        self.preprocess1 = ReLUConvBN(C_p, C, 1, 1, 0, affine=True)

        self.ops = nn.ModuleList()
        for k in kept:
            op, j = pairs[k]
            stride = 2 if reduction and j < 2 else 1
            factory = OPS.get(op)  # unknown name -> ConfigError listing the valid ones
            try:
                self.ops.append(factory(C, stride, True))
            except ValueError:
                raise _odd_channels_error(f"op {op!r} at stride {stride}", C) from None
        self.indices = tuple(pairs[k][1] for k in kept)
        self.targets = tuple(targets[k] for k in kept)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, drop_prob: float = 0.0) -> torch.Tensor:
        # s0: (B, C_pp, 2H, 2W) if reduction_prev else (B, C_pp, H, W); s1: (B, C_p, H, W)
        states: list[torch.Tensor | None] = [self.preprocess0(s0), self.preprocess1(s1)] + [None] * self.steps
        # The edges in node order: every input of an edge is complete before the edge reads it.
        for op, j, node in zip(self.ops, self.indices, self.targets):
            h = op(states[j])
            # As in the paper's code: identities are never dropped.
            if self.training and drop_prob > 0.0 and not isinstance(op, (Identity, nn.Identity)):
                h = drop_path(h, drop_prob)
            states[node] = h if states[node] is None else states[node] + h
        # (B, len(concat) * C, H', W'); H' = ceil(H / 2) in a reduction cell
        return torch.cat([states[n] for n in self.concat], dim=1)


# ---------------------------------------------------------------------------------------------
# Auxiliary heads
# ---------------------------------------------------------------------------------------------


class _AuxiliaryHead(nn.Module):
    """ReLU, 5x5 average pool (no padding), 1x1 conv to 128, BN, ReLU, 2x2 conv to 768,
    [BN,] ReLU, linear. At the standard sizes the pool leaves a 2x2 map, which the 2x2 conv
    turns into one 768-vector.

    Other sizes: when the map is smaller than the 5x5 pool window the pool is skipped, and when
    the map entering the 2x2 conv is not 2x2 it is first average-pooled adaptively to 2x2. Neither
    adds parameters nor changes anything at the standard sizes.
    """

    def __init__(self, C: int, num_classes: int, pool_stride: int, bn_after_conv2: bool) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(5, stride=pool_stride, padding=0, count_include_pad=False)
        self.features = nn.Sequential(
            nn.Conv2d(C, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=False),
        )
        tail: list[nn.Module] = [nn.Conv2d(128, 768, 2, bias=False)]
        if bn_after_conv2:
            tail.append(nn.BatchNorm2d(768))
        tail.append(nn.ReLU(inplace=False))
        self.conv2 = nn.Sequential(*tail)
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, C, H, W), 8x8 (CIFAR) or 7x7 (ImageNet) at the standard image sizes
        x = F.relu(x)
        if x.shape[-2] >= 5 and x.shape[-1] >= 5:
            x = self.pool(x)  # (B, C, 2, 2) at the standard sizes
        x = self.features(x)  # (B, 128, h, w)
        if tuple(x.shape[-2:]) != (2, 2):
            x = F.adaptive_avg_pool2d(x, 2)
        x = self.conv2(x)  # (B, 768, 1, 1)
        return self.classifier(x.flatten(1))  # (B, num_classes)


class AuxiliaryHeadCIFAR(_AuxiliaryHead):
    """Auxiliary classifier after the second reduction cell of the CIFAR network (8x8 input at
    32x32 images): pool stride 3, BN after both convs."""

    def __init__(self, C: int, num_classes: int) -> None:
        super().__init__(C, num_classes, pool_stride=3, bn_after_conv2=True)


class AuxiliaryHeadImageNet(_AuxiliaryHead):
    """Auxiliary classifier of the ImageNet network: pool stride 2 and, following the layout of
    the original DARTS code (with which the paper's ImageNet results were obtained), no BN after
    the 2x2 conv."""

    def __init__(self, C: int, num_classes: int) -> None:
        super().__init__(C, num_classes, pool_stride=2, bn_after_conv2=False)


# ---------------------------------------------------------------------------------------------
# Networks
# ---------------------------------------------------------------------------------------------


def _check_count(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"the number of {name} must be an integer, got {value!r}")
    try:
        value = operator.index(value)
    except TypeError:
        raise ConfigError(f"the number of {name} must be an integer, got {value!r}") from None
    if value < 1:
        raise ConfigError(f"the number of {name} must be at least 1, got {value}")
    return value


def _check_genotype(genotype: Any) -> Genotype:
    if not isinstance(genotype, Genotype):
        raise ConfigError(
            f"genotype must be a darts_nas.genotype.Genotype, got {type(genotype).__name__}; "
            f"load one with darts_nas.genotype.load_cell or resolve"
        )
    return genotype


def _reduction_layers(layers: int) -> tuple[int, ...]:
    """Indices of the reduction cells; they coincide for a single layer."""
    return tuple(sorted({layers // 3, 2 * layers // 3}))


# Stride-2 stages of each network's stem (the search supernet's stem is the CIFAR one).
STEM_HALVINGS = {"cifar": 0, "imagenet": 3}


def check_image_size(image_size: int, network: str, layers: int) -> None:
    """Refuse images too small for the network: every stride-2 stage (stem and reduction cells)
    must receive a map of at least 2x2, or it no longer reduces anything (and BatchNorm may see a
    single value per channel). Sizes are rounded up at each stage, so odd sizes are fine."""
    halvings = STEM_HALVINGS.get(network, 0) + len(_reduction_layers(layers))
    minimum = 2 ** (halvings - 1) + 1 if halvings else 1
    if image_size < minimum:
        raise DataError(
            f"{image_size}x{image_size} images are too small for the {network} network with {layers} cells: "
            f"its {halvings} stride-2 stages need images of at least {minimum}x{minimum}; use larger images "
            f"(--image-size {minimum} or more for a folder or imagenet dataset)")


def physical_memory() -> int | None:
    """This machine's RAM in bytes (None where the OS does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def check_stem_fits_in_memory(image_size: int, batch_size: int, network: str, C: int) -> None:
    """Refuse a size no machine here could train: the stem's output for one batch, float32, the
    first of the many activations of a step, must fit in this machine's RAM (where the data
    loader builds every batch, GPU or not). Otherwise the OS kills the process with no message."""
    if network == "imagenet":  # stem0: stride-2 conv to C // 2 channels
        channels, side = max(C // 2, 1), -(-image_size // 2)
    else:  # the CIFAR network's and the search supernet's 3x3 stem to 3 * C channels
        channels, side = 3 * C, image_size
    needed, total = batch_size * channels * side * side * 4, physical_memory()
    if total and needed > total:
        raise ConfigError(
            f"{image_size}x{image_size} images cannot be trained here: the stem's output for one batch of "
            f"{batch_size} ({channels} channels, float32) alone takes {needed / 2**30:,.1f} GiB, more than this "
            f"machine's {total / 2**30:,.1f} GiB of memory; use a smaller --image-size or --batch-size")


class _Network(nn.Module):
    """Shared body: a stack of cells, an optional auxiliary head, global pool and classifier.

    Subclasses build the stem and call :meth:`_build_cells`; :meth:`_stem` maps the input to
    the two first cell inputs.
    """

    def _build_cells(self, genotype: Genotype, C: int, layers: int, C_pp: int, C_p: int,
                     reduction_prev: bool) -> int:
        """Append ``layers`` cells to ``self.cells``; returns the channels of the last cell's
        output and records ``self.aux_channels``, those of the cell the auxiliary head reads."""
        self.cells = nn.ModuleList()
        reductions = _reduction_layers(layers)
        self.aux_index = 2 * layers // 3
        self.aux_channels = 0
        C_curr = C
        for i in range(layers):
            reduction = i in reductions
            if reduction:
                C_curr *= 2
            kind = "reduce" if reduction else "normal"
            cell = Cell(getattr(genotype, kind), getattr(genotype, f"{kind}_concat"), C_pp, C_p, C_curr, reduction,
                        reduction_prev, nodes=getattr(genotype, f"{kind}_nodes", None))
            self.cells.append(cell)
            reduction_prev = reduction
            # The normal and the reduction cell may concatenate different numbers of nodes.
            C_pp, C_p = C_p, cell.C_out
            if i == self.aux_index:
                self.aux_channels = C_p
        return C_p

    def _stem(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        # x: (B, in_channels, H, W) -> logits (B, num_classes), logits_aux (B, num_classes) or None
        logits_aux = None
        s0, s1 = self._stem(x)
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if i == self.aux_index and self.auxiliary and self.training:
                logits_aux = self.auxiliary_head(s1)
        out = self.global_pooling(s1).flatten(1)  # (B, C_last)
        return self.classifier(out), logits_aux


class NetworkCIFAR(_Network):
    """The DARTS CIFAR network: 3x3 conv stem to ``stem_multiplier * C`` channels and BN, then
    ``layers`` cells with reductions (channels doubled, resolution halved) at ``layers // 3``
    and ``2 * layers // 3``, global average pool, linear. With ``auxiliary`` an
    :class:`AuxiliaryHeadCIFAR` reads the output of cell ``2 * layers // 3``.

    ``forward(x) -> (logits, logits_aux)``; ``logits_aux`` is None unless training with the
    auxiliary head. ``drop_path_prob`` (default 0) is set by the training loop.
    """

    def __init__(self, C: int, num_classes: int, layers: int, auxiliary: bool, genotype: Genotype,
                 in_channels: int = 3, stem_multiplier: int = 3) -> None:
        super().__init__()
        C = _check_count("initial channels", C)
        num_classes = _check_count("classes", num_classes)
        layers = _check_count("layers", layers)
        in_channels = _check_count("input channels", in_channels)
        stem_multiplier = _check_count("stem channels per initial channel", stem_multiplier)
        self.genotype = _check_genotype(genotype)
        self.C = C
        self.num_classes = num_classes
        self.layers = layers
        self.auxiliary = bool(auxiliary)
        self.drop_path_prob = 0.0

        C_stem = stem_multiplier * C
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, C_stem, 3, padding=1, bias=False),
            nn.BatchNorm2d(C_stem),
        )
        C_last = self._build_cells(genotype, C, layers, C_stem, C_stem, reduction_prev=False)
        if self.auxiliary:
            self.auxiliary_head = AuxiliaryHeadCIFAR(self.aux_channels, num_classes)
        self.global_pooling = GlobalAvgPool()
        self.classifier = nn.Linear(C_last, num_classes)

    def _stem(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.stem(x)  # (B, stem_multiplier * C, H, W)
        return s, s


class NetworkImageNet(_Network):
    """The DARTS ImageNet (mobile) network: ``stem0`` (3x3 conv stride 2 to ``C // 2``, BN,
    ReLU, 3x3 conv stride 2 to ``C``, BN) and ``stem1`` (ReLU, 3x3 conv stride 2, BN), so the
    cells start at 1/8 of the input size (28x28 at 224x224); ``layers`` cells with reductions at
    ``layers // 3`` and ``2 * layers // 3``, the first cell reading ``stem0`` through a
    FactorizedReduce; global average pool (adaptive, so any input size works), linear. With
    ``auxiliary`` an :class:`AuxiliaryHeadImageNet` reads cell ``2 * layers // 3``.

    ``forward(x) -> (logits, logits_aux)`` as for :class:`NetworkCIFAR`.
    """

    def __init__(self, C: int, num_classes: int, layers: int, auxiliary: bool, genotype: Genotype,
                 in_channels: int = 3) -> None:
        super().__init__()
        C = _check_count("initial channels", C)
        num_classes = _check_count("classes", num_classes)
        layers = _check_count("layers", layers)
        in_channels = _check_count("input channels", in_channels)
        self.genotype = _check_genotype(genotype)
        if C % 2:
            raise ConfigError(
                f"the ImageNet network needs an even number of initial channels (its stem halves "
                f"them and its first cell applies a FactorizedReduce), got C={C}; use e.g. C={C + 1}"
            )
        self.C = C
        self.num_classes = num_classes
        self.layers = layers
        self.auxiliary = bool(auxiliary)
        self.drop_path_prob = 0.0

        self.stem0 = nn.Sequential(
            nn.Conv2d(in_channels, C // 2, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C // 2),
            nn.ReLU(inplace=False),
            nn.Conv2d(C // 2, C, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C),
        )
        self.stem1 = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C, C, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C),
        )
        # stem0's output is at twice the resolution of stem1's, hence reduction_prev=True.
        C_last = self._build_cells(genotype, C, layers, C, C, reduction_prev=True)
        if self.auxiliary:
            self.auxiliary_head = AuxiliaryHeadImageNet(self.aux_channels, num_classes)
        self.global_pooling = GlobalAvgPool()  # AvgPool2d(7) at 224x224 in the paper
        self.classifier = nn.Linear(C_last, num_classes)

    def _stem(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s0 = self.stem0(x)  # (B, C, H/4, W/4)
        s1 = self.stem1(s0)  # (B, C, H/8, W/8)
        return s0, s1


@NETWORKS.register("cifar")
def build_cifar_network(genotype: Genotype, C: int, layers: int, num_classes: int,
                        auxiliary: bool = False, in_channels: int = 3, **_: object) -> NetworkCIFAR:
    return NetworkCIFAR(C, num_classes, layers, auxiliary, genotype, in_channels=in_channels)


def build_nb201_network(genotype, C: int, layers: int, num_classes: int, auxiliary: bool = False,
                        in_channels: int = 3, **_: object):
    """NAS-Bench-201's tiny network of ``layers`` cells (3 stages; the benchmark's: 15 cells, C=16)."""
    from .spaces.nas_bench_201 import TinyNetwork

    return TinyNetwork(genotype, C=C, N=layers // 3, num_classes=num_classes, in_channels=in_channels)


@NETWORKS.register("imagenet")
def build_imagenet_network(genotype: Genotype, C: int, layers: int, num_classes: int,
                           auxiliary: bool = False, in_channels: int = 3,
                           **_: object) -> NetworkImageNet:
    return NetworkImageNet(C, num_classes, layers, auxiliary, genotype, in_channels=in_channels)


NETWORKS.register("nas-bench-201", build_nb201_network)


@NETWORKS.register("proxyless")
def build_chain_network(genotype, C: int, layers: int, num_classes: int, auxiliary: bool = False,
                        in_channels: int = 3, **_: object):
    """The ProxylessNAS chain of ``genotype`` at stem width ``C`` (32: width multiplier 1); its depth is
    the genotype's (``layers`` is not used)."""
    from .spaces.proxyless import ChainNetwork

    return ChainNetwork(genotype, C=C, num_classes=num_classes, in_channels=in_channels)


def resolve_cell(kind: str, spec: str):
    """A cell spec (a name, genotype text, a JSON file or a search run) as the network ``kind``
    reads it: a NAS-Bench-201 arch string for the benchmark's network, a ProxylessNAS chain for the
    proxyless network, a DARTS genotype otherwise."""
    if kind == NB201_SPACE:
        return resolve_arch(spec)
    if kind == CHAIN_SPACE:
        return resolve_chain(spec)
    return resolve(spec)


def build_network(kind: str, genotype: Genotype | str, C: int, layers: int, num_classes: int,
                  auxiliary: bool = False, in_channels: int = 3) -> nn.Module:
    """Build the final network of ``kind`` (a name in :data:`NETWORKS`: ``"cifar"`` or
    ``"imagenet"``). ``genotype`` may also be a spec for :func:`darts_nas.genotype.resolve`
    (a cell name such as ``"darts_v2"``, a JSON file, genotype text)."""
    builder = NETWORKS.get(kind)  # unknown kind -> ConfigError listing the valid ones
    if isinstance(genotype, str):
        genotype = resolve_cell(kind, genotype)
    return builder(genotype=genotype, C=C, layers=layers, num_classes=num_classes,
                   auxiliary=auxiliary, in_channels=in_channels)


# ---------------------------------------------------------------------------------------------
# Sizes
# ---------------------------------------------------------------------------------------------


def _auxiliary_parameter_ids(model: nn.Module) -> set[int]:
    return {id(p) for m in model.modules() if isinstance(m, _AuxiliaryHead) for p in m.parameters()}


def count_parameters(model: nn.Module, exclude_auxiliary: bool = True) -> int:
    """Number of parameters of ``model`` (shared ones once); by default without those of its
    auxiliary head, which is how the papers report sizes (see :func:`count_auxiliary_parameters`)."""
    skip = _auxiliary_parameter_ids(model) if exclude_auxiliary else set()
    return sum(p.numel() for p in model.parameters() if id(p) not in skip)


def count_auxiliary_parameters(model: nn.Module) -> int:
    """Number of parameters in the auxiliary head(s) of ``model`` (0 without one)."""
    aux = _auxiliary_parameter_ids(model)
    return sum(p.numel() for p in model.parameters() if id(p) in aux)


def count_multiply_adds(model: nn.Module, input_size: Sequence[int]) -> int:
    """Multiply-adds of one forward pass of ``model`` on a zero input of shape ``input_size``
    (e.g. ``(1, 3, 224, 224)``; the count is for the whole batch, so use batch 1 for the
    per-image figure the papers report).

    Counted with ``torch.utils.flop_counter.FlopCounterMode``, which counts matrix products and
    convolutions (conv and linear layers) at 2 FLOPs per multiply-add, so the result is total
    FLOPs // 2; pooling, BN, ReLU and additions are not counted. The pass runs in eval mode under
    ``torch.no_grad`` (no drop-path, no auxiliary head). Only the forward pass is counted, so the
    counter's known overcount of grouped (depthwise) convolutions in the backward pass does not
    arise. The model's training flags and buffers (BN running statistics) are restored afterwards.
    """
    from torch.utils.flop_counter import FlopCounterMode

    try:
        shape = tuple(operator.index(d) for d in input_size)
    except TypeError:
        raise ConfigError(
            f"input_size must be a tuple of integers such as (1, 3, 32, 32), got {input_size!r}"
        ) from None
    if len(shape) < 2 or any(d < 1 for d in shape):
        raise ConfigError(f"input_size must be positive sizes such as (1, 3, 32, 32), got {shape}")
    reference = next(model.parameters(), None)
    if reference is None:
        reference = next(model.buffers(), None)
    device = reference.device if reference is not None else torch.device("cpu")
    dtype = reference.dtype if reference is not None and reference.is_floating_point() else torch.float32
    x = torch.zeros(shape, device=device, dtype=dtype)

    modes = [(m, m.training) for m in model.modules()]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    counter = FlopCounterMode(display=False)
    try:
        model.eval()
        with torch.no_grad(), counter:
            model(x)
    finally:
        for m, training in modes:
            m.training = training
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
    return int(counter.get_total_flops()) // 2


__all__ = [
    "NETWORKS",
    "AuxiliaryHeadCIFAR",
    "AuxiliaryHeadImageNet",
    "Cell",
    "NetworkCIFAR",
    "NetworkImageNet",
    "build_network",
    "count_auxiliary_parameters",
    "count_multiply_adds",
    "count_parameters",
    "drop_path",
]
