"""evaluation.report: the one-page HTML report and its JSON twin."""

import base64
import io
import json
import os
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image
from sklearn.exceptions import NotFittedError

from conftest import _toy_images
from cxr_estimators import CXRClassifier
from cxr_estimators.evaluation import report
from cxr_estimators.metrics import clinical_report

pytest.importorskip("matplotlib")


class _Page(HTMLParser):
    """Collects the page's images, its JSON-keyed number cells and its section ids."""

    def __init__(self):
        super().__init__()
        self.images, self.cells, self.sections, self.links = [], [], [], []
        self._key = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        if tag in ("link", "script") or (tag == "a" and "href" in attrs):
            self.links.append(attrs)
        if tag == "section":
            self.sections.append(attrs["id"])
        self._key = attrs.get("data-json") if tag == "td" else None

    def handle_data(self, data):
        if self._key is not None:
            self.cells.append((self._key, data))
            self._key = None


def _lookup(data, key):
    for part in key.split("."):
        data = data[int(part)] if isinstance(data, list) else data[part]
    return data


@pytest.fixture(scope="module")
def fitted():
    X, y = _toy_images(n=120, size=24)
    clf = CXRClassifier(backbone="simple_cnn", max_epochs=6, batch_size=16, neurons=16,
                        random_state=0, lr=1e-2).fit(X[:80], y[:80])
    return clf, X, y


@pytest.fixture(scope="module")
def written(fitted, tmp_path_factory):
    clf, X, y = fitted
    path = tmp_path_factory.mktemp("report") / "report.html"
    sites = np.array(["site_a", "site_b"])[np.arange(40) % 2]
    # two images per patient; patient "p40" has images in both sets (a leak)
    patients = np.array([f"p{i // 2}" for i in range(120)])
    data = report(clf, X[80:], y[80:], path, X_train=X[:80], y_train=y[:80], groups=sites,
                  patients=patients[80:], patients_train=np.r_[patients[:79], ["p40"]],
                  pos_label="pneumonia", n_bootstraps=200, n_gradcam=6, random_state=0)
    return path, data


def test_page_parses_images_decode_and_numbers_equal_the_json(written, fitted):
    path, data = written
    page = _Page()
    page.feed(path.read_text())
    assert json.loads(path.with_suffix(".json").read_text()) == data
    assert page.sections[:4] == ["data", "model", "performance.pneumonia",
                                 "thresholds.pneumonia"]
    assert {"subgroups.pneumonia", "shift", "shortcut.pneumonia", "gradcam.pneumonia",
            "study_team"} <= set(page.sections)
    assert not page.links  # self-contained: no script, stylesheet or link to fetch
    # training curves, ROC, calibration, confusion matrix, 6 Grad-CAM figures
    assert len(page.images) == 4 + 6
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as im:
            assert im.size[0] > 100 and np.asarray(im).std() > 5
    assert len(page.cells) > 80
    for key, text in page.cells:
        value = _lookup(data, key)
        if value is None or value != value:
            assert text == "n/a", key
        elif isinstance(value, int):
            assert text == str(value), key
        else:
            assert text == f"{value:.{4 if key.endswith('p_value') else 3}f}", key
    # and the JSON equals the clinical report computed on its own
    clf, X, y = fitted
    score = clf.predict_proba(X[80:])[:, list(clf.classes_).index("pneumonia")]
    rep = clinical_report(y[80:], score, pos_label="pneumonia", n_bootstraps=200,
                          random_state=0)
    metrics = data["performance"]["pneumonia"]["metrics"]
    for name in ("sensitivity", "specificity", "ppv", "npv", "roc_auc"):
        assert metrics[name]["value"] == pytest.approx(rep.overall[name].value, nan_ok=True)
    assert data["performance"]["pneumonia"]["confusion_matrix"]["counts"] == \
        rep.confusion_matrix.tolist()
    assert len(data["model"]["weights_sha256"]) == 64
    assert data["data"]["splits"]["test"]["patients"] == 20
    assert data["data"]["audit"]["patients_in_train_and_test"] == 1
    assert data["data"]["audit"]["shared_patients"] == ["p40"]
    assert "patients in both sets" in path.read_text()
    assert data["gradcam"]["pneumonia"]["images"][0]["kind"] in (
        "false negative", "false positive")


