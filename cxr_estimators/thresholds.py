"""Per-finding decision thresholds for a target sensitivity or specificity.

A multilabel :class:`~cxr_estimators.CXRClassifier` calls a finding present when its
probability reaches that finding's threshold (``thresholds=``, 0.5 by default). A screening
use wants, say, 90 % sensitivity for every finding: :func:`tune_thresholds` reads each
finding's threshold off a tuning set (images the model was not trained on), and
``clf.set_params(thresholds=...)`` applies them.

Written by hand: sklearn's :class:`~sklearn.model_selection.TunedThresholdClassifierCV`
is binary only (one threshold on one positive class, and it refuses multilabel ``y`` and
NaN labels); a per-finding threshold at a given operating point is a quantile of that
finding's labelled scores, computed here.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from ._targets import multilabel_targets
from ._validation import is_finite_number

__all__ = ["tune_thresholds"]


def _threshold(scores, positive, sensitivity, specificity):
    """Largest threshold with sensitivity >= target, or smallest with specificity >=
    target, on one finding's labelled images; NaN without a case of the needed class."""
    if sensitivity is not None:
        pos = np.sort(scores[positive])[::-1]
        if not len(pos):
            return np.nan
        return float(pos[max(1, math.ceil(sensitivity * len(pos))) - 1])
    neg = np.sort(scores[~positive])
    if not len(neg):
        return np.nan
    k = math.ceil(specificity * len(neg))
    if k == 0:
        return 0.0
    return float(min(1.0, np.nextafter(neg[k - 1], np.inf)))


def tune_thresholds(estimator, X, y, *, sensitivity=None, specificity=None):
    """Each finding's threshold for a target sensitivity (or specificity) on ``(X, y)``.

    Parameters
    ----------
    estimator : fitted multilabel classifier or Pipeline
        Its ``predict_proba(X)`` gives (n, k) probabilities, one per finding (a
        :class:`~cxr_estimators.CXRClassifier` fitted on ``y`` (n, k)).
    X : array-like
        A tuning set: images the model was not trained on.
    y : array-like or DataFrame of shape (n, k)
        Its labels: 1, 0, NaN (left out); uncertain -1 is refused (map it first).
    sensitivity, specificity : float in (0, 1], exactly one of them
        The operating point: the largest threshold whose sensitivity on the tuning set
        is at least ``sensitivity``, or the smallest whose specificity is at least
        ``specificity``.

    Returns
    -------
    thresholds : dict of finding -> float
        Keyed by the estimator's ``findings_`` (else ``y``'s columns); pass it to
        ``set_params(thresholds=...)``. A finding without a positive (sensitivity) or
        negative (specificity) labelled image in ``y`` keeps 0.5, with a warning naming
        it.

    Examples
    --------
    >>> import numpy as np
    >>> class Fixed:  # any fitted estimator with predict_proba
    ...     findings_ = np.array(["Effusion", "Edema"])
    ...     def predict_proba(self, X):
    ...         return np.array([[0.9, 0.2], [0.6, 0.7], [0.3, 0.4], [0.1, 0.8]])
    >>> Y = np.array([[1, 0], [1, 1], [1, 0], [0, np.nan]])
    >>> tune_thresholds(Fixed(), None, Y, sensitivity=2 / 3)
    {'Effusion': 0.6, 'Edema': 0.7}
    """
    if (sensitivity is None) == (specificity is None):
        raise ValueError("give exactly one of sensitivity= and specificity=")
    name, target = (("sensitivity", sensitivity) if sensitivity is not None
                    else ("specificity", specificity))
    if not is_finite_number(target) or not 0 < target <= 1:
        raise ValueError(f"{name} must be a number in (0, 1]; got {target!r}")
    step = estimator.steps[-1][1] if hasattr(estimator, "steps") else estimator
    findings, Y = multilabel_targets(y, None, "y", findings=getattr(step, "findings_", None),
                                     against="the model")
    proba = np.asarray(estimator.predict_proba(X), dtype=np.float64)
    if proba.shape != Y.shape:
        raise ValueError(f"predict_proba(X) has shape {proba.shape} but y has {Y.shape}: "
                         "the estimator must be fitted on y's findings")
    out = {}
    for j, finding in enumerate(np.asarray(findings).tolist()):
        labelled = ~np.isnan(Y[:, j])
        cut = _threshold(proba[labelled, j], Y[labelled, j] == 1, sensitivity, specificity)
        if np.isnan(cut):
            warnings.warn(f"finding {finding!r} has no {'positive' if sensitivity else 'negative'} "
                          f"labelled image in y: its {name} cannot be tuned; it keeps 0.5",
                          UserWarning, stacklevel=2)
            cut = 0.5
        out[finding] = cut
    return out
