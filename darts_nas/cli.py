"""Command-line entry points: ``train_search.py`` / ``darts-search`` and ``train_final.py`` / ``darts-train``.

Flags are dashed; the original DARTS code's underscore spellings (``--batch_size``,
``--init_channels``, ``--save``, ...) are accepted as aliases.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import sys
import textwrap
from pathlib import Path
from typing import Any, Callable, Sequence

# Nothing imported at the top of this module may import torch: --help, --version and argument
# errors answer in a fraction of a second (tests/test_cli.py checks it). The run's modules are
# imported once the arguments are known good.
from . import __version__
from .commands import command
from .config import STRATEGY_NAMES, SearchConfig
from .cpu_threads import add_threads_flag, apply_default_threads, configure_cpu
from .errors import ConfigError, DartsNasError, RunDirError, RunStopped, print_error
from .primitives import BUILTIN_OPS

_DEFAULTS = SearchConfig()


def _flag(name: str, *aliases: str) -> list[str]:
    return [name, *aliases]


class _HelpFormatter(argparse.HelpFormatter):
    """Each flag's default shown once, and only when its help text does not already say it; lines
    wrapped between words (never inside a flag name or a file name)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        nothing = default is None or default is False or default is argparse.SUPPRESS or default == []
        if ("default" in text or nothing or not action.option_strings
                or isinstance(action, argparse.BooleanOptionalAction)):
            return text
        return f"{text} (default: %(default)s)"

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_long_words=False, break_on_hyphens=False)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return textwrap.fill(" ".join(text.split()), width, initial_indent=indent, subsequent_indent=indent,
                             break_long_words=False, break_on_hyphens=False)


def _number_list(kind: Callable[[str], Any], what: str):
    def parse(text: str) -> tuple:
        try:
            return tuple(kind(v) for v in text.split(",") if v.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what}, e.g. 0,6,12; got {text!r}") from None
    parse.__name__ = f"{what} list"
    return parse


_int_list = _number_list(int, "whole numbers")
_float_list = _number_list(float, "numbers")


