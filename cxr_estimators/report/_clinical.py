"""The text clinical report: :func:`clinical_report` and its :class:`ClinicalReport`.

Imported by users from :mod:`cxr_estimators.metrics`. Point estimates come from
:func:`sklearn.metrics.confusion_matrix` and :func:`sklearn.metrics.roc_auc_score`;
written here by hand, because scikit-learn lacks them: the PPV/NPV ratios and the
percentile bootstrap, whose resampled confusion matrices and ROC AUCs are computed for
all resamples at once (calling ``roc_auc_score`` a thousand times per class costs
seconds; the vectorised form gives the same numbers, see ``tests/test_metrics.py``).
"""

from __future__ import annotations

import numbers
import warnings
from typing import NamedTuple

import numpy as np
from sklearn.metrics import confusion_matrix, roc_auc_score
from sklearn.utils import check_random_state

from .._validation import check_labels, check_memory, did_you_mean, is_finite_number

__all__ = ["ClinicalReport", "MetricEstimate", "clinical_report"]

_CLASS_METRICS = ("sensitivity", "specificity", "ppv", "npv", "f1", "roc_auc")
_ROW_SUM_TOL = 1e-3
#: Resamples x cases per bootstrap chunk: ~32 MB per float array of the chunk.
_CHUNK_CELLS = 2 ** 22
#: Float arrays of one chunk's size alive at once in :func:`_bootstrap` (measured with
#: tracemalloc: 9).
_CHUNK_ARRAYS = 9


def clinical_report(y_true, y_score, *, labels=None, pos_label=None, threshold=None,
                    n_bootstraps=1000, confidence=0.95, random_state=None):
    """Sensitivity, specificity, PPV, NPV, F1, ROC AUC and accuracy with bootstrap CIs.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        True labels (numbers or strings).
    y_score : array-like of shape (n_samples,) or (n_samples, n_classes)
        1-D: the positive-class score of a binary problem (any real score; probability
        for the default threshold). 2-D: class probabilities, columns in ``labels``
        order, rows summing to 1 (within 1e-3), e.g. ``estimator.predict_proba(X)``.
    labels : array-like, default=None
        All classes, in the column order of ``y_score``; default sorted unique ``y_true``
        (then every class must occur in ``y_true``).
    pos_label : int, str or None, default=None
        Positive class of a binary problem. None is allowed only when the labels are
        {0, 1} or {-1, 1} (the positive class is then 1, as in scikit-learn); any other
        binary labels, e.g. strings, need it. Binary only.
    threshold : float or None, default=None
        Binary: predicted positive when score >= threshold (default 0.5). Any finite
        number for a 1-D score; in [0, 1] for 2-D probabilities. Multiclass predictions
        are the argmax and take no threshold.
    n_bootstraps : int, default=1000
        Percentile bootstrap resamples (cases drawn with replacement); 0 gives no CIs.
        The metrics of every resample are kept (about 16 bytes per metric and
        resample), so a count whose arrays cannot fit in memory is refused.
    confidence : float in (0, 1), default=0.95
    random_state : int, RandomState instance or None, default=None
        Seed of the resampling; an int gives the same CIs on every call.

    Returns
    -------
    report : ClinicalReport
        ``per_class[label]`` holds one-vs-rest sensitivity, specificity, PPV, NPV, F1 and
        ROC AUC for each label. ``overall`` holds the same metrics for ``pos_label``
        (binary) or their macro average (multiclass; ROC AUC is one-vs-rest macro), plus
        accuracy. Each is a :class:`MetricEstimate` ``(value, ci_low, ci_high,
        n_resamples)``, where ``n_resamples`` counts the resamples in which the metric was
        defined (resamples with a zero denominator or a single class are skipped).
        ``confusion_matrix`` has rows = true, columns = predicted, in ``labels`` order.

    Raises
    ------
    ValueError
        Lengths differ; a ``y_true`` label is not in ``labels``; ``y_true`` or
        ``labels`` has missing labels (None or NaN; the message names the rows) or mixes
        strings and numbers; ``y_score`` has the wrong number of columns or rows not
        summing to 1; fewer than two labels; ``threshold`` or ``pos_label`` given for a
        multiclass problem; ``threshold`` NaN, infinite, not a number, or outside
        [0, 1] for 2-D probabilities; ``n_bootstraps`` not a non-negative int (a bool
        is refused); ``confidence`` not a number in (0, 1); binary labels other than
        {0, 1} or {-1, 1} without ``pos_label`` (the message names the labels).
    MemoryError
        The resamples of ``n_bootstraps`` would need more memory than is available (the
        message names ``n_bootstraps``); raised before any is drawn.

    Warns
    -----
    UserWarning
        ROC AUC is undefined for a class when ``y_true`` has no case of it or only cases
        of it (e.g. a single-class ``y_true``); that AUC (and the macro AUC) is NaN.
        Other metrics with a zero denominator are NaN without a warning.

    Examples
    --------
    >>> y = ["normal", "pneumonia", "pneumonia", "normal", "pneumonia", "normal"]
    >>> score = [0.1, 0.8, 0.4, 0.3, 0.9, 0.6]
    >>> report = clinical_report(y, score, pos_label="pneumonia", random_state=0)
    >>> report.overall["sensitivity"].value
    0.666...
    >>> report.confusion_matrix.tolist()
    [[2, 1], [1, 2]]
    """
    y_true, proba, labels, pos_label, threshold = _check_report_inputs(
        y_true, y_score, labels, pos_label, threshold)
    _check_bootstrap_params(n_bootstraps, confidence, len(y_true), len(labels))
    binary = len(labels) == 2
    pos_index = labels.index(pos_label) if binary else None
    if binary:
        scores = proba[:, pos_index]
        y_pred_idx = np.where(scores >= threshold, pos_index, 1 - pos_index)
    else:
        y_pred_idx = np.argmax(proba, axis=1)
    index = {label: i for i, label in enumerate(labels)}
    y_idx = np.array([index[v] for v in y_true.tolist()], dtype=np.intp)

    point = _point_estimates(y_idx, y_pred_idx, proba, labels, pos_index)
    boot = _bootstrap(y_idx, y_pred_idx, proba, len(labels), pos_index, n_bootstraps,
                      check_random_state(random_state))
    alpha = (1 - confidence) / 2
    estimates = {key: _estimate(point[key], boot.get(key), alpha) for key in point}
    per_class = {label: {m: estimates[(k, m)] for m in _CLASS_METRICS}
                 for k, label in enumerate(labels)}
    overall = {m: estimates[("overall", m)] for m in (*_CLASS_METRICS, "accuracy")}
    cm = confusion_matrix(y_idx, y_pred_idx, labels=range(len(labels)))
    return ClinicalReport(labels=labels, pos_label=pos_label if binary else None,
                          threshold=threshold if binary else None, n_samples=len(y_idx),
                          confidence=confidence, n_bootstraps=n_bootstraps,
                          overall=overall, per_class=per_class, confusion_matrix=cm)


