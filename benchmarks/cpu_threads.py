"""Threads of fits inside ``GridSearchCV``: n_jobs=1 against n_jobs=2, per joblib backend.

One ``GridSearchCV`` over 4 candidates × 2 folds (8 fits of ``simple_cnn``, then a refit)
on synthetic images, timed (wall clock) in these configurations, alternating, ``--reps``
times each:

* ``n_jobs=1``: one fit at a time, torch with all cores;
* ``loky n_jobs=2``: joblib's default backend, which starts each worker process with
  ``cpu_count // n_jobs`` threads (``OMP_NUM_THREADS``), as torch obeys;
* ``loky n_jobs=2, full threads``: the same with each fit setting
  ``torch.set_num_threads(cpu_count)`` first: what would happen without that limit
  (oversubscription). (Not ``inner_max_num_threads``: changing it restarts loky's
  workers, whose start-up would then be timed.)
* ``threading n_jobs=2``: two fits in threads of one process, each taking its share
  (``cxr_estimators._runtime.thread_share``);
* ``threading n_jobs=2, no sharing``: the same with the sharing switched off.

Also recorded: ``torch.get_num_threads()`` seen inside the fits of each configuration.
"""

from __future__ import annotations

import contextlib
import os
import time

import joblib
import numpy as np
import torch
from sklearn.model_selection import GridSearchCV

from benchmarks import _common
from cxr_estimators import CXRClassifier, _runtime


class _AllThreads(CXRClassifier):
    """CXRClassifier whose fit and predict run with all cores' threads, restored after."""

    def _with_all_threads(self, method, *args, **kwargs):
        before = torch.get_num_threads()
        torch.set_num_threads(os.cpu_count())
        try:
            return method(*args, **kwargs)
        finally:
            torch.set_num_threads(before)

    def fit(self, X, y, **kwargs):
        return self._with_all_threads(super().fit, X, y, **kwargs)

    def predict_proba(self, X):
        return self._with_all_threads(super().predict_proba, X)


def _search(X, y, n_jobs, epochs, seed, estimator=CXRClassifier):
    clf = estimator(backbone="simple_cnn", max_epochs=epochs, batch_size=32,
                        validation_fraction=0, early_stopping=None, device="cpu",
                        random_state=seed)
    grid = {"lr": [1e-3, 3e-3], "neurons": [32, 64]}
    return GridSearchCV(clf, grid, cv=2, n_jobs=n_jobs, scoring="accuracy").fit(X, y)


def _threads_inside(n_jobs, backend_kwargs, all_threads=False):
    """torch threads seen by two tasks running at once under the configuration."""
    def probe():
        before = torch.get_num_threads()
        if all_threads:
            torch.set_num_threads(os.cpu_count())
        try:
            with _runtime.thread_share():
                time.sleep(1)  # let the other task enter too
                threads = _runtime.refresh_thread_share()
                time.sleep(1)  # stay while the other one reads
                return threads
        finally:
            torch.set_num_threads(before)

    with joblib.parallel_config(**backend_kwargs):
        return joblib.Parallel(n_jobs=n_jobs)(joblib.delayed(probe)() for _ in range(2))


@contextlib.contextmanager
def _no_sharing():
    real = _runtime.thread_share
    _runtime.thread_share = contextlib.nullcontext
    try:
        yield
    finally:
        _runtime.thread_share = real


def main(argv=None):
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=None)
    p.add_argument("--n", type=int, default=None)
    p.add_argument("--size", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None)
    args = p.parse_args(argv)
    n = args.n or (64 if args.quick else 512)
    size = args.size or (16 if args.quick else 64)
    epochs = args.epochs or (1 if args.quick else 2)
    reps = args.reps or (1 if args.quick else 3)
    cores = os.cpu_count()
    rng = np.random.default_rng(args.seed)
    X = rng.standard_normal((n, 1, size, size), dtype=np.float32)
    y = np.arange(n) % 2

    null = contextlib.nullcontext
    configs = {  # name: (n_jobs, joblib config, switch, estimator class)
        "n_jobs=1": (1, {}, null, CXRClassifier),
        "loky n_jobs=2": (2, {"backend": "loky"}, null, CXRClassifier),
        "loky n_jobs=2, full threads": (2, {"backend": "loky"}, null, _AllThreads),
        "threading n_jobs=2": (2, {"backend": "threading"}, null, CXRClassifier),
        "threading n_jobs=2, no sharing": (2, {"backend": "threading"}, _no_sharing,
                                           CXRClassifier),
    }
    if args.quick:  # smoke run: one configuration per backend, no warm-up
        configs = {k: configs[k] for k in ("n_jobs=1", "loky n_jobs=2", "threading n_jobs=2")}
    times = {name: [] for name in configs}
    threads = {}
    for name, (n_jobs, backend, switch, cls) in configs.items():  # warm-up: worker start
        if not args.quick:
            with switch(), joblib.parallel_config(**backend):
                _search(X[:64], y[:64], n_jobs, 1, args.seed, cls)
        with switch():
            threads[name] = _threads_inside(n_jobs, backend, cls is _AllThreads)
    for rep in range(reps):
        for name, (n_jobs, backend, switch, cls) in configs.items():
            with switch(), joblib.parallel_config(**backend), _common.Timer() as t:
                _search(X, y, n_jobs, epochs, args.seed, cls)
            times[name].append(t.seconds)
            print(f"rep {rep} {name:32s} {t.seconds:7.2f} s", flush=True)
    med = {k: _common.median(v) for k, v in times.items()}
    payload = {
        "config": {"n": n, "size": size, "epochs": epochs, "reps": reps, "candidates": 4,
                   "folds": 2, "backbone": "simple_cnn", "cpu_count": cores},
        "seconds": times,
        "median_s": med,
        "speedup_vs_n_jobs_1": {k: med["n_jobs=1"] / v for k, v in med.items()},
        "threads_inside": threads,
    }
    for k, v in payload["speedup_vs_n_jobs_1"].items():
        print(f"{k:32s} x{v:.2f} vs n_jobs=1; torch threads inside: {threads[k]}")
    _common.write_result("cpu_threads", payload, args)
    return payload


if __name__ == "__main__":
    main()
