"""P-DARTS (Chen, Xie, Wu, Tian, ICCV 2019): progressive depth, op pruning, skip dropout, skip cap.

What it changes (``../shared/reference/methods.md`` section 3.7, following the authors' code,
``train_search.py`` and ``model_search.py``, where it and the paper differ):

* **Three stages of growing depth.** Each stage trains a fresh supernet (new weights, new alphas,
  new optimisers, a cosine schedule over the stage's ``--epochs``) of ``--layers`` plus
  ``--pdarts-add-layers`` cells (5 + 0, 6, 12 = 5, 11, 17). After a stage each edge keeps its
  ``--pdarts-keep`` ops of largest ``softmax(alpha)`` (8 -> 5 -> 3; the code's ``num_to_keep``),
  ``none`` included; after the last stage one op per edge, ``none`` always dropped.
* **Dropout on skip connections.** Every identity op (``skip_connect`` at stride 1) of the
  supernet is followed by dropout of rate ``p``: in the first ``--arch-warmup-epochs`` epochs of a
  stage (weights only) ``p = p0 (E - e - 1) / E``, afterwards ``p = p0 exp(-0.2 (e - warm-up))``,
  ``e`` the epoch within the stage (0-based), ``E`` the stage's epochs, ``p0`` the stage's
  ``--pdarts-skip-dropout`` rate (0.1, 0.4, 0.7 as in the README's command; the code's default is 0).
* **The architecture gradient** is clipped to ``--grad-clip`` like the weights' (the code does).
* **The final cell.** From the last stage's alphas: each edge keeps its strongest op other than
  ``none``, each node its two edges whose kept op is strongest; then, in the normal cell only,
  while more than ``--pdarts-max-skips`` (M = 2) of the kept ops are skip connections, the weakest
  such skip weight is set to zero and the ops and edges are chosen again (the code's
  ``delete_min_sk_prob``, ``keep_1_on``, ``keep_2_branches``).

Exact ties between weights, which the code breaks by numpy's argmin, are broken here as everywhere
in darts-nas: the earlier column, the lower input.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..ops import Identity
from ..supernet import MixedOp
from .base import METHODS, Method, Stage

DROPOUT_DECAY = 0.2  # the code's scale_factor: p = p0 exp(-0.2 (e - warm-up)) once the alphas train


def skip_dropout_rate(p0: float, epoch: int, epochs: int, warmup: int) -> float:
    """The skip connections' dropout rate in epoch ``epoch`` (0-based) of a stage of ``epochs``
    whose first ``warmup`` epochs train only the weights."""
    if epoch < warmup:
        return p0 * (epochs - epoch - 1) / epochs
    return p0 * math.exp(-DROPOUT_DECAY * (epoch - warmup))


class SkipDropout(nn.Module):
    """The identity followed by dropout at the method's current rate (off in eval mode)."""

    def __init__(self, method: PDarts) -> None:
        super().__init__()
        self._method = [method]  # a list: the method is not a submodule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self._method[0].skip_dropout
        return F.dropout(x, p, self.training) if p > 0 else x


def capped_cell(rows: Sequence[Sequence[float]], edges: Sequence[Sequence[str]], steps: int,
                max_skips: int | None = None) -> tuple[tuple[str, int], ...]:
    """P-DARTS's final derivation of one cell from its softmaxed alphas ``rows`` (each edge's
    weights in its own op order ``edges[e]``): per edge the strongest op other than ``none``, per
    node the two edges whose op is strongest (strongest first); with ``max_skips``, while more
    kept ops than that are ``skip_connect``, the weight of the weakest kept skip (the lowest edge
    on a tie) is set to 0 and ops and edges are chosen again."""
    probs = [[0.0 if op == "none" else float(w) for w, op in zip(row, ops)] for row, ops in zip(rows, edges)]

    def choose():
        best = []
        for row, ops in zip(probs, edges):
            cands = [k for k, op in enumerate(ops) if op != "none"]
            k_best = cands[0]
            for k in cands[1:]:
                if row[k] > row[k_best]:
                    k_best = k
            best.append(k_best)
        kept, start = [], 0
        for i in range(steps):
            ranked = sorted(range(start, start + 2 + i), key=lambda e: probs[e][best[e]], reverse=True)
            kept += [(e, e - start) for e in ranked[:2]]
            start += 2 + i
        return best, kept

    best, kept = choose()

    def skips():
        return sorted(e for e, _ in kept if edges[e][best[e]] == "skip_connect")

    while max_skips is not None and len(skips()) > max_skips:
        weakest = min(skips(), key=lambda e: probs[e][best[e]])
        if probs[weakest][best[weakest]] == 0:  # every skip left already has weight 0
            break
        probs[weakest][best[weakest]] = 0.0
        best, kept = choose()
    return tuple((edges[e][best[e]], j) for e, j in kept)