def _parser(description: str, kind: str) -> argparse.ArgumentParser:
    """An argument parser with the settings both commands share: no prefix matching (``--epoch``
    is not ``--epochs``), ``--version``, and help text formatted by :class:`_HelpFormatter`."""
    p = argparse.ArgumentParser(prog=command(kind), description=description, formatter_class=_HelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--version", action="version", version=f"darts-nas {__version__}")
    return p


_REPORT_HELP = ("print progress every N steps, and also after the first step and whenever 30 s have passed "
                "since the last line")


def build_search_parser() -> argparse.ArgumentParser:
    d = _DEFAULTS
    p = _parser("DARTS architecture search: train a weight-sharing supernet and its architecture "
                "parameters (alphas) alternately on two halves of the training data, then derive the "
                "cell genotype. Defaults are the DARTS paper's CIFAR-10 search protocol.", "search")
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default=d.dataset,
                   help="cifar10, cifar100, mnist, fashion-mnist, svhn, folder (a directory of class "
                        "subfolders of images), digits (scikit-learn's 8x8 digits, no download), "
                        "imagenet16-120 (NAS-Bench-201's 16x16 ImageNet, 120 classes), cifar10-valid "
                        "(CIFAR-10's training set: first half for the weights, second for the alphas), or "
                        "cifar100-xvalid / imagenet16-120-xvalid (the training set for the weights, the benchmark's "
                        "x-valid half of the test set for the alphas; the split file goes in --data)")
    g.add_argument("--data", default=d.data, help="directory that holds the dataset (for folder: the image directory)")
    g.add_argument("--download", action="store_true", help="download the dataset into --data if it is missing")
    g.add_argument(*_flag("--image-size", "--image_size"), type=int, default=d.image_size,
                   help="side of the square images for --dataset folder (default 32); the named datasets keep their size")
    g.add_argument(*_flag("--train-portion", "--train_portion"), type=float, default=d.train_portion,
                   help="share of the training images used for the weights; the rest train the alphas")
    g.add_argument("--workers", type=int, default=d.workers, help="data-loading worker processes")
    g.add_argument("--cutout", type=int, default=d.cutout, metavar="PIXELS",
                   help="cutout of this length in the search-time augmentation of both halves; 0: none (DARTS; "
                        "RobustDARTS searches with 16)")
    g.add_argument("--benchmark", default=None, metavar="PATH",
                   help="with --space nas-bench-201: look up the derived cell after every epoch in this NAS-Bench-201 "
                        "data (NAS-Bench-201-v1_[01]-*.pth, NATS-tss-v1_0-3ffb9.pickle.pbz2, the directory "
                        "NATS-tss-v1_0-3ffb9-simple, or an index from 'darts-bench index') and record its 200-epoch "
                        "accuracies in metrics.jsonl, TensorBoard and summary.json")
    g.add_argument("--benchmark-dataset", default=None, metavar="NAME",
                   help="the benchmark's dataset to score by (cifar10, cifar10-valid, cifar100, ImageNet16-120); "
                        "default: the search's --dataset")

    g = p.add_argument_group("search space")
    g.add_argument("--space", default=d.space,
                   help="search space: darts (normal and reduction cells) or nas-bench-201 (the benchmark's "
                        "6-edge cell, one alpha shared by every cell; see the README's NAS-Bench-201 section), or "
                        "RobustDARTS's s1, s2, s3, s4 (the DARTS cell, each edge its own published ops; s4 has the "
                        "noise op; see the README's RobustDARTS section), or proxyless (ProxylessNAS's MobileNetV2-like "
                        "chain, "
                        "FairDARTS's ImageNet space: one mixed MBConv block per layer; see the README's ProxylessNAS "
                        "space section)")
    g.add_argument(*_flag("--init-channels", "--init_channels"), type=int, default=d.init_channels,
                   help="channels of the first cell (C); proxyless: the stem's width, 32 being width multiplier 1")
    g.add_argument("--layers", type=int, default=None,
                   help="number of cells (default: 8 for darts, 15 for nas-bench-201); darts: reductions at "
                        "layers//3 and 2*layers//3 (below 3 every cell reduces and the normal cell is not "
                        "searched); nas-bench-201: a multiple of 3, three stages of layers/3 cells; proxyless: "
                        "searched layers per stage at most (default and published: 4)")
    g.add_argument(*_flag("--nodes", "--steps"), type=int, default=None,
                   help="intermediate nodes per cell (default: 4 for darts; nas-bench-201 cells have 3)")
    g.add_argument("--ops", default=None,
                   help="comma-separated candidate ops of every edge, in alpha column order (default: the "
                        "space's: " + ",".join(d.primitives) + " for darts; none,skip_connect,nor_conv_1x1,"
                        "nor_conv_3x3,avg_pool_3x3 for nas-bench-201); available for darts: " + ", ".join(BUILTIN_OPS))

    g = p.add_argument_group("optimisation")
    g.add_argument("--method", default=d.method,
                   help="search method: darts (softmax over every op), pc-darts (partial channels and edge "
                        "normalisation), gdas (one Gumbel-sampled op per edge), darts-minus (auxiliary skip), "
                        "beta-darts (beta-decay regulariser), sdarts-rs / sdarts-adv (perturbed weight step), "
                        "drnas (Dirichlet mixing weights), fair-darts (sigmoid mixing weights, zero-one loss, "
                        "threshold derivation), random-ws / spos (one uniformly sampled architecture "
                        "per step, then a --strategy), pdarts (three stages of growing depth, ops pruned "
                        "between them, skip dropout, at most 2 skips in the normal cell)")
    g.add_argument("--preset", default=None, metavar="NAME",
                   help="start from a method's published search protocol (darts-1st, darts-2nd, pc-darts, gdas, darts-minus, "
                        "beta-darts, sdarts-rs, sdarts-adv, drnas, drnas-nb201, fair-darts, robust-darts, random-ws, pdarts; "
                        "--preset list describes them); flags given on the command line win over it")
    g.add_argument("--epochs", type=int, default=d.epochs, help="search epochs")
    g.add_argument(*_flag("--batch-size", "--batch_size"), type=int, default=d.batch_size,
                   help="batch size of each half (weights and architecture); under torchrun the global batch, "
                        "split evenly over the processes")
    g.add_argument(*_flag("--learning-rate", "--learning_rate"), type=float, default=d.learning_rate,
                   help="initial weight learning rate (SGD), cosine-annealed")
    g.add_argument(*_flag("--learning-rate-min", "--learning_rate_min"), type=float, default=d.learning_rate_min,
                   help="final weight learning rate of the cosine schedule")
    g.add_argument("--momentum", type=float, default=d.momentum, help="SGD momentum of the weights")
    g.add_argument(*_flag("--weight-decay", "--weight_decay"), type=float, default=d.weight_decay,
                   help="weight decay of the weights")
    g.add_argument(*_flag("--grad-clip", "--grad_clip"), type=float, default=d.grad_clip,
                   help="clip the weights' gradient norm to this (0 disables)")
    g.add_argument(*_flag("--arch-learning-rate", "--arch_learning_rate"), type=float,
                   default=d.arch_learning_rate, help="Adam learning rate of the alphas")
    g.add_argument(*_flag("--arch-weight-decay", "--arch_weight_decay"), type=float,
                   default=d.arch_weight_decay, help="Adam weight decay of the alphas")
    g.add_argument("--unrolled", action="store_true",
                   help="second-order architecture gradient (one unrolled virtual SGD step); first order otherwise")
    g.add_argument("--nesterov", action="store_true", help="Nesterov momentum for the weights' SGD (GDAS's protocol)")
    g.add_argument("--arch-warmup-epochs", type=int, default=d.arch_warmup_epochs, metavar="N",
                   help="train only the weights for the first N epochs, then start the architecture steps "
                        "(PC-DARTS's protocol uses 15)")

    g = p.add_argument_group("method settings (each read by the method named)")
    g.add_argument("--partial-channels", type=int, default=d.partial_channels, metavar="K",
                   help="pc-darts: 1/K of each edge's channels go through its mixed op, the rest bypass it; "
                        "K must divide --init-channels")
    g.add_argument("--no-edge-normalization", action="store_true",
                   help="pc-darts: no betas; a node sums its edges plainly")
    g.add_argument("--tau-max", type=float, default=d.tau_max,
                   help="gdas: Gumbel-softmax temperature at the first epoch, falling linearly to --tau-min")
    g.add_argument("--tau-min", type=float, default=d.tau_min, help="gdas: temperature at the last epoch")
    g.add_argument("--skip-beta", type=float, default=d.skip_beta,
                   help="darts-minus: coefficient of the auxiliary skip at the first epoch, decayed to 0")
    g.add_argument("--skip-beta-schedule", default=d.skip_beta_schedule, choices=["linear", "cosine"],
                   help="darts-minus: how the coefficient decays")
    g.add_argument("--beta-decay-scale", type=float, default=d.beta_decay_scale,
                   help="beta-darts: the regulariser's weight is this times the epoch (0-based)")
    g.add_argument("--sdarts-epsilon-min", type=float, default=d.sdarts_epsilon_min,
                   help="sdarts-rs/-adv: perturbation radius of the mixing weights at the first epoch ...")
    g.add_argument("--sdarts-epsilon-max", type=float, default=d.sdarts_epsilon_max,
                   help="... ramped linearly to this")
    g.add_argument("--sdarts-attack-steps", type=int, default=d.sdarts_attack_steps,
                   help="sdarts-adv: PGD steps of the attack on the mixing weights")
    g.add_argument("--drnas-regulariser", default=d.drnas_regulariser, choices=["l2", "kl"],
                   help="drnas: l2 (Adam weight decay on the alphas, replacing --arch-weight-decay) or kl "
                        "(KL to Dir(1) in the architecture loss)")
    g.add_argument("--drnas-reg-scale", type=float, default=d.drnas_reg_scale, help="drnas: the regulariser's scale")
    g.add_argument("--drnas-progressive", action="store_true", default=d.drnas_progressive,
                   help="drnas: the published progressive schedule: two stages of --epochs each, partial channels "
                        "K=6 on every op, then the 4 ops of largest alpha per edge at K=4 (nas-bench-201: K=4, then "
                        "3 ops at K=2); alphas and their Adam state carried; --init-channels a multiple of 12 (4)")
    g.add_argument("--drnas-widen", default=d.drnas_widen, choices=["net2wider", "fresh"],
                   help="drnas --drnas-progressive: stage 2's kept ops start from their stage-1 weights widened by "
                        "copying random channels (net2wider, the authors' code) or from fresh weights")
    g.add_argument("--pdarts-add-layers", type=_int_list, default=d.pdarts_add_layers, metavar="A,B,C",
                   help="pdarts: cells added to --layers in each stage, one value per stage (default "
                        + ",".join(map(str, d.pdarts_add_layers)) + "); --epochs is the epochs of each stage")
    g.add_argument("--pdarts-keep", type=_int_list, default=d.pdarts_keep, metavar="A,B,C",
                   help="pdarts: ops each edge keeps after each stage, the last 1 (default "
                        + ",".join(map(str, d.pdarts_keep)) + ")")
    g.add_argument("--pdarts-skip-dropout", type=_float_list, default=d.pdarts_skip_dropout, metavar="A,B,C",
                   help="pdarts: dropout rate after the skip connections in each stage, decayed within it (default "
                        + ",".join(map(str, d.pdarts_skip_dropout)) + ")")
    g.add_argument("--pdarts-max-skips", type=int, default=d.pdarts_max_skips, metavar="M",
                   help="pdarts: at most M skip connections in the final normal cell (default %(default)s)")
    g.add_argument("--zero-one-weight", type=float, default=d.zero_one_weight,
                   help="fair-darts: weight of the zero-one loss added to the architecture loss (0: none)")
    g.add_argument("--zero-one-loss", default=d.zero_one_loss, choices=["l2", "l1"],
                   help="fair-darts: -mean (sigmoid - 0.5)^2 (l2, the published) or -mean |sigmoid - 0.5| (l1)")
    g.add_argument("--fair-threshold", type=float, default=d.fair_threshold,
                   help="fair-darts: each node's two strongest edges keep their best op only if its sigmoid weight "
                        "is at least this, so a node may keep one input or none (0: always two)")

    g = p.add_argument_group("sampling-based search (--method random-ws or spos, then a --strategy)")
    g.add_argument("--strategy", default=None, choices=[*STRATEGY_NAMES, "none"],
                   help="after the supernet training (or on --supernet RUN_DIR), search it: random (Li and "
                        "Talwalkar's two-stage selection), evolution (aging evolution), local (hill climbing with "
                        "restarts), bo (Optuna's TPE); random-ws defaults to random, spos to evolution; none: no strategy stage "
                        "(needed under torchrun: search afterwards with --supernet)")
    g.add_argument("--supernet", default=None, metavar="RUN_DIR",
                   help="search the supernet of this finished search run (any method of the same --space) instead "
                        "of training one; the results go to --out")
    g.add_argument("--score", dest="strategy_score", default=d.strategy_score, choices=["supernet", "benchmark"],
                   help="score candidates by the supernet's shared weights, or (nas-bench-201, with --benchmark) by "
                        "the benchmark's 12-epoch validation accuracy, charging its recorded training time")
    g.add_argument("--candidates", dest="strategy_candidates", type=int, default=None, metavar="N",
                   help="budget: candidates scored (default 100 unless --strategy-seconds is given)")
    g.add_argument("--strategy-seconds", type=float, default=None, metavar="S",
                   help="budget: seconds of scoring (with --score benchmark: simulated training seconds; "
                        "NAS-Bench-201's baselines use 12000)")
    g.add_argument("--score-batches", type=int, default=d.score_batches, metavar="B",
                   help="architecture-half batches each candidate is scored on (Li and Talwalkar: 10)")
    g.add_argument("--bn-batches", type=int, default=d.bn_batches, metavar="B",
                   help="weight-half batches BatchNorm's statistics are recalibrated on before each candidate is "
                        "scored (0: keep the supernet's)")
    g.add_argument("--rescore-top", type=int, default=d.rescore_top, metavar="K",
                   help="random: re-score the best K of each group of 1000 on the whole architecture half")
    g.add_argument("--population", type=int, default=d.population, help="evolution: population size")
    g.add_argument("--sample-size", type=int, default=d.sample_size,
                   help="evolution: members sampled (with replacement) to pick each parent")

    g = p.add_argument_group("collapse diagnostics")
    g.add_argument("--hessian-every", type=int, default=d.hessian_every, metavar="N",
                   help="every N epochs (and after the last) compute the dominant eigenvalue of the Hessian of the "
                        "architecture-half loss with respect to the architecture parameters (RobustDARTS); 0: never")
    g.add_argument("--hessian-batches", type=int, default=d.hessian_batches, metavar="B",
                   help="architecture-half batches the Hessian is taken over")
    g.add_argument("--early-stop", choices=["es", "ada"], default=None,
                   help="es: stop when RobustDARTS's DARTS-ES rule fires on the eigenvalues (needs --hessian-every) "
                        "and return the genotype of the epoch it points back to; ada (DARTS-ADA): when it fires, roll "
                        "back to that epoch's checkpoint, multiply --weight-decay by --ada-factor and go on, while the "
                        "weight decay stays at most --ada-max-weight-decay")
    g.add_argument("--es-start-epoch", type=int, default=d.es_start_epoch,
                   help="DARTS-ES: the earlier local average must end at this epoch or later")
    g.add_argument("--es-window", type=int, default=d.es_window, help="DARTS-ES: measurements per local average")
    g.add_argument("--es-delta", type=int, default=d.es_delta,
                   help="DARTS-ES: measurements between the two local averages compared")
    g.add_argument("--es-ratio", type=float, default=d.es_ratio,
                   help="DARTS-ES: stop when the later average exceeds the earlier by this factor")
    g.add_argument("--ada-factor", type=float, default=d.ada_factor,
                   help="DARTS-ADA: the weight decay's factor at each rollback (RobustDARTS's ADA script: 10)")
    g.add_argument("--ada-max-weight-decay", type=float, default=d.ada_max_weight_decay,
                   help="DARTS-ADA: the largest weight decay it raises to (RobustDARTS's ADA script: 0.03)")

    g = p.add_argument_group("run")
    g.add_argument("--seed", type=int, default=d.seed, help="random seed (data split, init, shuffling), 0 to 2**32-1")
    _add_seeds_flag(g)
    g.add_argument("--device", default=d.device, help="auto, cpu, cuda or cuda:N")
    g.add_argument(*_flag("--out", "--save"), default=None,
                   help="run directory (default: runs/search-<dataset>-<time>); one run at a time may use it (a lock)")
    g.add_argument("--overwrite", action="store_true",
                   help="replace a finished run in --out, or an unfinished one with other settings (an "
                        "unfinished run with the same settings is resumed)")
    g.add_argument(*_flag("--report-every", "--report_freq"), type=int, default=d.report_every,
                   help=_REPORT_HELP)
    g.add_argument("--steps-per-epoch", type=int, default=None, metavar="N",
                   help="stop each epoch after N steps (smoke tests; default: the whole weight half)")
    g.add_argument("--quiet", action="store_true", help="log to <out>/log.txt only")
    g.add_argument("--no-tensorboard", action="store_true",
                   help="write no TensorBoard event files into the run directory (on by default: "
                        "tensorboard --logdir runs/)")
    g.add_argument("--keep-checkpoints", type=int, default=d.keep_checkpoints,
                   help="keep the newest N checkpoints (checkpoint-epochNNNN.pt, and checkpoint-epochNNNN-stepSSSSSS.pt "
                        "inside an epoch); an interrupted run resumes from the newest valid one when the same "
                        "command is run again")
    _add_resume_flags(g, command("search"))
    _add_speed_flags(p, search=True)
    return p


