import json
import re
import warnings

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score, recall_score, roc_auc_score
from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_validate

from cxr_estimators.metrics import (
    ClinicalReport, _weighted_auc, clinical_report, clinical_scorers, sensitivity_score,
    specificity_score,
)

# Binary, by hand: y_true / y_pred below give TP=3, FN=1, FP=2, TN=4.
Y_BIN = np.array(["pneu"] * 4 + ["norm"] * 6)
P_BIN = np.array(["pneu", "pneu", "pneu", "norm", "pneu", "pneu", "norm", "norm", "norm",
                  "norm"])
# 3-class, by hand. Confusion matrix (rows true a, b, c; columns predicted a, b, c):
#   a: [2, 1, 0]   b: [1, 3, 1]   c: [0, 1, 3]
Y3 = np.array(list("aaabbbbbcccc"))
P3 = np.array(list("aab" "abbbc" "bccc"))


def _samples(n, seed, classes=("normal", "pneumonia")):
    """Scores drawn from one fixed distribution: AUC ~0.8, any n."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    score = 1 / (1 + np.exp(-(rng.normal(size=n) + 1.2 * (2 * y - 1))))
    return np.asarray(classes)[y], score


def test_binary_by_hand():
    assert sensitivity_score(Y_BIN, P_BIN, pos_label="pneu") == pytest.approx(3 / 4)
    assert specificity_score(Y_BIN, P_BIN, pos_label="pneu") == pytest.approx(4 / 6)
    # specificity of one class is the sensitivity of the other
    assert specificity_score(Y_BIN, P_BIN, pos_label="norm") == pytest.approx(3 / 4)
    y01, p01 = (Y_BIN == "pneu").astype(int), (P_BIN == "pneu").astype(int)
    assert specificity_score(y01, p01) == pytest.approx(4 / 6)  # default pos_label=1


def test_multiclass_by_hand():
    sens = [2 / 3, 3 / 5, 3 / 4]
    # TN/(TN+FP) per class: a: TN=8, FP=1; b: TN=5, FP=2; c: TN=7, FP=1
    spec = [8 / 9, 5 / 7, 7 / 8]
    np.testing.assert_allclose(sensitivity_score(Y3, P3, average=None), sens)
    np.testing.assert_allclose(specificity_score(Y3, P3, average=None), spec)
    assert specificity_score(Y3, P3, average="macro") == pytest.approx(np.mean(spec))
    assert specificity_score(Y3, P3, average="weighted") == pytest.approx(
        np.average(spec, weights=[3, 5, 4]))
    assert specificity_score(Y3, P3, average="micro") == pytest.approx(20 / 24)
    np.testing.assert_allclose(specificity_score(Y3, P3, labels=["c", "a"], average=None),
                               [spec[2], spec[0]])


@pytest.mark.parametrize("average", [None, "macro", "weighted", "micro"])
def test_sensitivity_agrees_with_recall_score(average):
    rng = np.random.default_rng(1)
    y, p = rng.choice(list("xyz"), 80), rng.choice(list("xyz"), 80)
    w = rng.random(80)
    np.testing.assert_allclose(
        sensitivity_score(y, p, average=average, sample_weight=w),
        recall_score(y, p, average=average, sample_weight=w))
    # specificity = recall of "not k" in the one-vs-rest problem
    if average is None:
        expected = [recall_score(y != k, p != k, sample_weight=w) for k in "xyz"]
        np.testing.assert_allclose(specificity_score(y, p, average=None, sample_weight=w),
                                   expected)


def test_specificity_bad_input():
    with pytest.raises(ValueError, match="pos_label=1 is not a valid label"):
        specificity_score(Y_BIN, P_BIN)
    with pytest.raises(ValueError, match="average='binary'"):
        specificity_score(Y3, P3)
    with pytest.raises(ValueError, match="average has to be one of"):
        specificity_score(Y3, P3, average="samples")
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        specificity_score(Y_BIN, P_BIN[:-1], pos_label="pneu")
    with pytest.warns(UserWarning, match="ill-defined"):
        assert specificity_score(["p", "p"], ["p", "p"], pos_label="p") == 0.0


# ------------------------------------------------------------------------------ report
def test_report_binary_matches_hand_and_sklearn():
    score = np.where(P_BIN == "pneu", 0.7, 0.2) + np.linspace(0, 0.05, 10)
    report = clinical_report(Y_BIN, score, pos_label="pneu", n_bootstraps=200,
                             random_state=0)
    assert isinstance(report, ClinicalReport)
    assert report.labels == ["norm", "pneu"]
    # confusion matrix rows follow labels: norm (TN=4, FP=2), pneu (FN=1, TP=3)
    assert report.confusion_matrix.tolist() == [[4, 2], [1, 3]]
    o = report.overall
    assert o["sensitivity"].value == pytest.approx(3 / 4)
    assert o["specificity"].value == pytest.approx(4 / 6)
    assert o["ppv"].value == pytest.approx(3 / 5)
    assert o["npv"].value == pytest.approx(4 / 5)
    assert o["f1"].value == pytest.approx(f1_score(Y_BIN, P_BIN, pos_label="pneu"))
    assert o["accuracy"].value == pytest.approx(7 / 10)
    assert o["roc_auc"].value == pytest.approx(roc_auc_score(Y_BIN == "pneu", score))
    assert report.per_class["norm"]["sensitivity"].value == pytest.approx(4 / 6)
    # threshold moves the operating point
    low = clinical_report(Y_BIN, score, pos_label="pneu", threshold=0.0, n_bootstraps=0)
    assert low.overall["sensitivity"].value == 1.0
    assert low.overall["specificity"].value == 0.0


def test_report_default_pos_label_and_two_column_proba():
    y, score = _samples(200, 0, classes=(0, 1))
    one = clinical_report(y, score, n_bootstraps=50, random_state=0)
    two = clinical_report(y, np.column_stack([1 - score, score]), n_bootstraps=50,
                          random_state=0)
    assert one.pos_label == two.pos_label == 1  # {0, 1}: 1, as in scikit-learn
    assert one.to_dict() == two.to_dict()
    minus = clinical_report(np.where(y == 1, 1, -1), score, n_bootstraps=0)
    assert minus.pos_label == 1
    boolean = clinical_report(y == 1, score, n_bootstraps=0)
    assert boolean.pos_label is True
    assert boolean.overall["sensitivity"].value == one.overall["sensitivity"].value


@pytest.mark.parametrize("labels", [("normal", "pneumonia"), (1, 2)])
@pytest.mark.parametrize("two_columns", [False, True])
def test_report_without_pos_label_names_the_classes(labels, two_columns):
    """Strings (or any pair but {0, 1} / {-1, 1}) do not say which class is positive;
    guessing labels[1] would silently swap sensitivity and specificity."""
    y, score = _samples(40, 0, classes=labels)
    if two_columns:
        score = np.column_stack([1 - score, score])
    expected = re.escape(f"the classes are {list(labels)} and pos_label is not given")
    with pytest.raises(ValueError, match=expected):
        clinical_report(y, score, n_bootstraps=0)
    report = clinical_report(y, score, pos_label=labels[1], n_bootstraps=0)
    assert report.pos_label == labels[1]


def test_report_multiclass_matches_hand_and_sklearn():
    rng = np.random.default_rng(0)
    proba = rng.dirichlet([1, 1, 1], len(Y3))
    idx = {"a": 0, "b": 1, "c": 2}
    proba[np.arange(len(P3)), [idx[v] for v in P3]] += 2  # argmax = P3
    proba /= proba.sum(axis=1, keepdims=True)
    report = clinical_report(Y3, proba, n_bootstraps=200, random_state=0)
    assert report.confusion_matrix.tolist() == [[2, 1, 0], [1, 3, 1], [0, 1, 3]]
    assert report.per_class["b"]["specificity"].value == pytest.approx(5 / 7)
    assert report.per_class["c"]["ppv"].value == pytest.approx(3 / 4)
    assert report.per_class["a"]["npv"].value == pytest.approx(8 / 9)
    # multiclass: the per-class rows are not repeats, so the table keeps them
    firsts = [line.split()[0] for line in str(report).splitlines()
              if len(line.split()) > 2 and line.split()[1] == "sensitivity"]
    assert firsts == ["overall", "a", "b", "c"]
    assert report.overall["sensitivity"].value == pytest.approx(
        recall_score(Y3, P3, average="macro"))
    assert report.overall["f1"].value == pytest.approx(f1_score(Y3, P3, average="macro"))
    assert report.overall["roc_auc"].value == pytest.approx(
        roc_auc_score(Y3, proba, multi_class="ovr", average="macro"))
    assert report.per_class["a"]["roc_auc"].value == pytest.approx(
        roc_auc_score(Y3 == "a", proba[:, 0]))
    assert report.overall["accuracy"].value == pytest.approx(8 / 12)
    assert report.pos_label is None and report.threshold is None


def test_bootstrap_auc_equals_sklearn_on_resamples():
    rng = np.random.default_rng(3)
    score = np.round(rng.random(60), 1)  # many ties
    positive = rng.random(60) < 0.4
    weights = rng.integers(0, 3, (5, 60)).astype(float)
    got = _weighted_auc(score, positive, weights, np.argsort(score, kind="stable"))
    expected = [roc_auc_score(positive, score, sample_weight=w) for w in weights]
    np.testing.assert_allclose(got, expected)


def _report(y_score_pair, **kwargs):
    return clinical_report(*y_score_pair, pos_label="pneumonia", **kwargs)


def test_ci_contains_point_shrinks_and_is_reproducible():
    small = _report(_samples(100, 0), n_bootstraps=300, random_state=0)
    large = _report(_samples(2000, 1), n_bootstraps=300, random_state=0)
    for report in (small, large):
        for metric, est in report.overall.items():
            assert est.ci_low <= est.value <= est.ci_high, metric
            assert est.n_resamples == 300
    for metric in ("sensitivity", "specificity", "roc_auc", "accuracy"):
        width = {name: r.overall[metric].ci_high - r.overall[metric].ci_low
                 for name, r in (("small", small), ("large", large))}
        assert width["large"] < width["small"] / 2, metric  # ~ 1/sqrt(20)
    again = _report(_samples(100, 0), n_bootstraps=300, random_state=0)
    assert again.to_dict() == small.to_dict()
    other = _report(_samples(100, 0), n_bootstraps=300, random_state=1)
    assert other.overall["roc_auc"].ci_low != small.overall["roc_auc"].ci_low
    wide = _report(_samples(100, 0), n_bootstraps=300, confidence=0.99, random_state=0)
    assert wide.overall["roc_auc"].ci_low < small.overall["roc_auc"].ci_low


def test_undefined_resamples_are_skipped_and_counted():
    # one positive in 30 cases: many resamples have no positive -> sensitivity/AUC undefined
    y = np.array([1] + [0] * 29)
    score = np.linspace(0.9, 0.0, 30)
    report = clinical_report(y, score, n_bootstraps=400, random_state=0)
    sens, auc, acc = (report.overall[m] for m in ("sensitivity", "roc_auc", "accuracy"))
    expected = 400 * (1 - (29 / 30) ** 30)  # P(resample holds the positive) ~ 0.64
    assert abs(sens.n_resamples - expected) < 40
    assert auc.n_resamples == sens.n_resamples
    assert acc.n_resamples == 400
    assert np.isfinite(sens.ci_low)


def test_single_class_y_true_gives_nan_auc_with_warning():
    with pytest.warns(UserWarning, match="ROC AUC is undefined for class"):
        report = clinical_report(["pneumonia"] * 5, [0.9, 0.8, 0.3, 0.7, 0.6],
                                 labels=["normal", "pneumonia"], pos_label="pneumonia",
                                 n_bootstraps=20,
                                 random_state=0)
    assert np.isnan(report.overall["roc_auc"].value)
    assert report.overall["roc_auc"].n_resamples == 0
    assert report.overall["sensitivity"].value == pytest.approx(4 / 5)
    assert np.isnan(report.overall["specificity"].value)


@pytest.mark.parametrize("kwargs, match", [
    (dict(y_true=["a", "b", "a"], y_score=[0.1, 0.9]), "3 samples but y_score has 2"),
    (dict(y_true=["a", "b", "c"], y_score=[0.1, 0.9, 0.5], labels=["a", "b"]),
     r"label\(s\) \['c'\] not in labels"),
    (dict(y_true=["a", "b", "c"], y_score=[[0.2, 0.8], [0.5, 0.5], [0.6, 0.4]]),
     "2 columns but there are 3 labels"),
    (dict(y_true=["a", "b"], y_score=[[0.2, 0.7], [0.5, 0.5]]), "row 0 sums to 0.9000"),
    (dict(y_true=["a", "b"], y_score=[[0.5, 0.5], [1.5, -0.5]]),
     r"probabilities in \[0, 1\]; 1 rows do not, e.g. row 1"),
    (dict(y_true=["a", "b", "c"], y_score=[0.1, 0.9, 0.5]), "1-D y_score is a binary"),
    (dict(y_true=["a", "a"], y_score=[0.1, 0.9]), "single class"),
    (dict(y_true=["a", "b"], y_score=[0.1, 0.9], pos_label="c"), "pos_label='c'"),
    (dict(y_true=list("abc"), y_score=np.eye(3), threshold=0.3), "binary problems only"),
    (dict(y_true=["a", "b"], y_score=[np.nan, 0.9]), "NaN"),
])
def test_report_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        clinical_report(**kwargs, n_bootstraps=10)


def test_report_str_dict_frame():
    report = _report(_samples(150, 2), n_bootstraps=100, random_state=0)
    text = str(report)
    assert "positive class 'pneumonia'" in text and "95% CI" in text
    auc = report.overall["roc_auc"]
    assert f"{auc.value:.3f}  [{auc.ci_low:.3f}, {auc.ci_high:.3f}]" in text
    assert "confusion matrix" in text
    # binary: each figure once (the per-class rows would repeat them: 19 rows -> 7)
    metrics = {"sensitivity", "specificity", "ppv", "npv", "f1", "roc_auc", "accuracy"}
    rows = [line for line in text.splitlines() if len(line.split()) > 1
            and line.split()[1] in metrics]
    assert [r.split()[0] for r in rows] == ["overall"] * 7, rows
    assert text.count(f"{auc.value:.3f}  [") == 1
    data = json.loads(json.dumps(report.to_dict()))
    assert data["per_class"]["normal"]["sensitivity"]["value"] == pytest.approx(
        report.per_class["normal"]["sensitivity"].value)
    assert data["confusion_matrix"] == report.confusion_matrix.tolist()
    assert type(data["overall"]["f1"]["n_resamples"]) is int
    try:
        import pandas  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install pandas"):
            report.to_frame()
    else:
        frame = report.to_frame()
        assert list(frame.columns) == ["class", "metric", "value", "ci_low", "ci_high",
                                       "n_resamples"]
        assert len(frame) == 7 + 2 * 6


# ----------------------------------------------------------------------------- scorers
def _toy_xy(classes, n=90, seed=0):
    rng = np.random.default_rng(seed)
    k = rng.integers(0, len(classes), n)
    X = rng.normal(size=(n, 3)) + 1.5 * np.eye(len(classes), 3)[k]
    return X, np.asarray(classes)[k]


def test_scorers_binary_cross_validate_string_labels():
    X, y = _toy_xy(["normal", "pneumonia"])
    cv = StratifiedKFold(3, shuffle=True, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a failing scorer would warn and give NaN
        res = cross_validate(LogisticRegression(), X, y, cv=cv,
                             scoring=clinical_scorers(pos_label="pneumonia"),
                             return_estimator=True)
    for i, (train, test) in enumerate(cv.split(X, y)):
        est = res["estimator"][i]
        pred, proba = est.predict(X[test]), est.predict_proba(X[test])[:, 1]
        assert res["test_sensitivity"][i] == pytest.approx(
            recall_score(y[test], pred, pos_label="pneumonia"))
        assert res["test_specificity"][i] == pytest.approx(
            recall_score(y[test], pred, pos_label="normal"))
        assert res["test_roc_auc"][i] == pytest.approx(
            roc_auc_score(y[test] == "pneumonia", proba))
    # pos_label="normal" swaps sensitivity and specificity; AUC unchanged
    swapped = cross_validate(LogisticRegression(), X, y, cv=cv,
                             scoring=clinical_scorers(pos_label="normal"))
    np.testing.assert_allclose(swapped["test_sensitivity"], res["test_specificity"])
    np.testing.assert_allclose(swapped["test_roc_auc"], res["test_roc_auc"])


def test_scorers_string_labels_without_pos_label_name_the_classes():
    X, y = _toy_xy(["normal", "pneumonia"])
    est = LogisticRegression().fit(X, y)
    scorers = clinical_scorers()
    for name in ("sensitivity", "specificity", "f1"):
        with pytest.raises(ValueError, match=re.escape(
                "the classes are ['normal', 'pneumonia'] and pos_label is not given")):
            scorers[name](est, X, y)
    # symmetric in the two classes: no positive class needed
    assert scorers["accuracy"](est, X, y) == pytest.approx(est.score(X, y))
    assert scorers["roc_auc"](est, X, y) == pytest.approx(
        roc_auc_score(y == "pneumonia", est.predict_proba(X)[:, 1]))
    # {0, 1} names its positive class, as in scikit-learn
    y01 = (y == "pneumonia").astype(int)
    est01 = LogisticRegression().fit(X, y01)
    assert scorers["sensitivity"](est01, X, y01) == pytest.approx(
        recall_score(y01, est01.predict(X)))
    # sklearn's own f1_score asks the same of string labels
    with pytest.raises(ValueError, match="pos_label=1 is not a valid label"):
        f1_score(y, est.predict(X))
    with pytest.raises(ValueError, match="pos_label=1 is not a valid label"):
        sensitivity_score(y, est.predict(X))


def test_per_class_scorers_multiclass():
    X, y = _toy_xy(["bacterial", "normal", "viral"], n=150)
    est = LogisticRegression().fit(X, y)
    scores = clinical_scorers(per_class=True)(est, X, y)
    pred, proba = est.predict(X), est.predict_proba(X)
    assert set(scores) == {"accuracy", "sensitivity", "specificity", "f1", "roc_auc"} | {
        f"{m}_{c}" for m in ("sensitivity", "specificity", "f1", "roc_auc")
        for c in ("bacterial", "normal", "viral")}
    for k, c in enumerate(["bacterial", "normal", "viral"]):
        assert scores[f"sensitivity_{c}"] == pytest.approx(
            recall_score(y == c, pred == c))
        assert scores[f"specificity_{c}"] == pytest.approx(
            recall_score(y != c, pred != c))
        assert scores[f"f1_{c}"] == pytest.approx(f1_score(y == c, pred == c))
        assert scores[f"roc_auc_{c}"] == pytest.approx(roc_auc_score(y == c, proba[:, k]))
    overall = {name: s(est, X, y) for name, s in clinical_scorers().items()}
    assert {name: scores[name] for name in overall} == pytest.approx(overall)
    # per-class sensitivities differ here, so the test below could fail
    assert len({round(scores[f"sensitivity_{c}"], 6) for c in ("bacterial", "normal",
                                                                "viral")}) > 1


def test_per_class_scorers_in_gridsearch_refit_by_class():
    X, y = _toy_xy(["bacterial", "normal", "viral"], n=120)
    search = GridSearchCV(LogisticRegression(), {"C": [0.001, 1.0]}, cv=3,
                          scoring=clinical_scorers(per_class=True),
                          refit="sensitivity_viral", error_score="raise").fit(X, y)
    means = search.cv_results_["mean_test_sensitivity_viral"]
    assert search.best_index_ == int(np.argmax(means))
    assert "mean_test_roc_auc_bacterial" in search.cv_results_
    res = cross_validate(LogisticRegression(), X, y, cv=3,
                         scoring=clinical_scorers(per_class=True))
    assert np.all(np.isfinite(res["test_specificity_normal"]))


def test_per_class_scorers_binary_and_bad_input():
    X, y = _toy_xy(["normal", "pneumonia"])
    est = LogisticRegression().fit(X, y)
    scores = clinical_scorers("pneumonia", per_class=True)(est, X, y)
    assert scores["sensitivity_pneumonia"] == pytest.approx(scores["sensitivity"])
    assert scores["sensitivity_normal"] == pytest.approx(scores["specificity"])
    assert scores["roc_auc_normal"] == pytest.approx(scores["roc_auc"])
    with pytest.raises(ValueError, match="pos_label is not given"):
        clinical_scorers(per_class=True)(est, X, y)
    with pytest.raises(ValueError, match="per_class must be True or False; got 'yes'"):
        clinical_scorers(per_class="yes")


def test_scorers_multiclass_gridsearch_refit_roc_auc():
    X, y = _toy_xy(["bacterial", "normal", "viral"], n=120)
    search = GridSearchCV(LogisticRegression(), {"C": [0.01, 1.0]}, cv=3,
                          scoring=clinical_scorers(), refit="roc_auc", error_score="raise")
    search.fit(X, y)
    assert search.best_params_ in ({"C": 0.01}, {"C": 1.0})
    scorers = clinical_scorers()
    est = search.best_estimator_
    assert scorers["roc_auc"](est, X, y) == pytest.approx(
        roc_auc_score(y, est.predict_proba(X), multi_class="ovr"))
    assert scorers["sensitivity"](est, X, y) == pytest.approx(
        recall_score(y, est.predict(X), average="macro"))
    assert scorers["specificity"](est, X, y) == pytest.approx(
        specificity_score(y, est.predict(X), average="macro"))
    for name in ("accuracy", "sensitivity", "specificity", "f1", "roc_auc"):
        assert np.all(np.isfinite(search.cv_results_[f"mean_test_{name}"]))


def test_scorer_unknown_pos_label():
    X, y = _toy_xy(["normal", "pneumonia"])
    est = LogisticRegression().fit(X, y)
    with pytest.raises(ValueError, match="pos_label='viral' is not one of"):
        clinical_scorers(pos_label="viral")["sensitivity"](est, X, y)


def test_clinical_scorer_in_threshold_tuning_says_what_to_use_instead():
    from sklearn.model_selection import TunedThresholdClassifierCV

    X, y = _toy_xy(["normal", "pneumonia"])
    tuned = TunedThresholdClassifierCV(
        LogisticRegression(), scoring=clinical_scorers(pos_label="pneumonia")["f1"], cv=2)
    with pytest.raises(AttributeError, match=r"make_scorer\(sensitivity_score"):
        tuned.fit(X, y)


def test_fixed_threshold_around_fitted_pipeline_applies_the_threshold():
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    from sklearn.frozen import FrozenEstimator
    from sklearn.model_selection import FixedThresholdClassifier
    from sklearn.pipeline import make_pipeline

    from cxr_estimators import CXRClassifier, ImageLoader

    rng = np.random.default_rng(1)
    images = (rng.random((40, 16, 16)) * 255).astype(np.uint8)
    y = np.array(["normal", "pneumonia"] * 20)
    pipe = make_pipeline(ImageLoader(size=16), CXRClassifier(
        backbone="simple_cnn", max_epochs=1, neurons=8, validation_fraction=0.0,
        random_state=0)).fit(images, y)
    proba = pipe.predict_proba(images)[:, 1]
    threshold = float(np.median(proba))  # splits the images into two non-empty halves
    screen = FixedThresholdClassifier(FrozenEstimator(pipe), threshold=threshold,
                                      pos_label="pneumonia").fit(images, y)
    predicted = screen.predict(images)
    np.testing.assert_array_equal(predicted == "pneumonia", proba >= threshold)
    assert 0 < (predicted == "pneumonia").sum() < len(y)


def test_cxr_classifier_in_threshold_tuning_and_calibration():
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.metrics import make_scorer
    from sklearn.model_selection import TunedThresholdClassifierCV

    from cxr_estimators import CXRClassifier

    rng = np.random.default_rng(0)
    X = rng.random((40, 1, 16, 16), dtype=np.float32)
    y = np.array(["normal", "pneumonia"] * 20)
    X[y == "pneumonia", :, :6, :6] += 1.0
    cnn = CXRClassifier(backbone="simple_cnn", max_epochs=1, batch_size=16, neurons=8,
                        validation_fraction=0.0, random_state=0)
    tuned = TunedThresholdClassifierCV(
        cnn, scoring=make_scorer(sensitivity_score, pos_label="pneumonia"), cv=2,
        random_state=0).fit(X, y)
    assert 0.0 <= tuned.best_threshold_ <= 1.0
    assert set(tuned.predict(X)) <= {"normal", "pneumonia"}
    calibrated = CalibratedClassifierCV(cnn, cv=2).fit(X, y)
    proba = calibrated.predict_proba(X)
    assert proba.shape == (40, 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
    report = clinical_report(y, proba, labels=calibrated.classes_, pos_label="pneumonia",
                             n_bootstraps=50,
                             random_state=0)
    assert report.n_samples == 40
