"""Logging of a run: console and files, and TensorBoard.

:class:`RunLog` prints progress and appends JSON lines to the run directory. :class:`SearchBoard`
and :class:`TrainBoard` write TensorBoard event files into the run directory itself (scalars,
alpha heatmaps, genotype tables, cell diagrams, hparams); disabled, or on any process but the
main one, they do nothing. :class:`CellDiagrams` writes ``cell_*.dot`` (and, with Graphviz,
``cell_*.png``/``.svg``) next to ``genotype.json``.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from .checkpoint import atomic_write_bytes, atomic_write_text
from .drawing import (CELL_TITLES, DOT_MISSING_HINT, OUTPUT_NAME, GraphvizError, Heatmap, draw_heatmap,
                      edge_names, edge_row, find_dot, genotype_dots, node_name, png_bytes, png_size, render_dot)
from .errors import RunFileError, print_error  # noqa: F401  (print_error: re-exported)
from .genotype import Genotype
from .ops import PARAMETER_FREE
from .runfiles import append_record, open_for_append, read_records, write_all


class RunLog:
    """Prints progress to the console and appends the same lines to ``<out>/log.txt``;
    appends metric records to JSON-lines files of the run directory. Neither is ever written
    through a link planted under its name (:mod:`darts_nas.runfiles`)."""

    def __init__(self, out: Path, quiet: bool = False) -> None:
        self.out = out
        self.quiet = quiet
        self._log: int | None = open_for_append(out / "log.txt")

    def info(self, message: str, console: bool = True) -> None:
        """Append ``message`` to log.txt and, unless quiet or ``console`` is False, print it."""
        line = f"{time.strftime('%H:%M:%S')} {message}"
        if console and not self.quiet:
            print(line, flush=True)
        if self._log is None:
            return
        try:
            write_all(self._log, (line + "\n").encode("utf-8"))  # one write per line: no interleaving
        except OSError as exc:  # full disk, read-only directory: one line naming the file
            raise RunFileError.from_os_error(exc, self.out / "log.txt") from None

    def to_file(self, message: str) -> None:
        """Append ``message`` to log.txt only: for a line the command itself prints on stderr (a
        stop), which would otherwise show twice on the console."""
        self.info(message, console=False)

    def append_jsonl(self, name: str, record: dict[str, Any]) -> None:
        append_record(self.out / name, record)

    def close(self) -> None:
        if self._log is not None:
            os.close(self._log)
            self._log = None


def search_legend(out: Path, tensorboard: bool) -> list[str]:
    """Lines printed once at the start of a search: what its accuracies mean, where TensorBoard looks."""
    lines = ["reading the numbers: on the step lines, 'acc' and 'arch acc' are the weight half and the "
             "architecture half as the search trains on them (augmented images, training-mode BatchNorm with "
             "each batch's statistics), averaged over the epoch so far; the epoch line's 'arch-half acc' is the "
             "whole architecture half after the epoch in eval mode (no augmentation, BatchNorm's running "
             "statistics), so the two differ"]
    return lines + _tensorboard_line(out, tensorboard)


def train_legend(out: Path, tensorboard: bool, augmentation: str) -> list[str]:
    """Lines printed once at the start of a retraining: why train and test accuracy differ, where
    TensorBoard looks. ``augmentation`` names what the training images go through."""
    lines = [f"reading the numbers: train 'acc' is on training images as they are trained on ({augmentation}, "
             f"training-mode BatchNorm), averaged over the epoch; 'test acc' is the test set after the epoch in "
             f"eval mode (no augmentation or drop-path, BatchNorm's running statistics), so test accuracy can be "
             f"the higher"]
    return lines + _tensorboard_line(out, tensorboard)


def _tensorboard_line(out: Path, tensorboard: bool) -> list[str]:
    if not tensorboard:
        return []
    return [f"TensorBoard logs go to {out}: view them with  tensorboard --logdir {out}  (then open "
            f"http://localhost:6006)"]


def read_jsonl(path: str | Path, warn: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """The records of a JSON-lines run file; a torn last line is dropped (see
    :func:`darts_nas.runfiles.read_records`)."""
    return read_records(path, warn)


# ---------------------------------------------------------------------------------------------
# What a search looks like: alpha statistics, genotype tables, cell diagrams, TensorBoard
# ---------------------------------------------------------------------------------------------

CELL_TYPES = ("normal", "reduce")
# cell_cell.*: the one cell of the NAS-Bench-201 space (darts_nas.arch_string.ArchGenotype)
CELL_DIAGRAM_FILES = tuple(f"cell_{cell}.{ext}" for cell in (*CELL_TYPES, "cell") for ext in ("dot", "png", "svg"))


def _draws_itself(genotype: Any) -> bool:
    """A genotype of another space (NAS-Bench-201's) brings its own heatmap marks, Markdown and
    diagrams (``kept``, ``markdown``, ``dots``); a DARTS :class:`Genotype` is drawn here."""
    return not isinstance(genotype, Genotype) and hasattr(genotype, "dots")


def cell_dots(genotype: Any) -> dict[str, str]:
    """``{cell type: DOT source}`` of any space's genotype."""
    return genotype.dots() if _draws_itself(genotype) else genotype_dots(genotype)
EVENT_FILE_PREFIX = "events.out.tfevents."


def parameter_free_ops(primitives: Sequence[str]) -> list[int]:
    """Columns of the parameter-free ops other than ``none`` (pooling, skip_connect): the ops
    whose weight grows when a search collapses towards parameter-free cells."""
    return [k for k, op in enumerate(primitives) if op in PARAMETER_FREE and op != "none"]


def alpha_probabilities(alphas: Any) -> np.ndarray:
    """softmax(alphas) over the ops of each edge, as float64 (num_edges, num_ops); the softmax is
    taken in float32 like the supernet's forward pass and history.jsonl."""
    raw = torch.as_tensor(alphas).detach().float().cpu()
    return torch.softmax(raw, dim=-1).double().numpy()


def alpha_entropy(probs: Any) -> float:
    """Mean over edges of the entropy (nats) of each edge's op distribution; log(num_ops) at the
    start of a search, 0 when every edge has picked one op."""
    p = np.asarray(probs, dtype=np.float64)
    plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    return float(np.mean(-plogp.sum(axis=-1)))


def edge_lists(primitives: Any, num_edges: int) -> list[tuple[str, ...]]:
    """One op list per edge: ``primitives`` is one shared list of op names or already one list per
    edge (a space with per-edge candidates, :mod:`darts_nas.edge_ops`)."""
    from .genotype import _is_per_edge

    if _is_per_edge(primitives):
        return [tuple(ops) for ops in primitives]
    return [tuple(primitives)] * num_edges


def cell_ops(primitives: Any, cell: str) -> Any:
    """One cell type's ops from what a caller passes: a shared op list, or an edge-op table
    ``{cell type: per-edge lists}``."""
    return primitives[cell] if isinstance(primitives, Mapping) else primitives


def parameter_free_weight(probs: Any, primitives: Any) -> float:
    """Mean over edges of the total softmax weight on parameter-free ops (``none`` excluded);
    ``primitives``: the ops of every edge, or one list per edge."""
    p = np.asarray(probs, dtype=np.float64)
    if p.size == 0:
        return 0.0
    shares = [row[parameter_free_ops(ops)].sum() for row, ops in zip(p, edge_lists(primitives, len(p)))]
    return float(np.mean(shares))


def alpha_heatmap(cell: str, alphas: Any, primitives: Any, genotype: Genotype,
                  epoch: int | None = None) -> Heatmap:
    """The heatmap of one cell type: rows are edges (``from -> to``, alpha row order), columns
    the candidate ops, values softmax(alphas); the (edge, op) pairs that ``genotype`` keeps are
    marked. With one op list per edge (``primitives``), the columns are every op some edge
    offers and an edge's cells for ops it does not offer are blank."""
    probs = alpha_probabilities(alphas)
    from .edge_ops import op_columns, spread
    from .genotype import _is_per_edge

    if _is_per_edge(primitives):
        edges = [tuple(ops) for ops in primitives]
        primitives = op_columns(edges)
        probs = np.asarray(spread(probs.tolist(), edges, primitives), dtype=np.float64)
    if _draws_itself(genotype):
        from .arch_string import edge_name

        title = f"{cell}: softmax(alpha)" + (f", epoch {epoch}" if epoch is not None else "")
        if hasattr(genotype, "rows"):  # a space naming its own rows per group (the proxyless chain's layers)
            return Heatmap(values=probs, rows=genotype.rows(cell), columns=tuple(primitives),
                           marked=frozenset(genotype.kept(primitives, cell)), title=title, breaks=(),
                           note="boxed: the block each layer keeps (none included)")
        return Heatmap(values=probs, rows=tuple(edge_name(k) for k in range(len(probs))), columns=tuple(primitives),
                       marked=frozenset(genotype.kept(primitives)), title=title, breaks=(1, 3),
                       note="boxed: the op each edge keeps (none included)")
    steps = getattr(genotype, f"{cell}_steps")
    if probs.shape != (len(edge_names(steps)), len(primitives)):
        raise ValueError(f"alphas of shape {tuple(probs.shape)} do not match a {steps}-node cell "
                         f"with {len(primitives)} ops")
    marked = frozenset((edge_row(node - 2, j), list(primitives).index(op))
                       for (op, j), node in zip(getattr(genotype, cell), genotype.targets(cell)))
    breaks = tuple(edge_row(i, 0) for i in range(steps))
    title = f"{CELL_TITLES[cell]}: softmax(alpha)" + (f", epoch {epoch}" if epoch is not None else "")
    return Heatmap(values=probs, rows=tuple(edge_names(steps)), columns=tuple(primitives), marked=marked,
                   title=title, breaks=breaks, note="boxed: the edges and ops kept by the derived genotype")


def genotype_markdown(genotype: Genotype) -> str:
    """One Markdown table per cell type (node, inputs, ops; nodes named as in the diagrams) and
    the canonical ``str(genotype)`` in a code block, which :func:`darts_nas.genotype.parse`
    reads back."""
    if _draws_itself(genotype):
        return genotype.markdown() + "\n"
    parts = []
    for cell in CELL_TYPES:
        rows = [f"**{CELL_TITLES[cell]}**", "", "| node | inputs | ops |", "|---|---|---|"]
        for i, inputs in enumerate(genotype.node_inputs(cell)):
            if not inputs:
                rows.append(f"| `{i}` | none: dropped | |")
                continue
            rows.append(f"| `{i}` | {', '.join(f'`{node_name(j)}`' for _, j in inputs)} | "
                        f"{', '.join(f'`{op}`' for op, _ in inputs)} |")
        concat = ", ".join(f"`{node_name(j)}`" for j in genotype.live_concat(cell))
        rows.append(f"| `{OUTPUT_NAME}` | {concat} | concat |")
        parts.append("\n".join(rows))
    parts.append("```\n" + str(genotype) + "\n```")
    return "\n\n".join(parts) + "\n"


def remove_event_files(out: str | Path) -> None:
    """Delete TensorBoard event files of an earlier run in ``out`` (for ``--overwrite``), so the
    replaced run's curves do not mix with the new ones."""
    for path in Path(out).glob(EVENT_FILE_PREFIX + "*"):
        if path.is_file():
            path.unlink()


def is_main_process() -> bool:
    """False on every rank but 0 of an initialised torch.distributed group: one process writes."""
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized() and dist.get_rank() != 0)


