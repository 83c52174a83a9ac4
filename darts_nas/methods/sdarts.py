"""SDARTS (Chen and Hsieh, ICML 2020): the weight step sees perturbed mixing weights.

What it changes (``../shared/reference/methods.md`` section 3.4, following the authors' code): the
architecture step is DARTS's; only the **weight step** trains on mixing weights moved away from
``softmax(alpha)`` within ``epsilon`` (on the simplex weights, not the logits), then projected back
to the simplex (each row clamped to [0, 1] and renormalised; a row left all zero gets 1 at its
largest clean weight first):

* ``sdarts-rs`` (random smoothing): uniform noise in [-epsilon, epsilon] on every weight.
* ``sdarts-adv`` (adversarial): an L-infinity PGD attack on the weights that maximises the
  **training** loss on the step's training batch: a random start in the ball, 7 steps
  (``--sdarts-attack-steps``) of ``2 epsilon / steps`` along the gradient's sign, each followed by
  a clamp to the ball around the clean weights and the projection; the network is in eval mode
  during the attack, and the attack is dropped (the clean weights used) if it did not raise the loss.

``epsilon`` ramps linearly per epoch, ``eps_e = eps_min + (eps_max - eps_min) e / E``, from
``--sdarts-epsilon-min`` 0.03 to ``--sdarts-epsilon-max`` 0.3. The noise of draw ``n`` comes from a
generator seeded with ``(seed, n)`` and ``n`` is checkpointed, so a resumed search is bit-identical.
At ``epsilon = 0`` nothing is perturbed: the method is DARTS.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .base import METHODS, EdgePlan, Method, draw_generator



def project_to_simplex(weights: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """Each row clamped to [0, 1] and renormalised to sum 1 (a row left all zero first gets 1 at
    the largest entry of ``clean``), as the authors' code projects."""
    w = weights.clamp(0.0, 1.0)
    empty = w.sum(dim=-1) == 0
    if bool(empty.any()):
        top = F.one_hot(clean.argmax(dim=-1), w.shape[-1]).to(w)
        w = torch.where(empty.unsqueeze(-1), top, w)
    return w / w.sum(dim=-1, keepdim=True)


def uniform_noise(shape: tuple[int, ...], seed: int, draw: int, epsilon: float) -> torch.Tensor:
    gen = draw_generator(seed, draw)
    return (torch.rand(shape, generator=gen, dtype=torch.float32) * 2.0 - 1.0) * epsilon


class _Sdarts(Method):
    settings = ("sdarts_epsilon_min", "sdarts_epsilon_max")

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self.eps_min = 0.03 if config is None else float(config.sdarts_epsilon_min)
        self.eps_max = 0.3 if config is None else float(config.sdarts_epsilon_max)
        self.seed = 0 if config is None else int(config.seed)
        self.epsilon = self.eps_min
        self.draws = 0
        self._perturbed: dict[str, torch.Tensor] | None = None

    @classmethod
    def check(cls, config: Any) -> None:
        super().check(config)
        if not 0 <= config.sdarts_epsilon_min <= config.sdarts_epsilon_max <= 1:
            raise ConfigError(f"--sdarts-epsilon-min {config.sdarts_epsilon_min} and --sdarts-epsilon-max "
                              f"{config.sdarts_epsilon_max} must satisfy 0 <= min <= max <= 1 (radii on the simplex)")

    def start_epoch(self, epoch: int, epochs: int) -> None:
        self.epsilon = self.eps_min + (self.eps_max - self.eps_min) * epoch / epochs

    def edge_plan(self, model: nn.Module, cell_type: str) -> EdgePlan:
        if self._perturbed is not None:
            return EdgePlan(self._perturbed[cell_type])
        return super().edge_plan(model, cell_type)

    def clean_weights(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return {t: F.softmax(model.arch_group(f"alphas_{t}").detach(), dim=-1) for t in model.cell_types()}

    def random_start(self, model: nn.Module, clean: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self.draws += 1
        out = {}
        for i, (t, w) in enumerate(clean.items()):
            noise = uniform_noise(tuple(w.shape), self.seed, (self.draws - 1) * len(clean) + i, self.epsilon)
            out[t] = project_to_simplex(w + noise.to(w), w)
        return out

    @contextlib.contextmanager
    def weight_pass(self, model: nn.Module, batch) -> Iterator[None]:
        if self.epsilon == 0:
            yield
            return
        self._perturbed = self.perturb(model, batch)
        try:
            yield
        finally:
            self._perturbed = None

    def perturb(self, model: nn.Module, batch) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {"epsilon": self.epsilon, "draws": self.draws}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epsilon, self.draws = float(state["epsilon"]), int(state["draws"])

    def scalars(self) -> dict[str, float]:
        return {"epsilon": self.epsilon}


@METHODS.register("sdarts-rs")
class SdartsRS(_Sdarts):
    name = "sdarts-rs"
    title = "SDARTS-RS"

    def perturb(self, model: nn.Module, batch) -> dict[str, torch.Tensor]:
        return self.random_start(model, self.clean_weights(model))


@METHODS.register("sdarts-adv")
class SdartsADV(_Sdarts):
    name = "sdarts-adv"
    title = "SDARTS-ADV"
    settings = ("sdarts_epsilon_min", "sdarts_epsilon_max", "sdarts_attack_steps")

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self.steps = 7 if config is None else int(config.sdarts_attack_steps)

    @classmethod
    def check(cls, config: Any) -> None:
        super().check(config)
        if config.sdarts_attack_steps < 1:
            raise ConfigError(f"--sdarts-attack-steps must be at least 1, got {config.sdarts_attack_steps}")

    def _loss(self, model: nn.Module, batch, weights: dict[str, torch.Tensor]) -> torch.Tensor:
        self._perturbed = weights
        try:
            return F.cross_entropy(model(batch[0]), batch[1])
        finally:
            self._perturbed = None

    def perturb(self, model: nn.Module, batch) -> dict[str, torch.Tensor]:
        clean = self.clean_weights(model)
        was_training = model.training
        model.eval()  # the attack does not move BatchNorm's statistics
        try:
            with torch.enable_grad():
                w = self.random_start(model, clean)
                step = 2.0 * self.epsilon / self.steps
                for _ in range(self.steps):
                    w = {t: v.detach().requires_grad_(True) for t, v in w.items()}
                    grads = torch.autograd.grad(self._loss(model, batch, w), list(w.values()))
                    with torch.no_grad():
                        w = {t: project_to_simplex(torch.max(torch.min(v + step * g.sign(), clean[t] + self.epsilon),
                                                             clean[t] - self.epsilon), clean[t])
                             for (t, v), g in zip(w.items(), grads)}
            with torch.no_grad():
                attacked, plain = self._loss(model, batch, w), self._loss(model, batch, clean)
        finally:
            model.train(was_training)
        return w if bool(attacked > plain) else clean
