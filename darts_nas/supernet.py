"""The weight-sharing supernet of the DARTS search space (REFERENCE section 1).

Every edge of a cell is a :class:`MixedOp`, ``o(x) = sum_k softmax(alpha)_k * op_k(x)``
(Eq. 2 of the DARTS paper). The architecture parameters are ``nn.Parameter``s of the supernet, so
they are saved, moved and synchronised with it: ``alphas_normal`` and ``alphas_reduce`` (shape
``(num_edges, num_ops)``) and whatever groups the search method adds (PC-DARTS's betas).
:meth:`Supernet.arch_groups` names them; :meth:`Supernet.arch_parameters` and
:meth:`Supernet.weights` partition :meth:`Supernet.parameters`.

What varies between search methods (how mixing weights come from the alphas, which ops an edge
computes, what enters it, how a node sums its edges, how a genotype ranks edges) is asked of the
supernet's :class:`~darts_nas.methods.Method`; the space is registered in
:data:`darts_nas.spaces.SEARCH_SPACES`.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .edge_ops import edge_op_table, shared_ops
from .errors import ConfigError
from .genotype import PRIMITIVES, Genotype, derive
from .kernels import lean_applies, shared_relu
from .ops import OPS, FactorizedReduce, GlobalAvgPool, PoolBN, ReLUConvBN, is_pooling


def num_edges(steps: int) -> int:
    """Edges of a cell with ``steps`` intermediate nodes: node i (0-based) has 2 + i inputs."""
    return sum(2 + i for i in range(steps))


class MixedOp(nn.Module):
    """One edge of the supernet: a softmax-weighted sum of every candidate op.

    ``none`` contributes exactly zero, so it is not built and not computed; its alpha still takes
    part in the softmax (as in the paper), it just multiplies nothing. The ops that start with a
    ReLU (convolutions, and the factorized reduce of ``skip_connect`` at stride 2) share one
    ``relu(x)`` through their ``after_relu``: the same result, with one ReLU, one saved
    activation and one ReLU gradient per edge instead of one per op. In training passes on the
    CPU the convolution and pooling ops run as lean blocks (:mod:`darts_nas.kernels`) that keep
    only their input and output for the backward pass, and apply the op's weight themselves, so
    that its gradient comes out of their BatchNorm backward pass.
    """

    def __init__(self, C: int, stride: int, primitives: Sequence[str], ops=None) -> None:
        # ops: the space's op registry (name -> factory(C, stride, affine)); None: the DARTS ops,
        # whose pooling ops get a BN in the supernet (another space's factories build the edge's ops as they are)
        super().__init__()
        self.stride = stride
        self.ops = nn.ModuleList()
        self.op_index: list[int] = []  # column of alpha for each built op
        self.op_names: list[str] = []  # and its name
        for k, name in enumerate(primitives):
            if name == "none":
                continue
            op = (OPS if ops is None else ops)[name](C, stride, False)
            if ops is None and is_pooling(name):
                op = PoolBN(op, C)
            self.ops.append(op)
            self.op_index.append(k)
            self.op_names.append(name)
        self.shares_relu = [hasattr(op, "after_relu") for op in self.ops]
        self.has_lean = [hasattr(op, "forward_lean") for op in self.ops]

    def forward(self, x: torch.Tensor, weights: torch.Tensor, active: int | None = None,
                bypass_scale: torch.Tensor | None = None) -> torch.Tensor:
        # x: (B, C, H, W); weights: (num_ops,) mixing weights of this edge (softmaxed alphas);
        # active: the one column to compute (GDAS), None for all; bypass_scale: unused here
        # (every channel goes through the ops), see PC-DARTS's edge.
        if active is not None:
            return self._one(x, weights, active)
        out = None
        relu_x = None
        lean = lean_applies(x, self.training)
        for k, op, shares, has_lean in zip(self.op_index, self.ops, self.shares_relu, self.has_lean):
            if shares and relu_x is None:
                # the lean blocks' shared ReLU keeps x (alive anyway as a cell node), not relu(x)
                relu_x = shared_relu(x) if lean else F.relu(x)
            if lean and has_lean:
                y = op.forward_lean(x, relu_x if shares else None, weights[k])  # scaled inside the block
            else:
                y = weights[k] * (op.after_relu(relu_x) if shares else op(x))
            out = y if out is None else out + y
        return out

    def _one(self, x: torch.Tensor, weights: torch.Tensor, k: int) -> torch.Tensor:
        """``weights[k] * op_k(x)`` alone: the other ops are not computed."""
        if k not in self.op_index:  # none: zeros (of the stride's size), still times its weight
            stride = self.stride
            return x[:, :, ::stride, ::stride] * 0.0 * weights[k]
        pos = self.op_index.index(k)
        op, shares = self.ops[pos], self.shares_relu[pos]
        lean = lean_applies(x, self.training)
        relu_x = (shared_relu(x) if lean else F.relu(x)) if shares else None
        if lean and self.has_lean[pos]:
            return op.forward_lean(x, relu_x, weights[k])
        return weights[k] * (op.after_relu(relu_x) if shares else op(x))


class SearchCell(nn.Module):
    """A DARTS cell with every edge mixed: two inputs, ``steps`` intermediate nodes, output the
    channel concatenation of the last ``multiplier`` nodes."""

    def __init__(self, steps: int, multiplier: int, C_pp: int, C_p: int, C: int,
                 reduction: bool, reduction_prev: bool, primitives: Sequence, method=None) -> None:
        # primitives: the op names of every edge, or one list of op names per edge (edge order)
        super().__init__()
        if method is None:
            from .methods.darts import Darts

            method = Darts()
        self.reduction = reduction
        self.steps = steps
        self.multiplier = multiplier
        # The cell two back is at twice our input resolution when the previous cell reduced.
        if reduction_prev:
            self.preprocess0 = FactorizedReduce(C_pp, C, affine=False)
        else:
            self.preprocess0 = ReLUConvBN(C_pp, C, 1, 1, 0, affine=False)
        self.preprocess1 = ReLUConvBN(C_p, C, 1, 1, 0, affine=False)
        self.edges = nn.ModuleList()
        per_edge = not isinstance(primitives[0], str)
        for i in range(steps):
            for j in range(2 + i):
                stride = 2 if reduction and j < 2 else 1
                ops = primitives[len(self.edges)] if per_edge else primitives
                self.edges.append(method.make_edge(C, stride, ops))

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, plan) -> torch.Tensor:
        # plan: an EdgePlan (or the (num_edges, num_ops) mixing weights alone); edges are ordered
        # node by node, inputs in order
        weights, active, scale = (plan, None, None) if isinstance(plan, torch.Tensor) else (
            plan.weights, plan.active, plan.edge_weights)
        states = [self._preprocess(self.preprocess0, s0), self._preprocess(self.preprocess1, s1)]
        offset = 0
        for _ in range(self.steps):
            node = None
            for j, h in enumerate(states):
                e = offset + j
                if active is not None and active[e] < 0:  # an edge the sampled architecture leaves out
                    continue
                if scale is None:
                    y = self.edges[e](h, weights[e]) if active is None else self.edges[e](h, weights[e], active[e])
                else:  # edge normalisation: the edge's factor folded into its mixing weights
                    y = self.edges[e](h, weights[e] * scale[e], None if active is None else active[e], scale[e])
                node = y if node is None else node + y
            offset += len(states)
            states.append(node)
        return torch.cat(states[-self.multiplier:], dim=1)  # (B, multiplier * C, H', W')

    def _preprocess(self, op: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if isinstance(op, ReLUConvBN) and lean_applies(x, self.training):
            return op.forward_lean(x)
        return op(x)


class ArchParameters:
    """What every space's supernet offers the run loop about its parameters: the architecture
    parameters by name (the names listed in ``self._arch_names``, in a fixed order) and the
    weights as everything else, so that the two partition ``parameters()``. Mixed into an
    ``nn.Module``."""

    _arch_names: list[str]

    def arch_groups(self) -> dict[str, nn.Parameter]:
        """The architecture parameters by name, in a fixed order."""
        return {name: getattr(self, name) for name in self._arch_names}

    def arch_group(self, name: str) -> nn.Parameter:
        return getattr(self, name)

    def arch_parameters(self) -> list[nn.Parameter]:
        return list(self.arch_groups().values())

    def named_weights(self):
        arch = {id(p) for p in self.arch_parameters()}
        return [(n, p) for n, p in self.named_parameters() if id(p) not in arch]

    def weights(self) -> list[nn.Parameter]:
        return [p for _, p in self.named_weights()]


class Supernet(ArchParameters, nn.Module):
    """The DARTS search network: stem, ``layers`` search cells (reductions at ``layers // 3``
    and ``2 * layers // 3``), global average pool, linear classifier.

    ``forward(x) -> logits``; losses belong to the training code.

    Candidate ops: ``primitives`` on every edge (the usual DARTS space), or ``edge_ops``, an
    edge-op table giving each edge of each cell type its own ops (RobustDARTS's S1-S4, pruned
    stages; :mod:`darts_nas.edge_ops`). Only the listed ops are built; row ``e`` of
    ``alphas_<type>`` has one column per op of ``edge_ops[type][e]``, in that order.
    ``self.edge_ops`` always holds the table; ``self.primitives`` the shared list, or None when the
    edges differ.

    With ``recompute`` (``--recompute``) each cell's activations are not kept for the backward
    pass but computed again there (``torch.utils.checkpoint``): a fraction of the memory for one
    more forward pass. Gradients are bit-identical; during the recomputation BatchNorm normalises
    with the same batch statistics and leaves its running statistics alone, so those are
    bit-identical too.
    """

    recompute: bool = False

    def __init__(self, C: int = 16, num_classes: int = 10, layers: int = 8, steps: int = 4,
                 multiplier: int | None = None, stem_multiplier: int = 3, in_channels: int = 3,
                 primitives: Sequence[str] = PRIMITIVES, method=None, edge_ops=None) -> None:
        super().__init__()
        if method is None:
            from .methods.darts import Darts

            method = Darts()
        self.method = method  # not a module: its state is checkpointed by the run loop
        if edge_ops is None:
            primitives = tuple(primitives)
            check_primitives(primitives)
        if multiplier is None:
            multiplier = steps
        for name, value in (("init channels", C), ("classes", num_classes), ("layers", layers),
                            ("nodes", steps), ("input channels", in_channels)):
            if value < 1:
                raise ConfigError(f"the number of {name} must be at least 1, got {value}")
        if not 1 <= multiplier <= steps:
            raise ConfigError(f"multiplier must be between 1 and the number of nodes ({steps}), got {multiplier}")
        self.C = C
        self.num_classes = num_classes
        self.layers = layers
        self.steps = steps
        self.multiplier = multiplier
        k = num_edges(steps)
        self.edge_ops = edge_op_table(primitives if edge_ops is None else edge_ops, self.cell_types(), k, OPS)
        self.primitives = shared_ops(self.edge_ops)

        C_curr = stem_multiplier * C
        # The stem's BN keeps its affine parameters as in the reference code (its 2 * 3C
        # parameters are part of the 1,930,618 weights of the paper's supernet); every BN inside
        # the cells is affine=False, so the ops cannot rescale themselves against the alphas.
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, C_curr, 3, padding=1, bias=False),
            nn.BatchNorm2d(C_curr),
        )
        C_pp, C_p, C_curr = C_curr, C_curr, C
        self.cells = nn.ModuleList()
        reduction_prev = False
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)
            if reduction:
                C_curr *= 2
            self.cells.append(SearchCell(steps, multiplier, C_pp, C_p, C_curr, reduction,
                                         reduction_prev, self.edge_ops["reduce" if reduction else "normal"], method))
            reduction_prev = reduction
            C_pp, C_p = C_p, multiplier * C_curr
        self.global_pooling = GlobalAvgPool()
        self.classifier = nn.Linear(C_p, num_classes)

        # Eq. 2 of the paper; 1e-3 noise as in the reference code rather than exact zeros (the
        # method's scale: FairDARTS's code starts from zeros; the draw is taken either way).
        scale = getattr(method, "alpha_init_scale", 1e-3)
        self.alphas_normal = nn.Parameter(scale * torch.randn(k, len(self.edge_ops["normal"][0])))
        self.alphas_reduce = nn.Parameter(scale * torch.randn(k, len(self.edge_ops["reduce"][0])))
        self._arch_names = ["alphas_normal", "alphas_reduce"]
        for name, shape in method.extra_arch_parameters(self.cell_types(), k).items():
            self.register_parameter(name, nn.Parameter(1e-3 * torch.randn(*shape)))
            self._arch_names.append(name)

    @staticmethod
    def cell_types() -> tuple[str, ...]:
        return ("normal", "reduce")

    def node_slices(self) -> list[slice]:
        """The edges of each intermediate node, in edge order (node i, 0-based, has 2 + i)."""
        from .methods.base import node_slices

        return node_slices(num_edges(self.steps))

    @contextlib.contextmanager
    def recompute_disabled(self) -> Iterator[None]:
        """Forward passes inside keep their activations (needed when the weights are swapped in
        by ``functional_call`` only for the duration of the forward pass)."""
        previous, self._recompute_off = getattr(self, "_recompute_off", False), True
        try:
            yield
        finally:
            self._recompute_off = previous

    def _recompute_contexts(self):
        return contextlib.nullcontext(), _running_stats_frozen(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, in_channels, H, W) -> logits (B, num_classes)
        w_normal = self.method.edge_plan(self, "normal")
        w_reduce = self.method.edge_plan(self, "reduce")
        s0 = s1 = self.stem(x)
        recompute = self.recompute and torch.is_grad_enabled() and not getattr(self, "_recompute_off", False)
        for cell in self.cells:
            w = w_reduce if cell.reduction else w_normal
            if recompute:
                s0, s1 = s1, checkpoint(cell, s0, s1, w, use_reentrant=False,
                                        context_fn=self._recompute_contexts)
            else:
                s0, s1 = s1, cell(s0, s1, w)
        out = self.global_pooling(s1).flatten(1)
        return self.classifier(out)

    def genotype(self) -> Genotype:
        """Discretise the current alphas (REFERENCE section 2), or by the method's own rule."""
        own = self.method.derive_genotype(self)
        if own is not None:
            return own
        return derive(self.alphas_normal.detach().cpu(), self.alphas_reduce.detach().cpu(),
                      self.primitives if self.primitives is not None else self.edge_ops, multiplier=self.multiplier,
                      edge_scale=(self.method.edge_scale(self, "normal"), self.method.edge_scale(self, "reduce")))


@contextlib.contextmanager
def _running_stats_frozen(model: nn.Module) -> Iterator[None]:
    """BatchNorm layers normalise with batch statistics as usual, but their running statistics
    (and batch counters) come out unchanged: a momentum of 0 makes the update the identity. The
    layers still pass their buffers, so the recomputation saves the same tensors as the forward."""
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved = [(m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone()) for m in layers]
    for m in layers:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, count) in zip(layers, saved):
            m.momentum = momentum
            if count is not None:
                m.num_batches_tracked.copy_(count)


def check_primitives(primitives: Sequence[str], ops=None) -> None:
    """Refuses unknown, repeated or only-"none" candidate ops (a ConfigError naming the valid ones of
    ``ops``, the space's op registry; None: the DARTS ops)."""
    for name in primitives:
        (OPS if ops is None else ops).get(name)  # unknown op -> ConfigError listing the valid ones
    seen = set()
    for name in primitives:
        if name in seen:
            raise ConfigError(f"candidate op {name!r} is listed twice; list each op once")
        seen.add(name)
    if not any(name != "none" for name in primitives):
        raise ConfigError("the candidate ops need at least one op other than 'none'")
