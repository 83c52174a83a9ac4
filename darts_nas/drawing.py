"""Pictures of a search: alpha heatmaps (numpy + PIL) and cell diagrams (Graphviz DOT).

Nothing here knows about training. A cell's nodes have the same names everywhere, in the heatmap
rows, the diagrams and the genotype tables: the two inputs ``c_{k-2}`` and ``c_{k-1}`` (the outputs
of the previous two cells), the intermediate nodes ``0 .. N-1`` and the output ``c_{k}``. Genotype
input index ``j`` is ``c_{k-2}`` for 0, ``c_{k-1}`` for 1 and intermediate node ``j - 2`` above.

Diagrams are DOT text; :func:`render_dot` turns it into PNG or SVG with Graphviz's ``dot`` binary
(a subprocess, no Python binding), which :func:`find_dot` looks up on ``PATH``.
"""

from __future__ import annotations

import io
import shutil
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .errors import DartsNasError

CELL_TITLES = {"normal": "normal cell", "reduce": "reduction cell"}

DOT_MISSING_HINT = ("Graphviz 'dot' not found: cell diagrams are written as .dot only; install graphviz "
                    "(apt-get install graphviz / brew install graphviz / conda install graphviz) to render them")


class GraphvizError(DartsNasError):
    """Graphviz's ``dot`` is missing or could not render a diagram."""


# ---------------------------------------------------------------------------------------------
# Node names
# ---------------------------------------------------------------------------------------------


def node_name(j: int) -> str:
    """Display name of genotype input index ``j``: ``c_{k-2}``, ``c_{k-1}``, then ``0``, ``1``, ..."""
    if j == 0:
        return "c_{k-2}"
    if j == 1:
        return "c_{k-1}"
    return str(j - 2)


OUTPUT_NAME = "c_{k}"


def edge_names(steps: int) -> list[str]:
    """Row labels of an alpha matrix with ``steps`` intermediate nodes, in alpha row order
    (node 0 from c_{k-2}, c_{k-1}; node 1 from c_{k-2}, c_{k-1}, 0; ...): ``"c_{k-2} -> 0"``."""
    return [f"{node_name(j)} -> {i}" for i in range(steps) for j in range(2 + i)]


def edge_row(node: int, j: int) -> int:
    """Alpha row of the edge from input index ``j`` into intermediate node ``node`` (0-based)."""
    return sum(2 + i for i in range(node)) + j


# ---------------------------------------------------------------------------------------------
# Colours and fonts
# ---------------------------------------------------------------------------------------------

# A sequential light-to-dark blue ramp: low weights fade into the background, strong ones stand
# out, and the orange boxes of the kept ops contrast with every shade.
_ANCHORS = np.array([
    [247, 251, 255],
    [200, 221, 240],
    [115, 179, 216],
    [40, 121, 185],
    [8, 48, 107],
], dtype=np.float64)
MARK_COLOUR = (230, 85, 13)
TEXT_COLOUR = (20, 20, 20)
BACKGROUND = (255, 255, 255)


def colormap(values: np.ndarray) -> np.ndarray:
    """RGB uint8 colours (..., 3) of ``values`` in [0, 1] (clipped), by piecewise-linear
    interpolation between the anchor colours."""
    v = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0) * (len(_ANCHORS) - 1)
    lo = np.minimum(np.floor(v).astype(int), len(_ANCHORS) - 2)
    t = (v - lo)[..., None]
    rgb = (1 - t) * _ANCHORS[lo] + t * _ANCHORS[lo + 1]
    return np.rint(rgb).astype(np.uint8)


def _ink_for(rgb: Sequence[int]) -> tuple[int, int, int]:
    """Black text on light cells, white on dark ones (relative luminance)."""
    r, g, b = rgb
    return TEXT_COLOUR if 0.299 * r + 0.587 * g + 0.114 * b > 140 else (255, 255, 255)


