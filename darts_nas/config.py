"""Settings of a search, as one frozen dataclass with a JSON round trip.

The defaults are the DARTS paper's CIFAR-10 search protocol (REFERENCE section 3).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any

from .arch_string import NB201_PRIMITIVES, SPACE
from .chain_genotype import CHAIN_PRIMITIVES
from .chain_genotype import SPACE as CHAIN_SPACE
from .errors import ConfigError
from .primitives import PRIMITIVES, ROBUST_DARTS_SPACES  # not .genotype: --help must not import torch


class _Settings:
    """JSON round trip shared by the settings dataclasses (tuples are stored as lists)."""

    KIND = "settings"

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown {cls.KIND} settings {unknown}; valid settings are {sorted(known)}")
        return cls(**d)

    @classmethod
    def from_json(cls, text: str):
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{cls.KIND} settings are not valid JSON ({exc})") from None
        if not isinstance(d, dict):
            raise ConfigError(f"{cls.KIND} settings must be a JSON object")
        return cls.from_dict(d)

    def replace(self, **changes: Any):
        return dataclasses.replace(self, **changes)


def _check_finite(settings) -> None:
    """NaN or infinity in a numeric setting: refused, before it reaches an optimizer (and
    config.json, where NaN != NaN would make the run impossible to resume). So are a count that
    is not a whole number and values no run can use (:func:`_check_usable`)."""
    for field in dataclasses.fields(settings):
        value = getattr(settings, field.name)
        values = value if isinstance(value, tuple) else (value,)
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            raise ConfigError(f"--{field.name.replace('_', '-')} must be a finite number, got {value}")
    _check_usable(settings)


SEED_RANGE = (0, 2**32 - 1)  # NumPy's seed range; torch's generators overflow above 2**63


def _check_usable(settings) -> None:
    """Settings that would be accepted only to fail later (a config.json edited by hand, read by
    ``--resume``, or an absurd flag): a whole-number setting that is not an integer, a seed out of
    range, SGD momentum of 1 or more (every step would grow the update)."""
    for field in dataclasses.fields(settings):
        value = getattr(settings, field.name)
        if field.type in ("int", "int | None") and value is not None and (
                isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError(f"--{field.name.replace('_', '-')} must be a whole number, got {value!r}")
    low, high = SEED_RANGE
    if not low <= settings.seed <= high:
        raise ConfigError(f"--seed must be a whole number from {low} to {high}, got {settings.seed}")
    momentum = getattr(settings, "momentum", 0.0)
    if isinstance(momentum, (int, float)) and not momentum < 1:
        raise ConfigError(f"--momentum must be below 1 (0.9 in the paper; at 1 or more SGD diverges), got {momentum}")


def _check_checkpoint_intervals(settings) -> None:
    if settings.checkpoint_every is not None and settings.checkpoint_every < 1:
        raise ConfigError(f"--checkpoint-every must be at least 1 step, got {settings.checkpoint_every}")
    minutes = settings.checkpoint_minutes
    if minutes is not None and not (minutes > 0 and minutes != float("inf")):
        raise ConfigError(f"--checkpoint-minutes must be a positive number of minutes, got {minutes}")


# DARTS-ADA's weight decay may reach its maximum up to floating-point rounding (3e-4 x 10 x 10 > 0.03 in floats).
ADA_SLACK = 1 + 1e-9

# What a search space's settings are when not given: --layers (cells), --nodes, --ops.
SPACE_DEFAULTS: dict[str, dict[str, Any]] = {
    "darts": {"layers": 8, "nodes": 4, "primitives": PRIMITIVES},
    # the benchmark's supernet: 3 stages of 5 cells, 3 nodes after the input, its 5 ops
    SPACE: {"layers": 15, "nodes": 3, "primitives": NB201_PRIMITIVES},
    # ProxylessNAS's chain (FairDARTS's ImageNet space): --layers caps each stage's searched layers
    CHAIN_SPACE: {"layers": 4, "nodes": 1, "primitives": CHAIN_PRIMITIVES},
    # RobustDARTS's S1-S4: the DARTS cell, each edge its own published ops; "primitives" is every op
    # the space offers somewhere (for the record: the supernet takes the per-edge lists)
    **{name: {"layers": 8, "nodes": 4, "primitives": tuple(dict.fromkeys(
        op for edges in table.values() for ops in edges for op in ops))}
       for name, table in ROBUST_DARTS_SPACES.items()},
}


def check_robust_darts_settings(space: str, nodes: int, primitives: tuple[str, ...]) -> None:
    """RobustDARTS's spaces fix the cell's 14 edges and each edge's ops (one line naming the fix)."""
    if nodes != 4:
        raise ConfigError(f"--space {space} lists ops for the 14 edges of a 4-node DARTS cell, not --nodes {nodes}: "
                          f"drop --nodes")
    if tuple(primitives) != SPACE_DEFAULTS[space]["primitives"]:
        raise ConfigError(f"--space {space} gives each edge its published ops (RobustDARTS); --ops cannot change "
                          f"them: drop --ops (or use --space darts for one op list on every edge)")


