"""explain.shortcut_test: a model-level test that fires on a planted marker only."""

import numpy as np
import pytest
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from cxr_estimators import CXRClassifier
from cxr_estimators.explain import shortcut_test

SIZE = 28


def _images(n, seed, marker):
    """Noise 'chests'; positives carry a central opacity (faint where they also carry the
    marker), and with ``marker`` a bright square in the top-left corner (the label burned
    into one class's films, so the marker is the easier cue)."""
    rng = np.random.default_rng(seed)
    X = rng.random((n, 1, SIZE, SIZE)) * 0.5
    y = np.array([0, 1] * (n // 2))
    opacity = 0.03 if marker else 0.12
    X[y == 1, :, 10:18, 10:18] += rng.normal(opacity, 0.1, ((y == 1).sum(), 1, 1, 1))
    if marker:
        X[y == 1, :, 1:4, 1:4] = 1.0
    return X.astype(np.float32), y


def _pixel_model(X, y):
    flat = FunctionTransformer(lambda a: np.asarray(a).reshape(len(a), -1))
    return make_pipeline(flat, LogisticRegression(C=0.1, max_iter=2000)).fit(X, y)


@pytest.fixture(scope="module")
def models():
    marked, clean = _images(400, 0, True), _images(400, 0, False)
    return _pixel_model(*marked), _pixel_model(*clean)


def test_fires_on_the_marker_model_not_on_the_clean_one(models):
    marker_model, clean_model = models
    X_marked, y = _images(200, 1, True)
    X_clean, _ = _images(200, 1, False)
    # the model that learned the marker, tested on images that carry it
    fired = shortcut_test(marker_model, X_marked, y, n_bootstraps=300, random_state=0)
    # the model that learned the chest, tested on the same kind of images
    quiet = shortcut_test(clean_model, X_clean, y, n_bootstraps=300, random_state=0)
    assert fired.fires and fired.auc > 0.95 and fired.auc_drop_ci[0] > 0.03
    assert not quiet.fires and abs(quiet.auc_drop) < 0.02
    assert fired.mean_change > 5 * quiet.mean_change
    assert "FIRES" in str(fired) and "Does not fire" in str(quiet)
    assert fired.to_dict()["fires"] is True


def test_mask_instead_of_border(models):
    marker_model, _ = models
    X, y = _images(200, 2, True)
    lungs = np.zeros((SIZE, SIZE), bool)
    lungs[6:22, 6:22] = True
    assert shortcut_test(marker_model, X, y, mask=lungs, n_bootstraps=100,
                         random_state=0).fires
    everything = np.ones((SIZE, SIZE), bool)
    assert not shortcut_test(marker_model, X, y, mask=everything, n_bootstraps=100,
                             random_state=0).fires


def test_cxr_classifier_and_bad_input(toy_binary, small_clf_params):
    X, y = toy_binary  # the class is a bright patch in a corner: a border shortcut
    clf = CXRClassifier(**{**small_clf_params, "max_epochs": 8}).fit(X, y)
    result = shortcut_test(clf, X, y, pos_label="pneumonia", border=0.3, n_bootstraps=100,
                           random_state=0)
    assert result.auc > 0.9 and result.fires
    with pytest.raises(NotFittedError):
        shortcut_test(CXRClassifier(), X, y)
    with pytest.raises(ValueError, match="needs both classes"):
        shortcut_test(clf, X[y == "normal"], y[y == "normal"], pos_label="pneumonia")
    with pytest.raises(ValueError, match="pass pos_label"):
        shortcut_test(clf, X, y)
    with pytest.raises(ValueError, match=r"border must be in \[0, 0.5\)"):
        shortcut_test(clf, X, y, pos_label="pneumonia", border=0.6)
