"""Command-line entry points: ``train_search.py`` and the ``darts-search`` console script.

Flags are dashed; the original DARTS code's underscore spellings (``--batch_size``,
``--init_channels``, ``--save``, ...) are accepted as aliases.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from .config import SearchConfig
from .errors import DartsNasError
from .tracking import print_error

_DEFAULTS = SearchConfig()


def _flag(name: str, *aliases: str) -> list[str]:
    return [name, *aliases]


def build_search_parser() -> argparse.ArgumentParser:
    d = _DEFAULTS
    p = argparse.ArgumentParser(
        description="DARTS architecture search: train a weight-sharing supernet and its architecture "
                    "parameters (alphas) alternately on two halves of the training data, then derive the "
                    "cell genotype. Defaults are the DARTS paper's CIFAR-10 search protocol.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default=d.dataset,
                   help="cifar10, cifar100, mnist, fashion-mnist, svhn, folder (a directory of class "
                        "subfolders of images) or digits (scikit-learn's 8x8 digits, no download)")
    g.add_argument("--data", default=d.data, help="directory that holds the dataset (for folder: the image directory)")
    g.add_argument("--download", action="store_true", help="download the dataset into --data if it is missing")
    g.add_argument(*_flag("--image-size", "--image_size"), type=int, default=d.image_size,
                   help="side of the square images for --dataset folder (default 32); the named datasets keep their size")
    g.add_argument(*_flag("--train-portion", "--train_portion"), type=float, default=d.train_portion,
                   help="share of the training images used for the weights; the rest train the alphas")
    g.add_argument("--workers", type=int, default=d.workers, help="data-loading worker processes")

    g = p.add_argument_group("search space")
    g.add_argument("--space", default=d.space, help="search space (registered: darts)")
    g.add_argument(*_flag("--init-channels", "--init_channels"), type=int, default=d.init_channels,
                   help="channels of the first cell (C)")
    g.add_argument("--layers", type=int, default=d.layers, help="number of cells; reductions at layers//3 and 2*layers//3")
    g.add_argument(*_flag("--nodes", "--steps"), type=int, default=d.nodes, help="intermediate nodes per cell")
    g.add_argument("--ops", default=",".join(d.primitives),
                   help="comma-separated candidate ops of every edge, in alpha column order")

    g = p.add_argument_group("optimisation")
    g.add_argument("--method", default=d.method, help="search method (registered: darts)")
    g.add_argument("--epochs", type=int, default=d.epochs, help="search epochs")
    g.add_argument(*_flag("--batch-size", "--batch_size"), type=int, default=d.batch_size,
                   help="batch size of each half (weights and architecture)")
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

    g = p.add_argument_group("run")
    g.add_argument("--seed", type=int, default=d.seed, help="random seed (data split, init, shuffling)")
    g.add_argument("--device", default=d.device, help="auto, cpu, cuda or cuda:N")
    g.add_argument(*_flag("--out", "--save"), default=None,
                   help="run directory (default runs/search-<dataset>-<time>)")
    g.add_argument("--overwrite", action="store_true", help="replace the run already in --out")
    g.add_argument(*_flag("--report-every", "--report_freq"), type=int, default=d.report_every,
                   help="print progress every N steps")
    g.add_argument("--steps-per-epoch", type=int, default=None,
                   help="stop each epoch after N steps (smoke tests; default: the whole weight half)")
    g.add_argument("--quiet", action="store_true", help="log to <out>/log.txt only")
    return p


def search_config_from_args(args: argparse.Namespace) -> SearchConfig:
    ops = tuple(op.strip() for op in args.ops.split(",") if op.strip())
    return SearchConfig(
        dataset=args.dataset, data=args.data, download=args.download, image_size=args.image_size,
        train_portion=args.train_portion, workers=args.workers, space=args.space,
        init_channels=args.init_channels, layers=args.layers, nodes=args.nodes, primitives=ops,
        method=args.method, epochs=args.epochs, batch_size=args.batch_size,
        learning_rate=args.learning_rate, learning_rate_min=args.learning_rate_min,
        momentum=args.momentum, weight_decay=args.weight_decay, grad_clip=args.grad_clip,
        arch_learning_rate=args.arch_learning_rate, arch_weight_decay=args.arch_weight_decay,
        unrolled=args.unrolled, seed=args.seed, device=args.device, out=args.out,
        overwrite=args.overwrite, report_every=args.report_every, steps_per_epoch=args.steps_per_epoch,
    )


def search_main(argv: Sequence[str] | None = None) -> int:
    args = build_search_parser().parse_args(argv)
    from .search import run  # imported here so --help stays fast

    try:
        run(search_config_from_args(args), quiet=args.quiet)
    except DartsNasError as exc:
        print_error(str(exc))
        return 2
    except KeyboardInterrupt:
        print_error("interrupted; the last finished epoch's checkpoint.pt and genotype.json are in the run directory")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(search_main())
