"""RobustDARTS's spaces S1-S4 (``--space s1`` ... ``s4``; Zela et al., ICLR 2020; fact sheet
``../shared/reference/methods.md`` section 2.1): the DARTS cell (4 nodes, 14 edges, normal and
reduction cells) with each edge of each cell type offering its own candidate ops
(:data:`darts_nas.primitives.ROBUST_DARTS_SPACES`), on :class:`darts_nas.supernet.Supernet`'s
per-edge op lists (:mod:`darts_nas.edge_ops`)."""

from __future__ import annotations

from typing import Any

from ..ops import OPS
from ..primitives import ROBUST_DARTS_SPACES
from ..supernet import Supernet
from . import SEARCH_SPACES


def _builder(name: str):
    def build(C: int, num_classes: int, layers: int, steps: int, in_channels: int, method=None,
              **_: Any) -> Supernet:
        # --ops is refused for these spaces by SearchConfig; their op lists are the published ones
        return Supernet(C=C, num_classes=num_classes, layers=layers, steps=steps, in_channels=in_channels,
                        method=method, edge_ops=ROBUST_DARTS_SPACES[name])

    build.__name__ = f"build_{name}_supernet"
    build.__doc__ = f"RobustDARTS's space {name.upper()}: the DARTS cell with its published per-edge op lists."
    build.ops = OPS  # the space's op registry
    return build


for _name in ROBUST_DARTS_SPACES:
    SEARCH_SPACES.register(_name)(_builder(_name))
