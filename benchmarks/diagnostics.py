#!/usr/bin/env python
"""The cost of the collapse diagnostics (``darts_nas.diagnostics``) at a search setting.

Times the always-on statistics of an epoch (``epoch_diagnostics``: softmaxes over the alphas and
the derived genotype's skip count) and one ``--hessian-every`` measurement (``dominant_eigenvalue``
on ``--hessian-batches`` batches: Lanczos on Hessian-vector products for the paper's 224
architecture parameters), next to a first-order search step on the same network, and states both
as a share of an epoch of ``--epoch-steps`` steps (CIFAR-10's weight half at batch 64: 391).

    python benchmarks/diagnostics.py --batch-size 64 --init-channels 16 --layers 8

The last line printed is one JSON object with every number.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from darts_nas.accel import Speed  # noqa: E402
from darts_nas.architect import Architect  # noqa: E402
from darts_nas.diagnostics import dominant_eigenvalue, epoch_diagnostics  # noqa: E402
from darts_nas.genotype import PRIMITIVES  # noqa: E402
from darts_nas.supernet import Supernet  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--init-channels", type=int, default=16)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--hessian-batches", type=int, default=1)
    p.add_argument("--lanczos-steps", type=int, default=30)
    p.add_argument("--epoch-steps", type=int, default=391)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    speed = Speed(device)
    torch.manual_seed(0)
    model = speed.prepare(Supernet(C=args.init_channels, num_classes=10, layers=args.layers, steps=4, in_channels=3))
    w_opt = torch.optim.SGD(model.weights(), lr=0.025, momentum=0.9, weight_decay=3e-4)
    architect = Architect(model, w_opt)

    def batch():
        return speed.batch((torch.randn(args.batch_size, 3, args.image_size, args.image_size),
                            torch.randint(0, 10, (args.batch_size,))))

    model.train()
    steps = []
    for i in range(3):  # first-order search steps, the first a warm-up
        train, val = batch(), batch()
        t = time.perf_counter()
        architect.step(train, val, xi=0.025)
        w_opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(train[0]), train[1]).backward(inputs=model.weights())
        w_opt.step()
        steps.append(time.perf_counter() - t)
    step = statistics.median(steps[1:])
    genotype = model.genotype()
    stats = []
    for _ in range(20):
        t = time.perf_counter()
        epoch_diagnostics(model, genotype, PRIMITIVES)
        stats.append(time.perf_counter() - t)
    always = statistics.median(stats)
    batches = [batch() for _ in range(args.hessian_batches)]
    t = time.perf_counter()
    eig = dominant_eigenvalue(model, batches, weight_decay=1e-3, steps=args.lanczos_steps)
    hessian = time.perf_counter() - t
    epoch = step * args.epoch_steps
    result = {"benchmark": "diagnostics", "batch_size": args.batch_size, "init_channels": args.init_channels,
              "layers": args.layers, "image_size": args.image_size, "torch": torch.__version__,
              "python": platform.python_version(), "threads": torch.get_num_threads(),
              "search_step_s": step, "epoch_s_estimate": epoch, "always_on_s": always,
              "always_on_share_of_epoch": always / epoch, "hessian_s": hessian, "hessian_how": eig["how"],
              "hessian_share_of_epoch": hessian / epoch, "eigenvalue": eig["value"]}
    if not args.json:
        print(f"search step {step:.2f} s (epoch of {args.epoch_steps} steps ~{epoch:.0f} s); always-on statistics "
              f"{always * 1e3:.2f} ms ({100 * always / epoch:.5f}% of an epoch); Hessian eigenvalue {eig['value']:.4g} "
              f"({eig['how']}) in {hessian:.1f} s ({100 * hessian / epoch:.2f}% of an epoch)")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
