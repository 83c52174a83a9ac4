"""Every benchmark layout --benchmark and darts-bench read: NB201 .pth (zip and legacy torch
formats), the NATS topology single file and directory, and the compact index; malicious and
broken files; cells equal up to isomorphism."""

from __future__ import annotations

import bz2
import collections
import json
import os
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from darts_nas.arch_string import isomorphism_key
from darts_nas.bench import DATASETS, main, open_benchmark
from darts_nas.bench_index import build_index
from darts_nas.errors import BenchmarkError

try:
    from test_nas_bench_201 import sample_dir
except ImportError:  # tests/ imported as a package
    from tests.test_nas_bench_201 import sample_dir

ARCHS = [
    "|nor_conv_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|none~0|none~1|skip_connect~2|",
    "|nor_conv_1x1~0|+|nor_conv_3x3~0|skip_connect~1|+|none~0|none~1|skip_connect~2|",  # isomorphic to 0
    "|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|",
    "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|",
    "|avg_pool_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|nor_conv_1x1~0|skip_connect~1|skip_connect~2|",
]
# The eval sets of each dataset setting (benchmark-data.md B3): which splits, at which epochs.
EVAL_SETS = {"cifar10-valid": ("x-valid", "ori-test"), "cifar10": ("ori-test",),
             "cifar100": ("ori-test", "x-valid", "x-test"), "ImageNet16-120": ("ori-test", "x-valid", "x-test")}
CLASSES = {"cifar10-valid": 10, "cifar10": 10, "cifar100": 100, "ImageNet16-120": 120}
SEEDS = {"12": {"cifar10-valid": [111, 777], "cifar10": [111], "cifar100": [111], "ImageNet16-120": [111]},
         "200": {d: [777, 888, 999] for d in DATASETS}}
EPOCHS = {"12": 12, "200": 3}  # the 200-epoch curves are cut to 3 epochs to keep the files tiny


def accuracy(index: int, dataset: str, hp: str, seed: int, split: str) -> float:
    """A distinct, recognisable accuracy for every run and split."""
    return 10.0 + index + DATASETS.index(dataset) / 10 + (hp == "200") * 50 + seed / 10000 + len(split) / 100


def results_count(index: int, arch: str, dataset: str, hp: str, seed: int) -> dict:
    """One run's ResultsCount state, with the fields and key spellings of the real records."""
    epochs = EPOCHS[hp]
    splits = EVAL_SETS[dataset]
    acc, times, losses = {}, {}, {}
    for split in splits:
        # cifar10-valid's x-valid and the ori-test of cifar100/IN16 are kept for every epoch, the rest at the last
        every = (dataset == "cifar10-valid" and split == "x-valid") or (split == "ori-test" and len(splits) == 3)
        for e in range(epochs) if every or split == "ori-test" and dataset == "cifar10" else [epochs - 1]:
            acc[f"{split}@{e}"] = accuracy(index, dataset, hp, seed, split) - (epochs - 1 - e)
            times[f"{split}@{e}"] = 0.5
            losses[f"{split}@{e}"] = 1.0
    return {"name": dataset, "train_acc1es": {e: 50.0 for e in range(epochs)}, "train_acc5es": None,
            "train_losses": {e: 1.0 for e in range(epochs)},
            "train_times": collections.OrderedDict((e, 2.0 + index) for e in range(epochs)),
            "arch_config": {"channel": 16, "num_cells": 5, "arch_str": arch, "class_num": CLASSES[dataset]},
            "params": np.float64(0.1 + index / 100 + CLASSES[dataset] / 10000), "flop": 10.0 + index,
            "seed": f"{seed:04d}", "epochs": epochs, "latency": [np.float64(0.01)], "eval_names": list(splits),
            "eval_acc1es": acc, "eval_times": times, "eval_losses": losses, "net_state_dict": None}


