"""``tta``: probabilities averaged over augmented views in predict_proba, seeded, off by
default, Grad-CAM unaffected."""

import numpy as np
import pytest
import torch

from cxr_estimators import CXRClassifier
from cxr_estimators.explain import grad_cam

#: Only a random left-right flip: every view is the image or its mirror image.
FLIP_ONLY = {"rotation": 0.0, "shift": 0.0, "zoom": 0.0, "brightness": 0.0,
             "contrast": 0.0, "horizontal_flip": True}


@pytest.fixture(scope="module")
def fitted():
    from tests.conftest import _toy_images

    X, y = _toy_images()
    clf = CXRClassifier(backbone="simple_cnn", max_epochs=3, batch_size=16, neurons=16,
                        random_state=0, lr=1e-2).fit(X, y)
    return clf, X


def _with_tta(clf, tta):
    return clf.set_params(tta=tta)


def test_tta_off_is_plain_prediction(fitted):
    clf, X = fitted
    plain = _with_tta(clf, None).predict_proba(X)
    np.testing.assert_array_equal(_with_tta(clf, 0).predict_proba(X), plain)
    assert not np.allclose(_with_tta(clf, 4).predict_proba(X), plain)
    _with_tta(clf, None)


def test_tta_averages_the_views_probabilities(fitted):
    clf, X = fitted
    p_image = _with_tta(clf, None).predict_proba(X)
    p_mirror = clf.predict_proba(X[..., ::-1].copy())
    proba = _with_tta(clf, {"views": 40, **FLIP_ONLY}).predict_proba(X)
    np.testing.assert_allclose(proba.sum(axis=1), 1)
    # each view is the image or its mirror: a mixture of the two, near their mean
    low, high = np.minimum(p_image, p_mirror), np.maximum(p_image, p_mirror)
    assert np.all(proba >= low - 1e-6) and np.all(proba <= high + 1e-6)
    np.testing.assert_allclose(proba, (p_image + p_mirror) / 2,
                               atol=0.25 * np.abs(p_image - p_mirror).max() + 1e-6)
    assert np.abs(proba - p_image).max() > 0.1 * np.abs(p_mirror - p_image).max()
    # a left-right symmetric image is its own mirror: TTA changes nothing
    symmetric = (X + X[..., ::-1]) / 2
    np.testing.assert_allclose(clf.predict_proba(symmetric),
                               _with_tta(clf, None).predict_proba(symmetric), atol=1e-6)


def test_tta_is_seeded_and_leaves_the_global_rng_alone(fitted):
    clf, X = fitted
    _with_tta(clf, 3)
    state = torch.get_rng_state()
    first = clf.predict_proba(X)
    assert torch.equal(torch.get_rng_state(), state)
    np.testing.assert_array_equal(clf.predict_proba(X), first)
    _with_tta(clf, None)


def test_tta_int_uses_the_fit_augmentation(toy_binary, small_clf_params):
    X, y = toy_binary
    clf = CXRClassifier(**small_clf_params, augment=FLIP_ONLY, tta=40).fit(X, y)
    mixed = clf.predict_proba(X)
    plain = clf.set_params(tta=None).predict_proba(X)
    mirror = clf.predict_proba(X[..., ::-1].copy())
    low, high = np.minimum(plain, mirror), np.maximum(plain, mirror)
    assert np.all(mixed >= low - 1e-6) and np.all(mixed <= high + 1e-6)


def test_tta_leaves_grad_cam_unchanged(fitted):
    clf, X = fitted
    plain = grad_cam(_with_tta(clf, None), X[:6])
    np.testing.assert_array_equal(grad_cam(_with_tta(clf, 5), X[:6]), plain)
    _with_tta(clf, None)


def test_tta_with_the_feature_cache(toy_binary, small_clf_params):
    X, y = toy_binary
    clf = CXRClassifier(**small_clf_params, freeze=True, cache=True).fit(X, y)
    plain = clf.predict_proba(X)
    assert not np.allclose(clf.set_params(tta=3).predict_proba(X), plain)


@pytest.mark.parametrize("tta, message", [
    (-1, r"'tta' parameter .* Got -1"),
    ({"views": 0}, r"tta views=0 must be an int >= 1"),
    ({"views": 2, "rotaton": 5}, r"unknown key 'rotaton'.*did you mean 'rotation'"),
])
def test_bad_tta_is_a_value_error_naming_it(toy_binary, small_clf_params, tta, message):
    X, y = toy_binary
    with pytest.raises(ValueError, match=message):
        CXRClassifier(**small_clf_params, tta=tta).fit(X, y)


def test_bad_tta_set_after_fit_is_a_value_error_at_predict(fitted):
    clf, X = fitted
    with pytest.raises(ValueError, match=r"tta=-2 must be None, an int >= 0"):
        _with_tta(clf, -2).predict_proba(X)
    _with_tta(clf, None)


def test_tta_views_run_on_the_batch_norm_folded_copy(toy_binary):
    """On CPU the views run on the same folded copy as a plain prediction; switching
    between the two does not fold again."""
    X, y = toy_binary
    clf = CXRClassifier(backbone="deep_cnn", max_epochs=2, batch_size=16, neurons=8,
                        random_state=0, precision="float32", device="cpu").fit(X, y)
    with_tta = clf.set_params(tta=2).predict_proba(X)
    copy = clf.net_._folded_inference._folded
    assert copy is not None and copy is not clf.module_
    plain = clf.set_params(tta=None).predict_proba(X)
    assert clf.net_._folded_inference._folded is copy  # not folded again
    np.testing.assert_array_equal(clf.set_params(tta=2).predict_proba(X), with_tta)
    assert clf.net_._folded_inference._folded is copy
    assert not np.allclose(with_tta, plain)
