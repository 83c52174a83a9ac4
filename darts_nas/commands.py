"""The names of the two commands, as the user started them.

``pip install`` puts ``darts-search`` and ``darts-train`` on the PATH; a clone runs
``train_search.py`` and ``train_final.py``. Messages that tell a user what to run next (resume a
run, open the other kind of run) name the form the user is using. Importable without torch.
"""

from __future__ import annotations

import sys
from pathlib import Path

SCRIPTS = {"search": "train_search.py", "train": "train_final.py"}
CONSOLE_SCRIPTS = {"search": "darts-search", "train": "darts-train"}


def command(kind: str) -> str:
    """``darts-search``/``darts-train`` when this process was started as one of the console
    scripts, else ``train_search.py``/``train_final.py``; ``kind`` is "search" or "train"."""
    started_as = Path(sys.argv[0] if sys.argv else "").name.removesuffix(".exe")
    if started_as in CONSOLE_SCRIPTS.values():
        return CONSOLE_SCRIPTS[kind]
    return SCRIPTS[kind]
