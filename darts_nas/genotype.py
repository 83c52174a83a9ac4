"""Genotypes: the discrete cells that a DARTS search produces (REFERENCE sections 1, 2 and 5).

A :class:`Genotype` is an immutable value: two cells (normal and reduction), each a flat tuple of
``(op, input)`` pairs, two pairs per intermediate node, plus the nodes whose outputs the cell
concatenates. Pair ``k`` of a cell belongs to node ``2 + k // 2``; nodes 0 and 1 are the two cell
inputs, so pair ``k`` may read any node ``j < 2 + k // 2``.

A *sparse* cell (FairDARTS's threshold derivation, ``../shared/reference/methods.md`` section 3.8)
lets a node keep any number of inputs, one or none included. It is written as FairDARTS writes it,
``(op, node, input)`` triples in node order, e.g. ``[('sep_conv_3x3', 2, 0), ('max_pool_3x3', 4, 0)]``;
the cell has nodes ``2 .. max(nodes and concat)``. A node with no input (node 3 above) is *dropped*:
the final network does not compute it and leaves it out of the concatenation, as the FairDARTS code
does ("isolated nodes are ignored"), and so is a node that only reads dropped nodes. A sparse cell
with exactly two inputs per node in order is the ordinary cell and is stored as one.

Genotypes are stored as JSON (``cells/*.json`` holds the published ones) and can be read back from
text in three other forms, all by a small hand-written parser (never ``eval``):

- the legacy repr of the original DARTS code,
  ``Genotype(normal=[('sep_conv_3x3', 0), ...], normal_concat=range(2, 6), reduce=[...], ...)``;
- the canonical form that ``str(genotype)`` prints (the same grammar, with lists);
- the compact form of REFERENCE.md,
  ``normal: sep_conv_3x3 1, sep_conv_3x3 0 | ... ; concat 2-5 / reduce: ... ; concat 2-5``.

:func:`derive` turns a searched ``alphas`` pair into a genotype exactly as the original code does.
"""

from __future__ import annotations

import json
import operator
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Sequence

import torch

from .errors import GenotypeError
from .ops import OPS
from .primitives import PRIMITIVES  # re-exported: darts_nas.genotype.PRIMITIVES

_FIELDS = ("normal", "normal_concat", "reduce", "reduce_concat")
_CELLS = ("normal", "reduce")

# Guards that keep hostile or garbled text from exhausting memory, the stack or int() (Python
# refuses to convert decimal strings longer than 4300 digits).
_MAX_DIGITS = 18
_MAX_DEPTH = 8
_MAX_RANGE = 10_000
# Intermediate nodes per cell: published cells have 4 or 5; far more is a typo or a hostile
# input, which would otherwise cost seconds to check and a network nobody can build.
MAX_NODES = 100
MAX_TEXT = 1 << 20  # characters of genotype text (a 100-node cell pair is about 10 KB)


# ---------------------------------------------------------------------------------------------
# The value type
# ---------------------------------------------------------------------------------------------


def _valid_ops() -> str:
    return ", ".join(name for name in OPS.names() if name != "none")


def _as_int(value: Any, where: str) -> int:
    """``value`` as an int; bools, floats and strings are refused rather than coerced."""
    if isinstance(value, bool):
        raise GenotypeError(f"{where} is a bool ({value!r}); write a node index as a plain integer")
    try:
        return operator.index(value)
    except TypeError:
        raise GenotypeError(
            f"{where} must be an integer node index, got {_describe(value)}; write it as e.g. 0 or 2"
        ) from None


def _describe(value: Any) -> str:
    text = repr(value)
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{type(value).__name__} {text}"


def _to_cell(value: Any, name: str) -> tuple[tuple[tuple[str, int], ...], tuple[int, ...] | None]:
    """Convert and check one cell: ``(pairs, None)`` for ``(op, input)`` pairs, two per node, or
    ``(pairs, nodes)`` for a sparse cell of ``(op, node, input)`` triples (an empty list is a
    sparse cell with no edge). Everything but the concat is checked here."""
    if not isinstance(value, (list, tuple)):
        raise GenotypeError(
            f"{name} must be a list of (op, input) pairs, got {_describe(value)}; "
            f"write it as e.g. [('sep_conv_3x3', 0), ('skip_connect', 1)]"
        )
    if not value or (isinstance(value[0], (list, tuple)) and len(value[0]) == 3):
        return _to_sparse_cell(value, name)
    if len(value) % 2:
        raise GenotypeError(
            f"{name} has {len(value)} (op, input) pairs, an odd number; "
            f"every intermediate node needs exactly two"
        )
    if len(value) // 2 > MAX_NODES:
        raise GenotypeError(
            f"{name} has {len(value) // 2} intermediate nodes, more than the {MAX_NODES} a cell may have; "
            f"check the genotype (published cells have 4 or 5)"
        )
    pairs = []
    for k, pair in enumerate(value):
        where = f"{name}[{k}]"
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise GenotypeError(
                f"{where} must be an (op, input) pair, got {_describe(pair)}; "
                f"write it as e.g. ('sep_conv_3x3', 0)"
            )
        op, j = pair
        _check_op(op, where)
        j = _as_int(j, f"the input of {where}")
        _check_input(f"{where} = ({op!r}, {j})", 2 + k // 2, j)
        pairs.append((str(op), j))
    return tuple(pairs), None


def _check_input(shown: str, node: int, j: int) -> None:
    """Node ``node`` (index >= 2) may read indices 0 .. node - 1."""
    if not 0 <= j < node:
        raise GenotypeError(
            f"{shown} feeds intermediate node {node - 2} (index {node}) from index {j}, but "
            f"that node can only take indices 0..{node - 1} ({_drawn_range(node - 1)}); use an input "
            f"index in that range"
        )


def _check_op(op: Any, where: str) -> None:
    if not isinstance(op, str):
        raise GenotypeError(
            f"{where} has op {_describe(op)}; the op must be a name such as 'sep_conv_3x3'"
        )
    if op == "none":
        raise GenotypeError(
            f"{where} uses op 'none', which cannot appear in a final cell; "
            f"drop the edge or use one of: {_valid_ops()}"
        )
    if op not in OPS:
        raise GenotypeError(f"{where} has unknown op {op!r}; valid ops are: {_valid_ops()}")


def _to_sparse_cell(value: Any, name: str) -> tuple[tuple[tuple[str, int], ...], tuple[int, ...]]:
    """FairDARTS's ``(op, node, input)`` triples, nodes in increasing order, each (node, input, op) once."""
    if len(value) > 8 * MAX_NODES:
        raise GenotypeError(f"{name} has {len(value)} edges, more than a cell of {MAX_NODES} nodes may have; "
                            f"check the genotype")
    pairs, nodes, seen = [], [], set()
    for k, triple in enumerate(value):
        where = f"{name}[{k}]"
        if not isinstance(triple, (list, tuple)) or len(triple) != 3:
            raise GenotypeError(
                f"{where} must be an (op, node, input) triple like {name}[0], got {_describe(triple)}; "
                f"write a sparse cell as e.g. [('sep_conv_3x3', 2, 0), ('skip_connect', 3, 1)]"
            )
        op, node, j = triple
        _check_op(op, where)
        node = _as_int(node, f"the node of {where}")
        j = _as_int(j, f"the input of {where}")
        if not 2 <= node <= MAX_NODES + 1:
            raise GenotypeError(
                f"{where} = ({op!r}, {node}, {j}) feeds index {node}, which is not an intermediate node; "
                f"intermediate nodes are indices 2..{MAX_NODES + 1} (0 and 1 are the cell inputs)"
            )
        _check_input(f"{where} = ({op!r}, {node}, {j})", node, j)
        if nodes and node < nodes[-1]:
            raise GenotypeError(
                f"{where} feeds node {node} after an edge into node {nodes[-1]}; list the edges node by node, "
                f"in increasing node order"
            )
        if (op, node, j) in seen:
            raise GenotypeError(f"{where} = ({op!r}, {node}, {j}) is listed twice; list each edge once")
        seen.add((op, node, j))
        pairs.append((str(op), j))
        nodes.append(node)
    return tuple(pairs), tuple(nodes)


def _drawn_range(last: int) -> str:
    """Indices 0..``last`` as the cell diagrams name the nodes (drawing.node_name): the inputs
    c_{k-2} and c_{k-1}, then the intermediate nodes from 0, so an error and a drawing agree."""
    names = ["0 is c_{k-2}", "1 is c_{k-1}"][:last + 1]
    if last >= 2:
        names.append(f"2..{last} are intermediate nodes 0..{last - 2}" if last > 2 else "2 is intermediate node 0")
    return ", ".join(names)


def _to_concat(value: Any, name: str, steps: int) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple, range)):
        raise GenotypeError(
            f"{name} must be a list of node indices, got {_describe(value)}; write it as e.g. [2, 3, 4, 5]"
        )
    if len(value) == 0:
        raise GenotypeError(
            f"{name} is empty; list the nodes whose outputs the cell concatenates, e.g. [2, 3, 4, 5]"
        )
    last = 1 + steps
    if len(value) > last + 1:  # more entries than nodes: some node is listed twice
        raise GenotypeError(f"{name} has {len(value)} entries but the cell only has nodes 0..{last}; "
                            f"list each node once")
    seen: dict[int, None] = {}  # ordered, with O(1) membership: the check stays linear
    for k, node in enumerate(value):
        node = _as_int(node, f"{name}[{k}]")
        if not 0 <= node <= last:
            raise GenotypeError(
                f"{name} contains index {node}, but the cell only has indices 0..{last} "
                f"({_drawn_range(last)}); use indices in that range"
            )
        if node in seen:
            raise GenotypeError(f"{name} lists node {node} twice; list each node once")
        seen[node] = None
    return tuple(seen)


