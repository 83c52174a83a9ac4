"""Repeated runs: one protocol run once per seed, and the spread of its results.

``--seeds 1,2,3 --out PARENT`` runs the search (or the retraining) once per seed, each in its own
run directory ``PARENT/seed-<n>`` that resumes like any run, then writes ``PARENT/summary.json``:
mean, sample standard deviation (n - 1 in the denominator), min, max, n and each seed's value of
the headline metrics. The aggregate is rebuilt from whatever seed directories hold a finished run
(:func:`aggregate`), so seeds run as separate jobs (``--seeds 4 --out PARENT`` each) can be
collected afterwards with ``darts-report --aggregate PARENT``.

``train_final.py --folds K --out PARENT`` (cross-validated evaluation) is the same with folds for
seeds: ``PARENT/fold-<i>`` trains on every fold of the train split but fold i (K stratified folds
seeded by ``--seed``, the same for every i) and tests on fold i as well as on the test split; the
aggregate's headline is the held-out accuracy (``final_heldout_acc``), with each fold's test
accuracy beside it.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any, Callable, Sequence

from .errors import ConfigError, RunDirError

AGGREGATE_FILE = "summary.json"
# What marks a finished run of each kind (darts_nas.runtime.FINISHED_MARKER, darts_nas.train.FINISHED),
# and the numbers of it that are aggregated; the first is the headline.
FINISHED = {"search": "summary.json", "train": "metrics.json"}
METRICS = {"search": ("valid_acc", "valid_loss"),
           "train": ("final_test_acc", "final_test_loss", "best_test_acc")}
# ... and of a --folds parent: the held-out fold's accuracy first
FOLD_METRICS = ("final_heldout_acc", "final_heldout_loss", "final_test_acc", "best_test_acc")
STD_KIND = "sample standard deviation (n - 1 in the denominator); null when n = 1"
# Settings that differ between the seeds of one protocol without making it another protocol.
_PER_RUN = {"seed", "out", "overwrite", "data", "download", "workers", "device", "report_every", "tensorboard",
            "keep_checkpoints", "checkpoint_every", "checkpoint_minutes", "amp", "channels_last", "compile",
            "gpu_data", "recompute", "compare"}
_SEED_DIR = re.compile(r"^seed-(\d+)$")
# What one run of a parent is told apart by: its --seeds seed, or its --folds fold.
_UNIT_DIR = {"seed": _SEED_DIR, "fold": re.compile(r"^fold-(\d+)$")}


def parse_seeds(text: str) -> tuple[int, ...]:
    """``"1,2,3"`` -> (1, 2, 3); a clear error for anything else (empty, repeated, out of range)."""
    seeds = []
    for part in (p.strip() for p in text.split(",")):
        if not re.fullmatch(r"\d+", part) or int(part) > 2**32 - 1:
            raise ConfigError(f"--seeds {text!r}: {part!r} is not a seed: give comma-separated integers from 0 to "
                              f"2**32-1, e.g. --seeds 1,2,3")
        if int(part) in seeds:
            raise ConfigError(f"--seeds {text!r}: seed {int(part)} is given twice: give each seed once")
        seeds.append(int(part))
    return tuple(seeds)


def seed_dir(parent: str | Path, seed: int) -> Path:
    return Path(parent) / f"seed-{seed}"


def fold_dir(parent: str | Path, fold: int) -> Path:
    return Path(parent) / f"fold-{fold}"


def _units(parent: Path) -> tuple[str, list[int]]:
    """("seed", seeds) or ("fold", folds): the run directories of a --seeds or --folds parent."""
    found = {unit: sorted(int(m.group(1)) for m in map(pattern.match, os.listdir(parent))
                          if m and (parent / m.group(0)).is_dir())
             for unit, pattern in _UNIT_DIR.items()}
    if found["seed"] and found["fold"]:
        raise RunDirError(f"{parent} holds both seed-<n> and fold-<i> run directories: a parent holds the runs of "
                          f"one --seeds or one --folds command; move one kind out")
    if not found["seed"] and not found["fold"]:
        raise RunDirError(f"{parent} holds no seed-<n> or fold-<i> run directories: give the --out directory of a "
                          f"--seeds or --folds run")
    return ("fold", found["fold"]) if found["fold"] else ("seed", found["seed"])


def summarise(values: Sequence[float]) -> dict[str, Any]:
    """mean, std (sample: n - 1), min, max and n of ``values`` (None for what n does not define)."""
    n = len(values)
    mean = sum(values) / n if n else None
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return {"mean": mean, "std": std, "min": min(values) if n else None, "max": max(values) if n else None, "n": n}


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _protocol(settings: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in settings.items() if k not in _PER_RUN}


def aggregate(parent: str | Path) -> dict[str, Any]:
    """The aggregate of the finished runs in ``parent/seed-<n>`` (or ``parent/fold-<i>``), written
    to ``parent/summary.json`` by :func:`write_aggregate`. Runs that have not finished are listed
    as unfinished."""
    parent = Path(parent)
    if not parent.is_dir():
        raise RunDirError(f"{parent}: no such directory: give the --out directory of a --seeds or --folds run")
    unit, members = _units(parent)
    kind = protocol = None
    finished: dict[int, dict[str, Any]] = {}
    unfinished = []
    for member in members:
        path = parent / f"{unit}-{member}"
        saved = _read_json(path / "config.json")
        settings = saved.get("config") if isinstance(saved, dict) else None
        if not isinstance(settings, dict):
            unfinished.append(member)
            continue
        from .runtime import run_kind

        this_kind = run_kind(settings)
        summary = _read_json(path / FINISHED[this_kind])
        if not isinstance(summary, dict) or not summary.get("finished"):
            unfinished.append(member)
            continue
        settings = {k: v for k, v in settings.items() if k != unit}
        if kind is None:
            kind, protocol, first = this_kind, _protocol(settings), member
        elif this_kind != kind or _protocol(settings) != protocol:
            theirs = _protocol(settings)
            diff = sorted(k for k in set(theirs) | set(protocol) if theirs.get(k) != protocol.get(k))
            raise RunDirError(f"{path} was run with other settings than {parent / f'{unit}-{first}'} "
                              f"({', '.join(diff) or 'the script'} differ): the {unit}s of one aggregate must "
                              f"share their protocol; move it out of {parent}")
        finished[member] = summary
    names = FOLD_METRICS if unit == "fold" else METRICS.get(kind, ())
    result = {"kind": "aggregate", "unit": unit, "run_kind": kind, f"{unit}s": members, "finished": sorted(finished),
              "unfinished": unfinished, "std": STD_KIND, "metrics": {}}
    if kind is None:
        return result
    metrics = {}
    for name in names:
        values = {m: float(v) for m, r in finished.items() if isinstance(v := r.get(name), (int, float))}
        metrics[name] = {**summarise(list(values.values())), "values": {str(m): v for m, v in values.items()}}
    return {**result, "headline": names[0], "settings": protocol, "metrics": metrics}


def write_aggregate(parent: str | Path) -> dict[str, Any]:
    """:func:`aggregate`, written to ``parent/summary.json`` (atomically: a job reading it while another
    rewrites it sees the old or the new file, never half of one)."""
    result = aggregate(parent)
    target = Path(parent) / AGGREGATE_FILE
    tmp = target.with_name(f".{AGGREGATE_FILE}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(result, indent=2, sort_keys=True))
    os.replace(tmp, target)
    return result


def describe(result: dict[str, Any]) -> str:
    """One line: the headline's mean ± std over n seeds (or folds)."""
    unit = result.get("unit", "seed")
    if not result["finished"]:
        return f"no {unit} has finished yet (unfinished: {', '.join(map(str, result['unfinished']))})"
    name = result["headline"]
    m = result["metrics"][name]
    std = "n/a" if m["std"] is None else f"{m['std']:.2f}"
    rest = f"; unfinished: {', '.join(map(str, result['unfinished']))}" if result["unfinished"] else ""
    return (f"{name} {m['mean']:.2f} ± {std} (sample std) over {m['n']} {unit}s, min {m['min']:.2f}, "
            f"max {m['max']:.2f}{rest}")


