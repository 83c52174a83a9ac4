#!/usr/bin/env python
"""Time one training step of a final network (forward, backward with the auxiliary loss, SGD).

Random inputs, after warm-up; median over ``--steps`` steps, with a forward / backward+update
breakdown and peak memory (CPU: peak RSS of this process, so run one setting per process; CUDA:
max allocated). The last line printed is one JSON object.

    python benchmarks/train_step.py --cell darts_v2 --batch-size 96 --steps 5 --json
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from darts_nas.accel import Speed  # noqa: E402
from darts_nas.cpu_threads import THREADS_HELP, apply_default_threads, configure_cpu, thread_count  # noqa: E402
from darts_nas.genotype import resolve  # noqa: E402
from darts_nas.network import NETWORKS, count_parameters  # noqa: E402
from darts_nas.runtime import resolve_device  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cell", default="darts_v2")
    p.add_argument("--network", default="cifar", help="cifar or imagenet")
    p.add_argument("--batch-size", type=int, default=96)
    p.add_argument("--init-channels", type=int, default=36)
    p.add_argument("--layers", type=int, default=20)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--no-auxiliary", action="store_true")
    p.add_argument("--drop-path-prob", type=float, default=0.2)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=thread_count, default=None, metavar="N", help=THREADS_HELP)
    p.add_argument("--json", action="store_true", help="print only the JSON line")
    p.add_argument("--amp", action="store_true", help="bf16 autocast (as train_final.py --amp)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="NHWC memory format (default: on for the CPU, off for CUDA, as the scripts)")
    p.add_argument("--compile", action="store_true", help="torch.compile the network")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    configure_cpu(args.threads)
    if args.threads is None and args.device == "cpu":  # the scripts' default for these sizes
        apply_default_threads(args.batch_size, args.init_channels, args.image_size)
    device = resolve_device(args.device)
    torch.manual_seed(0)
    auxiliary = not args.no_auxiliary
    model = NETWORKS.get(args.network)(genotype=resolve(args.cell), C=args.init_channels, layers=args.layers,
                                       num_classes=args.classes, auxiliary=auxiliary)
    params = count_parameters(model)
    speed = Speed(device, amp=args.amp, channels_last=args.channels_last, compile=args.compile)
    model = speed.prepare(model)
    model.drop_path_prob = args.drop_path_prob
    optimizer = torch.optim.SGD(model.parameters(), lr=0.025, momentum=0.9, weight_decay=3e-4)
    shape = (args.batch_size, 3, args.image_size, args.image_size)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    times = {"forward": [], "backward_update": [], "step": []}
    model.train()
    for i in range(args.warmup + args.steps):
        x, y = speed.batch((torch.randn(shape, device=device),
                            torch.randint(0, args.classes, (args.batch_size,), device=device)))
        if i == args.warmup and device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        sync()
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with speed.autocast():
            logits, logits_aux = model(x)
            loss = F.cross_entropy(logits, y)
            if logits_aux is not None:
                loss = loss + 0.4 * F.cross_entropy(logits_aux, y)
        sync()
        t1 = time.perf_counter()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        sync()
        t2 = time.perf_counter()
        if i >= args.warmup:
            times["forward"].append(t1 - t0)
            times["backward_update"].append(t2 - t1)
            times["step"].append(t2 - t0)

    result = {
        "benchmark": "train_step", "cell": args.cell, "network": args.network, "batch_size": args.batch_size,
        "init_channels": args.init_channels, "layers": args.layers, "image_size": args.image_size,
        "auxiliary": auxiliary, "params": params, "speed": speed.describe(), "device": str(device),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
        "steps": args.steps, "median_s": {k: statistics.median(v) for k, v in times.items()},
        "all_step_s": times["step"],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    }
    if device.type == "cuda":
        result["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        result["gpu"] = torch.cuda.get_device_name(device)
    if not args.json:
        m = result["median_s"]
        print(f"{args.cell} {args.network} net, C={args.init_channels}, {args.layers} cells, batch {args.batch_size}, "
              f"{args.image_size}x{args.image_size} on {device}: {m['step']:.3f} s/step (forward {m['forward']:.3f}, "
              f"backward+update {m['backward_update']:.3f}), peak RSS {result['peak_rss_mb']:.0f} MB")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