class CellDiagrams:
    """Renders genotype cells with Graphviz's ``dot`` when it is on ``PATH``. Without it (or when
    it fails) ``warn`` receives one line, once, and only the DOT text is produced."""

    def __init__(self, warn: Callable[[str], None] | None = None) -> None:
        self.dot = find_dot()
        self._warn = warn
        self._warned: set[str] = set()

    def _say_once(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            if self._warn is not None:
                self._warn(message)

    @property
    def available(self) -> bool:
        if self.dot is None:
            self._say_once(DOT_MISSING_HINT)
        return self.dot is not None

    def render(self, source: str, fmt: str = "png") -> bytes | None:
        """``source`` rendered to ``fmt``, or None when dot is missing or fails (said once)."""
        if not self.available:
            return None
        try:
            return render_dot(source, fmt, self.dot)
        except GraphvizError as exc:
            self._say_once(str(exc))
            return None

    def write(self, genotype: Genotype, directory: str | Path) -> list[Path]:
        """Write ``cell_normal.dot`` and ``cell_reduce.dot`` into ``directory`` and, when dot is
        available, ``cell_*.png`` and ``cell_*.svg``; returns the paths written (none on a
        secondary process)."""
        directory = Path(directory)
        written: list[Path] = []
        if not is_main_process():
            return written
        for cell, source in cell_dots(genotype).items():
            target = directory / f"cell_{cell}.dot"
            atomic_write_text(target, source)
            written.append(target)
            for fmt in ("png", "svg"):
                data = self.render(source, fmt)
                if data is not None:
                    target = directory / f"cell_{cell}.{fmt}"
                    atomic_write_bytes(target, data)
                    written.append(target)
        return written


def _text_summary(tag: str, text: str):
    """A TensorBoard text summary under exactly ``tag`` (``add_text`` appends ``/text_summary``)."""
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.compat.proto.tensor_pb2 import TensorProto
    from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto
    from tensorboard.plugins.text.plugin_data_pb2 import TextPluginData

    metadata = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(
        plugin_name="text", content=TextPluginData(version=0).SerializeToString()))
    tensor = TensorProto(dtype="DT_STRING", string_val=[text.encode("utf-8")],
                         tensor_shape=TensorShapeProto(dim=[TensorShapeProto.Dim(size=1)]))
    return Summary(value=[Summary.Value(tag=tag, metadata=metadata, tensor=tensor)])


