"""One multilabel network against one network per finding, on planted findings.

``python -m benchmarks.multilabel [--quick]``. The task is
:func:`cxr_estimators.datasets.make_findings`: each finding a faint square at its own
place in noisy images, prevalences 2-30 %, some findings co-occurring, 10-30 % of the
labels NaN. For k = 4 and k = 14 findings, with the same backbone (``simple_cnn``), image
size, epochs, batch size and seed:

* ``multilabel``: one ``CXRClassifier`` fitted on ``Y`` (n, k), NaN masked in its loss;
* ``multioutput``: one ``CXRClassifier`` per finding, each fitted on the images labelled
  for it, as ``MultiOutputClassifier`` does (it cannot itself: it hands the NaN labels to
  each estimator, which refuses them).

Recorded per k and method: fit and predict seconds and the mean per-finding ROC AUC on a
test set with every label known; ``speedup_vs_multioutput`` (fit seconds of the per-finding
networks / the multilabel one's, in CPU seconds of this process with one torch thread, so
that other work on a shared machine moves it little; wall seconds are recorded too) and
whether the issue's goal holds: speed-up >= 0.8 k at an equal or better mean AUC (within
0.01). Run at two training lengths, 6 and 15 epochs (6 alone was run first; it left both
methods under-trained); the top-level keys hold the longest.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from benchmarks import _common
from cxr_estimators import CXRClassifier
from cxr_estimators.datasets import make_findings


def model(cfg, seed):
    return CXRClassifier(backbone="simple_cnn", backbone_kwargs={"widths": WIDTHS},
                         neurons=32, max_epochs=cfg["epochs"], batch_size=32, lr=3e-3,
                         early_stopping=None, validation_fraction=0, device="cpu",
                         random_state=seed)


#: A tiny simple_cnn (three conv blocks of 8, 16, 32 channels): the whole benchmark runs
#: in minutes on a shared 2-core CPU.
WIDTHS = (8, 16, 32)


class Timer:
    """Wall and CPU seconds of this process (one torch thread: the CPU seconds are the
    work done, little affected by other processes sharing the cores)."""

    def __enter__(self):
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self._wall
        self.cpu = time.process_time() - self._cpu


def mean_auc(Y, proba):
    aucs = [roc_auc_score(Y[:, j], proba[:, j]) for j in range(Y.shape[1])
            if 0 < Y[:, j].sum() < len(Y)]
    return float(np.mean(aucs)), [float(a) for a in aucs]


def run_multilabel(train, test, cfg, seed):
    clf = model(cfg, seed)
    with Timer() as fit:
        clf.fit(train.images, train.target)
    with Timer() as pred:
        proba = clf.predict_proba(test.images)
    return fit, pred, proba


def run_multioutput(train, test, cfg, seed):
    columns = []
    with Timer() as fit_all:
        models = []
        for j in range(train.target.shape[1]):
            labelled = ~np.isnan(train.target[:, j])
            models.append(model(cfg, seed).fit(train.images[labelled],
                                               train.target[labelled, j].astype(int)))
    with Timer() as pred_all:
        columns = [clf.predict_proba(test.images)[:, 1] for clf in models]
    return fit_all, pred_all, np.column_stack(columns)


def measure(k, cfg, seed):
    train = make_findings(cfg["n_train"], k, image_size=cfg["size"], random_state=seed)
    test = make_findings(cfg["n_test"], k, image_size=cfg["size"], random_state=seed + 1)
    row = {"k": k}
    for name, run in (("multilabel", run_multilabel), ("multioutput", run_multioutput)):
        fit, pred, proba = run(train, test, cfg, seed)
        auc, aucs = mean_auc(test.target_full, proba)
        row[name] = {"fit_cpu_s": fit.cpu, "fit_wall_s": fit.wall, "predict_cpu_s": pred.cpu,
                     "predict_wall_s": pred.wall, "mean_auc": auc, "auc_per_finding": aucs}
        print(f"epochs={cfg['epochs']} k={k} {name}: fit {fit.cpu:.1f} CPU s ({fit.wall:.1f} s wall), predict "
              f"{pred.cpu:.2f} CPU s, mean AUC {auc:.3f}", flush=True)
    row["speedup_vs_multioutput"] = (row["multioutput"]["fit_cpu_s"]
                                     / row["multilabel"]["fit_cpu_s"])
    row["speedup_wall"] = row["multioutput"]["fit_wall_s"] / row["multilabel"]["fit_wall_s"]
    row["predict_speedup"] = (row["multioutput"]["predict_cpu_s"]
                              / row["multilabel"]["predict_cpu_s"])
    row["mean_auc"] = {m: row[m]["mean_auc"] for m in ("multilabel", "multioutput")}
    row["goal_met"] = bool(row["speedup_vs_multioutput"] >= 0.8 * k and
                           row["mean_auc"]["multilabel"] >= row["mean_auc"]["multioutput"]
                           - 0.01)
    return row


def main(argv=None):
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, nargs="+", default=None,
                   help="training lengths to compare (default: 6 15; quick: 1)")
    args = p.parse_args(argv)
    cfg = ({"n_train": 120, "n_test": 80, "size": 24} if args.quick else
           {"n_train": 500, "n_test": 300, "size": 32})
    epochs = args.epochs or ([1] if args.quick else [6, 15])
    torch.set_num_threads(1)
    warm = make_findings(64, 4, image_size=cfg["size"], random_state=args.seed)
    model({**cfg, "epochs": 1}, args.seed).fit(warm.images, warm.target)  # first-call costs
    rows = [{"epochs": e, **measure(k, {**cfg, "epochs": e}, args.seed)}
            for e in epochs for k in (4, 14)]
    last = [r for r in rows if r["epochs"] == epochs[-1]]  # the longest training
    payload = {"config": {**cfg, "epochs": epochs, "backbone": "simple_cnn",
                          "widths": WIDTHS, "neurons": 32, "batch_size": 32, "lr": 3e-3,
                          "torch_threads": 1},
               "results": rows,
               "summary_epochs": epochs[-1],
               "speedup_vs_multioutput": {str(r["k"]): r["speedup_vs_multioutput"]
                                          for r in last},
               "mean_auc": {str(r["k"]): r["mean_auc"] for r in last},
               "goal_met": {str(r["k"]): r["goal_met"] for r in last}}
    return _common.write_result("multilabel", payload, args)


if __name__ == "__main__":
    main()
