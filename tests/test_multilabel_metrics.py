"""Per-finding metrics of multilabel targets with NaN: the report's point estimates equal
sklearn's on each finding's labelled images, the patient bootstrap resamples patients,
the scorers and the threshold tuner."""

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import (
    average_precision_score, brier_score_loss, f1_score, log_loss, precision_score,
    recall_score, roc_auc_score,
)

from cxr_estimators.report._findings import _resample_weights
from cxr_estimators.metrics import (
    FindingsReport, brier_score_per_finding, clinical_report, clinical_scorers,
    log_loss_per_finding,
)
from cxr_estimators.thresholds import tune_thresholds


def data(n=240, seed=0):
    rng = np.random.default_rng(seed)
    Y = (rng.random((n, 4)) < [0.1, 0.3, 0.05, 0.5]).astype(float)
    P = np.clip(Y * 0.3 + rng.random((n, 4)) * 0.7, 0, 1)
    P[:, 3] = np.round(P[:, 3], 1)  # ties
    Y[rng.random((n, 4)) < 0.2] = np.nan
    return pd.DataFrame(Y, columns=["A", "B", "C", "D"]), P


def test_point_estimates_equal_sklearn_per_finding():
    Y, P = data()
    report = clinical_report(Y, P, n_bootstraps=0, threshold={"B": 0.4})
    assert isinstance(report, FindingsReport) and report.findings == ["A", "B", "C", "D"]
    for j, finding in enumerate(report.findings):
        m = ~Y[finding].isna().to_numpy()
        y, p = Y[finding][m].to_numpy(), P[m, j]
        pred = p >= (0.4 if finding == "B" else 0.5)
        got = {k: v.value for k, v in report.per_finding[finding].items()}
        assert got["roc_auc"] == pytest.approx(roc_auc_score(y, p))
        assert got["pr_auc"] == pytest.approx(average_precision_score(y, p))
        assert got["sensitivity"] == pytest.approx(recall_score(y, pred))
        assert got["specificity"] == pytest.approx(recall_score(1 - y, ~pred))
        assert got["ppv"] == pytest.approx(precision_score(y, pred, zero_division=np.nan))
        assert got["f1"] == pytest.approx(f1_score(y, pred))
        assert got["log_loss"] == pytest.approx(log_loss(y, p, labels=[0, 1]))
        assert got["brier"] == pytest.approx(brier_score_loss(y, p))
        assert got["prevalence"] == pytest.approx(y.mean())
        assert report.n_labelled[finding] == m.sum()
    labelled = ~np.isnan(Y.to_numpy())
    assert report.micro["roc_auc"].value == pytest.approx(
        roc_auc_score(Y.to_numpy()[labelled], P[labelled]))
    assert report.macro["roc_auc"].value == pytest.approx(
        np.mean([report.per_finding[f]["roc_auc"].value for f in report.findings]))


def test_sklearn_would_be_wrong_on_multilabel():
    """Why the per-finding functions exist: sklearn's log_loss takes the indicator for a
    multiclass one and gives another number."""
    Y, P = data()
    full = Y.fillna(0).to_numpy()
    ours = log_loss_per_finding(full, P)
    assert np.mean(list(ours.values())) != pytest.approx(log_loss(full, P))
    assert brier_score_per_finding(Y, P)["A"] == pytest.approx(
        brier_score_loss(Y["A"].dropna(), P[~Y["A"].isna(), 0]))


def test_patient_bootstrap_resamples_patients():
    rng = np.random.RandomState(0)
    groups = np.repeat(["p1", "p2", "p3"], [1, 2, 3])
    w = _resample_weights(groups, 6, 50, rng)
    # images of one patient always share their multiplicity; a draw has 3 patients
    assert np.all(w[:, 1] == w[:, 2]) and np.all(w[:, 3] == w[:, 5])
    assert np.all(w[:, [0, 1, 3]].sum(axis=1) == 3)


def test_patient_cis_are_wider_when_patients_repeat_images():
    """Ten copies of each image: resampling images pretends 10x the evidence; resampling
    patients gives the CI of the real sample."""
    Y, P = data(60)
    Y10, P10 = pd.concat([Y] * 10, ignore_index=True), np.tile(P, (10, 1))
    patients = np.tile(np.arange(60), 10)
    by_image = clinical_report(Y10, P10, n_bootstraps=300, random_state=0)
    by_patient = clinical_report(Y10, P10, groups=patients, n_bootstraps=300, random_state=0)
    width = {name: r.macro["roc_auc"].ci_high - r.macro["roc_auc"].ci_low
             for name, r in (("image", by_image), ("patient", by_patient))}
    assert width["patient"] > 2 * width["image"]
    assert by_patient.patients == 60 and "60 patients" in str(by_patient)
    frame = by_patient.to_frame()
    assert set(frame["finding"]) == {"A", "B", "C", "D", "macro", "micro"}
    assert by_patient.to_dict()["per_finding"]["A"]["roc_auc"]["n_resamples"] > 0


class Fixed:
    """A fitted multilabel 'estimator' with given probabilities."""

    def __init__(self, proba, findings, thresholds=None):
        self.proba, self.findings_, self.thresholds = proba, np.asarray(findings), thresholds
        self.classes_ = np.arange(len(findings))

    def predict_proba(self, X):
        return self.proba[np.asarray(X)]


def test_scorers_macro_over_findings_with_nan():
    Y, P = data()
    est = Fixed(P, Y.columns)
    X = np.arange(len(Y))
    scorers = clinical_scorers()
    aucs = [roc_auc_score(Y[f].dropna(), P[~Y[f].isna(), j]) for j, f in enumerate(Y)]
    assert scorers["roc_auc"](est, X, Y) == pytest.approx(np.mean(aucs))
    per = clinical_scorers(per_class=True)(est, X, Y)
    assert per["roc_auc_C"] == pytest.approx(aucs[2])
    assert per["sensitivity_B"] == pytest.approx(
        recall_score(Y["B"].dropna(), P[~Y["B"].isna(), 1] >= 0.5))
    est.thresholds = {"B": 0.2}  # the estimator's thresholds are used
    assert clinical_scorers(per_class=True)(est, X, Y)["sensitivity_B"] == pytest.approx(
        recall_score(Y["B"].dropna(), P[~Y["B"].isna(), 1] >= 0.2))


@pytest.mark.parametrize("target", [0.5, 0.8, 0.95, 1.0])
def test_tuned_thresholds_reach_the_target(target):
    Y, P = data(400, seed=2)
    est = Fixed(P, Y.columns)
    X = np.arange(len(Y))
    sens = tune_thresholds(est, X, Y, sensitivity=target)
    spec = tune_thresholds(est, X, Y, specificity=target)
    for j, finding in enumerate(Y):
        m = ~Y[finding].isna().to_numpy()
        y, p = Y[finding][m].to_numpy(), P[m, j]
        assert recall_score(y, p >= sens[finding]) >= target
        # the largest such threshold: any higher one misses the target
        assert recall_score(y, p >= np.nextafter(sens[finding], 2)) < target
        assert recall_score(1 - y, p < spec[finding]) >= target
        if spec[finding] > 0:
            lower = np.nextafter(spec[finding], -1)
            assert recall_score(1 - y, p < lower) < target or target == 1.0
    est.thresholds = sens
    report = clinical_report(Y, P, threshold=sens, n_bootstraps=0)
    assert all(report.per_finding[f]["sensitivity"].value >= target for f in Y)
