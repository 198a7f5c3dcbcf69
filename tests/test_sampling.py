"""sampling="balanced": a WeightedRandomSampler per epoch (_training.balanced_loader)."""

import numpy as np
import pytest

from cxr_estimators import CXRClassifier
from cxr_estimators import _training

from conftest import _toy_images


@pytest.fixture
def imbalanced():
    X, y = _toy_images(n=64)
    keep = np.r_[np.flatnonzero(y == "normal"), np.flatnonzero(y == "pneumonia")[:8]]
    return X[keep], y[keep]  # 32 normal, 8 pneumonia


def _record_batches(monkeypatch):
    seen = []
    original = _training._Net.train_step

    def spy(self, batch, **kw):
        seen.append(np.asarray(batch[1]))
        return original(self, batch, **kw)

    monkeypatch.setattr(_training._Net, "train_step", spy)
    return seen


def test_balanced_sampling_draws_classes_equally(imbalanced, small_clf_params, monkeypatch):
    X, y = imbalanced
    seen = _record_batches(monkeypatch)
    params = {**small_clf_params, "max_epochs": 6, "early_stopping": None}
    CXRClassifier(**params, sampling="balanced", validation_fraction=0).fit(X, y)
    labels = np.concatenate(seen)
    assert len(labels) == 6 * len(y)  # as many draws per epoch as images
    share = labels.mean()  # "pneumonia" is class 1; 20 % of the images
    assert 0.4 < share < 0.6
    seen.clear()
    CXRClassifier(**params, validation_fraction=0).fit(X, y)
    assert np.concatenate(seen).mean() == pytest.approx(0.2)


def test_balanced_sampling_uses_only_the_training_part(imbalanced, small_clf_params,
                                                       monkeypatch):
    X, y = imbalanced
    seen = _record_batches(monkeypatch)
    clf = CXRClassifier(**{**small_clf_params, "max_epochs": 1}, sampling="balanced",
                        validation_fraction=0.25).fit(X, y)
    assert sum(map(len, seen)) == 30  # 40 images, 10 held out for validation
    valid = sum(b["valid_batch_size"] for b in clf.history_[-1]["batches"]
                if "valid_batch_size" in b)
    assert valid == 10


def test_balanced_sampling_is_seeded_and_fresh_each_epoch(imbalanced, small_clf_params,
                                                          monkeypatch):
    X, y = imbalanced
    seen = _record_batches(monkeypatch)
    params = {**small_clf_params, "max_epochs": 2, "validation_fraction": 0,
              "sampling": "balanced", "batch_size": 40}
    CXRClassifier(**params).fit(X, y)
    first = [b.copy() for b in seen]
    seen.clear()
    CXRClassifier(**params).fit(X, y)
    for a, b in zip(first, seen):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], first[1])  # epoch 2 draws anew


def test_balanced_sampling_with_a_single_class(small_clf_params):
    X, _ = _toy_images(n=10)
    with pytest.raises(ValueError, match=r"single class \['a'\].*sampling='balanced'"):
        CXRClassifier(**small_clf_params, sampling="balanced").fit(X, ["a"] * 10)


def test_balanced_sampling_with_the_feature_cache(imbalanced, small_clf_params, monkeypatch):
    X, y = imbalanced
    seen = _record_batches(monkeypatch)
    clf = CXRClassifier(**{**small_clf_params, "max_epochs": 4}, freeze=True, cache=True,
                        sampling="balanced", validation_fraction=0).fit(X, y)
    assert clf._uses_cache
    assert 0.35 < np.concatenate(seen).mean() < 0.65


def test_balanced_sampling_with_balanced_class_weight_warns(imbalanced, small_clf_params,
                                                            tmp_path):
    """Both corrections at once over-correct: a warning at fit says so (not at load);
    either alone is quiet."""
    import warnings

    import cxr_estimators

    X, y = imbalanced
    with pytest.warns(UserWarning, match="corrects the class imbalance twice"):
        both = CXRClassifier(**small_clf_params, sampling="balanced",
                             class_weight="balanced").fit(X, y)
    path = tmp_path / "both.safetensors"
    cxr_estimators.save(both, path)
    with warnings.catch_warnings(record=True) as caught:  # a fit's warning, not load's
        warnings.simplefilter("always")
        cxr_estimators.load(path)
    assert not [w for w in caught if "twice" in str(w.message)]
    for params in ({"sampling": "balanced"}, {"class_weight": "balanced"},
                   {"sampling": "balanced", "class_weight": {"normal": 2.0}}):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            CXRClassifier(**small_clf_params, **params).fit(X, y)
        assert not [w for w in caught if "twice" in str(w.message)], params
