"""What a differentiable search method is: the seams between a method, a search space and the run loop.

A search space (:mod:`darts_nas.spaces`) builds the supernet: its cells, its edges and its groups of
architecture parameters. A :class:`Method` says what varies between the methods of the DARTS family:

=================================  ==================================================================
seam                               DARTS (this class's defaults)
=================================  ==================================================================
:meth:`make_edge`                  what an edge computes and what enters it: every op on all channels
:meth:`extra_arch_parameters`      architecture parameters beyond the alphas: none
:meth:`edge_plan`                  how mixing weights come from the logits: ``softmax(alpha)``; which
                                   ops run (all); how a node sums its edges (plainly)
:meth:`arch_regulariser`           extra terms of the architecture loss: none
:meth:`weight_pass`                what the weight step's forward pass sees: the same plan
:meth:`eval_pass`                  how the supernet is evaluated: eval mode, BatchNorm's running statistics
:meth:`start_epoch`                per-epoch schedules (GDAS's temperature): none
:meth:`make_architect`             the architecture step: first or second order (``--unrolled``)
:meth:`edge_scale`                 how a genotype ranks edges: by the op weights alone
:meth:`derive_genotype`            the DARTS supernet's derivation rule (``model.genotype()``): DARTS's
:attr:`alpha_init_scale`           the alphas start as this times N(0, 1): 1e-3
:meth:`genotype`                   the current genotype after an epoch: the supernet's derivation
``learns_architecture``            whether there are architecture parameters to learn: yes (the
                                   sampling methods: no architect step, no alphas recorded)
:meth:`stages`                     the stage plan of a staged search (P-DARTS): one stage of
                                   ``--epochs`` epochs on ``--layers`` cells
:meth:`start_stage`                per-stage settings (P-DARTS's skip dropout rate), before the
                                   stage's supernet is built: none
:meth:`carry_over`                 what a stage's fresh supernet and optimisers take over from the
                                   finished stage's: nothing (P-DARTS starts each stage afresh)
:meth:`next_edge_ops`              the next stage's candidate ops per edge from the finished stage's
                                   alphas: each edge's ``Stage.keep`` strongest (softmax) ops
:meth:`final_genotype`             the genotype the search returns: the last epoch's
=================================  ==================================================================

The run loop sees "a method" and "named groups of architecture parameters" and nothing more:
:meth:`state_dict` goes into every checkpoint, :meth:`scalars` onto the board and into
metrics.jsonl, :meth:`describe` into the log. A new method is one module under
``darts_nas/methods/`` that subclasses :class:`Method`, overrides the seams it changes and
registers itself in :data:`METHODS` (the package ``__init__`` imports it).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, ContextManager, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..registry import Registry

METHODS: Registry = Registry("search method")


@dataclass
class EdgePlan:
    """How the edges of one cell type mix their ops in one forward pass.

    ``weights``: (num_edges, num_ops) mixing weights, one column per candidate op.
    ``active``: per edge, the one column whose op is computed (GDAS), or None: every op; -1: the
    edge is not computed at all (a sampled DARTS-space architecture leaves it out).
    ``edge_weights``: (num_edges,) factor of each edge in its node's sum (PC-DARTS's
    normalised betas), or None: a node sums its edges plainly.
    """

    weights: torch.Tensor
    active: list[int] | None = None
    edge_weights: torch.Tensor | None = None


@dataclass(frozen=True)
class Stage:
    """One stage of a search: ``epochs`` epochs on a fresh supernet of ``layers`` cells.

    ``keep``: how many candidate ops each edge keeps for the next stage (None: the last stage);
    ``settings``: the method's own per-stage values (P-DARTS's skip dropout rate), handed to
    :meth:`Method.start_stage`. The run loop builds a new supernet, weight optimiser, learning
    rate schedule and architect at the start of every stage, into which :meth:`Method.carry_over`
    copies what the method carries from the finished stage; epochs are numbered globally.
    """

    epochs: int
    layers: int
    keep: int | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    # the period of the stage's cosine learning-rate schedule (None: the stage's epochs); a method
    # that carries the schedule across stages (:meth:`Method.carry_over`) sets the whole search's
    cosine_epochs: int | None = None


class SearchParts(NamedTuple):
    """What the run loop builds for a stage: the supernet, its weights' SGD, the architect (whose
    ``optimizer`` steps the architecture parameters) and the cosine learning-rate schedule."""

    model: nn.Module
    w_optimizer: torch.optim.Optimizer
    architect: Any
    scheduler: Any


_SEED_STRIDE = 1_000_003  # a prime: (seed, draw) pairs map to distinct generator seeds


def draw_generator(seed: int, draw: int, retry: int = 0) -> torch.Generator:
    """A CPU generator for a method's random draw number ``draw`` of a run seeded with ``seed``
    (``retry`` for a draw taken again): samples that are a pure function of (seed, draw), the same
    on every device and every torchrun process, so that a checkpointed draw count resumes exactly."""
    return torch.Generator().manual_seed((seed * _SEED_STRIDE + draw) % (2 ** 62) + retry * (2 ** 62))


@contextlib.contextmanager
def batch_statistics_pass(model: nn.Module):
    """BatchNorm normalises with each batch's statistics and leaves its running statistics as
    they are (an evaluation of one sampled path of a supernet whose running statistics mix all)."""
    from ..supernet import _running_stats_frozen

    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    modes = [m.training for m in layers]
    with _running_stats_frozen(model):
        for m in layers:
            m.train(True)
        try:
            yield
        finally:
            for m, mode in zip(layers, modes):
                m.train(mode)


def node_slices(num_edges: int) -> list[slice]:
    """The edges of each intermediate node (node i, 0-based, has 2 + i inputs), in edge order."""
    slices, start, i = [], 0, 0
    while start < num_edges:
        slices.append(slice(start, start + 2 + i))
        start += 2 + i
        i += 1
    return slices


class Method:
    """DARTS (Liu et al., ICLR 2019): softmax mixing of every op on every edge, first- or
    second-order architecture gradient, genotype by the strongest non-``none`` weights.

    ``config`` is the search's :class:`~darts_nas.config.SearchConfig` (None: DARTS defaults, as
    for a supernet built in a test)."""

    name: ClassVar[str] = "darts"
    title: ClassVar[str] = "DARTS"
    supports_unrolled: ClassVar[bool] = True
    # False: no architecture parameters are learnt (the sampling methods); the run loop then takes
    # no architecture step and records no alphas.
    learns_architecture: ClassVar[bool] = True
    # Settings of SearchConfig this method reads, besides the common ones: shown in the log.
    settings: ClassVar[tuple[str, ...]] = ()
    # The DARTS-space supernet draws its alphas as this times N(0, 1) (FairDARTS: 0, all zeros).
    alpha_init_scale: ClassVar[float] = 1e-3

    def __init__(self, config: Any = None) -> None:
        self.config = config

    # -- checks, before anything is written -----------------------------------------------------
    @classmethod
    def check(cls, config: Any) -> None:
        """Refuse, in one line naming the fix, settings this method cannot run with."""
        if config.unrolled and not cls.supports_unrolled:
            raise ConfigError(f"--method {cls.name} has no second-order architecture step: drop --unrolled "
                              f"(or use --method darts or pc-darts for the unrolled hypergradient)")

    # -- the supernet ------------------------------------------------------------------------------
    def make_edge(self, C: int, stride: int, primitives, ops=None) -> nn.Module:
        """One edge of a search cell with ``C`` channels in and out; ``ops`` is the space's op
        registry (None: the DARTS ops)."""
        from ..supernet import MixedOp

        return MixedOp(C, stride, primitives, ops)

    def extra_arch_parameters(self, cell_types: tuple[str, ...], num_edges: int) -> dict[str, tuple[int, ...]]:
        """Shapes of architecture parameters beyond ``alphas_<cell type>``, by name; the space
        creates them (1e-3 * N(0, 1), like the alphas) after the alphas, in this order."""
        return {}

    # -- the forward pass ----------------------------------------------------------------------------
    def edge_plan(self, model: nn.Module, cell_type: str) -> EdgePlan:
        """The plan of one cell type for the next forward pass (Eq. 2 of the DARTS paper)."""
        return EdgePlan(F.softmax(model.arch_group(f"alphas_{cell_type}"), dim=-1))

    def arch_regulariser(self, model: nn.Module) -> torch.Tensor | None:
        """A term added to the architecture loss (None: the plain cross-entropy)."""
        return None

    def eval_pass(self, model: nn.Module) -> ContextManager:
        """Entered around an evaluation of the supernet (the architecture half after each epoch),
        with the model in eval mode: BatchNorm's running statistics, by default."""
        return contextlib.nullcontext()

    def weight_pass(self, model: nn.Module, batch) -> ContextManager:
        """Entered around the forward pass of each weight step on ``batch`` (SDARTS perturbs the
        mixing weights there); the architecture step's passes are outside it."""
        return contextlib.nullcontext()

    # -- the architecture step --------------------------------------------------------------------------
    def make_architect(self, model: nn.Module, w_optimizer: torch.optim.Optimizer,
                       autocast: Callable[[], ContextManager] = contextlib.nullcontext):
        from ..architect import Architect

        c = self.config
        return Architect(model, w_optimizer, lr=c.arch_learning_rate, betas=c.arch_betas,
                         weight_decay=c.arch_weight_decay, unrolled=c.unrolled, autocast=autocast,
                         regulariser=self.arch_regulariser)

    # -- the genotype ----------------------------------------------------------------------------------
    def edge_scale(self, model: nn.Module, cell_type: str) -> torch.Tensor | None:
        """A positive factor per edge applied to its op weights before edges are ranked (None: 1)."""
        return None

    def derive_genotype(self, model: nn.Module) -> Any:
        """The genotype of ``model``'s current architecture, or None: the space's own rule."""
        return None

    def genotype(self, model: nn.Module):
        """The search's current genotype (the run loop asks after every epoch): the supernet's
        derivation from its architecture parameters."""
        return model.genotype()

    # -- stages --------------------------------------------------------------------------------------
    def stages(self) -> list[Stage]:
        """The stage plan: one stage of ``--epochs`` epochs on ``--layers`` cells (every method but
        the staged ones). Needs ``self.config``."""
        return [Stage(epochs=self.config.epochs, layers=self.config.layers)]

    def start_stage(self, index: int, stage: Stage) -> None:
        """Called when stage ``index`` (0-based) begins, before its supernet is built (so that
        :meth:`make_edge` may depend on the stage), and again when a run resumes inside it."""

    def carry_over(self, index: int, previous: SearchParts, current: SearchParts) -> None:
        """Stage ``index`` (1 or later) has just been built as ``current``, with fresh weights,
        alphas and optimisers, after stage ``index - 1`` finished as ``previous``: copy into
        ``current`` what the method carries across the transition (default: nothing). Called once
        per transition, also when a run resumed at the end of a stage makes the transition again;
        a run resumed inside the stage loads ``current`` from its checkpoint instead."""

    def next_edge_ops(self, model: nn.Module, index: int, stage: Stage) -> dict[str, tuple[tuple[str, ...], ...]]:
        """The edge-op table of stage ``index + 1`` from the finished stage ``index``'s supernet:
        each edge keeps its ``stage.keep`` ops of largest ``softmax(alpha)``, in its own column
        order (:func:`darts_nas.edge_ops.top_k_columns`; ties: the earlier column)."""
        from ..edge_ops import keep_columns, top_k_columns

        table = {}
        for t in model.cell_types():
            probs = F.softmax(model.arch_group(f"alphas_{t}").detach().float().cpu(), dim=-1).tolist()
            table[t] = keep_columns(model.edge_ops[t], top_k_columns(probs, model.edge_ops[t], stage.keep))
        return table

    def final_genotype(self, model: nn.Module, genotype):
        """The genotype the search returns, given the last epoch's ``genotype`` (P-DARTS caps the
        normal cell's skip connections here)."""
        return genotype

    # -- schedules, state, what is shown -----------------------------------------------------------------
    def start_epoch(self, epoch: int, epochs: int) -> None:
        """Called before epoch ``epoch`` (0-based) of ``epochs``; schedules change here."""

    def state_dict(self) -> dict[str, Any]:
        """Everything the method changes while it runs (checkpointed, restored on resume)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"method {self.name} has no state, but the checkpoint holds {sorted(state)}")

    def scalars(self) -> dict[str, float]:
        """Per-epoch values of the method's schedules (metrics.jsonl, TensorBoard ``method/<name>``)."""
        return {}

    def arch_views(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Architecture groups other than the alphas as a person reads them: name -> (num_edges,)
        values (PC-DARTS: the betas softmaxed per node), for history.jsonl and TensorBoard."""
        return {}

    def describe(self) -> str:
        """``DARTS search, first order`` and the method's own settings, for the log."""
        order = "second order (unrolled)" if self.config is not None and self.config.unrolled else "first order"
        def shown(value):  # a per-stage list as it is typed: 0.1,0.4,0.7
            return ",".join(map(str, value)) if isinstance(value, tuple) else value

        details = ", ".join(f"--{name.replace('_', '-')} {shown(getattr(self.config, name))}" for name in self.settings
                            if self.config is not None)
        return f"{self.title} search, {order}" + (f", {details}" if details else "")
