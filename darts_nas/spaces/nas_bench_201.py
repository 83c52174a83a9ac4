"""The NAS-Bench-201 space (``--space nas-bench-201``; ``../shared/reference/methods.md`` sections 2.2 and 4).

Everything about the space is here: its five ops (:data:`NB201_OPS`), the search supernet
(:class:`NB201Supernet`), and the benchmark's own "tiny" network (:class:`TinyNetwork`) with the
FLOPs count its records use (:func:`benchmark_flops`). Its genotype, the arch string, is
:mod:`darts_nas.arch_string`.

The skeleton of both networks: a 3x3 conv stem with BN; three stages of ``N`` cells at C, 2C and
4C channels, separated by two residual reduction blocks (a ResNet basic block, stride 2); BN,
ReLU, global average pool and a linear classifier. The benchmark uses C=16, N=5 (17 blocks).
"""

from __future__ import annotations

import contextlib
from typing import Any, Sequence

import torch
from torch import nn

from ..arch_string import EDGES, NB201_PRIMITIVES, NODES, ArchGenotype, derive_arch
from ..config import check_nb201_settings
from ..edge_ops import edge_op_table, shared_ops
from ..registry import Registry
from ..supernet import ArchParameters
from . import SEARCH_SPACES

# ---------------------------------------------------------------------------------------------
# The ops (xautodl's cell_operations, inside cells: stride 1, C in = C out)
# ---------------------------------------------------------------------------------------------


