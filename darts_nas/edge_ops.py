"""Per-edge candidate op lists: which ops each edge of each cell type may choose from.

The usual DARTS space offers every edge the same ops; RobustDARTS's spaces S1-S4 give each edge of
each cell type its own list (S1: two ops per edge, different for every edge), and P-DARTS and
DrNAS prune each edge to its own top-k ops between stages. An *edge-op table* says it all::

    {"normal": (("skip_connect", "dil_conv_3x3"), ("skip_connect", "dil_conv_5x5"), ...),  # 14 edges
     "reduce": (...)}

one tuple of op names per edge, edges in the supernet's order (node by node, inputs in order).
Within an edge the order fixes the columns of that edge's row of ``alphas_<cell type>``: column
``k`` of row ``e`` is the weight of ``table[cell_type][e][k]``.

Layout: every edge of a cell type has the same *number* of ops, so the alphas stay one dense
``(num_edges, num_ops)`` tensor per cell type. That keeps every method unchanged (softmax, GDAS's
Gumbel draws, DrNAS's Dirichlet, SDARTS's simplex projection, beta-DARTS's per-edge
regularisation all work row by row), and it is what the published uses need: RobustDARTS's spaces
have equal counts per edge (their code sizes the alphas by the first edge's list), and P-DARTS's and
DrNAS's pruning keep the same top-k on every edge. Only the listed ops are built and computed
(``none`` is never computed: it multiplies nothing). Unequal counts are refused with a
:class:`~darts_nas.errors.ConfigError`.

This module is torch-free (the command-line checks use it); tensors of alphas are read as nested
sequences.
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

from .errors import ConfigError

EdgeOpTable = dict[str, tuple[tuple[str, ...], ...]]


def uniform_edge_ops(primitives: Sequence[str], cell_types: Sequence[str], num_edges: int) -> EdgeOpTable:
    """The usual space: every edge of every cell type offers ``primitives``."""
    ops = tuple(primitives)
    return {t: (ops,) * num_edges for t in cell_types}


def is_per_edge(spec: Any) -> bool:
    """Whether ``spec`` is an edge-op table (a mapping of cell type to per-edge lists) rather than one
    shared op list."""
    return isinstance(spec, Mapping)


def edge_op_table(spec: Any, cell_types: Sequence[str], num_edges: int, registry: Any = None) -> EdgeOpTable:
    """``spec`` (one shared op list, or an edge-op table) as a checked edge-op table of tuples:
    each cell type present, ``num_edges`` lists each, every list of known (``registry``: the
    space's op registry, whose ``get`` raises a ConfigError for an unknown name), distinct ops with
    at least one other than ``none``, and one length per cell type."""
    if not is_per_edge(spec):
        spec = uniform_edge_ops(spec, cell_types, num_edges)
    missing = [t for t in cell_types if t not in spec]
    if missing or set(spec) - set(cell_types):
        raise ConfigError(f"the per-edge op lists are given for cell types {sorted(spec)}, the supernet has "
                          f"{list(cell_types)}: give one list of {num_edges} edge lists per cell type")
    table: EdgeOpTable = {}
    for t in cell_types:
        edges = spec[t]
        if isinstance(edges, str) or len(edges) != num_edges:
            raise ConfigError(f"the {t} cell has {num_edges} edges but {len(edges)} op lists are given: give one op "
                              f"list per edge, node by node")
        rows = []
        for e, ops in enumerate(edges):
            if isinstance(ops, str):
                raise ConfigError(f"{t} edge {e}: the op list is the string {ops!r}; give a list of op names")
            ops = tuple(ops)
            for name in ops:
                if registry is not None:
                    registry.get(name)  # unknown op -> ConfigError listing the valid ones
            if len(set(ops)) != len(ops):
                raise ConfigError(f"{t} edge {e} lists an op twice ({', '.join(ops)}); list each op once")
            if not any(name != "none" for name in ops):
                raise ConfigError(f"{t} edge {e} offers no op other than 'none' ({', '.join(ops) or 'nothing'}); "
                                  f"give it at least one real op")
            rows.append(ops)
        widths = sorted({len(r) for r in rows})
        if len(widths) > 1:
            raise ConfigError(f"the {t} cell's edges offer {' or '.join(map(str, widths))} ops: every edge of a cell "
                              f"type needs the same number of ops (the alphas are one (edges, ops) tensor); "
                              f"keep the same count on every edge")
        table[t] = tuple(rows)
    return table


def shared_ops(table: Mapping[str, Sequence[Sequence[str]]]) -> tuple[str, ...] | None:
    """The one op list of a table whose every edge offers the same ops (the usual DARTS space), else
    None."""
    rows = {tuple(ops) for edges in table.values() for ops in edges}
    return next(iter(rows)) if len(rows) == 1 else None


def op_columns(edges: Sequence[Sequence[str]]) -> tuple[str, ...]:
    """Every op offered by some edge of one cell type, in order of first appearance: the columns of a
    heatmap that shows every edge's weights under its ops' names."""
    seen: dict[str, None] = {}
    for ops in edges:
        for name in ops:
            seen.setdefault(name, None)
    return tuple(seen)


def spread(rows: Sequence[Sequence[float]], edges: Sequence[Sequence[str]],
           columns: Sequence[str] | None = None, fill: float = float("nan")) -> list[list[float]]:
    """Each edge's weights (``rows``: one per edge, in its own op order) placed under ``columns``
    (default :func:`op_columns`), ``fill`` where an edge does not offer the op."""
    columns = tuple(columns) if columns is not None else op_columns(edges)
    out = []
    for values, ops in zip(rows, edges):
        by_name = dict(zip(ops, values))
        out.append([float(by_name.get(name, fill)) for name in columns])
    return out


def top_k_columns(rows: Sequence[Sequence[float]], edges: Sequence[Sequence[str]], k: int,
                  drop: Sequence[str] = ()) -> list[list[int]]:
    """For each edge, the columns of its ``k`` largest weights (``rows``: the edge's mixing
    weights in its own op order), ops named in ``drop`` left out first (P-DARTS drops ``none`` in
    its last stage); returned in the edge's own column order, ready for :func:`keep_columns` and
    for slicing the alphas (``alphas.gather(1, torch.tensor(columns))``). Ties: the earlier column."""
    if k < 1:
        raise ConfigError(f"an edge must keep at least one op, got k={k}")
    kept = []
    for e, (values, ops) in enumerate(zip(rows, edges)):
        allowed = [c for c, name in enumerate(ops) if name not in drop]
        if len(allowed) < k:
            raise ConfigError(f"edge {e} offers {len(allowed)} ops after dropping {list(drop)}, fewer than the {k} "
                              f"to keep")
        ranked = sorted(allowed, key=lambda c: (-float(values[c]), c))
        kept.append(sorted(ranked[:k]))
    return kept


def keep_columns(edges: Sequence[Sequence[str]], columns: Sequence[Sequence[int]]) -> tuple[tuple[str, ...], ...]:
    """One cell type's edge lists restricted to the given columns of each edge (in that order)."""
    if len(columns) != len(edges):
        raise ConfigError(f"{len(columns)} column lists for {len(edges)} edges")
    return tuple(tuple(ops[c] for c in cols) for ops, cols in zip(edges, columns))


def table_to_json(table: Mapping[str, Sequence[Sequence[str]]]) -> dict[str, list[list[str]]]:
    """The table as JSON-ready lists (history.jsonl, checkpoints)."""
    return {t: [list(ops) for ops in edges] for t, edges in table.items()}


def table_from_json(data: Mapping[str, Sequence[Sequence[str]]]) -> EdgeOpTable:
    return {t: tuple(tuple(ops) for ops in edges) for t, edges in data.items()}


def describe(table: Mapping[str, Sequence[Sequence[str]]]) -> str:
    """One line for the log: the shared list, or the per-edge lists in compact form."""
    shared = shared_ops(table)
    if shared is not None:
        return ", ".join(shared)
    return json.dumps(table_to_json(table), separators=(",", ":"))


__all__ = ["EdgeOpTable", "describe", "edge_op_table", "is_per_edge", "keep_columns", "op_columns", "shared_ops",
           "spread", "table_from_json", "table_to_json", "top_k_columns", "uniform_edge_ops"]
