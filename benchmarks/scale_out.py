"""One grid search three ways: ``n_jobs=1``, loky ``n_jobs=2``, Dask ``LocalCluster``.

The same ``GridSearchCV`` — lr × neurons × dropout (2 × 2 × 2 = 8 points) × 3 folds = 24
fits of ``CXRClassifier(backbone="simple_cnn")`` on PneumoniaMNIST images, ``refit=False``
(the refit is one more fit in the calling process, the same in every mode) — run

* ``n_jobs_1``: in this process, one thread per fit;
* ``loky_2``: ``n_jobs=2`` with joblib's default (loky) backend, one thread per worker
  (``inner_max_num_threads=1``); the 2 workers are started (and import the package)
  before the timer, their start-up is reported apart;
* ``dask_2``: ``n_jobs=-1`` under ``joblib.parallel_backend("dask")`` on a
  ``dask.distributed.LocalCluster`` of 2 worker processes × 1 thread, started before the
  timer (its start-up is reported apart); X and y are scattered to the workers once. The
  workers get :data:`DASK_WORKER_ENVIRON` (docs/scale_out.md): Dask's own default also
  sets ``MALLOC_TRIM_THRESHOLD_=65536``, which switches off glibc's dynamic mmap
  threshold, so every freed tensor over 128 KiB goes back to the kernel and the next one
  page-faults in again;
* ``dask_2_dask_environ``: the same with Dask's default worker environment, to measure
  that cost;
* ``n_jobs_1_all_threads`` (only when asked for, ``--modes ... n_jobs_1_all_threads``):
  for reference, in this process with torch's default number of threads (intra-op
  parallelism instead of parallel fits). Not run by default: on a busy machine two
  spinning torch threads per core can make it many times slower than the rest.

Each mode runs ``--reps`` times (default 3), the modes alternating, and its fastest run
counts (the shared 2-vCPU machine varies by ±10 % from run to run). Reported: wall time
of each, the speed-up of the parallel runs over ``n_jobs_1`` (goal
≥ 1.6 on a 2-core machine; also with the workers' start-up counted,
``speedup_with_start``) and whether their ``cv_results_`` (params, per-split and mean
scores, ranks) equal ``n_jobs_1``'s exactly. ``rng_lock``: what the per-fit random
streams (:mod:`cxr_estimators._rng`) cost — the time of entering and leaving the global
stream once (paid once per training batch) against a training batch's time, and two fits
run in two threads of one process with and without the lock (the lock serialises their
training forward passes; without it the fits are not reproducible, so that run only
measures time).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time

import joblib
import numpy as np
import torch
from sklearn.model_selection import GridSearchCV, StratifiedKFold

from benchmarks import _common
from cxr_estimators import CXRClassifier, _rng

GRID = {"lr": [1e-3, 3e-3], "neurons": [16, 64], "dropout": [0.2, 0.5]}
_RESULT_KEYS = ["params", "mean_test_score", "std_test_score", "rank_test_score"] + [
    f"split{k}_test_score" for k in range(3)]


def _search(cfg, seed, n_jobs):
    clf = CXRClassifier(backbone="simple_cnn", max_epochs=cfg["epochs"], batch_size=32,
                        early_stopping=None, validation_fraction=0, device="cpu",
                        random_state=seed)
    return GridSearchCV(clf, GRID, cv=StratifiedKFold(3, shuffle=True, random_state=seed),
                        scoring="roc_auc", n_jobs=n_jobs, refit=False)


def _timed_fit(gs, X, y):
    with _common.Timer() as t:
        gs.fit(X, y)
    return gs.cv_results_, t.seconds


def _agree(a, b):
    """Exact agreement of the result columns, and the largest score difference."""
    same = all(np.array_equal(np.asarray(a[k], dtype=object), np.asarray(b[k], dtype=object))
               for k in _RESULT_KEYS)
    diff = max(float(np.max(np.abs(np.asarray(a[k], float) - np.asarray(b[k], float))))
               for k in _RESULT_KEYS if k != "params")
    return same, diff


@contextlib.contextmanager
def _threads(n):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


#: Environment of the Dask worker processes: one thread per math library, as Dask's
#: default ``distributed.nanny.pre-spawn-environ``, without its ``MALLOC_TRIM_THRESHOLD_``.
DASK_WORKER_ENVIRON = {"OMP_NUM_THREADS": 1, "MKL_NUM_THREADS": 1, "OPENBLAS_NUM_THREADS": 1}


def run_dask(X, y, cfg, seed, dask_environ=False):
    import dask
    import dask.distributed as dd

    conf = {} if dask_environ else {"distributed.nanny.pre-spawn-environ": DASK_WORKER_ENVIRON}
    # A LocalCluster's nannies live in this process and write their pre-spawn environment
    # into os.environ, where every process started later (the next cluster's workers,
    # loky's) would inherit it: put it back afterwards.
    saved_environ = dict(os.environ)
    try:
        with _common.Timer() as start, dask.config.set(conf):
            cluster = dd.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                      dashboard_address=None)
            client = dd.Client(cluster)
            client.run(lambda: __import__("cxr_estimators"))  # workers import torch now
        try:
            with joblib.parallel_backend("dask", scatter=[X, y]):
                results, seconds = _timed_fit(_search(cfg, seed, -1), X, y)
        finally:
            client.close()
            cluster.close()
    finally:
        os.environ.clear()
        os.environ.update(saved_environ)
    return results, seconds, start.seconds


def _import_package():
    import cxr_estimators  # noqa: F401  (a worker's one-time start-up: torch, sklearn)

    return os.getpid()


def run_loky(X, y, cfg, seed):
    with joblib.parallel_backend("loky", inner_max_num_threads=1):
        with _common.Timer() as start:  # the same executor then serves the search
            joblib.Parallel(n_jobs=2)(joblib.delayed(_import_package)() for _ in range(2))
        results, seconds = _timed_fit(_search(cfg, seed, 2), X, y)
    return results, seconds, start.seconds


class _NoLock:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def measure_rng_lock(X, y, cfg, seed):
    """Cost of the per-fit random streams (see the module docstring)."""
    stream = _rng.FitRandomness(seed)
    n = 20000
    with _threads(1):
        start = time.perf_counter()
        for _ in range(n):
            with stream.global_stream():
                pass
        scope_us = (time.perf_counter() - start) / n * 1e6
        params = dict(backbone="simple_cnn", max_epochs=cfg["epochs"], batch_size=32,
                      neurons=64, dropout=0.5, early_stopping=None, validation_fraction=0,
                      device="cpu", random_state=seed)
        n_fold = 2 * len(y) // 3
        clf = CXRClassifier(**params)
        with _common.Timer() as one:
            clf.fit(X[:n_fold], y[:n_fold])
        batches = cfg["epochs"] * -(-n_fold // 32)

        def two_threaded():
            threads = [threading.Thread(target=CXRClassifier(**params).fit,
                                        args=(X[:n_fold], y[:n_fold])) for _ in range(2)]
            with _common.Timer() as t:
                for th in threads:
                    th.start()
                for th in threads:
                    th.join()
            return t.seconds

        with_lock = two_threaded()
        saved, _rng.GLOBAL_RNG_LOCK = _rng.GLOBAL_RNG_LOCK, _NoLock()
        try:
            without_lock = two_threaded()
        finally:
            _rng.GLOBAL_RNG_LOCK = saved
    batch_ms = one.seconds / batches * 1e3
    return {
        "scope_us": scope_us,
        "train_batch_ms": batch_ms,
        "scope_fraction_of_batch": scope_us / 1e3 / batch_ms,
        "one_fit_s": one.seconds,
        "two_threaded_fits_s": {"lock": with_lock, "no_lock": without_lock},
        "threaded_lock_slowdown": with_lock / without_lock,
        "torch_threads_per_fit": 1,
    }


def main(argv=None):
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=None)
    p.add_argument("--size", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--reps", type=int, default=None,
                   help="runs of each mode, alternating; the fastest counts (default 3)")
    p.add_argument("--modes", nargs="+", default=None,
                   choices=["n_jobs_1", "loky_2", "dask_2", "dask_2_dask_environ",
                            "n_jobs_1_all_threads"])
    args = p.parse_args(argv)
    cfg = (dict(n=90, size=16, epochs=1, reps=1) if args.quick
           else dict(n=600, size=48, epochs=3, reps=3))
    cfg.update({k: getattr(args, k) for k in cfg if getattr(args, k) is not None})
    modes = args.modes or (["n_jobs_1", "loky_2", "dask_2"] + ([] if args.quick else
                                                                ["dask_2_dask_environ"]))

    data = _common.load_pneumoniamnist()
    images, y = _common.stratified_subset(*data["train"], cfg["n"], seed=args.seed)
    X = _common.to_inputs(images, cfg["size"])
    default_threads = torch.get_num_threads()
    results, times, start_s, all_times = {}, {}, {}, {m: [] for m in modes}
    same_every_rep = True
    for rep in range(cfg["reps"]):  # modes alternate; each mode's fastest run is kept
        for mode in modes:
            if mode == "n_jobs_1":
                with _threads(1):
                    res, sec = _timed_fit(_search(cfg, args.seed, 1), X, y)
            elif mode == "n_jobs_1_all_threads":
                with _threads(default_threads):
                    res, sec = _timed_fit(_search(cfg, args.seed, 1), X, y)
            elif mode == "loky_2":
                res, sec, start_s[mode] = run_loky(X, y, cfg, args.seed)
            else:
                res, sec, start_s[mode] = run_dask(
                    X, y, cfg, args.seed, dask_environ=mode == "dask_2_dask_environ")
            if mode in results:
                same_every_rep &= _agree(res, results[mode])[0]
            results[mode] = res
            all_times[mode].append(sec)
            times[mode] = min(all_times[mode])
            print(f"rep {rep} {mode}: {sec:.1f} s", flush=True)
    base = "n_jobs_1" if "n_jobs_1" in results else modes[0]
    speedup, with_start, agree, max_diff = {}, {}, {}, {}
    for mode in results:
        if mode == base:
            continue
        speedup[mode] = times[base] / times[mode]
        if mode in start_s:
            with_start[mode] = times[base] / (times[mode] + start_s[mode])
        agree[mode], max_diff[mode] = _agree(results[mode], results[base])
    rng_lock = measure_rng_lock(X, y, cfg, args.seed)
    print(f"speed-up {speedup}, cv_results_ agree {agree}; rng lock {rng_lock}", flush=True)
    payload = {
        "config": {**cfg, "backbone": "simple_cnn", "grid": GRID, "folds": 3,
                   "n_fits": 24, "refit": False, "batch_size": 32, "early_stopping": None,
                   "validation_fraction": 0, "scoring": "roc_auc", "device": "cpu",
                   "dask_worker_environ": DASK_WORKER_ENVIRON,
                   "workers": 2, "threads_per_fit": 1,
                   "torch_default_threads": default_threads, "modes": modes},
        "time_s": times,
        "time_s_every_rep": all_times,
        "same_results_every_rep": bool(same_every_rep),
        "speedup": speedup,
        "cv_results_agree": agree,
        "max_score_difference": max_diff,
        "worker_start_s": start_s,
        "speedup_with_start": with_start,
        "mean_test_score": {m: np.asarray(r["mean_test_score"]).tolist()
                            for m, r in results.items()},
        "rng_lock": rng_lock,
        "goal": {"speedup": 1.6, "cv_results_agree": True},
        "goal_met": bool(all(s >= 1.6 for m, s in speedup.items()
                             if m in ("loky_2", "dask_2"))
                         and all(agree.values()) and same_every_rep),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
        else None,
    }
    _common.write_result("scale_out", payload, args)
    return payload


if __name__ == "__main__":
    main()
