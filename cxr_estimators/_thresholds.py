"""A sensitivity-first threshold with a lower confidence bound that backs it.

Choosing "the most specific threshold with sensitivity >= 0.95" on a tuning set lands, on
new images, below 0.95 about half the time: the empirical sensitivity at that threshold
is an estimate with sampling error. :func:`sensitivity_threshold` instead takes the
highest threshold whose *lower* one-sided Clopper-Pearson bound on sensitivity reaches
the target, so the target holds with the stated confidence for images like the tuning
set, scored by the same model (re-exported as
:func:`cxr_estimators.evaluation.sensitivity_threshold`).

The bound is :func:`scipy.stats.beta.ppf` (Clopper & Pearson 1934); written here because
scikit-learn's :class:`~sklearn.model_selection.TunedThresholdClassifierCV` optimises a
point estimate and has no confidence bound.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy.stats import beta

from ._validation import is_finite_number

__all__ = ["SensitivityThreshold", "sensitivity_threshold"]


class SensitivityThreshold(NamedTuple):
    """``threshold``: predict positive when score >= it. ``sensitivity``: on the tuning
    set; ``lower_bound``: its one-sided lower confidence bound (>= the target);
    ``specificity``: on the tuning set; ``n_positives``, ``confidence``."""

    threshold: float
    sensitivity: float
    lower_bound: float
    specificity: float
    n_positives: int
    confidence: float


def _lower_bound(successes, n, confidence):
    """One-sided Clopper-Pearson lower bound of a binomial proportion."""
    return float(beta.ppf(1 - confidence, successes, n - successes + 1)) if successes else 0.0


def sensitivity_threshold(y_true, y_score, *, min_sensitivity=0.95, confidence=0.95,
                          pos_label=1):
    """The most specific threshold whose sensitivity is at least ``min_sensitivity`` with
    ``confidence``, judged on held-out tuning images.

    Parameters
    ----------
    y_true : array-like of shape (n,)
        Labels of tuning images the model was *not* trained on.
    y_score : array-like of shape (n,)
        The final model's score (probability) of ``pos_label`` for them.
    min_sensitivity : float in (0, 1), default=0.95
    confidence : float in (0, 1), default=0.95
        Probability that the sensitivity on new images like these is at least
        ``min_sensitivity`` (one-sided Clopper-Pearson).
    pos_label : object, default=1

    Returns
    -------
    result : SensitivityThreshold

    Raises
    ------
    ValueError
        Lengths differ, no positive case, a parameter outside (0, 1), or too few
        positives for the target: even predicting every case positive does not reach it
        with this confidence (the message names the positives needed).

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> y = np.r_[np.ones(300), np.zeros(300)]
    >>> score = np.r_[rng.normal(2, 1, 300), rng.normal(0, 1, 300)]
    >>> t = sensitivity_threshold(y, score, min_sensitivity=0.9)
    >>> bool(t.lower_bound >= 0.9 and t.sensitivity > t.lower_bound)
    True
    """
    for name, value in (("min_sensitivity", min_sensitivity), ("confidence", confidence)):
        if not is_finite_number(value) or not 0 < value < 1:
            raise ValueError(f"{name} must be a number in (0, 1); got {value!r}")
    y_true, y_score = np.asarray(y_true), np.asarray(y_score, dtype=float)
    if y_true.shape != y_score.shape or y_true.ndim != 1:
        raise ValueError(f"y_true and y_score must be 1-D of one length; got shapes "
                         f"{y_true.shape} and {y_score.shape}")
    positive = y_true == pos_label
    n_pos = int(positive.sum())
    if n_pos == 0:
        raise ValueError(f"y_true has no case of pos_label={pos_label!r}")
    # k = positives at or above the threshold; the bound grows with k
    k_values = np.arange(n_pos + 1)
    bounds = beta.ppf(1 - confidence, np.maximum(k_values, 1), n_pos - k_values + 1)
    feasible = np.flatnonzero((bounds >= min_sensitivity) & (k_values > 0))
    if not feasible.size:
        needed = int(np.ceil(np.log(1 - confidence) / np.log(min_sensitivity)))
        raise ValueError(
            f"{n_pos} positive tuning cases cannot show sensitivity >= {min_sensitivity} "
            f"with confidence {confidence}: at least {needed} are needed (even with none "
            "missed); use more tuning positives or a lower target")
    k = int(feasible[0])  # fewest positives that must be caught: the highest threshold
    pos_scores = np.sort(y_score[positive])[::-1]
    threshold = float(pos_scores[k - 1])
    predicted = y_score >= threshold  # ties may catch more than k
    caught = int((predicted & positive).sum())
    negatives = ~positive
    specificity = (float((~predicted & negatives).sum() / negatives.sum())
                   if negatives.any() else float("nan"))
    return SensitivityThreshold(threshold, caught / n_pos, _lower_bound(caught, n_pos,
                                                                         confidence),
                                specificity, n_pos, float(confidence))
