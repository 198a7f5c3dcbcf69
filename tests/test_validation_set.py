"""fit(X_val=, y_val=): a fixed validation set, metadata routing, best_epoch_, retraining."""

import numpy as np
import pytest
import sklearn
from sklearn.metrics import log_loss, roc_auc_score, f1_score
from sklearn.pipeline import Pipeline

from cxr_estimators import CXRClassifier, ImageLoader

from conftest import _toy_images


@pytest.fixture
def split():
    X, y = _toy_images(n=64)
    return X[:40], y[:40], X[40:], y[40:]


def _train_valid_counts(history):
    last = history[-1]
    return (sum(b["train_batch_size"] for b in last["batches"] if "train_batch_size" in b),
            sum(b["valid_batch_size"] for b in last["batches"] if "valid_batch_size" in b))


def test_given_validation_set_is_used_and_all_of_X_trained(split, small_clf_params):
    X, y, Xv, yv = split
    clf = CXRClassifier(**small_clf_params, early_stopping=None).fit(X, y, X_val=Xv, y_val=yv)
    assert _train_valid_counts(clf.history_) == (len(X), len(Xv))
    # the last epoch's validation loss is the final model's loss on exactly X_val
    proba = clf.predict_proba(Xv)
    expected = log_loss(yv, proba, labels=clf.classes_)
    assert clf.history_[-1, "valid_loss"] == pytest.approx(expected, rel=1e-4)
    assert clf.best_epoch_ == len(clf.history_) == small_clf_params["max_epochs"]
    # the validation images are not kept inside the fitted model
    assert clf.net_.train_split is None


def test_without_validation_set_an_internal_split_is_used(split, small_clf_params):
    X, y, _, _ = split
    clf = CXRClassifier(**small_clf_params, validation_fraction=0.25).fit(X, y)
    assert _train_valid_counts(clf.history_) == (30, 10)


@pytest.mark.parametrize("monitor, score", [
    ("roc_auc", lambda y, p, classes: roc_auc_score(y == classes[1], p[:, 1])),
    ("f1", lambda y, p, classes: f1_score(y, classes[p.argmax(1)], pos_label="pneumonia")),
])
def test_monitored_metric_in_history_and_best_weights_kept(split, small_clf_params, monitor,
                                                           score):
    X, y, Xv, yv = split
    es = {"patience": 2, "monitor": monitor, "pos_label": "pneumonia"}
    clf = CXRClassifier(**{**small_clf_params, "max_epochs": 6, "lr": 3e-2},
                        early_stopping=es).fit(X, y, X_val=Xv, y_val=yv)
    values = clf.history_[:, f"valid_{monitor}"]
    assert len(values) == len(clf.history_)
    assert clf.best_epoch_ == int(np.argmax(values)) + 1  # first epoch of the maximum
    # the weights kept are those of best_epoch_: its score is the final model's
    final = score(yv, clf.predict_proba(Xv), clf.classes_)
    assert final == pytest.approx(values[clf.best_epoch_ - 1], abs=1e-9)


def test_min_delta_ignores_small_improvements(split, small_clf_params):
    X, y, Xv, yv = split
    es = {"patience": 2, "monitor": "loss", "min_delta": 100.0}
    clf = CXRClassifier(**{**small_clf_params, "max_epochs": 10}, early_stopping=es).fit(
        X, y, X_val=Xv, y_val=yv)
    # no loss improves by 100: epoch 1 stays best and training stops after patience more
    assert clf.best_epoch_ == 1
    assert len(clf.history_) == 3


def test_monitor_without_validation_set_watches_training_batches(split, small_clf_params):
    X, y, _, _ = split
    clf = CXRClassifier(**small_clf_params, validation_fraction=0,
                        early_stopping={"patience": 5, "monitor": "accuracy"}).fit(X, y)
    assert "train_accuracy" in clf.history_[-1]
    assert "valid_loss" not in clf.history_[-1]


def test_integer_labels_f1_takes_label_one(small_clf_params):
    X, y = _toy_images(n=40, classes=(0, 1))
    clf = CXRClassifier(**small_clf_params, early_stopping={"patience": 3, "monitor": "f1"})
    clf.fit(X, y, X_val=X[:10], y_val=y[:10])
    assert len(clf.history_[:, "valid_f1"]) == len(clf.history_)