def _add_seeds_flag(g) -> None:
    g.add_argument("--seeds", default=None, metavar="S1,S2,...",
                   help="run the same protocol once per seed, each in <out>/seed-<n> (resumable as any run: the "
                        "same command again continues unfinished seeds and skips finished ones), then write "
                        "<out>/summary.json with the mean, sample std, min, max and each seed's value; needs --out")


def _over_seeds(run, args: argparse.Namespace, kind: str, given: set[str]):
    """``run``, or with ``--seeds`` a run of every seed followed by the aggregate (darts_nas.repeat)."""
    if args.seeds is None:
        return run
    from .repeat import parse_seeds, run_seeds

    def seeded(config, quiet: bool = False, **kw):
        if "seed" in given:
            raise ConfigError("--seed and --seeds both given: pass only --seeds (each seed gets its own run)")
        return run_seeds(run, config, parse_seeds(args.seeds), kind, quiet=quiet, **kw)

    return seeded


def _add_resume_flags(g, script: str) -> None:
    g.add_argument("--checkpoint-every", type=int, default=None, metavar="N",
                   help="also write a checkpoint inside an epoch every N steps (without it: only after each epoch); "
                        "may change when resuming")
    g.add_argument("--checkpoint-minutes", type=float, default=None, metavar="M",
                   help="also write a checkpoint inside an epoch every M minutes; may change when resuming")
    g.add_argument("--resume", default=None, metavar="RUN_DIR",
                   help=f"continue the unfinished run in RUN_DIR from its newest valid checkpoint with the settings in "
                        f"its config.json (or, without one, in the checkpoint); flags given alongside may change "
                        f"only what may change on resuming "
                        f"(--data, --device, --workers, logging, checkpointing, and the learning rates to recover "
                        f"from a non-finite loss). SIGINT/SIGTERM stop a run after the current step with a "
                        f"checkpoint; `{script} --resume RUN_DIR` or the same command continues it")