def check_nb201_settings(layers: int, nodes: int, primitives: tuple[str, ...]) -> None:
    """The NAS-Bench-201 space's settings, checked before anything runs (one line naming the fix)."""
    if nodes != 3:
        raise ConfigError(f"the NAS-Bench-201 cell has 3 nodes after its input, not --nodes {nodes}: drop --nodes")
    if layers % 3:
        raise ConfigError(f"--layers {layers} is not a multiple of 3: the NAS-Bench-201 space has 3 stages of N "
                          f"cells (the benchmark's: --layers 15, N=5)")
    unknown = [op for op in primitives if op not in NB201_PRIMITIVES]
    if unknown:
        raise ConfigError(f"--ops {','.join(unknown)}: not NAS-Bench-201 ops; valid ops are: "
                          f"{', '.join(NB201_PRIMITIVES)}")
    if len(set(primitives)) != len(primitives) or not set(primitives) - {"none"}:
        raise ConfigError(f"--ops {','.join(primitives)}: list each op once, and at least one op other than none")


# The methods whose every seam works on a chain of mixed layers whose widths change (the
# proxyless space), and why the others do not.
CHAIN_METHODS = ("darts", "fair-darts", "gdas", "beta-darts", "sdarts-rs", "sdarts-adv", "drnas")
CHAIN_REFUSED = {
    "pc-darts": "its partial channels and edge betas need edges of equal input and output width and nodes "
                "with several inputs",
    "darts-minus": "its auxiliary skip needs edges of equal input and output shape on every layer",
    "pdarts": "its stages add cells and drop skip connections, which a chain does not have",
    "random-ws": "sampling-based search knows the darts and nas-bench-201 spaces only",
    "spos": "sampling-based search knows the darts and nas-bench-201 spaces only",
}


def check_chain_settings(c: Any) -> None:
    """The proxyless space's settings, checked before anything runs (one line naming the fix)."""
    if c.method not in CHAIN_METHODS:
        why = CHAIN_REFUSED.get(c.method, "it has not been made to work there")
        raise ConfigError(f"--method {c.method} cannot search --space {CHAIN_SPACE}: {why}; use one of "
                          f"{', '.join(CHAIN_METHODS)}")
    if c.nodes != 1:
        raise ConfigError(f"--space {CHAIN_SPACE} is a chain of layers without nodes, not --nodes {c.nodes}: "
                          f"drop --nodes")
    unknown = [op for op in c.primitives if op not in CHAIN_PRIMITIVES]
    if unknown:
        raise ConfigError(f"--ops {','.join(unknown)}: not blocks of --space {CHAIN_SPACE}; valid blocks are: "
                          f"{', '.join(CHAIN_PRIMITIVES)}")
    if len(set(c.primitives)) != len(c.primitives) or not set(c.primitives) - {"none"}:
        raise ConfigError(f"--ops {','.join(c.primitives)}: list each block once, and at least one MBConv block")
    if c.recompute or c.drnas_progressive or wants_strategy(c):
        raise ConfigError(f"--recompute, --drnas-progressive and --strategy are for the cell spaces, not --space "
                          f"{CHAIN_SPACE}: drop them")


