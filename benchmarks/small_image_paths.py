#!/usr/bin/env python
"""A/B of the CPU paths for small images, in one process: a search step with each of them turned
off in turn, interleaved round by round so that the machine's drift hits every variant alike.

The paths (``darts_nas.kernels``):

* ``crop``: kernel taps that only ever meet padding are cut off (:func:`reached_kernel`);
* ``matmul``: 1x1 convolutions of NHWC images of at most 4x4 pixels as matrix products;
* ``per-tap``: the depthwise weight gradient per tap only where that beats oneDNN's (large
  batch x channels); ``old`` takes the per-tap loop wherever the kernel is larger than the image.

Variants: ``all`` (as shipped), ``no-crop``, ``no-matmul``, ``old-per-tap``, ``none`` (all three
as before). Prints each variant's median step and its ratio to ``none``; the last line is JSON.

    python benchmarks/small_image_paths.py --rounds 6          # the quick start's search step
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

from darts_nas import kernels  # noqa: E402
from darts_nas.accel import Speed  # noqa: E402
from darts_nas.config import SearchConfig  # noqa: E402
from darts_nas.cpu_threads import THREADS_HELP, configure_cpu, thread_count  # noqa: E402
from darts_nas.methods import METHODS  # noqa: E402
from darts_nas.supernet import Supernet  # noqa: E402


def _full_kernel(shape, weight, stride, padding, dilation):
    return weight, padding, dilation


def _never(x):
    return False


def _old_weight_grad(grad, x, weight, padding):
    """The rule before: per tap wherever the kernel is larger than the image."""
    k = weight.shape[-1]
    H, W = x.shape[-2:]
    if not (k > H or k > W) or grad.shape[-2:] != x.shape[-2:] or padding != (k - 1) // 2:
        return kernels._conv_weight_grad(grad, x, weight, 1, padding, 1, x.shape[1])
    return kernels._per_tap_weight_grad(grad, x, k, padding)


SHIPPED = {"reached_kernel": kernels.reached_kernel, "_few_pixels_nhwc": kernels._few_pixels_nhwc,
           "_depthwise_weight_grad": kernels._depthwise_weight_grad}
VARIANTS = {
    "all": {},
    "no-crop": {"reached_kernel": _full_kernel},
    "no-matmul": {"_few_pixels_nhwc": _never},
    "old-per-tap": {"_depthwise_weight_grad": _old_weight_grad},
    "none": {"reached_kernel": _full_kernel, "_few_pixels_nhwc": _never, "_depthwise_weight_grad": _old_weight_grad},
}


def use(variant: str) -> None:
    for name, fn in {**SHIPPED, **VARIANTS[variant]}.items():
        setattr(kernels, name, fn)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--init-channels", type=int, default=8)
    p.add_argument("--layers", type=int, default=5)
    p.add_argument("--image-size", type=int, default=8)
    p.add_argument("--in-channels", type=int, default=1)
    p.add_argument("--rounds", type=int, default=6, help="rounds; each times every variant for --steps steps")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--warmup", type=int, default=3, help="steps before the first round")
    p.add_argument("--threads", type=thread_count, default=1, metavar="N", help=THREADS_HELP)
    p.add_argument("--json", action="store_true", help="print only the JSON line")
    args = p.parse_args(argv)
    configure_cpu(args.threads)
    device = torch.device("cpu")
    speed = Speed(device, amp=False, channels_last=None, compile=False)
    torch.manual_seed(0)
    config = SearchConfig(method="darts", init_channels=args.init_channels, seed=0)
    method = METHODS.get("darts")(config)
    method.start_stage(0, method.stages()[0])
    method.start_epoch(0, config.epochs)
    model = speed.prepare(Supernet(C=args.init_channels, num_classes=10, layers=args.layers, steps=4,
                                   in_channels=args.in_channels, method=method))
    w_opt = torch.optim.SGD(model.weights(), lr=0.025, momentum=0.9, weight_decay=3e-4)
    architect = method.make_architect(model, w_opt, autocast=speed.autocast)
    weights = model.weights()
    shape = (args.batch_size, args.in_channels, args.image_size, args.image_size)
    model.train()

    def step():
        train = speed.batch((torch.randn(shape), torch.randint(0, 10, (args.batch_size,))))
        val = speed.batch((torch.randn(shape), torch.randint(0, 10, (args.batch_size,))))
        architect.step(train, val, xi=0.025)
        w_opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(train[0]), train[1]).backward(inputs=weights)
        torch.nn.utils.clip_grad_norm_(weights, 5.0)
        w_opt.step()

    for _ in range(args.warmup):
        step()
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(args.rounds):
        for name in VARIANTS:
            use(name)
            step()  # one untimed step after switching
            t = time.perf_counter()
            for _ in range(args.steps):
                step()
            times[name].append((time.perf_counter() - t) / args.steps)
    use("all")
    base = statistics.median(times["none"])
    for name, values in times.items():
        m = statistics.median(values)
        if not args.json:
            print(f"{name:12s} {m:.3f} s/step, {m / base:.3f}x of none  ({', '.join(f'{v:.3f}' for v in values)})")
    result = {"benchmark": "small_image_paths", "threads": torch.get_num_threads(), "torch": torch.__version__,
              "python": platform.python_version(), "shape": list(shape), "init_channels": args.init_channels,
              "layers": args.layers, "median_s": {k: statistics.median(v) for k, v in times.items()},
              "all_s": times}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
