"""DrNAS's net2wider (darts_nas.methods.net2wider): the channel maps, the identities the widening
guarantees op by op, the momentum it carries, and its maps as a pure function of the seed."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from darts_nas.methods.base import draw_generator
from darts_nas.methods.net2wider import (channel_map, widen_op, widen_optimizer_state, widened,
                                         widening_maps)
from darts_nas.ops import OPS, PoolBN
from darts_nas.spaces.nas_bench_201 import NB201_OPS


def trained_like(op: nn.Module, seed: int) -> nn.Module:
    """``op`` with random weights and random BatchNorm running statistics (not the fresh ones,
    for which copying or not could not be told apart), in eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in [*op.named_parameters(), *op.named_buffers()]:
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif t.is_floating_point():
                t.copy_(torch.randn(t.shape, generator=g))
    return op.eval()


def make(name: str, C: int, stride: int) -> nn.Module:
    if name.startswith("nor_conv"):  # NAS-Bench-201's ReLU-conv-BN (its conv has a bias in the supernet)
        return NB201_OPS[name](C, stride, False)
    op = OPS[name](C, stride, False)
    return PoolBN(op, C) if "pool" in name else op  # the supernet's pooling ops carry a BN


def bn_map(maps, op: nn.Module) -> torch.Tensor:
    """The map of the op's last BatchNorm (the channels of its output)."""
    last = [n for n, m in op.named_modules() if isinstance(m, nn.BatchNorm2d)][-1]
    return maps[f"{last}.running_mean"][0]


def test_a_channel_map_keeps_the_old_channels_and_draws_the_rest_from_its_generator():
    m = channel_map(4, 9, draw_generator(3, 1))
    assert m[:4].tolist() == [0, 1, 2, 3] and len(m) == 9 and 0 <= int(m[4:].min()) and int(m[4:].max()) < 4
    assert torch.equal(m, channel_map(4, 9, draw_generator(3, 1)))
    assert any(not torch.equal(m, channel_map(4, 9, draw_generator(s, 1))) for s in range(4, 10))
    with pytest.raises(ValueError):
        channel_map(4, 3, draw_generator(3, 1))


@pytest.mark.parametrize("name,stride", [("dil_conv_3x3", 1), ("dil_conv_5x5", 2), ("skip_connect", 2),
                                         ("nor_conv_3x3", 1), ("nor_conv_1x1", 1)])
def test_a_widened_conv_op_fed_zeros_on_its_new_channels_copies_the_narrow_output(name, stride):
    # No division by replication counts (the code's rule): only zeros on the new input channels
    # leave the old output unchanged; the new output channels copy old ones along the BN's map.
    narrow, wide = trained_like(make(name, 4, stride), 0), make(name, 6, stride).eval()
    maps = widen_op(narrow, wide, draw_generator(0, 1))
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        y, y_wide = narrow(x), wide(torch.cat([x, torch.zeros(2, 2, 8, 8)], dim=1))
    if name == "skip_connect":  # the factorized reduce: its BN's map is conv_1's, then conv_2's, shifted
        index = torch.cat([maps["conv_1.weight"][0], 2 + maps["conv_2.weight"][0]])
    else:
        index = bn_map(maps, narrow)
    assert torch.allclose(y_wide, y.index_select(1, index), atol=1e-5) and y.abs().min() >= 0 and y.abs().sum() > 0


@pytest.mark.parametrize("name", ["max_pool_3x3", "avg_pool_3x3"])
def test_a_widened_pooling_bn_fed_copied_channels_gives_the_copied_output(name):
    narrow, wide = trained_like(make(name, 4, 1), 1), make(name, 6, 1).eval()
    maps = widen_op(narrow, wide, draw_generator(1, 1))
    index = maps["1.running_mean"][0]
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        assert torch.allclose(wide(x.index_select(1, index)), narrow(x).index_select(1, index), atol=1e-6)


def test_a_sep_conv_widens_each_half_by_the_codes_maps_and_nothing_else():
    narrow, wide = trained_like(make("sep_conv_3x3", 4, 1), 2), make("sep_conv_3x3", 6, 1)
    maps = widen_op(narrow, wide, draw_generator(2, 1))
    wide_state = dict([*wide.named_parameters(), *wide.named_buffers()])
    for name, t in [*narrow.named_parameters(), *narrow.named_buffers()]:
        assert torch.equal(wide_state[name], widened(t, maps[name]))  # every tensor: a copy along its maps
        if t.dim():
            assert torch.equal(wide_state[name][:4] if t.dim() == 1 else wide_state[name][:4, :t.shape[1]],
                               t if t.dim() == 1 else t[:4])  # the old channels untouched, no noise
    for half in ("0", "1"):  # depthwise -> pointwise -> BN: the pointwise reads the depthwise's map
        assert maps[f"{half}.1.weight"][1] is None  # (C, 1, k, k)
        assert torch.equal(maps[f"{half}.2.weight"][1], maps[f"{half}.1.weight"][0])
        assert torch.equal(maps[f"{half}.3.running_mean"][0], maps[f"{half}.2.weight"][0])
    assert wide[0][1].groups == 6
    # the first half, alone, keeps the zero-extension identity
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        y, y_wide = narrow[0](x), wide.eval()[0](torch.cat([x, torch.zeros(2, 2, 8, 8)], 1))
    assert torch.allclose(y_wide, y.index_select(1, maps["0.3.running_mean"][0]), atol=1e-5)


def test_the_maps_are_a_pure_function_of_the_seed_and_momentum_follows_them():
    narrow, wide = trained_like(make("sep_conv_5x5", 4, 2), 3), make("sep_conv_5x5", 6, 2)

    def maps(seed):
        return widening_maps(narrow, wide, draw_generator(seed, 1))

    a, b = maps(7), maps(7)
    assert all(torch.equal(x, y) for k in a for x, y in zip(a[k], b[k]) if x is not None)
    assert any(not torch.equal(a[k][0], maps(8)[k][0]) for k in a if a[k][0] is not None)

    old = torch.optim.SGD(narrow.parameters(), lr=0.1, momentum=0.9)
    for p in narrow.parameters():
        p.grad = torch.randn_like(p)
    old.step()
    new = torch.optim.SGD(wide.parameters(), lr=0.1, momentum=0.9)
    m = widen_op(narrow, wide, draw_generator(7, 1))
    widen_optimizer_state(narrow, wide, m, old, new)
    targets = dict(wide.named_parameters())
    for name, p in narrow.named_parameters():
        assert torch.equal(new.state[targets[name]]["momentum_buffer"],
                           widened(old.state[p]["momentum_buffer"], m[name]))


def test_an_op_without_a_widening_rule_is_refused():
    with pytest.raises(ValueError, match="no widening rule for Linear"):
        widening_maps(nn.Sequential(nn.Linear(4, 4)), nn.Sequential(nn.Linear(6, 6)), draw_generator(0, 1))
    with pytest.raises(ValueError, match="cannot widen a"):
        widening_maps(make("dil_conv_3x3", 4, 1), make("sep_conv_3x3", 6, 1), draw_generator(0, 1))
