import pytest
import torch

from darts_nas.genotype import PRIMITIVES
from darts_nas.ops import OPS, FactorizedReduce, GlobalAvgPool
from darts_nas.errors import ConfigError


@pytest.mark.parametrize("name", OPS.names())
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", [8, 15, 33])
def test_every_op_keeps_channels_and_gives_ceil_size(name, stride, size):
    op = OPS[name](6, stride, True)
    y = op(torch.randn(2, 6, size, size + 1))
    expected = (-(-size // stride), -(-(size + 1) // stride))
    assert y.shape == (2, 6, *expected)


def test_registry_is_a_superset_of_the_darts_candidates():
    assert set(PRIMITIVES) <= set(OPS.names())
    assert {"sep_conv_7x7", "conv_7x1_1x7"} <= set(OPS.names())


def test_unknown_op_lists_valid_names():
    with pytest.raises(ConfigError, match="sep_conv_3x3"):
        OPS.get("sep_conv_9x9")


def test_none_is_exact_zero_and_subsampled():
    x = torch.randn(2, 3, 9, 9)
    assert torch.equal(OPS["none"](3, 1, False)(x), torch.zeros_like(x))
    assert OPS["none"](3, 2, False)(x).shape == (2, 3, 5, 5)


def test_factorized_reduce_even_size_matches_plain_shift():
    # For even sizes the padded shift must equal the usual x[:, :, 1:, 1:] shift.
    torch.manual_seed(0)
    fr = FactorizedReduce(4, 8, affine=False).eval()
    x = torch.randn(2, 4, 10, 10)
    relu = torch.relu(x)
    ref = torch.cat([fr.conv_1(relu), fr.conv_2(relu[:, :, 1:, 1:])], dim=1)
    assert torch.allclose(fr(x), fr.bn(ref))


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("H,W", [(8, 8), (7, 7), (6, 9), (1, 1)])
def test_factorized_reduce_matches_its_definition_with_gradients(H, W, memory_format):
    # Definition: stride-2 1x1 convs of relu(x) and of relu(x) padded by one zero row and column
    # at the far edge, shifted up-left by one pixel.
    torch.manual_seed(0)
    fr = FactorizedReduce(4, 8, affine=True).double()
    x = torch.randn(3, 4, H, W, dtype=torch.float64).contiguous(memory_format=memory_format).requires_grad_()
    relu = torch.relu(x)
    shifted = torch.nn.functional.pad(relu, (0, 1, 0, 1))[:, :, 1:, 1:]
    ref = fr.bn(torch.cat([fr.conv_1(relu), fr.conv_2(shifted)], dim=1))
    out = fr(x)
    assert out.shape == (3, 8, (H + 1) // 2, (W + 1) // 2)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    g = torch.randn_like(out)
    params = [x, fr.conv_1.weight, fr.conv_2.weight, fr.bn.weight]
    grads = torch.autograd.grad(out, params, g)
    for a, e in zip(grads, torch.autograd.grad(ref, params, g)):
        torch.testing.assert_close(a, e, rtol=0, atol=1e-12)
    # the input gradient is laid out like the input (slicing's own gradient would be NCHW)
    assert grads[0].is_contiguous(memory_format=memory_format)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_global_avg_pool_matches_adaptive_pooling_and_keeps_the_layout(memory_format):
    x = torch.randn(3, 5, 4, 6, dtype=torch.float64).contiguous(memory_format=memory_format).requires_grad_()
    out, ref = GlobalAvgPool()(x), torch.nn.AdaptiveAvgPool2d(1)(x)
    assert torch.equal(out, ref) and out.shape == (3, 5, 1, 1)
    g = torch.randn_like(out)
    (grad,) = torch.autograd.grad(out, x, g, create_graph=True)
    (expected,) = torch.autograd.grad(ref, x, g, create_graph=True)
    assert torch.equal(grad, expected) and grad.is_contiguous(memory_format=memory_format)
    assert torch.autograd.gradgradcheck(lambda t: GlobalAvgPool()(t), (x,))


def test_affine_flag_controls_batchnorm_parameters():
    assert sum(p.numel() for p in OPS["sep_conv_3x3"](4, 1, False).parameters()) == 2 * (4 * 9 + 16)
    assert sum(p.numel() for p in OPS["sep_conv_3x3"](4, 1, True).parameters()) == 2 * (4 * 9 + 16 + 8)
    assert sum(p.numel() for p in OPS["avg_pool_3x3"](4, 1, True).parameters()) == 0


def test_avg_pool_excludes_padding():
    x = torch.ones(1, 1, 4, 4)
    assert torch.equal(OPS["avg_pool_3x3"](1, 1, False)(x), x)