class NorConv(nn.Sequential):
    """ReLU -> Conv kxk -> BN. As in the benchmark's code the conv has a bias exactly when the BN
    has no affine parameters (the search supernet), none when it has (the benchmark's networks)."""

    def __init__(self, C_in: int, C_out: int, kernel: int, stride: int, affine: bool) -> None:
        super().__init__(nn.ReLU(inplace=False),
                         nn.Conv2d(C_in, C_out, kernel, stride=stride, padding=kernel // 2, bias=not affine),
                         nn.BatchNorm2d(C_out, affine=affine))


class Zero(nn.Module):
    """``none``: the input times 0 (at the stride's resolution)."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, ::self.stride, ::self.stride].mul(0.0)


def _inside_cell(stride: int) -> None:
    if stride != 1:
        raise ValueError("NAS-Bench-201 cell ops keep the resolution: stride must be 1")


# name -> factory(C, stride, affine), the signature of darts_nas.ops.OPS, so that a method's edge
# (darts_nas.supernet.MixedOp) can build them.
NB201_OPS: Registry = Registry("NAS-Bench-201 op")
NB201_OPS.register("none", lambda C, stride, affine: Zero(stride))
NB201_OPS.register("skip_connect", lambda C, stride, affine: (_inside_cell(stride), nn.Identity())[1])
NB201_OPS.register("nor_conv_1x1", lambda C, stride, affine: NorConv(C, C, 1, stride, affine))
NB201_OPS.register("nor_conv_3x3", lambda C, stride, affine: NorConv(C, C, 3, stride, affine))
# count_include_pad=False: border averages divide by the pixels inside the image (no BN after it).
NB201_OPS.register("avg_pool_3x3", lambda C, stride, affine: nn.AvgPool2d(3, stride, padding=1,
                                                                          count_include_pad=False))
assert tuple(NB201_OPS) == NB201_PRIMITIVES


class ResidualReduction(nn.Module):
    """The reduction block between stages (xautodl's ``ResNetBasicblock``, stride 2): ReLU-Conv3x3
    (stride 2)-BN, ReLU-Conv3x3-BN, plus a shortcut AvgPool 2x2 -> Conv1x1 (no BN); no ReLU after
    the sum. Affine BN, bias-free convs, in the search supernet too."""

    def __init__(self, C_in: int, C_out: int) -> None:
        super().__init__()
        self.conv_a = NorConv(C_in, C_out, 3, 2, affine=True)
        self.conv_b = NorConv(C_out, C_out, 3, 1, affine=True)
        self.shortcut = nn.Sequential(nn.AvgPool2d(2, 2), nn.Conv2d(C_in, C_out, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, C_in, H, W) -> (B, C_out, H/2, W/2)
        return self.shortcut(x) + self.conv_b(self.conv_a(x))


def stage_plan(C: int, N: int) -> list[tuple[int, bool]]:
    """(channels, is the residual reduction block) for each of the 3N + 2 blocks."""
    return [(C, False)] * N + [(2 * C, True)] + [(2 * C, False)] * N + [(4 * C, True)] + [(4 * C, False)] * N


def _stem(in_channels: int, C: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, C, 3, padding=1, bias=False), nn.BatchNorm2d(C))


# ---------------------------------------------------------------------------------------------
# The search supernet
# ---------------------------------------------------------------------------------------------


class NB201SearchCell(nn.Module):
    """A cell whose six edges are the method's edges over the space's ops; node ``i`` sums its
    edges from nodes ``0..i-1``; the output is node 3."""

    def __init__(self, C: int, edge_ops: Sequence[Sequence[str]], method) -> None:
        # edge_ops: the ops of each edge (every edge the same ops, except in a pruned stage of a
        # progressive search: darts_nas.edge_ops)
        super().__init__()
        self.edges = nn.ModuleList(method.make_edge(C, 1, ops, ops=NB201_OPS) for ops in edge_ops)

    def forward(self, x: torch.Tensor, plan) -> torch.Tensor:
        weights, active, scale = plan.weights, plan.active, plan.edge_weights
        nodes = [x]
        e = 0
        for i in range(1, NODES):
            node = None
            for j in range(i):
                a = None if active is None else active[e]
                if scale is None:
                    y = self.edges[e](nodes[j], weights[e]) if a is None else self.edges[e](nodes[j], weights[e], a)
                else:  # edge normalisation: the edge's factor folded into its mixing weights
                    y = self.edges[e](nodes[j], weights[e] * scale[e], a, scale[e])
                node = y if node is None else node + y
                e += 1
            nodes.append(node)
        return nodes[-1]


class NB201Supernet(ArchParameters, nn.Module):
    """The NAS-Bench-201 search network (xautodl's ``TinyNetworkDarts``/``TinyNetworkGDAS``): one
    (6, num_ops) ``alphas_cell`` shared by every cell; the cells' BN has no affine parameters (and
    keeps running statistics, which the end-of-epoch evaluation uses); stem, reduction blocks
    and head are as in the benchmark's network."""

    recompute: bool = False  # accepted for the run loop; every cell's activations are kept

    def __init__(self, C: int = 16, num_classes: int = 10, N: int = 5, in_channels: int = 3,
                 primitives: Sequence[str] = NB201_PRIMITIVES, method=None, edge_ops=None) -> None:
        super().__init__()
        if method is None:
            from ..methods.darts import Darts

            method = Darts()
        self.method = method
        # every edge the same ops, or each edge its own (edge_ops: a pruned stage of DrNAS's progressive
        # search; darts_nas.edge_ops); self.primitives is the shared list, None when the edges differ
        self.edge_ops = edge_op_table(tuple(primitives) if edge_ops is None else edge_ops, self.cell_types(),
                                      len(EDGES), NB201_OPS)
        self.primitives = shared_ops(self.edge_ops)
        self.C, self.N, self.num_classes = C, N, num_classes
        self.stem = _stem(in_channels, C)
        self.cells = nn.ModuleList()
        C_prev = C
        for C_curr, reduction in stage_plan(C, N):
            self.cells.append(ResidualReduction(C_prev, C_curr) if reduction
                              else NB201SearchCell(C_curr, self.edge_ops["cell"], method))
            C_prev = C_curr
        self.lastact = nn.Sequential(nn.BatchNorm2d(C_prev), nn.ReLU(inplace=False))
        self.classifier = nn.Linear(C_prev, num_classes)
        self.alphas_cell = nn.Parameter(1e-3 * torch.randn(len(EDGES), len(self.edge_ops["cell"][0])))
        self._arch_names = ["alphas_cell"]
        for name, shape in method.extra_arch_parameters(self.cell_types(), len(EDGES)).items():
            self.register_parameter(name, nn.Parameter(1e-3 * torch.randn(*shape)))
            self._arch_names.append(name)

    @staticmethod
    def cell_types() -> tuple[str, ...]:
        return ("cell",)

    @staticmethod
    def node_slices() -> list[slice]:
        """The edges of each node, in edge order: node 1 has one, node 2 two, node 3 three."""
        return [slice(i * (i - 1) // 2, i * (i + 1) // 2) for i in range(1, NODES)]

    def recompute_disabled(self) -> contextlib.AbstractContextManager:
        """What the second-order step asks of a supernet; nothing is recomputed here anyway."""
        return contextlib.nullcontext()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, in_channels, H, W) -> logits (B, num_classes)
        plan = self.method.edge_plan(self, "cell")
        h = self.stem(x)
        for cell in self.cells:
            h = cell(h) if isinstance(cell, ResidualReduction) else cell(h, plan)
        h = self.lastact(h)
        return self.classifier(h.mean(dim=(2, 3)))

    def genotype(self) -> ArchGenotype:
        """The benchmark's derivation: per-edge argmax over every op, ``none`` included. A
        method's per-edge scale (PC-DARTS's betas) cannot change a per-edge argmax, so it is not
        asked for. Each edge chooses among its own ops when the edges differ."""
        return derive_arch(self.alphas_cell.detach().float().cpu(),
                           self.primitives if self.primitives is not None else self.edge_ops["cell"])


@SEARCH_SPACES.register("nas-bench-201")
def build_nb201_supernet(C: int, num_classes: int, layers: int, steps: int, in_channels: int,
                         primitives: Sequence[str] = NB201_PRIMITIVES, method=None, edge_ops=None,
                         **_: Any) -> NB201Supernet:
    """``layers`` cells in all: 3 stages of ``layers // 3`` cells; ``edge_ops``: each edge's own
    ops (a pruned stage), overriding ``primitives``."""
    check_nb201_settings(layers, steps, tuple(primitives))
    return NB201Supernet(C=C, num_classes=num_classes, N=layers // 3, in_channels=in_channels,
                         primitives=primitives, method=method, edge_ops=edge_ops)


build_nb201_supernet.ops = NB201_OPS  # the space's op registry: --ops are checked against it


# ---------------------------------------------------------------------------------------------
# The benchmark's network ("infer.tiny") and its FLOPs
# ---------------------------------------------------------------------------------------------


class InferCell(nn.Module):
    """A cell of the benchmark's network: node ``i`` sums ``op(node j)`` over its three edges
    (affine BN, bias-free convs); the output is node 3."""

    def __init__(self, genotype: ArchGenotype, C: int) -> None:
        super().__init__()
        self.edges = nn.ModuleList(NB201_OPS[op](C, 1, True) for op in genotype.ops)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nodes, e = [x], 0
        for i in range(1, NODES):
            node = None
            for j in range(i):
                y = self.edges[e](nodes[j])
                node = y if node is None else node + y
                e += 1
            nodes.append(node)
        return nodes[-1]


class TinyNetwork(nn.Module):
    """The network every NAS-Bench-201 record was trained as: stem, 3 stages of ``N`` copies of
    the cell at C/2C/4C with the residual reduction blocks between them (3N + 2 blocks, 17 for
    N=5), BN-ReLU, global average pool, linear. ``forward(x) -> logits``."""

    def __init__(self, genotype: ArchGenotype, C: int = 16, N: int = 5, num_classes: int = 10,
                 in_channels: int = 3) -> None:
        super().__init__()
        self.genotype = genotype
        self.stem = _stem(in_channels, C)
        self.cells = nn.ModuleList()
        C_prev = C
        for C_curr, reduction in stage_plan(C, N):
            self.cells.append(ResidualReduction(C_prev, C_curr) if reduction else InferCell(genotype, C_curr))
            C_prev = C_curr
        self.lastact = nn.Sequential(nn.BatchNorm2d(C_prev), nn.ReLU(inplace=False))
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        # (B, in_channels, H, W) -> (logits (B, num_classes), None): the final networks' contract
        # (no auxiliary head here)
        h = self.stem(x)
        for cell in self.cells:
            h = cell(h)
        h = self.global_pooling(self.lastact(h)).flatten(1)
        return self.classifier(h), None

    def benchmark_sizes(self, shape: tuple[int, ...]) -> dict[str, float]:
        """``{"params": MB, "flop": M}`` as the benchmark's records hold them, for one input of
        ``shape``: every parameter / 1e6, :func:`benchmark_flops` / 1e6."""
        return {"params": benchmark_params(self) / 1e6, "flop": benchmark_flops(self, shape) / 1e6}


def benchmark_flops(model: nn.Module, shape: tuple[int, ...]) -> int:
    """FLOPs as the benchmark's records count them (xautodl's ``get_model_infos``), for one input
    of ``shape`` (1, C, H, W): per conv, k*k*C_in*C_out/groups per output position (+ C_out per
    position for a bias); per linear layer, in*out (+ out for a bias). Pooling, BN, ReLU and
    additions count nothing (the records confirm it: two 3x3 average pools per cell would add
    2.58M to the 113.95M of architecture 11). The records' ``flop`` is this / 1e6."""
    total = [0]

    def conv(m: nn.Conv2d, _, out: torch.Tensor) -> None:
        b, c, h, w = out.shape
        per = m.kernel_size[0] * m.kernel_size[1] * m.in_channels * m.out_channels // m.groups
        total[0] += per * b * h * w + (c * b * h * w if m.bias is not None else 0)

    def linear(m: nn.Linear, inputs, out: torch.Tensor) -> None:
        b = inputs[0].shape[0]
        total[0] += b * m.in_features * m.out_features + (b * m.out_features if m.bias is not None else 0)

    handles = []
    for m in model.modules():
        hook = {nn.Conv2d: conv, nn.Linear: linear}.get(type(m))
        if hook is not None:
            handles.append(m.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(shape))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return total[0]


def benchmark_params(model: nn.Module) -> int:
    """Every parameter (the records' ``params`` is this / 1e6)."""
    return sum(p.numel() for p in model.parameters())


__all__ = ["NB201_OPS", "NB201Supernet", "TinyNetwork", "benchmark_flops", "benchmark_params",
           "build_nb201_supernet"]
