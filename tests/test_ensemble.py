"""Ensembles are sklearn's: ``VotingClassifier(voting="soft")`` over CXRClassifier
pipelines that differ in ``random_state`` or backbone (the recipe in docs/accuracy.md),
round-tripping through joblib and ``cxr_estimators.save`` / ``load``."""

import joblib
import numpy as np
import pytest
from sklearn.base import clone
from sklearn.ensemble import VotingClassifier
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import Pipeline

import cxr_estimators
from cxr_estimators import CXRClassifier, ImageLoader

from conftest import _toy_images


def _member(backbone="simple_cnn", random_state=0):
    return Pipeline([
        ("load", ImageLoader(size=16, channels=1, normalize="unit")),
        ("clf", CXRClassifier(backbone=backbone, max_epochs=2, batch_size=16, neurons=16,
                              lr=1e-2, validation_fraction=0, random_state=random_state)),
    ])


def _ensemble():
    return VotingClassifier([("m1", _member(random_state=0)), ("m2", _member(random_state=1)),
                             ("m3", _member("deep_cnn", random_state=2))], voting="soft")


@pytest.fixture(scope="module")
def images():
    X, y = _toy_images(n=48)
    return X[:, 0], y  # (n, H, W) images in [0, 1], as ImageLoader takes them


@pytest.fixture(scope="module")
def fitted(images):
    X, y = images
    return _ensemble().fit(X, y)


def test_soft_vote_averages_the_members_probabilities(fitted, images):
    X, y = images
    members = [est.predict_proba(X) for est in fitted.estimators_]
    np.testing.assert_allclose(fitted.predict_proba(X), np.mean(members, axis=0))
    assert list(fitted.classes_) == ["normal", "pneumonia"]
    assert set(fitted.predict(X)) <= set(y)
    # the members differ (seed, backbone), so the vote is not any single member
    assert not np.allclose(members[0], members[1])
    assert not any(np.allclose(fitted.predict_proba(X), m) for m in members)


def test_ensemble_round_trips_through_joblib(fitted, images, tmp_path):
    X, _ = images
    joblib.dump(fitted, tmp_path / "ensemble.joblib")
    loaded = joblib.load(tmp_path / "ensemble.joblib")
    np.testing.assert_array_equal(loaded.predict_proba(X), fitted.predict_proba(X))


def test_ensemble_round_trips_through_cxr_estimators_save(fitted, images, tmp_path):
    X, _ = images
    path = tmp_path / "ensemble.safetensors"
    # a fitted member's test-time augmentation (set on the fitted clone) travels too
    m2 = fitted.named_estimators_["m2"].set_params(clf__tta=2)  # seed 1
    try:
        expected = fitted.predict_proba(X)
        cxr_estimators.save(fitted, path)
        loaded = cxr_estimators.load(path)
    finally:
        m2.set_params(clf__tta=None)
    assert not np.allclose(expected, fitted.predict_proba(X))
    assert isinstance(loaded, VotingClassifier)
    assert loaded.named_estimators_["m2"]["clf"].tta == 2
    assert loaded.named_estimators_["m3"]["clf"].backbone == "deep_cnn"
    np.testing.assert_array_equal(loaded.predict_proba(X), expected)
    np.testing.assert_array_equal(loaded.predict(X), fitted.predict(X))


def test_grid_search_on_a_members_parameter(images):
    X, y = images
    search = GridSearchCV(_ensemble(), {"m1__clf__lr": [1e-3, 1e-2]}, scoring="roc_auc",
                          cv=StratifiedKFold(2, shuffle=True, random_state=0))
    search.fit(X, y)
    assert set(search.best_params_) == {"m1__clf__lr"}
    assert search.best_estimator_.named_estimators_["m1"]["clf"].lr == \
        search.best_params_["m1__clf__lr"]
    assert len(search.cv_results_["mean_test_score"]) == 2
    # the members' other parameters are untouched by the search
    assert search.best_estimator_.named_estimators_["m2"]["clf"].lr == 1e-2


def test_members_keep_their_own_tta(images):
    X, y = images
    ensemble = clone(_ensemble()).set_params(m1__clf__tta=3).fit(X, y)
    m1 = ensemble.named_estimators_["m1"]
    with_tta = m1.predict_proba(X)
    assert not np.allclose(with_tta, m1.set_params(clf__tta=None).predict_proba(X))
