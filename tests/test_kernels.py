"""The hand-written CPU backward passes (darts_nas.kernels) against PyTorch's own autograd:
same values and running statistics, same first and second derivatives, less saved memory, and
no weight-gradient work in an architecture step."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from darts_nas import kernels
from darts_nas.genotype import PRIMITIVES
from darts_nas.ops import OPS, FactorizedReduce, GlobalAvgPool, PoolBN, ReLUConvBN, depthwise_conv2d
from darts_nas.supernet import MixedOp, Supernet


@pytest.fixture
def kernels_off():
    """A context that runs PyTorch's own autograd instead of darts_nas.kernels."""
    class Off:
        def __enter__(self):
            self.previous = kernels.set_enabled(False)

        def __exit__(self, *exc):
            kernels.set_enabled(self.previous)

    return Off


def _close(actual, expected, tol):
    for a, e in zip(actual, expected):
        assert (a is None) == (e is None)
        if a is not None:
            torch.testing.assert_close(a, e, rtol=0, atol=tol)


# -- dilated depthwise convolution ------------------------------------------------------------

def _depthwise_cases():
    for memory_format in (torch.contiguous_format, torch.channels_last):
        # odd sizes take the undecomposed weight gradient; at 4 the pixel phases are smaller than
        # the kernel (the per-tap weight gradient)
        for size in (4, 8, 9):
            for k in (3, 5):
                for stride in (1, 2):
                    yield memory_format, size, k, stride


@pytest.mark.parametrize("memory_format,size,k,stride", list(_depthwise_cases()))
def test_dilated_depthwise_matches_pytorch_to_the_second_derivative(memory_format, size, k, stride):
    torch.manual_seed(0)
    x = torch.randn(3, 4, size, size, dtype=torch.float64).contiguous(memory_format=memory_format)
    x.requires_grad_(True)
    w = torch.randn(4, 1, k, k, dtype=torch.float64, requires_grad=True)
    ref = F.conv2d(x, w, None, stride, k - 1, 2, 4)
    out = depthwise_conv2d(x, w, stride, k - 1, 2)
    assert out.grad_fn is not None and "DilatedDepthwise" in type(out.grad_fn).__name__
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    g = torch.randn_like(ref)
    grads_ref = torch.autograd.grad(ref, [x, w], g, create_graph=True)
    grads = torch.autograd.grad(out, [x, w], g, create_graph=True)
    _close(grads, grads_ref, 1e-10)
    v = [torch.randn_like(t) for t in grads]  # double backward
    second_ref = torch.autograd.grad(sum((t * u).sum() for t, u in zip(grads_ref, v)), [x, w])
    second = torch.autograd.grad(sum((t * u).sum() for t, u in zip(grads, v)), [x, w])
    _close(second, second_ref, 1e-10)


