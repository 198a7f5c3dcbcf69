"""Worker process of ``benchmarks/cpu_speed.py``: times one fit or one prediction per
command, with whichever ``cxr_estimators`` is first on ``PYTHONPATH``.

Run as a script (``python benchmarks/_cpu_speed_worker.py``, not ``-m``), so that the
package it imports is the one ``PYTHONPATH`` names: today's tree, or the pre-change tree
that ``cpu_speed.py`` extracts with ``git archive``. It reads one JSON command per line
on stdin and answers one JSON line on stdout:

``{"impl": "estimator" | "compiled" | "loop", "mode": "fit" | "predict" | "fold",
"backbone", "size", "n", "batch_size", "seed", "fold": bool}`` → ``{"seconds": float, ...}``
(``"fold"`` mode, loop only: the seconds ``_runtime.fold_batch_norm`` takes on the loop's
last fitted model, and ``"folds"``: whether it folds anything).

``compiled`` is the estimator with ``compile=True``. ``loop`` is the best-practice plain
torch loop on the same model (only with today's tree): channels_last and bf16 autocast as
``_runtime`` resolves them for the backbone, ``inference_mode`` for prediction, the
estimator's batch sizes; with ``"fold": true`` a prediction first folds the BatchNorm
layers into the convolutions (``_runtime.fold_batch_norm``, torch.fx's ``fuse``; timed).
Every fit, of either kind, includes building the model, as in ``benchmarks/overhead.py``.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time

import numpy as np
import torch
from torch import nn

from cxr_estimators import CXRClassifier
from cxr_estimators.backbones import build_model

_fitted = {}  # (impl, backbone, size) -> what the last fit produced, for predict


class _Clock:
    """Wall seconds, minor page faults and system CPU seconds of this process since
    it was made: the page faults show the allocator returning freed memory to the
    kernel and faulting it back in (docs/design.md, "glibc malloc")."""

    def __init__(self):
        self.usage = resource.getrusage(resource.RUSAGE_SELF)
        self.start = time.perf_counter()

    def stop(self, **extra):
        seconds = time.perf_counter() - self.start
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {"seconds": seconds, "minflt": usage.ru_minflt - self.usage.ru_minflt,
                "sys_s": usage.ru_stime - self.usage.ru_stime, **extra}


def _data(size, n, seed):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 1, size, size), dtype=np.float32)
    return X, np.arange(n) % 2


def _estimator(cmd):
    X, y = _data(cmd["size"], cmd["n"], cmd["seed"])
    key = (cmd["impl"], cmd["backbone"], cmd["size"])
    if cmd["mode"] == "fit":
        params = dict(backbone=cmd["backbone"], max_epochs=1, batch_size=cmd["batch_size"],
                      validation_fraction=0, early_stopping=None, device="cpu",
                      random_state=cmd["seed"])
        if cmd["impl"] == "compiled":
            params["compile"] = True
        clock = _Clock()
        clf = CXRClassifier(**params).fit(X, y)
        timing = clock.stop()
        _fitted[key] = clf
        net = clf.net_
        return {**timing, "amp": bool(getattr(net, "amp", False)),
                "channels_last": bool(getattr(net, "channels_last", False)),
                "predict_batch_size": getattr(clf, "_predict_batch_size", lambda: None)()}
    clf = _fitted[key]
    clock = _Clock()
    clf.predict_proba(X)
    return clock.stop()


def _loop(cmd):
    from cxr_estimators import _runtime

    X, y = _data(cmd["size"], cmd["n"], cmd["seed"])
    key = ("loop", cmd["backbone"], cmd["size"])
    runtime = _runtime.resolve_runtime(cmd["backbone"], "cpu")
    bs = cmd["batch_size"]
    if cmd["mode"] == "fit":
        Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
        generator = torch.Generator().manual_seed(cmd["seed"])
        clock = _Clock()
        torch.manual_seed(cmd["seed"])
        model = runtime.prepare(build_model(cmd["backbone"], 2, in_channels=1))
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        loss_fn = nn.CrossEntropyLoss()
        model.train()
        order = torch.randperm(len(Xt), generator=generator)
        for s in range(0, len(Xt), bs):
            idx = order[s:s + bs]
            xb = runtime.layout(Xt[idx])
            with runtime.autocast():
                logits = model(xb)
            loss = loss_fn(logits.float(), yt[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        timing = clock.stop()
        _fitted[key] = model.eval()
        return {**timing, "amp": runtime.amp, "channels_last": runtime.channels_last}
    if cmd["mode"] == "fold":  # the fold alone, on the loop's last fitted model
        clock = _Clock()
        folded = _runtime.fold_batch_norm(_fitted[key], runtime.channels_last)
        return clock.stop(folds=folded is not None)
    model, pbs = _fitted[key], cmd["predict_batch_size"]
    Xt = torch.from_numpy(X)
    out = torch.empty((len(Xt), 2), dtype=torch.float32)
    clock = _Clock()
    if cmd.get("fold"):  # BatchNorm folded into the convolutions, the fold timed too
        model = _runtime.fold_batch_norm(model, runtime.channels_last) or model
    with torch.inference_mode(), runtime.autocast():
        for s in range(0, len(Xt), pbs):
            out[s:s + pbs] = torch.softmax(model(runtime.layout(Xt[s:s + pbs])).float(), 1)
    return clock.stop()


def main():
    if os.environ.get("CPU_SPEED_TUNE_MALLOC") == "1":  # benchmarks/cpu_malloc.py
        from cxr_estimators import tune_cpu_malloc

        tune_cpu_malloc()
    print(json.dumps({"ready": True, "torch_threads": torch.get_num_threads(),
                      "package": sys.modules["cxr_estimators"].__file__}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        answer = (_loop if cmd["impl"] == "loop" else _estimator)(cmd)
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
