"""The report's sections, one small function each: ``section(ctx) -> Section``.

A section returns its HTML and the JSON-ready numbers it shows; every number in the HTML
is a :func:`~._template.number_cell` naming its JSON key, so the page and its JSON twin
cannot disagree. The performance sections take one binary *finding* (a positive label and
its scores), so a multi-label model gets one set per finding (:mod:`._multilabel`).
"""

from __future__ import annotations

import base64
import hashlib
import io
import platform
from dataclasses import dataclass, field

import numpy as np
from sklearn.metrics import average_precision_score

from ._clinical import bootstrap_weights
from ._template import escape, number_cell, table

_METRICS = ("sensitivity", "specificity", "ppv", "npv", "f1", "roc_auc", "accuracy")
_NAMES = {"sensitivity": "Sensitivity", "specificity": "Specificity", "ppv": "PPV",
          "npv": "NPV", "f1": "F1", "roc_auc": "ROC AUC", "accuracy": "Accuracy",
          "pr_auc": "PR AUC (average precision)", "brier": "Brier score (lower is better)"}
THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass
class Section:
    key: str
    title: str
    html: str
    data: dict = field(default_factory=dict)


@dataclass
class Finding:
    """One binary question the model answers: ``positive`` vs the rest."""

    name: str
    positive: object
    negative: object
    y_true: np.ndarray  # bool: is the case positive
    score: np.ndarray   # probability of positive
    threshold: float
    rows: np.ndarray = None  # test-set index of each case, when only some are labelled

    @property
    def y_pred(self):
        return self.score >= self.threshold


def figure_html(fig, alt, css=""):
    """``fig`` as an inline PNG ``<img>`` (base64; the page needs no other file)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=fig.dpi)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img class="{css}" alt="{escape(alt)}" src="data:image/png;base64,{data}">'


def _figure(plot, alt, *args, **kwargs):
    """The figure of ``plot(*args, **kwargs)`` as HTML, or a note why there is none."""
    try:
        return figure_html(plot(*args, **kwargs), alt)
    except (ValueError, ImportError) as exc:
        return f"<p>({escape(alt)} not drawn: {escape(exc)})</p>"


def _channels_last(X):
    """Arrays (n, C, H, W) as (n, H, W, C) for :func:`~cxr_estimators.audit.audit_dataset`."""
    if isinstance(X, np.ndarray) and X.ndim == 4 and X.shape[1] in (1, 3):
        X = np.moveaxis(np.asarray(X), 1, -1)
        return X[..., 0] if X.shape[-1] == 1 else X
    return X


# ---------------------------------------------------------------------------- data
def data_section(ctx):
    rows, data = [], {"splits": {}}
    for split, X, y, groups in (("train", ctx.X_train, ctx.y_train, ctx.patients_train),
                                ("test", ctx.X_test, ctx.y_test, ctx.patients)):
        if X is None:
            continue
        counts = ({str(k): int(v) for k, v in zip(*np.unique(np.asarray(y),
                                                             return_counts=True))}
                  if y is not None else {})
        entry = {"images": len(X), "classes": counts,
                 "patients": None if groups is None else len(set(map(str, groups)))}
        data["splits"][split] = entry
        rows.append([split, number_cell(len(X), f"data.splits.{split}.images")]
                    + [", ".join(f"{k}: {v}" for k, v in counts.items()) or "-",
                       "-" if groups is None else number_cell(
                           entry["patients"], f"data.splits.{split}.patients")])
    audit_html, data["audit"] = audit_of_test_images(ctx, ctx.y_test)
    html = table(["split", "images", "classes", "patients"], rows) + audit_html
    return Section("data", "Data", html, data)


def audit_of_test_images(ctx, y):
    """The audit of the test images (duplicates, label conflicts when ``y`` is given,
    leaks from training, odd images): its HTML and its JSON-ready numbers."""
    from ..audit import audit_dataset

    audit = audit_dataset(_channels_last(ctx.X_test), y, ctx.patients,
                          X_other=_channels_last(ctx.X_train), groups_other=ctx.patients_train)
    found = {"duplicate_groups_in_test": len(audit.duplicate_groups),
             "label_conflicts_in_test": len(audit.label_conflicts),
             "test_images_identical_to_train": len(audit.cross_duplicates),
             "odd_test_images": len(audit.odd_images)}
    if ctx.patients is not None and ctx.patients_train is not None:
        found["patients_in_train_and_test"] = len(audit.shared_patients)
    data = {**found, "odd_images": {str(k): v for k, v in audit.odd_images.items()},
            "cross_duplicates": audit.cross_duplicates, "shared_patients": audit.shared_patients}
    audit_rows = [[k.replace("_", " "), number_cell(v, f"data.audit.{k}")]
                  for k, v in found.items()]
    leaks = found["test_images_identical_to_train"] + found.get("patients_in_train_and_test", 0)
    note = (f'<p class="{"warn" if leaks else "ok"}">'
            + ("Test images identical to training images, or patients in both sets, "
               "inflate every figure below: remove them." if leaks else
               "No test image is identical to a training image." if ctx.X_train is not None
               else "No training images given: leakage into the test set not checked.")
            + "</p>")
    return ("<h3>Audit of the test images</h3>" + table(["check", "count"], audit_rows)
            + note), data


# ---------------------------------------------------------------------------- model
def _weights_sha256(clf):
    """SHA-256 of the model's weights as a safetensors file would hold them."""
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in clf.module_.state_dict().items()}
    return hashlib.sha256(save(dict(sorted(state.items())))).hexdigest()


