"""FairDARTS (Chu, Zhou, Zhang and Li, ECCV 2020): independent sigmoid mixing weights, the zero-one
loss, and a threshold on the derived ops.

What it changes (``../shared/reference/methods.md`` section 3.8, following the authors' code,
``fairdarts/``, which produced the published cells):

* Every op of an edge is weighted by ``sigmoid(alpha)`` on its own: the ops cooperate instead of
  competing in a softmax, so a skip connection gains nothing by pushing the others down.
* The architecture loss gains ``w * L01`` with ``L01 = -mean((sigmoid(alpha) - 0.5)^2)``, the mean
  over every op of every edge of both cell types (the code's ``ConvSeparateLoss``, ``w`` =
  ``--zero-one-weight`` 10, constant from the first step: the code has no warm-up or schedule). It
  pushes each weight towards 0 or 1, so that thresholding them loses little. ``--zero-one-loss l1``
  is the code's other option, ``-mean |sigmoid(alpha) - 0.5|``. The code adds the same term to the
  weight step's loss too, where it changes no weight; here the weight step is plain cross-entropy.
* The alphas start at exactly 0 (every weight 0.5), as in the code (DARTS: 1e-3 noise).
* The genotype: each node's two edges with the largest sigmoid weight are candidates; each keeps
  its best op only if that op's weight is at least ``--fair-threshold`` (0.85), so a node may keep
  one input or none (:func:`darts_nas.genotype.derive_threshold`, the code's ``threshold_sparse``).
  The final network drops a node without input, as the code's network does. ``--fair-threshold 0``
  is the code's ``--parse_method darts``: always the two strongest edges.

The method keeps no state: the zero-one weight is constant. The code's architecture step is
first order; ``--unrolled`` is offered too (the zero-one loss depends on the alphas alone).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from .base import METHODS, EdgePlan, Method

ZERO_ONE_LOSSES = ("l2", "l1")


def zero_one_loss(alphas: list[torch.Tensor], kind: str = "l2") -> torch.Tensor:
    """``-mean((sigmoid(a) - 0.5)^2)`` (``l2``) or ``-mean|sigmoid(a) - 0.5|`` (``l1``) over every
    entry of all ``alphas`` ((num_edges, num_ops) each) together."""
    gap = torch.cat([torch.sigmoid(a).reshape(-1) for a in alphas]) - 0.5
    return -(gap.square() if kind == "l2" else gap.abs()).mean()


@METHODS.register("fair-darts")
class FairDarts(Method):
    name = "fair-darts"
    title = "FairDARTS"
    settings = ("zero_one_weight", "zero_one_loss", "fair_threshold")
    alpha_init_scale = 0.0

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self.weight = 10.0 if config is None else float(config.zero_one_weight)
        self.kind = "l2" if config is None else config.zero_one_loss
        self.threshold = 0.85 if config is None else float(config.fair_threshold)

    @classmethod
    def check(cls, config: Any) -> None:
        super().check(config)
        if config.space not in ("darts", "proxyless"):
            raise ConfigError(f"--method fair-darts runs in the darts space and in proxyless (its paper's ImageNet "
                              f"chain), where its paper searched, not in --space {config.space}")
        if config.zero_one_weight < 0:
            raise ConfigError(f"--zero-one-weight must not be negative, got {config.zero_one_weight}")
        if config.zero_one_loss not in ZERO_ONE_LOSSES:
            raise ConfigError(f"--zero-one-loss must be one of {', '.join(ZERO_ONE_LOSSES)}, "
                              f"got {config.zero_one_loss!r}")
        if not 0.0 <= config.fair_threshold < 1.0:
            raise ConfigError(f"--fair-threshold is a sigmoid weight in [0, 1), got {config.fair_threshold}; "
                              f"the published value is 0.85")

    def edge_plan(self, model: nn.Module, cell_type: str) -> EdgePlan:
        return EdgePlan(torch.sigmoid(model.arch_group(f"alphas_{cell_type}")))

    def arch_regulariser(self, model: nn.Module) -> torch.Tensor | None:
        if self.weight == 0:
            return None
        return self.weight * zero_one_loss([model.arch_group(f"alphas_{t}") for t in model.cell_types()], self.kind)

    def derive_genotype(self, model: nn.Module) -> Any:
        from ..genotype import derive_threshold

        return derive_threshold(model.alphas_normal.detach().cpu(), model.alphas_reduce.detach().cpu(),
                                model.primitives if model.primitives is not None else model.edge_ops,
                                threshold=self.threshold, multiplier=model.multiplier)
