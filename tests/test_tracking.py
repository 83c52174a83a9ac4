"""TensorBoard logging of searches and final trainings, read back from the event files; the alpha
statistics, heatmaps, genotype tables and cell diagrams they hold."""

from __future__ import annotations

import io
import math
import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing import event_accumulator as ea
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

from darts_nas.checkpoint import load_checkpoint
from darts_nas.cli import search_main, train_main
from darts_nas.drawing import (DOT_MISSING_HINT, cell_dot, colormap, draw_heatmap, edge_names,
                               edge_row, node_name)
from darts_nas.genotype import PRIMITIVES, Genotype, load_cell, parse
from darts_nas.tracking import (CellDiagrams, SearchBoard, alpha_entropy, alpha_heatmap, genotype_markdown, parameter_free_ops, parameter_free_weight, read_jsonl)

TINY_SEARCH = ["--dataset", "digits", "--init-channels", "4", "--layers", "3", "--nodes", "2",
               "--batch-size", "32", "--steps-per-epoch", "3", "--epochs", "2", "--quiet"]
TINY_TRAIN = ["--cell", "darts_v2", "--dataset", "digits", "--init-channels", "4", "--layers", "3",
              "--batch-size", "32", "--steps-per-epoch", "2", "--epochs", "2", "--quiet"]
HAVE_DOT = shutil.which("dot") is not None
needs_dot = pytest.mark.skipif(not HAVE_DOT, reason="Graphviz's dot is not installed")

SEARCH_SCALARS = {"loss/weights", "loss/arch", "loss/valid", "accuracy/weights", "accuracy/arch",
                  "accuracy/valid", "lr/weights", "lr/arch", "alphas/normal/entropy", "alphas/reduce/entropy",
                  "alphas/normal/parameter_free", "alphas/reduce/parameter_free",
                  "diagnostics/normal_skip_connections"}  # the Hessian's eigenvalue only with --hessian-every
TRAIN_SCALARS = {"loss/train", "loss/test", "accuracy/train", "accuracy/test", "lr", "drop_path_prob",
                 "throughput/images_per_s"}


def events(out) -> ea.EventAccumulator:
    everything = {kind: 0 for kind in (ea.SCALARS, ea.IMAGES, ea.HISTOGRAMS, ea.TENSORS,
                                       ea.COMPRESSED_HISTOGRAMS)}
    acc = ea.EventAccumulator(str(out), size_guidance=everything)
    acc.Reload()
    return acc


def event_files(out):
    return sorted(out.glob("events.out.tfevents.*"))


def decode(image_event) -> Image.Image:
    image = Image.open(io.BytesIO(image_event.encoded_image_string))
    image.load()
    return image


def text(acc, tag):
    return [(t.step, t.tensor_proto.string_val[0].decode("utf-8")) for t in acc.Tensors(tag)]