def arch_results(index: int, arch: str, hp: str) -> dict:
    """One architecture's ArchResults state for one training length."""
    seeds = {d: list(s) for d, s in SEEDS[hp].items()}  # a copy: tests edit it
    return {"arch_index": index, "arch_str": arch, "dataset_seed": seeds, "clear_net_done": True,
            "all_results": {(d, s): results_count(index, arch, d, hp, s) for d in seeds for s in seeds[d]}}


def benchmark_dict(held: list[int], nb201: bool) -> dict:
    """The dict a single benchmark file holds: NB201 names the hps less/full, NATS '12'/'200'."""
    names = ("less", "full") if nb201 else ("12", "200")
    infos = {i: collections.OrderedDict((name, arch_results(i, ARCHS[i], hp)) for name, hp in zip(names, ("12", "200")))
             for i in held}
    return {"meta_archs": list(ARCHS), "arch2infos": infos, "evaluated_indexes": set(held)}


def write(path: Path, kind: str, data) -> Path:
    """``data`` saved the way each real file is: torch.save (zip or legacy) or a bz2 pickle."""
    if kind == "zip":
        torch.save(data, path)
    elif kind == "legacy":
        torch.save(data, path, _use_new_zipfile_serialization=False)
    elif kind == "bz2":
        with bz2.open(path, "wb") as f:
            pickle.dump(data, f)
    else:
        raise ValueError(kind)
    return path


def nats_directory(root: Path, held: list[int]) -> Path:
    root.mkdir()
    with bz2.open(root / "meta.pickle.pbz2", "wb") as f:
        pickle.dump({"meta_archs": list(ARCHS), "total_archs": len(ARCHS), "arch2infos": None,
                     "evaluated_indexes": set()}, f)
    for i in held:
        with bz2.open(root / f"{i:06d}.pickle.pbz2", "wb") as f:
            pickle.dump(collections.OrderedDict((hp, arch_results(i, ARCHS[i], hp)) for hp in ("12", "200")), f)
    return root


LAYOUTS = {
    "NAS-Bench-201-v1_1-096897.pth": lambda p, held: write(p, "zip", benchmark_dict(held, nb201=True)),
    "NAS-Bench-201-v1_0-e61699.pth": lambda p, held: write(p, "legacy", benchmark_dict(held, nb201=True)),
    "NATS-tss-v1_0-3ffb9.pickle.pbz2": lambda p, held: write(p, "bz2", benchmark_dict(held, nb201=False)),
    "NATS-tss-v1_0-3ffb9-simple": nats_directory,
}


def expected(index: int, dataset: str, hp: str) -> tuple[float, float]:
    """(valid, test) as the official API's get_more_info(is_random=False) reports them."""
    valid_set = "cifar10-valid" if dataset == "cifar10" else dataset
    test_split = "ori-test" if dataset in ("cifar10", "cifar10-valid") else "x-test"
    valid = np.mean([accuracy(index, valid_set, hp, s, "x-valid") for s in SEEDS[hp][valid_set]])
    test = np.mean([accuracy(index, dataset, hp, s, test_split) for s in SEEDS[hp][dataset]])
    return float(valid), float(test)


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_every_layout_answers_with_the_benchmarks_numbers(tmp_path, name):
    path = LAYOUTS[name](tmp_path / name, [0, 2, 4])
    bench = open_benchmark(path)
    for index in (0, 2, 4):
        for dataset in DATASETS:
            for hp in ("12", "200"):
                r = bench.query(ARCHS[index], dataset, hp)
                assert (r["index"], r["arch"], r["match"]) == (index, ARCHS[index], "exact")
                assert (r["valid_acc"], r["test_acc"]) == pytest.approx(expected(index, dataset, hp), abs=1e-9)
                assert r["seeds"] == SEEDS[hp][dataset]
                assert r["params"] == pytest.approx(0.1 + index / 100 + CLASSES[dataset] / 10000)
                assert r["flop"] == 10.0 + index
                # the runs the valid accuracy comes from: every epoch's training time, one validation pass
                assert r["train_time"] == pytest.approx(EPOCHS[hp] * (2.0 + index)) and r["valid_time"] == 0.5
                # each seed's numbers (the official API's is_random=True draws one of them)
                test_split = "ori-test" if dataset in ("cifar10", "cifar10-valid") else "x-test"
                assert r["per_seed"]["test_acc"] == pytest.approx(
                    {str(s): accuracy(index, dataset, hp, s, test_split) for s in SEEDS[hp][dataset]})
                valid_set = "cifar10-valid" if dataset == "cifar10" else dataset
                assert list(r["per_seed"]["valid_acc"]) == [str(s) for s in SEEDS[hp][valid_set]]


