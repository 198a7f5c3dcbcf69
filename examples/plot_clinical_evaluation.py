"""
Clinical evaluation: confidence intervals, calibration, a sensitivity-first threshold
=====================================================================================

A screening model that misses pneumonia costs more than one that sends a healthy patient
for a second look. This example trains a small CNN on PneumoniaMNIST and then:

1. reports sensitivity, specificity, PPV, NPV, F1, ROC AUC and accuracy with 95%
   bootstrap confidence intervals (:func:`cxr_estimators.metrics.clinical_report`);
2. calibrates the probabilities on one half of the validation split
   (:class:`~sklearn.calibration.CalibratedClassifierCV` over a
   :class:`~sklearn.frozen.FrozenEstimator`);
3. picks, on the other half, the threshold with the best specificity among those with
   sensitivity >= 0.95 (:class:`~sklearn.model_selection.TunedThresholdClassifierCV`);
4. freezes that operating point in a
   :class:`~sklearn.model_selection.FixedThresholdClassifier` and reports on the test
   split, which nothing above has seen;
5. draws the training curves, the ROC curve and the confusion matrix.

Run from the repository root (seconds on a CPU)::

    python examples/plot_clinical_evaluation.py [path/to/pneumoniamnist.npz] [out_dir]

The data file defaults to ``../shared/data/pneumoniamnist.npz`` beside the repository;
figures go to ``out_dir`` (default: a new temporary folder).
"""

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.calibration import CalibratedClassifierCV
from sklearn.frozen import FrozenEstimator
from sklearn.metrics import brier_score_loss, make_scorer
from sklearn.model_selection import (
    FixedThresholdClassifier, TunedThresholdClassifierCV, train_test_split,
)

from cxr_estimators import CXRClassifier
from cxr_estimators.datasets import load_medmnist
from cxr_estimators.metrics import (
    clinical_report, clinical_scorers, sensitivity_score, specificity_score,
)

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared/data/pneumoniamnist.npz"
OUT = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(tempfile.mkdtemp(prefix="cxr_eval_"))
OUT.mkdir(parents=True, exist_ok=True)
torch.set_num_threads(2)
start = time.perf_counter()


def as_xy(bunch, n=None):
    """(n, 1, 28, 28) float32 images, standardised, and string labels."""
    images, target = bunch.images[:n], bunch.target[:n]
    return ((images[:, None].astype(np.float32) - 146.0) / 43.0,  # train mean, std
            np.asarray(bunch.target_names)[target])


# %%
# Train a small CNN on a subset of the training split
# ---------------------------------------------------
X_train, y_train = as_xy(load_medmnist(DATA, "train"), n=1500)
X_val, y_val = as_xy(load_medmnist(DATA, "val"))
X_test, y_test = as_xy(load_medmnist(DATA, "test"))
# Three in four training images show pneumonia; balanced class weights keep the short
# training run from settling on "always pneumonia".
# float32: docs/clinical_evaluation.md quotes this run, and precision="auto" would
# train in bf16 on a CPU with native bf16, giving other numbers there.
cnn = CXRClassifier(backbone="simple_cnn", max_epochs=3, class_weight="balanced",
                    precision="float32", random_state=0).fit(X_train, y_train)
print(f"trained on {len(y_train)} images in {time.perf_counter() - start:.0f} s")

# %%
# Report at the default threshold (0.5)
# -------------------------------------
# ``clinical_report`` resamples the test cases 1000 times; each metric's CI comes from
# the resamples in which it is defined.
proba_test = cnn.predict_proba(X_test)
report_default = clinical_report(y_test, proba_test, labels=cnn.classes_,
                                 pos_label="pneumonia", random_state=0)
print(report_default)

# %%
# Calibrate on one half of the validation split
# ---------------------------------------------
# A short training run gives over- or under-confident probabilities; Platt scaling
# (``method="sigmoid"``) on held-out data fixes their scale without changing the ranking.
X_cal, X_thr, y_cal, y_thr = train_test_split(X_val, y_val, test_size=0.5,
                                              stratify=y_val, random_state=0)
