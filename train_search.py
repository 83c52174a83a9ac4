#!/usr/bin/env python
"""DARTS architecture search. ``python train_search.py --help`` lists every flag."""

import sys

from darts_nas.cli import search_main

if __name__ == "__main__":
    sys.exit(search_main())
