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
is bit-identical.

**Progressive schedule** (``--drnas-progressive``; the authors' ``DARTS-space/train_search.py``,
which produced the published CIFAR-10 cell, and ``201-space/train_search_progressive.py``):

* Two stages of ``--epochs`` epochs each (DARTS space: 25 + 25 published; NAS-Bench-201: 50 + 50)
  on the same ``--layers`` cells. Every edge is a partial-channel edge (PC-DARTS's: the mixed op
  on the first C/K channels, the rest bypassed, a channel shuffle; no edge normalisation). The
  plan is the space's (:data:`PROGRESSIONS`): DARTS space K = 6 then 4, each edge keeping its 4
  ops of largest alpha (the code's ``num_keeps = [7, 4]``); NAS-Bench-201 K = 4 then 2, keeping 3
  of the 5 ops (``num_keeps = [5, 3]``, ``none`` included in the ranking as in the code).
* The kept alphas are carried exactly, and so is their Adam state (moments gathered from the kept
  columns, the step count): Adam and its weight decay act per entry, so the kept columns evolve
  as in the code, whose pruned alphas stay in its tensors, masked. A draw ``Dir(beta_kept)`` is
  what the code's draw of all the weights, masked to the kept ones and renormalised, is
  distributed as (a Dirichlet's subvector renormalised is Dirichlet), so the mixing weights have
  the code's distribution, though not its random numbers.
* The learning rate: the code's one ``CosineAnnealingLR`` of period 2 x ``--epochs`` (both
  stages), whose state is loaded into the schedule of stage 2's fresh SGD. With PyTorch's
  recursive (chainable) cosine, PyTorch 1.4 and later, that restarts stage 2 at
  ``--learning-rate`` and takes it down as ``lr_e = lr_min + (lr_{e-1} - lr_min) (1 + cos(pi e / T))
  / (1 + cos(pi (e - 1) / T))``; darts-nas does the same (carries the schedule's state into the new
  one, not the old learning rate).
* Architecture steps from epoch 10 of each stage (``--arch-warmup-epochs 10`` counts per stage).
* The weights: the stem, the cells' preprocessing (NAS-Bench-201: the residual reduction blocks),
  the classifier and their BatchNorm statistics and SGD momentum are carried into stage 2; each
  kept op is its stage-1 op widened from C/K1 to C/K2 channels by the code's ``net2wider``
  (:mod:`darts_nas.methods.net2wider`: channels copied along random maps, with their BatchNorm
  statistics and momentum), the maps drawn from :func:`~darts_nas.methods.base.draw_generator` of
  the seed and the stage, so that a run resumed at the transition widens identically.
  ``--drnas-widen fresh`` starts stage 2's ops from fresh weights instead.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, ContextManager, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Dirichlet, kl_divergence

from ..errors import ConfigError
from .base import METHODS, EdgePlan, Method, SearchParts, Stage, draw_generator
from .net2wider import widen_op, widen_optimizer_state
from .pc_darts import PartialChannelEdge

REGULARISERS = ("l2", "kl")
WIDENINGS = ("net2wider", "fresh")


class Progression(NamedTuple):
    """A space's progressive plan: partial channels K of each stage (the code's ``ks``) and the
    ops each edge keeps for stage 2 (``num_keeps[1]``)."""

    ks: tuple[int, ...]
    keep: int
    script: str  # where the authors' code runs it

    @property
    def channels_multiple(self) -> int:
        """What --init-channels must be a multiple of: every stage's K divides it."""
        return math.lcm(*self.ks)


# DARTS space: DARTS-space/train_search.py (ks = [6, 4], num_keeps = [7, 4], 25 + 25 epochs);
# NAS-Bench-201: 201-space/train_search_progressive.py (ks = [4, 2], num_keeps = [5, 3], 50 + 50)
PROGRESSIONS = {"darts": Progression((6, 4), 4, "DARTS-space/train_search.py"),
                "nas-bench-201": Progression((4, 2), 3, "201-space/train_search_progressive.py")}


def concentration(alphas: torch.Tensor) -> torch.Tensor:
    """ELU(alpha) + 1: positive Dirichlet concentrations from unconstrained logits."""
    return F.elu(alphas) + 1.0


@METHODS.register("drnas")
class DrNAS(Method):
    name = "drnas"
    title = "DrNAS"
    settings = ("drnas_regulariser", "drnas_reg_scale", "drnas_progressive", "drnas_widen")

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self.regulariser = "l2" if config is None else config.drnas_regulariser
        self.scale = 1e-3 if config is None else float(config.drnas_reg_scale)
        self.progressive = config is not None and bool(config.drnas_progressive)
        self.widen = "net2wider" if config is None else config.drnas_widen
        self.plan = PROGRESSIONS.get(config.space) if self.progressive else None
        self.k = self.plan.ks[0] if self.plan else 1  # the partial channels of the stage being built

    @classmethod
    def check(cls, config: Any) -> None:
        super().check(config)
        if config.drnas_regulariser not in REGULARISERS:
            raise ConfigError(f"--drnas-regulariser must be one of {', '.join(REGULARISERS)}, "
                              f"got {config.drnas_regulariser!r}")
        if config.drnas_reg_scale < 0:
            raise ConfigError(f"--drnas-reg-scale must not be negative, got {config.drnas_reg_scale}")
        if config.drnas_widen not in WIDENINGS:
            raise ConfigError(f"--drnas-widen must be one of {', '.join(WIDENINGS)}, got {config.drnas_widen!r}")
        if not config.drnas_progressive:
            return
        plan = PROGRESSIONS.get(config.space)
        if plan is None:
            raise ConfigError(f"--drnas-progressive has the authors' schedules for --space darts and nas-bench-201, "
                              f"not {config.space!r}: choose one of those, or drop --drnas-progressive")
        ks = " then ".join(f"K={k}" for k in plan.ks)
        published = {"darts": 36, "nas-bench-201": 16}[config.space]
        if config.init_channels % plan.channels_multiple:
            raise ConfigError(f"--drnas-progressive runs partial channels {ks}, which must divide the "
                              f"{config.init_channels} channels of --init-channels: choose a multiple of "
                              f"{plan.channels_multiple} (published: {published})")
        if len(config.primitives) <= plan.keep:
            raise ConfigError(f"--drnas-progressive prunes every edge to {plan.keep} ops after stage 1, but --ops "
                              f"offers {len(config.primitives)}: give more ops (published: "
                              f"{'the 7 without none' if config.space == 'darts' else 'the 5'})")
        if config.early_stop:
            raise ConfigError("--early-stop would stop the progressive DrNAS search inside a stage: drop it")

    # -- the progressive schedule ------------------------------------------------------------------
    def stages(self) -> list[Stage]:
        if not self.progressive:
            return super().stages()
        c, ks = self.config, self.plan.ks
        return [Stage(epochs=c.epochs, layers=c.layers, keep=self.plan.keep if i + 1 < len(ks) else None,
                      settings={"partial_channels": k}, cosine_epochs=len(ks) * c.epochs)
                for i, k in enumerate(ks)]

    def start_stage(self, index: int, stage: Stage) -> None:
        if self.progressive:
            self.k = int(stage.settings["partial_channels"])

    def make_edge(self, C: int, stride: int, primitives, ops=None) -> nn.Module:
        if not self.progressive:
            return super().make_edge(C, stride, primitives, ops)
        if C % self.k:  # checked for --init-channels; the cells have C, 2C, 4C channels
            raise ConfigError(f"--drnas-progressive: K={self.k} does not divide the {C} channels of a cell: choose "
                              f"a multiple of {self.plan.channels_multiple} for --init-channels")
        return PartialChannelEdge(C, stride, primitives, self.k, ops)

    def carry_over(self, index: int, previous: SearchParts, current: SearchParts) -> None:
        if not self.progressive:
            return
        carry_kept_alphas(previous, current)
        carry_unchanged_weights(previous, current)
        if self.widen == "net2wider":
            # the maps: a pure function of the seed and the stage (the same on every process, and
            # on a run resumed at the end of stage 1, which makes the transition again)
            widen_kept_ops(previous, current, draw_generator(self.config.seed, index))
        # the code's configure_scheduler: the schedule's state (period, epoch) over the fresh SGD
        current.scheduler.load_state_dict(previous.scheduler.state_dict())

    def describe(self) -> str:
        text = super().describe()
        if self.progressive:
            first, second = self.plan.ks
            text += (f" (two stages: partial channels K={first} on every op, then the {self.plan.keep} strongest "
                     f"per edge at K={second}, " + ("widened from stage 1 by net2wider)" if self.widen == "net2wider"
                                                    else "from fresh weights)"))
        return text

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


def kept_columns(previous: nn.Module, current: nn.Module, cell_type: str) -> torch.Tensor:
    """(num_edges, kept ops) long: for each edge of ``current``, the column of each of its ops in
    ``previous``'s alphas (``current``'s ops are a subset of ``previous``'s on every edge)."""
    old, new = previous.edge_ops[cell_type], current.edge_ops[cell_type]
    return torch.tensor([[o.index(op) for op in n] for o, n in zip(old, new)], dtype=torch.long)


@torch.no_grad()
def carry_kept_alphas(previous: SearchParts, current: SearchParts) -> None:
    """The alphas of the kept ops and their Adam state (moments gathered, step count copied) from
    the finished stage into the next one's fresh alphas and architecture optimiser."""
    old_opt, new_opt = previous.architect.optimizer, current.architect.optimizer
    old_groups, new_groups = previous.model.arch_groups(), current.model.arch_groups()
    for t in current.model.cell_types():
        name = f"alphas_{t}"
        old, new = old_groups[name], new_groups[name]
        index = kept_columns(previous.model, current.model, t).to(old.device)
        new.copy_(old.gather(1, index))
        state = old_opt.state.get(old, {})
        if state:
            new_opt.state[new] = {k: (v.gather(1, index).clone() if torch.is_tensor(v) and v.shape == old.shape
                                      else v.clone() if torch.is_tensor(v) else v) for k, v in state.items()}


@torch.no_grad()
def carry_unchanged_weights(previous: SearchParts, current: SearchParts) -> None:
    """Every weight and buffer outside the edges (stem, the cells' preprocessing, classifier) with
    its SGD momentum: their shapes do not change between the stages. The edges' ops start afresh."""
    def outside_edges(model: nn.Module):
        inside = {id(t) for m in model.modules() if isinstance(m, PartialChannelEdge)
                  for t in [*m.parameters(), *m.buffers()]}
        arch = {id(a) for a in model.arch_parameters()}
        return {name: t for name, t in [*model.named_parameters(), *model.named_buffers()]
                if id(t) not in inside and id(t) not in arch}

    old, new = outside_edges(previous.model), outside_edges(current.model)
    old_opt, new_opt = previous.w_optimizer, current.w_optimizer
    for name, t in new.items():
        source = old.get(name)
        if source is None or source.shape != t.shape:
            raise ValueError(f"the stages' supernets differ outside their edges at {name}")
        t.copy_(source)
        state = old_opt.state.get(source, {}) if isinstance(source, nn.Parameter) else {}
        if state:
            new_opt.state[t] = {k: v.clone() if torch.is_tensor(v) else v for k, v in state.items()}


@torch.no_grad()
def widen_kept_ops(previous: SearchParts, current: SearchParts, generator: torch.Generator) -> None:
    """Each kept op of stage 2 from its stage-1 op widened from C/K1 to C/K2 channels
    (:mod:`darts_nas.methods.net2wider`), with its SGD momentum widened alike; edges in module
    order, ops in the new edge's order, each op's maps drawn from ``generator`` in turn."""
    old_edges = [m for m in previous.model.modules() if isinstance(m, PartialChannelEdge)]
    new_edges = [m for m in current.model.modules() if isinstance(m, PartialChannelEdge)]
    if len(old_edges) != len(new_edges):
        raise ValueError(f"the stages' supernets have {len(old_edges)} and {len(new_edges)} edges")
    for old, new in zip(old_edges, new_edges):
        for name, wide in zip(new.mixed.op_names, new.mixed.ops):
            narrow = old.mixed.ops[old.mixed.op_names.index(name)]
            maps = widen_op(narrow, wide, generator)
            widen_optimizer_state(narrow, wide, maps, previous.w_optimizer, current.w_optimizer)
