"""The ProxylessNAS chain space (``--space proxyless``; README "ProxylessNAS space"): a MobileNetV2-like
chain whose every searched layer is one edge of the method mixing inverted-residual blocks.

Skeleton (mit-han-lab/proxylessnas ``search/models/super_nets/super_proxyless.py``, at width
multiplier 1): a 3x3 conv (stride 2, 32 channels) -> BN -> ReLU6; a fixed first block
``3x3_MBConv1`` to 16 channels; six stages of 24, 40, 80, 96, 192, 320 channels with 4, 4, 4, 4,
4, 1 searched layers, the first layer of each stage striding 2, 2, 2, 1, 2, 1; a 1x1 conv to 1280
channels -> BN -> ReLU6; global average pool; linear classifier. Every BatchNorm has eps 1e-3
(the code's ``bn_param``) and affine parameters, in the supernet too.

A searched layer mixes the candidate blocks ``KxK_MBConvE`` (1x1 expansion conv to ``round(E *
C_in)`` channels -> BN -> ReLU6, omitted when E = 1; KxK depthwise conv with the layer's stride ->
BN -> ReLU6; 1x1 conv -> BN, no activation) with the method's mixing weights. A layer whose input
and output shapes match (stride 1, same width) also offers ``none`` (the code's ``Zero``) and
adds its input (the identity shortcut): ``x + sum_k w_k block_k(x)``, so that ``none`` skips the
layer; a stage's first layer has no shortcut and no ``none``.

The layers fall into two groups of architecture parameters, each one dense (layers, ops) tensor
as every method expects: ``alphas_conv`` (the layers that change shape: the MBConv candidates)
and ``alphas_skippable`` (the others: ``none`` and the candidates). A row is one layer's
distribution, as ProxylessNAS's per-layer ``AP_path_alpha``. Scaling down: ``--init-channels``
is the stem width (32: multiplier 1; every width times ``C / 32``, by the code's
``make_divisible``), ``--layers`` caps each stage's searched layers (4: the published depths).

:class:`ChainNetwork` is the network of a derived chain (``train_final --space proxyless``); its
mult-adds are :func:`darts_nas.network.count_multiply_adds`'s (convs and the linear layer, as the
ProxylessNAS code's ``count_conv_flop`` and ``LinearLayer.get_flops`` count them).
"""

from __future__ import annotations

import contextlib
from typing import Any, Sequence

import torch
from torch import nn

from ..chain_genotype import (CHAIN_PRIMITIVES, STAGE_DEPTHS, ChainGenotype, derive_chain, parse_op, scaled_plan,
                              scaled_widths)
from ..errors import ConfigError
from ..registry import Registry
from ..supernet import ArchParameters
from . import SEARCH_SPACES

BN_EPS = 1e-3  # ProxylessNAS's bn_param (momentum 0.1, PyTorch's default, eps 1e-3)
GROUPS = ("conv", "skippable")


def _bn(C: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(C, eps=BN_EPS)


class MBConv(nn.Sequential):
    """An inverted-residual block without its shortcut: [1x1 conv -> BN -> ReLU6] (when
    ``expand`` > 1) -> KxK depthwise conv (``stride``) -> BN -> ReLU6 -> 1x1 conv -> BN. Bias-free convs."""

    def __init__(self, C_in: int, C_out: int, kernel: int, stride: int, expand: int) -> None:
        mid = round(C_in * expand)
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(C_in, mid, 1, bias=False), _bn(mid), nn.ReLU6(inplace=False)]
        layers += [nn.Conv2d(mid, mid, kernel, stride, kernel // 2, groups=mid, bias=False), _bn(mid),
                   nn.ReLU6(inplace=False), nn.Conv2d(mid, C_out, 1, bias=False), _bn(C_out)]
        super().__init__(*layers)


def block_factory(name: str, C_in: int, C_out: int):
    """``factory(C, stride, affine)`` (the signature a method's edge builds ops with) of the block
    ``name`` from ``C_in`` to ``C_out`` channels; ``C`` and ``affine`` are not used: the layer
    fixes its widths, and ProxylessNAS's BatchNorms are affine."""
    kernel, expand = parse_op(name)
    return lambda C, stride, affine: MBConv(C_in, C_out, kernel, stride, expand)


def layer_ops(C_in: int, C_out: int, primitives: Sequence[str]) -> Registry:
    """The op registry of one layer: each MBConv candidate from ``C_in`` to ``C_out`` channels."""
    registry: Registry = Registry("ProxylessNAS block")
    for name in primitives:
        if name != "none":
            registry.register(name, block_factory(name, C_in, C_out))
    return registry


# The space's op registry (``--ops`` are checked against it): blocks keeping their width.
def _same_width(name: str):
    return lambda C, stride, affine: block_factory(name, C, C)(C, stride, affine)


CHAIN_OPS: Registry = Registry("ProxylessNAS block")
CHAIN_OPS.register("none", lambda C, stride, affine: None)
for _name in CHAIN_PRIMITIVES[1:]:
    CHAIN_OPS.register(_name, _same_width(_name))


def _stem(in_channels: int, C: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, C, 3, 2, 1, bias=False), _bn(C), nn.ReLU6(inplace=False))


