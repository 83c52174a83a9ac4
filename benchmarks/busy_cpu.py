#!/usr/bin/env python
"""Time a search step and a training step with and without competing busy processes on the CPU.

For each variant (the environment of the timed process: threads, OpenMP wait policy) this runs
``search_step.py`` and ``train_step.py`` once on an idle machine and once while ``--load`` other
processes spin (``python -c 'while True: pass'``, started before and killed after the timed
process), and prints the loaded/unloaded ratio of the median step time. The last line printed is
one JSON object with every number.

    python benchmarks/busy_cpu.py --load 2 --variants default,passive,threads1

``--repo DIR`` times the benchmark scripts of another checkout (e.g. an older commit unpacked
with ``git archive``), so a change can be measured against the code before it in one sitting.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# The timed process's environment per variant, on top of this process's environment without any
# OMP_* setting. "default" sets nothing: whatever the scripts of --repo do on their own.
VARIANTS: dict[str, dict[str, str]] = {
    "default": {},
    "active": {"OMP_WAIT_POLICY": "ACTIVE"},
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
    "threads1": {"OMP_NUM_THREADS": "1"},
    "passive-threads1": {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1"},
    # libgomp: spin this many times waiting for work, then sleep (its default is 300,000)
    "spin1k": {"GOMP_SPINCOUNT": "1000"},
    "spin10k": {"GOMP_SPINCOUNT": "10000"},
    "spin100k": {"GOMP_SPINCOUNT": "100000"},
}

# "quickstart": the quick start's sizes (8x8 one-channel digits, C=8, 5 cells, batch 64);
# "cifar-small": 32x32 RGB images, C=8, 5 cells, batch 16 (BENCHMARKS.md's reduced search setting);
# "paper": the DARTS paper's CIFAR-10 search and retraining sizes.
SIZES = {
    "quickstart": {
        "search_step.py": ["--batch-size", "64", "--init-channels", "8", "--layers", "5", "--image-size", "8",
                           "--in-channels", "1"],
        "train_step.py": ["--cell", "darts_v2", "--batch-size", "64", "--init-channels", "8", "--layers", "5",
                          "--image-size", "8", "--no-auxiliary"],
    },
    "cifar-small": {
        "search_step.py": ["--batch-size", "16", "--init-channels", "8", "--layers", "5", "--image-size", "32"],
        "train_step.py": ["--cell", "darts_v2", "--batch-size", "32", "--init-channels", "16", "--layers", "8",
                          "--image-size", "32", "--no-auxiliary"],
    },
    "paper": {
        "search_step.py": ["--batch-size", "64", "--init-channels", "16", "--layers", "8", "--image-size", "32"],
        "train_step.py": ["--cell", "darts_v2", "--batch-size", "96", "--init-channels", "36", "--layers", "20",
                          "--image-size", "32"],
    },
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repo", default=str(ROOT), help="checkout whose benchmarks/ scripts are timed")
    p.add_argument("--variants", default="default,passive,threads1",
                   help=f"comma-separated, from: {', '.join(VARIANTS)}")
    p.add_argument("--load", type=int, default=2, help="competing busy processes in the loaded runs")
    p.add_argument("--scripts", default="search_step.py,train_step.py")
    p.add_argument("--sizes", choices=sorted(SIZES), default="quickstart")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=3, help="timed steps per run (median reported)")
    p.add_argument("--timeout", type=float, default=600, help="seconds before a timed run is given up")
    return p.parse_args(argv)


def spin(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        proc.kill()
    for proc in procs:
        proc.wait()


def timed_run(repo: Path, script: str, env: dict[str, str], load: int, args) -> dict:
    sizes = SIZES[args.sizes][script]
    cmd = [sys.executable, str(repo / "benchmarks" / script), *sizes, "--warmup", str(args.warmup),
           "--steps", str(args.steps), "--json"]
    busy = spin(load)
    try:
        time.sleep(0.5 if load else 0)  # let the spinners reach the CPU first
        t = time.perf_counter()
        proc = subprocess.run(cmd, env=env, cwd=repo, capture_output=True, text=True, timeout=args.timeout)
        wall = time.perf_counter() - t
    except subprocess.TimeoutExpired:
        return {"step_s": None, "wall_s": args.timeout, "error": "timed out"}
    finally:
        stop(busy)
    if proc.returncode != 0:
        return {"step_s": None, "wall_s": wall, "error": proc.stderr.strip().splitlines()[-1:]}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"step_s": result["median_s"]["step"], "wall_s": wall, "threads": result["threads"],
            "torch": result["torch"]}


def main(argv=None) -> dict:
    args = parse_args(argv)
    repo = Path(args.repo).resolve()
    base = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "GOMP_", "MKL_NUM"))}
    rows = []
    for script in args.scripts.split(","):
        for name in args.variants.split(","):
            env = {**base, **VARIANTS[name]}
            idle = timed_run(repo, script, env, 0, args)
            busy = timed_run(repo, script, env, args.load, args)
            ratio = (busy["step_s"] / idle["step_s"]) if idle["step_s"] and busy["step_s"] else None
            row = {"script": script, "variant": name, "idle": idle, "loaded": busy, "ratio": ratio}
            rows.append(row)
            fmt = (lambda r: f"{r['step_s']:.3f}" if r["step_s"] else f"- ({r.get('error')})")
            print(f"{script:15s} {name:17s} idle {fmt(idle)} s/step, with {args.load} busy {fmt(busy)} s/step, "
                  f"ratio {ratio:.1f}x" if ratio else f"{script} {name}: {idle} {busy}", flush=True)
    result = {"benchmark": "busy_cpu", "repo": str(repo), "sizes": args.sizes, "load": args.load, "cpus": os.cpu_count(),
              "steps": args.steps, "rows": rows}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
