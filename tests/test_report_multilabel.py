"""evaluation.report of a multi-label model: one set of sections per finding, each on the
test images labelled for it (NaN labels left out)."""

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from cxr_estimators import CXRClassifier
from cxr_estimators.evaluation import report
from cxr_estimators.metrics import clinical_report
from test_multilabel import FINDINGS, planted
from test_report import _lookup, _Page

pytestmark = pytest.mark.filterwarnings("ignore:Grad-CAM. layer:UserWarning")


@pytest.fixture(scope="module")
def fitted():
    X, Y = planted(n=120, seed=0, missing=0.2)
    clf = CXRClassifier(backbone="simple_cnn", max_epochs=3, batch_size=16, lr=3e-3,
                        early_stopping=None, random_state=0,
                        thresholds={"Effusion": 0.3}).fit(X[:80], Y.iloc[:80])
    # noisier test images: errors at the threshold and ROC AUCs below 1 to compare
    X[80:] += np.random.default_rng(1).normal(0, 1.0, X[80:].shape).astype(np.float32)
    return clf, X, Y


@pytest.fixture(scope="module")
def written(fitted, tmp_path_factory):
    """The report of three findings on 40 noisy test images from two sites."""
    path = tmp_path_factory.mktemp("report") / "multilabel.html"
    clf, X, Y = fitted
    return path, report(clf, X[80:], Y.iloc[80:], path, X_train=X[:80], y_train=Y.iloc[:80],
                        groups=np.tile(["site_a", "site_b"], 20), n_bootstraps=100,
                        n_gradcam=4, random_state=0)


def test_one_set_of_sections_per_finding_numbers_equal_the_json(written):
    path, data = written
    page = _Page()
    page.feed(path.read_text())
    assert json.loads(path.with_suffix(".json").read_text()) == data
    per_finding = [f"{part}.{name}" for name in FINDINGS
                   for part in ("performance", "thresholds", "subgroups", "gradcam")]
    assert page.sections == ["data", "model", *per_finding, "shift", "shortcut",
                             "study_team"]
    assert list(data["performance"]) == FINDINGS
    assert data["model"]["findings"] == FINDINGS
    text = path.read_text()
    for name in FINDINGS:
        for title in ("Performance", "Thresholds", "Subgroups", "Grad-CAM gallery"):
            assert f"<h2>{title}: {name}</h2>" in text
    assert "Not run for a multi-label model" in text and data["shortcut"]["run"] is False
    # training curves; per finding ROC, calibration, confusion matrix and 4 Grad-CAMs
    assert len(page.images) == 1 + 3 * (3 + 4)
    assert len(page.cells) > 100
    for key, text in page.cells:
        value = _lookup(data, key)
        expected = ("n/a" if value is None or value != value else str(value)
                    if isinstance(value, int) else
                    f"{value:.{4 if key.endswith('p_value') else 3}f}")
        assert text == expected, key


def test_each_finding_is_scored_on_its_labelled_rows_only(written, fitted):
    _, data = written
    clf, X, Y = fitted
    proba, Yt = clf.predict_proba(X[80:]), Y.iloc[80:].to_numpy()
    assert np.isnan(Yt).sum(axis=0).min() > 0  # every finding has missing labels
    for j, name in enumerate(FINDINGS):
        rows = ~np.isnan(Yt[:, j])
        y, score = Yt[rows, j].astype(int), proba[rows, j]
        threshold = 0.3 if name == "Effusion" else 0.5  # the model's own thresholds
        perf = data["performance"][name]
        assert perf["threshold"] == threshold and perf["n"] == rows.sum()
        rep = clinical_report(y, score, labels=[0, 1], pos_label=1, threshold=threshold,
                              n_bootstraps=100, random_state=0)
        for metric in ("sensitivity", "specificity", "ppv", "npv", "f1"):
            assert perf["metrics"][metric]["value"] == pytest.approx(
                rep.overall[metric].value, nan_ok=True), (name, metric)
        assert perf["metrics"]["roc_auc"]["value"] == pytest.approx(roc_auc_score(y, score))
        assert 0.5 < perf["metrics"]["roc_auc"]["value"] < 1
        assert perf["confusion_matrix"]["counts"] == rep.confusion_matrix.tolist()
        assert perf["confusion_matrix"]["labels"] == [f"no {name}", name]
        counts = data["data"]["splits"]["test"]["findings"][name]
        assert counts == {"labelled": int(rows.sum()), "positives": int((y == 1).sum()),
                          "missing": int((~rows).sum())}
        train = data["data"]["splits"]["train"]["findings"][name]
        assert train["missing"] == int(Y.iloc[:80, j].isna().sum())
        # the gallery indexes the test set, not the finding's labelled subset
        for image in data["gradcam"][name]["images"]:
            assert Yt[image["index"], j] == (image["true"] == name)
    assert data["shift"]["run"] and data["shift"]["per_class"] == {}


def test_threshold_argument_overrides_the_models(fitted, tmp_path):
    clf, X, Y = fitted
    data = report(clf, X[80:], Y.iloc[80:].to_numpy(), tmp_path / "r.html", threshold=0.4,
                  n_bootstraps=20, n_gradcam=0)
    assert [data["performance"][name]["threshold"] for name in FINDINGS] == [0.4] * 3
    assert data["shift"] == {"run": False}


@pytest.mark.parametrize("change, match", [
    (dict(pos_label=1), "pos_label=1 applies to binary models"),
    (dict(y_test=np.zeros(40)), r"y_test has shape \(40,\) but the model is multi-label"),
    (dict(y_test="renamed"), "y_test has findings .*'Edema', 'Effusion'"),
    (dict(y_test="twos"), "y_test column 'Effusion' has the value 2.0 at row 0"),
    (dict(threshold=2.0), r"threshold must be a probability in \[0, 1\]"),
])
def test_bad_input(fitted, tmp_path, change, match):
    clf, X, Y = fitted
    y_test = Y.iloc[80:].copy()
    kind = change.get("y_test")
    if isinstance(kind, str) and kind == "renamed":
        change["y_test"] = y_test[["Atelectasis", "Edema", "Effusion"]]
    elif isinstance(kind, str):
        y_test["Effusion"] = 2.0
        change["y_test"] = y_test
    with pytest.raises(ValueError, match=match):
        report(**{"model": clf, "X_test": X[80:], "y_test": y_test,
                  "path": tmp_path / "r.html", **change})
    assert not list(tmp_path.glob("r.*"))