def _head(C_in: int, C_last: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(C_in, C_last, 1, bias=False), _bn(C_last), nn.ReLU6(inplace=False))


def check_chain_settings(primitives: Sequence[str], layers: int) -> None:
    """--ops and --layers of the space (one line naming the fix)."""
    for name in primitives:
        CHAIN_OPS.get(name)
    if len(set(primitives)) != len(primitives) or not [p for p in primitives if p != "none"]:
        raise ConfigError(f"--ops {','.join(primitives)}: list each block once, and at least one MBConv block")
    if layers < 1:
        raise ConfigError(f"--layers is the cap on searched layers per stage (4: the published space), got {layers}")


class ChainSupernet(ArchParameters, nn.Module):
    """The ProxylessNAS supernet with every searched layer one edge of ``method`` (module docstring).

    ``C``: the stem width (32 at multiplier 1); ``max_depth``: searched layers per stage at most
    (the published 4, 4, 4, 4, 4, 1 capped); ``primitives``: the candidates, ``none`` included
    where shapes allow it (leave ``none`` out to search blocks only)."""

    recompute: bool = False  # accepted for the run loop; every layer's activations are kept

    def __init__(self, C: int = 32, num_classes: int = 1000, max_depth: int = 4, in_channels: int = 3,
                 primitives: Sequence[str] = CHAIN_PRIMITIVES, method=None) -> None:
        super().__init__()
        check_chain_settings(primitives, max_depth)
        if method is None:
            from ..methods.darts import Darts

            method = Darts()
        self.method = method
        self.C, self.num_classes = C, num_classes
        self.widths = scaled_widths(C)
        self.depths = tuple(min(d, max_depth) for d in STAGE_DEPTHS)
        self.plan = scaled_plan(C, self.depths)
        blocks = tuple(p for p in primitives if p != "none")
        self.group_ops = {"conv": blocks, "skippable": tuple(primitives)}
        self.stem = _stem(in_channels, self.widths["stem"])
        self.first = MBConv(self.widths["stem"], self.widths["first"], 3, 1, 1)
        self.layers = nn.ModuleList()
        self.rows: list[tuple[str, int]] = []  # (group, row) of each layer
        counts = {g: 0 for g in GROUPS}
        for layer in self.plan:
            group = "skippable" if layer["skippable"] else "conv"
            ops = self.group_ops[group]
            self.layers.append(method.make_edge(layer["C_out"], layer["stride"], ops,
                                                ops=layer_ops(layer["C_in"], layer["C_out"], ops)))
            self.rows.append((group, counts[group]))
            counts[group] += 1
        self._groups = tuple(g for g in GROUPS if counts[g])
        self.edge_ops = {g: (self.group_ops[g],) * counts[g] for g in self._groups}  # darts_nas.edge_ops
        self.primitives = None  # the groups' op lists differ: readers take edge_ops
        self.head = _head(self.widths["stages"][-1], self.widths["last"])
        self.classifier = nn.Linear(self.widths["last"], num_classes)
        scale = getattr(method, "alpha_init_scale", 1e-3)  # ProxylessNAS: N(0, 1e-3); FairDARTS: zeros
        self._arch_names = []
        for g in self._groups:
            self.register_parameter(f"alphas_{g}", nn.Parameter(scale * torch.randn(counts[g], len(self.group_ops[g]))))
            self._arch_names.append(f"alphas_{g}")
        extra = method.extra_arch_parameters(self._groups, 0)
        if extra:
            raise ConfigError(f"--method {method.name} adds architecture parameters ({', '.join(extra)}) the chain "
                              f"space has no place for")

    def cell_types(self) -> tuple[str, ...]:
        """The alpha groups present (``conv``, ``skippable``), in that order."""
        return self._groups

    def recompute_disabled(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, in_channels, H, W) -> logits (B, num_classes)
        plans = {g: self.method.edge_plan(self, g) for g in self._groups}
        h = self.first(self.stem(x))
        for edge, layer, (group, row) in zip(self.layers, self.plan, self.rows):
            plan = plans[group]
            active = None if plan.active is None else plan.active[row]
            y = edge(h, plan.weights[row]) if active is None else edge(h, plan.weights[row], active)
            h = h + y if layer["skippable"] else y
        h = self.head(h)
        return self.classifier(h.mean(dim=(2, 3)))

    def genotype(self) -> ChainGenotype:
        """Each layer's op of largest alpha (:func:`~darts_nas.chain_genotype.derive_chain`): the
        argmax of softmax(alpha) (ProxylessNAS, DARTS) and of sigmoid(alpha) (FairDARTS) alike."""
        return derive_chain({g: self.arch_group(f"alphas_{g}").detach().float().cpu() for g in self._groups},
                            self.group_ops, self.depths)


