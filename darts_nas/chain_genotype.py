"""Genotypes of the ProxylessNAS chain space (``--space proxyless``): one block per searched layer.

The space (Cai, Zhu and Han, ICLR 2019, whose MobileNetV2-like search space FairDARTS also
searched on ImageNet; facts and sources in the README's "ProxylessNAS space" section) is a chain:
a fixed stem and first block, then six stages of searched layers, then a fixed 1x1 conv and the
classifier. A genotype names the block of every searched layer, stage by stage, and the six stage
widths it was published with (:data:`STAGE_WIDTHS` unless it says otherwise)::

    5x5_MBConv3 3x3_MBConv3 none none | 7x7_MBConv3 ... | ... | 7x7_MBConv6

``KxK_MBConvE`` is an inverted-residual block of kernel K and expansion E; ``none`` (the code's
``Zero``) computes nothing, so the layer's identity shortcut passes its input through: the layer
is skipped. Only a layer whose input and output shapes match (stride 1, same width: never a
stage's first layer at the published widths) may be ``none``. A genotype with other widths
starts with them: ``widths 32,40,80,96,192,320; ...`` (ProxylessNAS-mobile's first stage is 32
wide, not the search space's 24).

:func:`parse_chain` reads the text strictly (no ``eval``; a wrong op, stage count or width is one
:class:`~darts_nas.errors.GenotypeError` naming the fix); ``str()`` writes it back exactly.
:func:`derive_chain` is the derivation: each layer keeps the op of its largest architecture
weight, ``none`` included (ProxylessNAS's ``chosen_index``: argmax of softmax(alpha); FairDARTS's
sigmoid and every other method's monotone weights have the same argmax).

This module imports no torch: the settings, ``train_final`` and the cell files use it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from .arch_string import ArchGenotype
from .errors import GenotypeError

SPACE = "proxyless"
# The searched candidates, in ProxylessNAS's order (imagenet_arch_search.py's conv_candidates),
# after "none", the code's Zero (offered only where a layer's input and output shapes match).
MBCONV_OPS: tuple[str, ...] = tuple(f"{k}x{k}_MBConv{e}" for k in (3, 5, 7) for e in (3, 6))
CHAIN_PRIMITIVES: tuple[str, ...] = ("none", *MBCONV_OPS)
# The skeleton at width multiplier 1 (search/imagenet_arch_search.py defaults, super_proxyless.py)
STEM_WIDTH = 32  # 3x3 conv, stride 2
FIRST_WIDTH = 16  # the fixed first block: 3x3_MBConv1
FIRST_BLOCK = "3x3_MBConv1"
STAGE_WIDTHS: tuple[int, ...] = (24, 40, 80, 96, 192, 320)
STAGE_DEPTHS: tuple[int, ...] = (4, 4, 4, 4, 4, 1)
STAGE_STRIDES: tuple[int, ...] = (2, 2, 2, 1, 2, 1)
LAST_WIDTH = 1280  # the 1x1 "feature mix" conv before the pooling
_FORMAT = "KxK_MBConvE or none per layer, layers separated by spaces, the 6 stages by ' | '"


def parse_op(name: str) -> tuple[int, int] | None:
    """``"5x5_MBConv3"`` -> (kernel 5, expansion 3); ``"none"`` -> None."""
    if name == "none":
        return None
    head, sep, tail = name.partition("_MBConv")
    k, x, k2 = head.partition("x")
    if not (sep and x and k.isdigit() and k == k2 and tail.isdigit() and k.isascii() and tail.isascii()):
        raise GenotypeError(f"unknown block {name!r}: write KxK_MBConvE (kernel K, expansion E) or none")
    kernel, expand = int(k), int(tail)
    if kernel % 2 == 0 or kernel < 1 or expand < 1:
        raise GenotypeError(f"block {name!r}: the kernel must be odd and the expansion at least 1")
    return kernel, expand


def make_divisible(value: float, divisor: int = 8) -> int:
    """A width rounded to a multiple of ``divisor`` (at least ``divisor``), never more than 10%
    below ``value``: the MobileNet rule ProxylessNAS applies to every width times the multiplier."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def scaled_widths(stem: int, widths: Sequence[int] = STAGE_WIDTHS) -> dict[str, Any]:
    """The network's widths for a stem of ``stem`` channels (``--init-channels``; 32 is width
    multiplier 1): every width times ``stem / 32`` by :func:`make_divisible`, and the last conv's
    1280 kept unless the multiplier exceeds 1 (super_proxyless.py)."""
    mult = stem / STEM_WIDTH
    return {"stem": make_divisible(STEM_WIDTH * mult), "first": make_divisible(FIRST_WIDTH * mult),
            "stages": tuple(make_divisible(w * mult) for w in widths),
            "last": make_divisible(LAST_WIDTH * mult) if mult > 1.0 else LAST_WIDTH}


