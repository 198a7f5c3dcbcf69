"""Scale-out for real: a grid search on a Dask LocalCluster (2 worker processes) and one
fit across 2 processes with torch DDP over gloo, launched by torchrun."""

import os
import subprocess
import sys
from pathlib import Path

import joblib
import numpy as np
import pytest
from sklearn.model_selection import GridSearchCV, StratifiedKFold

from cxr_estimators import CXRClassifier, distributed

ROOT = Path(__file__).resolve().parents[1]

#: cv_results_ columns that hold results (the others are timings).
_RESULT_KEYS = ("params", "mean_test_score", "std_test_score", "rank_test_score",
                "split0_test_score", "split1_test_score")


def _grid(n_jobs):
    clf = CXRClassifier(backbone="simple_cnn", max_epochs=2, batch_size=16, neurons=8,
                        random_state=0, validation_fraction=0, early_stopping=None,
                        device="auto")
    return GridSearchCV(clf, {"lr": [1e-2, 1e-3]}, cv=StratifiedKFold(2), n_jobs=n_jobs,
                        scoring="roc_auc")


@pytest.fixture
def saved_environ():
    """A LocalCluster's nannies write their pre-spawn environment into this process's
    ``os.environ`` (docs/scale_out.md); put it back so later tests' workers do not inherit
    it."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def test_grid_search_on_dask_local_cluster_matches_n_jobs_1(toy_binary, saved_environ):
    dd = pytest.importorskip("distributed")
    import dask

    X, y = toy_binary
    X = X[:, :, :12, :12]  # tiny images: the cost is the cluster, not the fits
    serial = _grid(1).fit(X, y)
    environ = {"OMP_NUM_THREADS": 1, "MKL_NUM_THREADS": 1, "OPENBLAS_NUM_THREADS": 1}
    with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}), \
            dd.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                            dashboard_address=None, worker_dashboard_address=None
                            ) as cluster, dd.Client(cluster) as client:
        # the workers got the environment of docs/scale_out.md, without Dask's malloc
        # trimming (which makes CPU training about 1.5x slower)
        worker_env = client.run(lambda: {k: os.environ.get(k) for k in
                                         ("OMP_NUM_THREADS", "MALLOC_TRIM_THRESHOLD_")})
        assert all(e == {"OMP_NUM_THREADS": "1", "MALLOC_TRIM_THRESHOLD_": None}
                   for e in worker_env.values()), worker_env
        with dd.get_task_stream(client) as tasks, joblib.parallel_backend("dask"):
            on_dask = _grid(-1).fit(X, y)
        workers = {t["worker"] for t in tasks.data}
        devices = client.run(lambda: __import__("cxr_estimators").distributed
                             .resolve_device("auto"))
    assert workers and workers <= set(devices)  # the fits ran on the cluster's workers
    assert set(devices.values()) == {"cpu"}
    for key in _RESULT_KEYS:
        np.testing.assert_array_equal(on_dask.cv_results_[key], serial.cv_results_[key],
                                      err_msg=key)
    np.testing.assert_array_equal(on_dask.predict_proba(X), serial.predict_proba(X))


def test_grid_search_on_ray_matches_n_jobs_1(toy_binary):
    """Ray's joblib backend needs no code of ours (ray is not a dependency: skipped
    where it is not installed)."""
    ray = pytest.importorskip("ray")
    from ray.util.joblib import register_ray

    X, y = toy_binary
    X = X[:, :, :12, :12]
    serial = _grid(1).fit(X, y)
    register_ray()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        with joblib.parallel_backend("ray"):
            on_ray = _grid(-1).fit(X, y)
    finally:
        ray.shutdown()
    for key in _RESULT_KEYS:
        np.testing.assert_array_equal(on_ray.cv_results_[key], serial.cv_results_[key],
                                      err_msg=key)


def test_distributed_helpers_outside_a_process_group(monkeypatch):
    assert not distributed.is_active()
    assert distributed.rank() == 0 and distributed.world_size() == 1
    assert distributed.is_main_process()
    assert distributed.same_on_all_ranks(17) == 17
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert distributed.local_rank() is None
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert distributed.local_rank() == 3
    monkeypatch.setenv("LOCAL_RANK", "x")
    with pytest.raises(ValueError, match="LOCAL_RANK='x'"):
        distributed.local_rank()
    for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(RuntimeError, match="torchrun"):
        with distributed.process_group():
            pass


@pytest.mark.slow
@pytest.mark.parametrize("options", [[], ["--sampling", "balanced", "--augment"]])
def test_ddp_fit_on_two_processes_agrees_on_every_rank(tmp_path, options):
    """``examples/ddp_fit.py`` under torchrun: 2 CPU processes over gloo."""
    out = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
         "2", str(ROOT / "examples" / "ddp_fit.py"), "--quick", "--out", str(tmp_path),
         *options],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
        env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    assert "2 ranks, device cpu" in out.stdout
    ranks = [np.load(tmp_path / f"rank{r}.npz") for r in (0, 1)]
    assert str(ranks[0]["digest"]) == str(ranks[1]["digest"])  # same weights and buffers
    for key in ("proba", "train_loss", "valid_loss", "train_batches"):
        np.testing.assert_array_equal(ranks[0][key], ranks[1][key], err_msg=key)
    # each rank trained on its half: 108 training images, batches of 16 → 4 per rank
    # (a single process takes 7)
    assert ranks[0]["train_batches"].tolist() == [4, 4]
    import cxr_estimators

    model = cxr_estimators.load(tmp_path / "model.safetensors")  # saved on rank 0
    assert model.net_.ddp_ is None
    from cxr_estimators import ImageLoader
    from cxr_estimators.datasets import load_sample

    data = load_sample()
    files = np.asarray(data.filenames)[np.r_[0:60, 200:260]]
    X = ImageLoader(size=28, channels=1, normalize="minus_one_one").fit_transform(files)
    np.testing.assert_array_equal(model.predict_proba(X), ranks[0]["proba"])
