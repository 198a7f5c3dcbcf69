import sys

import numpy as np
import pytest

from cxr_estimators import plotting

pytest.importorskip("matplotlib")
Image = pytest.importorskip("PIL.Image")


def _check_png(fig, path):
    """The PNG has the figure's pixel size (figsize * dpi) and is not blank."""
    with Image.open(path) as img:
        pixels = np.asarray(img.convert("L"), dtype=float)
        size = img.size
    width, height = fig.get_size_inches() * fig.dpi
    assert size == (round(width), round(height))
    assert pixels.std() > 5  # something was drawn


def test_backend_untouched_by_import():
    import matplotlib

    before = matplotlib.rcParams["backend"]
    import importlib
    importlib.reload(plotting)
    assert matplotlib.rcParams["backend"] == before


def test_training_curves_from_history_estimator_and_pipeline(tmp_path):
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    history = [{"epoch": 1, "train_loss": 0.9, "valid_loss": 1.0, "valid_acc": 0.5},
               {"epoch": 2, "train_loss": 0.7, "valid_acc": 0.6},  # valid_loss missing
               {"epoch": 3, "train_loss": 0.5, "valid_loss": 0.8, "valid_acc": 0.7}]

    class Fitted:
        history_ = history

    for i, source in enumerate([history, Fitted(),
                                Pipeline([("id", FunctionTransformer()), ("clf", Fitted())])]):
        path = tmp_path / f"curves{i}.png"
        fig = plotting.plot_training_curves(source, path=path)
        _check_png(fig, path)
    ax = fig.axes[0]
    assert [line.get_label() for line in ax.get_lines()] == ["train loss", "valid loss"]
    np.testing.assert_allclose(ax.get_lines()[1].get_xdata(), [1, 3])
    assert len(fig.axes) == 2  # accuracy on a twin axis


def test_training_curves_of_fitted_classifier_show_train_and_valid_accuracy(tmp_path):
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    from cxr_estimators import CXRClassifier

    rng = np.random.default_rng(0)
    X = rng.random((40, 1, 12, 12), dtype=np.float32)
    y = np.array(["normal", "pneumonia"] * 20)
    clf = CXRClassifier(backbone="simple_cnn", max_epochs=2, neurons=8, batch_size=16,
                        validation_fraction=0.25, random_state=0).fit(X, y)
    assert all(0 <= row["train_acc"] <= 1 for row in clf.history_)
    fig = plotting.plot_training_curves(clf, path=tmp_path / "fitted.png")
    _check_png(fig, tmp_path / "fitted.png")
    assert [line.get_label() for line in fig.axes[1].get_lines()] == [
        "train accuracy", "valid accuracy"]


def test_training_curves_without_losses():
    with pytest.raises(ValueError, match="no 'train_loss'"):
        plotting.plot_training_curves([{"epoch": 1, "valid_acc": 0.5}])
    with pytest.raises(ValueError, match="history_"):
        plotting.plot_training_curves(object())


def test_roc_binary_and_multiclass(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 150)
    proba = rng.dirichlet([1, 1, 1], 150)
    proba[np.arange(150), y] += 1
    proba /= proba.sum(axis=1, keepdims=True)
    names = np.array(["bacterial", "normal", "viral"])
    fig = plotting.plot_roc(names[y], proba, path=tmp_path / "roc3.png")
    _check_png(fig, tmp_path / "roc3.png")
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert sum("vs rest" in t for t in labels) == 3
    binary = y < 2
    score = proba[binary, 1] / proba[binary, :2].sum(1)
    fig = plotting.plot_roc(names[y[binary]], score, pos_label="normal",
                            path=tmp_path / "roc2.png")
    _check_png(fig, tmp_path / "roc2.png")
    assert "normal (AUC" in fig.axes[0].get_legend().get_texts()[0].get_text()
    # two columns: the column of pos_label is plotted, whichever it is
    two = np.column_stack([1 - score, score])
    auc = [plotting.plot_roc(names[y[binary]], two, pos_label=c).axes[0].get_legend()
           .get_texts()[0].get_text() for c in ("normal", "bacterial")]
    assert auc[0].startswith("normal (AUC") and auc[1].startswith("bacterial (AUC")
    assert auc[0].split("AUC")[1] == auc[1].split("AUC")[1]  # 1 - s ranks bacterial alike
    assert "1 (AUC" in plotting.plot_roc(y[binary], score).axes[0].get_legend() \
        .get_texts()[0].get_text()  # {0, 1}: 1 is positive without pos_label
    assert plotting.plot_roc(names[y], proba).axes  # no path: nothing saved, still a figure


