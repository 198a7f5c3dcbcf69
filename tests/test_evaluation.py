import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.utils import Bunch

from cxr_estimators.evaluation import external_validate, grouped_cv
from cxr_estimators.metrics import ClinicalReport


def _data(n, seed, shift=1.0):
    rng = np.random.default_rng(seed)
    target = rng.integers(0, 2, n)
    X = rng.normal(size=(n, 4)) + shift * target[:, None]
    return X, target


def test_grouped_cv_keeps_groups_apart():
    cv = grouped_cv(4, random_state=0)
    assert isinstance(cv, StratifiedGroupKFold)
    assert cv.shuffle and cv.n_splits == 4 and cv.random_state == 0
    X, y = _data(80, 0)
    groups = np.repeat(np.arange(20), 4)
    splits = list(cv.split(X, y, groups))
    for train, test in splits:
        assert not set(groups[train]) & set(groups[test])
    again = list(grouped_cv(4, random_state=0).split(X, y, groups))
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(splits, again))


def test_external_validate_tuples_and_bunches():
    X, target = _data(200, 0)
    names = np.array(["normal", "pneumonia"])
    clf = LogisticRegression().fit(X, names[target])
    Xa, ta = _data(120, 1)
    Xb, tb = _data(90, 2, shift=0.5)
    reports = external_validate(
        clf,
        {"site_a": (Xa, names[ta]),
         "site_b": Bunch(images=Xb, target=tb, target_names=["normal", "pneumonia"])},
        pos_label="pneumonia", n_bootstraps=100, random_state=0)
    assert list(reports) == ["site_a", "site_b"]
    assert all(isinstance(r, ClinicalReport) for r in reports.values())
    assert reports["site_a"].pos_label == "pneumonia"
    assert reports["site_b"].overall["roc_auc"].value == pytest.approx(
        roc_auc_score(tb, clf.predict_proba(Xb)[:, 1]))
    assert reports["site_b"].n_samples == 90
    # pos_label flips sensitivity and specificity
    flipped = external_validate(clf, {"a": (Xa, names[ta])}, pos_label="normal",
                                n_bootstraps=0)["a"]
    assert flipped.overall["sensitivity"].value == pytest.approx(
        reports["site_a"].overall["specificity"].value)


def test_external_validate_filenames_and_integer_model():
    X, target = _data(100, 0)
    clf = LogisticRegression().fit(X, target)  # integer classes: targets stay integers
    # filenames win over images (images here would fail: wrong width)
    bunch = Bunch(filenames=X, images=X[:, :2], target=target, target_names=["n", "p"])
    report = external_validate(clf, {"files": bunch}, n_bootstraps=0)["files"]
    assert report.labels == [0, 1]


def test_external_validate_string_classes_need_pos_label():
    X, target = _data(60, 0)
    clf = LogisticRegression().fit(X, np.array(["normal", "pneumonia"])[target])
    with pytest.raises(ValueError, match=r"classes are \['normal', 'pneumonia'\] and "
                                         "pos_label is not given"):
        external_validate(clf, {"site_a": (X, clf.classes_[target])}, n_bootstraps=0)


def test_external_validate_unknown_label():
    X, target = _data(60, 0)
    clf = LogisticRegression().fit(X, np.array(["normal", "pneumonia"])[target])
    y = np.array(["normal", "viral"])[target]
    with pytest.raises(ValueError, match=r"dataset 'site_c' has label\(s\) \['viral'\]"):
        external_validate(clf, {"site_c": (X, y)}, n_bootstraps=0)
    with pytest.raises(ValueError, match="'bad'.*tuple or a Bunch"):
        external_validate(clf, {"bad": [X, y]}, n_bootstraps=0)