def _image_summary(tag: str, png: bytes):
    """A TensorBoard image summary holding already-encoded PNG bytes (no decode, no re-encode)."""
    from tensorboard.compat.proto.summary_pb2 import Summary

    width, height = png_size(png)
    colour_type = png[25]  # 2: RGB, 6: RGBA, 0: grey, 3: palette
    channels = {0: 1, 2: 3, 4: 2, 6: 4}.get(colour_type, 3)
    return Summary(value=[Summary.Value(tag=tag, image=Summary.Image(
        height=height, width=width, colorspace=channels, encoded_image_string=png))])


class _Board:
    """A SummaryWriter writing into the run directory itself, or nothing at all: when disabled,
    and on every process but the main one, every method returns at once."""

    LAYOUT: dict[str, dict[str, list]] = {}

    def __init__(self, out: str | Path, enabled: bool = True, diagrams: CellDiagrams | None = None,
                 purge_step: int | None = None) -> None:
        self.out = Path(out)
        self.diagrams = diagrams if diagrams is not None else CellDiagrams()
        self.writer = None
        if enabled and is_main_process():
            from torch.utils.tensorboard import SummaryWriter  # imports tensorboard: only when used

            # purge_step: on resume, TensorBoard drops the earlier files' events from that step on.
            self.writer = SummaryWriter(log_dir=str(self.out), purge_step=purge_step)
            self.writer.add_custom_scalars(self.LAYOUT)

    @property
    def enabled(self) -> bool:
        return self.writer is not None

    def _scalars(self, names: Sequence[tuple[str, str]], record: dict[str, Any], step: int) -> None:
        for tag, key in names:
            value = record.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(tag, float(value), step)

    def _text(self, tag: str, text: str, step: int) -> None:
        self.writer.file_writer.add_summary(_text_summary(tag, text), step)

    def _png(self, tag: str, png: bytes, step: int) -> None:
        self.writer.file_writer.add_summary(_image_summary(tag, png), step)

    def _cell_images(self, genotype: Genotype, step: int) -> None:
        for cell, source in cell_dots(genotype).items():
            png = self.diagrams.render(source, "png")
            if png is not None:
                self._png(f"cell/{cell}", png, step)

    def _hparams(self, hparams: dict[str, Any], metrics: dict[str, Any], step: int) -> None:
        hparams = {k: v for k, v in hparams.items() if isinstance(v, (bool, int, float, str))}
        metrics = {k: float(v) for k, v in metrics.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
        # Everything else must be on disk first: add_hparams opens a second event file in the
        # same directory (run_name "."), and TensorBoard reads a directory's files in order.
        self.writer.flush()
        self.writer.add_hparams(hparams, metrics, run_name=".", global_step=step)

    def purge_from(self, step: int) -> None:
        """Drop the events from ``step`` on (a DARTS-ADA rollback writes those epochs again): a new
        event file whose purge step hides the earlier files' events from there, as on resume."""
        if self.writer is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer.close()
            self.writer = SummaryWriter(log_dir=str(self.out), purge_step=step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


SEARCH_SCALARS = (
    ("loss/weights", "train_loss"), ("loss/arch", "arch_loss"), ("loss/valid", "valid_loss"),
    ("accuracy/weights", "train_acc"), ("accuracy/arch", "arch_acc"), ("accuracy/valid", "valid_acc"),
    ("lr/weights", "lr"), ("lr/arch", "arch_lr"),
    # collapse diagnostics (darts_nas.diagnostics); the parameter-free shares and entropies are
    # the alphas/<cell>/... scalars
    ("diagnostics/hessian_eigenvalue", "hessian_eigenvalue"),
    ("diagnostics/normal_skip_connections", "normal_skip_connections"),
)
SEARCH_HPARAMS = ("dataset", "epochs", "batch_size", "init_channels", "layers", "nodes", "learning_rate",
                  "learning_rate_min", "momentum", "weight_decay", "arch_learning_rate", "arch_weight_decay",
                  "train_portion", "unrolled", "method", "space", "seed", "steps_per_epoch")


class SearchBoard(_Board):
    """TensorBoard view of a search: losses, accuracies, learning rates and alpha statistics per
    epoch (grouped by a custom-scalars layout), alpha heatmaps and histograms, the genotype as
    Markdown, cell diagrams, and the settings with the final metrics as hparams."""

    LAYOUT = {
        "search": {
            "loss": ["Multiline", ["loss/weights", "loss/arch", "loss/valid"]],
            "accuracy": ["Multiline", ["accuracy/weights", "accuracy/arch", "accuracy/valid"]],
            "learning rate": ["Multiline", ["lr/weights", "lr/arch"]],
        },
        "alphas": {
            "entropy (mean over edges)": ["Multiline", [f"alphas/{c}/entropy" for c in CELL_TYPES]],
            "weight of parameter-free ops (mean over edges)":
                ["Multiline", [f"alphas/{c}/parameter_free" for c in CELL_TYPES]],
        },
    }

    def __init__(self, out: str | Path, enabled: bool = True, diagrams: CellDiagrams | None = None,
                 purge_step: int | None = None) -> None:
        super().__init__(out, enabled, diagrams, purge_step)
        self.final: dict[str, float] = {}

    def epoch(self, epoch: int, metrics: dict[str, Any], alphas: dict[str, Any], primitives: Any,
              genotype: Genotype, views: dict[str, Any] | None = None,
              scalars: dict[str, float] | None = None) -> None:
        """Log epoch ``epoch`` (1-based, the global step): ``metrics`` is the metrics.jsonl
        record, ``alphas`` the raw ``{"normal": ..., "reduce": ...}`` logits, ``primitives`` the
        ops of every edge or an edge-op table ``{cell type: per-edge op lists}``, ``genotype`` their
        discretisation. ``views`` are the method's other architecture groups as (num_edges,)
        values (PC-DARTS's normalised betas: a heatmap and a histogram each); ``scalars`` the
        method's schedules (GDAS's temperature), as ``method/<name>``."""
        if self.writer is None:
            return
        self._scalars(SEARCH_SCALARS, metrics, epoch)
        for name, value in (scalars or {}).items():
            self.writer.add_scalar(f"method/{name}", value, epoch)
        for name, values in (views or {}).items():
            self._edge_group(name, values, genotype, epoch)
        for cell in alphas:  # the supernet's cell types
            raw = torch.as_tensor(alphas[cell]).detach().float().cpu()
            probs = alpha_probabilities(raw)
            ops = cell_ops(primitives, cell)
            entropy, free = alpha_entropy(probs), parameter_free_weight(probs, ops)
            self.writer.add_scalar(f"alphas/{cell}/entropy", entropy, epoch)
            self.writer.add_scalar(f"alphas/{cell}/parameter_free", free, epoch)
            self.final[f"entropy_{cell}"], self.final[f"parameter_free_{cell}"] = entropy, free
            self._png(f"alphas/{cell}", png_bytes(draw_heatmap(alpha_heatmap(cell, raw, ops, genotype, epoch))),
                      epoch)
            self.writer.add_histogram(f"alphas/{cell}_hist", raw.numpy(), epoch)
        self._text("genotype", genotype_markdown(genotype), epoch)
        self._cell_images(genotype, epoch)
        for key in ("train_acc", "arch_acc", "valid_acc", "valid_loss"):
            if key in metrics:
                self.final[key] = metrics[key]
        self.writer.flush()

    def _edge_group(self, name: str, values: Any, genotype: Genotype, epoch: int) -> None:
        """A per-edge architecture group (``betas_normal``: one value per edge of that cell type)
        as a one-column heatmap with the edges kept by the genotype marked."""
        v = torch.as_tensor(values).detach().double().cpu().reshape(-1, 1).numpy()
        cell = name.rsplit("_", 1)[-1]
        steps = getattr(genotype, f"{cell}_steps", None)
        rows = tuple(edge_names(steps)) if steps is not None and len(edge_names(steps)) == len(v) else \
            tuple(str(i) for i in range(len(v)))
        kept = {edge_row(node - 2, j) for (_, j), node in zip(getattr(genotype, cell, ()), genotype.targets(cell))} \
            if steps else set()
        heatmap = Heatmap(values=v, rows=rows, columns=("edge weight",), marked=frozenset((r, 0) for r in kept),
                          title=f"{name}, epoch {epoch}", breaks=tuple(edge_row(i, 0) for i in range(steps or 0)),
                          note="boxed: the edges kept by the derived genotype")
        self._png(f"arch/{name}", png_bytes(draw_heatmap(heatmap)), epoch)
        self.writer.add_histogram(f"arch/{name}_hist", v.reshape(-1), epoch)

    def finish(self, config: Any, summary: dict[str, Any]) -> None:
        """The run's settings with its final metrics, for TensorBoard's HParams tab."""
        if self.writer is None:
            return
        metrics = {**self.final, "valid_acc": summary.get("valid_acc"), "valid_loss": summary.get("valid_loss")}
        self._hparams({k: getattr(config, k, None) for k in SEARCH_HPARAMS},
                      {f"hparams/{k}": v for k, v in metrics.items()}, step=getattr(config, "epochs", 0))


TRAIN_SCALARS = (
    ("loss/train", "train_loss"), ("loss/test", "test_loss"), ("accuracy/train", "train_acc"),
    ("accuracy/test", "test_acc"), ("lr", "lr"), ("drop_path_prob", "drop_path_prob"),
    ("throughput/images_per_s", "images_per_s"), ("loss/heldout", "heldout_loss"),
    ("accuracy/heldout", "heldout_acc"),  # --folds: the held-out fold
)
TRAIN_HPARAMS = ("cell", "protocol", "dataset", "network", "epochs", "batch_size", "init_channels", "layers",
                 "learning_rate", "lr_schedule", "learning_rate_min", "lr_decay", "momentum", "weight_decay",
                 "grad_clip", "auxiliary", "auxiliary_weight", "drop_path_prob", "cutout", "label_smoothing",
                 "seed", "steps_per_epoch")


class TrainBoard(_Board):
    """TensorBoard view of a final training: losses, accuracies, learning rate, drop-path
    probability and throughput per epoch; the trained cell (diagrams, genotype, sizes) once at
    step 0; settings and final metrics as hparams."""

    LAYOUT = {
        "training": {
            "loss": ["Multiline", ["loss/train", "loss/test"]],
            "accuracy": ["Multiline", ["accuracy/train", "accuracy/test"]],
            "schedule": ["Multiline", ["lr", "drop_path_prob"]],
            "throughput": ["Multiline", ["throughput/images_per_s"]],
        },
    }

    def start(self, genotype: Genotype, sizes: dict[str, Any]) -> None:
        if self.writer is None:
            return
        self._cell_images(genotype, 0)
        self._text("genotype", genotype_markdown(genotype), 0)
        rows = ["| size | value |", "|---|---|"]
        for key in ("params", "params_with_auxiliary", "multiply_adds"):
            if key in sizes:
                rows.append(f"| {key} | {sizes[key]:,} |")
        self._text("sizes", "\n".join(rows) + "\n", 0)
        self.writer.flush()

    def epoch(self, epoch: int, record: dict[str, Any]) -> None:
        """Log the metrics.jsonl ``record`` of epoch ``epoch`` (1-based, the global step)."""
        if self.writer is None:
            return
        self._scalars(TRAIN_SCALARS, record, epoch)
        self.writer.flush()

    def finish(self, config: Any, summary: dict[str, Any]) -> None:
        if self.writer is None:
            return
        metrics = {k: summary.get(k) for k in ("final_test_acc", "best_test_acc", "final_test_loss", "params",
                                               "params_with_auxiliary", "multiply_adds")}
        self._hparams({k: getattr(config, k, None) for k in TRAIN_HPARAMS},
                      {f"hparams/{k}": v for k, v in metrics.items()}, step=getattr(config, "epochs", 0))
