"""Net2Net-style widening of an op's channels, as DrNAS's progressive search does it between its
stages (the authors' ``net2wider.py`` and the ``wider`` methods of their ops; facts in
``../shared/reference/methods.md`` section 3.3).

When partial channels go from K=6 to K=4 (NAS-Bench-201: 4 to 2), each kept op grows from C/6 to
C/4 channels. Every widened tensor keeps its old channels and appends copies of old ones: channel
``j`` of the wide tensor is channel ``map[j]`` of the narrow one, where ``map`` is the identity on
the old channels followed by a uniform draw with replacement from them (the code's
``torch.randint``); no noise is added, and the copied columns are **not** divided by their
replication counts (Net2Net's function-preserving rule would divide them). The new channels the
op sees in stage 2 are other channels of the cell's input, not copies, so the widening is an
initialisation from the trained narrow op rather than a function-preserving map.

Which maps (the code's, op by op):

* a conv's output channels: a fresh draw; its input channels: the output map of the conv just
  before it (a depthwise conv feeding its pointwise conv), else a fresh draw; a depthwise conv
  has only an output map (its groups grow with it);
* a BatchNorm (running mean and variance, and its affine parameters if any): the output map of
  the conv just before it, else a fresh draw (the BN after a pooling op); a conv's bias follows
  its output map;
* ``SepConv``: its two halves are widened independently (the second half's depthwise conv draws
  afresh rather than follow the first half's BN, as the code does);
* ``FactorizedReduce`` (``skip_connect`` at stride 2): each of its two convs draws its input and
  output maps; the BN follows the two output maps, half by half. The code appends the BN's new
  channels after all its old ones, so that its running statistics no longer sit at their
  convolutions' channels; here they do (the BN has no affine parameters in the supernet, and
  its running statistics are only read by the end-of-epoch evaluation);
* ops without weights (identity, pooling alone, ``none``): nothing.

SGD's momentum buffers are widened by the same maps as their weights (the code's
``configure_optimizer``). The maps come from the generator passed in, so a widening is a pure
function of it.

The identity the widening does guarantee, on which the tests rest: fed an input whose new
channels are zero, a widened ReLU-conv-BN or dilated conv gives, in evaluation mode, the narrow
op's output with its channels copied along the BN's map; a widened pooling-BN op, fed its input
copied along the BN's map, gives the narrow output copied along that map.
"""

from __future__ import annotations

import torch
from torch import nn

from ..ops import FactorizedReduce

# (map of dim 0, map of dim 1) of a tensor, by its state-dict name inside the op; None: the dim
# does not grow
Maps = dict[str, tuple[torch.Tensor | None, torch.Tensor | None]]


def channel_map(old: int, new: int, generator: torch.Generator) -> torch.Tensor:
    """(new,) long: the old channels 0..old-1, then ``new - old`` of them drawn uniformly with
    replacement."""
    if new < old:
        raise ValueError(f"cannot widen {old} channels to {new}")
    drawn = torch.randint(0, old, (new - old,), generator=generator)
    return torch.cat([torch.arange(old), drawn])


def _is_depthwise(narrow: nn.Conv2d, wide: nn.Conv2d) -> bool:
    """One filter per channel (groups = channels), judged on the wide conv too: a narrow depthwise
    conv of one channel has groups 1."""
    return any(c.groups > 1 and c.groups == c.in_channels == c.out_channels for c in (narrow, wide))


def _conv_maps(prefix: str, narrow: nn.Conv2d, wide: nn.Conv2d, in_map: torch.Tensor | None,
               generator: torch.Generator, maps: Maps) -> torch.Tensor:
    """The maps of one conv's weight (and bias); returns its output map."""
    out_map = channel_map(narrow.out_channels, wide.out_channels, generator)
    if _is_depthwise(narrow, wide):
        in_map = None  # (C, 1, k, k): one input channel per filter
    elif in_map is None:
        in_map = channel_map(narrow.in_channels, wide.in_channels, generator)
    maps[f"{prefix}weight"] = (out_map, in_map)
    if narrow.bias is not None:
        maps[f"{prefix}bias"] = (out_map, None)
    return out_map


def _bn_maps(prefix: str, bn: nn.modules.batchnorm._BatchNorm, channel: torch.Tensor, maps: Maps) -> None:
    for name in ("weight", "bias", "running_mean", "running_var"):
        if getattr(bn, name, None) is not None:
            maps[f"{prefix}{name}"] = (channel, None)
    if getattr(bn, "num_batches_tracked", None) is not None:
        maps[f"{prefix}num_batches_tracked"] = (None, None)


