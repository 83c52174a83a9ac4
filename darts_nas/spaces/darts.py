"""The DARTS search space (REFERENCE section 1): normal and reduction cells of ``--nodes``
intermediate nodes, every edge mixing the ``--ops`` candidates (:mod:`darts_nas.supernet`)."""

from __future__ import annotations

from typing import Sequence

from ..genotype import PRIMITIVES
from ..ops import OPS
from ..supernet import Supernet
from . import SEARCH_SPACES


@SEARCH_SPACES.register("darts")
def build_darts_supernet(C: int, num_classes: int, layers: int, steps: int, in_channels: int,
                         primitives: Sequence[str] = PRIMITIVES, method=None, edge_ops=None, **_: object) -> Supernet:
    # edge_ops: each edge's own candidate ops (a pruned stage of P-DARTS), overriding primitives
    return Supernet(C=C, num_classes=num_classes, layers=layers, steps=steps,
                    in_channels=in_channels, primitives=primitives, method=method, edge_ops=edge_ops)


build_darts_supernet.ops = OPS  # the space's op registry: --ops are checked against it
