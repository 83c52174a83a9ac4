"""GDAS (Dong and Yang, CVPR 2019): one sampled op per edge, by Gumbel-max with a straight-through gradient.

What it changes (``../shared/reference/methods.md`` section 3.2):

* **Sampling.** In every training-mode forward pass, each edge draws Gumbel noise
  ``g = -log(E)``, ``E ~ Exp(1)``, and takes ``h = softmax((log_softmax(alpha) + g) / tau)``. The
  edge computes **only** the op ``k = argmax h``, weighted by the straight-through weight
  ``one_hot(k) + (h - stop_gradient(h))``: its value is exactly 1 (so the edge's output is exactly
  that op's output), its gradient that of ``h``, so every logit of the edge gets a gradient
  through the softmax. One sample per forward pass and cell type, shared by the cells of that
  type. A draw with an infinite noise is drawn again, as in the authors' code.
* **Temperature** ``tau``: linear from ``--tau-max`` (10) to ``--tau-min`` (0.1) over the epochs,
  ``tau_e = tau_max - (tau_max - tau_min) * e / (E - 1)``; part of the checkpoint.
* **Architecture step**: first order only (one Adam step on the alphas per weight step, both
  through sampled forward passes).
* **Genotype**: as DARTS (each node's two strongest distinct input edges, strongest non-``none``
  op). The authors' re-implementation for this space instead keeps the top two (op, input) pairs
  over all of a node's edges, which may come from the same input; and on NAS-Bench-201 their
  forward also adds the unsampled ops' straight-through weights (value 0) as scalars, which only
  changes gradients. Neither variant is the default here.

**Reproducibility.** The noise of draw ``n`` comes from a generator seeded with ``(seed, n)``, and
``n`` (one per cell type and forward pass: two passes per step, the architecture pass, then the
weight pass) is checkpointed: the
samples are a pure function of the seed and the step, on any device and on every torchrun
process alike, so a resumed search is bit-identical.

In evaluation mode (the end-of-epoch evaluation on the architecture half) no noise is drawn: each
edge runs its most likely op, which is the architecture a search at that epoch would return, and
BatchNorm normalises with each batch's statistics (its running statistics are left as they are).
The running statistics mix every path sampled during training, which the most likely path is not:
with them a GDAS supernet trained 30 epochs on digits scored 8.5% on the architecture half, with
batch statistics 36.0% (the authors' NAS-Bench-201 search supernet does not track running
statistics at all).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .base import METHODS, EdgePlan, Method, batch_statistics_pass, draw_generator



def gumbel_noise(shape: tuple[int, ...], seed: int, draw: int) -> torch.Tensor:
    """Gumbel(0, 1) noise ``-log(E)``, ``E ~ Exp(1)``, as float32 on the CPU: a pure function of
    ``(seed, draw)``; redrawn (with the next sub-seed) while any value is infinite."""
    for retry in range(100):
        gen = draw_generator(seed, draw, retry)
        noise = -torch.empty(shape, dtype=torch.float32).exponential_(generator=gen).log()
        if bool(torch.isfinite(noise).all()):
            return noise
    raise RuntimeError("100 Gumbel draws in a row held an infinite value")  # cannot happen in practice


def straight_through(alphas: torch.Tensor, noise: torch.Tensor, tau: float) -> tuple[torch.Tensor, list[int]]:
    """(num_edges, num_ops) logits and noise -> straight-through one-hot weights and the sampled
    column of each edge. The weights' values are exactly 0 and 1; their gradient is that of
    ``softmax((log_softmax(alphas) + noise) / tau)``."""
    h = F.softmax((F.log_softmax(alphas, dim=-1) + noise.to(alphas)) / tau, dim=-1)
    index = h.detach().argmax(dim=-1)
    hard = torch.zeros_like(h).scatter_(-1, index.unsqueeze(-1), 1.0)
    return hard + (h - h.detach()), index.tolist()


@METHODS.register("gdas")
class Gdas(Method):
    name = "gdas"
    title = "GDAS"
    supports_unrolled = False
    settings = ("tau_max", "tau_min")

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self.tau_max = 10.0 if config is None else float(config.tau_max)
        self.tau_min = 0.1 if config is None else float(config.tau_min)
        self.seed = 0 if config is None else int(config.seed)
        self.tau = self.tau_max
        self.draws = 0  # training-mode forward passes so far (each draws once per cell type)

    @classmethod
    def check(cls, config: Any) -> None:
        super().check(config)
        if not config.tau_min > 0:
            raise ConfigError(f"--tau-min must be positive (the Gumbel softmax divides by the temperature), "
                              f"got {config.tau_min}")
        if config.tau_min > config.tau_max:
            raise ConfigError(f"--tau-min {config.tau_min} is above --tau-max {config.tau_max}: the temperature "
                              f"falls from --tau-max to --tau-min, so swap them")

    def start_epoch(self, epoch: int, epochs: int) -> None:
        fraction = epoch / (epochs - 1) if epochs > 1 else 0.0
        self.tau = self.tau_max - (self.tau_max - self.tau_min) * fraction

    def edge_plan(self, model: nn.Module, cell_type: str) -> EdgePlan:
        alphas = model.arch_group(f"alphas_{cell_type}")
        if not model.training:
            index = alphas.detach().argmax(dim=-1)
            return EdgePlan(torch.zeros_like(alphas).scatter_(-1, index.unsqueeze(-1), 1.0), index.tolist())
        # One draw per forward pass: the space asks for its cell types in a fixed order, and the
        # draw counter moves on when the first of them is asked for.
        types = model.cell_types()
        if cell_type == types[0]:
            self.draws += 1
        noise = gumbel_noise(tuple(alphas.shape), self.seed, (self.draws - 1) * len(types) + types.index(cell_type))
        weights, active = straight_through(alphas, noise, self.tau)
        return EdgePlan(weights, active)

    def eval_pass(self, model: nn.Module):
        return batch_statistics_pass(model)

    def state_dict(self) -> dict[str, Any]:
        return {"tau": self.tau, "draws": self.draws}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tau, self.draws = float(state["tau"]), int(state["draws"])

    def scalars(self) -> dict[str, float]:
        return {"tau": self.tau}