def layer_plan(widths: Sequence[int], depths: Sequence[int], first: int) -> list[dict[str, Any]]:
    """Every searched layer in order: its stage, input and output widths, stride, and whether it
    may be ``none`` (stride 1 and equal widths: then it also has the identity shortcut)."""
    plan, C_in = [], first
    for s, (width, depth, stride) in enumerate(zip(widths, depths, STAGE_STRIDES)):
        for i in range(depth):
            st = stride if i == 0 else 1
            plan.append({"stage": s, "C_in": C_in, "C_out": width, "stride": st,
                         "skippable": st == 1 and C_in == width})
            C_in = width
    return plan


def scaled_plan(stem: int, depths: Sequence[int], widths: Sequence[int] = STAGE_WIDTHS) -> list[dict[str, Any]]:
    """:func:`layer_plan` at the widths of a stem of ``stem`` channels (:func:`scaled_widths`),
    each layer skippable exactly when it is at multiplier 1: scaling a network down (where
    rounding may give a stride-1 stage its input's width) does not change its space."""
    full = layer_plan(widths, depths, FIRST_WIDTH)
    scaled = scaled_widths(stem, widths)
    plan = layer_plan(scaled["stages"], depths, scaled["first"])
    return [{**layer, "skippable": ref["skippable"]} for layer, ref in zip(plan, full)]


