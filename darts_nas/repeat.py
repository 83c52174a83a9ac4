"""Repeated runs: one protocol run once per seed, and the spread of its results.

``--seeds 1,2,3 --out PARENT`` runs the search (or the retraining) once per seed, each in its own
run directory ``PARENT/seed-<n>`` that resumes like any run, then writes ``PARENT/summary.json``:
mean, sample standard deviation (n - 1 in the denominator), min, max, n and each seed's value of
the headline metrics. The aggregate is rebuilt from whatever seed directories hold a finished run
(:func:`aggregate`), so seeds run as separate jobs (``--seeds 4 --out PARENT`` each) can be
collected afterwards with ``darts-report --aggregate PARENT``.
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
STD_KIND = "sample standard deviation (n - 1 in the denominator); null when n = 1"
# Settings that differ between the seeds of one protocol without making it another protocol.
_PER_RUN = {"seed", "out", "overwrite", "data", "download", "workers", "device", "report_every", "tensorboard",
            "keep_checkpoints", "checkpoint_every", "checkpoint_minutes", "amp", "channels_last", "compile",
            "gpu_data", "recompute", "compare"}
_SEED_DIR = re.compile(r"^seed-(\d+)$")


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
    """The aggregate of the finished runs in ``parent/seed-<n>`` (written to ``parent/summary.json``
    by :func:`write_aggregate`). Seeds whose run has not finished are listed as unfinished."""
    parent = Path(parent)
    if not parent.is_dir():
        raise RunDirError(f"{parent}: no such directory: give the --out directory of a --seeds run")
    seeds = sorted(int(m.group(1)) for m in map(_SEED_DIR.match, os.listdir(parent)) if m
                   and (parent / m.group(0)).is_dir())
    if not seeds:
        raise RunDirError(f"{parent} holds no seed-<n> run directories: give the --out directory of a --seeds run")
    kind = protocol = None
    finished: dict[int, dict[str, Any]] = {}
    unfinished = []
    for seed in seeds:
        path = seed_dir(parent, seed)
        saved = _read_json(path / "config.json")
        settings = saved.get("config") if isinstance(saved, dict) else None
        if not isinstance(settings, dict):
            unfinished.append(seed)
            continue
        from .runtime import run_kind

        this_kind = run_kind(settings)
        summary = _read_json(path / FINISHED[this_kind])
        if not isinstance(summary, dict) or not summary.get("finished"):
            unfinished.append(seed)
            continue
        if kind is None:
            kind, protocol, first = this_kind, _protocol(settings), seed
        elif this_kind != kind or _protocol(settings) != protocol:
            theirs = _protocol(settings)
            diff = sorted(k for k in set(theirs) | set(protocol) if theirs.get(k) != protocol.get(k))
            raise RunDirError(f"{path} was run with other settings than {seed_dir(parent, first)} "
                              f"({', '.join(diff) or 'the script'} differ): the seeds of one aggregate must share "
                              f"their protocol; move it out of {parent}")
        finished[seed] = summary
    if kind is None:
        return {"kind": "aggregate", "run_kind": None, "seeds": seeds, "finished": [], "unfinished": unfinished,
                "std": STD_KIND, "metrics": {}}
    metrics = {}
    for name in METRICS[kind]:
        values = {s: float(v) for s, r in finished.items() if isinstance(v := r.get(name), (int, float))}
        metrics[name] = {**summarise(list(values.values())), "values": {str(s): v for s, v in values.items()}}
    return {"kind": "aggregate", "run_kind": kind, "headline": METRICS[kind][0], "std": STD_KIND,
            "seeds": seeds, "finished": sorted(finished), "unfinished": unfinished, "settings": protocol,
            "metrics": metrics}


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
    """One line: the headline's mean ± std over n seeds."""
    if not result["finished"]:
        return f"no seed has finished yet (unfinished: {', '.join(map(str, result['unfinished']))})"
    name = result["headline"]
    m = result["metrics"][name]
    std = "n/a" if m["std"] is None else f"{m['std']:.2f}"
    rest = f"; unfinished: {', '.join(map(str, result['unfinished']))}" if result["unfinished"] else ""
    return (f"{name} {m['mean']:.2f} ± {std} (sample std) over {m['n']} seeds, min {m['min']:.2f}, "
            f"max {m['max']:.2f}{rest}")


def run_seeds(run: Callable[..., Any], config, seeds: Sequence[int], kind: str, quiet: bool = False,
              resume_only: bool = False) -> dict[str, Any]:
    """Run ``config`` once per seed in ``config.out/seed-<n>``: a seed whose run finished with the
    same settings is skipped, an unfinished one resumed (by ``run`` itself). Then the aggregate is
    written (by rank 0 under torchrun) and returned."""
    if config.out is None:
        raise ConfigError("--seeds needs --out PARENT: each seed runs in PARENT/seed-<n>, and running the same "
                          "command again continues the unfinished seeds")
    parent = Path(config.out)
    if (parent / "config.json").exists():
        raise RunDirError(f"{parent} holds a single run (config.json): choose another --out for the seeds")
    ignore = _PER_RUN - {"seed"}
    from .runtime import settings_differences

    for seed in seeds:
        this = config.replace(seed=seed, out=str(seed_dir(parent, seed)))
        done = Path(this.out) / FINISHED[kind]
        saved = _read_json(Path(this.out) / "config.json")
        if done.exists() and isinstance(saved, dict) and isinstance(saved.get("config"), dict) and not this.overwrite:
            wanted = {k: v for k, v in this.to_dict().items() if v is not None}  # None: resolved by the run
            differences = settings_differences({k: v for k, v in saved["config"].items() if k in wanted}, wanted,
                                               ignore)
            if differences:
                raise RunDirError(f"{this.out} holds a finished run with other settings ({'; '.join(differences)}): "
                                  f"choose another --out, or pass --overwrite to run every seed again")
            if not quiet:
                print(f"seed {seed}: {this.out} holds its finished run: skipped", flush=True)
            continue
        run(this, quiet=quiet, **({"resume_only": True} if resume_only else {}))
    if os.environ.get("RANK", "0") != "0":
        return aggregate(parent)
    result = write_aggregate(parent)
    print(f"{len(result['finished'])} of {len(seeds)} seeds aggregated into {parent / AGGREGATE_FILE}: "
          f"{describe(result)}", flush=True)
    return result
