"""Draw a genotype's cells: ``python -m darts_nas.visualize SPEC -o OUT.png [--gif OUT.gif]``.

SPEC is anything ``train_final.py --cell`` accepts: a genotype JSON file, a search run directory
(its ``genotype.json``), a name from ``cells/`` (``darts_v2``) or genotype text. ``-o cell.png``
writes ``cell_normal.png`` and ``cell_reduce.png`` (``.svg`` likewise) plus the DOT sources
``cell_normal.dot`` and ``cell_reduce.dot``; ``-o cell.dot`` writes only the DOT sources and needs
no Graphviz. ``--gif search.gif`` animates a search run directory epoch by epoch from its
``history.jsonl``: each frame shows the normal and reduction cells side by side, labelled with the
epoch.
"""

from __future__ import annotations

import argparse
import io
import re
import sys
from pathlib import Path
from typing import Sequence

from PIL import Image

from .errors import ConfigError, DartsNasError, RunDirError
from .drawing import GraphvizError, find_dot, genotype_dots, render_dot, side_by_side
from .genotype import Genotype, cell_key, list_cells, resolve
from .tracking import CELL_TYPES, print_error, read_jsonl

FORMATS = ("png", "svg", "dot")


def diagram_paths(out: str | Path) -> dict[str, Path]:
    """``OUT.png`` -> ``{"normal": OUT_normal.png, "reduce": OUT_reduce.png}``."""
    out = Path(out)
    return {cell: out.with_name(f"{out.stem}_{cell}{out.suffix}") for cell in CELL_TYPES}


def spec_name(spec: str) -> str | None:
    """The name a genotype spec gives its cell, for titles and file names: a published cell's name
    (``DARTS-V2`` -> ``darts_v2``), a file's stem, a run directory's name; None for genotype text."""
    path = Path(spec).expanduser()
    try:
        if path.is_dir():
            return path.resolve().name or None
        if path.is_file():
            return path.stem
    except (OSError, ValueError):  # genotype text too long for a file name
        pass
    return cell_key(spec) if cell_key(spec) in list_cells() else None


def default_out(spec: str) -> Path:
    """Where the diagrams go without ``-o``: ``NAME.png`` in the current directory (``NAME.dot``
    without Graphviz), NAME as :func:`spec_name` gives it, ``genotype`` for genotype text."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", spec_name(spec) or "genotype")
    return Path(f"{name}.{'png' if find_dot() is not None else 'dot'}")


def write_diagrams(genotype: Genotype, out: str | Path, name: str | None = None) -> list[Path]:
    """Write the two cell diagrams of ``genotype`` in the format of ``out``'s extension (png, svg
    or dot), always with their ``.dot`` sources, titled with ``name`` if given; returns the paths
    written."""
    out = Path(out)
    fmt = out.suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise ConfigError(f"cannot write {out}: the output must end in .png, .svg or .dot")
    if not out.parent.is_dir():
        raise RunDirError(f"cannot write {out}: the directory {out.parent} does not exist")
    written = []
    sources = genotype_dots(genotype, name)
    for cell, path in diagram_paths(out.with_suffix(".dot")).items():
        path.write_text(sources[cell], encoding="utf-8")
        written.append(path)
    if fmt == "dot":
        return written
    if find_dot() is None:
        raise GraphvizError(f"cannot render {out.name}: Graphviz 'dot' not found (the .dot sources are in "
                            f"{out.parent}); install graphviz (apt-get install graphviz / brew install graphviz "
                            f"/ conda install graphviz), or ask for -o {out.with_suffix('.dot').name}")
    for cell, path in diagram_paths(out).items():
        path.write_bytes(render_dot(sources[cell], fmt))
        written.append(path)
    return written


def search_history(run_dir: str | Path) -> list[tuple[int, Genotype]]:
    """(epoch, genotype) of every epoch of a search run directory, from ``history.jsonl``."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"--gif needs a search run directory; {run_dir} is not a directory")
    path = run_dir / "history.jsonl"
    if not path.is_file():
        raise RunDirError(f"{run_dir} has no history.jsonl: --gif needs the directory of a search run")
    try:
        records = read_jsonl(path)
        history = [(int(r["epoch"]), Genotype.from_dict(r["genotype"])) for r in records]
    except (ValueError, KeyError, TypeError) as exc:
        raise RunDirError(f"{path} is not a search history ({exc})") from None
    if not history:
        raise RunDirError(f"{path} holds no epochs yet")
    return history


