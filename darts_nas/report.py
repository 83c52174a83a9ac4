"""``darts-report``: reads search and retraining run directories and --seeds aggregates.

``darts-report --aggregate PARENT`` rebuilds ``PARENT/summary.json`` from whatever ``seed-<n>``
runs in it have finished (seeds run as separate jobs into one parent).
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from . import __version__
from .errors import DartsNasError, print_error


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="darts-report", allow_abbrev=False,
                                description="Aggregate and report darts-nas runs.")
    p.add_argument("--version", action="version", version=f"darts-nas {__version__}")
    p.add_argument("--aggregate", metavar="PARENT", action="append", default=[],
                   help="rebuild PARENT/summary.json (mean, sample std, min, max, each seed's value) from the "
                        "finished PARENT/seed-<n> runs; repeatable")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .repeat import AGGREGATE_FILE, describe, write_aggregate

    if not args.aggregate:
        build_parser().print_usage(sys.stderr)
        print_error("nothing to do: give --aggregate PARENT")
        return 2
    try:
        for parent in args.aggregate:
            result = write_aggregate(parent)
            print(f"{parent}/{AGGREGATE_FILE}: {describe(result)}")
    except DartsNasError as exc:
        print_error(str(exc))
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
