"""NAS-Bench-201 genotypes: the benchmark's arch strings (``../shared/reference/methods.md`` section 2.2).

A NAS-Bench-201 cell is a DAG of 4 nodes: node 0 is the cell input, node 3 the cell output, and
every pair ``j < i`` has an edge. Its six edges are written node by node as
``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|``: the edge order (1<-0), (2<-0), (2<-1), (3<-0), (3<-1),
(3<-2) is also the row order of the search space's alphas. :class:`ArchGenotype` is that string
as an immutable value; :func:`parse_arch` reads it strictly (no ``eval``; a wrong op, input
index or node count is one :class:`~darts_nas.errors.GenotypeError` naming the fix) and
``str()`` writes it back exactly.

This module imports no torch: the benchmark lookup and the settings use it too.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from .errors import GenotypeError

SPACE = "nas-bench-201"
# The benchmark's op set, in its column order (xautodl's NAS_BENCH_201 list).
NB201_PRIMITIVES: tuple[str, ...] = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
NODES = 4  # input node 0, intermediate nodes 1 and 2, output node 3
# (node, input) of every edge, in the arch string's (and the alphas' rows') order.
EDGES: tuple[tuple[int, int], ...] = tuple((i, j) for i in range(1, NODES) for j in range(i))
_FORMAT = "|op~0|+|op~0|op~1|+|op~0|op~1|op~2|"


def edge_name(k: int) -> str:
    """Display name of edge ``k``: ``1<-0``, ``2<-0``, ..."""
    i, j = EDGES[k]
    return f"{i}<-{j}"


@dataclass(frozen=True)
class ArchGenotype:
    """A NAS-Bench-201 cell: one op per edge, in :data:`EDGES` order.

    ``str()`` is the benchmark's arch string; ``to_dict()`` names the space. It offers what the
    search loop and its board ask of a genotype (``to_dict``, ``save``, ``warnings``, ``str``)."""

    ops: tuple[str, ...]

    def __post_init__(self) -> None:
        ops = tuple(self.ops) if isinstance(self.ops, (list, tuple)) else self.ops
        if not isinstance(ops, tuple) or len(ops) != len(EDGES):
            raise GenotypeError(f"a NAS-Bench-201 cell has {len(EDGES)} edges, got {ops!r}; write it as {_FORMAT}")
        for k, op in enumerate(ops):
            if op not in NB201_PRIMITIVES:
                raise GenotypeError(f"unknown NAS-Bench-201 op {op!r} on edge {edge_name(k)}; valid ops are: "
                                    f"{', '.join(NB201_PRIMITIVES)}")
        object.__setattr__(self, "ops", ops)

    # -- text ----------------------------------------------------------------------------------
    def __str__(self) -> str:
        nodes, k = [], 0
        for i in range(1, NODES):
            nodes.append("|" + "|".join(f"{self.ops[k + j]}~{j}" for j in range(i)) + "|")
            k += i
        return "+".join(nodes)

    def tostr(self) -> str:  # the official API's spelling
        return str(self)

    # -- JSON ------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"space": SPACE, "arch": str(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ArchGenotype:
        if not isinstance(data, Mapping) or not isinstance(data.get("arch"), str):
            raise GenotypeError(f"a NAS-Bench-201 genotype is a JSON object with an \"arch\" string such as {_FORMAT}")
        if data.get("space", SPACE) != SPACE:
            raise GenotypeError(f"the genotype belongs to the {data.get('space')!r} space, not {SPACE}")
        return parse_arch(data["arch"])

    def save(self, path: str | os.PathLike, extra: Mapping[str, Any] | None = None) -> Path:
        """Write ``{"space": "nas-bench-201", "arch": "..."}`` (and ``extra``) atomically."""
        path = Path(path)
        data = {**{str(k): v for k, v in (extra or {}).items()}, **self.to_dict()}
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> ArchGenotype:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise GenotypeError(f"{path}: cannot read a genotype from it ({exc})") from None
        try:
            return cls.from_dict(data)
        except GenotypeError as exc:
            raise GenotypeError(f"{path}: {exc}") from None

    # -- structure -------------------------------------------------------------------------------
    def connected(self) -> bool:
        """Whether the output node (3) is reachable from the input (0) through non-``none`` edges."""
        reached = {0}
        for (i, j), op in zip(EDGES, self.ops):
            if op != "none" and j in reached:
                reached.add(i)
        return NODES - 1 in reached

    def warnings(self) -> tuple[str, ...]:
        """Problems a person should see in the log (the search prints them after the genotype)."""
        if self.connected():
            return ()
        return (f"the derived cell {self} does not connect its input to its output (every path has a 'none' "
                f"edge): the network outputs a constant; the benchmark holds its (chance-level) accuracy",)

    # -- what the board shows ---------------------------------------------------------------------
    def kept(self, primitives: Sequence[str]) -> list[tuple[int, int]]:
        """(edge row, op column) of each edge's op, for the alpha heatmap."""
        return [(k, list(primitives).index(op)) for k, op in enumerate(self.ops) if op in primitives]

    def markdown(self) -> str:
        rows = ["| edge | op |", "|---|---|"] + [f"| `{edge_name(k)}` | `{op}` |" for k, op in enumerate(self.ops)]
        return "\n".join(rows) + "\n\n```\n" + str(self) + "\n```"

    def dots(self) -> dict[str, str]:
        """``{"cell": DOT source}``: the four nodes and the non-``none`` edges labelled with their op."""
        lines = ["digraph cell {", "  rankdir=LR;", '  node [shape=box, style="rounded,filled", fillcolor=lightblue];',
                 '  label="NAS-Bench-201 cell"; labelloc=t;']
        lines += [f'  n{i} [label="{"in" if i == 0 else "out" if i == NODES - 1 else i}"];' for i in range(NODES)]
        lines += [f'  n{j} -> n{i} [label="{op}"];' for (i, j), op in zip(EDGES, self.ops) if op != "none"]
        return {"cell": "\n".join(lines + ["}"]) + "\n"}