def _versions():
    import sklearn
    import skorch
    import torch
    import torchvision

    from .. import __version__

    return {"cxr_estimators": __version__, "torch": torch.__version__,
            "torchvision": torchvision.__version__, "scikit-learn": sklearn.__version__,
            "skorch": skorch.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


def model_section(ctx):
    from ..plotting import plot_training_curves

    clf = ctx.clf
    params = {k: (v if isinstance(v, (int, float, str, bool, type(None))) else repr(v))
              for k, v in sorted(clf.get_params(deep=False).items())}
    data = {"backbone": str(clf.backbone), "weights": str(params.get("weights")),
            "weights_sha256": _weights_sha256(clf), "classes": [str(c) for c in clf.classes_],
            "best_epoch": getattr(clf, "best_epoch_", None),
            "epochs_run": len(getattr(clf, "history_", []) or []),
            "params": params, "versions": _versions()}
    labels = "classes"
    if clf._findings() is not None:  # multi-label: its findings, not the indices 0 .. k-1
        labels, data["findings"] = "findings", [str(f) for f in clf._findings()]
    rows = [["backbone", data["backbone"]], ["initial weights", data["weights"]],
            ["weights SHA-256", data["weights_sha256"]], [labels, ", ".join(data[labels])],
            ["epochs run", number_cell(data["epochs_run"], "model.epochs_run")],
            ["best epoch (weights kept)", number_cell(data["best_epoch"], "model.best_epoch")]]
    versions = table(["package", "version"], data["versions"].items())
    parameters = table(["parameter", "value"], [[k, v] for k, v in params.items()])
    html = (table(["item", "value"], rows) + '<div class="figures">'
            + _figure(plot_training_curves, "training curves", ctx.model) + "</div>"
            + "<details><summary>parameters and versions</summary>" + parameters + versions
            + "</details>")
    return Section("model", "Model", html, data)


# ---------------------------------------------------------------------------- performance
def _extra_metrics(finding, n_bootstraps, rng):
    """PR AUC and Brier score with percentile bootstrap 95 % CIs."""
    y, s = finding.y_true, finding.score
    weights = bootstrap_weights(len(y), n_bootstraps, rng)
    brier = (s - y) ** 2
    pr = [average_precision_score(y, s, sample_weight=w) for w in weights if y[w > 0].any()]
    return {"pr_auc": _with_ci(average_precision_score(y, s), pr),
            "brier": _with_ci(brier.mean(), weights @ brier / len(y))}


def _with_ci(value, samples):
    low, high = np.percentile(samples, [2.5, 97.5]) if len(samples) else (np.nan, np.nan)
    return {"value": float(value), "ci_low": float(low), "ci_high": float(high)}


def performance_section(ctx, finding):
    from ..metrics import clinical_report
    from ..plotting import plot_calibration, plot_confusion_matrix, plot_roc

    rep = clinical_report(finding.y_true, finding.score, labels=[False, True], pos_label=True,
                          threshold=finding.threshold, n_bootstraps=ctx.n_bootstraps,
                          random_state=ctx.random_state)
    metrics = {m: rep.to_dict()["overall"][m] for m in _METRICS}
    metrics.update(_extra_metrics(finding, ctx.n_bootstraps, ctx.rng))
    key = f"performance.{finding.name}"
    rows = [[_NAMES[m], number_cell(v["value"], f"{key}.metrics.{m}.value"),
             number_cell(v["ci_low"], f"{key}.metrics.{m}.ci_low"),
             number_cell(v["ci_high"], f"{key}.metrics.{m}.ci_high")]
            for m, v in metrics.items()]
    cm = rep.confusion_matrix
    labels = [str(finding.negative), str(finding.positive)]
    y_true = np.where(finding.y_true, labels[1], labels[0])
    y_pred = np.where(finding.y_pred, labels[1], labels[0])
    figures = (_figure(plot_roc, "ROC curve", y_true, finding.score, labels=labels,
                       pos_label=labels[1], threshold=finding.threshold,
                       n_bootstraps=min(ctx.n_bootstraps, 200), random_state=ctx.random_state)
               + _figure(plot_calibration, "calibration curve", y_true,
                         finding.score.astype(float), pos_label=labels[1])
               + _figure(plot_confusion_matrix, "confusion matrix", y_true, y_pred,
                         labels=labels))
    data = {"positive": str(finding.positive), "threshold": finding.threshold,
            "n": int(len(finding.y_true)), "metrics": metrics,
            "confusion_matrix": {"labels": labels, "counts": cm.tolist()}}
    html = (f"<p>Positive class <b>{escape(finding.positive)}</b>, predicted positive when "
            f"its probability is at least {number_cell(finding.threshold, f'{key}.threshold')}"
            .replace("<td", "<span").replace("</td>", "</span>")
            + f"; {len(finding.y_true)} test images; 95 % CIs: percentile bootstrap, "
            f"{ctx.n_bootstraps} resamples.</p>"
            + table(["metric", "value", "95% CI low", "95% CI high"], rows)
            + f'<div class="figures">{figures}</div>')
    return Section(key, f"Performance: {finding.positive}", html, data)


def threshold_section(ctx, finding):
    key = f"thresholds.{finding.name}"
    thresholds = sorted({*THRESHOLDS, round(float(finding.threshold), 6)})
    rows, data = [], []
    y = finding.y_true
    for i, t in enumerate(thresholds):
        pred = finding.score >= t
        tp, fp = int((pred & y).sum()), int((pred & ~y).sum())
        fn, tn = int((~pred & y).sum()), int((~pred & ~y).sum())
        row = {"threshold": t, "sensitivity": _ratio(tp, tp + fn),
               "specificity": _ratio(tn, tn + fp), "ppv": _ratio(tp, tp + fp),
               "npv": _ratio(tn, tn + fn), "predicted_positive": tp + fp}
        data.append(row)
        rows.append([number_cell(v, f"{key}.rows.{i}.{k}") for k, v in row.items()])
    html = ("<p>The same model at other thresholds (chosen one included): what moving "
            "the operating point trades.</p>"
            + table(["threshold", "sensitivity", "specificity", "PPV", "NPV",
                     "predicted positive"], rows))
    return Section(key, f"Thresholds: {finding.positive}", html, {"rows": data})


def _ratio(num, den):
    return float(num / den) if den else float("nan")


def subgroup_section(ctx, finding):
    from sklearn.metrics import roc_auc_score

    key = f"subgroups.{finding.name}"
    groups = np.asarray(ctx.groups).astype(str)
    rows, data = [], {}
    for g in sorted(set(groups.tolist())):
        keep = groups == g
        y, pred, s = finding.y_true[keep], finding.y_pred[keep], finding.score[keep]
        entry = {"n": int(keep.sum()), "positives": int(y.sum()),
                 "sensitivity": _ratio((pred & y).sum(), y.sum()),
                 "specificity": _ratio((~pred & ~y).sum(), (~y).sum()),
                 "roc_auc": float(roc_auc_score(y, s)) if 0 < y.sum() < len(y) else np.nan}
        data[g] = entry
        rows.append([g] + [number_cell(v, f"{key}.{g}.{k}") for k, v in entry.items()])
    html = table(["group", "images", "positives", "sensitivity", "specificity", "ROC AUC"],
                 rows)
    return Section(key, f"Subgroups: {finding.positive}", html, data)
