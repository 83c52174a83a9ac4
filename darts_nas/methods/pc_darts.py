"""PC-DARTS (Xu et al., ICLR 2020): partial channel connections and edge normalisation.

What it changes (``../shared/reference/methods.md`` section 3.1, as the authors' code does it):

* **Partial channels** (``--partial-channels K``, default 4): on every edge only the first C/K
  channels go through the mixed op (every op is built for C/K channels); the other channels
  bypass it, max-pooled 2x2 on stride-2 edges so that the sizes match. The two parts are
  concatenated and shuffled in K groups, so that the next edge sees other channels. The fixed
  first-C/K slice is the authors' main code; their "random" variant discards its permutation.
* **Edge normalisation** (on unless ``--no-edge-normalization``): one extra logit per edge,
  ``betas_normal`` and ``betas_reduce``; a node sums its edges weighted by the softmax of its
  incoming edges' betas. The betas train with the alphas.
* **Genotype**: each edge's op weights are multiplied by its normalised beta before the edges of a
  node are ranked; the op kept on an edge is its argmax as in DARTS.
* **Warm-up**: the published search starts architecture updates at epoch 15
  (``--arch-warmup-epochs``, which every method accepts; preset ``pc-darts``).

The beta weight of an edge is folded into its mixing weights (``beta * sum_k a_k op_k(x) =
sum_k (beta a_k) op_k(x)``) and applied to the bypassed channels separately, so that no
full-width edge output has to be kept for the betas' gradient: the memory per edge is DARTS's
at C/K channels.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..kernels import _format_of
from ..supernet import MixedOp
from .base import METHODS, EdgePlan, Method, node_slices


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, H, W) with channel ``g * (C / groups) + i`` moved to ``i * groups + g``
    (ShuffleNet's shuffle); the memory format of ``x`` is kept."""
    if groups == 1:
        return x
    b, c, h, w = x.shape
    fmt = _format_of(x)
    return x.reshape(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w).contiguous(memory_format=fmt)


class PartialChannelEdge(nn.Module):
    """A PC-DARTS edge: the mixed op on the first C/K channels, the rest bypassed, then a shuffle.

    ``forward(x, weights, active=None, bypass_scale=None)``: ``weights`` are the (num_ops,)
    mixing weights (already multiplied by the edge's beta weight under edge normalisation), and
    ``bypass_scale`` the beta weight for the bypassed channels. With K = 1 the edge is exactly a
    DARTS :class:`~darts_nas.supernet.MixedOp`."""

    def __init__(self, C: int, stride: int, primitives, k: int, ops=None) -> None:
        super().__init__()
        self.k = k
        self.stride = stride
        self.mixed = MixedOp(C // k, stride, primitives, ops)

    def forward(self, x: torch.Tensor, weights: torch.Tensor, active: int | None = None,
                bypass_scale: torch.Tensor | None = None) -> torch.Tensor:
        if self.k == 1:
            return self.mixed(x, weights, active)
        # x: (B, C, H, W) -> mixed op on (B, C/K, H, W), the rest (B, C - C/K, H', W') bypasses it
        # The slices are views of x, which stays alive as a node of the cell: the ops keep a view
        # for their backward pass, not a copy.
        c = x.shape[1] // self.k
        y = self.mixed(x[:, :c], weights, active)
        rest = x[:, c:]
        if self.stride == 2:
            rest = F.max_pool2d(rest, 2, 2, ceil_mode=True)  # ceil: the ops' output size for odd sides too
        if bypass_scale is not None:
            rest = bypass_scale * rest
        return channel_shuffle(torch.cat([y, rest], dim=1), self.k)


def normalised_betas(betas: torch.Tensor, slices: list[slice] | None = None) -> torch.Tensor:
    """(num_edges,) betas -> softmax over each node's incoming edges (``slices``, the space's;
    None: the DARTS cell's), concatenated in edge order."""
    slices = node_slices(betas.shape[0]) if slices is None else slices
    return torch.cat([F.softmax(betas[s], dim=-1) for s in slices])


@METHODS.register("pc-darts")
class PCDarts(Method):
    name = "pc-darts"
    title = "PC-DARTS"
    settings = ("partial_channels", "edge_normalization")

    @property
    def k(self) -> int:
        return 4 if self.config is None else self.config.partial_channels

    @property
    def edge_normalization(self) -> bool:
        return True if self.config is None else self.config.edge_normalization

    @classmethod
    def check(cls, config: Any) -> None:
        super().check(config)
        k, c = config.partial_channels, config.init_channels
        if k < 1 or c % k:
            divisors = ", ".join(str(d) for d in range(1, c + 1) if c % d == 0)
            raise ConfigError(f"--partial-channels {k} does not divide the {c} channels of the first cells "
                              f"(--init-channels): choose one of {divisors}")

    def make_edge(self, C: int, stride: int, primitives, ops=None) -> nn.Module:
        # The cells' channels are C, 2C and 4C: K divides them all when it divides C (checked above).
        if C % self.k:
            raise ConfigError(f"--partial-channels {self.k} does not divide the {C} channels of a cell: choose a "
                              f"divisor of --init-channels")
        return PartialChannelEdge(C, stride, primitives, self.k, ops)

    def extra_arch_parameters(self, cell_types: tuple[str, ...], num_edges: int) -> dict[str, tuple[int, ...]]:
        if not self.edge_normalization:
            return {}
        return {f"betas_{t}": (num_edges,) for t in cell_types}

    def edge_plan(self, model: nn.Module, cell_type: str) -> EdgePlan:
        weights = F.softmax(model.arch_group(f"alphas_{cell_type}"), dim=-1)
        if not self.edge_normalization:
            return EdgePlan(weights)
        return EdgePlan(weights, edge_weights=normalised_betas(model.arch_group(f"betas_{cell_type}"),
                                                               model.node_slices()))

    def edge_scale(self, model: nn.Module, cell_type: str) -> torch.Tensor | None:
        if not self.edge_normalization:
            return None
        return normalised_betas(model.arch_group(f"betas_{cell_type}").detach().float().cpu(), model.node_slices())

    def arch_views(self, model: nn.Module) -> dict[str, torch.Tensor]:
        if not self.edge_normalization:
            return {}
        return {name: normalised_betas(p.detach().float().cpu(), model.node_slices())
                for name, p in model.arch_groups().items() if name.startswith("betas_")}