def test_multiclass_monitors(small_clf_params):
    X, y = _toy_images(n=60, classes=("a", "b", "c"))
    for monitor in ("f1", "roc_auc", "balanced_accuracy"):
        clf = CXRClassifier(**{**small_clf_params, "max_epochs": 2},
                            early_stopping={"patience": 3, "monitor": monitor})
        clf.fit(X[:45], y[:45], X_val=X[45:], y_val=y[45:])
        assert np.isfinite(clf.history_[:, f"valid_{monitor}"]).all()


def test_retrain_on_all_data_one_liner(split, small_clf_params):
    X, y, Xv, yv = split
    clf = CXRClassifier(**{**small_clf_params, "max_epochs": 6},
                        early_stopping={"patience": 2, "monitor": "roc_auc"})
    clf.fit(X, y, X_val=Xv, y_val=yv)
    X_all, y_all = np.concatenate([X, Xv]), np.concatenate([y, yv])
    best = clf.best_epoch_
    clf.set_params(max_epochs=clf.best_epoch_, early_stopping=None,
                   validation_fraction=0).fit(X_all, y_all)
    assert len(clf.history_) == best == clf.best_epoch_
    assert _train_valid_counts(clf.history_) == (len(X_all), 0)


def test_checkpoint_follows_monitored_metric(tmp_path, split, small_clf_params):
    X, y, Xv, yv = split
    clf = CXRClassifier(**{**small_clf_params, "max_epochs": 5}, checkpoint_dir=tmp_path,
                        early_stopping={"patience": 5, "monitor": "accuracy"})
    clf.fit(X, y, X_val=Xv, y_val=yv)
    assert (tmp_path / "params.pt").exists()
    saved = [row["epoch"] for row in clf.history_ if row.get("event_cp")]
    assert saved[-1] == clf.best_epoch_


def test_pipeline_routes_and_transforms_X_val(small_clf_params):
    rng = np.random.default_rng(0)
    raw = (rng.random((48, 20, 20)) * 80).astype(np.uint8)
    y = np.array(["normal", "pneumonia"] * 24)
    raw[y == "pneumonia", :6, :6] = 255
    X, Xv, yt, yv = raw[:36], raw[36:], y[:36], y[36:]
    with sklearn.config_context(enable_metadata_routing=True):
        clf = CXRClassifier(**small_clf_params, early_stopping=None)
        pipe = Pipeline([("load", ImageLoader(size=16, channels=1)),
                         ("clf", clf.set_fit_request(X_val=True, y_val=True))],
                        transform_input=["X_val"])
        pipe.fit(X, yt, X_val=Xv, y_val=yv)
        fitted = pipe.named_steps["clf"]
        assert _train_valid_counts(fitted.history_) == (len(X), len(Xv))
        loaded_val = ImageLoader(size=16, channels=1).fit_transform(Xv)
        expected = log_loss(yv, fitted.predict_proba(loaded_val), labels=fitted.classes_)
        assert fitted.history_[-1, "valid_loss"] == pytest.approx(expected, rel=1e-4)
        # without transform_input the raw 20 x 20 images reach the classifier: refused
        plain = Pipeline([("load", ImageLoader(size=16, channels=1)),
                          ("clf", CXRClassifier(**small_clf_params).set_fit_request(
                              X_val=True, y_val=True))])
        with pytest.raises(ValueError, match=r"X_val has images of shape \(1, 20, 20\)"):
            plain.fit(X, yt, X_val=Xv, y_val=yv)


def test_lazy_validation_set(tmp_path, split, small_clf_params):
    from PIL import Image

    X, y, Xv, yv = split
    paths = []
    for k, img in enumerate(Xv[:, 0]):
        path = tmp_path / f"{k}.png"
        Image.fromarray((img.clip(0, 1) * 255).astype(np.uint8)).save(path)
        paths.append(str(path))
    lazy = ImageLoader(size=16, channels=1, normalize="unit", lazy=True).fit_transform(paths)
    clf = CXRClassifier(**small_clf_params).fit(X, y, X_val=lazy, y_val=yv)
    assert _train_valid_counts(clf.history_)[1] == len(Xv)


def test_feature_cache_with_validation_set(split, small_clf_params):
    from cxr_estimators import _features

    X, y, Xv, yv = split
    params = {**small_clf_params, "freeze": True, "early_stopping": None}
    cached = CXRClassifier(**params, cache=True).fit(X, y, X_val=Xv, y_val=yv)
    plain = CXRClassifier(**params).fit(X, y, X_val=Xv, y_val=yv)
    assert cached._uses_cache and _features.cache_info()["entries"] >= 2
    np.testing.assert_allclose(cached.history_[:, "valid_loss"],
                               plain.history_[:, "valid_loss"], rtol=1e-4)