def test_dilated_depthwise_under_gradcheck():
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    for stride in (1, 2):
        assert torch.autograd.gradcheck(lambda x, w: depthwise_conv2d(x, w, stride, 2, 2), (x, w))
        assert torch.autograd.gradgradcheck(lambda x, w: depthwise_conv2d(x, w, stride, 2, 2), (x, w))


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("k,H,W", [(3, 2, 2), (5, 4, 4), (5, 2, 7), (5, 6, 3), (3, 1, 1), (5, 8, 8)])
def test_depthwise_weight_grad_where_the_kernel_is_larger_than_the_image(memory_format, k, H, W):
    torch.manual_seed(0)
    x = torch.randn(3, 4, H, W, dtype=torch.float64).contiguous(memory_format=memory_format)
    g = torch.randn(3, 4, H, W, dtype=torch.float64).contiguous(memory_format=memory_format)
    w = torch.randn(4, 1, k, k, dtype=torch.float64)
    expected = kernels._conv_weight_grad(g, x, w, 1, k // 2, 1, 4)
    torch.testing.assert_close(kernels._per_tap_weight_grad(g, x, k, k // 2), expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(kernels._depthwise_weight_grad(g, x, w, k // 2), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 8])
@pytest.mark.parametrize("k,stride,dilation", [(3, 1, 1), (5, 1, 1), (3, 2, 1), (5, 2, 1), (3, 1, 2), (5, 1, 2),
                                               (3, 2, 2), (5, 2, 2)])
def test_cut_taps_only_ever_meet_padding(size, k, stride, dilation):
    # the cut kernel gives the full kernel's output and weight gradient (zero at the cut taps,
    # which only ever multiply padding), to the second derivative
    torch.manual_seed(0)
    padding = dilation * (k - 1) // 2
    x = torch.randn(2, 3, size, size + 1, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 1, k, k, dtype=torch.float64, requires_grad=True)
    cut, cut_padding, cut_dilation = kernels.reached_kernel(x.shape, w, stride, padding, dilation)
    c = (k - cut.shape[-1]) // 2
    # brute force: a tap is cut only if no output pixel reads an image pixel through it
    def reached(n):
        out = (n + 2 * padding - dilation * (k - 1) - 1) // stride + 1
        return {t for t in range(k) for i in range(out) if 0 <= stride * i - padding + t * dilation < n}
    taps = reached(size) | reached(size + 1)  # rows and columns
    assert c == min(min(taps), k - 1 - max(taps))  # the largest cut that keeps the kernel centred
    ref = F.conv2d(x, w, None, stride, padding, dilation, 3)
    out = depthwise_conv2d(x, w, stride, padding, dilation)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    g = torch.randn_like(ref)
    grads_ref = torch.autograd.grad(ref, [x, w], g, create_graph=True)
    grads = torch.autograd.grad(out, [x, w], g, create_graph=True)
    _close(grads, grads_ref, 1e-10)
    v = [torch.randn_like(t) for t in grads]
    _close(torch.autograd.grad(sum((t * u).sum() for t, u in zip(grads, v)), [x, w], allow_unused=True),
           torch.autograd.grad(sum((t * u).sum() for t, u in zip(grads_ref, v)), [x, w], allow_unused=True), 1e-10)
    if size >= 5:
        assert c == 0 and cut is w and (cut_padding, cut_dilation) == (padding, dilation)


def test_cut_kernels_on_the_quick_starts_last_stage():
    w = torch.zeros(8, 1, 5, 5)
    # dil_conv_5x5 on 2x2 pixels reads only its centre tap; sep_conv_5x5 its central 3x3
    assert kernels.reached_kernel((64, 8, 2, 2), w, 1, 4, 2)[0].shape[-2:] == (1, 1)
    assert kernels.reached_kernel((64, 8, 2, 2), w, 1, 4, 2)[1:] == (0, 1)
    assert kernels.reached_kernel((64, 8, 2, 2), w, 1, 2, 1)[0].shape[-2:] == (3, 3)
    assert kernels.reached_kernel((64, 8, 4, 4), w, 1, 4, 2)[1:] == (2, 2)
    assert kernels.reached_kernel((64, 8, 8, 8), w, 1, 4, 2)[0] is w


def test_dil_conv_modules_keep_their_parameter_names_and_count():
    op = OPS["dil_conv_5x5"](8, 1, False)
    assert [n for n, _ in op.named_parameters()] == ["1.weight", "2.weight"]
    assert isinstance(op[1], nn.Conv2d) and op[1].groups == 8 and op[1].dilation == (2, 2)
    assert sum(p.numel() for p in op.parameters()) == 8 * 25 + 8 * 8


# -- lean blocks -------------------------------------------------------------------------------

def _lean_cases():
    for name in ("sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5", "max_pool_3x3",
                 "avg_pool_3x3", "preprocess"):
        for stride in (1, 2):
            if name == "preprocess" and stride == 2:
                continue
            # at 4 and 2 pixels the kernels lose the taps that only meet padding (reached_kernel)
            for size, memory_format in ((8, torch.contiguous_format), (8, torch.channels_last),
                                        (7, torch.contiguous_format), (4, torch.channels_last),
                                        (2, torch.channels_last), (3, torch.contiguous_format)):
                yield name, stride, size, memory_format, False
                if name != "preprocess":  # times the op's alpha, as in the MixedOp
                    yield name, stride, size, memory_format, True


def _block(name, stride, C):
    if name == "preprocess":
        return ReLUConvBN(C, C, 1, 1, 0, affine=False)
    op = OPS[name](C, stride, False)
    return PoolBN(op, C) if "pool" in name else op


def _run(block, x, lean, scale=None):
    if not lean:
        return block(x) if scale is None else scale * block(x)
    if isinstance(block, ReLUConvBN):
        return block.forward_lean(x)
    # the MixedOp's shared relu(x) and the op's softmaxed alpha
    return block.forward_lean(x, kernels.shared_relu(x) if hasattr(block, "after_relu") else None, scale)


@pytest.mark.parametrize("name,stride,size,memory_format,scaled", list(_lean_cases()))
def test_lean_block_matches_pytorch_autograd(name, stride, size, memory_format, scaled):
    torch.manual_seed(0)
    C = 4
    reference = _block(name, stride, C).double()
    lean = _block(name, stride, C).double()
    lean.load_state_dict(reference.state_dict())
    x = torch.randn(5, C, size, size, dtype=torch.float64).contiguous(memory_format=memory_format)
    x.requires_grad_(True)
    # a softmaxed alpha: a 0-dim view into the edge's weights, with autograd history
    scale = torch.softmax(torch.randn(7, dtype=torch.float64, requires_grad=True), 0)[3] if scaled else None
    ref_out, out = _run(reference, x, False, scale), _run(lean, x, True, scale)
    assert type(out.grad_fn).__name__.startswith("_Lean") or "Lean" in type(out.grad_fn).__name__
    assert torch.equal(out, ref_out)  # the same forward kernels
    for key, value in reference.state_dict().items():  # running statistics and batch counters
        assert torch.equal(lean.state_dict()[key], value), key
    g = torch.randn_like(out)
    params = list(reference.parameters()) + ([scale] if scaled else [])
    lean_params = list(lean.parameters()) + ([scale] if scaled else [])
    grads_ref = torch.autograd.grad(ref_out, [x, *params], g, create_graph=True)
    # the hand-written backward (create_graph re-runs the block under autograd instead)
    _close(torch.autograd.grad(out, [x, *lean_params], g, retain_graph=True), grads_ref, 1e-10)
    grads = torch.autograd.grad(out, [x, *lean_params], g, create_graph=True)
    _close(grads, grads_ref, 1e-10)
    v = [torch.randn_like(t) for t in grads]  # double backward, as the exact-HVP test uses
    second_ref = torch.autograd.grad(sum((t * u).sum() for t, u in zip(grads_ref, v)), [x, *params],
                                     allow_unused=True)
    second = torch.autograd.grad(sum((t * u).sum() for t, u in zip(grads, v)), [x, *lean_params],
                                 allow_unused=True)
    _close(second, second_ref, 1e-9)


@pytest.mark.parametrize("name", ["sep_conv_3x3", "dil_conv_5x5", "max_pool_3x3", "avg_pool_3x3"])
def test_lean_block_gives_the_scale_gradient_alone(name):
    """An architecture step whose cell input needs no gradient (the first cell's, fed by the
    stem) asks a block for the alpha's gradient only."""
    torch.manual_seed(0)
    block = _block(name, 1, 4).double()
    x = torch.randn(3, 4, 6, 6, dtype=torch.float64)
    alpha = torch.randn(7, dtype=torch.float64, requires_grad=True)
    out = _run(block, x, True, torch.softmax(alpha, 0)[2])
    g = torch.randn_like(out)
    (grad,) = torch.autograd.grad(out, [alpha], g)
    (expected,) = torch.autograd.grad(torch.softmax(alpha, 0)[2] * _run(block, x, False).detach(), [alpha], g)
    torch.testing.assert_close(grad, expected, rtol=0, atol=1e-12)


def test_lean_batchnorm_follows_momentum_none_and_zero():
    torch.manual_seed(0)
    for momentum in (None, 0.0):
        reference = OPS["sep_conv_3x3"](4, 1, False)
        lean = OPS["sep_conv_3x3"](4, 1, False)
        lean.load_state_dict(reference.state_dict())
        for m in (*reference.modules(), *lean.modules()):
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = momentum
        for _ in range(3):
            x = torch.randn(6, 4, 8, 8, requires_grad=True)
            reference(x)
            lean.forward_lean(x)
        for key, value in reference.state_dict().items():
            assert torch.equal(lean.state_dict()[key], value), (momentum, key)


def _supernet(dtype=torch.float64, **kw):
    torch.manual_seed(0)
    model = Supernet(C=4, num_classes=3, layers=3, steps=2, in_channels=2, **kw).to(dtype)
    with torch.no_grad():
        for a in model.arch_parameters():
            a.normal_(0, 0.5)
    return model


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_supernet_gradients_are_the_same_with_and_without_kernels(kernels_off, memory_format):
    x = torch.randn(6, 2, 8, 8, dtype=torch.float64).contiguous(memory_format=memory_format)
    y = torch.randint(0, 3, (6,))
    results = []
    for on in (True, False):
        model = _supernet().to(memory_format=memory_format)
        with (torch.enable_grad() if on else kernels_off()):
            loss = F.cross_entropy(model(x), y)
            grads = torch.autograd.grad(loss, list(model.parameters()))
        results.append((loss.detach(), grads, model.state_dict()))
    (loss_on, grads_on, state_on), (loss_off, grads_off, state_off) = results
    assert torch.equal(loss_on, loss_off)
    _close(grads_on, grads_off, 1e-12)
    for key in state_off:
        assert torch.equal(state_on[key], state_off[key]), key


def test_lean_supernet_keeps_less_than_half_the_activations(kernels_off):
    """Bytes saved for the backward pass, counted through saved-tensor hooks."""
    def saved_bytes():
        model = _supernet(torch.float32)
        x = torch.randn(8, 2, 16, 16)
        seen, total = set(), [0]

        def pack(t):
            key = (t.untyped_storage().data_ptr(), t.dtype)
            if key not in seen:
                seen.add(key)
                total[0] += t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = F.cross_entropy(model(x), torch.zeros(8, dtype=torch.long))
        del loss
        return total[0]

    lean = saved_bytes()
    with kernels_off():
        plain = saved_bytes()
    assert lean < 0.5 * plain, (lean, plain)


def test_architecture_gradient_computes_no_weight_gradient(monkeypatch):
    calls = []
    for name in ("_conv_weight_grad", "_depthwise_weight_grad"):  # the latter: per tap on tiny images
        real = getattr(kernels, name)
        monkeypatch.setattr(kernels, name, lambda *a, real=real: calls.append(1) or real(*a))
    model = _supernet(torch.float32)
    x, y = torch.randn(4, 2, 8, 8), torch.randint(0, 3, (4,))
    torch.autograd.grad(F.cross_entropy(model(x), y), model.arch_parameters())
    assert calls == []
    torch.autograd.grad(F.cross_entropy(model(x), y), model.weights())
    assert len(calls) > 0


def test_recompute_and_eval_mode_agree_with_plain_autograd(kernels_off):
    x, y = torch.randn(6, 2, 8, 8, dtype=torch.float64), torch.randint(0, 3, (6,))
    model = _supernet()
    model.recompute = True
    grads = torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters()))
    with kernels_off():
        plain = _supernet()
        grads_plain = torch.autograd.grad(F.cross_entropy(plain(x), y), list(plain.parameters()))
    _close(grads, grads_plain, 1e-12)
    model.eval()
    plain.eval()
    with torch.no_grad():
        assert torch.equal(model(x), plain(x))


def test_mixed_op_uses_lean_blocks_only_where_they_apply():
    op = MixedOp(4, 1, PRIMITIVES)
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    assert kernels.lean_applies(x, op.training)
    assert not kernels.lean_applies(x.bfloat16(), op.training)
    assert not kernels.lean_applies(x, False)
    with torch.no_grad():
        assert not kernels.lean_applies(x, True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not kernels.lean_applies(x, True)
        out = op(x, torch.full((len(PRIMITIVES),), 1.0 / len(PRIMITIVES)))  # plain modules under autocast
    assert out.shape == x.shape


def test_compiled_passes_see_the_plain_modules(monkeypatch):
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    assert kernels.cpu_fast_path(x)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert not kernels.cpu_fast_path(x)
    # nor do the layout-keeping gradients of the stride-2 skip and the global pooling
    nhwc = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    fr = FactorizedReduce(4, 4, affine=False)
    assert not {"_EveryOtherPixelBackward", "_GlobalMeanBackward"} & (
        _graph_nodes(fr.after_relu(nhwc)) | _graph_nodes(GlobalAvgPool()(nhwc)))
    monkeypatch.undo()  # and outside torch.compile they are there
    assert "_EveryOtherPixelBackward" in _graph_nodes(fr.after_relu(nhwc))
    assert "_GlobalMeanBackward" in _graph_nodes(GlobalAvgPool()(nhwc))


def _graph_nodes(out: torch.Tensor) -> set[str]:
    """The class names of every node of ``out``'s autograd graph."""
    seen, stack = set(), [out.grad_fn]
    while stack:
        node = stack.pop()
        if node is not None and node not in seen:
            seen.add(node)
            stack.extend(n for n, _ in node.next_functions)
    return {type(node).__name__ for node in seen}
