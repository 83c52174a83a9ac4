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

BUILTIN_OPS: tuple[str, ...] = (*PRIMITIVES, "sep_conv_7x7", "conv_7x1_1x7")
"""Every op :mod:`darts_nas.ops` registers, in registration order."""
