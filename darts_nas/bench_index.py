"""A compact index of a benchmark: ``darts-bench index SRC DST``, converted once, opened in milliseconds.

The NB201 v1_1 file is 4.7 GB and must be unpickled whole (the official API needs ~28 GB of RAM);
the NATS directory costs a file read per architecture. The index is a SQLite file holding, per
architecture, its string and isomorphism class, and per (architecture, hp, dataset) exactly what a
query answers (:data:`darts_nas.bench.SUMMARY_FIELDS`: mean valid/test accuracy over the seeds,
the seeds, params, FLOPs, training and validation time, and each seed's values), for both the 12- and the 200-epoch
results. A lookup reads one row through SQLite's B-tree: opening and querying take milliseconds
and a few hundred KB, whatever the benchmark's size. ``--benchmark`` and ``darts-bench query``
accept it like any other layout and give the same answers (a test checks they are equal).
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Any, Callable

from .arch_string import isomorphism_key
from .bench import DATASETS, HPS, JSON_FIELDS, SUMMARY_FIELDS, Benchmark, _ArchList, open_benchmark, summarize
from .errors import BenchmarkError

FORMAT = "darts-nas benchmark index 1"
_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE archs (idx INTEGER PRIMARY KEY, arch TEXT NOT NULL UNIQUE, unique_id INTEGER NOT NULL,
                    held INTEGER NOT NULL);
CREATE INDEX archs_unique ON archs (unique_id);
CREATE TABLE results (idx INTEGER NOT NULL, hp TEXT NOT NULL, dataset TEXT NOT NULL, seeds TEXT NOT NULL,
                      valid_acc REAL, test_acc REAL, params REAL, flop REAL, train_time REAL, valid_time REAL,
                      per_seed TEXT NOT NULL, PRIMARY KEY (idx, hp, dataset)) WITHOUT ROWID;
"""


def build_index(src: str | Path, dst: str | Path, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Write the index of the benchmark at ``src`` to ``dst`` (atomically: a temporary file is
    renamed at the end). Returns what it wrote: counts of architectures and result rows."""
    dst = Path(dst).expanduser()
    if dst.is_dir():
        raise BenchmarkError(f"{dst} is a directory: give the index file to write, e.g. {dst / 'nb201.index'}")
    if not dst.parent.is_dir():
        raise BenchmarkError(f"{dst.parent} does not exist: create it or give another index path")
    bench = open_benchmark(src)
    if not isinstance(bench, _ArchList):
        raise BenchmarkError(f"{src} is already an index: copy it instead")
    archs = bench.all_archs()
    tmp = dst.with_name(f".{dst.name}.tmp")
    tmp.unlink(missing_ok=True)
    rows = held = 0
    con = sqlite3.connect(tmp)
    try:
        con.executescript(_SCHEMA)
        first: dict[str, int] = {}
        for i, arch in enumerate(archs):
            unique_id = first.setdefault(isomorphism_key(arch), i)
            holds = bench.holds(i)
            held += holds
            con.execute("INSERT INTO archs VALUES (?, ?, ?, ?)", (i, arch, unique_id, int(holds)))
            if holds:
                record = bench.record(i)
                for hp in (h for h in HPS if h in record):
                    for dataset in DATASETS:
                        try:
                            s = summarize(record[hp], dataset, hp, i)
                        except BenchmarkError as exc:
                            if "was not evaluated on" in str(exc):
                                continue  # e.g. a 12-epoch record without cifar10-valid runs
                            raise
                        con.execute(f"INSERT INTO results VALUES (?, ?, ?{', ?' * len(SUMMARY_FIELDS)})",
                                    (i, hp, dataset, *(json.dumps(s[k]) if k in JSON_FIELDS else s[k]
                                                       for k in SUMMARY_FIELDS)))
                        rows += 1
            if progress and (i + 1) % 1000 == 0:
                progress(f"indexed {i + 1:,} of {len(archs):,} architectures")
        written = {"format": FORMAT, "source": str(Path(src).expanduser().resolve()), "archs": len(archs),
                   "held": held, "rows": rows}
        con.executemany("INSERT INTO meta VALUES (?, ?)", [(k, str(v)) for k, v in written.items()])
        con.commit()
    finally:
        con.close()
    os.replace(tmp, dst)
    return {"index": str(dst), **written}


class BenchmarkIndex(Benchmark):
    """An index written by :func:`build_index`, read through SQLite (read-only)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        self.source = str(self.path)
        try:
            self.con = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True)
            meta = dict(self.con.execute("SELECT key, value FROM meta"))
            self.count = self.con.execute("SELECT COUNT(*) FROM archs").fetchone()[0]
        except sqlite3.Error as exc:
            raise BenchmarkError(f"{self.path} is not a readable darts-bench index ({exc}): write it again with "
                                 f"darts-bench index SRC {self.path}") from None
        if meta.get("format") != FORMAT:
            raise BenchmarkError(f"{self.path} is a SQLite file but not a darts-bench index ({FORMAT}): write one "
                                 f"with darts-bench index SRC DST")

    def _one(self, sql: str, *args: Any) -> Any:
        try:
            return self.con.execute(sql, args).fetchone()
        except sqlite3.Error as exc:
            raise BenchmarkError(f"{self.path} cannot be read ({exc}): write it again with darts-bench index") from None

    def index_of(self, text: str) -> int:
        row = self._one("SELECT idx FROM archs WHERE arch = ?", text)
        if row is None:
            raise BenchmarkError(f"{text} is not among the {self.count:,} architectures of {self.source}: the index "
                                 f"is incomplete; write it again with darts-bench index")
        return row[0]

    def arch_at(self, index: int) -> str:
        return self._one("SELECT arch FROM archs WHERE idx = ?", index)[0]

    def all_archs(self) -> list[str]:
        return [a for (a,) in self.con.execute("SELECT arch FROM archs ORDER BY idx")]

    def holds(self, index: int) -> bool:
        return bool(self._one("SELECT held FROM archs WHERE idx = ?", index)[0])

    def isomorphic(self, index: int) -> list[int]:
        return [i for (i,) in self.con.execute(
            "SELECT idx FROM archs WHERE unique_id = (SELECT unique_id FROM archs WHERE idx = ?) ORDER BY idx",
            (index,))]

    def summary(self, index: int, dataset: str, hp: str) -> dict[str, Any]:
        row = self._one(f"SELECT {', '.join(SUMMARY_FIELDS)} FROM results WHERE idx = ? AND hp = ? AND dataset = ?",
                        index, hp, dataset)
        if row is None:
            done = [d for (d,) in self.con.execute("SELECT dataset FROM results WHERE idx = ? AND hp = ?", (index, hp))]
            raise BenchmarkError(f"architecture {index} was not evaluated on {dataset} at {hp} epochs (it was on: "
                                 f"{', '.join(done) or 'nothing'})")
        return {k: json.loads(v) if k in JSON_FIELDS else v for k, v in zip(SUMMARY_FIELDS, row)}
