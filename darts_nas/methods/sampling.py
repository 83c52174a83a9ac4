"""Supernets trained by path sampling: random search with weight sharing and SPOS.

No architecture parameters are learnt (``learns_architecture = False``): each weight step trains
one architecture drawn uniformly, and only its ops are computed (the others cost nothing). The
architecture is chosen afterwards by a search strategy over the trained supernet
(:mod:`darts_nas.strategies`, ``--strategy``). ``../shared/reference/methods.md`` 3.10-3.12.

* ``--method random-ws`` (Li and Talwalkar, UAI 2019): per minibatch a uniformly sampled
  *genotype*: on the DARTS space, per node of each cell type two distinct inputs and an op for
  each (:class:`darts_nas.candidates.DartsCandidates`: the edges not chosen are not computed); on
  NAS-Bench-201 one op per edge ("RSPS" of the NAS-Bench-201 paper).
* ``--method spos`` (Guo et al., ECCV 2020): per minibatch a uniformly sampled *single path* of
  the supernet: one op per edge, uniform over the edge's candidate ops, ``none`` included (a
  ``none`` edge contributes zeros). On NAS-Bench-201 it is the same sampler as random-ws. SPOS's
  released trainer samples uniformly inside a FLOPs bin; there is no FLOPs constraint here.

**Reproducibility.** Draw ``n`` comes from :func:`~darts_nas.methods.base.draw_generator`
``(seed, n)`` and ``n`` (one per training-mode forward pass) is checkpointed: every torchrun
process trains the same architecture at every step, and a resumed run draws exactly the
architectures the uninterrupted one would.

**Per-epoch evaluation.** With no architecture parameters there is no "current genotype": after
each epoch the search evaluates a *probe* architecture, a uniform draw from a separate stream
(``draw_generator(seed, -epoch - 1)``), on the architecture half, normalising with batch
statistics (the running statistics mix every sampled path); that probe is the epoch's genotype in
history.jsonl. The search's answer is the strategy's genotype.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from ..candidates import candidate_space
from ..errors import ConfigError
from .base import METHODS, EdgePlan, Method, batch_statistics_pass, draw_generator


class NoArchitect:
    """The architect of a method without architecture parameters: nothing to step, nothing to
    save (its ``optimizer`` keeps the checkpoint's ``a_optimizer`` entry empty)."""

    class _NoOptimizer:
        param_groups: ClassVar[list] = []  # no groups: nothing to change the learning rate of

        def state_dict(self) -> dict[str, Any]:
            return {}

        def load_state_dict(self, state: dict[str, Any]) -> None:
            pass

    average_gradients = None

    def __init__(self) -> None:
        self.optimizer = self._NoOptimizer()

    def step(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        raise RuntimeError("a sampling method has no architecture step")


def one_hot_plan(active: list[int], num_ops: int, like: torch.Tensor) -> EdgePlan:
    """The plan that computes column ``active[e]`` of edge ``e`` with weight exactly 1 (-1: the
    edge is not computed)."""
    weights = torch.zeros(len(active), num_ops, dtype=like.dtype, device=like.device)
    for e, k in enumerate(active):
        if k >= 0:
            weights[e, k] = 1.0
    return EdgePlan(weights, list(active))


class SamplingMethod(Method):
    """What random-ws and SPOS share: no architect, one uniformly drawn path per training pass."""

    supports_unrolled = False
    learns_architecture: ClassVar[bool] = False

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self.seed = 0 if config is None else int(config.seed)
        self.draws = 0  # training-mode forward passes so far
        self._path: dict[str, list[int]] | None = None
        self.probe = None  # the genotype evaluated after the epoch
        self._probe_epoch, self._probe_of = 0, None

    @classmethod
    def check(cls, config: Any) -> None:
        super().check(config)
        for flag, value in (("--hessian-every", config.hessian_every), ("--early-stop", config.early_stop),
                            ("--arch-warmup-epochs", config.arch_warmup_epochs)):
            if value:
                raise ConfigError(f"--method {cls.name} learns no architecture parameters, so {flag} has nothing to "
                                  f"act on: drop {flag}")

    def candidates(self, model: nn.Module):
        primitives = model.primitives
        return candidate_space("nas-bench-201" if model.cell_types() == ("cell",) else "darts",
                               getattr(model, "steps", 3), primitives, getattr(model, "multiplier", None))

    def sample_path(self, model: nn.Module, below: Callable[[int], int]) -> dict[str, list[int]]:
        raise NotImplementedError

    def make_architect(self, model, w_optimizer, autocast=contextlib.nullcontext):
        return NoArchitect()

    def start_epoch(self, epoch: int, epochs: int) -> None:
        self._probe_epoch = epoch

    def genotype(self, model: nn.Module):
        """The epoch's probe architecture (see the module's docstring)."""
        if self._probe_of != self._probe_epoch:
            gen = draw_generator(self.seed, -self._probe_epoch - 1)
            self.probe = self.candidates(model).sample(lambda n: int(torch.randint(n, (1,), generator=gen)))
            self._probe_of = self._probe_epoch
        return self.probe

    def edge_plan(self, model: nn.Module, cell_type: str) -> EdgePlan:
        like = model.arch_group(f"alphas_{cell_type}")
        num_ops = like.shape[-1]
        if not model.training:
            return one_hot_plan(self.candidates(model).paths(self.genotype(model))[cell_type], num_ops, like)
        types = model.cell_types()
        if cell_type == types[0] or self._path is None:
            gen = draw_generator(self.seed, self.draws)
            self.draws += 1
            self._path = self.sample_path(model, lambda n: int(torch.randint(n, (1,), generator=gen)))
        return one_hot_plan(self._path[cell_type], num_ops, like)

    def eval_pass(self, model: nn.Module):
        return batch_statistics_pass(model)

    def state_dict(self) -> dict[str, Any]:
        return {"draws": self.draws}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.draws = int(state["draws"])

    def describe(self) -> str:
        return f"{self.title} supernet training (one uniformly sampled architecture per step, no architecture parameters)"


@METHODS.register("random-ws")
class RandomWeightSharing(SamplingMethod):
    name = "random-ws"
    title = "Random search with weight sharing"

    def sample_path(self, model: nn.Module, below: Callable[[int], int]) -> dict[str, list[int]]:
        space = self.candidates(model)
        return space.paths(space.sample(below))


@METHODS.register("spos")
class SinglePathOneShot(SamplingMethod):
    name = "spos"
    title = "SPOS"

    def sample_path(self, model: nn.Module, below: Callable[[int], int]) -> dict[str, list[int]]:
        num_ops = len(model.primitives)
        return {t: [below(num_ops) for _ in range(model.arch_group(f"alphas_{t}").shape[0])]
                for t in model.cell_types()}
