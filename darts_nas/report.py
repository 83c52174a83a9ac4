"""``darts-report``: one report over search and retraining runs and ``--seeds`` aggregates.

``darts-report RUN ... --out DIR`` reads each RUN (a run directory, or the parent of a ``--seeds``
run) and writes into DIR a Markdown table (``report.md``) and the same numbers as CSV
(``report.csv``): one row per kind/method/space/dataset with the mean ± sample std, n, min and max
of the headline metric (search: final architecture-half accuracy; retraining: final test
accuracy), and the published result of the run's preset where it carries one. With matplotlib
(``pip install darts-nas[report]``) it also draws, as PNG: the accuracy and loss curves of every
run of a row (``curves-<row>.png``) and, for each search run, the mixing weights of every edge over
the epochs (``alphas-<row>-<run>.png``).

``darts-report --aggregate PARENT`` rebuilds ``PARENT/summary.json`` from whatever ``seed-<n>``
runs in it have finished (seeds run as separate jobs into one parent).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from . import __version__
from .errors import DartsNasError, RunDirError, print_error
from .repeat import AGGREGATE_FILE, FINISHED, FOLD_METRICS, METRICS, aggregate, describe, summarise, write_aggregate

# The curves drawn per kind of run: (metric key, label); accuracy first, then loss.
CURVES = {
    "search": ((("train_acc", "weight half (training)"), ("valid_acc", "architecture half")),
               (("train_loss", "weight half (training)"), ("valid_loss", "architecture half"))),
    "train": ((("train_acc", "training"), ("test_acc", "test"), ("heldout_acc", "held-out fold")),
              (("train_loss", "training"), ("test_loss", "test"), ("heldout_loss", "held-out fold"))),
}
CURVES_SIZE = (1000, 400)  # pixels of curves-*.png (10 x 4 inches at 100 dpi)
ALPHA_COLUMNS = 7  # edges per row of alphas-*.png
ALPHA_PANEL = (250, 200)  # pixels of one edge's panel
ALPHA_LEGEND = 60  # pixels above the panels for the ops' legend
CELL_PANEL = (1100, 330)  # pixels of one cell type's drawing in cells-*.png


@dataclass
class Row:
    """One kind/method/space/dataset group: its runs and their headline values."""

    kind: str
    method: str
    space: str
    dataset: str
    metric: str
    published: str = ""
    values: dict[str, float] = field(default_factory=dict)  # run label -> headline value
    runs: dict[str, Path] = field(default_factory=dict)  # run label -> run directory

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9]+", "-", f"{self.kind}-{self.method}-{self.space}-{self.dataset}").strip("-")


def alphas_size(edges: int) -> tuple[int, int]:
    """(width, height) in pixels of the alphas figure of a search whose cell types have ``edges``
    edges each (one row of panels per ALPHA_COLUMNS edges, per cell type)."""
    columns = min(edges, ALPHA_COLUMNS)
    return ALPHA_PANEL[0] * columns, ALPHA_PANEL[1] * math.ceil(edges / ALPHA_COLUMNS)


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _published_text(pub: dict[str, Any], what: str) -> str:
    return (f"{pub.get('test_error')} % test error, {pub.get('params_m')} M params on {pub.get('dataset')} "
            f"after retraining ({what}; {pub.get('source')})")


def _published(settings: dict[str, Any]) -> str:
    """The published result of the run's preset, or of the published cell a retraining trains
    (cells/*.json), as one cell of the table; '' where neither carries one."""
    if settings.get("cell") is not None:
        from .genotype import published_results

        return "; ".join(_published_text(pub, str(settings["cell"])) for pub in published_results(str(settings["cell"])))
    if not settings.get("preset"):
        return ""
    from .config import load_preset

    try:
        pub = load_preset(settings["preset"]).get("published") or {}
    except DartsNasError:
        return ""
    if not pub:
        return ""
    return _published_text(pub, settings["preset"])


def _row_of(settings: dict[str, Any], kind: str) -> Row:
    if kind == "search":
        method = settings.get("method", "darts") + (f" (preset {settings['preset']})" if settings.get("preset") else "")
    elif settings.get("folds"):
        method = f"retrain {Path(str(settings.get('cell'))).name} ({settings['folds']}-fold cross-validation)"
        return Row(kind, method, str(settings.get("space") or "darts"), str(settings.get("dataset")),
                   FOLD_METRICS[0], _published(settings))
    else:
        method = f"retrain {Path(str(settings.get('cell'))).name}"
    return Row(kind, method, str(settings.get("space") or "darts"), str(settings.get("dataset")), METRICS[kind][0],
               _published(settings))


def collect(paths: Sequence[str | Path], warn=print) -> list[Row]:
    """The rows of the runs in ``paths`` (run directories or ``--seeds`` parents), grouped by
    kind, method, space and dataset; an unfinished run is left out with a warning."""
    rows: dict[tuple[str, str, str, str], Row] = {}
    for path in map(Path, paths):
        found = _json(path / AGGREGATE_FILE)
        if isinstance(found, dict) and found.get("kind") == "aggregate":
            found = aggregate(path)
            unit = found.get("unit", "seed")
            runs = [(f"{path.name}/{unit}-{s}", path / f"{unit}-{s}") for s in found["finished"]]
        elif (path / "config.json").is_file():
            runs = [(path.name, path)]
        else:
            raise RunDirError(f"{path} holds neither a run (config.json) nor a --seeds aggregate ({AGGREGATE_FILE}): "
                              f"give run directories or --seeds parents")
        for label, run in runs:
            saved = _json(run / "config.json")
            settings = saved.get("config") if isinstance(saved, dict) else None
            if not isinstance(settings, dict):
                raise RunDirError(f"{run}/config.json is unreadable: give run directories written by darts-nas")
            from .runtime import run_kind

            kind = run_kind(settings)
            summary = _json(run / FINISHED[kind])
            if not isinstance(summary, dict) or not summary.get("finished"):
                warn(f"{run}: not finished ({FINISHED[kind]} missing): left out")
                continue
            row = _row_of(settings, kind)
            row = rows.setdefault((row.kind, row.method, row.space, row.dataset), row)
            value = summary.get(row.metric)
            if isinstance(value, (int, float)):
                row.values[label] = float(value)
            row.runs[label] = run
    return list(rows.values())


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def write_tables(rows: Sequence[Row], out: Path) -> None:
    header = ["kind", "method", "space", "dataset", "metric", "mean", "std", "n", "min", "max", "published"]
    md = ["| kind | method | space | dataset | metric (%) | mean ± std | n | min | max | published |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    with open(out / "report.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for r in rows:
            s = summarise(list(r.values.values()))
            writer.writerow([r.kind, r.method, r.space, r.dataset, r.metric, s["mean"], s["std"], s["n"], s["min"],
                             s["max"], r.published])
            md.append(f"| {r.kind} | {r.method} | {r.space} | {r.dataset} | {r.metric} | {_fmt(s['mean'])} ± "
                      f"{_fmt(s['std'])} | {s['n']} | {_fmt(s['min'])} | {_fmt(s['max'])} | {r.published or '-'} |")
    md += ["", "std is the sample standard deviation (n - 1 in the denominator); n/a for one run. The headline "
               "metric is the final architecture-half accuracy of a search (valid_acc) and the final test accuracy "
               "of a retraining (final_test_acc), the held-out fold's accuracy of a cross-validated retraining "
               "(final_heldout_acc, one run per fold). A published number is the test error after retraining of "
               "the preset's method or of the published cell, on its dataset: compare it with a retraining's "
               "accuracy on that dataset.", ""]
    (out / "report.md").write_text("\n".join(md) + "\n")


def _jsonl(path: Path) -> list[dict[str, Any]]:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            continue  # a line cut by a crash
    return records


def draw_curves(row: Row, out: Path, plt) -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(CURVES_SIZE[0] / 100, CURVES_SIZE[1] / 100), dpi=100)
    for ax, curves, what in zip(axes, CURVES[row.kind], ("accuracy (%)", "loss")):
        for i, (label, run) in enumerate(row.runs.items()):
            records = _jsonl(run / "metrics.jsonl")
            for (key, name), style in zip(curves, ("--", "-", ":")):
                points = [(r["epoch"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
                if points:
                    ax.plot(*zip(*points), style, marker="o", color=f"C{i}", label=f"{label}: {name}")
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=6)
    fig.suptitle(f"{row.method}, {row.space}, {row.dataset}", fontsize=9)
    target = out / f"curves-{row.slug}.png"
    fig.savefig(target, dpi=100)
    plt.close(fig)
    return target


def draw_alphas(row: Row, label: str, run: Path, out: Path, plt) -> Path | None:
    """The softmaxed alphas of every edge over the epochs (history.jsonl), one panel per edge."""
    history = [h for h in _jsonl(run / "history.jsonl") if isinstance(h.get("alphas"), dict)]
    if not history:
        return None
    cell_types = list(history[0]["alphas"])

    def ops_of(h: dict, cell_type: str, e: int) -> list[str]:
        """The ops of an edge's alpha columns in one record: its per-edge list (darts_nas.edge_ops;
        a staged search prunes them between stages), else the shared list."""
        if h.get("edge_ops"):
            return h["edge_ops"][cell_type][e]
        return h.get("primitives") or [f"op {k}" for k in range(len(h["alphas"][cell_type][e]))]

    edges = max(len(history[0]["alphas"][t]) for t in cell_types)
    width, height = alphas_size(edges)
    height = height * len(cell_types) + ALPHA_LEGEND
    fig = plt.figure(figsize=(width / 100, height / 100), dpi=100)
    rows_per_type = math.ceil(edges / ALPHA_COLUMNS)
    columns = min(edges, ALPHA_COLUMNS)
    epochs = [h["epoch"] for h in history]
    # one colour per op name across every panel
    all_ops = list(dict.fromkeys(op for h in history for t in cell_types for e in range(len(h["alphas"][t]))
                                 for op in ops_of(h, t, e)))
    for t_index, cell_type in enumerate(cell_types):
        for e in range(len(history[0]["alphas"][cell_type])):
            ax = fig.add_subplot(rows_per_type * len(cell_types), columns,
                                 (t_index * rows_per_type + e // columns) * columns + e % columns + 1)
            per_record = [ops_of(h, cell_type, e) for h in history]
            for op in dict.fromkeys(op for ops in per_record for op in ops):  # an op pruned away ends its line
                values = [h["alphas"][cell_type][e][ops.index(op)] if op in ops else float("nan")
                          for h, ops in zip(history, per_record)]
                ax.plot(epochs, values, marker=".", color=f"C{all_ops.index(op) % 10}", label=op)
            ax.set_title(f"{cell_type} edge {e}", fontsize=7)
            ax.xaxis.get_major_locator().set_params(integer=True)
            ax.tick_params(labelsize=6)
    legend: dict[str, Any] = {}
    for ax in fig.axes:  # every op once, from whichever panel shows it
        for handle, name in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(name, handle)
    fig.legend(list(legend.values()), list(legend), loc="upper center", ncol=min(len(legend), 8), fontsize=7)
    fig.text(0.01, 1 - 12 / height, f"mixing weights per edge over the epochs: {label}", fontsize=8, va="top")
    fig.subplots_adjust(top=1 - ALPHA_LEGEND / height - 0.02, hspace=0.6, wspace=0.35, bottom=0.06,
                        left=0.04, right=0.99)
    target = out / f"alphas-{row.slug}-{re.sub(r'[^A-Za-z0-9]+', '-', label).strip('-')}.png"
    fig.savefig(target, dpi=100)
    plt.close(fig)
    return target


@dataclass
class CellGraph:
    """A cell as a picture needs it: node labels left to right, the genotype's edges (source
    node, target node, op) and the nodes the output concatenates (or sums)."""

    title: str
    nodes: list[str]
    edges: list[tuple[int, int, str]]
    output: list[int]


def cell_graphs(path: Path) -> list[CellGraph]:
    """The cells of the genotype file ``path`` (any space's genotype.json)."""
    data = _json(path)
    if not isinstance(data, dict):
        return []
    if data.get("space") == "nas-bench-201":
        from .arch_string import EDGES, NODES, ArchGenotype

        arch = ArchGenotype.from_dict(data)
        nodes = ["in"] + [str(i) for i in range(1, NODES - 1)] + ["out"]
        return [CellGraph("NAS-Bench-201 cell", nodes,
                          [(j, i, op) for (i, j), op in zip(EDGES, arch.ops) if op != "none"], [])]
    if data.get("space") == "proxyless":  # a chain: each kept block an edge from one layer's output to the next
        from .chain_genotype import ChainGenotype

        blocks = [op for op in ChainGenotype.from_dict(data).ops if op != "none"]
        nodes = ["stem"] + [str(i) for i in range(1, len(blocks))] + ["head"]
        return [CellGraph("ProxylessNAS chain", nodes, [(i, i + 1, op) for i, op in enumerate(blocks)], [])]
    from .drawing import CELL_TITLES, node_name
    from .genotype import Genotype

    genotype = Genotype.from_dict(data)
    graphs = []
    for cell in ("normal", "reduce"):
        pairs = getattr(genotype, cell)
        nodes = [node_name(j) for j in range(genotype.steps(cell) + 2)] + ["c_{k}"]
        edges = [(j, target, op) for (op, j), target in zip(pairs, genotype.targets(cell))]  # sparse cells too
        graphs.append(CellGraph(CELL_TITLES[cell], nodes, edges, list(getattr(genotype, f"{cell}_concat"))))
    return graphs


def draw_cells(row: Row, label: str, run: Path, out: Path, plt) -> Path | None:
    """The run's final cell(s) (its genotype.json): nodes left to right, each edge an arc labelled
    with its op, the output's inputs as dashed arcs below."""
    from matplotlib.patches import FancyArrowPatch
    from matplotlib.path import Path as CurvePath

    graphs = cell_graphs(run / "genotype.json")
    if not graphs:
        return None
    fig, axes = plt.subplots(len(graphs), 1, figsize=(CELL_PANEL[0] / 100, CELL_PANEL[1] * len(graphs) / 100),
                             dpi=100, squeeze=False)

    def arc(ax, source: float, target: float, height: float, **style) -> None:
        """A quadratic curve from node ``source`` to node ``target`` peaking at ``height / 2``
        (drawn in data coordinates, so a label placed at the peak sits on it)."""
        y0 = 0.05 if height > 0 else -0.05
        verts = [(source + 0.12, y0), ((source + target) / 2, y0 + height), (target - 0.12, y0)]
        ax.add_patch(FancyArrowPatch(path=CurvePath(verts, [CurvePath.MOVETO, CurvePath.CURVE3, CurvePath.CURVE3]),
                                     arrowstyle="-|>", mutation_scale=10, **style))

    for ax, graph in zip(axes[:, 0], graphs):
        last = len(graph.nodes) - 1
        top = 0.3
        drawn: dict[tuple[int, int], int] = {}
        for source, target, op in graph.edges:
            repeat = drawn[(source, target)] = drawn.get((source, target), -1) + 1
            height = 0.22 * (target - source) + 0.1 * (source % 2) + 0.18 * repeat
            top = max(top, height / 2)
            arc(ax, source, target, height, color="#555555", lw=1.1)
            ax.text((source + target) / 2, 0.05 + height / 2, op, ha="center", va="center", fontsize=7, zorder=4,
                    bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none", "alpha": 0.85})
        bottom = -0.3
        for source in graph.output:
            height = -0.12 * (last - source)
            bottom = min(bottom, height / 2 - 0.1)
            arc(ax, source, last, height, color="#999999", lw=0.9, ls="--")
        for x, name in enumerate(graph.nodes):
            colour = "#cfe8ff" if x < 2 and graph.output else "#ffe7c2" if x == last else "#dff5d8"
            ax.text(x, 0, name, ha="center", va="center", fontsize=10, zorder=5,
                    bbox={"boxstyle": "round,pad=0.4", "facecolor": colour, "edgecolor": "#444444"})
        ax.set_xlim(-0.6, last + 0.6)
        ax.set_ylim(bottom - 0.1, top + 0.2)
        ax.set_title(graph.title, fontsize=10)
        ax.axis("off")
    fig.suptitle(f"final cell: {label} ({row.method}, {row.dataset})", fontsize=9)
    fig.tight_layout()
    target = out / f"cells-{row.slug}-{re.sub(r'[^A-Za-z0-9]+', '-', label).strip('-')}.png"
    fig.savefig(target, dpi=100)
    plt.close(fig)
    return target


def draw_figures(rows: Sequence[Row], out: Path) -> list[Path] | None:
    """The PNG figures, or None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    figures = []
    for row in rows:
        figures.append(draw_curves(row, out, plt))
        if row.kind == "search":
            figures += [f for label, run in row.runs.items() if (f := draw_alphas(row, label, run, out, plt))]
        # the final cells: every search's own; a retraining's cell once per row (all its runs train it)
        runs = list(row.runs.items()) if row.kind == "search" else list(row.runs.items())[:1]
        figures += [f for label, run in runs if (f := draw_cells(row, label, run, out, plt))]
    return figures


def report(paths: Sequence[str | Path], out: str | Path, warn=print) -> tuple[list[Row], list[Path] | None]:
    rows = collect(paths, warn)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    figures = draw_figures(rows, out)
    write_tables(rows, out)
    if figures:
        with open(out / "report.md", "a") as f:
            f.write("\n".join(f"![{p.stem}]({p.name})" for p in figures) + "\n")
    return rows, figures


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="darts-report", allow_abbrev=False,
                                description="A report over darts-nas runs: a Markdown table and a CSV of mean ± std "
                                            "per method/space/dataset with the published numbers, and PNG figures "
                                            "(with matplotlib: pip install darts-nas[report]).")
    p.add_argument("--version", action="version", version=f"darts-nas {__version__}")
    p.add_argument("runs", nargs="*", metavar="RUN",
                   help="search or retraining run directories, or --seeds parents (their seed-<n> runs)")
    p.add_argument("--out", default="report", help="folder for report.md, report.csv and the figures (default: report)")
    p.add_argument("--aggregate", metavar="PARENT", action="append", default=[],
                   help="rebuild PARENT/summary.json (mean, sample std, min, max, each seed's value) from the "
                        "finished PARENT/seed-<n> runs; repeatable")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.aggregate and not args.runs:
        parser.print_usage(sys.stderr)
        print_error("nothing to do: give run directories to report on, or --aggregate PARENT")
        return 2
    try:
        for parent in args.aggregate:
            result = write_aggregate(parent)
            print(f"{parent}/{AGGREGATE_FILE}: {describe(result)}")
        if args.runs:
            rows, figures = report(args.runs, args.out, warn=lambda line: print(line, file=sys.stderr))
            print(f"{len(rows)} rows written to {Path(args.out) / 'report.md'} and report.csv")
            if figures is None:
                print_error("figures skipped: matplotlib is not installed (pip install 'darts-nas[report]')")
            else:
                print(f"{len(figures)} figures written to {args.out}")
    except DartsNasError as exc:
        print_error(str(exc))
        return 2
    except OSError as exc:
        print_error(f"{exc.strerror or exc}{f' ({exc.filename})' if exc.filename else ''}: check that --out is "
                    f"a writable folder")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
