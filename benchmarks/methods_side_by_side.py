#!/usr/bin/env python
"""Search methods side by side: step time and peak memory of each, in one sitting.

Runs ``benchmarks/search_step.py`` once per (variant, repeat) in its own process (peak RSS is per
process), interleaving the variants so that the machine's drift hits them alike, and prints the
median step time and peak memory of each variant and the ratios the method plug-ins issue sets as
targets:

* PC-DARTS at batch 256 peaks at no more memory than DARTS at batch 64 (ratio <= 1);
* a GDAS step takes at most 0.4x a first-order DARTS step at the same batch.

    python benchmarks/methods_side_by_side.py --setting reduced --repeats 3
    python benchmarks/methods_side_by_side.py --setting paper --repeats 3 --steps 3

The last line printed is one JSON object with every number.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SETTINGS = {
    # C, cells, image side; batch of the DARTS and GDAS comparison
    "reduced": {"init_channels": 8, "layers": 5, "image_size": 32, "batch": 32},
    "paper": {"init_channels": 16, "layers": 8, "image_size": 32, "batch": 64},
}


def variants(setting: dict, memory: bool = False) -> dict[str, list[str]]:
    """The variants compared: DARTS and GDAS at the setting's batch, DARTS at 64, PC-DARTS at 256;
    with ``memory`` also PC-DARTS at 256 with --recompute, and DARTS at 64 and PC-DARTS at 256 on
    PyTorch's own autograd (--no-kernels: the original code's memory profile)."""
    b = setting["batch"]
    todo = {f"darts b{b}": ["--method", "darts", "--batch-size", str(b)],
            f"gdas b{b}": ["--method", "gdas", "--batch-size", str(b)],
            "pc-darts b256": ["--method", "pc-darts", "--batch-size", "256"]}
    todo.setdefault("darts b64", ["--method", "darts", "--batch-size", "64"])
    if memory:
        todo["pc-darts b256 recompute"] = ["--method", "pc-darts", "--batch-size", "256", "--recompute"]
        todo["darts b64 no-kernels"] = ["--method", "darts", "--batch-size", "64", "--no-kernels"]
        todo["pc-darts b256 no-kernels"] = ["--method", "pc-darts", "--batch-size", "256", "--no-kernels"]
    return todo


def run(args: list[str], common: list[str]) -> dict:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "search_step.py"), *common, *args, "--json"],
                          cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--setting", choices=sorted(SETTINGS), default="reduced")
    p.add_argument("--repeats", type=int, default=3, help="processes per variant (interleaved)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=3, help="timed steps per process")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads of each process")
    p.add_argument("--memory-variants", action="store_true",
                   help="also PC-DARTS b256 with --recompute, and DARTS b64 / PC-DARTS b256 with --no-kernels")
    p.add_argument("--all-methods", action="store_true",
                   help="instead: every registered method at the setting's batch, with its ratio to first-order DARTS")
    p.add_argument("--only", default=None, help="comma-separated variant names to run (default: all)")
    p.add_argument("--json", action="store_true", help="print only the JSON line")
    args = p.parse_args(argv)
    setting = SETTINGS[args.setting]
    common = ["--init-channels", str(setting["init_channels"]), "--layers", str(setting["layers"]),
              "--image-size", str(setting["image_size"]), "--warmup", str(args.warmup), "--steps", str(args.steps)]
    if args.threads:
        common += ["--threads", str(args.threads)]
    todo = variants(setting, args.memory_variants)
    if args.all_methods:
        sys.path.insert(0, str(ROOT))
        from darts_nas.methods import METHODS

        todo = {f"{m} b{setting['batch']}": ["--method", m, "--batch-size", str(setting["batch"])]
                for m in METHODS.names()}
    if args.only:
        todo = {name: extra for name, extra in todo.items() if name in args.only.split(",")}
    runs: dict[str, list[dict]] = {name: [] for name in todo}
    for _ in range(args.repeats):
        for name, extra in todo.items():
            result = run(extra, common)
            runs[name].append(result)
            if not args.json:
                print(f"  {name}: {result['median_s']['step']:.3f} s/step, peak RSS {result['peak_rss_mb']:.0f} MB",
                      flush=True)
    summary = {name: {"step_s": statistics.median(r["median_s"]["step"] for r in rs),
                      "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in rs)} for name, rs in runs.items()}
    b = setting["batch"]
    pairs = {"pc_darts_b256_over_darts_b64_memory": ("pc-darts b256", "darts b64", "peak_rss_mb"),
             f"gdas_over_darts_step_b{b}": (f"gdas b{b}", f"darts b{b}", "step_s"),
             "pc_darts_b256_recompute_over_darts_b64_memory": ("pc-darts b256 recompute", "darts b64", "peak_rss_mb"),
             "no_kernels_pc_darts_b256_over_darts_b64_memory": ("pc-darts b256 no-kernels", "darts b64 no-kernels",
                                                                "peak_rss_mb")}
    if args.all_methods:
        pairs = {f"{name.split()[0]}_over_darts_step": (name, f"darts b{b}", "step_s") for name in summary}
    ratios = {name: summary[a][key] / summary[c][key] for name, (a, c, key) in pairs.items()
              if a in summary and c in summary}
    first = next(iter(runs.values()))[0]
    result = {"benchmark": "methods_side_by_side", "setting": args.setting, **setting, "repeats": args.repeats,
              "steps": args.steps, "torch": first["torch"], "python": platform.python_version(),
              "threads": first["threads"], "speed": first["speed"], "variants": summary, "ratios": ratios}
    if not args.json:
        for name, s in summary.items():
            print(f"{name}: median {s['step_s']:.3f} s/step, peak RSS {s['peak_rss_mb']:.0f} MB")
        for name, r in ratios.items():
            print(f"{name}: {r:.2f}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
