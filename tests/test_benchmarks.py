"""The benchmark scripts run from a checkout, as BENCHMARKS.md's commands run them, at tiny sizes:
each prints one JSON object as its last line with the numbers BENCHMARKS.md quotes."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(script: str, *args: str) -> dict:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args, "--threads", "1", "--json"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("extra", [[], ["--unrolled"], ["--unrolled", "--no-kernels", "--no-channels-last"]],
                         ids=["first", "second", "second-plain"])
def test_search_step_benchmark_reports_every_phase(extra):
    result = _run("search_step.py", "--batch-size", "4", "--init-channels", "4", "--layers", "3",
                  "--image-size", "8", "--warmup", "1", "--steps", "2", *extra)
    median = result["median_s"]
    assert result["order"] == ("second" if "--unrolled" in extra else "first")
    assert len(result["all_step_s"]) == 2 and result["peak_rss_mb"] > 0
    assert median["step"] >= median["arch_step"] > 0 and median["weight_backward_update"] > 0
    if "--unrolled" in extra:
        # the second-order architecture step splits into its three parts, which add up to it
        parts = median["virtual_step"], median["validation_pass"], median["hessian_vector_product"]
        assert all(p > 0 for p in parts)
        assert sum(parts) == pytest.approx(median["arch_step"], rel=0.25)
    assert ("no kernels" in result["speed"]) == ("--no-kernels" in extra)


@pytest.mark.parametrize("method", ["pc-darts", "gdas"])
def test_search_step_benchmark_runs_every_method(method):
    result = _run("search_step.py", "--method", method, "--batch-size", "4", "--init-channels", "4", "--layers", "3",
                  "--image-size", "8", "--warmup", "1", "--steps", "1")
    assert result["method"] == method and result["median_s"]["step"] > 0


def test_diagnostics_benchmark_times_the_statistics_and_the_hessian():
    result = _run("diagnostics.py", "--batch-size", "4", "--init-channels", "4", "--layers", "3", "--image-size", "8",
                  "--lanczos-steps", "3", "--epoch-steps", "10")
    assert result["hessian_s"] > 0 and result["always_on_s"] > 0 and result["hessian_how"] == "lanczos (3 steps)"
    assert result["hessian_share_of_epoch"] == pytest.approx(result["hessian_s"] / result["epoch_s_estimate"])


def test_train_step_benchmark_runs_a_final_network():
    result = _run("train_step.py", "--cell", "darts_v2", "--batch-size", "4", "--init-channels", "8",
                  "--layers", "3", "--image-size", "16", "--no-auxiliary", "--warmup", "1", "--steps", "2")
    assert result["median_s"]["step"] > 0 and result["peak_rss_mb"] > 0


def test_bench_lookup_measures_the_pth_and_the_index():
    result = _run("bench_lookup.py", "--archs", "20", "--repeats", "1")
    assert result["archs"] == 20 and result["pth_mb"] > 0 and result["index_mb"] > 0
    for key in ("open_file_s", "index_s", "open_index_s"):
        assert result[key] > 0
    assert result["open_index_rss_mb"] >= result["baseline_rss_mb"] * 0.9


def test_small_image_paths_benchmark_times_every_variant_and_restores_the_shipped_paths(capsys, monkeypatch):
    import importlib.util

    from darts_nas import kernels

    shipped = (kernels.reached_kernel, kernels._few_pixels_nhwc, kernels._depthwise_weight_grad)
    spec = importlib.util.spec_from_file_location("small_image_paths", ROOT / "benchmarks" / "small_image_paths.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)  # in this process: the variants patch kernels' functions
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # --threads sets it; restored after the test
    result = bench.main(["--batch-size", "4", "--init-channels", "4", "--layers", "3", "--rounds", "1",
                         "--steps", "1", "--warmup", "0", "--json"])
    assert set(result["median_s"]) == {"all", "no-crop", "no-matmul", "old-per-tap", "none"}
    assert all(v > 0 for v in result["median_s"].values())
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["median_s"] == result["median_s"]
    assert (kernels.reached_kernel, kernels._few_pixels_nhwc, kernels._depthwise_weight_grad) == shipped