def parse_arch(text: str) -> ArchGenotype:
    """The benchmark's arch string -> :class:`ArchGenotype`, strictly: exactly three ``+``-separated
    nodes, node ``i`` listing ``op~j`` for ``j = 0 .. i-1`` in order, surrounding spaces ignored."""
    if not isinstance(text, str):
        raise GenotypeError(f"an arch string is text such as {_FORMAT}, got {type(text).__name__}")
    s = text.strip()
    nodes = s.split("+")
    if len(nodes) != NODES - 1:
        raise GenotypeError(f"arch string {s!r} has {len(nodes)} node(s) where NAS-Bench-201 cells have "
                            f"{NODES - 1}: write it as {_FORMAT}")
    ops: list[str] = []
    for i, node in enumerate(nodes, start=1):
        if len(node) < 2 or not (node.startswith("|") and node.endswith("|")):
            raise GenotypeError(f"node {i} of arch string {s!r} is {node!r}: each node is written between '|', "
                                f"as in {_FORMAT}")
        items = node[1:-1].split("|")
        if len(items) != i:
            raise GenotypeError(f"node {i} of arch string {s!r} has {len(items)} input(s) where it needs {i} "
                                f"(one per earlier node): write it as {_FORMAT}")
        for j, item in enumerate(items):
            op, sep, index = item.partition("~")
            if not sep or not index.isdigit() or not index.isascii():
                raise GenotypeError(f"{item!r} in node {i} of arch string {s!r} is not op~input: write it as "
                                    f"{_FORMAT}")
            if int(index) != j:
                raise GenotypeError(f"{item!r} in node {i} of arch string {s!r} has input {index} where {j} is "
                                    f"expected: node {i} lists inputs 0..{i - 1} in order")
            if op not in NB201_PRIMITIVES:
                raise GenotypeError(f"unknown NAS-Bench-201 op {op!r} in arch string {s!r}; valid ops are: "
                                    f"{', '.join(NB201_PRIMITIVES)}")
            ops.append(op)
    return ArchGenotype(tuple(ops))