def search_config_from_args(args: argparse.Namespace, given: set[str] | None = None) -> SearchConfig:
    """The settings of the flags; with ``--preset``, the preset's settings replace those of the
    flags not ``given`` on the command line (all of them when ``given`` is None)."""
    ops = None if args.ops is None else tuple(op.strip() for op in args.ops.split(",") if op.strip())
    settings = dict(
        dataset=args.dataset, data=args.data, download=args.download, image_size=args.image_size,
        train_portion=args.train_portion, workers=args.workers, space=args.space,
        init_channels=args.init_channels, layers=args.layers, nodes=args.nodes, primitives=ops,
        method=args.method, epochs=args.epochs, batch_size=args.batch_size,
        learning_rate=args.learning_rate, learning_rate_min=args.learning_rate_min,
        momentum=args.momentum, weight_decay=args.weight_decay, grad_clip=args.grad_clip,
        arch_learning_rate=args.arch_learning_rate, arch_weight_decay=args.arch_weight_decay,
        unrolled=args.unrolled, nesterov=args.nesterov, arch_warmup_epochs=args.arch_warmup_epochs,
        partial_channels=args.partial_channels, edge_normalization=not args.no_edge_normalization,
        tau_max=args.tau_max, tau_min=args.tau_min, skip_beta=args.skip_beta,
        skip_beta_schedule=args.skip_beta_schedule, beta_decay_scale=args.beta_decay_scale,
        sdarts_epsilon_min=args.sdarts_epsilon_min, sdarts_epsilon_max=args.sdarts_epsilon_max,
        sdarts_attack_steps=args.sdarts_attack_steps, drnas_regulariser=args.drnas_regulariser,
        drnas_reg_scale=args.drnas_reg_scale, drnas_progressive=args.drnas_progressive,
        drnas_widen=args.drnas_widen, pdarts_add_layers=args.pdarts_add_layers,
        pdarts_keep=args.pdarts_keep, pdarts_skip_dropout=args.pdarts_skip_dropout,
        pdarts_max_skips=args.pdarts_max_skips, zero_one_weight=args.zero_one_weight,
        zero_one_loss=args.zero_one_loss, fair_threshold=args.fair_threshold, hessian_every=args.hessian_every,
        hessian_batches=args.hessian_batches, early_stop=args.early_stop, es_start_epoch=args.es_start_epoch,
        es_window=args.es_window, es_delta=args.es_delta, es_ratio=args.es_ratio, ada_factor=args.ada_factor,
        ada_max_weight_decay=args.ada_max_weight_decay, cutout=args.cutout, seed=args.seed, device=args.device, out=args.out,
        overwrite=args.overwrite, report_every=args.report_every, steps_per_epoch=args.steps_per_epoch,
        tensorboard=not args.no_tensorboard, keep_checkpoints=args.keep_checkpoints,
        checkpoint_every=args.checkpoint_every, checkpoint_minutes=args.checkpoint_minutes,
        benchmark=args.benchmark, benchmark_dataset=args.benchmark_dataset,
        strategy=args.strategy, supernet=args.supernet, strategy_score=args.strategy_score,
        strategy_candidates=args.strategy_candidates, strategy_seconds=args.strategy_seconds,
        score_batches=args.score_batches, bn_batches=args.bn_batches, rescore_top=args.rescore_top,
        population=args.population, sample_size=args.sample_size,
        **_speed_settings(args),
    )
    if getattr(args, "preset", None):
        from .config import load_preset

        preset = load_preset(args.preset)
        given = given or set()
        settings.update({k: v for k, v in preset["settings"].items() if k not in given})
        settings["preset"] = preset["name"]
    return SearchConfig(**settings)