def animation_frames(history: Sequence[tuple[int, Genotype]]) -> list[Image.Image]:
    """One frame per epoch: the normal and reduction diagrams side by side, captioned with the
    epoch; every frame has the same size and layout."""
    if find_dot() is None:
        raise GraphvizError("--gif needs Graphviz's 'dot' to draw the cells, and it was not found; install "
                            "graphviz (apt-get install graphviz / brew install graphviz / conda install graphviz)")
    last = history[-1][0]
    drawn = []
    for epoch, genotype in history:
        sources = genotype_dots(genotype)
        images = [Image.open(io.BytesIO(render_dot(sources[cell], "png"))) for cell in CELL_TYPES]
        drawn.append((epoch, images))
    slots = [max(images[i].width for _, images in drawn) for i in range(len(CELL_TYPES))]
    body = max(im.height for _, images in drawn for im in images)
    return [side_by_side(images, f"epoch {epoch}/{last}", slots=slots, body_height=body)
            for epoch, images in drawn]


def write_gif(run_dir: str | Path, out: str | Path, frame_ms: int = 800) -> Path:
    """Animate a search run's cells epoch by epoch into the GIF ``out``; the last frame stays
    three times as long."""
    out = Path(out)
    if out.suffix.lower() != ".gif":
        raise ConfigError(f"--gif {out}: the animation's file name must end in .gif")
    if not out.parent.is_dir():
        raise RunDirError(f"cannot write {out}: the directory {out.parent} does not exist")
    frames = animation_frames(search_history(run_dir))
    durations = [frame_ms] * (len(frames) - 1) + [3 * frame_ms]
    frames[0].save(out, save_all=True, append_images=frames[1:], duration=durations, loop=0)
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m darts_nas.visualize",
        description="Draw the normal and reduction cells of a genotype (conventional DARTS drawing, "
                    "rendered by Graphviz's dot), or animate a search epoch by epoch.")
    p.add_argument("spec", metavar="SPEC",
                   help="a genotype JSON file, a search run directory (its genotype.json), a name from "
                        "cells/ (darts_v2, pdarts, ...) or genotype text")
    p.add_argument("-o", "--out", default=None,
                   help="OUT.png, OUT.svg or OUT.dot: writes OUT_normal.* and OUT_reduce.* (and the "
                        ".dot sources); .dot needs no Graphviz (default without --gif: NAME.png in the current "
                        "directory, NAME.dot without Graphviz, NAME being the cell's name, file or run directory)")
    p.add_argument("--gif", default=None, metavar="OUT.gif",
                   help="with a search run directory as SPEC: an animated GIF of both cells, one frame "
                        "per epoch of history.jsonl")
    p.add_argument("--frame-ms", type=int, default=800, help="milliseconds per frame of the GIF")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        out = args.out if args.out is not None or args.gif is not None else default_out(args.spec)
        if args.frame_ms < 1:
            raise ConfigError(f"--frame-ms must be at least 1, got {args.frame_ms}")
        if args.gif is not None:
            search_history(args.spec)  # a bad run directory fails before anything is written
        if out is not None:
            for path in write_diagrams(resolve(args.spec), out, spec_name(args.spec)):
                print(path)
        if args.gif is not None:
            print(write_gif(args.spec, args.gif, args.frame_ms))
    except DartsNasError as exc:
        print_error(str(exc))
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
