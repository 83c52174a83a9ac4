#!/usr/bin/env python
"""Retrain a genotype under the DARTS paper's protocols. ``python train_final.py --help`` lists every flag."""

import sys

if __name__ == "__main__":
    try:
        from darts_nas.cli import train_main  # imports torch: seconds in which Ctrl-C may come
    except KeyboardInterrupt:
        print("error: interrupted while starting: nothing was trained; run the command again", file=sys.stderr)
        sys.exit(130)
    sys.exit(train_main())