def _check_labels_and_scores(y_true, y_score, labels):
    """Validate (y_true, y_score, labels); return y_true, 2-D y_score or 1-D, labels list.

    Shared with :mod:`cxr_estimators.plotting`.
    """
    _check_missing_labels(y_true, "y_true")
    if labels is not None:
        _check_missing_labels(labels, "labels")
    y_true = np.asarray(y_true)
    y_score = np.asarray(y_score, dtype=float)
    if y_true.ndim != 1:
        raise ValueError(f"y_true must be 1-D; got shape {y_true.shape}")
    if y_score.ndim not in (1, 2):
        raise ValueError(f"y_score must be 1-D or 2-D; got shape {y_score.shape}")
    if len(y_true) != len(y_score):
        raise ValueError(f"y_true has {len(y_true)} samples but y_score has {len(y_score)}")
    if len(y_true) == 0:
        raise ValueError("y_true is empty")
    if not np.all(np.isfinite(y_score)):
        raise ValueError("y_score contains NaN or infinity")
    if labels is None:
        labels = np.unique(y_true).tolist()
        if len(labels) < 2 and not (y_score.ndim == 2 and y_score.shape[1] == len(labels)):
            raise ValueError(f"y_true has a single class {labels}; pass labels=[...] to "
                             "name all classes")
    else:
        labels = np.asarray(labels).tolist()
        if len(set(labels)) != len(labels):
            raise ValueError(f"labels contains duplicates: {labels}")
        unknown = sorted(set(np.unique(y_true).tolist()) - set(labels), key=str)
        if unknown:
            raise ValueError(f"y_true contains label(s) {unknown} not in labels {labels}")
    if len(labels) < 2:
        raise ValueError(f"need at least two labels; got {labels}")
    if y_score.ndim == 1 and len(labels) != 2:
        raise ValueError(f"1-D y_score is a binary positive-class score but there are "
                         f"{len(labels)} labels {labels}; pass (n, {len(labels)}) "
                         "probabilities")
    if y_score.ndim == 2:
        if y_score.shape[1] != len(labels):
            raise ValueError(f"y_score has {y_score.shape[1]} columns but there are "
                             f"{len(labels)} labels {labels}")
        outside = np.flatnonzero(((y_score < 0) | (y_score > 1)).any(axis=1))
        if outside.size:
            raise ValueError(
                f"y_score must hold probabilities in [0, 1]; {outside.size} rows do not, "
                f"e.g. row {outside[0]}: {y_score[outside[0]].tolist()}")
        bad = np.flatnonzero(np.abs(y_score.sum(axis=1) - 1) > _ROW_SUM_TOL)
        if bad.size:
            raise ValueError(
                f"y_score rows must be probabilities summing to 1 (tolerance "
                f"{_ROW_SUM_TOL}); {bad.size} rows do not, e.g. row {bad[0]} sums to "
                f"{y_score[bad[0]].sum():.4f}")
    return y_true, y_score, labels