def describe_presets() -> str:
    """``--preset list``: one block per preset (name, method, what it sets, its published result)."""
    from .config import list_presets, load_preset

    blocks = []
    for name in list_presets():
        p = load_preset(name)
        settings = ", ".join(f"{k}={v}" for k, v in sorted(p["settings"].items()))
        pub = p.get("published") or {}
        published = (f"\n  published: {pub.get('test_error')}% test error on {pub.get('dataset')}, "
                     f"{pub.get('params_m')} M params ({pub.get('source')})") if pub.get("test_error") else (
            f"\n  published: {pub.get('source')}" if pub else "")
        blocks.append(f"{name} (--method {p['method']}): {p.get('description', '')}\n  sets: {settings}"
                      f"\n  source: {p.get('source', '')}{published}")
    return "\n".join(blocks)


def _add_speed_flags(p: argparse.ArgumentParser, search: bool = False) -> None:
    g = p.add_argument_group("speed (results stay the same up to floating-point rounding; see BENCHMARKS.md)")
    g.add_argument("--amp", action="store_true",
                   help="mixed precision: forward passes in bfloat16 autocast, weights and optimizers in float32 "
                        "(the second-order Hessian-vector product always runs in float32)")
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="NHWC memory format for weights and images; default: on for the CPU, where oneDNN runs "
                        "the cells' depthwise convolutions several times faster in it, off for CUDA")
    g.add_argument("--compile", action="store_true", help="compile the network with torch.compile")
    add_threads_flag(g)
    g.add_argument("--gpu-data", action=argparse.BooleanOptionalAction, default=None,
                   help="keep the whole dataset on the GPU and augment it there in batches (CIFAR-style data); "
                        "default: on when running on CUDA with such data")
    if search:
        g.add_argument("--recompute", action="store_true",
                       help="keep no cell activations for the backward pass but compute them again there: "
                            "a fraction of the memory for about one more forward pass per step (same results)")


def _speed_settings(args: argparse.Namespace) -> dict:
    return {"amp": args.amp, "channels_last": args.channels_last, "compile": args.compile,
            "gpu_data": args.gpu_data, **({"recompute": args.recompute} if "recompute" in args else {})}


def _repeated_on_this_rank(exc: DartsNasError) -> bool:
    """Under torchrun every process checks the same settings and raises the same ConfigError:
    only rank 0 prints it. Every other error may be a rank's own (its node's data, its GPU), so
    every rank prints those."""
    rank = os.environ.get("RANK")
    return isinstance(exc, ConfigError) and rank is not None and rank != "0"


def one_line(exc: BaseException) -> str:
    """The message of one of our errors as one line. An error raised in a DataLoader worker
    process comes back with the worker's traceback in its message: only its last line, the
    original message, is kept."""
    text = str(exc)
    if "Original Traceback" in text:
        last = [line for line in text.splitlines() if line.strip()][-1]
        prefix = f"{type(exc).__module__}.{type(exc).__name__}: "
        text = last[len(prefix):] if last.startswith(prefix) else last
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def _one_line_on_interrupt(main: Callable[..., int]) -> Callable[..., int]:
    """Ctrl-C while a command starts (parsing, importing torch) ends it with one line and status
    130, like Ctrl-C during a run, instead of a traceback."""

    @functools.wraps(main)
    def wrapper(argv: Sequence[str] | None = None) -> int:
        try:
            return main(argv)
        except KeyboardInterrupt:
            print_error("interrupted while starting: nothing was trained; run the command again")
            return 130

    return wrapper


def _run(run, make_config, quiet: bool, resume_only: bool = False) -> int:
    """Call ``run(make_config())``; our own errors (invalid settings included) become one line on
    stderr and exit status 2; a graceful stop says how to resume and exits with 128 + the signal."""
    config = None
    try:
        config = make_config()
        _pick_threads(config)
        run(config, quiet=quiet, **({"resume_only": True} if resume_only else {}))
    except RunStopped as exc:
        print(str(exc), file=sys.stderr, flush=True)
        return exc.exit_code
    except DartsNasError as exc:
        if not _repeated_on_this_rank(exc):
            print_error(one_line(exc))
        return 2
    except KeyboardInterrupt as exc:  # before the run's own handlers, or a second signal while stopping
        print_error(_interrupted(str(exc) or "interrupted", config))
        return getattr(exc, "exit_code", 130)
    except OSError as exc:  # a last resort: darts-nas names the files it writes itself
        print_error(f"{exc.strerror or exc}{f' ({exc.filename})' if exc.filename else ''}: check that the file "
                    f"or directory exists and is writable, and that the disk has free space")
        return 2
    return 0


def _pick_threads(config) -> None:
    """The CPU thread count for this run's sizes when none was chosen (darts_nas.cpu_threads)."""
    from .data import get_info

    try:
        side = config.image_size or get_info(config.dataset, config.data, None).image_size
    except (DartsNasError, OSError):
        return  # the run itself says what is wrong with the dataset
    apply_default_threads(config.batch_size, config.init_channels, side)


