"""Console and file logging of a run."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any


class RunLog:
    """Prints progress to the console and appends the same lines to ``<out>/log.txt``;
    appends metric records to JSON-lines files of the run directory."""

    def __init__(self, out: Path, quiet: bool = False) -> None:
        self.out = out
        self.quiet = quiet
        self._log = open(out / "log.txt", "a", encoding="utf-8")

    def info(self, message: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {message}"
        if not self.quiet:
            print(line, flush=True)
        self._log.write(line + "\n")
        self._log.flush()

    def append_jsonl(self, name: str, record: dict[str, Any]) -> None:
        with open(self.out / name, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")

    def close(self) -> None:
        self._log.close()


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def print_error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