def _chain_maps(prefix: str, narrow: nn.Module, wide: nn.Module, generator: torch.Generator, maps: Maps) -> None:
    """A sequence of modules (ReLU-conv-BN, dilated conv, pooling-BN, SepConv's halves)."""
    previous_out = None  # the output map of the conv just before, None after anything else
    for (name, a), (_, b) in zip(narrow.named_children(), wide.named_children()):
        here = f"{prefix}{name}."
        if isinstance(a, nn.Conv2d):
            previous_out = _conv_maps(here, a, b, previous_out, generator, maps)
            continue
        if isinstance(a, nn.modules.batchnorm._BatchNorm):
            channel = previous_out if previous_out is not None else channel_map(a.num_features, b.num_features,
                                                                                  generator)
            _bn_maps(here, a, channel, maps)
        elif isinstance(a, (nn.Sequential, FactorizedReduce)):
            _op_maps(here, a, b, generator, maps)
        elif any(True for _ in a.parameters()) or any(True for _ in a.buffers()):
            raise ValueError(f"net2wider: no widening rule for {type(a).__name__} (in {prefix or 'the op'})")
        previous_out = None


def _op_maps(prefix: str, narrow: nn.Module, wide: nn.Module, generator: torch.Generator, maps: Maps) -> None:
    if isinstance(narrow, FactorizedReduce):
        m1 = _conv_maps(f"{prefix}conv_1.", narrow.conv_1, wide.conv_1, None, generator, maps)
        m2 = _conv_maps(f"{prefix}conv_2.", narrow.conv_2, wide.conv_2, None, generator, maps)
        # the BN's channels are conv_1's outputs, then conv_2's: each half follows its conv
        _bn_maps(f"{prefix}bn.", narrow.bn, torch.cat([m1, narrow.conv_1.out_channels + m2]), maps)
    else:
        _chain_maps(prefix, narrow, wide, generator, maps)


def widening_maps(narrow: nn.Module, wide: nn.Module, generator: torch.Generator) -> Maps:
    """The channel maps that widen ``narrow`` into ``wide`` (the same op with more channels), for
    each of ``narrow``'s parameters and buffers, by state-dict name; drawn from ``generator`` in
    the op's module order."""
    if type(narrow) is not type(wide):
        raise ValueError(f"net2wider: cannot widen a {type(narrow).__name__} into a {type(wide).__name__}")
    maps: Maps = {}
    _op_maps("", narrow, wide, generator, maps)
    names = [n for n, _ in [*narrow.named_parameters(), *narrow.named_buffers()]]
    missing = [n for n in names if n not in maps]
    if missing:
        raise ValueError(f"net2wider: no widening rule for {', '.join(missing)} of {type(narrow).__name__}")
    return maps


def widened(t: torch.Tensor, maps: tuple[torch.Tensor | None, torch.Tensor | None]) -> torch.Tensor:
    """``t`` with its dims 0 and 1 gathered along their maps (None: unchanged)."""
    for dim, index in enumerate(maps):
        if index is not None:
            t = t.index_select(dim, index.to(t.device))
    return t


@torch.no_grad()
def widen_op(narrow: nn.Module, wide: nn.Module, generator: torch.Generator) -> Maps:
    """Copy ``narrow``'s weights and buffers, widened, into ``wide``; returns the maps (to widen
    the optimiser's state the same way)."""
    maps = widening_maps(narrow, wide, generator)
    targets = dict([*wide.named_parameters(), *wide.named_buffers()])
    for name, t in [*narrow.named_parameters(), *narrow.named_buffers()]:
        value = widened(t, maps[name])
        if value.shape != targets[name].shape:
            raise ValueError(f"net2wider: {name} widens to {tuple(value.shape)}, the wide op's is "
                             f"{tuple(targets[name].shape)}")
        targets[name].copy_(value)
    return maps


def widen_optimizer_state(narrow: nn.Module, wide: nn.Module, maps: Maps, old: torch.optim.Optimizer,
                          new: torch.optim.Optimizer) -> None:
    """The optimiser state (SGD's momentum buffer) of ``narrow``'s parameters, widened along
    ``maps``, as the state of ``wide``'s parameters in ``new``."""
    targets = dict(wide.named_parameters())
    for name, p in narrow.named_parameters():
        state, target = old.state.get(p, {}), targets[name]
        if state:  # laid out like the wide weight (channels_last or not), as SGD would make it
            new.state[target] = {k: torch.empty_like(target).copy_(widened(v, maps[name]))
                                 if torch.is_tensor(v) and v.shape == p.shape
                                 else v.clone() if torch.is_tensor(v) else v for k, v in state.items()}