def hparams(acc) -> dict:
    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    values = HParamsPluginData.FromString(content).session_start_info.hparams
    return {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind")) for k, v in values.items()}


def markdown_cells(markdown: str) -> dict[str, list[tuple[str, int]]]:
    """The (op, input) pairs of each cell table of genotype_markdown, read back from the text."""
    index = {node_name(j): j for j in range(12)}
    cells, current = {}, None
    for line in markdown.splitlines():
        if line.startswith("**"):
            current = "normal" if "normal" in line else "reduce"
            cells[current] = []
        cols = [c.strip() for c in line.strip("|").split("|")] if line.startswith("| `") else []
        if cols and cols[2] != "concat":
            inputs = [index[x.strip(" `")] for x in cols[1].split(",")]
            ops = [x.strip(" `") for x in cols[2].split(",")]
            cells[current] += list(zip(ops, inputs))
    return cells


@pytest.fixture(scope="module")
def search_run(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("board") / "search"
        assert search_main([*TINY_SEARCH, "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    return out, events(out)


# ---------------------------------------------------------------------------------------------
# The numbers
# ---------------------------------------------------------------------------------------------


def test_entropy_and_parameter_free_weight_of_known_distributions():
    uniform = np.full((14, 8), 1 / 8)
    assert alpha_entropy(uniform) == pytest.approx(math.log(8))
    assert parameter_free_weight(uniform, PRIMITIVES) == pytest.approx(3 / 8)  # pools and skip, not none
    one_hot = np.eye(8)[[3] * 14]  # every edge all on skip_connect
    assert alpha_entropy(one_hot) == 0.0
    assert parameter_free_weight(one_hot, PRIMITIVES) == 1.0
    assert parameter_free_weight(np.eye(8)[[0] * 14], PRIMITIVES) == 0.0  # all on none
    assert [PRIMITIVES[k] for k in parameter_free_ops(PRIMITIVES)] == ["max_pool_3x3", "avg_pool_3x3",
                                                                       "skip_connect"]


def test_colormap_is_a_sequential_ramp():
    colours = colormap(np.linspace(0, 1, 50)).astype(int)
    assert colours.shape == (50, 3) and colours.dtype == np.int64
    luminance = colours @ np.array([0.299, 0.587, 0.114])
    assert np.all(np.diff(luminance) < 0)  # light to dark, strictly
    assert np.array_equal(colormap(np.array([-1.0, 2.0])), colormap(np.array([0.0, 1.0])))


def test_edge_names_follow_alpha_rows_and_diagram_nodes():
    assert edge_names(2) == ["c_{k-2} -> 0", "c_{k-1} -> 0", "c_{k-2} -> 1", "c_{k-1} -> 1", "0 -> 1"]
    assert len(edge_names(4)) == 14 and edge_names(4)[-1] == "2 -> 3"
    assert edge_row(3, 4) == 13 and edge_row(1, 2) == 4
    dot = cell_dot(load_cell("darts_v2").normal, load_cell("darts_v2").normal_concat)
    for name in ("c_{k-2}", "c_{k-1}", "0", "3", "c_{k}"):
        assert f'label="{name}"' in dot
    assert "rankdir=LR" in dot and dot.count(" -> n") == 8 and dot.count(" -> out") == 4


def test_heatmap_marks_the_derived_genotype():
    torch.manual_seed(0)
    alphas = torch.randn(14, 8)
    genotype = load_cell("darts_v2")  # any valid 4-node genotype: the marks follow it, not argmax
    heatmap = alpha_heatmap("normal", alphas, PRIMITIVES, genotype, epoch=3)
    assert np.allclose(heatmap.values, torch.softmax(alphas, -1).numpy(), atol=1e-7)
    assert heatmap.rows == tuple(edge_names(4)) and heatmap.columns == PRIMITIVES
    assert heatmap.marked == {(edge_row(k // 2, j), PRIMITIVES.index(op)) for k, (op, j) in enumerate(genotype.normal)}
    image = draw_heatmap(heatmap)
    assert image.mode == "RGB" and image.width >= 8 * 90 and image.height >= 14 * 20


def test_genotype_markdown_round_trips():
    genotype = load_cell("pdarts")
    text = genotype_markdown(genotype)
    assert parse(re.search(r"```\n(.*?)\n```", text, re.S).group(1)) == genotype
    cells = markdown_cells(text)
    assert cells["normal"] == list(genotype.normal) and cells["reduce"] == list(genotype.reduce)


def test_missing_dot_is_said_once(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    said = []
    diagrams = CellDiagrams(warn=said.append)
    genotype = load_cell("darts_v2")
    written = diagrams.write(genotype, tmp_path)
    diagrams.write(genotype, tmp_path)
    assert diagrams.render("digraph {}") is None
    assert said == [DOT_MISSING_HINT]
    assert sorted(p.name for p in written) == ["cell_normal.dot", "cell_reduce.dot"]


def test_a_disabled_or_secondary_board_writes_nothing(tmp_path, monkeypatch):
    board = SearchBoard(tmp_path / "off", enabled=False)
    board.epoch(1, {"train_loss": 1.0}, {"normal": torch.zeros(5, 8), "reduce": torch.zeros(5, 8)},
                PRIMITIVES, load_cell("darts_v2"))
    board.finish(None, {})
    board.close()
    assert not (tmp_path / "off").exists()
    monkeypatch.setattr("darts_nas.tracking.is_main_process", lambda: False)
    (tmp_path / "rank1").mkdir()
    board = SearchBoard(tmp_path / "rank1", enabled=True)
    assert not board.enabled
    board.close()
    assert not event_files(tmp_path / "rank1")


# ---------------------------------------------------------------------------------------------
# A search, read back from its event files
# ---------------------------------------------------------------------------------------------


def test_search_tags(search_run):
    out, acc = search_run
    tags = acc.Tags()
    assert set(tags["scalars"]) - {t for t in tags["scalars"] if t.startswith("hparams/")} == SEARCH_SCALARS
    images = {"alphas/normal", "alphas/reduce"} | ({"cell/normal", "cell/reduce"} if HAVE_DOT else set())
    assert set(tags["images"]) == images
    assert set(tags["histograms"]) == {"alphas/normal_hist", "alphas/reduce_hist"}
    assert {"genotype", "custom_scalars__config__"} <= set(tags["tensors"])
    for tag in SEARCH_SCALARS:
        assert [s.step for s in acc.Scalars(tag)] == [1, 2], tag
    for tag in images:
        assert [i.step for i in acc.Images(tag)] == [1, 2], tag


def test_search_scalars_equal_the_run_files(search_run):
    out, acc = search_run
    metrics = read_jsonl(out / "metrics.jsonl")
    history = read_jsonl(out / "history.jsonl")
    for tag, key in (("loss/weights", "train_loss"), ("accuracy/arch", "arch_acc"), ("loss/valid", "valid_loss"),
                     ("lr/weights", "lr"), ("lr/arch", "arch_lr")):
        assert [s.value for s in acc.Scalars(tag)] == pytest.approx([m[key] for m in metrics], rel=1e-6)
    primitives = history[0]["primitives"]
    for cell in ("normal", "reduce"):
        probs = [np.array(h["alphas"][cell]) for h in history]
        entropy = [float(np.mean(-(p * np.log(p)).sum(1))) for p in probs]
        free = [float(np.mean(sum(p[:, primitives.index(op)] for op in ("max_pool_3x3", "avg_pool_3x3",
                                                                         "skip_connect")))) for p in probs]
        assert [s.value for s in acc.Scalars(f"alphas/{cell}/entropy")] == pytest.approx(entropy, rel=1e-5)
        assert [s.value for s in acc.Scalars(f"alphas/{cell}/parameter_free")] == pytest.approx(free, rel=1e-5)


def test_genotype_text_matches_history_and_genotype_json(search_run):
    out, acc = search_run
    history = read_jsonl(out / "history.jsonl")
    texts = text(acc, "genotype")
    assert [step for step, _ in texts] == [h["epoch"] for h in history]
    for (_, markdown), h in zip(texts, history):
        genotype = Genotype.from_dict(h["genotype"])
        assert parse(re.search(r"```\n(.*?)\n```", markdown, re.S).group(1)) == genotype
        cells = markdown_cells(markdown)
        assert cells["normal"] == list(genotype.normal) and cells["reduce"] == list(genotype.reduce)
    assert parse(re.search(r"```\n(.*?)\n```", texts[-1][1], re.S).group(1)) == Genotype.load(out / "genotype.json")


def test_heatmap_image_is_the_softmaxed_alphas_of_the_checkpoint(search_run):
    out, acc = search_run
    state = load_checkpoint(out / "checkpoint.pt")
    genotype = Genotype.load(out / "genotype.json")
    history = read_jsonl(out / "history.jsonl")
    for cell in ("normal", "reduce"):
        alphas = state["model"][f"alphas_{cell}"]
        heatmap = alpha_heatmap(cell, alphas, history[-1]["primitives"], genotype, epoch=2)
        assert np.allclose(heatmap.values, torch.softmax(alphas.float(), -1).numpy(), atol=1e-7)
        assert np.allclose(heatmap.values, history[-1]["alphas"][cell], atol=1e-7)
        assert len(heatmap.marked) == 4  # two nodes, two kept edges each
        logged = acc.Images(f"alphas/{cell}")[-1]
        image = decode(logged)
        assert (image.width, image.height) == (logged.width, logged.height)
        assert np.array_equal(np.asarray(image.convert("RGB")), np.asarray(draw_heatmap(heatmap)))
        earlier = decode(acc.Images(f"alphas/{cell}")[0])
        assert not np.array_equal(np.asarray(earlier), np.asarray(image))  # the title's epoch at least


def test_histograms_hold_the_raw_alphas(search_run):
    out, acc = search_run
    alphas = load_checkpoint(out / "checkpoint.pt")["model"]["alphas_reduce"]
    last = acc.Histograms("alphas/reduce_hist")[-1].histogram_value
    assert last.num == alphas.numel()
    assert last.min == pytest.approx(alphas.min().item()) and last.max == pytest.approx(alphas.max().item())


def test_search_hparams(search_run):
    out, acc = search_run
    values = hparams(acc)
    assert values["epochs"] == 2 and values["init_channels"] == 4 and values["dataset"] == "digits"
    assert values["nodes"] == 2 and values["learning_rate"] == pytest.approx(0.025)
    summary = read_jsonl(out / "metrics.jsonl")[-1]
    assert acc.Scalars("hparams/valid_acc")[-1].value == pytest.approx(summary["valid_acc"])
    assert {"hparams/entropy_normal", "hparams/parameter_free_reduce"} <= set(acc.Tags()["scalars"])


@needs_dot
def test_search_draws_the_final_cells(search_run):
    out, acc = search_run
    for cell in ("normal", "reduce"):
        assert (out / f"cell_{cell}.dot").read_text().startswith("digraph")
        image = Image.open(out / f"cell_{cell}.png")
        image.load()
        assert image.width > 100 and image.height > 50
        assert (out / f"cell_{cell}.svg").read_text().lstrip().startswith("<?xml")
        logged = acc.Images(f"cell/{cell}")[-1]
        assert (out / f"cell_{cell}.png").read_bytes() == logged.encoded_image_string
        assert decode(logged).size == (logged.width, logged.height)


def test_no_tensorboard_writes_no_event_file(tmp_path):
    out = tmp_path / "quiet"
    assert search_main([*TINY_SEARCH, "--epochs", "1", "--no-tensorboard", "--out", str(out)]) == 0
    assert not event_files(out)
    assert (out / "cell_normal.dot").is_file() and (out / "summary.json").is_file()
    assert train_main([*TINY_TRAIN, "--epochs", "1", "--no-tensorboard", "--out", str(tmp_path / "t")]) == 0
    assert not event_files(tmp_path / "t")


def test_search_without_dot_writes_dot_sources_and_says_so_once(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    out = tmp_path / "nodot"
    assert search_main([*TINY_SEARCH, "--out", str(out)]) == 0
    assert (out / "log.txt").read_text().count("Graphviz 'dot' not found") == 1
    assert DOT_MISSING_HINT in (out / "log.txt").read_text()
    assert (out / "cell_normal.dot").is_file() and (out / "cell_reduce.dot").is_file()
    assert not (out / "cell_normal.png").exists()
    tags = events(out).Tags()
    assert {"alphas/normal", "alphas/reduce"} == set(tags["images"])  # heatmaps, no diagrams
    assert "genotype" in tags["tensors"]


def test_overwrite_replaces_the_event_files(tmp_path):
    out = tmp_path / "again"
    assert search_main([*TINY_SEARCH, "--epochs", "1", "--out", str(out)]) == 0
    first = event_files(out)
    assert search_main([*TINY_SEARCH, "--epochs", "1", "--out", str(out), "--overwrite"]) == 0
    assert not set(first) & set(event_files(out))
    assert [s.step for s in events(out).Scalars("loss/weights")] == [1]


# ---------------------------------------------------------------------------------------------
# A final training
# ---------------------------------------------------------------------------------------------


def test_training_board(tmp_path):
    out = tmp_path / "train"
    assert train_main([*TINY_TRAIN, "--out", str(out)]) == 0
    acc = events(out)
    tags = acc.Tags()
    assert set(tags["scalars"]) - {t for t in tags["scalars"] if t.startswith("hparams/")} == TRAIN_SCALARS
    for tag in TRAIN_SCALARS:
        assert [s.step for s in acc.Scalars(tag)] == [1, 2], tag
    metrics = read_jsonl(out / "metrics.jsonl")
    assert [s.value for s in acc.Scalars("accuracy/test")] == pytest.approx([m["test_acc"] for m in metrics])
    assert [s.value for s in acc.Scalars("drop_path_prob")] == pytest.approx([0.0, 0.1])
    (step, sizes), = text(acc, "sizes")
    summary = __import__("json").loads((out / "metrics.json").read_text())
    assert step == 0 and f"{summary['params']:,}" in sizes and f"{summary['multiply_adds']:,}" in sizes
    assert f"{summary['params_with_auxiliary']:,}" in sizes
    (_, markdown), = text(acc, "genotype")
    assert parse(re.search(r"```\n(.*?)\n```", markdown, re.S).group(1)) == load_cell("darts_v2")
    assert hparams(acc)["cell"] == "darts_v2" and hparams(acc)["layers"] == 3
    assert acc.Scalars("hparams/final_test_acc")[-1].value == pytest.approx(summary["final_test_acc"])
    assert (out / "cell_normal.dot").is_file()
    if HAVE_DOT:
        assert set(tags["images"]) == {"cell/normal", "cell/reduce"}
        assert [i.step for i in acc.Images("cell/normal")] == [0]
        assert decode(acc.Images("cell/reduce")[0]).width > 100