@dataclass(frozen=True)
class SearchConfig(_Settings):
    KIND = "search"
    # data
    dataset: str = "cifar10"
    data: str = "data"
    download: bool = False
    image_size: int | None = None
    train_portion: float = 0.5
    workers: int = 0
    # search space; None: the space's own (SPACE_DEFAULTS)
    space: str = "darts"
    init_channels: int = 16
    layers: int | None = None
    nodes: int | None = None
    primitives: tuple[str, ...] | None = None
    # optimisation
    method: str = "darts"  # darts_nas.methods.METHODS
    preset: str | None = None  # the published protocol the settings started from (presets/)
    epochs: int = 50
    batch_size: int = 64
    learning_rate: float = 0.025
    learning_rate_min: float = 0.001
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    arch_learning_rate: float = 3e-4
    arch_weight_decay: float = 1e-3
    arch_betas: tuple[float, float] = (0.5, 0.999)
    unrolled: bool = False
    arch_warmup_epochs: int = 0  # epochs of weight training before the first architecture step
    # method settings (read by the method that uses them; see darts_nas/methods/)
    partial_channels: int = 4  # PC-DARTS: 1/K of an edge's channels go through its mixed op
    edge_normalization: bool = True  # PC-DARTS: betas weigh each node's incoming edges
    tau_max: float = 10.0  # GDAS: Gumbel-softmax temperature at the first epoch ...
    tau_min: float = 0.1  # ... falling linearly to this at the last
    skip_beta: float = 1.0  # DARTS-: the auxiliary skip's coefficient at the first epoch ...
    skip_beta_schedule: str = "linear"  # ... decayed to 0 linearly or by a cosine
    beta_decay_scale: float = 0.5  # beta-DARTS: the regulariser's weight is this times the epoch
    sdarts_epsilon_min: float = 0.03  # SDARTS: perturbation radius at the first epoch ...
    sdarts_epsilon_max: float = 0.3  # ... ramped linearly to this
    sdarts_attack_steps: int = 7  # SDARTS-ADV: PGD steps
    drnas_regulariser: str = "l2"  # DrNAS: l2 (Adam weight decay on the alphas) or kl
    drnas_reg_scale: float = 1e-3  # DrNAS: the regulariser's scale
    drnas_progressive: bool = False  # DrNAS: two stages (DARTS: K=6, all ops; K=4, 4 ops per edge) of --epochs each
    drnas_widen: str = "net2wider"  # DrNAS progressive: stage 2's ops widened from stage 1's (net2wider) or fresh
    pdarts_add_layers: tuple[int, ...] = (0, 6, 12)  # P-DARTS: cells added to --layers in each stage ...
    pdarts_keep: tuple[int, ...] = (5, 3, 1)  # ... ops per edge kept after each stage ...
    pdarts_skip_dropout: tuple[float, ...] = (0.1, 0.4, 0.7)  # ... dropout rate on skip connections
    pdarts_max_skips: int = 2  # P-DARTS: at most this many skip connections in the final normal cell
    zero_one_weight: float = 10.0  # FairDARTS: weight of the zero-one loss in the architecture loss
    zero_one_loss: str = "l2"  # FairDARTS: -mean (sigmoid - 0.5)^2 (l2) or -mean |sigmoid - 0.5| (l1)
    fair_threshold: float = 0.85  # FairDARTS: a kept edge's op needs this sigmoid weight (0: two inputs per node)
    # collapse diagnostics (darts_nas.diagnostics)
    hessian_every: int = 0  # the Hessian's dominant eigenvalue every N epochs (and after the last); 0: never
    hessian_batches: int = 1  # architecture-half batches the Hessian is taken over
    early_stop: str | None = None  # "es": RobustDARTS's DARTS-ES rule on the eigenvalues
    es_start_epoch: int = 10  # DARTS-ES: the earlier local average must end at this epoch or later
    es_window: int = 5  # DARTS-ES: measurements per local average
    es_delta: int = 4  # DARTS-ES: measurements between the two local averages compared
    es_ratio: float = 1.3  # DARTS-ES: stop when the later average exceeds the earlier by this factor
    # DARTS-ADA (--early-stop ada): when the ES rule fires, roll back to the epoch it points to, multiply the
    # weights' weight decay by ada_factor and go on, while it stays at most ada_max_weight_decay (RobustDARTS's
    # scripts/DARTS-ADA_search.sh: x10 up to 0.03; their argument defaults are x3 up to 2.43e-2)
    ada_factor: float = 10.0
    ada_max_weight_decay: float = 0.03
    cutout: int = 0  # cutout length of the search-time augmentation (both halves); 0: none (DARTS), 16: RobustDARTS
    # run
    seed: int = 2
    device: str = "auto"
    out: str | None = None
    overwrite: bool = False
    report_every: int = 50
    steps_per_epoch: int | None = None  # cap on steps per epoch (smoke tests, benchmarks)
    tensorboard: bool = True  # event files in the run directory (darts_nas.tracking.SearchBoard)
    keep_checkpoints: int = 2  # newest numbered checkpoints kept in the run directory
    checkpoint_every: int | None = None  # also checkpoint inside an epoch every N steps
    checkpoint_minutes: float | None = None  # ... and every M minutes
    # speed (darts_nas.accel, darts_nas.device_data)
    amp: bool = False  # bf16 autocast of the forward passes
    channels_last: bool | None = None  # NHWC memory format; None: on for the CPU, off for CUDA
    compile: bool = False  # torch.compile the network
    gpu_data: bool | None = None  # dataset and augmentation on the GPU; None: on CUDA for CIFAR-style data
    recompute: bool = False  # recompute each cell's activations in the backward pass (less memory)
    # NAS-Bench-201 lookups of the derived cell after every epoch (darts_nas.bench_search)
    benchmark: str | None = None
    benchmark_dataset: str | None = None  # None: the search's dataset
    # sampling-based search (darts_nas.strategies): a strategy over the trained supernet
    strategy: str | None = None  # random, evolution, local, bo; None: the sampling method's own, else none
    supernet: str | None = None  # search this finished run's supernet instead of training one
    strategy_score: str = "supernet"  # or "benchmark": NAS-Bench-201's 12-epoch records, no supernet
    strategy_candidates: int | None = None  # budget: candidates scored (None: 100 unless seconds are given)
    strategy_seconds: float | None = None  # budget: seconds (simulated training seconds with --score benchmark)
    score_batches: int = 10  # architecture-half batches a candidate is scored on (Li and Talwalkar: 10)
    bn_batches: int = 10  # weight-half batches BatchNorm's statistics are recalibrated on (0: none)
    rescore_top: int = 10  # random: the best of each group of 1,000 re-scored on the whole architecture half
    population: int = 10  # evolution: population (NAS-Bench-201's REA: 10)
    sample_size: int = 3  # evolution: members sampled per cycle (NAS-Bench-201's REA: 3)

    def __post_init__(self) -> None:
        for name, value in SPACE_DEFAULTS.get(self.space, SPACE_DEFAULTS["darts"]).items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        object.__setattr__(self, "primitives", tuple(self.primitives))
        object.__setattr__(self, "arch_betas", tuple(self.arch_betas))
        if self.strategy is None and self.method in SAMPLING_STRATEGIES:
            object.__setattr__(self, "strategy", SAMPLING_STRATEGIES[self.method])
        for name in ("pdarts_add_layers", "pdarts_keep", "pdarts_skip_dropout"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        self.validate()

    def validate(self) -> None:
        _check_finite(self)
        positive = ("init_channels", "layers", "nodes", "batch_size", "report_every", "keep_checkpoints")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.epochs < 1:
            raise ConfigError(f"--epochs must be at least 1 (a search of 0 epochs would derive its genotype from "
                              f"untrained alphas), got {self.epochs}")
        if self.hessian_every < 0:
            raise ConfigError(f"--hessian-every must be 0 (never) or a number of epochs, got {self.hessian_every}")
        if self.hessian_batches < 1:
            raise ConfigError(f"--hessian-batches must be at least 1, got {self.hessian_batches}")
        if self.early_stop not in (None, "es", "ada"):
            raise ConfigError(f"--early-stop must be es or ada, got {self.early_stop!r}")
        if self.early_stop == "ada":
            if not self.ada_factor > 1:
                raise ConfigError(f"--ada-factor must be above 1 (RobustDARTS: 10), got {self.ada_factor}")
            if not self.weight_decay > 0 or self.weight_decay * self.ada_factor > self.ada_max_weight_decay * ADA_SLACK:
                raise ConfigError(f"--early-stop ada could never raise --weight-decay {self.weight_decay:g}: it must be "
                                  f"positive and {self.weight_decay:g} x {self.ada_factor:g} at most "
                                  f"--ada-max-weight-decay {self.ada_max_weight_decay:g}; raise the maximum")
        if self.early_stop and not self.hessian_every:
            raise ConfigError(f"--early-stop {self.early_stop} watches the Hessian's eigenvalue: add --hessian-every N (RobustDARTS "
                              "measures every 2 epochs)")
        for name in ("es_window", "es_delta"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.es_start_epoch < 0 or not self.es_ratio > 0:
            raise ConfigError(f"--es-start-epoch must be 0 or more and --es-ratio positive, got "
                              f"{self.es_start_epoch} and {self.es_ratio}")
        if self.workers < 0:
            raise ConfigError(f"--workers must be 0 or more, got {self.workers}")
        if self.cutout < 0:
            raise ConfigError(f"--cutout must be 0 (none) or a length in pixels (RobustDARTS: 16), got {self.cutout}")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise ConfigError(f"--steps-per-epoch must be at least 1, got {self.steps_per_epoch}")
        _check_checkpoint_intervals(self)
        if self.image_size is not None and self.image_size < 1:
            raise ConfigError(f"--image-size must be at least 1, got {self.image_size}")
        if not 0.0 < self.train_portion < 1.0:
            raise ConfigError(
                f"--train-portion must lie strictly between 0 and 1 (it is the share of training images "
                f"used for the weights, the rest go to the alphas), got {self.train_portion}")
        for name in ("learning_rate", "arch_learning_rate"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        for name in ("learning_rate_min", "momentum", "weight_decay", "arch_weight_decay", "grad_clip"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must not be negative, got {getattr(self, name)}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ConfigError(f"--device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if len(self.primitives) == 0:
            raise ConfigError("--ops needs at least one candidate op")
        if not 0 <= self.arch_warmup_epochs < self.epochs:
            raise ConfigError(f"--arch-warmup-epochs {self.arch_warmup_epochs} leaves no epoch of architecture "
                              f"updates in a search of {self.epochs} epochs: use 0 to {self.epochs - 1}")
        if self.nesterov and self.momentum == 0:
            raise ConfigError("--nesterov needs a positive --momentum")
        if self.nesterov and self.unrolled:
            raise ConfigError("--unrolled takes its virtual step with plain momentum SGD, not Nesterov's: drop "
                              "--nesterov or --unrolled")
        if self.space in ROBUST_DARTS_SPACES:
            check_robust_darts_settings(self.space, self.nodes, self.primitives)
            if self.method in SAMPLING_METHODS or wants_strategy(self):
                raise ConfigError(f"sampling-based search (--method random-ws/spos, --strategy) is built for the darts "
                                  f"and nas-bench-201 spaces, not RobustDARTS's per-edge --space {self.space}: use "
                                  f"--space darts or nas-bench-201")
        check_strategy_settings(self)
        if self.space == CHAIN_SPACE:
            check_chain_settings(self)
        if self.space == SPACE:
            check_nb201_settings(self.layers, self.nodes, self.primitives)
            if self.recompute:
                raise ConfigError("--recompute is for the darts space; the NAS-Bench-201 supernet keeps its "
                                  "activations (it is small): drop --recompute")





# Search strategies (darts_nas.strategies) and each sampling method's own strategy (its paper's).
STRATEGY_NAMES = ("random", "evolution", "local", "bo")
SAMPLING_STRATEGIES = {"random-ws": "random", "spos": "evolution"}


def wants_strategy(c: Any) -> bool:
    """Whether a strategy stage runs (``--strategy none``: a sampling method's supernet alone)."""
    return getattr(c, "strategy", None) not in (None, "none")


def check_strategy_settings(c: Any) -> None:
    """The --strategy settings, in one line each (before anything is written)."""
    if c.strategy is not None and c.strategy not in (*STRATEGY_NAMES, "none"):
        raise ConfigError(f"unknown --strategy {c.strategy!r}; valid strategies are: {', '.join(STRATEGY_NAMES)}")
    if c.strategy_score not in ("supernet", "benchmark"):
        raise ConfigError(f"--score must be supernet or benchmark, got {c.strategy_score!r}")
    if not wants_strategy(c):
        for flag, value in (("--supernet", c.supernet), ("--score benchmark", c.strategy_score == "benchmark")):
            if value:
                raise ConfigError(f"{flag} needs a --strategy (random, evolution, local or bo) to search with")
        return
    if c.strategy_candidates is not None and c.strategy_candidates < 1:
        raise ConfigError(f"--candidates {c.strategy_candidates} is no budget: give at least 1 candidate "
                          f"(or --strategy-seconds)")
    if c.strategy_seconds is not None and not (c.strategy_seconds > 0 and c.strategy_seconds != float("inf")):
        raise ConfigError(f"--strategy-seconds {c.strategy_seconds} is no budget: give a positive number of seconds "
                          f"(or --candidates)")
    for name, least in (("score_batches", 1), ("bn_batches", 0), ("rescore_top", 0), ("population", 1),
                        ("sample_size", 1)):
        if getattr(c, name) < least:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least {least}, got {getattr(c, name)}")
    if c.strategy_score == "benchmark":
        if not c.benchmark:
            raise ConfigError("--score benchmark looks candidates up in NAS-Bench-201: add --benchmark PATH")
        if c.supernet:
            raise ConfigError("--score benchmark scores without a supernet: drop --supernet (or --score benchmark "
                              "to score by the supernet and compare with the benchmark)")


# The built-in search methods (darts_nas.methods registers them; a test keeps the two in step).
# Named here so that --help and argument checks need no torch import.
METHOD_NAMES = ("darts", "pc-darts", "gdas", "darts-minus", "beta-darts", "sdarts-rs", "sdarts-adv", "drnas",
                "fair-darts", "random-ws", "spos", "pdarts")
# ... of which these train the supernet by sampling architectures and learn no architecture parameters
SAMPLING_METHODS = ("random-ws", "spos")

# Settings added to SearchConfig after the first release, with the value that reproduces a run
# started before they existed: a config.json without them compares equal to these.
ADDED_SEARCH_SETTINGS: dict[str, Any] = {
    "preset": None, "nesterov": False, "arch_warmup_epochs": 0, "partial_channels": 4,
    "edge_normalization": True, "tau_max": 10.0, "tau_min": 0.1, "skip_beta": 1.0, "skip_beta_schedule": "linear",
    "beta_decay_scale": 0.5, "sdarts_epsilon_min": 0.03, "sdarts_epsilon_max": 0.3, "sdarts_attack_steps": 7,
    "drnas_regulariser": "l2", "drnas_reg_scale": 1e-3, "hessian_every": 0, "hessian_batches": 1,
    "early_stop": None, "es_start_epoch": 10, "es_window": 5, "es_delta": 4, "es_ratio": 1.3,
    "ada_factor": 10.0, "ada_max_weight_decay": 0.03, "cutout": 0,
    "benchmark": None, "benchmark_dataset": None, "folds": None, "fold": None,
    "zero_one_weight": 10.0, "zero_one_loss": "l2", "fair_threshold": 0.85,
    "strategy": None, "supernet": None, "strategy_score": "supernet", "strategy_candidates": None,
    "strategy_seconds": None, "score_batches": 10, "bn_batches": 10, "rescore_top": 10, "population": 10,
    "sample_size": 3,
    "pdarts_add_layers": [0, 6, 12], "pdarts_keep": [5, 3, 1], "pdarts_skip_dropout": [0.1, 0.4, 0.7],
    "pdarts_max_skips": 2, "drnas_progressive": False,
    # (runs before it had fresh stage-2 ops; only a progressive run resumed exactly at its stage
    # transition would see the difference, and "fresh" here would refuse every older run's resume)
    "drnas_widen": "net2wider",
}


# ---------------------------------------------------------------------------------------------
# Presets: published search protocols as data files (presets/*.json, package darts_nas.presets)
# ---------------------------------------------------------------------------------------------

def presets_dir():
    """The directory of the preset files: the installed ``darts_nas.presets`` package, else the
    repository's top-level ``presets/``."""
    from importlib.resources import files
    from pathlib import Path

    try:
        found = Path(str(files("darts_nas.presets")))
        if found.is_dir():
            return found
    except (ModuleNotFoundError, TypeError):
        pass
    return Path(__file__).resolve().parent.parent / "presets"


def list_presets() -> list[str]:
    return sorted(p.stem.replace("_", "-") for p in presets_dir().glob("*.json"))


def load_preset(name: str) -> dict[str, Any]:
    """The preset ``name`` as a dict: ``method``, ``settings`` (SearchConfig fields), ``source``,
    ``description`` and ``published`` (the published result of the protocol, with its source)."""
    names = list_presets()
    key = name.strip().lower().replace("_", "-")
    if key not in names:
        raise ConfigError(f"unknown preset {name!r}; valid presets are: {', '.join(names)} (--preset list shows them)")
    path = presets_dir() / f"{key.replace('-', '_')}.json"
    try:
        preset = json.loads(path.read_text())
        settings = preset["settings"]
        if not isinstance(settings, dict):
            raise TypeError("settings is not an object")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"preset file {path} is unreadable ({exc}): reinstall darts-nas") from None
    known = {f.name for f in dataclasses.fields(SearchConfig)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ConfigError(f"preset {key} sets unknown settings {unknown}: reinstall darts-nas")
    return {**preset, "name": key}


# The paper's retraining protocols (REFERENCE section 4). Every entry can be overridden.
PROTOCOLS: dict[str, dict[str, Any]] = {
    "cifar": {
        "dataset": "cifar10", "network": "cifar", "layers": 20, "init_channels": 36, "epochs": 600,
        "batch_size": 96, "learning_rate": 0.025, "lr_schedule": "cosine", "learning_rate_min": 0.0,
        "lr_decay": 0.97, "momentum": 0.9, "weight_decay": 3e-4, "grad_clip": 5.0, "cutout": None,
        "drop_path_prob": 0.2, "auxiliary": True, "auxiliary_weight": 0.4, "label_smoothing": 0.0,
    },
    "imagenet": {
        "dataset": "imagenet", "network": "imagenet", "layers": 14, "init_channels": 48, "epochs": 250,
        "batch_size": 128, "learning_rate": 0.1, "lr_schedule": "step", "learning_rate_min": 0.0,
        "lr_decay": 0.97, "momentum": 0.9, "weight_decay": 3e-5, "grad_clip": 5.0, "cutout": 0,
        "drop_path_prob": 0.0, "auxiliary": True, "auxiliary_weight": 0.4, "label_smoothing": 0.1,
    },
    # The benchmark's "200-epoch" training (methods.md section 2.2): its 17-block tiny network
    # (15 cells, C=16), SGD Nesterov lr 0.1 cosine to 0, weight decay 5e-4, batch 256, crop and flip.
    SPACE: {
        "dataset": "cifar10", "network": SPACE, "layers": 15, "init_channels": 16, "epochs": 200,
        "batch_size": 256, "learning_rate": 0.1, "lr_schedule": "cosine", "learning_rate_min": 0.0,
        "lr_decay": 0.97, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4, "grad_clip": 0.0,
        "cutout": 0, "drop_path_prob": 0.0, "auxiliary": False, "auxiliary_weight": 0.4, "label_smoothing": 0.0,
    },
    # ProxylessNAS's training of its searched nets (mit-han-lab/proxylessnas search/imagenet_run_exp.py
    # defaults): 300 epochs, batch 256, SGD Nesterov lr 0.05 cosine, weight decay 4e-5, label smoothing
    # 0.1, no dropout; the stem width is --init-channels (32: multiplier 1), the depth the genotype's.
    CHAIN_SPACE: {
        "dataset": "imagenet", "network": CHAIN_SPACE, "layers": 4, "init_channels": 32, "epochs": 300,
        "batch_size": 256, "learning_rate": 0.05, "lr_schedule": "cosine", "learning_rate_min": 0.0,
        "lr_decay": 0.97, "momentum": 0.9, "nesterov": True, "weight_decay": 4e-5, "grad_clip": 0.0,
        "cutout": 0, "drop_path_prob": 0.0, "auxiliary": False, "auxiliary_weight": 0.4, "label_smoothing": 0.1,
    },
}
LR_SCHEDULES = ("cosine", "step")


@dataclass(frozen=True)
class TrainConfig(_Settings):
    """Settings of a final (retraining) run; defaults are the CIFAR protocol."""

    KIND = "training"

    cell: str = "darts_v2"
    protocol: str = "cifar"
    # data
    dataset: str = "cifar10"
    data: str = "data"
    download: bool = False
    image_size: int | None = None
    workers: int = 0
    # network
    network: str = "cifar"
    init_channels: int = 36
    layers: int = 20
    auxiliary: bool = True
    auxiliary_weight: float = 0.4
    drop_path_prob: float = 0.2
    # optimisation
    epochs: int = 600
    batch_size: int = 96
    learning_rate: float = 0.025
    lr_schedule: str = "cosine"
    learning_rate_min: float = 0.0
    lr_decay: float = 0.97
    momentum: float = 0.9
    nesterov: bool = False  # (added with the nas-bench-201 protocol; ADDED_SEARCH_SETTINGS keeps older runs resumable)
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    cutout: int | None = None  # None: half the image side (16 at 32x32, as in the paper)
    label_smoothing: float = 0.0
    # run
    seed: int = 0
    device: str = "auto"
    out: str | None = None
    overwrite: bool = False
    report_every: int = 50
    steps_per_epoch: int | None = None
    compare: tuple[str, ...] = ()
    tensorboard: bool = True  # event files in the run directory (darts_nas.tracking.TrainBoard)
    keep_checkpoints: int = 2  # newest numbered checkpoints kept in the run directory
    checkpoint_every: int | None = None  # also checkpoint inside an epoch every N steps
    checkpoint_minutes: float | None = None  # ... and every M minutes
    # cross-validated evaluation (darts_nas.repeat.run_folds): train on all folds of the train
    # split but ``fold`` (0-based), of ``folds`` stratified folds seeded by ``seed``, and test on it too
    folds: int | None = None
    fold: int | None = None
    # speed (darts_nas.accel, darts_nas.device_data)
    amp: bool = False
    channels_last: bool | None = None  # None: on for the CPU, off for CUDA
    compile: bool = False
    gpu_data: bool | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "compare", tuple(self.compare))
        self.validate()

    @classmethod
    def for_protocol(cls, protocol: str = "cifar", **overrides: Any) -> "TrainConfig":
        """The protocol's settings, with every non-None override applied on top."""
        if protocol not in PROTOCOLS:
            raise ConfigError(f"unknown protocol {protocol!r}; valid protocols are: {', '.join(PROTOCOLS)}")
        settings = {**PROTOCOLS[protocol], "protocol": protocol}
        settings.update({k: v for k, v in overrides.items() if v is not None})
        settings.setdefault("cutout", None)
        return cls.from_dict(settings)

    def validate(self) -> None:
        _check_finite(self)
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"unknown protocol {self.protocol!r}; valid protocols are: {', '.join(PROTOCOLS)}")
        for name in ("init_channels", "layers", "batch_size", "report_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in ("epochs", "workers", "cutout"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be 0 or more, got {getattr(self, name)}")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise ConfigError(f"--steps-per-epoch must be at least 1, got {self.steps_per_epoch}")
        _check_checkpoint_intervals(self)
        if self.image_size is not None and self.image_size < 1:
            raise ConfigError(f"--image-size must be at least 1, got {self.image_size}")
        if not self.learning_rate > 0:
            raise ConfigError(f"--learning-rate must be positive, got {self.learning_rate}")
        for name in ("learning_rate_min", "momentum", "weight_decay", "grad_clip", "auxiliary_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must not be negative, got {getattr(self, name)}")
        if not 0.0 <= self.drop_path_prob < 1.0:
            raise ConfigError(f"--drop-path-prob must be in [0, 1), got {self.drop_path_prob}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        if not 0.0 < self.lr_decay <= 1.0:
            raise ConfigError(f"--lr-decay must be in (0, 1], got {self.lr_decay}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"--lr-schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ConfigError(f"--device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.nesterov and self.momentum == 0:
            raise ConfigError("--nesterov needs a positive --momentum")
        if self.folds is not None and (isinstance(self.folds, bool) or self.folds < 2):
            raise ConfigError(f"--folds must be at least 2, got {self.folds}: pass e.g. --folds 5")
        if self.fold is not None and (self.folds is None or not 0 <= self.fold < self.folds):
            raise ConfigError(f"fold {self.fold} is not one of the {self.folds} folds: folds are numbered 0 to "
                              f"K - 1 under --folds K")
        if self.folds is not None and self.compare:
            raise ConfigError("--folds and --compare both given: cross-validate one cell per command")
        if self.folds is not None and self.gpu_data:
            raise ConfigError("--gpu-data does not read the folds of --folds: drop --gpu-data")
        if (self.network == SPACE) != (self.protocol == SPACE):
            raise ConfigError("the NAS-Bench-201 network trains under --protocol nas-bench-201 and only it: use "
                              "--space nas-bench-201 (which implies it), or leave out --network nas-bench-201")
        if (self.network == CHAIN_SPACE) != (self.protocol == CHAIN_SPACE):
            raise ConfigError("the ProxylessNAS chain trains under --protocol proxyless and only it: use --space "
                              "proxyless (which implies it), or leave out --network proxyless")
        if self.network == CHAIN_SPACE and (self.auxiliary or self.drop_path_prob > 0):
            raise ConfigError("the ProxylessNAS chain has no auxiliary head and no drop-path: drop --auxiliary and "
                              "--drop-path-prob")
        if self.network == SPACE:
            if self.layers % 3:
                raise ConfigError(f"--layers {self.layers} is not a multiple of 3: the NAS-Bench-201 network has 3 "
                                  f"stages of N cells (the benchmark's: --layers 15)")
            if self.auxiliary or self.drop_path_prob > 0:
                raise ConfigError("the NAS-Bench-201 network has no auxiliary head and no drop-path: drop "
                                  "--auxiliary and --drop-path-prob")