def isomorphism_key(arch: "ArchGenotype | str") -> str:
    """The benchmark's key for a cell up to isomorphism: two arch strings with the same key compute
    the same function (given the ops' weights), so the benchmark counts them as one topology.

    Each node is written as the sorted ``+``-join of its incoming terms: ``none`` (or any op on a
    node that is exactly zero) is the zero term ``#``, ``skip_connect`` passes its input's text
    through, any other op wraps it as ``(input)op``. Zero terms are kept and node texts are not
    bracketed, the NAS-Bench-201 / NATS-Bench convention (``to_unique_str(consider_zero=True)``):
    with it the 15,625 cells fall into the 6,466 unique topologies that NATS-Bench's tests assert
    (``../shared/reference/benchmark-data.md`` B1), which ``tests/test_bench_formats.py`` checks
    on the real arch list. The key is conservative: equal keys mean equivalent cells, but a few
    equivalent cells get different keys (a zero term left in a node's text can keep two swapped
    parallel ops apart); merging those would no longer be the benchmark's count."""
    cell = arch if isinstance(arch, ArchGenotype) else parse_arch(arch)
    nodes = ["0"]
    for i in range(1, NODES):
        terms = []
        for (node, j), op in zip(EDGES, cell.ops):
            if node != i:
                continue
            if op == "none" or nodes[j] == "#":
                terms.append("#")
            elif op == "skip_connect":
                terms.append(nodes[j])
            else:
                terms.append(f"({nodes[j]})@{op}")
        nodes.append("+".join(sorted(terms)))
    return nodes[-1]


def derive_arch(alphas: Any, primitives: Sequence[str] = NB201_PRIMITIVES) -> ArchGenotype:
    """The benchmark's derivation: each edge keeps its strongest op, ``none`` included.
    ``alphas``: (6, num_ops) logits (or softmaxed weights; a nested list or a tensor). Ties go to
    the first column, as ``argmax`` does. ``primitives``: the ops of the columns, or one op list
    per edge (a pruned stage whose edges offer different ops)."""
    rows = alphas.tolist() if hasattr(alphas, "tolist") else alphas
    per_edge = len(primitives) > 0 and not isinstance(primitives[0], str)
    ops = list(primitives) if per_edge else [primitives] * len(EDGES)
    if len(rows) != len(EDGES) or len(ops) != len(EDGES) or any(len(r) != len(o) for r, o in zip(rows, ops)):
        raise GenotypeError(f"NAS-Bench-201 alphas have shape ({len(EDGES)}, {len(ops[0]) if ops else 0})")
    return ArchGenotype(tuple(o[max(range(len(r)), key=lambda c: (r[c], -c))] for r, o in zip(rows, ops)))


def resolve_arch(spec: str | os.PathLike) -> ArchGenotype:
    """A NAS-Bench-201 cell from ``--cell``: an arch string, a JSON file holding ``"arch"``, or a
    search run directory holding such a genotype.json."""
    spec = os.fspath(spec)
    if isinstance(spec, str) and spec.strip().startswith("|"):
        return parse_arch(spec)
    path = Path(spec).expanduser()
    if path.is_dir():
        path = path / "genotype.json"
        if not path.is_file():
            raise GenotypeError(f"directory {spec} has no genotype.json: give an arch string such as {_FORMAT}, "
                                f"a genotype file or a NAS-Bench-201 search run directory")
    if path.is_file():
        return ArchGenotype.load(path)
    raise GenotypeError(f"--cell {spec!r} is neither a NAS-Bench-201 arch string ({_FORMAT}) nor a genotype file "
                        f"or run directory")
