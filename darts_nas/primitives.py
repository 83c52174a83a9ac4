"""The names of the built-in candidate ops, importable without torch.

The op factories live in :mod:`darts_nas.ops` (which needs torch); the command-line parsers list
these names in ``--help`` and take their defaults from here, so ``--help`` and argument errors
answer without importing torch. A test checks that :data:`BUILTIN_OPS` matches the registry.
"""

from __future__ import annotations

PRIMITIVES: tuple[str, ...] = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)
"""The DARTS candidate ops, in the order that fixes alpha's column order (REFERENCE section 1)."""

BUILTIN_OPS: tuple[str, ...] = (*PRIMITIVES, "sep_conv_7x7", "conv_7x1_1x7", "noise")
"""Every op :mod:`darts_nas.ops` registers, in registration order (``noise``: RobustDARTS's S4)."""


def _edges(*lists: str) -> tuple[tuple[str, ...], ...]:
    return tuple(tuple(names.split()) for names in lists)


_S1_NORMAL = _edges(
    "skip_connect dil_conv_3x3", "skip_connect dil_conv_5x5",  # node 2 <- 0, 1
    "skip_connect dil_conv_5x5", "skip_connect sep_conv_3x3", "skip_connect dil_conv_3x3",  # node 3 <- 0, 1, 2
    "max_pool_3x3 skip_connect", "skip_connect sep_conv_3x3", "skip_connect sep_conv_3x3",  # node 4 <- 0, 1, 2
    "skip_connect dil_conv_3x3",  # node 4 <- 3
    "skip_connect sep_conv_3x3", "max_pool_3x3 skip_connect", "skip_connect dil_conv_3x3",  # node 5 <- 0, 1, 2
    "dil_conv_3x3 dil_conv_5x5", "dil_conv_3x3 dil_conv_5x5")  # node 5 <- 3, 4
_S1_REDUCE = _edges(
    "max_pool_3x3 avg_pool_3x3", "max_pool_3x3 dil_conv_3x3",
    "max_pool_3x3 avg_pool_3x3", "max_pool_3x3 avg_pool_3x3", "skip_connect dil_conv_5x5",
    "max_pool_3x3 avg_pool_3x3", "max_pool_3x3 sep_conv_3x3", "skip_connect dil_conv_3x3", "skip_connect dil_conv_5x5",
    "max_pool_3x3 avg_pool_3x3", "max_pool_3x3 avg_pool_3x3", "skip_connect dil_conv_5x5",
    "skip_connect dil_conv_5x5", "skip_connect dil_conv_5x5")


def _same(names: str) -> dict[str, tuple[tuple[str, ...], ...]]:
    return {"normal": _edges(*[names] * 14), "reduce": _edges(*[names] * 14)}


ROBUST_DARTS_SPACES: dict[str, dict[str, tuple[tuple[str, ...], ...]]] = {
    "s1": {"normal": _S1_NORMAL, "reduce": _S1_REDUCE},
    "s2": _same("skip_connect sep_conv_3x3"),
    "s3": _same("none skip_connect sep_conv_3x3"),
    "s4": _same("noise sep_conv_3x3"),
}
"""RobustDARTS's spaces S1-S4 (Zela et al., ICLR 2020; their src/spaces.py, fact sheet section 2.1):
per cell type, the candidate ops of each of the 14 edges of a 4-node DARTS cell, in edge order
(node 2 <- inputs 0, 1; node 3 <- 0, 1, 2; ...) and, within an edge, in the order that fixes the
columns of its alphas."""
