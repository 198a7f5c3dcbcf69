"""sklearn metadata routing of ``sample_weight``, ``groups`` and ``X_val``/``y_val`` through
Pipeline, cross_validate and GridSearchCV, into CXRClassifier.fit and the clinical
scorers."""

import numpy as np
import pytest
import sklearn
from sklearn.metrics import accuracy_score
from sklearn.model_selection import GridSearchCV, GroupKFold, cross_validate
from sklearn.pipeline import Pipeline

from cxr_estimators import CXRClassifier, ImageLoader
from cxr_estimators.metrics import clinical_scorers, sensitivity_score


class _Recording(CXRClassifier):
    """CXRClassifier that notes what each fit was given (clones share the list)."""

    calls = []

    def fit(self, X, y, sample_weight=None, *, X_val=None, y_val=None, groups=None):
        type(self).calls.append({
            "n": len(X), "sample_weight": None if sample_weight is None
            else np.asarray(sample_weight), "groups": None if groups is None
            else np.asarray(groups), "X_val": None if X_val is None else np.shape(X_val)})
        return super().fit(X, y, sample_weight, X_val=X_val, y_val=y_val, groups=groups)


@pytest.fixture
def routed_data(toy_binary):
    X, y = toy_binary
    images = (X[:, 0] * 255).astype(np.uint8)  # raw (n, H, W): ImageLoader's input
    rng = np.random.default_rng(0)
    return {"images": images, "y": y, "groups": np.repeat(np.arange(12), 4),
            "sample_weight": rng.uniform(0.2, 3.0, len(y)),
            "X_val": images[:10][:, ::-1].copy(), "y_val": y[:10]}


def _pipeline(small_clf_params):
    clf = _Recording(**{**small_clf_params, "max_epochs": 1}).set_fit_request(
        sample_weight=True, groups=True, X_val=True, y_val=True)
    return Pipeline([("load", ImageLoader(size=16, channels=1, normalize="unit")),
                     ("clf", clf)], transform_input=["X_val"])


def _scorers():
    scorers = clinical_scorers(pos_label="pneumonia")
    for scorer in scorers.values():
        scorer.set_score_request(sample_weight=True)
    return scorers


def test_cross_validate_routes_everything(routed_data, small_clf_params):
    d = routed_data
    _Recording.calls.clear()
    with sklearn.config_context(enable_metadata_routing=True):
        cv = cross_validate(
            _pipeline(small_clf_params), d["images"], d["y"], cv=GroupKFold(2),
            scoring=_scorers(), return_estimator=True, return_indices=True,
            params={k: d[k] for k in ("sample_weight", "groups", "X_val", "y_val")})
    assert len(_Recording.calls) == 2
    for call, train, test, est in zip(_Recording.calls, cv["indices"]["train"],
                                      cv["indices"]["test"], cv["estimator"]):
        np.testing.assert_array_equal(call["sample_weight"], d["sample_weight"][train])
        np.testing.assert_array_equal(call["groups"], d["groups"][train])
        assert not set(d["groups"][train]) & set(d["groups"][test])  # GroupKFold got them
        assert call["X_val"] == (10, 1, 16, 16)  # through the loader: transform_input
        assert "valid_loss" in est[-1].history_[-1]
    for k, (test, est) in enumerate(zip(cv["indices"]["test"], cv["estimator"])):
        # the scorers got the test fold's weights
        pred = est.predict(d["images"][test])
        w = d["sample_weight"][test]
        assert cv["test_accuracy"][k] == pytest.approx(
            accuracy_score(d["y"][test], pred, sample_weight=w))
        assert cv["test_sensitivity"][k] == pytest.approx(
            sensitivity_score(d["y"][test], pred, pos_label="pneumonia", sample_weight=w))


def test_grid_search_routes_to_every_fit_and_the_refit(routed_data, small_clf_params):
    d = routed_data
    _Recording.calls.clear()
    with sklearn.config_context(enable_metadata_routing=True):
        gs = GridSearchCV(_pipeline(small_clf_params), {"clf__lr": [1e-2, 1e-3]},
                          cv=GroupKFold(2), scoring=_scorers(), refit="roc_auc")
        gs.fit(d["images"], d["y"], **{k: d[k] for k in ("sample_weight", "groups",
                                                          "X_val", "y_val")})
    assert len(_Recording.calls) == 5  # 2 points × 2 folds + refit
    refit = _Recording.calls[-1]
    np.testing.assert_array_equal(refit["sample_weight"], d["sample_weight"])
    np.testing.assert_array_equal(refit["groups"], d["groups"])
    assert all(c["n"] == 24 and c["X_val"] == (10, 1, 16, 16)
               for c in _Recording.calls[:-1])
    assert gs.predict(d["images"]).shape == (48,)


def test_sample_weight_without_routing(routed_data, small_clf_params):
    """The old way: a Pipeline step's fit parameter, routing off."""
    d = routed_data
    pipe = Pipeline([("load", ImageLoader(size=16, channels=1, normalize="unit")),
                     ("clf", CXRClassifier(**{**small_clf_params, "max_epochs": 1}))])
    weighted = pipe.fit(d["images"], d["y"], clf__sample_weight=d["sample_weight"])
    plain = CXRClassifier(**{**small_clf_params, "max_epochs": 1}).fit(
        ImageLoader(size=16, channels=1, normalize="unit").transform(d["images"]), d["y"])
    assert not np.allclose(weighted.predict_proba(d["images"]),
                           plain.predict_proba(
                               ImageLoader(size=16, channels=1,
                                           normalize="unit").transform(d["images"])))


def test_set_score_request_needs_routing():
    scorer = clinical_scorers(pos_label="b")["sensitivity"]
    with pytest.raises(RuntimeError, match="enable_metadata_routing=True"):
        scorer.set_score_request(sample_weight=True)
    with sklearn.config_context(enable_metadata_routing=True):
        assert scorer.set_score_request(sample_weight=True) is scorer
        routing = scorer.get_metadata_routing()
        assert routing.score.requests == {"sample_weight": True}
        per_class = clinical_scorers(pos_label="b", per_class=True)
        assert per_class.set_score_request(sample_weight=True) is per_class
