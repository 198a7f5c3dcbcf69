"""evaluation.sensitivity_threshold: a sensitivity target that holds on new images."""

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

from cxr_estimators.evaluation import sensitivity_threshold


def _naive_threshold(y, score, target):
    """The docs' former recipe: the highest threshold whose *observed* sensitivity
    reaches the target."""
    pos = np.sort(score[y == 1])[::-1]
    return pos[int(np.ceil(target * len(pos))) - 1]


def test_target_holds_with_the_stated_confidence_where_the_point_estimate_does_not():
    """Positives score N(1.5, 1): the true sensitivity at t is norm.sf(t - 1.5)."""
    rng = np.random.default_rng(0)
    ours, naive = [], []
    for _ in range(300):
        score = np.r_[rng.normal(1.5, 1, 200), rng.normal(0, 1, 200)]
        y = np.r_[np.ones(200), np.zeros(200)]
        result = sensitivity_threshold(y, score, min_sensitivity=0.95, confidence=0.95)
        assert result.lower_bound >= 0.95 and result.sensitivity >= result.lower_bound
        ours.append(norm.sf(result.threshold - 1.5) >= 0.95)
        naive.append(norm.sf(_naive_threshold(y, score, 0.95) - 1.5) >= 0.95)
    assert np.mean(ours) >= 0.93      # nominal 0.95 (Clopper-Pearson is conservative)
    assert np.mean(naive) < 0.75      # the point estimate misses about half the time


def test_recipe_after_retraining_keeps_its_target_on_new_images():
    """Threshold set split off first; the final model (retrained on everything else)
    scores it; its threshold then holds on a large fresh test set."""
    hits = []
    for seed in range(20):
        rng = np.random.default_rng(seed)
        X = rng.normal(size=(3000, 5))
        y = (X[:, 0] + 0.7 * X[:, 1] + rng.normal(0, 1, 3000) > 0.3).astype(int)
        X_dev, X_test, y_dev, y_test = train_test_split(X, y, test_size=0.5, random_state=0,
                                                        stratify=y)
        X_fit, X_thr, y_fit, y_thr = train_test_split(X_dev, y_dev, test_size=0.4,
                                                      random_state=seed, stratify=y_dev)
        final = LogisticRegression().fit(X_fit, y_fit)
        t = sensitivity_threshold(y_thr, final.predict_proba(X_thr)[:, 1])
        caught = final.predict_proba(X_test)[:, 1][y_test == 1] >= t.threshold
        hits.append(caught.mean() >= 0.95 - 0.01)  # 0.01: the test set's own noise
    assert np.mean(hits) >= 0.9


@pytest.mark.parametrize("kwargs, match", [
    (dict(y_true=[1] * 30 + [0] * 30, y_score=np.linspace(0, 1, 60)),
     "30 positive tuning cases cannot show sensitivity >= 0.95 .* at least 59"),
    (dict(y_true=[0] * 10, y_score=np.zeros(10)), "no case of pos_label=1"),
    (dict(y_true=[1, 0], y_score=[0.3]), "1-D of one length"),
    (dict(y_true=[1, 0], y_score=[0.3, 0.1], min_sensitivity=1.0), r"min_sensitivity must"),
    (dict(y_true=[1, 0], y_score=[0.3, 0.1], confidence=0), r"confidence must"),
])
def test_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sensitivity_threshold(**kwargs)