@dataclass(frozen=True)
class ChainGenotype:
    """The block of every searched layer, per stage (six stages), and the stage widths at width
    multiplier 1. Offers what the search loop and its board ask of a genotype (``to_dict``,
    ``save``, ``warnings``, ``str``, ``markdown``, ``dots``, heatmap rows and marks)."""

    stages: tuple[tuple[str, ...], ...]
    widths: tuple[int, ...] = STAGE_WIDTHS

    def __post_init__(self) -> None:
        stages = tuple(tuple(s) for s in self.stages) if isinstance(self.stages, (list, tuple)) else None
        widths = tuple(self.widths) if isinstance(self.widths, (list, tuple)) else None
        if stages is None or len(stages) != len(STAGE_STRIDES):
            raise GenotypeError(f"a ProxylessNAS chain has {len(STAGE_STRIDES)} stages, got {self.stages!r}; write "
                                f"it as {_FORMAT}")
        if widths is None or len(widths) != len(STAGE_STRIDES) or not all(
                isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in widths):
            raise GenotypeError(f"the chain's widths are {len(STAGE_STRIDES)} positive whole numbers (one per "
                                f"stage; the space's: {','.join(map(str, STAGE_WIDTHS))}), got {self.widths!r}")
        for s, stage in enumerate(stages):
            if not stage:
                raise GenotypeError(f"stage {s + 1} of the chain has no layer; every stage has at least one")
            for op in stage:
                if not isinstance(op, str):
                    raise GenotypeError(f"stage {s + 1}: {op!r} is not a block name ({_FORMAT})")
                parse_op(op)
        object.__setattr__(self, "stages", stages)
        object.__setattr__(self, "widths", widths)
        for layer, op in zip(self.plan(), self.ops):
            if op == "none" and not layer["skippable"]:
                raise GenotypeError(f"layer {layer['index'] + 1} (stage {layer['stage'] + 1}) changes its shape "
                                    f"(stride {layer['stride']}, {layer['C_in']} -> {layer['C_out']} channels): it "
                                    f"cannot be none, only a stage's later layers can")

    @property
    def ops(self) -> tuple[str, ...]:
        """Every searched layer's block, in order."""
        return tuple(op for stage in self.stages for op in stage)

    @property
    def depths(self) -> tuple[int, ...]:
        return tuple(len(s) for s in self.stages)

    def plan(self) -> list[dict[str, Any]]:
        """:func:`layer_plan` at width multiplier 1, with each layer's index."""
        return [{**layer, "index": i} for i, layer in enumerate(layer_plan(self.widths, self.depths, FIRST_WIDTH))]

    # -- text ----------------------------------------------------------------------------------
    def __str__(self) -> str:
        body = " | ".join(" ".join(stage) for stage in self.stages)
        if self.widths == STAGE_WIDTHS:
            return body
        return f"widths {','.join(map(str, self.widths))}; {body}"

    # -- JSON ------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"space": SPACE, "chain": " | ".join(" ".join(s) for s in self.stages), "widths": list(self.widths)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ChainGenotype:
        if not isinstance(data, Mapping) or not isinstance(data.get("chain"), str):
            raise GenotypeError(f"a ProxylessNAS chain genotype is a JSON object with a \"chain\" string ({_FORMAT}) "
                                f"and optionally \"widths\"")
        if data.get("space", SPACE) != SPACE:
            raise GenotypeError(f"the genotype belongs to the {data.get('space')!r} space, not {SPACE}")
        return cls(parse_chain(data["chain"]).stages, tuple(data.get("widths", STAGE_WIDTHS)))

    # Written and read as NAS-Bench-201's genotypes are (atomically; ``extra`` keys kept; a file's
    # name in every error): the same code, over this class's to_dict and from_dict.
    save = ArchGenotype.save
    load = classmethod(ArchGenotype.load.__func__)

    # -- what the log and the board show ---------------------------------------------------------
    def warnings(self) -> tuple[str, ...]:
        skipped = sum(op == "none" for op in self.ops)
        if skipped and skipped == sum(layer["skippable"] for layer in self.plan()):
            message = (f"every skippable layer of the derived chain is none ({skipped} of {len(self.ops)}): the "
                       f"network keeps only each stage's first layer")
            return (message,)
        return ()

    def rows(self, group: str) -> tuple[str, ...]:
        """Heatmap row names of an alpha group (``conv``: the layers that cannot be skipped,
        ``skippable``: the others), in the supernet's row order: ``s<stage>.<layer>``."""
        return tuple(self._label(layer) for layer in self._group(group))

    def kept(self, primitives: Sequence[str], group: str) -> list[tuple[int, int]]:
        """(row, column) of each layer's block in the heatmap of ``group`` over ``primitives``."""
        ops = self.ops
        return [(r, list(primitives).index(ops[layer["index"]])) for r, layer in enumerate(self._group(group))
                if ops[layer["index"]] in primitives]

    def _group(self, group: str) -> list[dict[str, Any]]:
        return [layer for layer in self.plan() if layer["skippable"] == (group == "skippable")]

    def _label(self, layer: dict[str, Any]) -> str:
        before = sum(self.depths[:layer["stage"]])
        return f"s{layer['stage'] + 1}.{layer['index'] - before + 1}"

    def markdown(self) -> str:
        rows = ["| layer | width | stride | block |", "|---|---|---|---|"]
        rows += [f"| `{self._label(layer)}` | {layer['C_out']} | {layer['stride']} | `{op}` |"
                 for layer, op in zip(self.plan(), self.ops)]
        return "\n".join(rows) + "\n\n```\n" + str(self) + "\n```"

    def dots(self) -> dict[str, str]:
        """``{"cell": DOT source}``: the chain left to right, skipped layers left out."""
        lines = ["digraph chain {", "  rankdir=LR;", '  node [shape=box, style="rounded,filled", fillcolor=lightblue];',
                 '  label="ProxylessNAS chain (widths at multiplier 1)"; labelloc=t;',
                 f'  stem [label="stem 3x3 conv\\n{STEM_WIDTH}, /2", fillcolor=gray90];',
                 f'  first [label="{FIRST_BLOCK}\\n{FIRST_WIDTH}", fillcolor=gray90];', "  stem -> first;"]
        prev = "first"
        for layer, op in zip(self.plan(), self.ops):
            if op == "none":
                continue
            name = f"l{layer['index']}"
            lines.append(f'  {name} [label="{self._label(layer)}: {op}\\n{layer["C_out"]}'
                         f'{", /2" if layer["stride"] == 2 else ""}"];')
            lines.append(f"  {prev} -> {name};")
            prev = name
        lines += [f'  head [label="1x1 conv {LAST_WIDTH}\\npool, linear", fillcolor=gray90];', f"  {prev} -> head;"]
        return {"cell": "\n".join(lines + ["}"]) + "\n"}


def parse_chain(text: str) -> ChainGenotype:
    """The chain's text -> :class:`ChainGenotype`, strictly: an optional ``widths a,b,c,d,e,f;``
    prefix, then six ``|``-separated stages of space-separated block names."""
    if not isinstance(text, str):
        raise GenotypeError(f"a chain genotype is text ({_FORMAT}), got {type(text).__name__}")
    s = text.strip()
    widths: tuple[int, ...] = STAGE_WIDTHS
    if s.startswith("widths"):
        head, sep, s = s.partition(";")
        items = head[len("widths"):].strip().split(",")
        if not sep or not all(i.strip().isdigit() and i.strip().isascii() for i in items):
            raise GenotypeError(f"{text.strip()!r}: write the widths as 'widths a,b,c,d,e,f; ' before the stages")
        widths = tuple(int(i) for i in items)
    stages = [part.split() for part in s.split("|")]
    if len(stages) != len(STAGE_STRIDES):
        raise GenotypeError(f"chain {text.strip()!r} has {len(stages)} stage(s) where the space has "
                            f"{len(STAGE_STRIDES)}: {_FORMAT}")
    return ChainGenotype(tuple(tuple(st) for st in stages), widths)


