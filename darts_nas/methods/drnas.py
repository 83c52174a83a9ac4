"""DrNAS (Chen et al., ICLR 2021): Dirichlet mixing weights, sampled by reparameterisation.

What it changes (``../shared/reference/methods.md`` section 3.3, following the authors' code):

* Each edge's mixing weights are a fresh draw ``theta ~ Dir(beta)`` in every training pass, with
  concentration ``beta = ELU(alpha) + 1 > 0`` and pathwise (reparameterised) gradients.
* A regulariser pulls the concentrations toward the anchor ``Dir(1)``: ``l2`` (the default) is
  Adam weight decay of ``--drnas-reg-scale`` (1e-3) on the alphas (it replaces
  ``--arch-weight-decay``); ``kl`` adds ``scale * sum over edges of KL(Dir(beta) || Dir(1))`` to the
  architecture loss, with no weight decay.
* The genotype is derived from ``softmax(alpha)`` as in DARTS (the code's choice; the README's
  plots show the Dirichlet mean). The authors' DARTS-space op list has no ``none``; pass
  ``--ops`` without it to follow them (the preset does).
* In evaluation mode (the end-of-epoch evaluation) no draw is made: the weights are the
  Dirichlet mean ``beta / sum(beta)``.

The draws use torch's global generator, whose state every checkpoint holds, so a resumed search
is bit-identical. The progressive schedule of the paper (partial channels K=6 then 4, the ops
pruned from 7 to 4 between two stages) is not implemented yet. The run loop's stages
(:meth:`Method.stages`, as P-DARTS uses them) are its frame; what it still needs is a partial-channel
DrNAS edge, the carried alphas and Adam state (pruned columns gathered), the op weights and SGD
momentum widened from C/6 to C/4 channels (the code's net2wider), one cosine schedule over both
stages, and the architecture steps from epoch 10 of each stage.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, ContextManager

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Dirichlet, kl_divergence

from ..errors import ConfigError
from .base import METHODS, EdgePlan, Method

REGULARISERS = ("l2", "kl")


def concentration(alphas: torch.Tensor) -> torch.Tensor:
    """ELU(alpha) + 1: positive Dirichlet concentrations from unconstrained logits."""
    return F.elu(alphas) + 1.0


@METHODS.register("drnas")
class DrNAS(Method):
    name = "drnas"
    title = "DrNAS"
    settings = ("drnas_regulariser", "drnas_reg_scale")

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self.regulariser = "l2" if config is None else config.drnas_regulariser
        self.scale = 1e-3 if config is None else float(config.drnas_reg_scale)

    @classmethod
    def check(cls, config: Any) -> None:
        super().check(config)
        if config.drnas_regulariser not in REGULARISERS:
            raise ConfigError(f"--drnas-regulariser must be one of {', '.join(REGULARISERS)}, "
                              f"got {config.drnas_regulariser!r}")
        if config.drnas_reg_scale < 0:
            raise ConfigError(f"--drnas-reg-scale must not be negative, got {config.drnas_reg_scale}")

    def edge_plan(self, model: nn.Module, cell_type: str) -> EdgePlan:
        beta = concentration(model.arch_group(f"alphas_{cell_type}"))
        if not model.training:
            return EdgePlan(beta / beta.sum(dim=-1, keepdim=True))
        return EdgePlan(Dirichlet(beta).rsample())

    def arch_regulariser(self, model: nn.Module) -> torch.Tensor | None:
        if self.regulariser != "kl" or self.scale == 0:
            return None
        total = 0.0
        for t in model.cell_types():
            beta = concentration(model.arch_group(f"alphas_{t}"))
            total = total + kl_divergence(Dirichlet(beta), Dirichlet(torch.ones_like(beta))).sum()
        return self.scale * total

    def make_architect(self, model: nn.Module, w_optimizer: torch.optim.Optimizer,
                       autocast: Callable[[], ContextManager] = contextlib.nullcontext):
        from ..architect import Architect

        c = self.config
        return Architect(model, w_optimizer, lr=c.arch_learning_rate, betas=c.arch_betas,
                         weight_decay=self.scale if self.regulariser == "l2" else 0.0, unrolled=c.unrolled,
                         autocast=autocast, regulariser=self.arch_regulariser)