def run_seeds(run: Callable[..., Any], config, seeds: Sequence[int], kind: str, quiet: bool = False,
              resume_only: bool = False) -> dict[str, Any]:
    """Run ``config`` once per seed in ``config.out/seed-<n>``: a seed whose run finished with the
    same settings is skipped, an unfinished one resumed (by ``run`` itself). Then the aggregate is
    written (by rank 0 under torchrun) and returned."""
    return _run_each(run, config, "seed", seeds, kind, quiet, resume_only)


def run_folds(run: Callable[..., Any], config, quiet: bool = False, resume_only: bool = False) -> dict[str, Any]:
    """Cross-validated evaluation (``train_final.py --folds K``): ``config`` trained once per fold
    i in ``config.out/fold-<i>`` on the other K - 1 folds and tested on fold i, then the aggregate
    of the held-out accuracies, as :func:`run_seeds` does per seed."""
    return _run_each(run, config, "fold", range(config.folds), "train", quiet, resume_only)


def _run_each(run: Callable[..., Any], config, unit: str, members: Sequence[int], kind: str, quiet: bool,
              resume_only: bool) -> dict[str, Any]:
    flag = f"--{unit}s"
    if config.out is None:
        raise ConfigError(f"{flag} needs --out PARENT: each {unit} runs in PARENT/{unit}-<n>, and running the same "
                          f"command again continues the unfinished {unit}s")
    parent = Path(config.out)
    if (parent / "config.json").exists():
        raise RunDirError(f"{parent} holds a single run (config.json): choose another --out for the {unit}s")
    ignore = _PER_RUN - {"seed"}
    from .distributed import session
    from .runtime import settings_differences

    # Under torchrun one process group serves every run (each run's own session joins it): a group
    # cannot be created again in the same processes once destroyed.
    with session(getattr(config, "device", "auto")):
        for member in members:
            this = config.replace(**{unit: member}, out=str(parent / f"{unit}-{member}"))
            done = Path(this.out) / FINISHED[kind]
            saved = _read_json(Path(this.out) / "config.json")
            if (done.exists() and isinstance(saved, dict) and isinstance(saved.get("config"), dict)
                    and not this.overwrite):
                wanted = {k: v for k, v in this.to_dict().items() if v is not None}  # None: resolved by the run
                differences = settings_differences({k: v for k, v in saved["config"].items() if k in wanted},
                                                   wanted, ignore)
                if differences:
                    raise RunDirError(f"{this.out} holds a finished run with other settings "
                                      f"({'; '.join(differences)}): choose another --out, or pass --overwrite to "
                                      f"run every {unit} again")
                if not quiet:
                    print(f"{unit} {member}: {this.out} holds its finished run: skipped", flush=True)
                continue
            run(this, quiet=quiet, **({"resume_only": True} if resume_only else {}))
    if os.environ.get("RANK", "0") != "0":
        return aggregate(parent)
    result = write_aggregate(parent)
    print(f"{len(result['finished'])} of {len(members)} {unit}s aggregated into {parent / AGGREGATE_FILE}: "
          f"{describe(result)}", flush=True)
    return result