@lru_cache(maxsize=None)
def font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """PIL's default font at ``size`` pixels (its bitmap font where FreeType is unavailable)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ValueError, OSError, ImportError):
        return ImageFont.load_default()


def _text_size(draw: ImageDraw.ImageDraw, text: str, f) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=f)
    return right - left, bottom - top


# ---------------------------------------------------------------------------------------------
# Heatmaps
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Heatmap:
    """What a heatmap shows: ``values`` (rows, cols) drawn with :func:`colormap` scaled to
    [min, max] of the values, printed in every cell; ``marked`` cells (row, col) get a box; a thin gap separates
    the rows before each index in ``breaks``."""

    values: np.ndarray
    rows: tuple[str, ...]
    columns: tuple[str, ...]
    marked: frozenset[tuple[int, int]] = frozenset()
    title: str = ""
    breaks: tuple[int, ...] = ()
    note: str = ""


CELL_W, CELL_H, GAP, PAD = 100, 26, 5, 12
FONT_SIZE, TITLE_SIZE = 14, 17


def draw_heatmap(heatmap: Heatmap) -> Image.Image:
    """The heatmap as an RGB image: title, column labels on top, row labels on the left, one
    coloured cell per value with the value printed in it, boxed marked cells, and a colour bar.
    A NaN value is a cell that does not exist (an op an edge does not offer): blank, ``-``."""
    values = np.asarray(heatmap.values, dtype=np.float64)
    n_rows, n_cols = values.shape
    if len(heatmap.rows) != n_rows or len(heatmap.columns) != n_cols:
        raise ValueError(f"heatmap of shape {values.shape} needs {n_rows} row and {n_cols} column labels")
    f, f_title = font(FONT_SIZE), font(TITLE_SIZE)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = max((_text_size(probe, r, f)[0] for r in heatmap.rows), default=0)
    cell_w = max([CELL_W] + [_text_size(probe, c, f)[0] + 8 for c in heatmap.columns])
    left = PAD + label_w + 10
    top = PAD + (TITLE_SIZE + 12 if heatmap.title else 0) + FONT_SIZE + 10
    y_of = []
    y = top
    for r in range(n_rows):
        if r in heatmap.breaks and r > 0:
            y += GAP
        y_of.append(y)
        y += CELL_H
    grid_bottom = y
    legend_h = 20 + FONT_SIZE + 8 + (FONT_SIZE + 8 if heatmap.note else 0)
    width = max(left + n_cols * cell_w + PAD, 420)
    height = grid_bottom + legend_h + PAD
    image = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(image)

    if heatmap.title:
        draw.text((PAD, PAD), heatmap.title, fill=TEXT_COLOUR, font=f_title)
    for c, name in enumerate(heatmap.columns):
        w, _ = _text_size(draw, name, f)
        draw.text((left + c * cell_w + (cell_w - w) // 2, top - FONT_SIZE - 8), name, fill=TEXT_COLOUR, font=f)

    # The colours span this matrix's own range (shown on the colour bar): early in a search every
    # weight is near 1/num_ops, and a fixed 0..1 scale would paint them all the same.
    present = ~np.isnan(values)
    vmin, vmax = (float(values[present].min()), float(values[present].max())) if present.any() else (0.0, 1.0)
    span = vmax - vmin if vmax > vmin else 1.0
    colours = colormap(np.where(present, (values - vmin) / span, 0.0))  # (rows, cols, 3)
    for r in range(n_rows):
        y0 = y_of[r]
        w, h = _text_size(draw, heatmap.rows[r], f)
        draw.text((left - 10 - w, y0 + (CELL_H - FONT_SIZE) // 2), heatmap.rows[r], fill=TEXT_COLOUR, font=f)
        for c in range(n_cols):
            x0 = left + c * cell_w
            rgb = tuple(int(v) for v in colours[r, c]) if present[r, c] else BACKGROUND
            draw.rectangle([x0, y0, x0 + cell_w - 1, y0 + CELL_H - 1], fill=rgb, outline=BACKGROUND)
            text = f"{values[r, c]:.3f}" if present[r, c] else "-"
            tw, _ = _text_size(draw, text, f)
            draw.text((x0 + (cell_w - tw) // 2, y0 + (CELL_H - FONT_SIZE) // 2), text, fill=_ink_for(rgb), font=f)
    for r, c in sorted(heatmap.marked):
        x0, y0 = left + c * cell_w, y_of[r]
        draw.rectangle([x0, y0, x0 + cell_w - 1, y0 + CELL_H - 1], outline=MARK_COLOUR, width=3)

    # Colour bar: vmin .. vmax, the scale of this image.
    bar_y = grid_bottom + 12
    bar_w = min(240, width - 2 * PAD - 120)
    ramp = colormap(np.linspace(0.0, 1.0, bar_w))[None, :, :].repeat(10, axis=0)
    image.paste(Image.fromarray(ramp, "RGB"), (left, bar_y))
    low = f"{vmin:.3f}"
    draw.text((left - 10 - _text_size(draw, low, f)[0], bar_y - 3), low, fill=TEXT_COLOUR, font=f)
    draw.text((left + bar_w + 6, bar_y - 3), f"{vmax:.3f}", fill=TEXT_COLOUR, font=f)
    if heatmap.note:
        draw.text((PAD, bar_y + 10 + 8), heatmap.note, fill=TEXT_COLOUR, font=f)
    return image


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------
# Cell diagrams
# ---------------------------------------------------------------------------------------------

_FILL_INPUT, _FILL_NODE, _FILL_OUTPUT, _FILL_DROPPED = "#c7e9c0", "#c6dbef", "#fdd0a2", "#dddddd"


def _dot_id(j: int) -> str:
    return ("in0", "in1")[j] if j < 2 else f"n{j - 2}"


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def cell_dot(pairs: Sequence[tuple[str, int]], concat: Sequence[int], title: str | None = None,
             nodes: Sequence[int] | None = None) -> str:
    """DOT source of one cell in the conventional DARTS drawing, left to right: inputs
    ``c_{k-2}``, ``c_{k-1}``, intermediate nodes ``0 .. N-1``, output ``c_{k}``; each edge of the
    genotype is labelled with its op, the concatenated nodes feed the output.

    ``nodes``: the node (index >= 2) each pair feeds, for a sparse cell (FairDARTS); None: two
    pairs per node. A node the network drops (no input from a computed node) is grey, as in the
    FairDARTS drawings, with its edges dotted and no edge to the output."""
    targets = list(nodes) if nodes is not None else [2 + k // 2 for k in range(len(pairs))]
    steps = max(list(targets) + list(concat) + [1]) - 1 if nodes is not None else len(pairs) // 2
    live = {0, 1}
    for (_, j), node in zip(pairs, targets):
        if j in live:
            live.add(node)
    lines = [
        "digraph cell {",
        "  rankdir=LR;",
        '  graph [fontname="Helvetica", fontsize=22, nodesep=0.3, ranksep=0.6'
        + (f", label={_quote(title)}, labelloc=t" if title else "") + "];",
        '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=18, penwidth=1.5, '
        'height=0.5, width=0.6];',
        '  edge [fontname="Helvetica", fontsize=14, color="#555555", penwidth=1.3];',
        f"  in0 [label={_quote(node_name(0))}, fillcolor={_quote(_FILL_INPUT)}];",
        f"  in1 [label={_quote(node_name(1))}, fillcolor={_quote(_FILL_INPUT)}];",
    ]
    lines.append("  { rank=same; in0 -> in1 [style=invis]; }  // c_{k-2} above c_{k-1}")
    for i in range(steps):
        fill = _FILL_NODE if i + 2 in live else _FILL_DROPPED
        lines.append(f"  n{i} [label={_quote(str(i))}, fillcolor={_quote(fill)}];")
    lines.append(f"  out [label={_quote(OUTPUT_NAME)}, fillcolor={_quote(_FILL_OUTPUT)}];")
    for (op, j), node in zip(pairs, targets):
        style = "" if j in live else ', style=dotted, color="#bbbbbb"'
        lines.append(f"  {_dot_id(j)} -> n{node - 2} [label={_quote(op)}{style}];")
    for j in concat:
        if j in live:
            lines.append(f'  {_dot_id(j)} -> out [color="#999999", style=dashed];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def genotype_dots(genotype, name: str | None = None) -> dict[str, str]:
    """``{"normal": dot, "reduce": dot}`` for a :class:`~darts_nas.genotype.Genotype`; ``name``
    (e.g. ``darts_v2``) heads each title: "darts_v2: normal cell"."""
    return {cell: cell_dot(getattr(genotype, cell), getattr(genotype, f"{cell}_concat"),
                           f"{name}: {CELL_TITLES[cell]}" if name else CELL_TITLES[cell],
                           getattr(genotype, f"{cell}_nodes", None))
            for cell in ("normal", "reduce")}


def find_dot() -> str | None:
    """Path of Graphviz's ``dot`` on ``PATH``, or None."""
    return shutil.which("dot")