def test_roc_bad_input():
    with pytest.raises(ValueError, match="undefined"):
        plotting.plot_roc(["a", "a"], [0.2, 0.9], labels=["a", "b"], pos_label="b")
    with pytest.raises(ValueError, match="3 samples but y_score has 2"):
        plotting.plot_roc(["a", "b", "a"], [0.2, 0.9])
    with pytest.raises(ValueError, match=r"plot_roc: the classes are \['a', 'b'\] and "
                                         "pos_label is not given"):
        plotting.plot_roc(["a", "b", "a"], [0.2, 0.9, 0.4])
    with pytest.raises(ValueError, match="pos_label='c' is not one of the classes"):
        plotting.plot_roc(["a", "b", "a"], [0.2, 0.9, 0.4], pos_label="c")


@pytest.mark.parametrize("normalize", [None, "true"])
def test_confusion_matrix(tmp_path, normalize):
    y = ["normal", "pneumonia", "pneumonia", "normal", "pneumonia"]
    pred = ["normal", "pneumonia", "normal", "normal", "pneumonia"]
    path = tmp_path / "cm.png"
    fig = plotting.plot_confusion_matrix(y, pred, normalize=normalize, path=path)
    _check_png(fig, path)
    texts = sorted(t.get_text() for t in fig.axes[0].texts)
    assert texts == (["0", "1", "2", "2"] if normalize is None
                     else ["0.00", "0.33", "0.67", "1.00"])


def test_missing_matplotlib_message(monkeypatch):
    for name in list(sys.modules):
        if name == "matplotlib" or name.startswith("matplotlib."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"pip install 'cxr_estimators\[plot\]'"):
        plotting.plot_confusion_matrix([0, 1], [0, 1])


def test_training_curves_mark_best_epoch(tmp_path):
    class Fitted:
        history_ = [{"epoch": e, "train_loss": 1 / e, "valid_loss": 1 / e + (e - 2) ** 2}
                    for e in (1, 2, 3, 4)]
        best_epoch_ = 2

    fig = plotting.plot_training_curves(Fitted(), path=tmp_path / "best.png")
    _check_png(fig, tmp_path / "best.png")
    (marker,) = [line for line in fig.axes[0].get_lines() if "best epoch" in line.get_label()]
    assert list(marker.get_xdata()) == [2, 2] and marker.get_label() == "best epoch (2, kept)"


def test_roc_marks_operating_point_and_band(tmp_path):
    rng = np.random.default_rng(0)
    y = np.array([0, 1] * 100)
    score = np.clip(y * 0.3 + rng.random(200) * 0.7, 0, 1)
    fig = plotting.plot_roc(y, score, threshold=0.5, n_bootstraps=50, random_state=0,
                            path=tmp_path / "roc.png")
    _check_png(fig, tmp_path / "roc.png")
    ax = fig.axes[0]
    (point,) = [line for line in ax.get_lines() if "operating point" in line.get_label()]
    sens, spec = (score[y == 1] >= 0.5).mean(), (score[y == 0] < 0.5).mean()
    assert point.get_xdata()[0] == pytest.approx(1 - spec)
    assert point.get_ydata()[0] == pytest.approx(sens)
    assert f"sens {sens:.2f}, spec {spec:.2f}" in point.get_label()
    assert any("bootstrap band" in c.get_label() for c in ax.collections)


def test_calibration_with_brier(tmp_path):
    from sklearn.metrics import brier_score_loss

    rng = np.random.default_rng(0)
    p = rng.random(300)
    y = np.where(rng.random(300) < p, "pneumonia", "normal")
    fig = plotting.plot_calibration(y, p, pos_label="pneumonia", path=tmp_path / "cal.png")
    _check_png(fig, tmp_path / "cal.png")
    brier = brier_score_loss(y == "pneumonia", p)
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    assert f"model (Brier {brier:.3f})" in labels
    with pytest.raises(ValueError, match="pass pos_label"):
        plotting.plot_calibration(y, p)
