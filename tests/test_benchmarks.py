"""Smoke test of the benchmark scripts: every quick mode runs and writes its contract.

Runs ``python -m benchmarks.run_all --quick`` into a temporary directory (the committed
full results in ``benchmarks/results/`` are not touched) and checks the JSON files.
"""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "pneumoniamnist.npz"

PROVENANCE = ("command", "date", "machine", "package_version")


def _finite_positive(x):
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.mark.slow
@pytest.mark.skipif(not DATA.is_file(), reason="../shared/data/pneumoniamnist.npz is absent")
def test_quick_benchmarks_write_their_results(tmp_path):
    subprocess.run([sys.executable, "-m", "benchmarks.run_all", "--quick",
                    "--out-dir", str(tmp_path)], check=True, cwd=ROOT, timeout=600)
    results = {p.stem: json.loads(p.read_text()) for p in tmp_path.glob("*.json")}
    assert set(results) == {"overhead", "grid_cache", "pneumoniamnist", "throughput",
                            "memory", "scale_out", "robustness", "input_pipeline",
                            "cpu_speed", "cpu_layout", "cpu_predict_batch", "cpu_threads",
                            "cpu_malloc"}
    for name, r in results.items():
        assert all(k in r for k in PROVENANCE), name
        assert r["quick"] is True
        assert r["machine"]["cpu_count"] >= 1 and "torch" in r["machine"]
        assert "gpu" in r["machine"]

    assert _finite_positive(results["overhead"]["ratio"])

    grid = results["grid_cache"]
    assert _finite_positive(grid["speedup"])
    assert isinstance(grid["best_params_agree"], bool)
    assert grid["cache_info"]["misses"] >= 1 and grid["cache_info"]["hits"] >= 1

    pneu = results["pneumoniamnist"]
    for key in ("accuracy", "roc_auc", "sensitivity", "specificity"):
        assert 0 <= pneu["test"][key] <= 1
        low, high = pneu["test_ci95"][key]
        assert 0 <= low <= high <= 1
    assert pneu["test_evaluations"] == 1
    assert {c["name"] for c in pneu["candidates"]} >= {"baseline", "all tools"}
    assert pneu["selected"]["name"] in {c["name"] for c in pneu["candidates"]}
    assert {a["tool"] for a in pneu["ablation"]} >= {"label smoothing 0.1"}
    for row in pneu["ablation"]:
        assert row["delta"] == pytest.approx(row["val_roc_auc_with"]
                                             - row["val_roc_auc_without"])
    cv = pneu["cv_train_val"]
    assert len(cv["roc_auc_folds"]) == cv["n_splits"] == 5
    assert cv["cv_minus_test_roc_auc"] == pytest.approx(cv["roc_auc_mean"]
                                                        - pneu["test"]["roc_auc"])
    assert _finite_positive(pneu["peak_rss_mb"]) and _finite_positive(pneu["wall_time_s"])

    rows = results["throughput"]["rows"]
    assert {r["mode"] for r in rows} == {"fit", "predict"}
    for row in rows:
        assert {"backbone", "size", "device", "mode", "images_per_s"} <= set(row)
        assert _finite_positive(row["images_per_s"])

    for row in results["memory"]["rows"]:
        assert _finite_positive(row["predict_peak_rss_mb"])
    for row in results["memory"]["fit"]["rows"]:  # the quick run's fit_uint8
        assert row["mode"] == "fit_uint8" and isinstance(row["goal_met"], bool)
        assert _finite_positive(row["peak_rss_mb"]) and _finite_positive(row["uint8_data_mb"])

    feed = results["input_pipeline"]
    assert _finite_positive(feed["headline_img_per_s"]) and isinstance(feed["goal_met"], bool)
    assert {r["path"] for r in feed["rows"]} == {"uint8_staged", "uint8", "float32",
                                                 "float32_per_item", "lazy"}
    assert {r["workers"] for r in feed["rows"] if r["path"] == "lazy"} == {0, 2}

    scale = results["scale_out"]
    assert set(scale["time_s"]) == {"n_jobs_1", "loky_2", "dask_2"}  # --quick's modes
    assert set(scale["time_s_every_rep"]) == set(scale["time_s"])
    assert isinstance(scale["same_results_every_rep"], bool)
    assert all(_finite_positive(t) for t in scale["time_s"].values())
    assert all(isinstance(v, bool) for v in scale["cv_results_agree"].values())
    assert _finite_positive(scale["rng_lock"]["scope_us"])
    robust = results["robustness"]
    assert sum(robust["counts"].values()) == robust["n_cases"] > 0
    assert robust["code_executed"] == 0 and robust["joblib_load_runs_payload"] is True
    speed = results["cpu_speed"]
    for key in ("ratio_to_best_loop", "ratio_to_plain_loop", "speedup_vs_before"):
        assert speed[key] and all(k.rsplit("/", 1)[1] in ("fit", "predict") and "@" in k
                                  and _finite_positive(v) for k, v in speed[key].items())
    for row in speed["rows"].values():  # loop_folded runs only where BatchNorm folds
        assert isinstance(row["folds"], bool) and row["fold_s"] >= 0
        assert ("loop_folded/predict" in row["images_per_s"]) == row["folds"]
    malloc = results["cpu_malloc"]
    assert malloc["speedup_tuned"] and all(
        _finite_positive(v) and k.rsplit("/", 1)[1] in ("fit", "predict")
        for k, v in malloc["speedup_tuned"].items())
    assert all(set(f) == {"default", "tuned"} for f in malloc["page_faults"].values())
    assert {r["variant"] for r in results["cpu_layout"]["rows"]} >= {
        "contiguous_fp32", "channels_last_fp32"}
    batch = results["cpu_predict_batch"]
    for row in batch["rows"]:
        assert max(row["relative_to_best"].values()) == pytest.approx(1.0)
        assert str(row["default_batch_size"]) in row["images_per_s"]
    assert set(batch["default_relative_to_best"]) == {
        f"{row['backbone']}@{row['size']}" for row in batch["rows"]}
    assert results["cpu_threads"]["threads_inside"]["loky n_jobs=2"] == [
        max(1, results["cpu_threads"]["config"]["cpu_count"] // 2)] * 2

    page = (tmp_path / "benchmarks.md").read_text()
    assert "python -m benchmarks.overhead --out-dir" in page


def test_cuda_throughput_ratios_are_keyed_by_backbone_size_and_mode():
    """The JSON contract of ``throughput_cuda.json``: ``ratio_to_plain`` keyed
    ``"<backbone>@<size>/<fit|predict>"`` (the run itself needs a GPU)."""
    from benchmarks.throughput import ratios_to_plain

    rows = [{"backbone": "resnet18", "size": 224, "mode": mode, "implementation": impl,
             "images_per_s": speed}
            for mode, est, plain in (("fit", 90.0, 100.0), ("predict", 30.0, 60.0))
            for impl, speed in (("CXRClassifier_uint8_device", est),
                                ("plain_torch_amp_channels_last", plain))]
    assert ratios_to_plain(rows, "CXRClassifier_uint8_device") == {
        "resnet18@224/fit": 0.9, "resnet18@224/predict": 0.5}


def test_cpu_speed_ratios_use_the_faster_loop_variant():
    """``ratio_to_best_loop``: per repetition now ÷ the loop variant with the shorter
    median time (the folded loop for prediction when it is faster); fit has one loop."""
    from benchmarks.cpu_speed import best_loop, derived_ratios

    seconds = {"now/fit": [2.0, 2.0, 2.0], "loop/fit": [1.0, 2.0, 3.0],
               "now/predict": [1.0, 1.0, 1.0], "loop/predict": [2.0, 2.0, 2.0],
               "loop_folded/predict": [0.5, 0.5, 4.0]}
    assert best_loop(seconds, "fit") == "loop/fit"
    assert best_loop(seconds, "predict") == "loop_folded/predict"
    ratio, plain, _, _, ci = derived_ratios({"m@8": seconds})
    assert ci["m@8/fit"] is None  # 3 repetitions: too few for a 95 % interval
    assert ratio["m@8/fit"] == plain["m@8/fit"] == 1.0  # median of 0.5, 1, 1.5
    assert ratio["m@8/predict"] == 0.5 and plain["m@8/predict"] == 2.0
    del seconds["loop_folded/predict"]  # a model without BatchNorm: the plain loop
    assert derived_ratios({"m@8": seconds})[0]["m@8/predict"] == 2.0


def test_median_ci_is_the_binomial_order_statistic_interval():
    from benchmarks.cpu_speed import median_ci

    assert median_ci(range(1, 6)) is None  # 5 values: even (min, max) covers 93.75 %
    assert median_ci(range(1, 7)) == (1, 6)  # 6 values: 1 - 2/64 = 96.9 %
    assert median_ci(range(1, 12)) == (2, 10)  # 11 values: 1 - 2 * 12/2048 = 98.8 %
    assert median_ci([5, 1, 4, 2, 3, 6]) == (1, 6)  # sorted first
