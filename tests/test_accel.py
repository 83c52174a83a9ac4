"""Speed settings: shared ReLU, autocast, channels_last, the device-resident loader, out-of-memory
answers. Each fast path is checked against the plain one."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from darts_nas.accel import BatchTooLargeError, Speed, is_out_of_memory, largest_fitting_batch
from darts_nas.architect import Architect
from darts_nas.config import SearchConfig, TrainConfig
from darts_nas.data import InfiniteLoader, search_data, set_epoch, train_test_data
from darts_nas.device_data import DeviceLoader, search_data_on_device, train_test_data_on_device
from darts_nas.supernet import MixedOp, Supernet

from datasets_fixtures import patch_cifar_md5, write_cifar10


def _batch(b=6, c=3, s=8, classes=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, s, s, generator=g), torch.randint(0, classes, (b,), generator=g)


# --- shared ReLU ------------------------------------------------------------------------------

@pytest.mark.parametrize("stride", [1, 2])
def test_mixed_op_with_one_shared_relu_equals_the_sum_of_every_op(stride):
    torch.manual_seed(0)
    op = MixedOp(6, stride, ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3",
                             "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5", "sep_conv_7x7", "conv_7x1_1x7"))
    assert sum(op.shares_relu) == (7 if stride == 2 else 6)  # skip_connect shares only when it reduces
    x = torch.randn(4, 6, 9, 9)
    w = torch.softmax(torch.randn(10), 0)
    naive = sum(w[k] * m(x) for k, m in zip(op.op_index, op.ops))
    assert torch.equal(op(x, w), naive)


# --- autocast ---------------------------------------------------------------------------------

def _architect(unrolled, speed=None, seed=0):
    torch.manual_seed(seed)
    model = Supernet(C=4, num_classes=10, layers=3, steps=2)
    opt = torch.optim.SGD(model.weights(), lr=0.05, momentum=0.9, weight_decay=3e-4)
    kwargs = {} if speed is None else {"autocast": speed.autocast}
    return model, Architect(model, opt, unrolled=unrolled, **kwargs)


def test_amp_first_order_gradient_is_close_to_float32():
    _, plain = _architect(False)
    _, amp = _architect(False, Speed(torch.device("cpu"), amp=True))
    g32, loss32, _ = plain.first_order_grad(_batch())
    g16, loss16, logits16 = amp.first_order_grad(_batch())
    assert logits16.dtype == torch.bfloat16 and loss16.dtype == torch.float32
    assert abs(loss16 - loss32) < 2e-2 * abs(loss32)
    for a, b in zip(g16, g32):  # bf16 keeps 8 bits of mantissa: close, not equal
        assert torch.linalg.vector_norm(a - b) < 0.25 * torch.linalg.vector_norm(b)
        assert F.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.97


def test_amp_leaves_the_hessian_vector_product_in_float32():
    model, plain = _architect(True)
    _, amp = _architect(True, Speed(torch.device("cpu"), amp=True))
    v = [torch.randn_like(p) for p in model.weights()]
    h32 = plain.hessian_vector_product(v, _batch(seed=1))
    h_amp = amp.hessian_vector_product(v, _batch(seed=1))
    for a, b in zip(h_amp, h32):
        assert a.dtype == torch.float32 and torch.equal(a, b)


# --- channels_last ----------------------------------------------------------------------------

def test_channels_last_search_step_matches_the_default_layout():
    results = []
    for channels_last in (False, True):
        speed = Speed(torch.device("cpu"), channels_last=channels_last)
        model, architect = _architect(False, speed)
        model = speed.prepare(model)
        if channels_last:
            assert model.stem[0].weight.is_contiguous(memory_format=torch.channels_last)
        train, val = speed.batch(_batch(seed=2)), speed.batch(_batch(seed=3))
        architect.step(train, val, xi=0.05)
        results.append(torch.cat([a.detach().flatten() for a in model.arch_parameters()]))
        loss = F.cross_entropy(model(train[0]), train[1])
        results.append(torch.autograd.grad(loss, model.weights()[0])[0].flatten())
    torch.testing.assert_close(results[0], results[2], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(results[1], results[3], rtol=1e-4, atol=1e-5)


# --- the device-resident loader ---------------------------------------------------------------

@pytest.fixture
def cifar(tmp_path, monkeypatch):
    import torchvision

    root = tmp_path / "cifar"
    write_cifar10(root, per_batch=12, n_test=10)
    patch_cifar_md5(monkeypatch, torchvision.datasets.CIFAR10, root)
    return root


def test_device_loader_without_augmentation_equals_the_dataloader(cifar):
    data = train_test_data("cifar10", cifar, batch_size=7, cutout=0)
    device_data = train_test_data_on_device(data, torch.device("cpu"), cutout=0)
    assert len(device_data.test_loader) == len(data.test_loader) == 2
    for (x, y), (xd, yd) in zip(data.test_loader, device_data.test_loader):
        assert torch.equal(y, yd)
        torch.testing.assert_close(xd, x, rtol=0, atol=1e-5)


def _padded_originals(loader: DeviceLoader):
    pad = loader.info.crop_padding
    return F.pad(loader.images, (pad, pad, pad, pad)), pad


def test_device_augmentation_is_a_random_crop_and_flip_of_the_image(cifar):
    data = search_data_on_device(search_data("cifar10", cifar, batch_size=5, seed=0), torch.device("cpu"))
    loader = data.weight_loader
    padded, pad = _padded_originals(loader)
    mean, std = loader.mean, loader.std
    offsets, flips = set(), set()
    order = loader.sampler.order(0)
    for k, (x, _) in enumerate(loader):
        pixels = torch.round(x * std + mean)  # back to 0..255
        for i, image in enumerate(pixels):
            source = padded[order[k * loader.batch_size + i]].float()
            size = image.shape[-1]
            matches = [(dy, dx, flip) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1) for flip in (0, 1)
                       if torch.equal((lambda c: c.flip(-1) if flip else c)(source[:, dy:dy + size, dx:dx + size]),
                                      image)]
            assert matches, "every augmented image is a crop (maybe flipped) of its padded original"
            offsets.add(matches[0][:2])
            flips.add(matches[0][2])
    assert len(offsets) > 3 and flips == {0, 1}


def test_device_batches_are_a_function_of_their_position(cifar):
    data = search_data_on_device(search_data("cifar10", cifar, batch_size=4, seed=1), torch.device("cpu"))
    loader = data.weight_loader
    set_epoch(loader, 3)
    first = [x for x, _ in loader]
    again = [x for x, _ in loader]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    loader.sampler.start = 2 * loader.batch_size  # what a resume after two batches sets
    tail = [x for x, _ in loader]
    assert len(tail) == len(first) - 2 and all(torch.equal(a, b) for a, b in zip(first[2:], tail))
    set_epoch(loader, 4)
    assert not torch.equal(next(iter(loader))[0], first[0])

    arch = data.arch_loader
    batches = [next(arch)[0] for _ in range(5)]
    resumed = InfiniteLoader(arch.loader)
    state = {"passes": 0, "position": 3}
    resumed.load_state_dict(state)
    arch.load_state_dict(state)
    assert torch.equal(next(resumed)[0], batches[3])


def test_device_cutout_zeroes_one_clipped_square(cifar):
    data = train_test_data("cifar10", cifar, batch_size=8, cutout=4)
    loader = train_test_data_on_device(data, torch.device("cpu"), cutout=4).train_loader
    for x, _ in loader:
        for image in x:
            zero = (image == 0).all(0)  # (H, W): pixels zeroed in every channel
            rows, cols = zero.any(1).nonzero().flatten(), zero.any(0).nonzero().flatten()
            assert 1 <= len(rows) <= 4 and 1 <= len(cols) <= 4
            assert zero[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()
            assert zero.sum() == len(rows) * len(cols)


def test_gpu_data_search_on_cpu_end_to_end(tmp_path):
    from darts_nas.search import run

    summary = run(SearchConfig(dataset="digits", data="", init_channels=4, layers=2, nodes=2, epochs=1,
                               batch_size=32, steps_per_epoch=3, out=str(tmp_path / "run"), tensorboard=False,
                               gpu_data=True, channels_last=True), quiet=True)
    assert summary["finished"]
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "GPU-resident data" in log and "channels_last" in log
    config = json.loads((tmp_path / "run" / "config.json").read_text())["config"]
    assert config["gpu_data"] is True and config["channels_last"] is True


# --- out of memory ------------------------------------------------------------------------------

def test_largest_fitting_batch_bisects_to_within_five_percent():
    tried = []

    def try_batch(b):
        tried.append(b)
        if b > 37:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    fitting = largest_fitting_batch(try_batch, 256, torch.device("cpu"))
    assert 35 <= fitting <= 37 and len(tried) < 12
    assert largest_fitting_batch(lambda b: (_ for _ in ()).throw(torch.OutOfMemoryError("x")), 8,
                                 torch.device("cpu")) == 0
    with pytest.raises(ValueError):  # other errors are not swallowed
        largest_fitting_batch(lambda b: (_ for _ in ()).throw(ValueError("bug")), 8, torch.device("cpu"))
    assert is_out_of_memory(RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate"))


def _oom_above(limit):
    def forward(self, x, *args, **kwargs):
        if x.shape[0] > limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return original(self, x, *args, **kwargs)
    return forward


original = Supernet.forward


def test_search_batch_too_large_names_the_batch_that_fits(tmp_path, monkeypatch, capsys):
    from darts_nas.cli import search_main

    monkeypatch.setattr(Supernet, "forward", _oom_above(20))
    code = search_main(["--dataset", "digits", "--init-channels", "4", "--layers", "2", "--nodes", "2",
                        "--epochs", "1", "--batch-size", "64", "--steps-per-epoch", "2", "--no-tensorboard",
                        "--out", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "batch size 64 does not fit" in err and "--batch-size 20" in err, err


def test_training_batch_too_large_names_the_batch_that_fits(tmp_path, monkeypatch):
    from darts_nas import network
    from darts_nas.train import run

    cls = network.NetworkCIFAR
    monkeypatch.setattr(cls, "forward", _oom_above_network(cls.forward, 9))
    config = TrainConfig(cell="darts_v2", dataset="digits", data="", layers=3, init_channels=4, epochs=1,
                         batch_size=32, steps_per_epoch=2, auxiliary=False, out=str(tmp_path / "t"),
                         tensorboard=False)
    with pytest.raises(BatchTooLargeError, match="largest that fits is about 9"):
        run(config, quiet=True)


def _oom_above_network(forward, limit):
    def patched(self, x):
        if x.shape[0] > limit:
            raise torch.OutOfMemoryError("CUDA out of memory.")
        return forward(self, x)
    return patched


# --- CUDA ---------------------------------------------------------------------------------------

@pytest.mark.needs_cuda
@pytest.mark.parametrize("unrolled,compile_", [(False, False), (True, False), (False, True)])
def test_cuda_amp_channels_last_search_step_runs_and_learns(unrolled, compile_):
    device = torch.device("cuda")
    speed = Speed(device, amp=True, channels_last=True, compile=compile_)
    model, architect = _architect(unrolled, speed)
    model = speed.prepare(model)
    opt = architect.w_optimizer
    losses = []
    x, y = speed.batch(_batch(b=16, seed=4))
    for _ in range(6):
        architect.step((x, y), (x, y), xi=0.05)
        opt.zero_grad()
        with speed.autocast():
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


@pytest.mark.needs_cuda
def test_cuda_device_loader_matches_cpu(cifar):
    cpu = search_data_on_device(search_data("cifar10", cifar, batch_size=5, seed=0), torch.device("cpu"))
    gpu = search_data_on_device(search_data("cifar10", cifar, batch_size=5, seed=0), torch.device("cuda"))
    for (x, y), (xg, yg) in zip(cpu.weight_loader, gpu.weight_loader):
        assert xg.is_cuda and torch.equal(y, yg.cpu())
        torch.testing.assert_close(xg.cpu(), x, rtol=0, atol=1e-5)


# --- recomputation (--recompute) -----------------------------------------------------------------

def _twins(unrolled=False):
    """Two identical supernets and architects, the second recomputing its activations."""
    pairs = []
    for recompute in (False, True):
        model, architect = _architect(unrolled, seed=5)
        model.recompute = recompute
        pairs.append((model, architect))
    return pairs


@pytest.mark.parametrize("unrolled", [False, True])
def test_recompute_gives_bit_identical_steps_and_batchnorm_statistics(unrolled):
    results = []
    for model, architect in _twins(unrolled):
        train, val = _batch(b=8, seed=6), _batch(b=8, seed=7)
        grads, _, _ = (architect.unrolled_grad(train, val, 0.05) if unrolled else architect.first_order_grad(val))
        loss = F.cross_entropy(model(train[0]), train[1])
        loss.backward(inputs=model.weights())
        results.append((grads, [p.grad for p in model.weights()], list(model.buffers())))
    (ga, wa, ba), (gb, wb, bb) = results
    assert all(torch.equal(a, b) for a, b in zip(ga, gb))
    assert all(torch.equal(a, b) for a, b in zip(wa, wb))
    assert all(torch.equal(a, b) for a, b in zip(ba, bb))  # running statistics updated once


def test_recompute_keeps_a_fraction_of_the_activations():
    def saved_bytes(model):
        total = [0]

        def pack(t):
            total[0] += t.numel() * t.element_size()
            return t

        x, y = _batch(b=8, seed=8)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        return total[0]

    plain, recomputing = (saved_bytes(model) for model, _ in _twins())
    assert recomputing < 0.5 * plain


# --- malloc keeps freed memory (CPU, glibc) -----------------------------------------------------

_REUSE_PROBE = """
import json, resource, sys, torch
from darts_nas.accel import Speed, keep_freed_cpu_memory
Speed(torch.device("cpu")).prepare(torch.nn.Linear(2, 2))  # what every CPU run does
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
pages = []
for round_ in range(3):  # a "pass": 64 activations of 4 MiB, touched, then all freed
    before = faults()
    xs = [torch.ones(1 << 20) for _ in range(64)]
    pages.append(faults() - before)
    del xs
