"""Candidate operations of the DARTS search space (REFERENCE section 1).

``OPS`` maps an op name to a factory ``(C, stride, affine) -> nn.Module`` whose output has ``C``
channels and spatial size ``ceil(H / stride)`` for any ``H`` (odd sizes included). The supernet
builds its mixed ops from this registry and the final network builds its cells from it, so a new
op becomes available to both by registering it here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .kernels import _format_of, depthwise_conv2d, every_other_pixel_grad, lean_conv_bn, lean_pool_bn, pointwise_conv
from .registry import Registry

OPS: Registry = Registry("op")

# Ops without weights. They are the ones a collapsing search drifts towards.
PARAMETER_FREE = frozenset({"none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "noise"})


class Zero(nn.Module):
    """The ``none`` op: zeros, subsampled at stride 2. The supernet skips it entirely."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            return x.mul(0.0)
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


class Identity(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class _ReLUFirst(nn.Sequential):
    """A sequence that starts with a ReLU. ``after_relu(relu(x)) == self(x)``: the supernet
    computes one ReLU per edge and shares it among the ops that start with one."""

    def after_relu(self, x: torch.Tensor) -> torch.Tensor:
        for i, module in enumerate(self):
            if i:
                x = module(x)
        return x


class DepthwiseConv2d(nn.Conv2d):
    """A depthwise ``nn.Conv2d`` (groups = channels, no bias) that runs :func:`depthwise_conv2d`."""

    def __init__(self, C: int, kernel_size: int, stride: int, padding: int, dilation: int = 1) -> None:
        super().__init__(C, C, kernel_size, stride=stride, padding=padding, dilation=dilation, groups=C, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return depthwise_conv2d(x, self.weight, self.stride[0], self.padding[0], self.dilation[0])


class PointwiseConv2d(nn.Conv2d):
    """A 1x1 ``nn.Conv2d`` (stride 1, no bias) that runs :func:`~darts_nas.kernels.pointwise_conv`
    (a matrix product on small NHWC images), as the lean blocks do, so both give the same numbers."""

    def __init__(self, C_in: int, C_out: int) -> None:
        super().__init__(C_in, C_out, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pointwise_conv(x, self.weight)


def _pointwise(conv: nn.Module) -> bool:
    """A 1x1, stride-1, unpadded, ungrouped convolution without bias (the lean blocks' 1x1 conv)."""
    return (type(conv) in (nn.Conv2d, PointwiseConv2d) and conv.kernel_size == (1, 1) and conv.stride == (1, 1)
            and conv.padding == (0, 0) and conv.groups == 1 and conv.bias is None)


def _plain_bn(module: nn.Module) -> bool:
    """A BatchNorm the lean blocks of darts_nas.kernels reproduce: 2-d, without affine parameters."""
    return type(module) is nn.BatchNorm2d and not module.affine


class ReLUConvBN(_ReLUFirst):
    """ReLU, k x k conv (no bias), BN: the cell-input preprocessing and a building block."""

    def __init__(self, C_in: int, C_out: int, kernel_size, stride, padding, affine: bool = True) -> None:
        super().__init__(
            nn.ReLU(inplace=False),
            (PointwiseConv2d(C_in, C_out) if kernel_size in (1, (1, 1)) and stride in (1, (1, 1)) and padding in (0, (0, 0))
             else nn.Conv2d(C_in, C_out, kernel_size, stride=stride, padding=padding, bias=False)),
            nn.BatchNorm2d(C_out, affine=affine),
        )

    def forward_lean(self, x: torch.Tensor) -> torch.Tensor:
        """``self(x)``; with a 1x1 conv and non-affine BN, through the lean block of
        :mod:`darts_nas.kernels` (for passes where :func:`~darts_nas.kernels.lean_applies`)."""
        if _plain_bn(self[2]) and _pointwise(self[1]):
            return lean_conv_bn(x, None, None, self[1], self[2])
        return self(x)


class DilConv(_ReLUFirst):
    """ReLU, depthwise k x k conv (dilation d), pointwise 1x1 conv, BN."""

    def __init__(self, C_in: int, C_out: int, kernel_size: int, stride: int, padding: int,
                 dilation: int, affine: bool = True) -> None:
        super().__init__(
            nn.ReLU(inplace=False),
            DepthwiseConv2d(C_in, kernel_size, stride, padding, dilation),
            PointwiseConv2d(C_in, C_out),
            nn.BatchNorm2d(C_out, affine=affine),
        )

    def forward_lean(self, x: torch.Tensor, relu_x: torch.Tensor | None = None,
                     scale: torch.Tensor | None = None) -> torch.Tensor:
        """``self(x)`` (times ``scale`` when given) through the lean block of
        :mod:`darts_nas.kernels` (non-affine BN only); ``relu_x`` is
        :func:`~darts_nas.kernels.shared_relu` of ``x`` when the edge already computed it."""
        if not (_plain_bn(self[3]) and isinstance(self[1], DepthwiseConv2d) and _pointwise(self[2])):
            return self(x) if scale is None else scale * self(x)
        return lean_conv_bn(x, relu_x, self[1], self[2], self[3], scale)


class SepConv(nn.Sequential):
    """A separable conv applied twice; only the first depthwise conv carries the stride."""

    def __init__(self, C_in: int, C_out: int, kernel_size: int, stride: int, padding: int,
                 affine: bool = True) -> None:
        super().__init__(
            DilConv(C_in, C_in, kernel_size, stride, padding, 1, affine),
            DilConv(C_in, C_out, kernel_size, 1, padding, 1, affine),
        )

    def after_relu(self, x: torch.Tensor) -> torch.Tensor:
        return self[1](self[0].after_relu(x))

    def forward_lean(self, x: torch.Tensor, relu_x: torch.Tensor | None = None,
                     scale: torch.Tensor | None = None) -> torch.Tensor:
        return self[1].forward_lean(self[0].forward_lean(x, relu_x), scale=scale)


def _is_supernet_pool(pool: nn.Module) -> bool:
    """The 3x3, padding-1 pools of OPS (the average one without the padding)."""
    if type(pool) is nn.MaxPool2d:
        return (pool.kernel_size in (3, (3, 3)) and pool.padding in (1, (1, 1)) and pool.dilation in (1, (1, 1))
                and not pool.ceil_mode and not pool.return_indices)
    if type(pool) is nn.AvgPool2d:
        return (pool.kernel_size in (3, (3, 3)) and pool.padding in (1, (1, 1)) and not pool.ceil_mode
                and not pool.count_include_pad and pool.divisor_override is None)
    return False


class PoolBN(nn.Sequential):
    """A 3x3 pool followed by BN: the supernet's pooling ops (see :func:`is_pooling`)."""

    def __init__(self, pool: nn.Module, C: int) -> None:
        super().__init__(pool, nn.BatchNorm2d(C, affine=False))

    def forward_lean(self, x: torch.Tensor, relu_x: torch.Tensor | None = None,
                     scale: torch.Tensor | None = None) -> torch.Tensor:
        """``self(x)`` (times ``scale`` when given) through the lean block of :mod:`darts_nas.kernels`."""
        pool = self[0]
        if not (_plain_bn(self[1]) and _is_supernet_pool(pool)):
            return self(x) if scale is None else scale * self(x)
        return lean_pool_bn(x, self[0], self[1], scale)


class _EveryOtherPixel(torch.autograd.Function):
    """``x[:, :, offset::2, offset::2]`` whose gradient is laid out like ``x`` (see
    :func:`~darts_nas.kernels.every_other_pixel_grad`)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, offset: int) -> torch.Tensor:
        ctx.shape, ctx.offset, ctx.memory_format = x.shape, offset, _format_of(x)
        return x[:, :, offset::2, offset::2]

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return every_other_pixel_grad(grad, ctx.shape, ctx.offset, ctx.memory_format), None


def _channels_last(x: torch.Tensor) -> bool:
    return _format_of(x) is torch.channels_last


def _every_other_pixel(x: torch.Tensor, offset: int) -> torch.Tensor:
    """``x[:, :, offset::2, offset::2]``; for NHWC ``x`` with the gradient in NHWC (outside
    ``torch.compile``, which sees plain slicing)."""
    if _channels_last(x) and torch.is_grad_enabled() and not torch.compiler.is_compiling():
        return _EveryOtherPixel.apply(x, offset)
    return x[:, :, offset::2, offset::2]


class _GlobalMean(torch.autograd.Function):
    """``F.adaptive_avg_pool2d(x, 1)`` of an NHWC ``x`` with the gradient in NHWC too (PyTorch's
    CPU kernel returns it in NCHW, which slows every pass over the last cell's gradients)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.shape = x.shape
        return F.adaptive_avg_pool2d(x, 1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        H, W = ctx.shape[-2:]
        return (grad / (H * W)).expand(ctx.shape).contiguous(memory_format=torch.channels_last)


class GlobalAvgPool(nn.Module):
    """``nn.AdaptiveAvgPool2d(1)``: (B, C, H, W) -> (B, C, 1, 1), same values and gradients; the
    gradient of an NHWC input is NHWC."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _channels_last(x) and torch.is_grad_enabled() and not torch.compiler.is_compiling():
            return _GlobalMean.apply(x)
        return F.adaptive_avg_pool2d(x, 1)


class FactorizedReduce(nn.Module):
    """Halve the resolution without losing pixels: two stride-2 1x1 convs, the second on the
    input shifted by one pixel, each producing ``C_out // 2`` channels, concatenated, then BN.

    The shifted path pads one zero row and column at the far edge, so both paths give
    ``ceil(H / 2)`` rows for odd ``H`` too; for even ``H`` this is exactly the usual
    ``x[:, :, 1:, 1:]`` shift. A stride-2 1x1 conv reads only every other pixel, so the convs
    run on those pixels (``x[:, :, ::2, ::2]`` and ``x[:, :, 1::2, 1::2]``): the same numbers,
    without building the padded, shifted copy of the whole input and its gradient.
    """

    def __init__(self, C_in: int, C_out: int, affine: bool = True) -> None:
        super().__init__()
        if C_out % 2:
            raise ValueError(f"FactorizedReduce needs an even number of output channels, got {C_out}")
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, bias=False)
        self.conv_2 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(C_out, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.after_relu(self.relu(x))

    def after_relu(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[-2:]
        # (B, C, ceil(H/2), ceil(W/2)) and (B, C, floor(H/2), floor(W/2))
        even, odd = _every_other_pixel(x, 0), _every_other_pixel(x, 1)
        if H % 2 or W % 2:  # the shifted input's zero row / column at the far edge
            odd = F.pad(odd, (0, W % 2, 0, H % 2))
        return self.bn(torch.cat([self._conv(self.conv_1, even), self._conv(self.conv_2, odd)], dim=1))

    @staticmethod
    def _conv(conv: nn.Conv2d, pixels: torch.Tensor) -> torch.Tensor:
        """``conv`` (a stride-2 1x1 conv) on the pixels it reads, already subsampled."""
        return F.conv2d(pixels, conv.weight, conv.bias)


class Conv7x1x7(_ReLUFirst):
    """ReLU, 1x7 conv (stride (1, s)), 7x1 conv (stride (s, 1)), BN (NASNet/AmoebaNet op)."""

    def __init__(self, C: int, stride: int, affine: bool = True) -> None:
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(C, C, (1, 7), stride=(1, stride), padding=(0, 3), bias=False),
            nn.Conv2d(C, C, (7, 1), stride=(stride, 1), padding=(3, 0), bias=False),
            nn.BatchNorm2d(C, affine=affine),
        )


class Noise(nn.Module):
    """RobustDARTS's ``noise`` op (space S4; their ``NoiseOp`` with mean 0 and std 1, fact sheet
    section 2.1): the input *replaced* by i.i.d. N(0, 1) noise of its shape (subsampled by the
    stride first on a stride-2 edge); nothing of x passes and nothing is added to it. Like theirs
    it draws noise in evaluation mode too (their op has no train/eval switch), from torch's global
    generator, whose state every checkpoint keeps."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, C, H, W) -> N(0, 1) of shape (B, C, H / stride, W / stride)
        shape = x[:, :, :: self.stride, :: self.stride] if self.stride != 1 else x
        return torch.randn_like(shape)


def _skip(C: int, stride: int, affine: bool) -> nn.Module:
    return Identity() if stride == 1 else FactorizedReduce(C, C, affine)


OPS.register("none", lambda C, stride, affine: Zero(stride))
OPS.register("max_pool_3x3", lambda C, stride, affine: nn.MaxPool2d(3, stride=stride, padding=1))
OPS.register("avg_pool_3x3",
             lambda C, stride, affine: nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False))
OPS.register("skip_connect", _skip)
OPS.register("sep_conv_3x3", lambda C, stride, affine: SepConv(C, C, 3, stride, 1, affine))
OPS.register("sep_conv_5x5", lambda C, stride, affine: SepConv(C, C, 5, stride, 2, affine))
OPS.register("dil_conv_3x3", lambda C, stride, affine: DilConv(C, C, 3, stride, 2, 2, affine))
OPS.register("dil_conv_5x5", lambda C, stride, affine: DilConv(C, C, 5, stride, 4, 2, affine))
OPS.register("sep_conv_7x7", lambda C, stride, affine: SepConv(C, C, 7, stride, 3, affine))
OPS.register("conv_7x1_1x7", lambda C, stride, affine: Conv7x1x7(C, stride, affine))
OPS.register("noise", lambda C, stride, affine: Noise(stride))


def is_pooling(name: str) -> bool:
    """Pooling ops get a BN(affine=False) after them inside the supernet's mixed op."""
    return "pool" in name