def render_dot(source: str, fmt: str = "png", dot: str | None = None) -> bytes:
    """Render DOT ``source`` to ``fmt`` (png, svg, ...) with Graphviz's ``dot``."""
    dot = dot or find_dot()
    if dot is None:
        raise GraphvizError(DOT_MISSING_HINT)
    try:
        result = subprocess.run([dot, f"-T{fmt}"], input=source.encode("utf-8"), capture_output=True,
                                timeout=120)
    except (OSError, subprocess.SubprocessError) as exc:
        raise GraphvizError(f"Graphviz 'dot' ({dot}) could not be run: {exc}") from None
    if result.returncode != 0 or not result.stdout:
        message = result.stderr.decode("utf-8", "replace").strip().splitlines()
        raise GraphvizError(f"Graphviz 'dot' failed to render a {fmt} diagram: "
                            f"{message[0] if message else f'exit status {result.returncode}'}")
    return result.stdout


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's header."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not PNG data")
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


# ---------------------------------------------------------------------------------------------
# Composition (animation frames)
# ---------------------------------------------------------------------------------------------


def side_by_side(images: Sequence[Image.Image], caption: str = "",
                 slots: Sequence[int] | None = None, body_height: int | None = None,
                 spacing: int = 30) -> Image.Image:
    """The images left to right on white under ``caption``, each centred in its slot.
    ``slots`` (one width per image) and ``body_height`` fix the layout so that the frames of an
    animation line up; by default the canvas just fits."""
    caption_size = 28
    f = font(caption_size)
    slots = list(slots) if slots else [im.width for im in images]
    slots = [max(s, im.width) for s, im in zip(slots, images)]
    body = max([body_height or 0] + [im.height for im in images])
    head = caption_size + 2 * PAD if caption else PAD
    width = sum(slots) + spacing * (len(images) - 1) + 2 * PAD
    canvas = Image.new("RGB", (width, head + body + PAD), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    if caption:
        draw.text((PAD, PAD), caption, fill=TEXT_COLOUR, font=f)
    x = PAD
    for slot, im in zip(slots, images):
        rgba = im.convert("RGBA")
        canvas.paste(rgba, (x + (slot - im.width) // 2, head + (body - im.height) // 2), rgba)
        x += slot + spacing
    return canvas