def test_grid_search_then_retrain_on_all(split, small_clf_params):
    from sklearn.model_selection import GridSearchCV, PredefinedSplit

    from cxr_estimators.evaluation import best_epoch_scorer, retrain_on_all

    X, y, Xv, yv = split
    X_all, y_all = np.concatenate([X, Xv]), np.concatenate([y, yv])
    fold = np.r_[-np.ones(len(X)), np.zeros(len(Xv))]  # train on X, score on X_val
    clf = CXRClassifier(**{**small_clf_params, "max_epochs": 6},
                        early_stopping={"patience": 2, "monitor": "roc_auc"})
    search = GridSearchCV(clf, {"neurons": [8, 16]}, cv=PredefinedSplit(fold), refit=False,
                          scoring={"roc_auc": "roc_auc", "best_epoch": best_epoch_scorer})
    search.fit(X_all, y_all, X_val=Xv, y_val=yv)
    epochs = search.cv_results_["mean_test_best_epoch"]
    assert set(epochs) <= set(range(1, 7))
    final = retrain_on_all(search, X_all, y_all, metric="roc_auc")
    best = int(np.argmin(search.cv_results_["rank_test_roc_auc"]))
    assert final.neurons == search.cv_results_["params"][best]["neurons"]
    assert len(final.history_) == final.best_epoch_ == int(epochs[best])
    assert _train_valid_counts(final.history_) == (len(X_all), 0)
    with pytest.raises(ValueError, match="needs metric="):
        retrain_on_all(search, X_all, y_all)
    with pytest.raises(ValueError, match=r"metric='f1' is not one of the search's scorers"):
        retrain_on_all(search, X_all, y_all, metric="f1")
    # sklearn's refit=callable contract: cv_results_ -> index
    other = 1 - best
    final = retrain_on_all(search, X_all, y_all, metric=lambda results: other)
    assert final.neurons == search.cv_results_["params"][other]["neurons"]
    with pytest.raises(ValueError, match=r"returned 5; expected the index of a candidate "
                                         r"in \[0, 2\)"):
        retrain_on_all(search, X_all, y_all, metric=lambda results: 5)


def test_retrain_on_all_ranks_by_several_keys_in_turn():
    """Study A's rule: accuracy, ties broken by AUC, then by sensitivity."""
    from cxr_estimators.evaluation import _chosen_index

    results = {"params": [{}] * 4,
               "mean_test_accuracy": [0.8, 0.9, 0.9, 0.9],
               "mean_test_roc_auc": [0.99, 0.85, 0.90, 0.90],
               "mean_test_sensitivity": [1.0, 0.9, 0.7, 0.8]}
    results.update({f"rank_test_{k}": None for k in ("accuracy", "roc_auc", "sensitivity")})
    assert _chosen_index(results, ("accuracy", "roc_auc", "sensitivity")) == 3
    assert _chosen_index(results, ["accuracy", "roc_auc"]) == 2  # tie kept in order
    assert _chosen_index(results, "roc_auc") == 0
    with pytest.raises(ValueError, match=r"has \['f1'\], not among the search's scorers"):
        _chosen_index(results, ("accuracy", "f1"))


def test_validation_set_on_another_scale_warns(split, small_clf_params):
    """X normalised to [-1, 1], X_val left in [0, 1] (a Pipeline without
    transform_input=["X_val"]): early stopping would watch mis-scaled images. A warning
    says so; X_val preprocessed like X is quiet."""
    import warnings

    X, y, Xv, yv = split
    lo, hi = X.min(), X.max()
    unit, unit_val = (X - lo) / (hi - lo), (Xv - lo) / (hi - lo)
    params = {**small_clf_params, "max_epochs": 1}
    with pytest.warns(UserWarning, match=r"X_val's pixels .* are on another scale than "
                                         r"X's .*transform_input=\['X_val'\]"):
        CXRClassifier(**params).fit(2 * unit - 1, y, X_val=unit_val, y_val=yv)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        CXRClassifier(**params).fit(2 * unit - 1, y, X_val=2 * unit_val - 1, y_val=yv)
    assert not [w for w in caught if "another scale" in str(w.message)]
