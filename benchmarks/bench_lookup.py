"""The cost of a benchmark lookup: a NB201-format .pth read whole vs the compact index.

Writes a synthetic NAS-Bench-201 v1_1-format file (``torch.save`` zip, the real file's structure:
meta_archs, arch2infos {index: {'less', 'full': ArchResults-state}}, evaluated_indexes) holding
``--archs`` architectures (all 15,625 by default) with their per-epoch curves cut to
``--epochs`` epochs (the real file keeps 12 and 200), then measures, each in a fresh process
that imports no torch:

- ``open_file``: open the .pth and answer one query (what ``--benchmark FILE.pth`` costs);
- ``index``: ``darts-bench index`` of the .pth (the one-time conversion);
- ``open_index``: open the index and answer one query (median of ``--repeats`` processes);
- ``baseline``: the interpreter with darts_nas.bench imported, which the peak RSS figures include.

Usage: python benchmarks/bench_lookup.py [--archs 15625] [--epochs 2] [--repeats 5] [--json]
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
DATASETS = {"cifar10-valid": ("x-valid", "ori-test"), "cifar10": ("ori-test",),
            "cifar100": ("ori-test", "x-valid", "x-test"), "ImageNet16-120": ("ori-test", "x-valid", "x-test")}
SEEDS = {"less": {"cifar10-valid": [111, 777], "cifar10": [111], "cifar100": [111], "ImageNet16-120": [111]},
         "full": {d: [777, 888, 999] for d in DATASETS}}


def all_archs() -> list[str]:
    out = []
    for ops in itertools.product(OPS, repeat=6):
        it = iter(ops)
        out.append("+".join("|" + "|".join(f"{next(it)}~{j}" for j in range(i)) + "|" for i in range(1, 4)))
    return out


def record(index: int, arch: str, hp: str, epochs: int) -> dict:
    def run(dataset: str, seed: int) -> dict:
        evals = {f"{s}@{e}": 50.0 + (index * 7 + seed + e) % 40 for s in DATASETS[dataset] for e in range(epochs)}
        return {"name": dataset, "train_acc1es": {e: 60.0 + e for e in range(epochs)}, "train_acc5es": None,
                "train_losses": {e: 1.0 / (e + 1) for e in range(epochs)},
                "train_times": collections.OrderedDict((e, 12.5) for e in range(epochs)),
                "arch_config": {"channel": 16, "num_cells": 5, "arch_str": arch, "class_num": 10},
                "params": 0.1 + index % 97 / 100, "flop": 10.0 + index % 89, "seed": f"{seed:04d}",
                "epochs": epochs, "latency": [0.01], "eval_names": list(DATASETS[dataset]), "eval_acc1es": evals,
                "eval_times": {k: 1.5 for k in evals}, "eval_losses": {k: 0.5 for k in evals},
                "net_state_dict": None}

    seeds = SEEDS[hp]
    return {"arch_index": index, "arch_str": arch, "dataset_seed": seeds, "clear_net_done": True,
            "all_results": {(d, s): run(d, s) for d in seeds for s in seeds[d]}}


def write_file(path: Path, archs: int, epochs: int) -> None:
    import torch

    names = all_archs()
    data = {"meta_archs": names,
            "arch2infos": {i: {hp: record(i, names[i], hp, epochs) for hp in ("less", "full")} for i in range(archs)},
            "evaluated_indexes": set(range(archs))}
    torch.save(data, path)


PHASE = r"""
import json, sys, time
t0 = time.perf_counter()
from darts_nas.bench import main, open_benchmark
t1 = time.perf_counter()
phase, src, dst, arch = sys.argv[1:5]
if phase == "index":
    from darts_nas.bench_index import build_index
    build_index(src, dst)
elif phase != "baseline":
    open_benchmark(src).query(arch, "cifar10")
t2 = time.perf_counter()
# VmHWM: this process's own peak (ru_maxrss would report the forking parent's, which imported torch)
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"import_s": t1 - t0, "s": t2 - t1, "peak_rss_mb": hwm / 1024}))
"""


def phase(name: str, src: Path, dst: Path, arch: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", PHASE, name, str(src), str(dst), arch], capture_output=True,
                          text=True, env=env, timeout=3600)
    if proc.returncode:
        raise SystemExit(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archs", type=int, default=15625)
    p.add_argument("--epochs", type=int, default=2, help="length of the synthetic per-epoch curves")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="(unused: nothing here is multithreaded)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        pth, index = Path(tmp) / "NAS-Bench-201-v1_1-synthetic.pth", Path(tmp) / "nb201.index"
        start = time.perf_counter()
        write_file(pth, args.archs, args.epochs)
        write_s = time.perf_counter() - start
        arch = all_archs()[min(11, args.archs - 1)]
        baseline = [phase("baseline", pth, index, arch) for _ in range(args.repeats)]
        open_file = phase("open_file", pth, index, arch)
        built = phase("index", pth, index, arch)
        opened = [phase("open_index", index, index, arch) for _ in range(args.repeats)]
        result = {
            "archs": args.archs, "epochs": args.epochs, "write_s": write_s,
            "pth_mb": pth.stat().st_size / 2**20, "index_mb": index.stat().st_size / 2**20,
            "baseline_rss_mb": statistics.median(b["peak_rss_mb"] for b in baseline),
            "import_s": statistics.median(b["import_s"] for b in baseline),
            "open_file_s": open_file["s"], "open_file_rss_mb": open_file["peak_rss_mb"],
            "index_s": built["s"], "index_rss_mb": built["peak_rss_mb"],
            "open_index_s": statistics.median(o["s"] for o in opened),
            "open_index_rss_mb": statistics.median(o["peak_rss_mb"] for o in opened),
        }
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>18}: {value:.3f}" if isinstance(value, float) else f"{key:>18}: {value}")


if __name__ == "__main__":
    main()