calibrated = CalibratedClassifierCV(FrozenEstimator(cnn), method="sigmoid").fit(X_cal, y_cal)
proba_cal = calibrated.predict_proba(X_test)
is_pneumonia = y_test == "pneumonia"
brier = {"raw": brier_score_loss(is_pneumonia, proba_test[:, 1]),
         "calibrated": brier_score_loss(is_pneumonia, proba_cal[:, 1])}
print(f"Brier score on test: raw {brier['raw']:.3f}, calibrated {brier['calibrated']:.3f}")


# %%
# Choose a sensitivity-first operating point on the other half
# ------------------------------------------------------------
# Maximising sensitivity alone would call everyone positive; the objective below is the
# specificity of thresholds that keep sensitivity >= 0.95, and a negative value (the
# shortfall) for those that do not, so any feasible threshold beats every infeasible one.
def specificity_at_sensitivity(y_true, y_pred, *, pos_label, min_sensitivity):
    sensitivity = sensitivity_score(y_true, y_pred, pos_label=pos_label)
    if sensitivity < min_sensitivity:
        return sensitivity - 1.0
    return specificity_score(y_true, y_pred, pos_label=pos_label)


objective = make_scorer(specificity_at_sensitivity, pos_label="pneumonia",
                        min_sensitivity=0.95)
tuned = TunedThresholdClassifierCV(calibrated, scoring=objective, cv="prefit", refit=False,
                                   thresholds=200).fit(X_thr, y_thr)
threshold = float(tuned.best_threshold_)
print(f"threshold for sensitivity >= 0.95 on the tuning half: {threshold:.3f}")

# %%
# Freeze the operating point and report on the test split
# -------------------------------------------------------
# ``FixedThresholdClassifier`` wraps the fitted, calibrated model with that threshold:
# one object to pickle and deploy, whose ``predict`` applies it.
screen = FixedThresholdClassifier(calibrated, threshold=threshold, pos_label="pneumonia")
report = clinical_report(y_test, proba_cal, labels=calibrated.classes_,
                         pos_label="pneumonia", threshold=threshold, random_state=0)
print(report)
assert np.array_equal(screen.predict(X_test) == "pneumonia",
                      proba_cal[:, 1] >= threshold)
scores = {name: scorer(screen, X_test, y_test)
          for name, scorer in clinical_scorers(pos_label="pneumonia").items()}
print("clinical_scorers on test:", {name: round(value, 3) for name, value in scores.items()})


def rounded(report):
    """A report's figures as docs/clinical_evaluation.md quotes them."""
    return {"metrics": {name: [round(v, 3) for v in m[:3]]
                        for name, m in report.overall.items()},
            "confusion_matrix": report.confusion_matrix.tolist()}


# every number docs/clinical_evaluation.md quotes, in one line its test reads
print("quoted numbers:", json.dumps({
    "default": rounded(report_default), "tuned": rounded(report),
    "brier": {k: round(v, 3) for k, v in brier.items()}, "threshold": round(threshold, 3),
    "scorers": {name: round(value, 3) for name, value in scores.items()}}))

# %%
# Figures
# -------
try:
    from cxr_estimators.plotting import (
        plot_confusion_matrix, plot_roc, plot_training_curves,
    )
except ImportError:  # pragma: no cover - plotting module missing
    plot_training_curves = None
if plot_training_curves is not None:
    try:
        plot_training_curves(cnn, path=OUT / "training_curves.png")
        plot_roc(y_test, proba_cal, labels=calibrated.classes_, pos_label="pneumonia",
                 path=OUT / "roc.png")
        plot_confusion_matrix(y_test, screen.predict(X_test),
                              labels=calibrated.classes_, path=OUT / "confusion_matrix.png")
        print(f"figures written to {OUT}")
    except ImportError as exc:  # matplotlib is optional
        print(exc)
print(f"done in {time.perf_counter() - start:.0f} s")