@dataclass(frozen=True)
class Genotype:
    """A discrete DARTS architecture: a normal and a reduction cell.

    ``normal``/``reduce`` hold ``(op, input)`` pairs, two per intermediate node (pair ``k`` feeds
    node ``2 + k // 2``); ``normal_concat``/``reduce_concat`` are the nodes concatenated into the
    cell output. Lists are accepted and stored as tuples; the value is checked on construction
    and a :class:`GenotypeError` names the first problem.

    A sparse cell (see the module docstring) may be given as ``(op, node, input)`` triples; it is
    stored as its pairs with ``normal_nodes``/``reduce_nodes``, the node each pair feeds (None for
    an ordinary cell). :meth:`targets` gives the node of every pair in either form.
    """

    normal: tuple[tuple[str, int], ...]
    normal_concat: tuple[int, ...]
    reduce: tuple[tuple[str, int], ...]
    reduce_concat: tuple[int, ...]
    normal_nodes: tuple[int, ...] | None = None
    reduce_nodes: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        for cell in _CELLS:
            value, given_nodes = getattr(self, cell), getattr(self, f"{cell}_nodes")
            if given_nodes is not None:  # pairs and their nodes given apart: make them triples
                if not isinstance(given_nodes, (list, tuple)) or not isinstance(value, (list, tuple)) or \
                        len(given_nodes) != len(value):
                    raise GenotypeError(f"{cell}_nodes must list one node per pair of {cell}")
                value = [(pair[0], node, pair[1]) if isinstance(pair, (list, tuple)) and len(pair) == 2 else pair
                         for pair, node in zip(value, given_nodes)]
            pairs, nodes = _to_cell(value, cell)
            concat_name = f"{cell}_concat"
            if nodes is None:
                concat = _to_concat(getattr(self, concat_name), concat_name, len(pairs) // 2)
            else:
                concat = _to_concat(getattr(self, concat_name), concat_name, MAX_NODES)
                steps = max(nodes + concat + (1,)) - 1
                if steps < 1:
                    raise GenotypeError(f"{cell} has no intermediate node (no edge, and {concat_name} lists only "
                                        f"the inputs); give its edges or concatenate nodes >= 2")
                if nodes == tuple(2 + k // 2 for k in range(len(pairs))) and steps == len(pairs) // 2:
                    nodes = None  # two inputs per node, in order: the ordinary cell
            object.__setattr__(self, cell, pairs)
            object.__setattr__(self, concat_name, concat)
            object.__setattr__(self, f"{cell}_nodes", nodes)

    @property
    def normal_steps(self) -> int:
        """Number of intermediate nodes of the normal cell."""
        return self.steps("normal")

    @property
    def reduce_steps(self) -> int:
        """Number of intermediate nodes of the reduction cell."""
        return self.steps("reduce")

    def steps(self, cell: str) -> int:
        """Intermediate nodes of ``cell``: two pairs each, or for a sparse cell every index up to
        the largest node an edge feeds or the concat names."""
        nodes = getattr(self, f"{cell}_nodes")
        if nodes is None:
            return len(getattr(self, cell)) // 2
        return max(nodes + getattr(self, f"{cell}_concat") + (1,)) - 1

    def targets(self, cell: str) -> tuple[int, ...]:
        """The node (index >= 2) that each pair of ``cell`` feeds."""
        nodes = getattr(self, f"{cell}_nodes")
        return nodes if nodes is not None else tuple(2 + k // 2 for k in range(len(getattr(self, cell))))

    def is_sparse(self, cell: str | None = None) -> bool:
        """Whether ``cell`` (None: either cell) has a node with other than two inputs."""
        return any(getattr(self, f"{c}_nodes") is not None for c in ((cell,) if cell else _CELLS))

    def node_inputs(self, cell: str) -> list[list[tuple[str, int]]]:
        """The ``(op, input)`` pairs of each intermediate node of ``cell``, node 2 first."""
        inputs: list[list[tuple[str, int]]] = [[] for _ in range(self.steps(cell))]
        for (op, j), node in zip(getattr(self, cell), self.targets(cell)):
            inputs[node - 2].append((op, j))
        return inputs

    def live_nodes(self, cell: str) -> tuple[int, ...]:
        """The intermediate nodes of ``cell`` that the final network computes: those with an input
        from a cell input or from another such node. The others are dropped (FairDARTS)."""
        live = {0, 1}
        for node, pairs in enumerate(self.node_inputs(cell), start=2):
            if any(j in live for _, j in pairs):
                live.add(node)
        return tuple(sorted(live - {0, 1}))

    def live_concat(self, cell: str) -> tuple[int, ...]:
        """The concat of ``cell`` without its dropped nodes: what the final network concatenates."""
        live = set(self.live_nodes(cell)) | {0, 1}
        return tuple(n for n in getattr(self, f"{cell}_concat") if n in live)

    def warnings(self) -> tuple[str, ...]:
        """Problems of the cell a person should see in the search log: none for a DARTS cell
        (every node has two inputs and feeds the output); a sparse cell names its dropped nodes."""
        found = []
        for cell in _CELLS:
            if not self.is_sparse(cell):
                continue
            live = set(self.live_nodes(cell))
            dropped = [n for n in range(2, 2 + self.steps(cell)) if n not in live]
            if not self.live_concat(cell):
                found.append(f"the {cell} cell keeps no path from its inputs to its output: no network can be "
                             f"built from it (every kept weight is below the threshold: search longer or lower --fair-threshold)")
            elif dropped:
                found.append(f"the {cell} cell drops intermediate node(s) "
                             f"{', '.join(str(n - 2) for n in dropped)} (no input kept): the network leaves "
                             f"them out of its concatenation")
        return tuple(found)

    # -- dict / JSON -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, list]:
        """JSON-friendly dict: ``{"normal": [["sep_conv_3x3", 0], ...], "normal_concat": [...], ...}``."""
        return {
            "normal": self._entries("normal", list),
            "normal_concat": list(self.normal_concat),
            "reduce": self._entries("reduce", list),
            "reduce_concat": list(self.reduce_concat),
        }

    def _entries(self, cell: str, kind: type) -> list:
        """The cell's pairs ``[op, j]``, or for a sparse cell its triples ``[op, node, j]``, as ``kind``."""
        nodes = getattr(self, f"{cell}_nodes")
        if nodes is None:
            return [kind((op, j)) for op, j in getattr(self, cell)]
        return [kind((op, node, j)) for (op, j), node in zip(getattr(self, cell), nodes)]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Genotype:
        """Inverse of :meth:`to_dict`; keys other than the four genotype keys are ignored."""
        if not isinstance(data, Mapping):
            raise GenotypeError(
                f"a genotype must be a JSON object with keys {', '.join(_FIELDS)}, got {_describe(data)}"
            )
        for key in _FIELDS:
            if key not in data:
                raise GenotypeError(f"the genotype is missing the key {key!r}; it needs {', '.join(_FIELDS)}")
        return cls(**{key: data[key] for key in _FIELDS})

    def to_json(self) -> str:
        """The genotype as JSON text, one intermediate node (two pairs) per line."""
        return _dump_json(self.to_dict())

    @classmethod
    def from_json(cls, text: str | bytes) -> Genotype:
        """Inverse of :meth:`to_json`."""
        return cls.from_dict(_load_json(text, "the genotype text"))

    def save(self, path: str | os.PathLike, extra: Mapping[str, Any] | None = None) -> Path:
        """Write the genotype as JSON to ``path`` atomically; ``extra`` keys (e.g. ``"source"``)
        are written alongside the genotype keys. Returns the path."""
        path = Path(path)
        data: dict[str, Any] = {}
        for key, value in (extra or {}).items():
            if key in _FIELDS:
                raise GenotypeError(f"extra key {key!r} would overwrite the genotype; use another key name")
            data[str(key)] = value
        data.update(self.to_dict())
        try:
            text = _dump_json(data) + "\n"
        except (TypeError, ValueError) as err:
            raise GenotypeError(
                f"extra values for {path} are not JSON-serialisable ({err}); pass plain values"
            ) from None
        _write_atomic(path, text)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Genotype:
        """Read a genotype JSON file written by :meth:`save` (extra keys are ignored)."""
        path = Path(path)
        text = _read_text(path)
        data = _load_json(text, str(path))
        try:
            return cls.from_dict(data)
        except GenotypeError as err:
            raise GenotypeError(f"{path}: {err}") from None

    # -- text --------------------------------------------------------------------------------

    def __repr__(self) -> str:
        """The dataclass repr with tuples (an ordinary cell's pairs, a sparse cell's triples), which
        :func:`parse` reads back as legacy text."""
        return (f"Genotype(normal={tuple(self._entries('normal', tuple))!r}, normal_concat={self.normal_concat!r}, "
                f"reduce={tuple(self._entries('reduce', tuple))!r}, reduce_concat={self.reduce_concat!r})")

    def __str__(self) -> str:
        """Canonical text, ``Genotype(normal=[('sep_conv_3x3', 1), ...], normal_concat=[2, 3, 4, 5],
        reduce=[...], reduce_concat=[...])`` on one line; :func:`parse` reads it back to an equal
        genotype."""

        def cell(name: str) -> str:
            return "[" + ", ".join("(" + ", ".join([_quote(e[0]), *map(str, e[1:])]) + ")"
                                   for e in self._entries(name, tuple)) + "]"

        def concat(nodes: tuple[int, ...]) -> str:
            return "[" + ", ".join(str(n) for n in nodes) + "]"

        return (
            f"Genotype(normal={cell('normal')}, normal_concat={concat(self.normal_concat)}, "
            f"reduce={cell('reduce')}, reduce_concat={concat(self.reduce_concat)})"
        )

    def to_compact(self) -> str:
        """The compact REFERENCE.md form, ``normal: op j, op j | ... ; concat 2-5 / reduce: ...``."""

        def cell(name: str) -> str:  # a node with no input is '-'
            nodes = [", ".join(f"{op} {j}" for op, j in pairs) or "-" for pairs in self.node_inputs(name)]
            return " | ".join(nodes)

        def concat(nodes: tuple[int, ...]) -> str:
            if len(nodes) > 1 and list(nodes) == list(range(nodes[0], nodes[-1] + 1)):
                return f"{nodes[0]}-{nodes[-1]}"
            return ",".join(str(n) for n in nodes)

        return (
            f"normal: {cell('normal')} ; concat {concat(self.normal_concat)} / "
            f"reduce: {cell('reduce')} ; concat {concat(self.reduce_concat)}"
        )


def _quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _dump_json(data: Mapping[str, Any]) -> str:
    """JSON with one key per line and, for cells, one node (two pairs) per line."""
    lines = []
    for key, value in data.items():
        if key in _CELLS and value and len(value[0]) == 3:  # a sparse cell: one node's triples per line
            groups: dict[int, list[str]] = {}
            for entry in value:
                groups.setdefault(entry[1], []).append(json.dumps(entry))
            body = "[\n" + ",\n".join(f"    {', '.join(node)}" for node in groups.values()) + "\n  ]"
        elif key in _CELLS and not value:
            body = "[]"
        elif key in _CELLS:
            pairs = [json.dumps(pair) for pair in value]
            nodes = [", ".join(pairs[k:k + 2]) for k in range(0, len(pairs), 2)]
            body = "[\n" + ",\n".join(f"    {node}" for node in nodes) + "\n  ]"
        else:
            body = json.dumps(value, allow_nan=False)
        lines.append(f"  {json.dumps(str(key))}: {body}")
    return "{\n" + ",\n".join(lines) + "\n}"


def _load_json(text: Any, source: str) -> Any:
    if not isinstance(text, (str, bytes, bytearray)):
        raise GenotypeError(f"{source} must be JSON text, got {_describe(text)}")
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise GenotypeError(
            f"{source} is not valid JSON ({err.msg} at line {err.lineno}, column {err.colno}); "
            f"fix the JSON or write the genotype with Genotype.save"
        ) from None
    except (ValueError, RecursionError) as err:  # bad encoding, huge integers, deep nesting
        raise GenotypeError(f"{source} is not valid genotype JSON ({err}); fix the JSON") from None


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise GenotypeError(f"genotype file {path} does not exist; check the path") from None
    except IsADirectoryError:
        raise GenotypeError(
            f"{path} is a directory, not a genotype file; give the path of its genotype.json"
        ) from None
    except UnicodeDecodeError:
        raise GenotypeError(
            f"{path} is not a text file, so not a genotype; give a genotype JSON file"
        ) from None
    except OSError as err:
        raise GenotypeError(
            f"cannot read genotype file {path} ({err.strerror}); check the path and permissions"
        ) from None


def _write_atomic(path: Path, text: str) -> None:
    # A crash never leaves a half-written genotype (see checkpoint.atomic_write_bytes).
    from .checkpoint import atomic_write_bytes

    try:
        atomic_write_bytes(path, text.encode("utf-8"))
    except OSError as err:
        raise GenotypeError(
            f"cannot write genotype file {path} ({err.strerror}); free disk space, or "
            f"check that {path.parent} exists and is writable (or choose another --out)"
        ) from None


# ---------------------------------------------------------------------------------------------
# Parsing text (no eval): legacy/canonical repr, JSON, compact form
# ---------------------------------------------------------------------------------------------


class _Token(NamedTuple):
    kind: str  # "name", "int", "str", a punctuation character, "newline" or "end"
    value: Any
    pos: int


def _where(text: str, pos: int) -> str:
    line = text.count("\n", 0, pos) + 1
    column = pos - (text.rfind("\n", 0, pos) + 1) + 1
    return f"line {line}, column {column}"


def _show(text: str, token: _Token) -> str:
    if token.kind == "end":
        return "the end of the text"
    if token.kind == "newline":
        return "a line break"
    shown = text[token.pos:token.pos + 30].split("\n")[0]
    if token.kind == "junk":
        shown = token.value
    elif token.kind == "name":
        shown = token.value
    elif token.kind == "int":
        shown = str(token.value)
    elif token.kind == "str":
        shown = _quote(token.value)
    return repr(shown) if token.kind != "str" else shown


def _error(text: str, token: _Token, expected: str, hint: str) -> GenotypeError:
    return GenotypeError(
        f"cannot parse genotype text: expected {expected} but found {_show(text, token)} at "
        f"{_where(text, token.pos)}; {hint}"
    )


_LEGACY_HINT = (
    "write it as Genotype(normal=[('op', input), ...], normal_concat=[2, 3, 4, 5], "
    "reduce=[...], reduce_concat=[2, 3, 4, 5])"
)
_COMPACT_HINT = ("write it as 'normal: op j, op j | op j, op j ; concat 2-5 / reduce: ... ; concat 2-5' "
                 "(a node with no input is '-')")
_SPACE = " \t\r\n\f\v"
_DIGITS = "0123456789"
_NAME_START = re.compile(r"[A-Za-z_]")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NUMBER = re.compile(r"-?[0-9]+")


def _read_int(text: str, pos: int, hint: str) -> tuple[int, int]:
    match = _NUMBER.match(text, pos)
    assert match is not None
    digits = match.group().lstrip("-")
    if len(digits) > _MAX_DIGITS:
        raise GenotypeError(
            f"cannot parse genotype text: the number at {_where(text, pos)} has {len(digits)} digits; "
            f"node indices are small integers, {hint}"
        )
    return int(match.group()), match.end()


def _tokenize_legacy(text: str) -> list[_Token]:
    tokens = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in _SPACE:
            i += 1
        elif c == "#":  # a comment runs to the end of the line, as in a pasted genotypes.py
            end = text.find("\n", i)
            i = n if end < 0 else end
        elif c in "()[],=":
            tokens.append(_Token(c, c, i))
            i += 1
        elif _NAME_START.match(c):
            match = _NAME.match(text, i)
            tokens.append(_Token("name", match.group(), i))
            i = match.end()
        elif c in _DIGITS or (c == "-" and i + 1 < n and text[i + 1] in _DIGITS):
            value, end = _read_int(text, i, _LEGACY_HINT)
            tokens.append(_Token("int", value, i))
            i = end
        elif c in "'\"":
            value, end = _read_string(text, i)
            tokens.append(_Token("str", value, i))
            i = end
        else:
            # No rule accepts this character; stop here and let the parser name what it expected,
            # so that earlier mistakes (say, a function name) are reported first.
            tokens.append(_Token("junk", c, i))
            break
    tokens.append(_Token("end", None, n))
    return tokens


def _read_string(text: str, start: int) -> tuple[str, int]:
    quote = text[start]
    chars = []
    i = start + 1
    while i < len(text):
        c = text[i]
        if c == quote:
            return "".join(chars), i + 1
        if c == "\\":
            if i + 1 < len(text) and text[i + 1] in "\\'\"":
                chars.append(text[i + 1])
                i += 2
                continue
            raise GenotypeError(
                f"cannot parse genotype text: unsupported escape in the string at {_where(text, i)}; "
                f"op names need no escapes"
            )
        if c == "\n":
            break
        chars.append(c)
        i += 1
    raise GenotypeError(
        f"cannot parse genotype text: the string starting at {_where(text, start)} is not closed; "
        f"end it with {quote}"
    )


class _LegacyParser:
    """Recursive descent over ``Genotype(kw=value, ...)`` where a value is a list, tuple, quoted
    string, integer or ``range(...)`` call, and nothing else."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize_legacy(text)
        self.k = 0

    def peek(self) -> _Token:
        return self.tokens[self.k]

    def take(self) -> _Token:
        token = self.tokens[self.k]
        if token.kind != "end":
            self.k += 1
        return token

    def expect(self, kind: str, expected: str) -> _Token:
        token = self.take()
        if token.kind != kind:
            raise _error(self.text, token, expected, _LEGACY_HINT)
        return token

    def genotype(self) -> Genotype:
        token = self.take()
        if token.kind != "name" or token.value != "Genotype":
            raise _error(self.text, token, "'Genotype('", _LEGACY_HINT)
        self.expect("(", "'(' after Genotype")
        values: dict[str, Any] = {}
        while self.peek().kind != ")":
            key = self.expect("name", "a keyword (normal, normal_concat, reduce or reduce_concat) or ')'")
            if key.value not in _FIELDS:
                raise GenotypeError(
                    f"cannot parse genotype text: unknown keyword {key.value!r} at "
                    f"{_where(self.text, key.pos)}; "
                    f"the keywords are {', '.join(_FIELDS)}"
                )
            if key.value in values:
                raise GenotypeError(
                    f"cannot parse genotype text: {key.value!r} is given twice (again at "
                    f"{_where(self.text, key.pos)}); give each keyword once"
                )
            self.expect("=", f"'=' after {key.value}")
            values[key.value] = self.value(0)
            if self.peek().kind != ",":
                break
            self.take()
        self.expect(")", "',' or ')'")
        self.expect("end", "the end of the text after Genotype(...)")
        missing = [key for key in _FIELDS if key not in values]
        if missing:
            raise GenotypeError(
                f"the genotype text has no {', '.join(missing)}; give all of {', '.join(_FIELDS)}"
            )
        return Genotype(**values)

    def value(self, depth: int) -> Any:
        token = self.take()
        if depth > _MAX_DEPTH:
            raise GenotypeError(
                f"cannot parse genotype text: brackets nested too deeply at {_where(self.text, token.pos)}; "
                f"{_LEGACY_HINT}"
            )
        if token.kind in ("int", "str"):
            return token.value
        if token.kind == "[":
            return self.items("]", depth)
        if token.kind == "(":
            items, saw_comma = self.items(")", depth, report_comma=True)
            if len(items) == 1 and not saw_comma:
                return items[0]  # a parenthesised value, as in Python
            return tuple(items)
        if token.kind == "name" and token.value == "range":
            return self.range_call(token)
        if token.kind == "name":
            raise GenotypeError(
                f"cannot parse genotype text: {token.value!r} at {_where(self.text, token.pos)} "
                f"is not allowed; "
                f"only lists, tuples, quoted op names, integers and range(...) may appear"
            )
        raise _error(self.text, token, "a list, tuple, quoted string, integer or range(...)", _LEGACY_HINT)

    def items(self, close: str, depth: int, report_comma: bool = False):
        items = []
        saw_comma = False
        while self.peek().kind != close:
            items.append(self.value(depth + 1))
            if self.peek().kind != ",":
                break
            self.take()
            saw_comma = True
        self.expect(close, f"',' or {close!r}")
        return (items, saw_comma) if report_comma else items

    def range_call(self, name: _Token) -> list[int]:
        self.expect("(", "'(' after range")
        args = []
        while self.peek().kind != ")":
            args.append(self.expect("int", "an integer argument of range").value)
            if self.peek().kind != ",":
                break
            self.take()
        self.expect(")", "',' or ')' closing range(")
        where = _where(self.text, name.pos)
        if not 1 <= len(args) <= 3:
            raise GenotypeError(
                f"cannot parse genotype text: range at {where} takes 1 to 3 integers, got {len(args)}; "
                f"write e.g. range(2, 6)"
            )
        if len(args) == 3 and args[2] == 0:
            raise GenotypeError(
                f"cannot parse genotype text: range at {where} has step 0; use a non-zero step"
            )
        nodes = range(*args)
        if len(nodes) > _MAX_RANGE:
            raise GenotypeError(
                f"cannot parse genotype text: range at {where} has {len(nodes)} entries; "
                f"concat lists name a few nodes, e.g. range(2, 6)"
            )
        return list(nodes)


def _tokenize_compact(text: str) -> list[_Token]:
    tokens = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "\n":
            tokens.append(_Token("newline", c, i))
            i += 1
        elif c in _SPACE:
            i += 1
        elif c in ":,|;/-":
            tokens.append(_Token(c, c, i))
            i += 1
        elif _NAME_START.match(c):
            match = _NAME.match(text, i)
            tokens.append(_Token("name", match.group(), i))
            i = match.end()
        elif c in _DIGITS:
            value, end = _read_int(text, i, _COMPACT_HINT)
            tokens.append(_Token("int", value, i))
            i = end
        else:
            tokens.append(_Token("junk", c, i))  # as in _tokenize_legacy
            break
    tokens.append(_Token("end", None, n))
    return tokens


class _CompactParser:
    """``[label] normal: op j, op j | ... [; concat a-b | ; concat a,b,c]`` then ``/`` or a line
    break, then the reduce cell the same way (either cell may come first)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize_compact(text)
        self.k = 0

    def peek(self, ahead: int = 0) -> _Token:
        return self.tokens[min(self.k + ahead, len(self.tokens) - 1)]

    def take(self) -> _Token:
        token = self.tokens[self.k]
        if token.kind != "end":
            self.k += 1
        return token

    def expect(self, kind: str, expected: str) -> _Token:
        token = self.take()
        if token.kind != kind:
            raise _error(self.text, token, expected, _COMPACT_HINT)
        return token

    def skip_newlines(self) -> None:
        while self.peek().kind == "newline":
            self.take()

    def genotype(self) -> Genotype:
        values: dict[str, Any] = {}
        self.skip_newlines()
        self.section(values)
        token = self.peek()
        if token.kind == "/":
            self.take()
        elif token.kind != "newline":
            raise _error(self.text, token, "'/' or a line break between the two cells", _COMPACT_HINT)
        self.skip_newlines()
        self.section(values)
        self.skip_newlines()
        self.expect("end", "the end of the text after the two cells")
        return Genotype(**values)

    def section(self, values: dict[str, Any]) -> None:
        token = self.expect("name", "'normal:' or 'reduce:'")
        if not (token.value in _CELLS and self.peek().kind == ":"):
            token = self.expect("name", "'normal:' or 'reduce:' after the label")  # skip a label
        if token.value not in _CELLS:
            raise _error(self.text, token, "'normal:' or 'reduce:'", _COMPACT_HINT)
        cell = token.value
        if cell in values:
            raise GenotypeError(
                f"cannot parse genotype text: the {cell} cell is given twice (again at "
                f"{_where(self.text, token.pos)}); give one normal and one reduce cell"
            )
        self.expect(":", f"':' after {cell}")
        nodes: list[list[tuple[str, int]]] = []
        while True:
            if self.peek().kind == "-":  # a node with no input (a sparse cell)
                self.take()
                nodes.append([])
            else:
                node = [self.pair()]
                while self.peek().kind == ",":
                    self.take()
                    node.append(self.pair())
                nodes.append(node)
            if self.peek().kind != "|":
                break
            self.take()
        steps = len(nodes)
        if all(len(node) == 2 for node in nodes):
            pairs: list = [pair for node in nodes for pair in node]
        else:  # other than two inputs somewhere: FairDARTS's (op, node, input) triples
            pairs = [(op, i, j) for i, node in enumerate(nodes, start=2) for op, j in node]
        concat = list(range(2, 2 + steps))
        if self.peek().kind == ";":
            self.take()
            word = self.expect("name", "'concat'")
            if word.value != "concat":
                raise _error(self.text, word, "'concat'", _COMPACT_HINT)
            concat = self.concat()
        values[cell] = pairs
        values[f"{cell}_concat"] = concat

    def pair(self) -> tuple[str, int]:
        op = self.expect("name", "an op name such as sep_conv_3x3")
        j = self.expect("int", f"the input node of {op.value}")
        return op.value, j.value

    def concat(self) -> list[int]:
        first = self.expect("int", "a node index after concat")
        if self.peek().kind == "-":
            self.take()
            last = self.expect("int", "the last node of the concat range")
            if last.value < first.value or last.value - first.value >= _MAX_RANGE:
                raise GenotypeError(
                    f"cannot parse genotype text: concat {first.value}-{last.value} at "
                    f"{_where(self.text, first.pos)} is not a short increasing range; write e.g. 2-5"
                )
            return list(range(first.value, last.value + 1))
        nodes = [first.value]
        while self.peek().kind == ",":
            self.take()
            nodes.append(self.expect("int", "a node index after ','").value)
        return nodes


_COMPACT_START = re.compile(r"\s*(?:[A-Za-z_][A-Za-z0-9_]*\s+)?(?:normal|reduce)\s*:")


def parse(text: str) -> Genotype:
    """Parse genotype text without evaluating it.

    Accepts JSON (text starting with ``{``), the legacy repr of the original DARTS code
    (``Genotype(normal=[('sep_conv_3x3', 0), ...], normal_concat=range(2, 6), ...)``, single or
    double quotes, lists or tuples, ``range(a, b)``/``range(b)`` or a list for concat, keywords in
    any order), the canonical ``str(genotype)`` and the compact REFERENCE.md form
    (``normal: sep_conv_3x3 1, sep_conv_3x3 0 | ... ; concat 2-5 / reduce: ... ; concat 2-5``).
    Anything else raises :class:`GenotypeError` naming the offending token and its position.
    """
    if not isinstance(text, str):
        raise GenotypeError(f"genotype text must be a string, got {_describe(text)}")
    if len(text) > MAX_TEXT:
        raise GenotypeError(f"genotype text of {len(text):,} characters is too long to be a cell (at most "
                            f"{MAX_TEXT:,}); check that it is a genotype")
    stripped = text.strip()
    if stripped.startswith("{"):
        return Genotype.from_json(stripped)
    if stripped.startswith("Genotype"):
        return _LegacyParser(text).genotype()
    if _COMPACT_START.match(text):
        return _CompactParser(text).genotype()
    shown = stripped[:30] + ("..." if len(stripped) > 30 else "")
    raise GenotypeError(
        f"cannot parse genotype text {shown!r}: expected Genotype(...), a JSON object or the compact "
        f"form 'normal: ... / reduce: ...'; check the text"
    )


# ---------------------------------------------------------------------------------------------
# Discretisation (REFERENCE section 2)
# ---------------------------------------------------------------------------------------------


def _steps_from_edges(num_edges: int, name: str) -> int:
    # Node i (0-based) has 2 + i incoming edges, so steps nodes have sum_{i<steps} (2 + i) edges.
    steps, total = 0, 0
    while total < num_edges:
        total += 2 + steps
        steps += 1
    if total != num_edges or steps == 0:
        valid = ", ".join(str(sum(2 + i for i in range(s))) for s in range(1, 7))
        raise GenotypeError(
            f"{name} has {num_edges} edges, which matches no cell; a cell with n intermediate nodes "
            f"has 2 + 3 + ... + (n + 1) edges ({valid}, ...)"
        )
    return steps


def _check_primitives(primitives: Sequence[str]) -> tuple[str, ...]:
    if isinstance(primitives, str) or not isinstance(primitives, Sequence):
        raise GenotypeError(f"primitives must be a sequence of op names, got {_describe(primitives)}")
    names = tuple(primitives)
    if not all(isinstance(name, str) for name in names):
        raise GenotypeError(
            "primitives must all be op names (strings); pass e.g. darts_nas.genotype.PRIMITIVES"
        )
    if len(set(names)) != len(names):
        raise GenotypeError(f"primitives {list(names)} contain a duplicate; list each op once")
    if not any(name != "none" for name in names):
        raise GenotypeError(
            f"primitives {list(names)} contain no op other than 'none', so no cell can be derived; "
            f"add real ops"
        )
    return names


def _edge_weights(alphas: Any, num_ops: int, name: str, normalise: bool = True) -> list[list[float]]:
    """softmax(alphas) row by row (``normalise`` False: the checked alphas themselves), as Python
    floats: (num_edges, num_ops)."""
    try:
        t = alphas if isinstance(alphas, torch.Tensor) else torch.as_tensor(alphas)
    except (TypeError, ValueError, RuntimeError) as err:
        raise GenotypeError(
            f"{name} cannot be read as a tensor ({err}); pass a (num_edges, num_ops) tensor"
        ) from None
    t = t.detach().cpu()
    if t.is_complex():
        raise GenotypeError(f"{name} is complex; pass real-valued logits")
    if t.dim() != 2 or t.shape[1] != num_ops:
        raise GenotypeError(
            f"{name} has shape {tuple(t.shape)}, expected (num_edges, {num_ops}) with one column per "
            f"primitive; pass the cell's alphas, e.g. of shape (14, {num_ops})"
        )
    if t.dtype not in (torch.float32, torch.float64):
        t = t.to(torch.float32)
    if not bool(torch.isfinite(t).all()):
        raise GenotypeError(f"{name} contains NaN or inf; the search diverged, so lower the learning rates")
    return (torch.softmax(t, dim=-1) if normalise else t).tolist()


def _is_per_edge(primitives: Any) -> bool:
    """Whether ``primitives`` is one op list per edge rather than one list of op names."""
    return (isinstance(primitives, Sequence) and not isinstance(primitives, str) and len(primitives) > 0
            and all(isinstance(p, Sequence) and not isinstance(p, str) for p in primitives))


def _edge_primitives(primitives: Sequence[Sequence[str]], name: str) -> list[tuple[str, ...]]:
    """Per-edge op lists, each checked, all of one length."""
    rows = [_check_primitives(p) for p in primitives]
    if len({len(r) for r in rows}) != 1:
        raise GenotypeError(f"{name}: the per-edge op lists differ in length; every edge needs as many ops "
                            f"as the alphas have columns")
    return rows


def _cell_weights(alphas: Any, primitives: Any, name: str, normalise: bool = True
                  ) -> tuple[list[list[float]], list[tuple[str, ...]]]:
    """One cell's weights (softmax, or the checked logits) and each edge's op list."""
    if _is_per_edge(primitives):
        per_edge = _edge_primitives(primitives, name)
        weights = _edge_weights(alphas, len(per_edge[0]), name, normalise)
        if len(per_edge) != len(weights):
            raise GenotypeError(f"{name}: {len(per_edge)} per-edge op lists for {len(weights)} edges; give one per edge")
    else:
        names = _check_primitives(primitives)
        weights = _edge_weights(alphas, len(names), name, normalise)
        per_edge = [names] * len(weights)
    return weights, per_edge


def _strongest_two(weights: list[list[float]], per_edge: list[tuple[str, ...]], name: str,
                   threshold: float | None = None) -> tuple[list[tuple[str, int, int]], int]:
    """Each node's two edges with the largest weight other than ``none`` (ties: lower input index
    first), each with its argmax op other than ``none`` (ties: the earlier primitive), strongest
    edge first, as ``(op, node, input)``; with ``threshold``, only the edges whose op weight reaches
    it (FairDARTS). Returns the triples and the number of intermediate nodes."""
    steps = _steps_from_edges(len(weights), name)
    candidates = [[k for k in range(len(ops)) if ops[k] != "none"] for ops in per_edge]
    triples: list[tuple[str, int, int]] = []
    start = 0
    for i in range(steps):
        rows = weights[start:start + 2 + i]  # node 2 + i's edges, from inputs 0 .. 1 + i
        cands = candidates[start:start + 2 + i]
        ops = per_edge[start:start + 2 + i]
        start += 2 + i
        strength = [max(row[k] for k in c) for row, c in zip(rows, cands)]
        # Stable sort: among equally strong edges the lower input index comes first.
        ranked = sorted(range(len(rows)), key=strength.__getitem__, reverse=True)
        for j in ranked[:2]:
            best = cands[j][0]
            for k in cands[j][1:]:
                if rows[j][k] > rows[j][best]:  # strict: ties go to the earlier primitive
                    best = k
            if threshold is None or rows[j][best] >= threshold:
                triples.append((ops[j][best], 2 + i, j))
    return triples, steps


def derive_cell(
    alphas: Any, primitives: Any = PRIMITIVES, name: str = "alphas", edge_scale: Any = None
) -> tuple[tuple[tuple[str, int], ...], int]:
    """Discretise one cell's alphas (num_edges, num_ops) into ``(pairs, steps)``.

    See :func:`derive` for the rule. ``primitives`` is the op list of every edge, or one list per
    edge (column ``k`` of row ``e`` is op ``primitives[e][k]``); each edge's ``none`` (where it
    has one) is left out of its ranking and its argmax. ``edge_scale`` (num_edges,) multiplies each
    edge's weights before the edges are ranked (PC-DARTS's normalised betas); it cannot change an
    edge's op.
    """
    weights, per_edge = _cell_weights(alphas, primitives, name)
    if edge_scale is not None:
        scale = torch.as_tensor(edge_scale).detach().double().cpu().reshape(-1).tolist()
        if len(scale) != len(weights):
            raise GenotypeError(f"{name}: {len(scale)} edge weights for {len(weights)} edges")
        weights = [[w * f for w in row] for row, f in zip(weights, scale)]
    triples, steps = _strongest_two(weights, per_edge, name)
    return tuple((op, j) for op, _, j in triples), steps


def derive(
    alphas_normal: Any,
    alphas_reduce: Any,
    primitives: Any = PRIMITIVES,
    multiplier: int | None = None,
    edge_scale: tuple[Any, Any] | None = None,
) -> Genotype:
    """The genotype that the original DARTS code derives from the searched alphas.

    ``alphas_*`` are raw logits of shape (num_edges, len(primitives)) with edges ordered node by
    node (node 2 from inputs 0, 1; node 3 from 0, 1, 2; ...); the number of intermediate nodes is
    inferred from num_edges (14 -> 4, 20 -> 5). For each edge the weights are softmax(logits)
    over *all* primitives. For each node the incoming edges are ranked by their largest weight
    excluding ``none`` (ties: lower input index first), the top two are kept, strongest first,
    and each kept edge gets its argmax op excluding ``none`` (ties: the earlier primitive).
    The concat is the last ``multiplier`` nodes (default: all intermediate nodes).

    The quirk, kept on purpose to reproduce published results: ``none`` takes part in the
    softmax but never in the ranking, and the other weights are not renormalised. An edge whose
    ``none`` weight is large is therefore ranked by its small leftover weights and tends to lose,
    and an edge never wins just because its ``none`` is strong. Without ``none`` among the
    primitives this is a plain argmax.

    ``edge_scale`` (normal, reduce), each None or (num_edges,): factors of each edge's weights
    for the ranking (PC-DARTS multiplies each edge's op weights by its normalised beta).

    ``primitives`` may also be an edge-op table, ``{"normal": per-edge op lists, "reduce": ...}``
    (RobustDARTS's spaces, pruned P-DARTS/DrNAS stages; :mod:`darts_nas.edge_ops`): each edge is
    then read with its own ops, ``none`` excluded where the edge has it.
    """
    scale_normal, scale_reduce = edge_scale if edge_scale is not None else (None, None)
    if isinstance(primitives, Mapping):
        normal_ops, reduce_ops = primitives["normal"], primitives["reduce"]
    else:
        normal_ops = reduce_ops = primitives
    pairs_normal, steps_normal = derive_cell(alphas_normal, normal_ops, "alphas_normal", scale_normal)
    pairs_reduce, steps_reduce = derive_cell(alphas_reduce, reduce_ops, "alphas_reduce", scale_reduce)

    def concat(steps: int) -> list[int]:
        m = steps if multiplier is None else _as_int(multiplier, "multiplier")
        if not 1 <= m <= steps:
            raise GenotypeError(
                f"multiplier {m} does not fit a cell with {steps} intermediate nodes; use 1..{steps}"
            )
        return list(range(2 + steps - m, 2 + steps))

    return Genotype(
        normal=pairs_normal,
        normal_concat=concat(steps_normal),
        reduce=pairs_reduce,
        reduce_concat=concat(steps_reduce),
    )


def derive_threshold_cell(alphas: Any, primitives: Any = PRIMITIVES, threshold: float = 0.85,
                          name: str = "alphas") -> tuple[tuple[str, int, int], ...]:
    """FairDARTS's ``threshold_sparse`` rule on one cell's alphas (num_edges, num_ops), ``primitives``
    one op list or one per edge as for :func:`derive_cell`: ``(op, node, input)`` triples. See
    :func:`derive_threshold`."""
    logits, per_edge = _cell_weights(alphas, primitives, name, normalise=False)
    weights = torch.sigmoid(torch.tensor(logits, dtype=torch.float32)).tolist()  # as the code: float32
    return tuple(_strongest_two(weights, per_edge, name, threshold)[0])


def derive_threshold(alphas_normal: Any, alphas_reduce: Any, primitives: Any = PRIMITIVES,
                     threshold: float = 0.85, multiplier: int | None = None) -> Genotype:
    """The genotype that FairDARTS's code derives (``parse`` with ``threshold_sparse``, its default
    and the rule of its published cells; ``../shared/reference/methods.md`` section 3.8).

    The weights are ``sigmoid(alpha)``, each op on its own. For each node the incoming edges are
    ranked by their largest weight (excluding ``none``, which FairDARTS's op list does not have;
    ties: lower input index first) and the top two are candidates; each keeps its argmax op (ties:
    the earlier primitive) only if that op's weight is at least ``threshold``. A node may so keep
    one input or none (a sparse cell, see the module docstring). The concat is the last
    ``multiplier`` nodes as in DARTS (FairDARTS writes ``range(2, 6)``); the network leaves the
    nodes without input out of it. ``threshold`` 0 is FairDARTS's ``--parse_method darts``: two
    inputs per node, ranked by the sigmoid weights.
    """
    if isinstance(primitives, Mapping):  # an edge-op table, as for derive
        normal_ops, reduce_ops = primitives["normal"], primitives["reduce"]
    else:
        normal_ops = reduce_ops = primitives
    normal = derive_threshold_cell(alphas_normal, normal_ops, threshold, "alphas_normal")
    reduce = derive_threshold_cell(alphas_reduce, reduce_ops, threshold, "alphas_reduce")
    steps = {cell: _steps_from_edges(len(torch.as_tensor(a)), f"alphas_{cell}")
             for cell, a in (("normal", alphas_normal), ("reduce", alphas_reduce))}

    def concat(cell: str) -> list[int]:
        m = steps[cell] if multiplier is None else _as_int(multiplier, "multiplier")
        if not 1 <= m <= steps[cell]:
            raise GenotypeError(f"multiplier {m} does not fit a cell with {steps[cell]} intermediate nodes; "
                                f"use 1..{steps[cell]}")
        return list(range(2 + steps[cell] - m, 2 + steps[cell]))

    return Genotype(normal=normal, normal_concat=concat("normal"), reduce=reduce, reduce_concat=concat("reduce"))


# ---------------------------------------------------------------------------------------------
# The cells library and command-line specs
# ---------------------------------------------------------------------------------------------


def cells_dir() -> Path:
    """The directory of published genotypes: the ``darts_nas.cells`` package when installed,
    else the repository's top-level ``cells/``."""
    try:
        from importlib.resources import files

        found = Path(str(files("darts_nas.cells")))
        if found.is_dir():
            return found
    except (ImportError, TypeError, ValueError, OSError):
        pass
    return Path(__file__).resolve().parent.parent / "cells"


def list_cells() -> list[str]:
    """Names of the published genotypes (lowercase, sorted), e.g. ``['amoebanet', 'darts_v1', ...]``."""
    directory = cells_dir()
    if not directory.is_dir():
        return []
    return sorted(p.stem.lower() for p in directory.glob("*.json") if p.is_file())


def cell_key(name: str) -> str:
    """A cell name as cells/ spells it: ``DARTS-V2``, ``DARTS_V2`` and ``darts_v2`` are one cell."""
    return name.strip().lower().replace("-", "_")


def load_cell(name: str) -> Genotype:
    """Load a published genotype by name, in any case and with ``-`` or ``_``, e.g. ``load_cell("DARTS-V2")``."""
    names = list_cells()
    key = cell_key(name) if isinstance(name, str) else None
    if key not in names:
        raise GenotypeError(f"unknown cell {name!r}; valid cells are: {', '.join(names)}")
    return Genotype.load(cells_dir() / f"{key}.json")


def published_results(name: str) -> list[dict[str, Any]]:
    """The published results a cell of :func:`list_cells` carries (its file's ``published``: one
    entry per dataset with test error, params, search cost and source); [] for any other spec."""
    key = cell_key(name) if isinstance(name, str) else None
    if key not in list_cells():
        return []
    try:
        data = json.loads((cells_dir() / f"{key}.json").read_text())
    except (OSError, ValueError):
        return []
    found = data.get("published") if isinstance(data, dict) else None
    return [entry for entry in found if isinstance(entry, dict)] if isinstance(found, list) else []


def resolve(spec: str | os.PathLike) -> Genotype:
    """A genotype from a command-line spec, tried in this order: a file (JSON, or genotype text in
    any form :func:`parse` reads), a directory holding ``genotype.json``, a cell name from
    :func:`list_cells` (any case), genotype text containing ``normal``."""
    if isinstance(spec, os.PathLike):
        spec = os.fspath(spec)
    if not isinstance(spec, str):
        raise GenotypeError(
            f"a genotype spec must be a path, a cell name or genotype text, got {_describe(spec)}"
        )
    path = Path(os.path.expanduser(spec))  # Path.expanduser raises for an unknown ~user
    try:
        is_file, is_dir = path.is_file(), path.is_dir()
    except (OSError, ValueError):  # text too long for a file name, or with a NUL in it
        is_file = is_dir = False
    if is_file:
        text = _read_text(path)
        if text.lstrip().startswith("{"):
            return Genotype.load(path)
        try:
            return parse(text)
        except GenotypeError as err:
            raise GenotypeError(f"{path}: {err}") from None
    if is_dir:
        target = path / "genotype.json"
        if not target.is_file():
            raise GenotypeError(
                f"directory {path} has no genotype.json; give the genotype file itself or a run directory"
            )
        return Genotype.load(target)
    names = list_cells()
    if cell_key(spec) in names:
        return load_cell(spec)
    if "normal" in spec:
        return parse(spec)
    raise GenotypeError(
        f"genotype {spec!r} is neither a file, a directory nor a known cell; "
        f"valid cells are: {', '.join(names)}"
    )


__all__ = [
    "PRIMITIVES",
    "Genotype",
    "cells_dir",
    "derive",
    "derive_cell",
    "derive_threshold",
    "derive_threshold_cell",
    "list_cells",
    "load_cell",
    "parse",
    "published_results",
    "resolve",
]
