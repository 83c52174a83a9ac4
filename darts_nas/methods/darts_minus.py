"""DARTS- (Chu et al., ICLR 2021): an auxiliary skip branch on every edge, faded out over the search.

What it changes (``../shared/reference/methods.md`` section 3.5, following the authors' code):

* Every edge gets an extra branch outside the softmax: ``o(x) = sum_k softmax(alpha)_k op_k(x) +
  beta_t x``, with a FactorizedReduce (its own weights, BatchNorm without affine) instead of the
  identity on stride-2 edges. The learnable ``skip_connect`` stays inside the softmax, as in the
  code (a survey's formula takes it out).
* ``beta_t`` decays once per epoch from ``--skip-beta`` (1) to 0 over the search:
  ``linear`` (the published runs), ``beta0 (E - t) / E``, or ``cosine``, ``beta0 (1 + cos(pi t / E)) / 2``.
* The genotype is DARTS's: the auxiliary branch is never part of it.

At ``beta_t = 0`` the branch is not computed: the method is then DARTS exactly.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..ops import FactorizedReduce
from ..supernet import MixedOp
from .base import METHODS, Method

SCHEDULES = ("linear", "cosine")


class AuxiliarySkipEdge(nn.Module):
    """A DARTS edge plus ``beta_t * skip(x)``, ``beta_t`` read from the method at each pass."""

    def __init__(self, C: int, stride: int, primitives, method: "DartsMinus", ops=None) -> None:
        super().__init__()
        self.mixed = MixedOp(C, stride, primitives, ops)
        self.skip = nn.Identity() if stride == 1 else FactorizedReduce(C, C, affine=False)
        self._method = [method]  # a list: the method is not a submodule

    def forward(self, x: torch.Tensor, weights: torch.Tensor, active: int | None = None,
                bypass_scale: torch.Tensor | None = None) -> torch.Tensor:
        out = self.mixed(x, weights, active)
        beta = self._method[0].skip_beta
        return out if beta == 0 else out + beta * self.skip(x)


def skip_beta(schedule: str, beta0: float, epoch: int, epochs: int) -> float:
    """The auxiliary skip's coefficient in epoch ``epoch`` (0-based) of ``epochs``: beta0 at 0, falling to 0."""
    t = epoch / epochs
    if schedule == "linear":
        return beta0 * (1.0 - t)
    return beta0 * (1.0 + math.cos(math.pi * t)) / 2.0


@METHODS.register("darts-minus")
class DartsMinus(Method):
    name = "darts-minus"
    title = "DARTS-"
    settings = ("skip_beta", "skip_beta_schedule")

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self.beta0 = 1.0 if config is None else float(config.skip_beta)
        self.schedule = "linear" if config is None else config.skip_beta_schedule
        self.skip_beta = self.beta0

    @classmethod
    def check(cls, config: Any) -> None:
        super().check(config)
        if config.skip_beta < 0:
            raise ConfigError(f"--skip-beta must not be negative, got {config.skip_beta}")
        if config.skip_beta_schedule not in SCHEDULES:
            raise ConfigError(f"--skip-beta-schedule must be one of {', '.join(SCHEDULES)}, "
                              f"got {config.skip_beta_schedule!r}")

    def make_edge(self, C: int, stride: int, primitives, ops=None) -> nn.Module:
        return AuxiliarySkipEdge(C, stride, primitives, self, ops)

    def start_epoch(self, epoch: int, epochs: int) -> None:
        self.skip_beta = skip_beta(self.schedule, self.beta0, epoch, epochs)

    def state_dict(self) -> dict[str, Any]:
        return {"skip_beta": self.skip_beta}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.skip_beta = float(state["skip_beta"])

    def scalars(self) -> dict[str, float]:
        return {"skip_beta": self.skip_beta}