@SEARCH_SPACES.register("proxyless")
def build_chain_supernet(C: int, num_classes: int, layers: int, steps: int, in_channels: int,
                         primitives: Sequence[str] = CHAIN_PRIMITIVES, method=None, **_: Any) -> ChainSupernet:
    """``C``: the stem width (``--init-channels``; 32 is multiplier 1); ``layers``: searched layers
    per stage at most (``--layers``; 4 is the published space)."""
    return ChainSupernet(C=C, num_classes=num_classes, max_depth=layers, in_channels=in_channels,
                         primitives=primitives, method=method)


build_chain_supernet.ops = CHAIN_OPS


# ---------------------------------------------------------------------------------------------
# The network of a chain
# ---------------------------------------------------------------------------------------------


class ChainNetwork(nn.Module):
    """The network of ``genotype``: the skeleton above with each searched layer's chosen block
    (``none``: the layer is left out, its shortcut passing the input through), at the stem width
    ``C`` (32: the genotype's own widths; otherwise every width times ``C / 32``). Dropout before
    the classifier (``dropout``; 0 in the search code). ``forward(x) -> (logits, None)``, the final
    networks' contract (no auxiliary head)."""

    def __init__(self, genotype: ChainGenotype, C: int = 32, num_classes: int = 1000, in_channels: int = 3,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.genotype = genotype
        widths = scaled_widths(C, genotype.widths)
        self.stem = _stem(in_channels, widths["stem"])
        self.first = MBConv(widths["stem"], widths["first"], 3, 1, 1)
        plan = scaled_plan(C, genotype.depths, genotype.widths)
        self.blocks = nn.ModuleList()
        self.residual: list[bool] = []
        for layer, op in zip(plan, genotype.ops):
            if op == "none":
                continue
            kernel, expand = parse_op(op)
            self.blocks.append(MBConv(layer["C_in"], layer["C_out"], kernel, layer["stride"], expand))
            self.residual.append(layer["skippable"])
        self.head = _head(widths["stages"][-1], widths["last"])
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Linear(widths["last"], num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        h = self.first(self.stem(x))
        for block, residual in zip(self.blocks, self.residual):
            h = h + block(h) if residual else block(h)
        h = self.head(h).mean(dim=(2, 3))
        return self.classifier(self.dropout(h)), None


__all__ = ["CHAIN_OPS", "ChainNetwork", "ChainSupernet", "MBConv", "build_chain_supernet"]