def test_rewrites_its_own_report_never_another_file(written, fitted, tmp_path):
    clf, X, y = fitted
    for suffix in (".html", ".json"):
        shutil.copy(written[0].with_suffix(suffix), tmp_path / f"old{suffix}")
    report(clf, X[80:], y[80:], tmp_path / "old.html", pos_label="pneumonia",
           n_bootstraps=20, n_gradcam=2)
    assert (tmp_path / "old.html").read_text().count("<img") == 4 + 2
    for name in ("notes.html", "notes.json"):
        other = tmp_path / name
        other.write_text("the study protocol")
        with pytest.raises(FileExistsError, match=f"{name}' exists and is not a report"):
            report(clf, X[80:], y[80:], tmp_path / "notes.html", pos_label="pneumonia")
        assert other.read_text() == "the study protocol"
        other.unlink()


@pytest.mark.parametrize("change, error, match", [
    (dict(path="missing_folder/r.html"), FileNotFoundError, "folder .*missing_folder"),
    (dict(model=CXRClassifier()), NotFittedError, "not fitted"),
    (dict(X_test=slice(0, 5), y_test=slice(0, 5)), ValueError, "at least 10 test images"),
    (dict(y_train=slice(0, 80)), ValueError, "y_train is given without X_train"),
    (dict(threshold=1.5), ValueError, r"threshold must be a probability in \[0, 1\]"),
    (dict(pos_label="covid"), ValueError, "pos_label='covid' is not one of"),
    (dict(groups=["a"] * 3), ValueError, "groups has 3 entries but X_test has 40"),
    (dict(patients_train=["a"] * 3), ValueError, "patients_train has 3 entries but X_train"),
])
def test_bad_input(fitted, tmp_path, change, error, match):
    clf, X, y = fitted
    kwargs = dict(model=clf, X_test=X[80:], y_test=y[80:], path=tmp_path / "r.html",
                  pos_label="pneumonia")
    for key in ("X_test", "y_test", "y_train"):
        if isinstance(change.get(key), slice):
            change = {**change, key: (X if key.startswith("X") else y)[change[key]]}
    if "path" in change:
        change = {**change, "path": tmp_path / change["path"]}
    with pytest.raises(error, match=match):
        report(**{**kwargs, **change})
    assert not list(tmp_path.glob("r.*"))


def test_unwritable_folder_and_multiclass(fitted, tmp_path, monkeypatch, toy_multiclass):
    clf, X, y = fitted
    import cxr_estimators.report._page as page

    real = os.access
    monkeypatch.setattr(page.os, "access", lambda p, mode: False if str(p) == str(tmp_path)
                        else real(p, mode))
    with pytest.raises(PermissionError, match="is not writable"):
        report(clf, X[80:], y[80:], tmp_path / "r.html", pos_label="pneumonia")
    monkeypatch.undo()
    X3, y3 = toy_multiclass
    multi = CXRClassifier(backbone="simple_cnn", max_epochs=1, batch_size=16, neurons=8,
                          random_state=0).fit(X3, y3)
    with pytest.raises(NotImplementedError, match="binary models"):
        report(multi, X3, y3, tmp_path / "r.html")
    with pytest.raises(NotImplementedError, match="multi-label report"):
        report(clf, X[80:], np.zeros((40, 2)), tmp_path / "r.html")


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed: `make test` "
                    "installs it with apt-get when run as root (Makefile target browser)")
def test_headless_chromium_renders_the_report(written, tmp_path):
    """A real browser opens the file offline, draws it, and shows the key numbers."""
    path, data = written
    shot = tmp_path / "report.png"
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--window-size=1200,2400"]
    subprocess.run(flags + [f"--screenshot={shot}", path.as_uri()], check=True,
                   capture_output=True, timeout=120)
    with Image.open(shot) as im:
        assert im.size == (1200, 2400)
        gray = np.asarray(im.convert("L"), dtype=float)
    assert gray.std() > 20  # text, tables and figures, not a blank page
    assert (gray < 100).mean() > 0.01 and (gray > 240).mean() > 0.3
    dom = subprocess.run(flags + ["--dump-dom", path.as_uri()], check=True,
                         capture_output=True, text=True, timeout=120).stdout
    metrics = data["performance"]["pneumonia"]["metrics"]
    for name in ("sensitivity", "specificity", "roc_auc"):
        assert f">{metrics[name]['value']:.3f}<" in dom
    assert f">{data['shift']['auc']:.3f}<" in dom
    assert "To be completed by the study team" in dom
    assert dom.count("data:image/png;base64,") == 10