def _check_report_inputs(y_true, y_score, labels, pos_label, threshold):
    y_true, y_score, labels = _check_labels_and_scores(y_true, y_score, labels)
    if len(labels) > 2:
        if threshold is not None:
            raise ValueError(f"threshold={threshold!r} applies to binary problems only; "
                             f"multiclass predictions are the argmax over {labels}")
        if pos_label is not None:
            raise ValueError(f"pos_label={pos_label!r} applies to binary problems only; "
                             "per_class gives each class one-vs-rest")
        return y_true, y_score, labels, None, None
    if pos_label is None:
        pos_label = _implicit_pos_label(labels, "clinical_report")
    elif pos_label not in labels:
        raise ValueError(f"pos_label={pos_label!r} is not one of labels {labels}"
                         f"{did_you_mean(pos_label, labels)}")
    else:  # the labels' own (plain Python) value, e.g. str rather than numpy.str_
        pos_label = labels[labels.index(pos_label)]
    threshold = _check_threshold(threshold, probabilities=y_score.ndim == 2)
    if y_score.ndim == 1:  # positive-class score -> two columns in labels order
        pos = labels.index(pos_label)
        # the negative column is never used for predictions or AUC; -score keeps the
        # array meaningful for any real-valued score
        y_score = np.column_stack([-y_score, y_score] if pos == 1 else [y_score, -y_score])
    return y_true, y_score, labels, pos_label, threshold


def _check_missing_labels(y, name):
    """Refuse None/NaN labels in ``y`` (naming their rows) and labels mixing strings and
    numbers, which numpy's sort would otherwise fail on with a bare TypeError.

    Shared with :mod:`cxr_estimators.metrics`. A NaN among strings in a list is looked
    for before numpy turns it into the string 'nan', and a NaN in a float array is
    looked for too (:func:`check_labels` checks object arrays).
    """
    values = np.asarray(y)
    if values.dtype.kind in "US" and not isinstance(y, np.ndarray):
        values = np.asarray(y, dtype=object)
    elif values.dtype.kind == "f" and np.isnan(values).any():
        values = values.astype(object)
    check_labels(values, name, missing=True)


def _check_threshold(threshold, probabilities):
    """The decision threshold as a float (0.5 for None); NaN would silently predict
    every case negative, and a threshold beyond [0, 1] does so for probabilities."""
    if threshold is None:
        return 0.5
    if not is_finite_number(threshold):
        raise ValueError(f"threshold must be a finite number; got {threshold!r}")
    if probabilities and not 0 <= threshold <= 1:
        side = "negative" if threshold > 1 else "positive"
        raise ValueError(f"threshold={threshold!r} is outside [0, 1], but y_score holds "
                         f"probabilities (2-D): every case would be predicted {side}")
    return float(threshold)


def _check_bootstrap_params(n_bootstraps, confidence, n_samples, n_labels):
    if not is_finite_number(n_bootstraps, integral=True) or n_bootstraps < 0:
        raise ValueError(f"n_bootstraps must be a non-negative int; got {n_bootstraps!r}")
    if not is_finite_number(confidence) or not 0 < confidence < 1:
        raise ValueError(f"confidence must be a number in (0, 1); got {confidence!r}")
    _check_bootstrap_memory(int(n_bootstraps), n_samples, n_labels)