def test_a_tensor_in_a_pth_is_skipped_never_loaded(tmp_path):
    from darts_nas.bench_files import SKIPPED_TENSOR, read_benchmark_file

    data = benchmark_dict([0], nb201=True)
    data["arch2infos"][0]["full"]["all_results"][("cifar10", 777)]["net_state_dict"] = {"w": torch.ones(3)}
    for kind in ("zip", "legacy"):
        read = read_benchmark_file(write(tmp_path / f"{kind}.pth", kind, data))
        assert read["arch2infos"][0]["full"]["all_results"][("cifar10", 777)]["net_state_dict"]["w"] is SKIPPED_TENSOR
        assert open_benchmark(tmp_path / f"{kind}.pth").query(ARCHS[0], "cifar10")["index"] == 0


class _Payload:
    """Unpickling this calls ``os.system`` (what a malicious benchmark file would do)."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_a_malicious_file_of_each_layout_cannot_run_code(tmp_path, capsys, name):
    proof = tmp_path / "pwned"
    path = LAYOUTS[name](tmp_path / name, [0])
    target = path / "000000.pickle.pbz2" if path.is_dir() else path
    if path.is_dir():
        data = collections.OrderedDict(arch_results(0, ARCHS[0], "200"), evil=_Payload(f"touch {proof}"))
        write(target, "bz2", {"200": data})
    else:
        data = benchmark_dict([0], nb201=name.endswith(".pth"))
        data["arch2infos"][0]["evil"] = _Payload(f"touch {proof}")
        write(target, {"NAS-Bench-201-v1_1-096897.pth": "zip", "NAS-Bench-201-v1_0-e61699.pth": "legacy"}.get(
            name, "bz2"), data)
    assert main(["query", str(path), ARCHS[0]]) == 2
    err = capsys.readouterr().err.strip()
    assert ("asks to load posix.system" in err or "asks to load os.system" in err) and err.count("\n") == 0, err
    assert "refused without running it" in err
    assert not proof.exists()


def _broken(tmp_path: Path) -> list[tuple[Path, str]]:
    good = write(tmp_path / "good.pth", "zip", benchmark_dict([0], nb201=True)).read_bytes()
    legacy = write(tmp_path / "legacy.pth", "legacy", benchmark_dict([0], nb201=True)).read_bytes()
    nats = write(tmp_path / "good.pbz2", "bz2", benchmark_dict([0], nb201=False)).read_bytes()
    meta = tmp_path / "meta.pickle.pbz2"
    nats_directory(tmp_path / "dir", [])
    meta.write_bytes((tmp_path / "dir" / "meta.pickle.pbz2").read_bytes())
    sss = write(tmp_path / "sss.pbz2", "bz2", {"meta_archs": ["64:64:64:64:64"], "arch2infos": {}})
    cases = {
        "trunc.pth": (good[: len(good) // 2], "is not a readable benchmark file"),
        "trunc-legacy.pth": (legacy[: len(legacy) - 40], "is not a readable benchmark file"),
        "trunc.pbz2": (nats[: len(nats) // 2], "is not a readable benchmark file"),
        "readme.txt": (b"NAS-Bench-201 is on Google Drive\n", "not a benchmark file of a known kind"),
        "list.pkl": (pickle.dumps([1, 2, 3], protocol=2), "holds a list, not the benchmark's dict"),
        "zip.zip": (None, "without exactly one data.pkl"),
    }
    out = []
    for name, (content, message) in cases.items():
        if content is None:
            import zipfile

            with zipfile.ZipFile(tmp_path / name, "w") as z:
                z.writestr("a/other.txt", "x")
        else:
            (tmp_path / name).write_bytes(content)
        out.append((tmp_path / name, message))
    out.append((meta, "is the meta file of a NATS-Bench fast-mode directory"))
    out.append((sss, "not a NAS-Bench-201 cell: only the topology space"))
    out.append((tmp_path / "missing.pth", "does not exist"))
    return out


def test_files_of_another_kind_or_truncated_get_one_line(tmp_path, capsys):
    for path, message in _broken(tmp_path):
        assert main(["query", str(path), ARCHS[0]]) == 2, path
        err = capsys.readouterr().err.strip()
        assert message in err and err.count("\n") == 0, (path, err)


def test_bad_queries_get_one_line_naming_the_fix(tmp_path, capsys):
    path = LAYOUTS["NAS-Bench-201-v1_1-096897.pth"](tmp_path / "b.pth", [0])
    data = benchmark_dict([0], nb201=True)
    del data["arch2infos"][0]["full"]["dataset_seed"]["cifar100"]
    partial = write(tmp_path / "partial.pth", "zip", data)
    cases = [
        ([str(path), ARCHS[2]], "has no record of architecture 2"),
        ([str(path), ARCHS[0], "--dataset", "svhn"], "holds no dataset 'svhn'; it holds: cifar10-valid"),
        ([str(path), "|nor_conv_3x3~0|+|none~0|none~1|"], "has 2 node(s)"),
        ([str(path), "|nor_conv_3x3~1|+|none~0|none~1|+|none~0|none~1|none~2|"], "has input 1 where 0"),
        ([str(partial), ARCHS[0], "--dataset", "cifar100"], "was not evaluated on cifar100 at 200 epochs"),
    ]
    for args, message in cases:
        assert main(["query", *args]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and err.count("\n") == 0, (args, err)


# ---------------------------------------------------------------------------------------------
# The compact index
# ---------------------------------------------------------------------------------------------

def test_the_index_answers_exactly_as_its_source(tmp_path, capsys):
    src = LAYOUTS["NAS-Bench-201-v1_1-096897.pth"](tmp_path / "b.pth", [0, 2, 3])
    assert main(["index", str(src), str(tmp_path / "nb201.index")]) == 0
    written = json.loads(capsys.readouterr().out)
    assert (written["archs"], written["held"], written["rows"]) == (5, 3, 3 * 2 * 4)
    direct, index = open_benchmark(src), open_benchmark(tmp_path / "nb201.index")
    for arch in ARCHS:
        for dataset in DATASETS:
            for hp in ("12", "200"):
                for iso in (False, True):
                    try:
                        want = direct.query(arch, dataset, hp, iso)
                    except BenchmarkError as exc:
                        with pytest.raises(BenchmarkError) as got:
                            index.query(arch, dataset, hp, iso)
                        assert str(got.value).split(":")[0].replace(str(tmp_path / "nb201.index"), "") == \
                            str(exc).split(":")[0].replace(str(src), "")
                        continue
                    assert index.query(arch, dataset, hp, iso) == want
    # the index opens and answers fast (measured at full size in BENCHMARKS.md)
    start = time.perf_counter()
    open_benchmark(tmp_path / "nb201.index").query(ARCHS[0], "cifar10")
    assert time.perf_counter() - start < 1.0


def test_bad_index_input_gets_one_line(tmp_path, capsys):
    import sqlite3

    sqlite3.connect(tmp_path / "other.db").executescript("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
    src = LAYOUTS["NAS-Bench-201-v1_1-096897.pth"](tmp_path / "b.pth", [0])
    build_index(src, tmp_path / "ok.index")
    cases = [
        (["query", str(tmp_path / "other.db"), ARCHS[0]], "not a readable darts-bench index"),
        (["index", str(src), str(tmp_path)], "is a directory: give the index file"),
        (["index", str(src), str(tmp_path / "no" / "x.index")], "does not exist: create it"),
        (["index", str(tmp_path / "ok.index"), str(tmp_path / "again.index")], "is already an index"),
    ]
    for args, message in cases:
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and err.count("\n") == 0, (args, err)


# ---------------------------------------------------------------------------------------------
# Isomorphic cells
# ---------------------------------------------------------------------------------------------

EQUIVALENT = [
    # the two convs of the parallel branches swapped
    (ARCHS[0], ARCHS[1]),
    # a dead branch (nodes 1 and 2 never reach the output) does not matter
    ("|nor_conv_3x3~0|+|nor_conv_1x1~0|none~1|+|skip_connect~0|none~1|none~2|",
     "|avg_pool_3x3~0|+|skip_connect~0|nor_conv_3x3~1|+|skip_connect~0|none~1|none~2|"),
    # an edge out of a node that is always zero is zero too
    ("|none~0|+|nor_conv_3x3~0|nor_conv_1x1~1|+|none~0|none~1|skip_connect~2|",
     "|none~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|none~0|skip_connect~1|skip_connect~2|"),
    # a skip passes its input through: node 1 = x, so conv(node 1) = conv(x)
    ("|skip_connect~0|+|none~0|nor_conv_3x3~1|+|none~0|none~1|skip_connect~2|",
     "|skip_connect~0|+|nor_conv_3x3~0|none~1|+|none~0|none~1|skip_connect~2|"),
]
DIFFERENT = [
    (ARCHS[0], "|nor_conv_3x3~0|+|nor_conv_3x3~0|skip_connect~1|+|none~0|none~1|skip_connect~2|"),
    # equivalent (both outputs are conv3x3(x) + conv1x1(x)), but the benchmark's key keeps them apart:
    # node 2's zero term stays in its text, so the swapped convs sit in different places of the output's
    # join. Merging them would give fewer than the benchmark's 6,466 unique topologies.
    ("|nor_conv_3x3~0|+|nor_conv_1x1~0|none~1|+|none~0|skip_connect~1|skip_connect~2|",
     "|nor_conv_1x1~0|+|nor_conv_3x3~0|none~1|+|none~0|skip_connect~1|skip_connect~2|"),
    ("|skip_connect~0|+|none~0|nor_conv_3x3~1|+|none~0|none~1|skip_connect~2|",  # conv(x) vs conv(x)+x downstream
     "|skip_connect~0|+|skip_connect~0|nor_conv_3x3~1|+|none~0|none~1|skip_connect~2|"),
]


def test_the_isomorphism_key_joins_equivalent_cells_only():
    for a, b in EQUIVALENT:
        assert isomorphism_key(a) == isomorphism_key(b), (a, b)
    for a, b in DIFFERENT:
        assert isomorphism_key(a) != isomorphism_key(b), (a, b)


def test_the_real_arch_list_has_the_benchmarks_6466_unique_topologies():
    from darts_nas.bench_files import load_pickle

    archs = load_pickle(sample_dir() / "meta.pickle.pbz2")["meta_archs"]
    assert len(archs) == 15625 and len({isomorphism_key(a) for a in archs}) == 6466


def test_equivalent_strings_resolve_to_the_same_entry(tmp_path, capsys):
    for name in ("NAS-Bench-201-v1_1-096897.pth", "NATS-tss-v1_0-3ffb9-simple"):
        bench = open_benchmark(LAYOUTS[name](tmp_path / name, [0, 2]))
        # the exact entry where the benchmark holds it, with the class's id
        a, b = bench.query(ARCHS[0], "cifar10"), bench.query(ARCHS[1], "cifar10")
        assert (a["index"], a["match"], a["unique_id"]) == (0, "exact", 0)
        # the file has not evaluated ARCHS[1]: its isomorphic entry answers
        assert (b["index"], b["match"], b["unique_id"], b["queried"]) == (0, "isomorphic", 0, ARCHS[1])
        assert b["test_acc"] == a["test_acc"]
    full = open_benchmark(LAYOUTS["NAS-Bench-201-v1_1-096897.pth"](tmp_path / "full.pth", [0, 1, 2]))
    assert full.query(ARCHS[1], "cifar10")["index"] == 1  # exact by default
    assert main(["query", str(tmp_path / "full.pth"), ARCHS[1], "--isomorphic"]) == 0
    assert json.loads(capsys.readouterr().out)["index"] == 0  # --isomorphic: the class's first entry


def test_a_search_scores_its_cells_by_any_layout(tmp_path):
    from types import SimpleNamespace

    from darts_nas.bench_search import BenchmarkScorer

    src = LAYOUTS["NAS-Bench-201-v1_0-e61699.pth"](tmp_path / "v1_0.pth", [0, 2])
    build_index(src, tmp_path / "nb201.index")
    for path in (src, tmp_path / "nb201.index"):
        config = SimpleNamespace(benchmark=str(path), space="nas-bench-201", dataset="cifar100-xvalid",
                                 benchmark_dataset=None)
        scorer = BenchmarkScorer.from_config(config)
        assert scorer.dataset == "cifar100"  # the halves of a test set are scored on their dataset
        lines = []
        fields = scorer.score(ARCHS[1], lines.append)  # not evaluated: its isomorphic entry answers
        assert fields["benchmark_index"] == 0 and "an isomorphic cell's entry" in lines[0]
        assert fields["benchmark_test_acc"] == pytest.approx(expected(0, "cifar100", "200")[1])


def test_the_real_records_in_every_layout_give_the_published_numbers(tmp_path):
    from darts_nas.bench_files import load_pickle

    try:
        from test_nas_bench_201 import GOLDEN, SAMPLE_ARCHS
    except ImportError:
        from tests.test_nas_bench_201 import GOLDEN, SAMPLE_ARCHS
    sample = sample_dir()
    archs = load_pickle(sample / "meta.pickle.pbz2")["meta_archs"]
    records = {i: load_pickle(sample / f"{i:06d}.pickle.pbz2") for i in SAMPLE_ARCHS}
    nb201 = {"meta_archs": archs, "evaluated_indexes": set(records),
             "arch2infos": {i: {"less": r["12"], "full": r["200"]} for i, r in records.items()}}
    nats = {"meta_archs": archs, "evaluated_indexes": set(records), "arch2infos": records}
    paths = [write(tmp_path / "v1_0.pth", "legacy", nb201), write(tmp_path / "v1_1.pth", "zip", nb201),
             write(tmp_path / "tss.pickle.pbz2", "bz2", nats)]
    build_index(paths[1], tmp_path / "nb201.index")
    for path in paths + [tmp_path / "nb201.index"]:
        bench = open_benchmark(path)
        for (index, dataset), (valid, test) in GOLDEN.items():
            r = bench.query(SAMPLE_ARCHS[index], dataset)
            assert (r["index"], r["seeds"]) == (index, [777, 888, 999])
            assert (round(r["valid_acc"], 2), round(r["test_acc"], 2)) == (valid, test), (path, index, dataset)
        assert bench.query(SAMPLE_ARCHS[11], "cifar10")["params"] == pytest.approx(0.802426)
        with pytest.raises(BenchmarkError, match="has no record of architecture 1835"):  # the all-skip cell
            bench.query("|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|"
                        "skip_connect~2|", "cifar10")
