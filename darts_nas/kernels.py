"""Hand-written backward passes for the CPU: the same numbers as PyTorch's autograd, faster and
with fewer saved activations.

* :func:`depthwise_conv2d`: PyTorch's CPU backward of a dilated depthwise convolution is 5-10x
  slower than its forward. The dil_conv ops go through fast kernels instead (see
  :func:`depthwise_backward`).
* :func:`lean_conv_bn` and :func:`lean_pool_bn`: the supernet's building blocks "ReLU, depthwise
  conv, 1x1 conv, BatchNorm" and "pool, BatchNorm" (BatchNorm without affine parameters) as one
  autograd function each. PyTorch's autograd keeps every intermediate tensor of such a block for
  the backward pass (the ReLU output, the depthwise output, the 1x1 output, max-pool indices); a
  lean block keeps only its input, which stays alive anyway as a node of the cell, and its output,
  which the alpha-weighted sum keeps anyway. The backward pass gets BatchNorm's input gradient
  from its output (x_hat = y when there is no affine transform) and recomputes the ReLU and the
  depthwise convolution when a weight gradient needs them; an architecture step, which asks for
  the alphas' gradient only, recomputes nothing. About a third of the supernet's activation memory
  remains.

Every backward here is built from differentiable operations, so double backward (``create_graph``)
still works, and every path is tested against PyTorch's own autograd to the second derivative.
These paths run on the CPU in float32/float64 without autocast, and not inside ``torch.compile``
(``--compile`` sees the plain modules); elsewhere the plain modules run.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn


_enabled = True


def set_enabled(enabled: bool) -> bool:
    """Turn the hand-written paths on or off (benchmarks compare both); returns the old setting."""
    global _enabled
    previous, _enabled = _enabled, bool(enabled)
    return previous


def cpu_fast_path(x: torch.Tensor) -> bool:
    """Whether the hand-written CPU paths apply to a pass over ``x``."""
    return (_enabled and x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)
            and not torch.is_autocast_enabled("cpu") and not torch.compiler.is_compiling())


def lean_applies(x: torch.Tensor, training: bool) -> bool:
    """Whether a training-mode pass over ``x`` can use the lean blocks."""
    return training and torch.is_grad_enabled() and cpu_fast_path(x)


def _format_of(x: torch.Tensor) -> torch.memory_format:
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def _to_phases(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) with even H, W -> (4B, C, H/2, W/2): the four pixel phases (row parity, column
    parity) of every image stacked along the batch, in ``x``'s memory format."""
    B, C, H, W = x.shape
    if _format_of(x) is torch.channels_last:
        nhwc = x.permute(0, 2, 3, 1).reshape(B, H // 2, 2, W // 2, 2, C)
        return nhwc.permute(2, 4, 0, 1, 3, 5).reshape(4 * B, H // 2, W // 2, C).permute(0, 3, 1, 2)
    return x.reshape(B, C, H // 2, 2, W // 2, 2).permute(3, 5, 0, 1, 2, 4).reshape(4 * B, C, H // 2, W // 2)


def every_other_pixel_grad(grad: torch.Tensor, shape: torch.Size, offset: int,
                           memory_format: torch.memory_format) -> torch.Tensor:
    """The gradient of ``x[:, :, offset::2, offset::2]`` for an ``x`` of ``shape``: zeros with
    ``grad`` at those pixels, laid out in ``memory_format`` (PyTorch's own slicing gradient is
    always NCHW, and every later pass over an NCHW gradient in an NHWC step is 2-5x slower).
    Differentiable in ``grad`` (double backward)."""
    grad_x = torch.empty(shape, dtype=grad.dtype, device=grad.device, memory_format=memory_format).zero_()
    grad_x[:, :, offset::2, offset::2] = grad
    return grad_x


def _needed(ctx, i: int) -> bool:
    """Whether the running backward pass uses the gradient of the ``i``-th input of a custom
    autograd function: an architecture step asks for the alphas' gradient only, and then no
    weight gradient is computed (as PyTorch's own convolution does)."""
    if not ctx.needs_input_grad[i]:
        return False
    # next_functions holds one entry per tensor argument of forward (ctx.tensor_args, in order)
    node = ctx.next_functions[sum(ctx.tensor_args[:i])][0]
    if node is None:
        return False
    try:
        return bool(torch._C._will_engine_execute_node(node))
    except (AttributeError, RuntimeError):  # an API change or an unusual graph: compute it
        return True


def _dilated_fast(x: torch.Tensor, weight: torch.Tensor, padding: int, dilation: int) -> bool:
    k = weight.shape[-1]
    return (cpu_fast_path(x) and dilation == 2 and k % 2 == 1 and weight.shape[-2] == k
            and padding == k - 1)


def _conv_weight_grad(grad, x, weight, stride, padding, dilation, groups):
    return torch.ops.aten.convolution_backward(
        grad, x, weight, None, [stride, stride], [padding, padding], [dilation, dilation], False, [0, 0],
        groups, [False, True, False])[1]


def _few_pixels_nhwc(x: torch.Tensor) -> bool:
    """An NHWC tensor of at most 4x4 pixels: there oneDNN's 1x1 convolution costs 2-3x a matrix
    product over the pixels (its fixed cost per call dominates), so :func:`pointwise_conv` takes
    the matrix product."""
    return (x.dim() == 4 and x.shape[-2] * x.shape[-1] <= 16
            and x.is_contiguous(memory_format=torch.channels_last) and cpu_fast_path(x))


def pointwise_conv(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``F.conv2d(x, weight)`` for a 1x1 ``weight`` (C_out, C_in, 1, 1), as a matrix product over
    the pixels where that is faster (:func:`_few_pixels_nhwc`); differentiable, NHWC out."""
    if not _few_pixels_nhwc(x):
        return F.conv2d(x, weight)
    N, C, H, W = x.shape
    y = x.permute(0, 2, 3, 1).reshape(-1, C) @ weight.reshape(weight.shape[0], C).t()
    return y.view(N, H, W, -1).permute(0, 3, 1, 2)


def _pointwise_weight_grad(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The weight gradient of :func:`pointwise_conv`."""
    if not (_few_pixels_nhwc(x) and _few_pixels_nhwc(grad)):
        return _conv_weight_grad(grad, x, weight, 1, 0, 1, 1)
    g = grad.permute(0, 2, 3, 1).reshape(-1, grad.shape[1])
    return (g.t() @ x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])).view(weight.shape)


def _one_tap(weight: torch.Tensor, stride: int, padding: int) -> bool:
    """A depthwise 1x1 kernel without padding (what :func:`reached_kernel` leaves of a dilated
    kernel on the last stage's 2x2 pixels): a per-channel multiply, 10x cheaper than oneDNN's call."""
    return weight.shape[-2:] == (1, 1) and stride == 1 and padding == 0


def _depthwise_forward(x: torch.Tensor, weight: torch.Tensor, stride: int, padding: int, dilation: int) -> torch.Tensor:
    if _one_tap(weight, stride, padding):
        return x * weight.view(1, -1, 1, 1)
    return F.conv2d(x, weight, None, stride, padding, dilation, x.shape[1])


def _depthwise_weight_grad(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, padding: int) -> torch.Tensor:
    """Weight gradient of a stride-1, undilated depthwise convolution with 'same' padding
    (``padding = (k - 1) / 2``). Where the kernel is larger than the image and the batch times the
    channels is large (the 5x5 kernels on the 4x4 pixel phases of the paper's last stage: 256 x 64),
    oneDNN's kernel is slower than one multiply-and-sum per tap over the pixels that tap reaches
    (1.6x on one core, equal on two); with fewer channels (the quick start's 64 x 16-32 of 2x2 and
    4x4 pixels) oneDNN is 1.1-3.7x faster (measured in NHWC, session 9)."""
    k = weight.shape[-1]
    H, W = x.shape[-2:]
    if not (k > H or k > W) or grad.shape[-2:] != x.shape[-2:] or padding != (k - 1) // 2 \
            or x.shape[0] * x.shape[1] < 16384:
        return _conv_weight_grad(grad, x, weight, 1, padding, 1, x.shape[1])
    return _per_tap_weight_grad(grad, x, k, padding)


def _per_tap_weight_grad(grad: torch.Tensor, x: torch.Tensor, k: int, padding: int) -> torch.Tensor:
    """:func:`_depthwise_weight_grad` as one multiply-and-sum per tap over the pixels it reaches."""
    H, W = x.shape[-2:]
    grad_w = x.new_zeros(x.shape[1], k, k)
    for i in range(k):
        di = i - padding  # row offset of this tap: output row h reads input row h + di
        h0, h1 = max(0, -di), min(H, H - di)
        for j in range(k):
            dj = j - padding
            w0, w1 = max(0, -dj), min(W, W - dj)
            if h0 < h1 and w0 < w1:
                grad_w[:, i, j] = (x[:, :, h0 + di:h1 + di, w0 + dj:w1 + dj] * grad[:, :, h0:h1, w0:w1]).sum((0, 2, 3))
    return grad_w.unsqueeze(1)


def _input_grad_without_input(x: torch.Tensor, weight: torch.Tensor, stride: int, padding: int,
                              dilation: int) -> bool:
    """Whether :func:`depthwise_backward` computes the input gradient from the output gradient
    and the kernel alone (so a lean block need not recompute the convolution's input for it)."""
    k = weight.shape[-1]
    same = padding == dilation * (k - 1) // 2 and weight.shape[-2] == k
    return (stride == 1 and same) or (stride == 2 and _dilated_fast(x, weight, padding, dilation))


def depthwise_backward(grad: torch.Tensor, x: torch.Tensor | None, weight: torch.Tensor, stride: int,
                       padding: int, dilation: int, input_shape: torch.Size, need_input: bool,
                       need_weight: bool) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Input and weight gradients of ``F.conv2d(x, weight, None, stride, padding, dilation, C)``
    for a depthwise ``weight`` (C, 1, k, k). ``x`` may be None when only the input gradient is
    asked for and :func:`_input_grad_without_input` holds.

    * stride 1, 'same' padding: the input gradient is the convolution of ``grad`` with the
      kernel flipped (PyTorch's fast forward kernel);
    * dilation 2, stride 1: the weight gradient is that of an undilated convolution over the four
      pixel phases (a dilation-2 kernel only ever combines pixels of one phase);
    * dilation 2, stride 2: only the even pixels meet the kernel, an undilated convolution of those.
    """
    C = input_shape[1]
    grad_x = grad_w = None
    if _one_tap(weight, stride, padding):
        if need_input:
            grad_x = grad * weight.view(1, -1, 1, 1)
        if need_weight:
            grad_w = (grad * x).sum((0, 2, 3)).view(weight.shape)
        return grad_x, grad_w
    without_input = _input_grad_without_input(grad, weight, stride, padding, dilation)
    if stride == 2 and without_input:  # dilation 2: an undilated convolution of the even pixels
        if need_input:
            grad_even = F.conv2d(grad, weight.flip(2, 3), None, 1, padding // 2, 1, C)
            grad_x = every_other_pixel_grad(grad_even, input_shape, 0, _format_of(grad))
        if need_weight:
            grad_w = _depthwise_weight_grad(grad, x[:, :, ::2, ::2], weight, padding // 2)
        return grad_x, grad_w
    if without_input and need_input:  # stride 1, 'same' padding
        grad_x = F.conv2d(grad, weight.flip(2, 3), None, 1, padding, dilation, C)
        need_input = False
    if need_weight and dilation == 2 and stride == 1 and _dilated_fast(grad, weight, padding, dilation) \
            and input_shape[2] % 2 == 0 and input_shape[3] % 2 == 0:
        grad_w = _depthwise_weight_grad(_to_phases(grad), _to_phases(x), weight, padding // 2)
        need_weight = False
    if need_weight and stride == 1 and dilation == 1 and weight.shape[-2] == weight.shape[-1] \
            and padding == (weight.shape[-1] - 1) // 2:
        grad_w = _depthwise_weight_grad(grad, x, weight, padding)
        need_weight = False
    if need_input or need_weight:
        gx, gw, _ = torch.ops.aten.convolution_backward(
            grad, x, weight, None, [stride, stride], [padding, padding], [dilation, dilation], False, [0, 0],
            C, [need_input, need_weight, False])
        grad_x = gx if need_input else grad_x
        grad_w = gw if need_weight else grad_w
    return grad_x, grad_w


class _DilatedDepthwise(torch.autograd.Function):
    """Dilation-2 depthwise convolution with 'same' padding: PyTorch's forward, the backward of
    :func:`depthwise_backward`."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, stride: int, padding: int) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.tensor_args = (True, True)
        ctx.stride, ctx.padding = stride, padding
        return F.conv2d(x, weight, None, stride, padding, 2, x.shape[1])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad_x, grad_w = depthwise_backward(grad, x, weight, ctx.stride, ctx.padding, 2, x.shape,
                                            _needed(ctx, 0), _needed(ctx, 1))
        return grad_x, grad_w, None, None


@functools.lru_cache(maxsize=1024)
def unreached_taps(size: int, k: int, stride: int, padding: int, dilation: int) -> int:
    """How many taps at each end of a k-tap kernel row never meet a pixel of an image side of
    ``size`` (they only ever multiply the zero padding), for a convolution with these settings.
    Symmetric: the smaller of the two ends."""
    out = (size + 2 * padding - dilation * (k - 1) - 1) // stride + 1
    reached = [t for t in range(k) if any(0 <= stride * i - padding + t * dilation < size for i in range(out))]
    if not reached:
        return 0
    return min(reached[0], k - 1 - reached[-1])


def reached_kernel(x_shape: torch.Size, weight: torch.Tensor, stride: int, padding: int,
                   dilation: int) -> tuple[torch.Tensor, int, int]:
    """``(weight', padding', dilation')`` computing the same convolution with the taps that never
    meet a pixel cut off: on the small images of a quick search (a 5x5 kernel, dilation 2, on the
    2x2 pixels of the last stage reaches only padding but its centre) oneDNN's depthwise kernel is
    up to 35x slower with the full kernel than with the taps that matter. Slicing is differentiable,
    so the cut taps get a zero gradient. The same weight, padding and dilation where all taps
    matter (any image of 5 pixels or more)."""
    k = weight.shape[-1]
    if weight.shape[-2] != k:
        return weight, padding, dilation
    c = min(unreached_taps(x_shape[-2], k, stride, padding, dilation),
            unreached_taps(x_shape[-1], k, stride, padding, dilation))
    if c == 0:
        return weight, padding, dilation
    weight = weight[:, :, c:k - c, c:k - c]
    return weight, padding - c * dilation, dilation if weight.shape[-1] > 1 else 1


def depthwise_conv2d(x: torch.Tensor, weight: torch.Tensor, stride: int, padding: int, dilation: int) -> torch.Tensor:
    """``F.conv2d(x, weight, stride=stride, padding=padding, dilation=dilation, groups=C)`` for a
    depthwise ``weight`` (C, 1, k, k), without the taps that only meet padding
    (:func:`reached_kernel`); on the CPU, dilation 2 with 'same' padding (the dil_conv
    ops) gets the fast backward of :func:`depthwise_backward`."""
    weight, padding, dilation = reached_kernel(x.shape, weight, stride, padding, dilation)
    if stride in (1, 2) and _dilated_fast(x, weight, padding, dilation):
        return _DilatedDepthwise.apply(x, weight, stride, padding)
    return _depthwise_forward(x, weight, stride, padding, dilation)


# -- BatchNorm without affine parameters, from its output --------------------------------------

def _batch_norm_forward(bn: nn.BatchNorm2d, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``bn(z)`` in training mode (running statistics and batch counter updated exactly as
    ``nn.BatchNorm2d`` does), also returning the per-channel 1/std of the batch."""
    momentum = 0.0 if bn.momentum is None else bn.momentum
    if bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        if bn.momentum is None:
            momentum = 1.0 / float(bn.num_batches_tracked)
    y, _, invstd = torch.native_batch_norm(z, None, None, bn.running_mean, bn.running_var, True, momentum, bn.eps)
    return y, invstd


def _batch_norm_backward(grad: torch.Tensor, y: torch.Tensor, invstd: torch.Tensor, scale: torch.Tensor | None,
                         need_input: bool, need_scale: bool) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Gradients of ``scale * y`` where ``y`` is the output (= x_hat) of a training-mode,
    non-affine BatchNorm, ``scale`` a scalar (an op's softmaxed alpha; None for 1), from ``y``:

    * input: scale * invstd * (g - mean(g) - y * mean(g * y)), means over batch and pixels;
    * scale: sum(g * y).

    One pass of PyTorch's kernel gives both. Not differentiable (``invstd`` carries no autograd
    history): double backward goes through :func:`_regrad`."""
    C = y.shape[1]
    # PyTorch's kernel with y as the input, zero mean and unit 1/std (so x_hat = y), and the real
    # 1/std (times the scale) passed as the affine weight, which multiplies the input gradient;
    # the affine weight's own gradient, sum(g * x_hat) per channel, gives the scale's.
    weight = invstd if scale is None else invstd * scale.detach()
    # The gradient of a cell's last nodes is a channel slice of the concatenation's, and the last
    # cell's comes back from the classifier in NCHW: the kernel is 3-10x slower on either.
    memory_format = _format_of(y)
    if not grad.is_contiguous(memory_format=memory_format):
        grad = grad.contiguous(memory_format=memory_format)
    grad_z, grad_weight, _ = torch.ops.aten.native_batch_norm_backward(
        grad, y, weight, None, None, y.new_zeros(C), y.new_ones(C), True, 0.0, [need_input, need_scale, False])
    return grad_z, (grad_weight.sum() if need_scale else None)


def _scaled(y: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    return y if scale is None else y * scale


def _regrad(ctx, forward, grad_y: torch.Tensor, inputs: dict[int, torch.Tensor]) -> list:
    """Double backward (``create_graph``) of a lean block: run ``forward`` again with autograd on
    (BatchNorm on batch statistics, running statistics untouched) and differentiate it, so that
    every dependence, the batch statistics' included, is in the graph. Returns one gradient per
    forward argument of the block, None where no gradient is asked for."""
    wanted = {i: t for i, t in inputs.items() if ctx.needs_input_grad[i] and t.requires_grad}
    out = [None] * len(ctx.needs_input_grad)
    if not wanted:
        return out
    with torch.enable_grad():
        y = forward()
    grads = torch.autograd.grad(y, list(wanted.values()), grad_y, create_graph=True, allow_unused=True)
    for i, g in zip(wanted, grads):
        out[i] = g
    return out


class _SharedReLU(torch.autograd.Function):
    """``relu(x)`` shared by the ops of an edge, keeping only ``x`` (a node of the cell, alive
    anyway) for the backward pass: the ReLU's mask is applied once, to the sum of the ops'
    gradients, instead of once per op."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return F.relu(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return torch.ops.aten.threshold_backward(grad, x, 0)  # differentiable in grad (double backward)


def shared_relu(x: torch.Tensor) -> torch.Tensor:
    """``relu(x)`` for the lean blocks of one edge (see :func:`lean_conv_bn`)."""
    return _SharedReLU.apply(x)


class _LeanConvBN(torch.autograd.Function):
    """relu(x) -> [depthwise conv] -> 1x1 conv -> BatchNorm (no affine) [-> times a scalar],
    keeping x and the BatchNorm output. Given ``relu_x``, the block starts from it and gives its
    gradient (x only serves to recompute it); otherwise it applies the ReLU itself."""

    @staticmethod
    def forward(ctx, x, relu_x, dw_weight, pw_weight, bn, dw, scale):
        # dw: (stride, padding, dilation) of the depthwise conv, or None for relu -> 1x1 -> BN
        h = relu_x if relu_x is not None else F.relu(x)
        if dw is not None:
            h = _depthwise_forward(h, dw_weight, *dw)
        y, invstd = _batch_norm_forward(bn, pointwise_conv(h, pw_weight))
        ctx.dw, ctx.eps = dw, bn.eps
        ctx.tensor_args = (True, relu_x is not None, True, True, False, False, scale is not None)
        ctx.save_for_backward(x, dw_weight, pw_weight, y, invstd, scale)
        return _scaled(y, scale)

    @staticmethod
    def backward(ctx, grad_y):
        x, dw_weight, pw_weight, y, invstd, scale = ctx.saved_tensors
        dw = ctx.dw
        given_relu = ctx.tensor_args[1]  # the gradient goes to relu_x (index 1), else to x (index 0)
        if torch.is_grad_enabled():
            # Recomputed from x with autograd on: the gradient for relu_x, as a function of relu(x),
            # reaches x through the shared ReLU's mask just as relu_x's would.
            start = F.relu(x) if given_relu else x

            def forward():
                h = start if given_relu else F.relu(start)
                if dw is not None:
                    h = depthwise_conv2d(h, dw_weight, *dw)
                return _scaled(F.batch_norm(pointwise_conv(h, pw_weight), None, None, training=True, eps=ctx.eps), scale)
            return tuple(_regrad(ctx, forward, grad_y,
                                 {(1 if given_relu else 0): start, 2: dw_weight, 3: pw_weight, 6: scale}))
        need_x = _needed(ctx, 1 if given_relu else 0)
        need_dw = dw is not None and _needed(ctx, 2)
        need_pw = _needed(ctx, 3)
        need_scale = scale is not None and _needed(ctx, 6)
        grad_z, grad_scale = _batch_norm_backward(grad_y, y, invstd, scale, need_x or need_dw or need_pw, need_scale)
        relu_x = h = None
        # the ReLU output is needed by the weight gradients, and by a depthwise input gradient
        # that cannot do without its input; the ReLU's own gradient takes its mask from x
        input_free = dw is None or _input_grad_without_input(x, dw_weight, *dw)
        if need_pw or need_dw or (need_x and not input_free):
            relu_x = F.relu(x)
        if need_pw:
            h = _depthwise_forward(relu_x, dw_weight, *dw) if dw is not None else relu_x
        grad_h = grad_pw = grad_dw = grad_x = None
        if need_x or need_dw:
            grad_h = pointwise_conv(grad_z, pw_weight.transpose(0, 1))  # input gradient of the 1x1 conv
        if need_pw:
            grad_pw = _pointwise_weight_grad(grad_z, h, pw_weight)
        if grad_h is not None:
            if dw is None:
                grad_relu = grad_h
            else:
                grad_relu, grad_dw = depthwise_backward(grad_h, relu_x, dw_weight, dw[0], dw[1], dw[2], x.shape,
                                                        need_x, need_dw)
            if need_x and given_relu:
                return None, grad_relu, grad_dw, grad_pw, None, None, grad_scale
            if need_x:
                grad_x = torch.ops.aten.threshold_backward(grad_relu, x, 0)
        return grad_x, None, grad_dw, grad_pw, None, None, grad_scale


def lean_conv_bn(x: torch.Tensor, relu_x: torch.Tensor | None, dw_conv: nn.Conv2d | None,
                 pw_conv: nn.Conv2d, bn: nn.BatchNorm2d, scale: torch.Tensor | None = None) -> torch.Tensor:
    """``bn(pw_conv(dw_conv(relu(x))))`` (``dw_conv`` may be None) with the lean backward, times
    ``scale`` (a 0-dim tensor, e.g. the op's softmaxed alpha) when given: its gradient comes out of
    BatchNorm's backward pass for free, and the output gradient is never scaled on its own.
    ``relu_x`` is :func:`shared_relu` of ``x``, computed once for the blocks of an edge: they
    return its gradient unmasked, and the shared ReLU masks their sum once. Without it the block
    applies the ReLU itself."""
    dw = None
    dw_weight = pw_conv.weight.new_empty(0)
    if dw_conv is not None:
        dw_weight, padding, dilation = reached_kernel(x.shape, dw_conv.weight, dw_conv.stride[0],
                                                      dw_conv.padding[0], dw_conv.dilation[0])
        dw = (dw_conv.stride[0], padding, dilation)
    return _LeanConvBN.apply(x, relu_x, dw_weight, pw_conv.weight, bn, dw, scale)


def _pool(x: torch.Tensor, kind: str, stride: int) -> torch.Tensor:
    if kind == "max":
        return F.max_pool2d(x, 3, stride, 1)
    return F.avg_pool2d(x, 3, stride, 1, count_include_pad=False)


class _LeanPoolBN(torch.autograd.Function):
    """3x3 max or average pool (padding 1, average without the padding) -> BatchNorm (no affine)
    [-> times a scalar], keeping x and the BatchNorm output; max-pool indices are recomputed in
    the backward pass."""

    @staticmethod
    def forward(ctx, x, kind, stride, bn, scale):
        pooled = _pool(x, kind, stride)
        y, invstd = _batch_norm_forward(bn, pooled)
        ctx.kind, ctx.stride, ctx.eps = kind, stride, bn.eps
        ctx.tensor_args = (True, False, False, False, scale is not None)
        ctx.save_for_backward(x, y, invstd, scale)
        return _scaled(y, scale)

    @staticmethod
    def backward(ctx, grad_y):
        x, y, invstd, scale = ctx.saved_tensors
        if torch.is_grad_enabled():
            def forward():
                pooled = _pool(x, ctx.kind, ctx.stride)
                return _scaled(F.batch_norm(pooled, None, None, training=True, eps=ctx.eps), scale)
            return tuple(_regrad(ctx, forward, grad_y, {0: x, 4: scale}))
        need_x = _needed(ctx, 0)
        need_scale = scale is not None and _needed(ctx, 4)
        if not (need_x or need_scale):
            return None, None, None, None, None
        grad_pooled, grad_scale = _batch_norm_backward(grad_y, y, invstd, scale, need_x, need_scale)
        if not need_x:
            return None, None, None, None, grad_scale
        s = ctx.stride
        if ctx.kind == "max":
            with torch.no_grad():
                _, indices = F.max_pool2d(x, 3, s, 1, return_indices=True)
            grad_x = torch.ops.aten.max_pool2d_with_indices_backward(
                grad_pooled, x, [3, 3], [s, s], [1, 1], [1, 1], False, indices)
        else:
            grad_x = torch.ops.aten.avg_pool2d_backward(grad_pooled, x, [3, 3], [s, s], [1, 1], False, False, None)
        return grad_x, None, None, None, grad_scale


def lean_pool_bn(x: torch.Tensor, pool: nn.Module, bn: nn.BatchNorm2d, scale: torch.Tensor | None = None
                 ) -> torch.Tensor:
    """``bn(pool(x))`` for the supernet's 3x3 max/average pools, with the lean backward, times
    ``scale`` when given (as :func:`lean_conv_bn`)."""
    kind = "max" if isinstance(pool, nn.MaxPool2d) else "avg"
    stride = pool.stride if isinstance(pool.stride, int) else pool.stride[0]
    return _LeanPoolBN.apply(x, kind, stride, bn, scale)
