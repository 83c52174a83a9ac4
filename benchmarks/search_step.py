#!/usr/bin/env python
"""Time one search step (architecture step + weight step) of a search method's supernet (``--method``).

Random inputs, after warm-up; reports the median over ``--steps`` timed steps, a per-phase
breakdown (architecture step, weight forward, weight backward + update; with ``--unrolled`` the
architecture step also split into the virtual step, the validation pass at w' and the
Hessian-vector product) and peak memory (CPU: peak
RSS of this process, so run one setting per process; CUDA: max allocated). The last line printed
is one JSON object with every number.

    python benchmarks/search_step.py --batch-size 16 --init-channels 8 --layers 5 --steps 5 --unrolled --json
    python benchmarks/search_step.py --method pc-darts --batch-size 256

``benchmarks/methods_side_by_side.py`` runs it for several methods in turn and compares them.
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

from darts_nas import kernels as cpu_kernels  # noqa: E402
from darts_nas.accel import Speed  # noqa: E402
from darts_nas.config import SearchConfig  # noqa: E402
from darts_nas.cpu_threads import THREADS_HELP, apply_default_threads, configure_cpu, thread_count  # noqa: E402
from darts_nas.methods import METHODS  # noqa: E402
from darts_nas.runtime import resolve_device  # noqa: E402
from darts_nas.supernet import Supernet  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--init-channels", type=int, default=16)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--nodes", type=int, default=4)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--in-channels", type=int, default=3)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--unrolled", action="store_true", help="second-order architecture step")
    p.add_argument("--method", default="darts", help="search method: " + ", ".join(METHODS.names()))
    p.add_argument("--partial-channels", type=int, default=4, help="pc-darts: K")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=5, help="timed steps (median reported)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=thread_count, default=None, metavar="N", help=THREADS_HELP)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--amp", action="store_true", help="bf16 autocast (as train_search.py --amp)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="NHWC memory format (default: on for the CPU, off for CUDA, as the scripts)")
    p.add_argument("--compile", action="store_true", help="torch.compile the supernet")
    p.add_argument("--recompute", action="store_true", help="recompute cell activations in the backward pass")
    p.add_argument("--no-kernels", action="store_true",
                   help="turn off the hand-written CPU backward passes of darts_nas.kernels (PyTorch's own autograd)")
    p.add_argument("--cudnn-benchmark", action="store_true", help="torch.backends.cudnn.benchmark = True")
    p.add_argument("--profile", action="store_true",
                   help="profile one step after the timed ones and print the costliest kernels, the number "
                        "of kernel launches and the CPU/GPU totals")
    p.add_argument("--json", action="store_true", help="print only the JSON line")
    return p.parse_args(argv)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def main(argv=None) -> dict:
    args = parse_args(argv)
    configure_cpu(args.threads)
    if args.threads is None and args.device == "cpu":  # the scripts' default for these sizes
        apply_default_threads(args.batch_size, args.init_channels, args.image_size)
    device = resolve_device(args.device)
    cpu_kernels.set_enabled(not args.no_kernels)
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    speed = Speed(device, amp=args.amp, channels_last=args.channels_last, compile=args.compile)
    torch.manual_seed(args.seed)
    config = SearchConfig(method=args.method, unrolled=args.unrolled, partial_channels=args.partial_channels,
                          init_channels=args.init_channels, seed=args.seed)
    method = METHODS.get(args.method)(config)
    method.check(config)
    method.start_stage(0, method.stages()[0])  # a staged method's first stage (P-DARTS: skip dropout 0.1)
    method.start_epoch(0, config.epochs)
    model = speed.prepare(Supernet(C=args.init_channels, num_classes=args.classes, layers=args.layers,
                                   steps=args.nodes, in_channels=args.in_channels, method=method))
    model.recompute = args.recompute
    w_opt = torch.optim.SGD(model.weights(), lr=0.025, momentum=0.9, weight_decay=3e-4)
    architect = method.make_architect(model, w_opt, autocast=speed.autocast)
    shape = (args.batch_size, args.in_channels, args.image_size, args.image_size)

    def batch():
        return speed.batch((torch.randn(shape, device=device),
                            torch.randint(0, args.classes, (args.batch_size,), device=device)))

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    weights = model.weights()
    phases = {"arch_step": [], "weight_forward": [], "weight_backward_update": [], "step": []}
    # The second-order architecture step split further: the virtual step (a forward and weight
    # backward on the training batch), the finite-difference Hessian-vector product (two forward
    # and alpha-only backward passes); the rest is the forward and backward at w' on the
    # validation batch.
    parts: dict[str, list[float]] = {}

    def timed(name, fn):
        def wrapper(*a, **k):
            sync()
            t = time.perf_counter()
            out = fn(*a, **k)
            sync()
            parts.setdefault(name, []).append(time.perf_counter() - t)
            return out
        return wrapper

    if args.unrolled:
        architect.virtual_step = timed("virtual_step", architect.virtual_step)
        architect.hessian_vector_product = timed("hessian_vector_product", architect.hessian_vector_product)
    model.train()
    for i in range(args.warmup + args.steps):
        train, val = batch(), batch()
        if i == args.warmup and device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        sync()
        t0 = time.perf_counter()
        architect.step(train, val, xi=0.025)
        sync()
        t1 = time.perf_counter()
        w_opt.zero_grad(set_to_none=True)
        with speed.autocast(), method.weight_pass(model, train):  # as the search's weight step
            loss = F.cross_entropy(model(train[0]), train[1])
        sync()
        t2 = time.perf_counter()
        loss.backward(inputs=weights)
        torch.nn.utils.clip_grad_norm_(weights, 5.0)
        w_opt.step()
        sync()
        t3 = time.perf_counter()
        if i >= args.warmup:
            if args.unrolled:
                virtual, hvp = parts["virtual_step"][-1], parts["hessian_vector_product"][-1]
                phases.setdefault("virtual_step", []).append(virtual)
                phases.setdefault("hessian_vector_product", []).append(hvp)
                phases.setdefault("validation_pass", []).append(t1 - t0 - virtual - hvp)
            phases["arch_step"].append(t1 - t0)
            phases["weight_forward"].append(t2 - t1)
            phases["weight_backward_update"].append(t3 - t2)
            phases["step"].append(t3 - t0)

    profile = None
    if args.profile:
        from torch.profiler import ProfilerActivity, profile as run_profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        train, val = batch(), batch()
        with run_profile(activities=activities) as prof:
            architect.step(train, val, xi=0.025)
            w_opt.zero_grad(set_to_none=True)
            with speed.autocast(), method.weight_pass(model, train):
                loss = F.cross_entropy(model(train[0]), train[1])
            loss.backward(inputs=weights)
            w_opt.step()
            sync()
        events = prof.key_averages()
        sort = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
        print(events.table(sort_by=sort, row_limit=15), file=sys.stderr)
        kernels = [e for e in prof.events() if getattr(e.device_type, "name", "") == "CUDA"]
        busy = sum(getattr(e, "device_time", getattr(e, "cuda_time", 0.0)) for e in kernels)
        profile = {"kernel_launches": len(kernels), "gpu_busy_s": busy / 1e6 if kernels else None}

    result = {
        "benchmark": "search_step", "method": args.method, "cudnn_benchmark": args.cudnn_benchmark,
        "profile": profile,
        "order": "second" if args.unrolled else "first",
        "batch_size": args.batch_size, "init_channels": args.init_channels, "layers": args.layers,
        "nodes": args.nodes, "image_size": args.image_size, "speed": speed.describe() + (", recompute" if args.recompute else "") + (", no kernels" if args.no_kernels else ""),
        "device": str(device), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "python": platform.python_version(),
        "steps": args.steps,
        "median_s": {k: statistics.median(v) for k, v in phases.items()},
        "all_step_s": phases["step"],
        "peak_rss_mb": peak_rss_mb(),
    }
    if device.type == "cuda":
        result["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        result["gpu"] = torch.cuda.get_device_name(device)
    if not args.json:
        m = result["median_s"]
        print(f"{args.method}, {result['order']} order ({speed.describe()}), batch {args.batch_size}, C={args.init_channels}, {args.layers} cells, "
              f"{args.image_size}x{args.image_size} on {device}: {m['step']:.3f} s/step "
              f"(arch {m['arch_step']:.3f}, weight fwd {m['weight_forward']:.3f}, "
              f"weight bwd+update {m['weight_backward_update']:.3f}), peak RSS {result['peak_rss_mb']:.0f} MB")
        if args.unrolled:
            print(f"  second-order architecture step: virtual step {m['virtual_step']:.3f}, validation pass at w' "
                  f"{m['validation_pass']:.3f}, Hessian-vector product {m['hessian_vector_product']:.3f} s")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