print(json.dumps({"kept": keep_freed_cpu_memory(), "faults": pages}))
"""


def _reuse_probe(env_value):
    import os
    import subprocess
    import sys

    env = dict(os.environ, DARTS_NAS_KEEP_FREED_MEMORY=env_value)
    out = subprocess.run([sys.executable, "-c", _REUSE_PROBE], env=env, capture_output=True, text=True,
                         check=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _glibc():
    import platform

    return platform.libc_ver()[0] == "glibc"


@pytest.mark.skipif(not _glibc(), reason="the malloc setting applies to glibc only")
def test_cpu_runs_reuse_freed_memory_instead_of_faulting_it_in_again():
    kept = _reuse_probe("1")
    assert kept["kept"] is True
    first, second, third = kept["faults"]
    assert first > 0  # 256 MiB of fresh pages (65,536 of 4 KiB; fewer with transparent huge pages)
    # the later passes reuse the first one's pages (up to 32 MiB, one mmap threshold, may come
    # fresh while the heap settles: 8,194 pages were seen; the opt-out below faults > first / 2)
    assert second < first / 4 and third < first / 20, kept
    default = _reuse_probe("0")
    assert default["kept"] is False
    # glibc's defaults hand the memory back and fault it in again on the next pass (after a few
    # identical passes they adapt; a search step's mix of sizes keeps them faulting, BENCHMARKS.md)
    assert default["faults"][1] > first / 2, default
