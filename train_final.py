#!/usr/bin/env python
"""Retrain a genotype under the DARTS paper's protocols. ``python train_final.py --help`` lists every flag."""

import sys

from darts_nas.cli import train_main

if __name__ == "__main__":
    sys.exit(train_main())
