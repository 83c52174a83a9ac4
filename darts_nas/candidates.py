"""The candidate architectures of a space as discrete choices: what sampling-based search draws,
mutates, walks and hands to Bayesian optimisation (``../shared/reference/methods.md`` 3.10-3.12).

A :class:`CandidateSpace` knows the valid genotypes of one search space and offers

* :meth:`~CandidateSpace.sample`: a genotype drawn uniformly from all valid ones, given a source
  of uniform integers ``below(n) -> 0..n-1`` (a seeded torch generator in the supernet methods, a
  ``random.Random`` in the strategies);
* :meth:`~CandidateSpace.mutate`: one change, uniformly among the changes of one op or one
  input (the aging-evolution mutation);
* :meth:`~CandidateSpace.neighbours`: every genotype one such change away (local search);
* :meth:`~CandidateSpace.choices` / :meth:`~CandidateSpace.from_choices`: the genotype as named
  categorical choices (Optuna's TPE);
* :meth:`~CandidateSpace.paths`: per cell type, the one op column each edge computes, or -1 for
  an edge the genotype does not use (:class:`darts_nas.methods.base.EdgePlan` ``active``).

The DARTS space: per cell type and intermediate node, two **distinct** inputs (an unordered pair,
uniform over the ``C(n, 2)`` pairs of the node's ``n`` possible inputs) and an op for each, uniform
over the candidate ops other than ``none`` (a DARTS genotype cannot hold ``none``; Li and
Talwalkar's CIFAR-10 space also draws ``zero``, which here is the unused edges). Pairs are stored
in input order, so every architecture has exactly one genotype. NAS-Bench-201: one op per edge,
uniform over the space's ops, ``none`` included (the benchmark's 5^6 = 15,625 cells).

This module imports no torch.
"""

from __future__ import annotations

from itertools import combinations
from typing import Any, Callable, Sequence

from .arch_string import EDGES, ArchGenotype
from .errors import ConfigError
from .genotype import Genotype

Below = Callable[[int], int]  # below(n): a uniform integer in 0..n-1


class CandidateSpace:
    cell_types: tuple[str, ...]

    def sample(self, below: Below) -> Any:
        raise NotImplementedError

    def mutate(self, genotype: Any, below: Below) -> Any:
        options = self.neighbours(genotype)
        return options[below(len(options))]

    def neighbours(self, genotype: Any) -> list[Any]:
        raise NotImplementedError

    def choices(self) -> list[tuple[str, tuple[Any, ...]]]:
        raise NotImplementedError

    def to_choices(self, genotype: Any) -> dict[str, Any]:
        raise NotImplementedError

    def from_choices(self, values: dict[str, Any]) -> Any:
        raise NotImplementedError

    def paths(self, genotype: Any) -> dict[str, list[int]]:
        raise NotImplementedError

    def size(self) -> int:
        raise NotImplementedError

    @staticmethod
    def key(genotype: Any) -> str:
        """A genotype's identity as text (its canonical print)."""
        return str(genotype)


