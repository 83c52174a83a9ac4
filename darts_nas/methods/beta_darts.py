"""beta-DARTS (Ye et al., CVPR 2022): the Beta-Decay regulariser on the architecture loss.

What it changes (``../shared/reference/methods.md`` section 3.6): the architecture (validation)
loss gains ``lambda_t * L_beta`` with ``L_beta`` the mean over every edge of both cell types of
``logsumexp_k(alpha_{e,k})``, the smooth maximum of the edge's logits; it penalises large and
spread-out activated weights. Adam's weight decay on the alphas stays.

The coefficient follows the authors' code: ``lambda_t = 50 * epoch / 100``, that is
``--beta-decay-scale`` (0.5) times the epoch (0-based): 0 to 24.5 over a 50-epoch search, 0 to
49.5 over NAS-Bench-201's 100 epochs. Their DARTS-space script does not run as released, so the
schedule for that space is the NAS-Bench-201 one. At ``lambda = 0`` the method is DARTS.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from .base import METHODS, Method


def beta_decay_loss(alphas: list[torch.Tensor]) -> torch.Tensor:
    """Mean over the edges of all ``alphas`` ((num_edges, num_ops) each) of logsumexp over ops."""
    return torch.cat([torch.logsumexp(a, dim=-1) for a in alphas]).mean()


@METHODS.register("beta-darts")
class BetaDarts(Method):
    name = "beta-darts"
    title = "beta-DARTS"
    settings = ("beta_decay_scale",)

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self.scale = 0.5 if config is None else float(config.beta_decay_scale)
        self.weight = 0.0

    @classmethod
    def check(cls, config: Any) -> None:
        super().check(config)
        if config.beta_decay_scale < 0:
            raise ConfigError(f"--beta-decay-scale must not be negative, got {config.beta_decay_scale}")

    def start_epoch(self, epoch: int, epochs: int) -> None:
        self.weight = self.scale * epoch

    def arch_regulariser(self, model: nn.Module) -> torch.Tensor | None:
        alphas = [model.arch_group(f"alphas_{t}") for t in model.cell_types()]
        return self.weight * beta_decay_loss(alphas)

    def state_dict(self) -> dict[str, Any]:
        return {"weight": self.weight}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.weight = float(state["weight"])

    def scalars(self) -> dict[str, float]:
        return {"beta_decay_weight": self.weight}