def _chunk_size(n_samples):
    """Resamples drawn at once by :func:`_bootstrap`; bounds its working memory."""
    return max(1, _CHUNK_CELLS // n_samples)


def _check_bootstrap_memory(n_bootstraps, n_samples, n_labels):
    """Refuse an ``n_bootstraps`` whose resamples cannot fit, before drawing any.

    The chunks bound the working memory, but every resample's metrics are kept for the
    percentiles: one float per metric (``(n_labels + 1)`` x 6, plus accuracy) and
    resample, twice while the chunks are joined.
    """
    n_metrics = (n_labels + 1) * len(_CLASS_METRICS) + 1
    kept = 2 * 8 * n_metrics * n_bootstraps
    working = _CHUNK_ARRAYS * 8 * min(n_bootstraps, _chunk_size(n_samples)) * n_samples
    check_memory(kept + working,
                 f"clinical_report with n_bootstraps={n_bootstraps} ({n_samples} cases, "
                 f"{n_labels} labels)",
                 "pass a smaller n_bootstraps (1000 to 10000 resamples give stable "
                 "percentile CIs)")


def _implicit_pos_label(labels, caller):
    """The positive class of two ``labels`` when ``pos_label`` is not given.

    As in scikit-learn (``f1_score``, ``roc_curve``): only {0, 1} and {-1, 1} name their
    positive class (1); for any other pair, e.g. strings, guessing ``labels[1]`` would
    silently swap sensitivity and specificity, so the caller must say.
    """
    labels = list(labels)
    numeric = all(isinstance(v, (numbers.Number, np.number, np.bool_)) for v in labels)
    if numeric and sorted(labels) in ([0, 1], [-1, 1]):
        return labels[labels.index(1)]
    raise ValueError(f"{caller}: the classes are {labels} and pos_label is not given; "
                     f"pass pos_label= one of them (e.g. pos_label={labels[1]!r}). Only "
                     "{0, 1} and {-1, 1} imply the positive class 1, as in scikit-learn.")


def _per_class_rates(tp, fn, fp, tn):
    """Arrays of the one-vs-rest ratios; NaN where a denominator is zero."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return {"sensitivity": tp / (tp + fn), "specificity": tn / (tn + fp),
                "ppv": tp / (tp + fp), "npv": tn / (tn + fn),
                "f1": 2 * tp / (2 * tp + fp + fn)}


def _counts_from_cm(cm):
    """tp, fn, fp, tn per class from confusion matrices (..., K, K)."""
    tp = np.diagonal(cm, axis1=-2, axis2=-1).astype(float)
    fn = cm.sum(axis=-1) - tp
    fp = cm.sum(axis=-2) - tp
    tn = cm.sum(axis=(-2, -1))[..., None] - tp - fn - fp
    return tp, fn, fp, tn


def _point_estimates(y_idx, y_pred_idx, proba, labels, pos_index):
    k = len(labels)
    cm = confusion_matrix(y_idx, y_pred_idx, labels=range(k))
    rates = _per_class_rates(*_counts_from_cm(cm))
    aucs = np.full(k, np.nan)
    for c in range(k):
        positives = y_idx == c
        if positives.all() or not positives.any():
            warnings.warn(f"ROC AUC is undefined for class {labels[c]!r}: y_true has "
                          f"{'only' if positives.all() else 'no'} cases of it; reported as "
                          "NaN", UserWarning, stacklevel=3)
        elif pos_index is None or c == pos_index:
            aucs[c] = roc_auc_score(positives, proba[:, c])
    if pos_index is not None:  # binary: the other class's AUC is the same number
        aucs[1 - pos_index] = aucs[pos_index]
    rates["roc_auc"] = aucs
    out = {(c, m): float(rates[m][c]) for c in range(k) for m in _CLASS_METRICS}
    for m in _CLASS_METRICS:
        value = rates[m][pos_index] if pos_index is not None else np.mean(rates[m])
        out[("overall", m)] = float(value)
    out[("overall", "accuracy")] = float(np.trace(cm) / cm.sum())
    return out


def _bootstrap(y_idx, y_pred_idx, proba, k, pos_index, n_bootstraps, rng):
    """Metric arrays over resamples, NaN where undefined. Keys as in _point_estimates."""
    if n_bootstraps == 0:
        return {}
    n = len(y_idx)
    cells = np.zeros((n, k * k))
    cells[np.arange(n), y_idx * k + y_pred_idx] = 1.0
    order = np.argsort(proba, axis=0, kind="stable")
    chunk = _chunk_size(n)
    results = []
    for start in range(0, n_bootstraps, chunk):
        b = min(chunk, n_bootstraps - start)
        weights = bootstrap_weights(n, b, rng)
        cm = (weights @ cells).reshape(b, k, k)
        rates = _per_class_rates(*_counts_from_cm(cm))
        aucs = [(_weighted_auc(proba[:, c], y_idx == c, weights, order[:, c])
                 if pos_index is None or c == pos_index else None) for c in range(k)]
        if pos_index is not None:
            aucs[1 - pos_index] = aucs[pos_index]
        rates["roc_auc"] = np.column_stack(aucs)
        chunk_out = {(c, m): rates[m][:, c] for c in range(k) for m in _CLASS_METRICS}
        for m in _CLASS_METRICS:  # macro mean is NaN if any class is undefined
            chunk_out[("overall", m)] = (rates[m][:, pos_index] if pos_index is not None
                                         else rates[m].mean(axis=1))
        chunk_out[("overall", "accuracy")] = np.trace(cm, axis1=1, axis2=2) / n
        results.append(chunk_out)
    return {key: np.concatenate([r[key] for r in results]) for key in results[0]}


def bootstrap_weights(n, n_bootstraps, rng):
    """Case multiplicities (n_bootstraps, n) of resamples drawn with replacement: the
    form in which the vectorised metrics here (and in the shift audit, the shortcut
    test and the HTML report) take a bootstrap."""
    draws = rng.randint(0, n, size=(n_bootstraps, n))
    return np.bincount((draws + n * np.arange(n_bootstraps)[:, None]).ravel(),
                       minlength=n_bootstraps * n).reshape(n_bootstraps, n).astype(float)


def _weighted_auc(score, positive, weights, order):
    """ROC AUC per row of ``weights`` (case multiplicities), ties counted as 1/2.

    The Mann-Whitney form of AUC with case weights; equals
    ``roc_auc_score(positive, score, sample_weight=w)`` for each row ``w``.
    """
    s, pos = score[order], positive[order]
    w = weights[:, order]
    w_pos, w_neg = w * pos, w * ~pos
    # first/last+1 sorted position of each case's tie group
    first = np.searchsorted(s, s, side="left")
    last = np.searchsorted(s, s, side="right")
    cum_neg = np.concatenate([np.zeros((len(w), 1)), np.cumsum(w_neg, axis=1)], axis=1)
    below = cum_neg[:, first]
    tied = cum_neg[:, last] - below
    total_pos, total_neg = w_pos.sum(axis=1), w_neg.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        auc = (w_pos * (below + 0.5 * tied)).sum(axis=1) / (total_pos * total_neg)
    auc[(total_pos == 0) | (total_neg == 0)] = np.nan
    return auc


def _estimate(value, samples, alpha):
    if samples is None:
        return MetricEstimate(value, np.nan, np.nan, 0)
    valid = samples[np.isfinite(samples)]
    if valid.size == 0:
        return MetricEstimate(value, np.nan, np.nan, 0)
    low, high = np.percentile(valid, [100 * alpha, 100 * (1 - alpha)])
    return MetricEstimate(value, float(low), float(high), int(valid.size))


# ------------------------------------------------------------------------ report object
class MetricEstimate(NamedTuple):
    """A point estimate with its percentile bootstrap confidence interval.

    ``n_resamples`` counts the bootstrap resamples in which the metric was defined.
    """

    value: float
    ci_low: float
    ci_high: float
    n_resamples: int


class ClinicalReport:
    """Result of :func:`clinical_report`; print it, or export it with ``to_dict``/``to_frame``.

    Attributes
    ----------
    labels : list
        Classes, in ``y_score`` column order.
    pos_label : object or None
        Positive class (binary problems; None for multiclass).
    threshold : float or None
        Decision threshold on the positive-class score (binary problems).
    n_samples : int
    confidence : float
    n_bootstraps : int
        Resamples drawn; each metric's ``n_resamples`` says how many were usable.
    overall : dict of str -> MetricEstimate
        "sensitivity", "specificity", "ppv", "npv", "f1", "roc_auc" (positive class, or
        macro average for multiclass) and "accuracy".
    per_class : dict of label -> dict of str -> MetricEstimate
        One-vs-rest metrics of each class (all but accuracy).
    confusion_matrix : ndarray of shape (n_classes, n_classes)
        Rows: true class, columns: predicted class, in ``labels`` order.
    """

    def __init__(self, *, labels, pos_label, threshold, n_samples, confidence, n_bootstraps,
                 overall, per_class, confusion_matrix):
        self.labels = labels
        self.pos_label = pos_label
        self.threshold = threshold
        self.n_samples = n_samples
        self.confidence = confidence
        self.n_bootstraps = n_bootstraps
        self.overall = overall
        self.per_class = per_class
        self.confusion_matrix = confusion_matrix

    def _rows(self, once=False):
        """(class, metric, estimate) rows. ``once``: a binary report's per-class rows
        repeat the overall ones (the negative class's sensitivity is the specificity, ...),
        so they are left out and each figure is printed once."""
        for metric, est in self.overall.items():
            yield "overall", metric, est
        if once and self.pos_label is not None:
            return
        for label, metrics in self.per_class.items():
            for metric, est in metrics.items():
                yield label, metric, est

    def __repr__(self):
        auc = self.overall["roc_auc"]
        return (f"ClinicalReport(n_samples={self.n_samples}, labels={self.labels}, "
                f"roc_auc={auc.value:.3f} [{auc.ci_low:.3f}, {auc.ci_high:.3f}])")

    def __str__(self):
        if self.pos_label is not None:
            head = (f"binary, positive class {self.pos_label!r}, predicted positive when "
                    f"score >= {self.threshold:g}")
        else:
            head = f"{len(self.labels)} classes, predicted class = argmax; overall = macro"
        pct = f"{100 * self.confidence:g}%"
        lines = [f"Clinical report: n = {self.n_samples}, {head}",
                 f"{pct} CI: percentile bootstrap, {self.n_bootstraps} resamples of cases",
                 "",
                 f"{'class':<14}{'metric':<13}{'value':>7}  {pct + ' CI':<17}{'resamples':>9}"]
        for group, metric, est in self._rows(once=True):
            ci = f"[{est.ci_low:.3f}, {est.ci_high:.3f}]" if est.n_resamples else "-"
            lines.append(f"{str(group)[:13]:<14}{metric:<13}{est.value:>7.3f}  {ci:<17}"
                         f"{est.n_resamples:>9}")
        names = [str(label)[:11] for label in self.labels]
        width = max(9, *(len(name) + 2 for name in names))
        lines += ["", "confusion matrix (rows: true, columns: predicted)",
                  " " * 13 + "".join(f"{name:>{width}}" for name in names)]
        for name, row in zip(names, self.confusion_matrix):
            lines.append(f"{name:<13}" + "".join(f"{v:>{width}d}" for v in row))
        return "\n".join(lines)

    def to_dict(self):
        """Plain nested dicts of Python floats, ints, strings and lists.

        NaN stays a float (``json.dumps`` writes it as ``NaN``).

        Returns
        -------
        dict
            Keys "labels", "pos_label", "threshold", "n_samples", "confidence",
            "n_bootstraps", "overall" (metric -> {"value", "ci_low", "ci_high",
            "n_resamples"}), "per_class" (label -> metric -> same), "confusion_matrix"
            (list of lists).
        """
        def plain(est):
            return {"value": float(est.value), "ci_low": float(est.ci_low),
                    "ci_high": float(est.ci_high), "n_resamples": int(est.n_resamples)}

        return {
            "labels": list(self.labels),
            "pos_label": self.pos_label,
            "threshold": self.threshold,
            "n_samples": int(self.n_samples),
            "confidence": float(self.confidence),
            "n_bootstraps": int(self.n_bootstraps),
            "overall": {m: plain(e) for m, e in self.overall.items()},
            "per_class": {label: {m: plain(e) for m, e in metrics.items()}
                          for label, metrics in self.per_class.items()},
            "confusion_matrix": np.asarray(self.confusion_matrix).tolist(),
        }

    def to_frame(self):
        """Long-format pandas DataFrame: class, metric, value, ci_low, ci_high, n_resamples.

        Raises
        ------
        ImportError
            pandas is not installed.
        """
        try:
            import pandas as pd
        except ImportError as exc:
            raise ImportError("ClinicalReport.to_frame needs pandas: pip install pandas "
                              "(or use ClinicalReport.to_dict)") from exc
        return pd.DataFrame([(group, metric, *est) for group, metric, est in self._rows()],
                            columns=["class", "metric", *MetricEstimate._fields])
