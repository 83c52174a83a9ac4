#!/usr/bin/env python
"""Time whole epochs of ``train_search.py`` / ``train_final.py`` on data of CIFAR-10's size.

Unlike search_step.py (random tensors), this runs the real scripts' code end to end: the real
CIFAR-10 loader and augmentation (or ``--gpu-data``), the architecture-half evaluation, logging,
TensorBoard and checkpoints. The images are random pixels written in CIFAR-10's own on-disk
format (50,000 train and 10,000 test images, the python pickles torchvision reads), so no
download is needed; their content does not change the time of a step. Prints the seconds per epoch
(median over the timed epochs) and the projection to a full run; the last line is one JSON object.

    python benchmarks/search_epoch.py --epochs 2 --amp --channels-last --json
    python benchmarks/search_epoch.py --mode train --epochs 1 --amp --channels-last
"""

from __future__ import annotations

import argparse
import json
import pickle
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from darts_nas.config import SearchConfig, TrainConfig  # noqa: E402
from darts_nas.runtime import resolve_device  # noqa: E402


def write_fake_cifar10(root: Path, n_train: int = 50_000, n_test: int = 10_000, seed: int = 0) -> Path:
    """Random images in CIFAR-10's python format under ``root/cifar-10-batches-py``."""
    folder = root / "cifar-10-batches-py"
    if (folder / "test_batch").exists():
        return root
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    per_batch = n_train // 5

    def dump(name, n):
        with open(folder / name, "wb") as f:
            pickle.dump({"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         "labels": rng.integers(0, 10, n).tolist()}, f, protocol=2)

    for i in range(1, 6):
        dump(f"data_batch_{i}", per_batch)
    dump("test_batch", n_test)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f, protocol=2)
    return root


def accept_fake_checksums(root: Path) -> None:
    """The pixels are random, so the real archives' md5 sums cannot match: expect these files'."""
    import hashlib

    from torchvision.datasets import CIFAR10

    folder = root / CIFAR10.base_folder

    def md5(name):
        return hashlib.md5((folder / name).read_bytes()).hexdigest()

    CIFAR10.train_list = [[f, md5(f)] for f, _ in CIFAR10.train_list]
    CIFAR10.test_list = [[f, md5(f)] for f, _ in CIFAR10.test_list]
    CIFAR10.meta = {**CIFAR10.meta, "md5": md5(CIFAR10.meta["filename"])}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=["search", "train"], default="search")
    p.add_argument("--epochs", type=int, default=2, help="epochs to run; the first is warm-up when more than one")
    p.add_argument("--full-epochs", type=int, default=None,
                   help="epochs of the full run to project to (default: 50 for search, 600 for train)")
    p.add_argument("--unrolled", action="store_true")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--steps-per-epoch", type=int, default=None, help="cap (the projection scales it up)")
    p.add_argument("--amp", action="store_true")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--gpu-data", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--data", default=None, help="where to write the fake CIFAR-10 (default: a temp dir)")
    p.add_argument("--smoke", action="store_true",
                   help="a tiny version (1,000 images, C=4, 3 cells) that checks the script in seconds")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="darts-bench-"))
    sizes = {"n_train": 1000, "n_test": 200} if args.smoke else {}
    data_root = write_fake_cifar10(Path(args.data) if args.data else workdir / "data", **sizes)
    accept_fake_checksums(data_root)
    speed = {"amp": args.amp, "channels_last": args.channels_last, "compile": args.compile,
             "gpu_data": args.gpu_data, "workers": args.workers}
    common = {"dataset": "cifar10", "data": str(data_root), "epochs": args.epochs, "out": str(workdir / "run"),
              "device": args.device,
              "steps_per_epoch": args.steps_per_epoch, **speed}
    if args.batch_size:
        common["batch_size"] = args.batch_size
    if args.smoke:
        common.update(init_channels=4, layers=3)
    start = time.perf_counter()
    if args.mode == "search":
        from darts_nas.search import run

        config = SearchConfig(unrolled=args.unrolled, **common)
        full = args.full_epochs or 50
        run(config, quiet=args.json)
    else:
        from darts_nas.train import run

        config = TrainConfig.for_protocol("cifar", cell="darts_v2", **common)
        full = args.full_epochs or 600
        run(config, quiet=args.json)
    wall = time.perf_counter() - start
    records = [json.loads(line) for line in (workdir / "run" / "metrics.jsonl").read_text().splitlines()]
    elapsed = [r["elapsed"] for r in records]
    per_epoch = [b - a for a, b in zip([0.0] + elapsed, elapsed)]
    timed = per_epoch[1:] if len(per_epoch) > 1 else per_epoch
    steps = records[-1]["steps"]
    n_train = 1000 if args.smoke else 50_000
    full_steps = -(-int(n_train * (0.5 if args.mode == "search" else 1.0)) // config.batch_size)
    scale = full_steps / steps if args.steps_per_epoch else 1.0
    epoch_s = statistics.median(timed)
    train_s = statistics.median(r["epoch_time"] for r in (records[1:] if len(records) > 1 else records))
    # A capped epoch: scale the training loop to a whole epoch, keep the evaluation as measured.
    projected_epoch = train_s * scale + (epoch_s - train_s)
    result = {
        "benchmark": f"{args.mode}_epoch", "order": "second" if args.unrolled else "first",
        "batch_size": config.batch_size, "steps_per_epoch": steps, "epochs": args.epochs,
        "device": str(resolve_device(args.device)),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch": torch.__version__, **speed,
        "epoch_s_all": per_epoch, "epoch_s": epoch_s, "train_loop_s": train_s, "s_per_step": train_s / steps,
        "projected_epoch_s": projected_epoch, "full_epochs": full,
        "projected_full_run_min": projected_epoch * full / 60, "wall_s": wall,
        "cuda_max_allocated_mb": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
    }
    if not args.json:
        print(f"{args.mode} ({result['order']} order) {speed}: {epoch_s:.1f} s/epoch measured "
              f"({train_s / steps * 1000:.1f} ms/step), projected {projected_epoch:.1f} s/epoch, "
              f"{result['projected_full_run_min']:.1f} min for {full} epochs")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