def _interrupted(reason: str, config) -> str:
    """The line for a Ctrl-C that reached the command: whether there is anything to resume."""
    out = getattr(config, "out", None)
    if out is not None and _has_checkpoints(Path(out)):
        return (f"{reason}; the checkpoints already written are intact: run the same command again to resume "
                f"from the newest one")
    return f"{reason} before the first checkpoint was written: run the same command again to start the run"


def _has_checkpoints(out: Path) -> bool:
    from .checkpoint import numbered_checkpoints

    try:
        return out.is_dir() and bool(numbered_checkpoints(out))
    except OSError:
        return False


def _start(kind: str, args: argparse.Namespace):
    """What both commands do once their arguments parse: set up the CPU threads (before torch is
    loaded: see darts_nas.cpu_threads), then import the run's module (darts_nas.search or
    darts_nas.train). None after a Ctrl-C during the import, which prints one line."""
    configure_cpu(args.threads)
    try:
        return importlib.import_module(f"{__package__}.{kind}")
    except KeyboardInterrupt:
        print_error(f"{command(kind)} interrupted while starting up: nothing was written")
        return None


# Flags whose destination is not the config field of the same name.
_FIELD_OF_FLAG = {"ops": "primitives", "no_tensorboard": "tensorboard", "no_edge_normalization": "edge_normalization"}


def _given_flags(build_parser: Callable[[], argparse.ArgumentParser], argv: Sequence[str] | None) -> set[str]:
    """The config fields set by flags actually given on the command line."""
    parser = build_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
        action.required = False
    given = vars(parser.parse_args(argv))
    return {_FIELD_OF_FLAG.get(dest, dest) for dest in given}


def comparison_pending(path: Path, saved: dict[str, Any], finished: str) -> bool:
    """Whether the finished training in ``path`` still lacks the ``--compare`` part it was run with."""
    if not saved.get("compare"):
        return False
    try:
        return "comparison" not in json.loads((path / finished).read_text())
    except (OSError, ValueError, TypeError):
        return False


def resumed_config(run_dir: str, kind: str, given: set[str], from_flags, finished: str, may_change: set[str]):
    """The settings of the unfinished ``kind`` run in ``run_dir`` (its config.json), with the flags
    given alongside ``--resume`` applied where they may change. Refuses, with the fix, a directory
    that holds nothing to resume."""
    from .checkpoint import numbered_checkpoints
    from .resume import checkpoint_settings
    from .runtime import run_kind

    title, other_title = ("search", "training run") if kind == "search" else ("training run", "search")
    other_script = command("train" if kind == "search" else "search")
    path = Path(run_dir)
    if not path.is_dir():
        raise RunDirError(f"--resume {path}: no such run directory: give the --out directory of the run to resume")
    if "overwrite" in given:
        raise ConfigError("--resume continues a run and --overwrite starts one afresh: pass only one of them")
    if "out" in given and str(Path(from_flags.out)) != str(path):
        raise ConfigError(f"--resume {path} is the run directory: leave out --out {from_flags.out}")
    try:
        saved: dict[str, Any] = json.loads((path / "config.json").read_text())["config"]
        if not isinstance(saved, dict):
            raise TypeError("the settings are not a JSON object")
    except FileNotFoundError:
        saved = checkpoint_settings(path)  # a checkpoint carries its settings: config.json may be gone
        if saved is None:
            raise RunDirError(f"--resume {path}: the directory holds no run (no config.json): give the --out "
                              f"directory of an interrupted {title}") from None
    except (ValueError, KeyError, TypeError, OSError):
        raise RunDirError(f"--resume {path}: its config.json is unreadable, so the run cannot be resumed: start it "
                          f"again with its command and --overwrite") from None
    if run_kind(saved) != kind:
        raise RunDirError(f"--resume {path}: it holds a {other_title}, not a {title}: resume it with "
                          f"{other_script} --resume {path}")
    if (path / finished).exists() and not comparison_pending(path, saved, finished):
        raise RunDirError(f"--resume {path}: it holds a finished {title} ({finished} is there): nothing to resume; "
                          f"choose another --out for a new run")
    if not numbered_checkpoints(path) and not (path / "checkpoint.pt").is_file():
        raise RunDirError(f"--resume {path}: it holds no checkpoint to resume from (the run stopped before its "
                          f"first one): start it again with its command and --out {path} --overwrite")
    wanted = from_flags.to_dict()
    refused = [f"--{name.replace('_', '-')} ({saved.get(name)!r} -> {wanted[name]!r})"
               for name in sorted(given & set(wanted) - may_change) if wanted[name] != saved.get(name)]
    if refused:
        raise ConfigError(f"cannot change {', '.join(refused)} when resuming {path}: that would change the model "
                          f"or the data; drop the flag to resume, or start a new run with another --out")
    # "overwrite" as saved would be the first attempt's --overwrite: resuming never starts afresh.
    settings = {**saved, **{name: wanted[name] for name in given & set(wanted) & may_change}, "out": str(path),
                "overwrite": False}
    try:
        return type(from_flags).from_dict(settings)
    except (TypeError, ValueError, AttributeError) as exc:  # a value of the wrong type in config.json
        raise RunDirError(f"--resume {path}: its config.json holds a setting this version cannot use ({exc}): fix "
                          f"the file, or start the run again with its command and --overwrite") from None


@_one_line_on_interrupt
def search_main(argv: Sequence[str] | None = None) -> int:
    args = build_search_parser().parse_args(argv)
    if args.preset is not None and args.preset.strip().lower() == "list":
        print(describe_presets())
        return 0
    search = _start("search", args)
    if search is None:
        return 130
    run, RESUMABLE_CHANGES, RESUME_LEARNING_RATES = search.run, search.RESUMABLE_CHANGES, search.RESUME_LEARNING_RATES
    given = _given_flags(build_search_parser, argv)
    if args.seeds is not None and args.resume is not None:
        print_error("--resume continues one run: to continue a --seeds run, run its command again")
        return 2
    if args.resume is None:
        return _run(_over_seeds(run, args, "search", given), lambda: search_config_from_args(args, given), args.quiet)
    if args.preset is not None:
        print_error("--resume continues a run with its recorded settings: leave out --preset")
        return 2
    return _run(run, lambda: resumed_config(args.resume, "search", given, search_config_from_args(args),
                                            "summary.json", RESUMABLE_CHANGES | RESUME_LEARNING_RATES),
                args.quiet, resume_only=True)