def derive_chain(rows: Mapping[str, Any], ops: Mapping[str, Sequence[str]], depths: Sequence[int],
                 widths: Sequence[int] = STAGE_WIDTHS) -> ChainGenotype:
    """The derivation: each searched layer keeps the op of the largest weight in its row, ``none``
    included; ties go to the first column. ``rows``: per group (``conv``, ``skippable``) the
    (layers, ops) alphas or weights (a tensor or nested lists) in layer order within the group;
    ``ops``: each group's op list; ``depths``: the searched layers per stage; ``widths``: the
    stage widths at multiplier 1, which say which layers are skippable (:func:`scaled_plan`)."""
    tables = {g: (r.tolist() if hasattr(r, "tolist") else [list(x) for x in r]) for g, r in rows.items()}
    next_row = {g: 0 for g in tables}
    chosen: list[list[str]] = [[] for _ in STAGE_STRIDES]
    for layer in layer_plan(widths, depths, FIRST_WIDTH):
        group = "skippable" if layer["skippable"] else "conv"
        try:
            row = tables[group][next_row[group]]
        except (KeyError, IndexError):
            raise GenotypeError(f"the alphas of group {group!r} have too few rows for the chain's layers") from None
        next_row[group] += 1
        names = list(ops[group])
        if len(row) != len(names):
            raise GenotypeError(f"a row of {group!r} has {len(row)} weights for {len(names)} ops")
        chosen[layer["stage"]].append(names[max(range(len(row)), key=lambda c: (row[c], -c))])
    left = {g: len(t) - next_row[g] for g, t in tables.items() if len(t) != next_row[g]}
    if left:
        raise GenotypeError(f"the alphas have rows no layer of the chain uses: {left}")
    return ChainGenotype(tuple(tuple(s) for s in chosen), tuple(widths))


# Published chains of the space (kept here rather than in cells/, whose files are DARTS cells).
# ProxylessNAS-mobile's blocks: the per-block kernel sizes, expansions and which blocks are zero
# ("residuals") of its released config as osmr/imgclsmob's pytorchcv/models/proxylessnas.py
# transcribes it (the config itself, han-cai/files proxyless_mobile.config, is not in the
# repository); that file's test asserts 4,080,512 parameters at 1000 classes, which our network
# reproduces (tests/test_proxyless.py).
PUBLISHED_CHAINS: dict[str, dict[str, Any]] = {
    "proxyless_mobile": {
        "name": "ProxylessNAS-Mobile",
        "source": "ProxylessNAS: Direct Neural Architecture Search on Target Task and Hardware, Cai, Zhu, Han, "
                  "ICLR 2019 (mit-han-lab/proxylessnas, proxyless_nas/model_zoo.py proxyless_mobile)",
        "widths": [32, 40, 80, 96, 192, 320],
        "chain": "5x5_MBConv3 3x3_MBConv3 none none | 7x7_MBConv3 3x3_MBConv3 5x5_MBConv3 5x5_MBConv3 | "
                 "7x7_MBConv6 5x5_MBConv3 5x5_MBConv3 5x5_MBConv3 | 5x5_MBConv6 5x5_MBConv3 5x5_MBConv3 "
                 "5x5_MBConv3 | 7x7_MBConv6 7x7_MBConv6 7x7_MBConv3 7x7_MBConv3 | 7x7_MBConv6",
        "params": 4_080_512,  # at 1000 classes, every parameter (BN included)
        "params_source": "osmr/imgclsmob pytorchcv/models/proxylessnas.py, _test(): weight_count == 4080512",
    },
}


def resolve_chain(spec: str | os.PathLike) -> ChainGenotype:
    """A chain from ``--cell``: its text, a JSON file holding ``"chain"``, a search run directory
    holding such a genotype.json, or a published chain by name (:data:`PUBLISHED_CHAINS`)."""
    spec = os.fspath(spec)
    if "|" in spec:
        return parse_chain(spec)
    path = Path(spec).expanduser()
    if path.is_dir():
        path = path / "genotype.json"
        if not path.is_file():
            raise GenotypeError(f"directory {spec} has no genotype.json: give a chain ({_FORMAT}), a genotype "
                                f"file or a --space proxyless search run directory")
    if path.is_file():
        return ChainGenotype.load(path)
    key = spec.strip().lower().replace("-", "_")
    if key in PUBLISHED_CHAINS:
        entry = PUBLISHED_CHAINS[key]
        return ChainGenotype(parse_chain(entry["chain"]).stages, tuple(entry["widths"]))
    raise GenotypeError(f"--cell {spec!r} is neither a chain ({_FORMAT}), a genotype file or run directory, "
                        f"nor a built-in chain such as proxyless_mobile")
