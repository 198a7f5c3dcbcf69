"""Bad multilabel input: exception (or warning) type and a message fragment naming the
finding, for each case of issue 25's list, and a fitted model left as it was."""

import numpy as np
import pandas as pd
import pytest

from cxr_estimators import CXRClassifier
from cxr_estimators.explain import grad_cam
from cxr_estimators.metrics import clinical_report
from cxr_estimators.thresholds import tune_thresholds

FINDINGS = ["Atelectasis", "Effusion", "Edema"]
rng = np.random.default_rng(0)
X = rng.normal(size=(24, 1, 16, 16)).astype(np.float32)
Y = pd.DataFrame((rng.random((24, 3)) < 0.5).astype(float), columns=FINDINGS)
Y.iloc[0] = [1, 0, 1]
Y.iloc[1] = [0, 1, 0]


def with_column(name, values):
    out = Y.copy()
    out[name] = values
    return out


def small(**params):
    return CXRClassifier(**{"backbone": "simple_cnn", "max_epochs": 1, "random_state": 0,
                            "validation_fraction": 0, "early_stopping": None, **params})


UNCERTAIN = with_column("Edema", np.r_[-1.0, Y["Edema"].to_numpy()[1:]])

#: (id, params, y, fit kwargs, error type, message fragment)
BAD_FITS = [
    ("value not 0/1/NaN/-1", {}, with_column("Edema", np.r_[2.0, Y["Edema"][1:]]), {},
     ValueError, r"column 'Edema' has the value 2.0 at row 0"),
    ("text value", {}, with_column("Effusion", ["yes"] + [0.0] * 23), {},
     ValueError, r"column 'Effusion' has a value 'yes' that is not a number"),
    ("-1 without a policy", {}, UNCERTAIN, {}, ValueError,
     r"column 'Edema' has 1 uncertain labels \(-1\) and no policy.*'ignore', 'zeros', "
     r"'ones'"),
    ("uncertain names an unknown finding", {"uncertain": {"Edemma": "ones"}}, UNCERTAIN, {},
     ValueError, r"uncertain names a finding 'Edemma'.*did you mean 'Edema'"),
    ("unknown policy", {"uncertain": {"Edema": "one"}}, UNCERTAIN, {}, ValueError,
     r"uncertain\['Edema'\]='one' is not one of .*did you mean 'ones'"),
    ("all-NaN finding", {}, with_column("Edema", np.nan), {}, ValueError,
     r"column 'Edema' has no labels \(all NaN\)"),
    ("y_val with other columns", {}, Y,
     {"X_val": X[:6], "y_val": Y.iloc[:6].rename(columns={"Edema": "Oedema"})},
     ValueError, r"y_val has findings \['Atelectasis', 'Effusion', 'Oedema'\] but y has"),
    ("y_val 1-D for multilabel y", {}, Y, {"X_val": X[:6], "y_val": np.zeros(6)},
     ValueError, r"y_val has shape \(6,\) but y has 3 findings"),
    ("monitor f1 on multilabel", {"early_stopping": {"patience": 2, "monitor": "f1"}}, Y, {},
     ValueError, r"monitor='f1' is for single-label y.*'loss' or 'roc_auc'"),
    ("unknown monitored finding", {"early_stopping": {"patience": 2, "monitor": "roc_auc",
                                                      "finding": "Efusion"}}, Y, {},
     ValueError, r"finding='Efusion' is not one of y's findings.*did you mean 'Effusion'"),
    ("balanced sampling", {"sampling": "balanced"}, Y, {}, ValueError,
     r"sampling='balanced' balances the classes of a 1-D y.*class_weight='balanced'"),
    ("class_weight naming an unknown finding", {"class_weight": {"Efusion": 2.0}}, Y, {},
     ValueError, r"class_weight names a finding 'Efusion'.*did you mean 'Effusion'"),
]


@pytest.mark.parametrize("params, y, kwargs, error, fragment",
                         [case[1:] for case in BAD_FITS], ids=[c[0] for c in BAD_FITS])
def test_bad_multilabel_fit(params, y, kwargs, error, fragment):
    with pytest.raises(error, match=fragment):
        small(**params).fit(X, y, **kwargs)


def test_finding_without_positives_warns():
    with pytest.warns(UserWarning, match=r"column 'Edema' has no positive label"):
        small().fit(X, with_column("Edema", 0.0))


@pytest.fixture(scope="module")
def fitted():
    return small().fit(X, Y)


def test_warm_start_other_width_leaves_model(fitted):
    before = fitted.predict_proba(X)
    fitted.set_params(warm_start=True)
    try:
        with pytest.raises(ValueError, match=r"warm_start=True: y has findings "
                                             r"\['Atelectasis', 'Effusion'\] but the fitted "
                                             r"model has findings \['Atelectasis', "
                                             r"'Effusion', 'Edema'\]"):
            fitted.fit(X, Y[["Atelectasis", "Effusion"]])
        with pytest.raises(ValueError, match="y has one label per image but the fitted"):
            fitted.fit(X, np.r_[["a", "b"] * 12])
    finally:
        fitted.set_params(warm_start=False)
    np.testing.assert_array_equal(fitted.predict_proba(X), before)


def test_grad_cam_unknown_finding(fitted):
    with pytest.raises(ValueError, match=r"target 'Pleural Effusion' is not in findings_ "
                                         r".*did you mean 'Effusion'"):
        grad_cam(fitted, X[:2], target="Pleural Effusion", layer="trunk.features.1")


def test_thresholds_unknown_finding_and_range(fitted):
    with pytest.raises(ValueError, match=r"thresholds names a finding 'Edem'.*did you mean"):
        fitted.set_params(thresholds={"Edem": 0.3}).predict(X)
    with pytest.raises(ValueError, match=r"thresholds has shape \(2,\); expected one number, "
                                         r"3 numbers"):
        fitted.set_params(thresholds=[0.2, 0.3]).predict(X)
    fitted.set_params(thresholds=None)


def test_report_and_tuner_bad_input(fitted):
    proba = fitted.predict_proba(X)
    with pytest.raises(ValueError, match=r"y_score has shape \(24, 2\) but y_true has "
                                         r"\(24, 3\)"):
        clinical_report(Y, proba[:, :2])
    with pytest.raises(ValueError, match="groups= and uncertain= are supported for "
                                         "multilabel"):
        clinical_report(Y["Edema"], proba[:, 2], groups=np.arange(24))
    with pytest.raises(ValueError, match="exactly one of sensitivity= and specificity="):
        tune_thresholds(fitted, X, Y)
    with pytest.raises(ValueError, match=r"sensitivity must be a number in \(0, 1\]"):
        tune_thresholds(fitted, X, Y, sensitivity=1.5)
    with pytest.warns(UserWarning, match="finding 'Edema' has no positive labelled image"):
        tune_thresholds(fitted, X, with_column("Edema", 0.0), sensitivity=0.9)


def test_score_is_subset_accuracy_and_names_missing_labels(fitted):
    """score() of a multilabel model: sklearn's subset accuracy; missing labels or other
    findings are errors naming them (the single-label unseen-labels check does not apply)."""
    expected = float(np.mean((fitted.predict(X) == Y.to_numpy()).all(axis=1)))
    assert fitted.score(X, Y) == pytest.approx(expected)
    with pytest.raises(ValueError, match=r"score: y has missing \(NaN\)"):
        fitted.score(X, with_column("Edema", np.r_[np.nan, Y["Edema"].to_numpy()[1:]]))
    with pytest.raises(ValueError, match="Edema"):
        fitted.score(X, Y.drop(columns="Edema"))