def build_train_parser() -> argparse.ArgumentParser:
    from .config import PROTOCOLS

    p = _parser("Retrain a genotype from scratch: build the network that stacks its cell and train it "
                "under the DARTS paper's CIFAR or ImageNet (mobile) protocol, reporting test accuracy, "
                "parameters and multiply-adds. Every protocol setting can be overridden by its flag; "
                "a flag not given takes the chosen protocol's value, shown as [cifar: ..., imagenet: ...].",
                "train")
    p.add_argument(*_flag("--cell", "--arch"), default=None,
                   help="the genotype (required unless --resume): a JSON file, a search run directory, a name from "
                        "cells/ (darts_v2, pdarts, ...; any case, - or _) or genotype text")
    p.add_argument("--space", choices=["darts", "nas-bench-201", "proxyless"], default="darts",
                   help="the genotype's space: darts, or nas-bench-201 (--cell is an arch string "
                        "|op~0|+|op~0|op~1|+|op~0|op~1|op~2|, trained as the benchmark's 17-block network under "
                        "--protocol nas-bench-201; its params and FLOPs are also given as the benchmark counts them), "
                        "or proxyless (--cell is a chain, a --space proxyless search run or proxyless_mobile, trained "
                        "under --protocol proxyless; --init-channels is the stem width, 32 being multiplier 1)")
    p.add_argument("--protocol", choices=sorted(PROTOCOLS), default=None,
                   help="cifar: 20 cells, C=36, 600 epochs, batch 96, cutout, drop-path 0.2 (default for --space "
                        "darts); imagenet: 14 cells, C=48, 250 epochs, batch 128, lr 0.1 x0.97/epoch, label smoothing "
                        "0.1; nas-bench-201 (the default and only protocol for --space nas-bench-201): 15 cells, C=16, "
                        "200 epochs, batch 256, SGD Nesterov lr 0.1 cosine to 0, weight decay 5e-4, crop and flip; "
                        "proxyless (the "
                        "default and only protocol for --space proxyless): ProxylessNAS's training, 300 epochs, batch "
                        "256, SGD Nesterov lr 0.05 cosine, weight decay 4e-5, label smoothing 0.1")
    p.add_argument("--compare", action="append", default=[], metavar="CELL",
                   help="also train this cell under identical settings (in <out>/compare-<name>) and print "
                        "both results side by side; repeatable")

    g = p.add_argument_group("data")
    g.add_argument("--dataset", default=None,
                   help="cifar10 (cifar protocol), imagenet (imagenet protocol: train/ and val/ class folders), "
                        "cifar100, mnist, fashion-mnist, svhn, folder, digits, imagenet16-120, cifar10-valid (trains "
                        "on the first half of CIFAR-10's training set, tests on the second), cifar100-xvalid, "
                        "cifar100-xtest, imagenet16-120-xvalid, imagenet16-120-xtest (trains on the training set, "
                        "tests on the benchmark's x-valid or x-test half of the test set)")
    g.add_argument("--data", default="data", help="directory that holds the dataset")
    g.add_argument("--download", action="store_true", help="download the dataset into --data if it is missing")
    g.add_argument(*_flag("--image-size", "--image_size"), type=int, default=None,
                   help="image side for folder (default 32) and imagenet (default 224) datasets")
    g.add_argument("--workers", type=int, default=0, help="data-loading worker processes")

    g = p.add_argument_group("network")
    g.add_argument("--network", default=None, help="network kind: cifar or imagenet")
    g.add_argument(*_flag("--init-channels", "--init_channels"), type=int, default=None, help="channels C of the first cell")
    g.add_argument("--layers", type=int, default=None, help="number of cells")
    g.add_argument("--auxiliary", action=argparse.BooleanOptionalAction, default=None,
                   help="auxiliary head after the second reduction cell")
    g.add_argument(*_flag("--auxiliary-weight", "--auxiliary_weight"), type=float, default=None,
                   help="weight of the auxiliary loss")
    g.add_argument(*_flag("--drop-path-prob", "--drop_path_prob"), type=float, default=None,
                   help="final drop-path probability, ramped linearly from 0 over the epochs")

    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=None, help="training epochs; 0 builds the network, reports its sizes and exits")
    g.add_argument(*_flag("--batch-size", "--batch_size"), type=int, default=None,
                   help="batch size; under torchrun the global batch, split evenly over the processes")
    g.add_argument(*_flag("--learning-rate", "--learning_rate"), type=float, default=None, help="initial SGD learning rate")
    g.add_argument("--lr-schedule", choices=["cosine", "step"], default=None,
                   help="cosine annealing to --learning-rate-min, or multiply by --lr-decay every epoch")
    g.add_argument(*_flag("--learning-rate-min", "--learning_rate_min"), type=float, default=None,
                   help="final learning rate of the cosine schedule")
    g.add_argument(*_flag("--lr-decay", "--decay_rate"), type=float, default=None, help="per-epoch factor of the step schedule")
    g.add_argument("--momentum", type=float, default=None, help="SGD momentum")
    g.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=None,
                   help="Nesterov momentum (on in the nas-bench-201 protocol, off in the others)")
    g.add_argument(*_flag("--weight-decay", "--weight_decay"), type=float, default=None, help="weight decay")
    g.add_argument(*_flag("--grad-clip", "--grad_clip"), type=float, default=None, help="gradient-norm clip (0 disables)")
    g.add_argument(*_flag("--cutout", "--cutout_length"), type=int, default=None,
                   help="cutout square side in pixels, 0 disables (half the image side is 16 at 32x32)")
    g.add_argument(*_flag("--label-smoothing", "--label_smooth"), type=float, default=None,
                   help="label smoothing of the cross-entropy")

    g = p.add_argument_group("run")
    g.add_argument("--seed", type=int, default=0, help="random seed, 0 to 2**32-1")
    _add_seeds_flag(g)
    g.add_argument("--folds", type=int, default=None, metavar="K",
                   help="cross-validated evaluation: deal the train split into K stratified folds (seeded by "
                        "--seed) and train K models, model i in <out>/fold-<i> on all folds but i, tested on fold i "
                        "and on the test split; then <out>/summary.json holds the mean and sample std of the "
                        "held-out accuracy and each fold's test accuracy (resumable as --seeds); needs --out")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    g.add_argument(*_flag("--out", "--save"), default=None,
                   help="run directory (default: runs/train-<dataset>-<time>); one run at a time may use it (a lock)")
    g.add_argument("--overwrite", action="store_true",
                   help="replace a finished run in --out, or an unfinished one with other settings (an "
                        "unfinished run with the same settings is resumed)")
    g.add_argument(*_flag("--report-every", "--report_freq"), type=int, default=50, help=_REPORT_HELP)
    g.add_argument("--steps-per-epoch", type=int, default=None, metavar="N",
                   help="stop each epoch after N steps (smoke tests; default: the whole training set)")
    g.add_argument("--quiet", action="store_true", help="log to <out>/log.txt only")
    g.add_argument("--no-tensorboard", action="store_true",
                   help="write no TensorBoard event files into the run directory (on by default)")
    g.add_argument("--keep-checkpoints", type=int, default=None,
                   help="keep the newest N checkpoints (default 2; those inside an epoch count too); an interrupted "
                        "run resumes from the newest valid one when the same command is run again")
    _add_resume_flags(g, command("train"))
    _add_speed_flags(p)
    _show_protocol_values(p, PROTOCOLS)
    return p


