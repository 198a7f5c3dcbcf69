"""Bad inputs to the clinical metrics: each gets an error naming the parameter or rows.

One case per bad input, with the exception type and a fragment of its message (as
``tests/test_errors.py`` does for the estimator).
"""

import numpy as np
import pytest

import cxr_estimators._validation as validation
from cxr_estimators.metrics import clinical_report, sensitivity_score, specificity_score

Y = np.array(["n", "p"] * 10)
SCORE = np.linspace(0, 1, 20)
PROBA = np.column_stack([1 - SCORE, SCORE])


def _with_last(y, value):
    """``y`` with its last row (row 19) replaced by ``value``, as an object array."""
    return np.r_[np.asarray(y)[:-1].astype(object), [value]]


# ---------------------------------------------------------------------------- threshold
@pytest.mark.parametrize("threshold", [float("nan"), float("inf"), -float("inf"), True,
                                       "0.5"])
def test_threshold_must_be_a_finite_number(threshold):
    with pytest.raises(ValueError, match=rf"threshold must be a finite number; got "
                                         rf"{threshold!r}"):
        clinical_report(Y, SCORE, pos_label="p", threshold=threshold, n_bootstraps=0)


@pytest.mark.parametrize("threshold, side", [(1.5, "negative"), (-0.1, "positive")])
def test_threshold_outside_unit_interval_refused_for_probabilities(threshold, side):
    with pytest.raises(ValueError, match=rf"threshold={threshold} is outside \[0, 1\], "
                                         rf".*every case would be predicted {side}"):
        clinical_report(Y, PROBA, pos_label="p", threshold=threshold, n_bootstraps=0)


def test_threshold_range_valid_values():
    # a 1-D score is any real score: a threshold beyond [0, 1] is allowed there
    high = clinical_report(Y, 10 * SCORE, pos_label="p", threshold=5.0, n_bootstraps=0)
    assert 0 < high.overall["sensitivity"].value < 1
    for threshold in (0, 1.0):  # the ends of [0, 1] are valid for probabilities
        report = clinical_report(Y, PROBA, pos_label="p", threshold=threshold,
                                 n_bootstraps=0)
        assert report.threshold == threshold


# ------------------------------------------------------------------------------- labels
@pytest.mark.parametrize("y_true", [
    _with_last(Y, None),
    _with_last(Y, np.nan),
    [*Y[:-1].tolist(), float("nan")],  # a list: numpy would make the NaN the string 'nan'
    np.r_[np.tile([0.0, 1.0], 9), [1.0], [np.nan]],  # a float array
], ids=["None", "NaN", "list-NaN", "float-NaN"])
def test_report_missing_y_true_label_names_the_row(y_true):
    pos_label = 1.0 if np.asarray(y_true).dtype.kind == "f" else "p"
    with pytest.raises(ValueError, match=r"y_true has missing labels \(None or NaN\) at "
                                         r"rows \[19\]"):
        clinical_report(y_true, SCORE, pos_label=pos_label, n_bootstraps=0)


def test_report_labels_and_mixed_types():
    with pytest.raises(ValueError, match=r"labels has missing labels \(None or NaN\) at "
                                         r"rows \[1\]"):
        clinical_report(Y, PROBA, labels=["n", None], pos_label="n", n_bootstraps=0)
    with pytest.raises(ValueError, match=r"y_true mixes label types \['int', 'str'\] "
                                         r"\(e.g. row 19: 1\)"):
        clinical_report(_with_last(Y, 1), SCORE, pos_label="p", n_bootstraps=0)


@pytest.mark.parametrize("metric", [sensitivity_score, specificity_score])
@pytest.mark.parametrize("which", ["y_true", "y_pred"])
@pytest.mark.parametrize("missing", [None, np.nan])
def test_metric_missing_label_names_argument_and_row(metric, which, missing):
    y = {"y_true": Y, "y_pred": Y, which: _with_last(Y, missing)}
    with pytest.raises(ValueError, match=rf"{which} has missing labels \(None or NaN\) "
                                         r"at rows \[19\]"):
        metric(y["y_true"], y["y_pred"], pos_label="p")


def test_metric_mixed_label_types_names_the_row():
    with pytest.raises(ValueError, match=r"y_pred mixes label types \['int', 'str'\]"):
        specificity_score(Y, _with_last(Y, 0), pos_label="p")


@pytest.mark.parametrize("zero_division", ["foo", 5, None])
def test_specificity_zero_division_validated_as_recall_score(zero_division):
    with pytest.raises(ValueError, match="The 'zero_division' parameter of "
                                         "specificity_score must be"):
        specificity_score(["p", "p"], ["p", "p"], pos_label="p",
                          zero_division=zero_division)
    assert np.isnan(specificity_score(["p", "p"], ["p", "p"], pos_label="p",
                                      zero_division=np.nan))


# ------------------------------------------------------------------- bootstrap settings
@pytest.mark.parametrize("n_bootstraps", [True, 2.0, -1, "10"])
def test_n_bootstraps_must_be_a_non_negative_int(n_bootstraps):
    with pytest.raises(ValueError, match=rf"n_bootstraps must be a non-negative int; got "
                                         rf"{n_bootstraps!r}"):
        clinical_report(Y, SCORE, pos_label="p", n_bootstraps=n_bootstraps)


@pytest.mark.parametrize("confidence", ["0.9", None, True, float("nan"), 1])
def test_confidence_must_be_a_number_in_unit_interval(confidence):
    with pytest.raises(ValueError, match=rf"confidence must be a number in \(0, 1\); got "
                                         rf"{confidence!r}"):
        clinical_report(Y, SCORE, pos_label="p", n_bootstraps=5, confidence=confidence)


def test_huge_n_bootstraps_refused_before_allocating():
    # every resample's metrics are kept: 10**12 of them need hundreds of TiB
    with pytest.raises(MemoryError, match=r"n_bootstraps=1000000000000 \(20 cases, 2 "
                                          r"labels\) needs about .* TiB"):
        clinical_report(Y, SCORE, pos_label="p", n_bootstraps=10 ** 12)


def test_n_bootstraps_checked_against_available_memory(monkeypatch):
    monkeypatch.setattr(validation, "available_memory", lambda: 1 << 20)  # 1 MiB
    with pytest.raises(MemoryError, match=r"n_bootstraps=10000 .* only 1.0 MiB of "
                                          r"memory is available; pass a smaller "
                                          r"n_bootstraps"):
        clinical_report(Y, SCORE, pos_label="p", n_bootstraps=10 ** 4)
    report = clinical_report(Y, SCORE, pos_label="p", n_bootstraps=100, random_state=0)
    assert report.overall["roc_auc"].n_resamples == 100