@METHODS.register("pdarts")
class PDarts(Method):
    name = "pdarts"
    title = "P-DARTS"
    supports_unrolled = False
    settings = ("pdarts_add_layers", "pdarts_keep", "pdarts_skip_dropout", "pdarts_max_skips")

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self.max_skips = 2 if config is None else config.pdarts_max_skips
        self.stage_rate = 0.0  # p0 of the current stage
        self.skip_dropout = 0.0  # the rate now

    @classmethod
    def check(cls, config: Any) -> None:
        super().check(config)
        add, keep, rates = config.pdarts_add_layers, config.pdarts_keep, config.pdarts_skip_dropout
        if config.space != "darts":
            raise ConfigError(f"--method pdarts searches the darts space (its stages add cells), not "
                              f"{config.space!r}: use --space darts")
        if not len(add) == len(keep) == len(rates):
            raise ConfigError(f"--pdarts-add-layers, --pdarts-keep and --pdarts-skip-dropout need one value per stage, "
                              f"got {len(add)}, {len(keep)} and {len(rates)} values")
        if any(a < 0 for a in add) or list(add) != sorted(add):
            raise ConfigError(f"--pdarts-add-layers must be 0 or more and never fall, got {','.join(map(str, add))}")
        ops = len(config.primitives)
        if keep[-1] != 1 or any(k < 1 for k in keep) or any(b >= a for a, b in zip((ops, *keep), keep)):
            raise ConfigError(f"--pdarts-keep must fall from below the {ops} ops of --ops to 1 after the last stage "
                              f"(the published 5,3,1), got {','.join(map(str, keep))}")
        if len(keep) > 1 and keep[-2] - (1 if "none" in config.primitives else 0) < 1:
            raise ConfigError(f"--pdarts-keep leaves the last stage {keep[-2]} ops per edge: it needs one besides none")
        if any(not 0 <= r < 1 for r in rates):
            raise ConfigError(f"--pdarts-skip-dropout rates must lie in [0, 1), got {','.join(map(str, rates))}")
        if config.pdarts_max_skips < 0:
            raise ConfigError(f"--pdarts-max-skips must be 0 or more, got {config.pdarts_max_skips}")
        if config.early_stop:
            raise ConfigError("--early-stop would stop P-DARTS inside a stage: drop it")

    # -- stages ----------------------------------------------------------------------------------------
    def stages(self) -> list[Stage]:
        c = self.config
        return [Stage(epochs=c.epochs, layers=c.layers + add, keep=keep if i + 1 < len(c.pdarts_keep) else None,
                      settings={"skip_dropout": rate})
                for i, (add, keep, rate) in enumerate(zip(c.pdarts_add_layers, c.pdarts_keep, c.pdarts_skip_dropout))]

    def start_stage(self, index: int, stage: Stage) -> None:
        self.stage_rate = float(stage.settings["skip_dropout"])

    def start_epoch(self, epoch: int, epochs: int) -> None:
        self.skip_dropout = skip_dropout_rate(self.stage_rate, epoch, epochs, self.config.arch_warmup_epochs)

    def final_genotype(self, model: nn.Module, genotype):
        cells = {}
        for t in model.cell_types():
            rows = F.softmax(model.arch_group(f"alphas_{t}").detach().float().cpu(), dim=-1).tolist()
            cells[t] = capped_cell(rows, model.edge_ops[t], model.steps, self.max_skips if t == "normal" else None)
        return dataclasses.replace(genotype, normal=cells["normal"], reduce=cells["reduce"])

    # -- the supernet ----------------------------------------------------------------------------------
    def make_edge(self, C: int, stride: int, primitives, ops=None) -> nn.Module:
        edge = MixedOp(C, stride, primitives, ops)
        for i, op in enumerate(edge.ops):
            if isinstance(op, Identity):
                edge.ops[i] = SkipDropout(self)
        return edge

    def make_architect(self, model, w_optimizer, autocast=None):
        architect = super().make_architect(model, w_optimizer, **({} if autocast is None else {"autocast": autocast}))
        architect.grad_clip = self.config.grad_clip
        return architect

    # -- state -----------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"stage_rate": self.stage_rate, "skip_dropout": self.skip_dropout}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stage_rate = float(state["stage_rate"])
        self.skip_dropout = float(state["skip_dropout"])

    def scalars(self) -> dict[str, float]:
        return {"skip_dropout": self.skip_dropout}
