"""Black-box search strategies over a space's candidates (``--strategy``), as ask/tell objects.

A strategy proposes a genotype (:meth:`Strategy.ask`) and learns its score, higher is better
(:meth:`Strategy.tell`); who scores (a trained supernet, a benchmark's records) is the stage's
business (:mod:`darts_nas.strategies.stage`). A strategy is a pure function of its seed and the
scores it was told: the stage resumes a killed strategy by telling a new one the recorded scores
again (candidates.jsonl), which must ask for exactly the recorded genotypes.

* ``random`` (Li and Talwalkar 2019, methods.md 3.10): uniform samples; the stage re-scores the
  best ``--rescore-top`` of every group of 1,000 on the whole architecture half.
* ``evolution``: regularized (aging) evolution (Real et al. 2019), as NAS-Bench-201's REA
  baseline (methods.md 3.11): a random population of ``--population`` (10), then per cycle a
  sample of ``--sample-size`` (3) members drawn with replacement, the best as parent, a child
  with one op or one input changed, added as the youngest while the oldest dies.
* ``local``: greedy hill climbing (first improvement): from a uniform start, neighbours (one op
  or one input changed) are scored in a random order; the first better one becomes the current
  genotype; a genotype none of whose neighbours is better is a local optimum, and the climb
  restarts from a new uniform start.
* ``bo``: Bayesian optimisation with Optuna's TPE sampler (Bergstra et al. 2011; the TPE of the
  BOHB baseline of NAS-Bench-201, without Hyperband's multi-fidelity), one categorical
  choice per input pair and op (``pip install optuna`` or ``.[bo]``).

This package imports no torch.
"""

from __future__ import annotations

import random
from collections import deque
from typing import Any

from ..candidates import CandidateSpace
from ..errors import ConfigError
from ..registry import Registry

STRATEGIES: Registry = Registry("search strategy")

_SEED_STRIDE = 1_000_003


class Strategy:
    name = ""

    def __init__(self, space: CandidateSpace, seed: int, config: Any = None) -> None:
        self.space = space
        self.rng = random.Random(seed * _SEED_STRIDE + 17)
        self.best: tuple[Any, float] | None = None

    def below(self, n: int) -> int:
        return self.rng.randrange(n)

    def ask(self) -> Any:
        raise NotImplementedError

    def tell(self, genotype: Any, score: float) -> None:
        if self.best is None or score > self.best[1]:
            self.best = (genotype, score)
        self._tell(genotype, score)

    def _tell(self, genotype: Any, score: float) -> None:
        pass


@STRATEGIES.register("random")
class RandomSearch(Strategy):
    name = "random"

    def ask(self) -> Any:
        return self.space.sample(self.below)


@STRATEGIES.register("evolution")
class AgingEvolution(Strategy):
    name = "evolution"

    def __init__(self, space: CandidateSpace, seed: int, config: Any = None) -> None:
        super().__init__(space, seed, config)
        self.population_size = 10 if config is None else config.population
        self.sample_size = 3 if config is None else config.sample_size
        self.population: deque[tuple[Any, float]] = deque()  # oldest first
        self.born = 0  # children and initial members proposed so far

    def ask(self) -> Any:
        self.born += 1
        if self.born <= self.population_size:
            return self.space.sample(self.below)
        sample = [self.population[self.below(len(self.population))] for _ in range(self.sample_size)]
        parent = max(sample, key=lambda member: member[1])  # the first of equal scores
        return self.space.mutate(parent[0], self.below)

    def _tell(self, genotype: Any, score: float) -> None:
        self.population.append((genotype, score))
        if len(self.population) > self.population_size:
            self.population.popleft()  # the oldest dies, whatever its score


@STRATEGIES.register("local")
class LocalSearch(Strategy):
    name = "local"

    def __init__(self, space: CandidateSpace, seed: int, config: Any = None) -> None:
        super().__init__(space, seed, config)
        self.current: tuple[Any, float] | None = None
        self.queue: list[Any] = []
        self.restarts = 0
        self.starts: list[tuple[Any, float]] = []  # each climb's start and its score

    def ask(self) -> Any:
        if self.current is None or not self.queue:
            if self.current is not None:
                self.restarts += 1  # a local optimum: every neighbour scored, none better
            self.current = None
            return self.space.sample(self.below)
        return self.queue.pop()

    def _climb_from(self, genotype: Any, score: float) -> None:
        self.current = (genotype, score)
        self.queue = self.space.neighbours(genotype)
        self.rng.shuffle(self.queue)

    def _tell(self, genotype: Any, score: float) -> None:
        if self.current is None:
            self.starts.append((genotype, score))
            self._climb_from(genotype, score)
        elif score > self.current[1]:
            self._climb_from(genotype, score)


@STRATEGIES.register("bo")
class TreeParzenSearch(Strategy):
    name = "bo"

    def __init__(self, space: CandidateSpace, seed: int, config: Any = None) -> None:
        super().__init__(space, seed, config)
        optuna = import_optuna()
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
        self.trials: dict[str, Any] = {}
        self._pending: Any = None

    def ask(self) -> Any:
        trial = self.study.ask()
        values = {name: trial.suggest_categorical(name, list(options)) for name, options in self.space.choices()}
        self._pending = trial
        return self.space.from_choices(values)

    def _tell(self, genotype: Any, score: float) -> None:
        self.study.tell(self._pending, score)
        self._pending = None


def import_optuna():
    try:
        import optuna
    except ImportError:
        raise ConfigError("--strategy bo needs Optuna: pip install optuna (or pip install -e '.[bo]')") from None
    return optuna


def make_strategy(name: str, space: CandidateSpace, seed: int, config: Any = None) -> Strategy:
    return STRATEGIES.get(name)(space, seed, config)


__all__ = ["STRATEGIES", "Strategy", "make_strategy"]
