"""``lr_schedule``: plateau, cosine (with warm-up) and one-cycle, run by skorch's LRScheduler."""

import numpy as np
import pytest
from torch.optim.lr_scheduler import ReduceLROnPlateau

from cxr_estimators import CXRClassifier


def _batch_lrs(clf):
    """Learning rate of every training batch, in order."""
    return np.array([b["event_lr"] for epoch in clf.history_ for b in epoch["batches"]
                     if "event_lr" in b])


def _fit(toy_binary, small_clf_params, **params):
    X, y = toy_binary
    return CXRClassifier(**{**small_clf_params, "validation_fraction": 0, "batch_size": 8,
                            **params}).fit(X, y)


def test_cosine_decays_from_lr_to_zero_over_max_epochs(toy_binary, small_clf_params):
    clf = _fit(toy_binary, small_clf_params, lr_schedule="cosine", max_epochs=3)
    lrs = _batch_lrs(clf)
    assert len(lrs) == 3 * 6  # 48 images, batch 8, every batch stepped
    assert lrs[0] == pytest.approx(1e-2)
    assert np.all(np.diff(lrs) < 0)
    # the last batch ran at the schedule's last positive value; after it the lr is 0
    assert lrs[-1] == pytest.approx(1e-2 * (1 - np.cos(np.pi / 18)) / 2)
    assert clf.net_.optimizer_.param_groups[0]["lr"] == pytest.approx(0, abs=1e-12)


def test_cosine_warmup_rises_linearly_then_decays(toy_binary, small_clf_params):
    clf = _fit(toy_binary, small_clf_params, max_epochs=3,
               lr_schedule={"policy": "cosine", "warmup_epochs": 1})
    lrs = _batch_lrs(clf)
    warm, rest = lrs[:6], lrs[6:]
    np.testing.assert_allclose(warm, 1e-2 * np.arange(1, 7) / 7)
    assert rest[0] == pytest.approx(1e-2)
    assert np.all(np.diff(rest) < 0)


def test_onecycle_peaks_at_lr(toy_binary, small_clf_params):
    clf = _fit(toy_binary, small_clf_params, max_epochs=4, lr_schedule="onecycle")
    lrs = _batch_lrs(clf)
    assert lrs[0] == pytest.approx(1e-2 / 25)  # OneCycleLR's div_factor
    assert lrs.max() == pytest.approx(1e-2, rel=1e-2)
    assert 0.2 * len(lrs) <= lrs.argmax() <= 0.35 * len(lrs)  # pct_start=0.3
    late = _batch_lrs(_fit(toy_binary, small_clf_params, max_epochs=4,
                           lr_schedule={"policy": "onecycle", "pct_start": 0.7}))
    assert late.argmax() > 0.6 * len(late)


def test_schedule_changes_training(toy_binary, small_clf_params):
    X, _ = toy_binary
    plain = _fit(toy_binary, small_clf_params)
    cosine = _fit(toy_binary, small_clf_params, lr_schedule="onecycle")
    assert not np.allclose(plain.predict_proba(X), cosine.predict_proba(X))


def test_plateau_dict_without_policy_passes_arguments(toy_binary, small_clf_params):
    X, y = toy_binary
    clf = CXRClassifier(**small_clf_params, lr_schedule={"patience": 0, "factor": 0.5})
    clf.fit(X, y)
    callback = dict(clf.net_.callbacks_)["lr_schedule"]
    assert callback.policy is ReduceLROnPlateau
    assert callback.factor == 0.5 and callback.patience == 0
    assert len(clf.history_[:, "event_lr"]) == clf.max_epochs