def _show_protocol_values(parser: argparse.ArgumentParser, protocols: dict[str, dict[str, Any]]) -> None:
    """Append each protocol's value to the help of the flags that take it when not given."""
    def shown(value: Any) -> str:
        if value is None:
            return "half the image side"
        if isinstance(value, bool):
            return "on" if value else "off"
        return str(value)

    for action in parser._actions:
        if action.help and action.default is None and all(action.dest in values for values in protocols.values()):
            values = ", ".join(f"{name}: {shown(settings[action.dest])}" for name, settings in protocols.items())
            action.help += f" [{values}]"


def train_config_from_args(args: argparse.Namespace):
    from .config import TrainConfig

    space = getattr(args, "space", "darts")
    protocol = args.protocol or (space if space in ("nas-bench-201", "proxyless") else "cifar")
    if (space == "proxyless") != (protocol == "proxyless"):
        raise ConfigError(f"--space {space} does not train under --protocol {protocol}: ProxylessNAS chains train "
                          f"under --protocol proxyless (the default with --space proxyless) and only they do")
    if space == "proxyless" and args.layers is not None:
        raise ConfigError("a ProxylessNAS chain's depth is its genotype's: drop --layers (--init-channels scales "
                          "its widths)")
    if (space == "nas-bench-201") != (protocol == "nas-bench-201"):
        raise ConfigError(f"--space {space} does not train under --protocol {protocol}: NAS-Bench-201 cells train "
                          f"under --protocol nas-bench-201 (the default with --space nas-bench-201), DARTS cells "
                          f"under cifar or imagenet")
    return TrainConfig.for_protocol(
        protocol, cell=args.cell, compare=tuple(args.compare), dataset=args.dataset, data=args.data,
        download=args.download, image_size=args.image_size, workers=args.workers, network=args.network,
        init_channels=args.init_channels, layers=args.layers, auxiliary=args.auxiliary,
        auxiliary_weight=args.auxiliary_weight, drop_path_prob=args.drop_path_prob, epochs=args.epochs,
        batch_size=args.batch_size, learning_rate=args.learning_rate, lr_schedule=args.lr_schedule,
        learning_rate_min=args.learning_rate_min, lr_decay=args.lr_decay, momentum=args.momentum,
        nesterov=args.nesterov, weight_decay=args.weight_decay, grad_clip=args.grad_clip, cutout=args.cutout,
        label_smoothing=args.label_smoothing, seed=args.seed, device=args.device, out=args.out,
        overwrite=args.overwrite, report_every=args.report_every, steps_per_epoch=args.steps_per_epoch,
        tensorboard=False if args.no_tensorboard else None, keep_checkpoints=args.keep_checkpoints,
        checkpoint_every=args.checkpoint_every, checkpoint_minutes=args.checkpoint_minutes,
        folds=getattr(args, "folds", None), **_speed_settings(args),
    )


def _over_folds(run, args: argparse.Namespace):
    """``run``, or with ``--folds K`` a run of every fold followed by the aggregate (darts_nas.repeat)."""
    if args.folds is None:
        return run
    from .repeat import run_folds

    return lambda config, quiet=False, **kw: run_folds(run, config, quiet=quiet, **kw)


@_one_line_on_interrupt
def train_main(argv: Sequence[str] | None = None) -> int:
    parser = build_train_parser()
    args = parser.parse_args(argv)
    if args.cell is None and args.resume is None:
        parser.error("the following arguments are required: --cell (or --resume RUN_DIR)")
    train = _start("train", args)
    if train is None:
        return 130
    run, FINISHED = train.run, train.FINISHED
    RESUMABLE_CHANGES, RESUME_LEARNING_RATES = train.RESUMABLE_CHANGES, train.RESUME_LEARNING_RATES
    given = _given_flags(build_train_parser, argv)
    if (args.seeds is not None or args.folds is not None) and args.resume is not None:
        print_error("--resume continues one run: to continue a --seeds or --folds run, run its command again")
        return 2
    if args.seeds is not None and args.folds is not None:
        print_error("--seeds and --folds both given: cross-validate with one seed per command (--seed S --folds K "
                    "--out PARENT-S)")
        return 2
    if args.resume is None:
        return _run(_over_folds(_over_seeds(run, args, "train", given), args), lambda: train_config_from_args(args),
                    args.quiet)
    return _run(run, lambda: resumed_config(args.resume, "train", given, train_config_from_args(args),
                                            FINISHED, RESUMABLE_CHANGES | RESUME_LEARNING_RATES),
                args.quiet, resume_only=True)