class DartsCandidates(CandidateSpace):
    """DARTS genotypes of ``steps`` intermediate nodes over ``primitives`` (``none`` excluded)."""

    cell_types = ("normal", "reduce")

    def __init__(self, steps: int, primitives: Sequence[str], multiplier: int | None = None) -> None:
        self.steps = steps
        self.primitives = tuple(primitives)
        self.ops = tuple(p for p in self.primitives if p != "none")
        if not self.ops:
            raise ConfigError("the candidate ops need at least one op other than 'none'")
        self.multiplier = steps if multiplier is None else multiplier
        self.pairs = [list(combinations(range(2 + i), 2)) for i in range(steps)]

    def concat(self) -> list[int]:
        return list(range(2 + self.steps - self.multiplier, 2 + self.steps))

    def _build(self, cells: dict[str, list[tuple[str, int]]]) -> Genotype:
        return Genotype(normal=cells["normal"], normal_concat=self.concat(), reduce=cells["reduce"],
                        reduce_concat=self.concat())

    @staticmethod
    def _canonical(pairs: list[tuple[str, int]]) -> list[tuple[str, int]]:
        out = []
        for k in range(0, len(pairs), 2):
            out += sorted(pairs[k:k + 2], key=lambda p: p[1])
        return out

    def sample(self, below: Below) -> Genotype:
        cells = {}
        for cell in self.cell_types:
            pairs = []
            for i in range(self.steps):
                a, b = self.pairs[i][below(len(self.pairs[i]))]
                pairs += [(self.ops[below(len(self.ops))], a), (self.ops[below(len(self.ops))], b)]
            cells[cell] = pairs
        return self._build(cells)

    def neighbours(self, genotype: Genotype) -> list[Genotype]:
        """Every genotype that differs in one op, or in one input of one node (to an input the
        node does not already read), of one cell."""
        out = []
        for cell in self.cell_types:
            pairs = list(getattr(genotype, cell))
            for k, (op, j) in enumerate(pairs):
                other = pairs[k ^ 1][1]
                for new in self.ops:
                    if new != op:
                        out.append(self._replace(genotype, cell, k, (new, j)))
                for new_j in range(2 + k // 2):
                    if new_j not in (j, other):
                        out.append(self._replace(genotype, cell, k, (op, new_j)))
        return out

    def _replace(self, genotype: Genotype, cell: str, k: int, pair: tuple[str, int]) -> Genotype:
        cells = {c: list(getattr(genotype, c)) for c in self.cell_types}
        cells[cell][k] = pair
        cells[cell] = self._canonical(cells[cell])
        return self._build(cells)

    def choices(self) -> list[tuple[str, tuple[Any, ...]]]:
        out = []
        for cell in self.cell_types:
            for i in range(self.steps):
                out.append((f"{cell}_node{i}_inputs", tuple(f"{a},{b}" for a, b in self.pairs[i])))
                out += [(f"{cell}_node{i}_op{n}", self.ops) for n in (0, 1)]
        return out

    def to_choices(self, genotype: Genotype) -> dict[str, Any]:
        values = {}
        for cell in self.cell_types:
            pairs = getattr(genotype, cell)
            for i in range(self.steps):
                (op0, a), (op1, b) = pairs[2 * i], pairs[2 * i + 1]
                values.update({f"{cell}_node{i}_inputs": f"{a},{b}", f"{cell}_node{i}_op0": op0,
                               f"{cell}_node{i}_op1": op1})
        return values

    def from_choices(self, values: dict[str, Any]) -> Genotype:
        cells = {}
        for cell in self.cell_types:
            pairs = []
            for i in range(self.steps):
                a, b = (int(v) for v in values[f"{cell}_node{i}_inputs"].split(","))
                pairs += [(values[f"{cell}_node{i}_op0"], a), (values[f"{cell}_node{i}_op1"], b)]
            cells[cell] = pairs
        return self._build(cells)

    def paths(self, genotype: Genotype) -> dict[str, list[int]]:
        out = {}
        for cell in self.cell_types:
            active, offset = [-1] * sum(2 + i for i in range(self.steps)), 0
            for i in range(self.steps):
                for op, j in getattr(genotype, cell)[2 * i:2 * i + 2]:
                    active[offset + j] = self.primitives.index(op)
                offset += 2 + i
            out[cell] = active
        return out

    def size(self) -> int:
        per_cell = 1
        for i in range(self.steps):
            per_cell *= len(self.pairs[i]) * len(self.ops) ** 2
        return per_cell ** 2


class NB201Candidates(CandidateSpace):
    """NAS-Bench-201 cells over ``primitives`` (all of them, ``none`` included)."""

    cell_types = ("cell",)

    def __init__(self, primitives: Sequence[str]) -> None:
        self.primitives = tuple(primitives)

    def sample(self, below: Below) -> ArchGenotype:
        return ArchGenotype(tuple(self.primitives[below(len(self.primitives))] for _ in EDGES))

    def neighbours(self, genotype: ArchGenotype) -> list[ArchGenotype]:
        """Every cell that differs in one edge's op (NAS-Bench-201's REA mutation)."""
        out = []
        for e, op in enumerate(genotype.ops):
            for new in self.primitives:
                if new != op:
                    out.append(ArchGenotype(genotype.ops[:e] + (new,) + genotype.ops[e + 1:]))
        return out

    def choices(self) -> list[tuple[str, tuple[Any, ...]]]:
        return [(f"edge{i}<-{j}", self.primitives) for i, j in EDGES]

    def to_choices(self, genotype: ArchGenotype) -> dict[str, Any]:
        return {f"edge{i}<-{j}": op for (i, j), op in zip(EDGES, genotype.ops)}

    def from_choices(self, values: dict[str, Any]) -> ArchGenotype:
        return ArchGenotype(tuple(values[f"edge{i}<-{j}"] for i, j in EDGES))

    def paths(self, genotype: ArchGenotype) -> dict[str, list[int]]:
        return {"cell": [self.primitives.index(op) for op in genotype.ops]}

    def size(self) -> int:
        return len(self.primitives) ** len(EDGES)


def candidate_space(space: str, nodes: int, primitives: Sequence[str], multiplier: int | None = None
                    ) -> CandidateSpace:
    """The candidates of ``--space`` with its ``--nodes`` and ``--ops``."""
    if space == "nas-bench-201":
        return NB201Candidates(primitives)
    if space == "darts":
        return DartsCandidates(nodes, primitives, multiplier)
    raise ConfigError(f"sampling-based search knows the darts and nas-bench-201 spaces, not {space!r}")
