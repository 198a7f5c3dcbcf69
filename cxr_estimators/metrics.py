"""Clinical metrics: sensitivity, specificity, scorers, and a report with bootstrap CIs.

scikit-learn does the work wherever it can: :func:`sensitivity_score` *is*
:func:`sklearn.metrics.recall_score`; point estimates in :func:`clinical_report` come
from :func:`sklearn.metrics.confusion_matrix` and :func:`sklearn.metrics.roc_auc_score`;
:func:`clinical_scorers` are built with :func:`sklearn.metrics.make_scorer`. Written here
by hand, because scikit-learn lacks them: :func:`specificity_score`, and (in
:mod:`cxr_estimators.report._clinical`, re-exported here) the PPV/NPV ratios and the percentile
bootstrap, whose resampled confusion matrices and ROC AUCs are computed for all
resamples at once (calling ``roc_auc_score`` a thousand times per class costs seconds;
the vectorised form gives the same numbers, see ``tests/test_metrics.py``).
"""

from __future__ import annotations

import warnings
from numbers import Real

import numpy as np
from sklearn.metrics import (
    check_scoring, f1_score, get_scorer, make_scorer, multilabel_confusion_matrix,
    recall_score, roc_auc_score,
)
from sklearn.utils._metadata_requests import MetadataRequest, _MetadataRequester
from sklearn.utils._param_validation import Options, StrOptions, validate_params
from sklearn.utils.metadata_routing import _routing_enabled
from sklearn.utils.multiclass import type_of_target, unique_labels

from .report import _clinical
from .report._clinical import (  # noqa: F401  (_check_labels_and_scores, _weighted_auc: plotting, tests)
    ClinicalReport, MetricEstimate, _check_labels_and_scores, _check_missing_labels,
    _implicit_pos_label, _weighted_auc,
)
from ._targets import is_multilabel
from ._validation import did_you_mean
from .report._findings import (
    FindingsReport, brier_score_per_finding, findings_report, findings_scores,
    log_loss_per_finding,
)

__all__ = [
    "ClinicalReport",
    "FindingsReport",
    "brier_score_per_finding",
    "log_loss_per_finding",
    "MetricEstimate",
    "clinical_report",
    "clinical_scorers",
    "sensitivity_score",
    "specificity_score",
]

_AVERAGES = (None, "binary", "micro", "macro", "weighted")
# as recall_score declares it
_ZERO_DIVISION = [Options(Real, {0.0, 1.0}), "nan", StrOptions({"warn"})]


def clinical_report(y_true, y_score, *, labels=None, pos_label=None, threshold=None,
                    n_bootstraps=1000, confidence=0.95, random_state=None, groups=None,
                    uncertain=None):
    """Clinical report with bootstrap CIs: one label per image, or k findings per image.

    1-D ``y_true``: :func:`cxr_estimators.report.clinical_report` (documented there:
    sensitivity, specificity, PPV, NPV, F1, ROC AUC and accuracy with bootstrap CIs),
    returning a :class:`ClinicalReport`; ``groups`` and ``uncertain`` must then be None.

    2-D ``y_true`` (n, k), multilabel (1 present, 0 absent, NaN not labelled, -1
    uncertain under ``uncertain``): a :class:`FindingsReport` with, per finding and over
    its labelled images, sensitivity, specificity, PPV, NPV, F1, ROC AUC, PR AUC
    (average precision), log loss, Brier score, prevalence and the number labelled, plus
    their macro (mean over findings) and micro (pooled pairs) values. ``y_score`` is
    ``predict_proba``'s (n, k); ``threshold`` one number, k numbers or a dict per
    finding (default 0.5); ``groups`` (patient ids): the bootstrap resamples patients,
    so the CIs account for several images of one patient. ``labels`` and ``pos_label``
    do not apply.

    Examples
    --------
    >>> import numpy as np
    >>> Y = np.array([[1, 0], [0, np.nan], [1, 1], [0, 0]] * 5)
    >>> P = np.array([[0.9, 0.2], [0.2, 0.7], [0.8, 0.6], [0.3, 0.4]] * 5)
    >>> report = clinical_report(Y, P, groups=np.arange(20) // 2, random_state=0)
    >>> report.per_finding[1]["roc_auc"].value, report.n_labelled[1]
    (1.0, 15)
    """
    if is_multilabel(y_true):
        if labels is not None or pos_label is not None:
            raise ValueError("labels and pos_label are for 1-D y_true; a multilabel "
                             "y_true names its findings by its columns")
        return findings_report(y_true, y_score, threshold=threshold, groups=groups,
                               n_bootstraps=n_bootstraps, confidence=confidence,
                               random_state=random_state, uncertain=uncertain)
    if groups is not None or uncertain is not None:
        raise ValueError("groups= and uncertain= are supported for multilabel y_true (n, "
                         "k); this y_true is 1-D")
    return _clinical.clinical_report(y_true, y_score, labels=labels, pos_label=pos_label,
                                   threshold=threshold, n_bootstraps=n_bootstraps,
                                   confidence=confidence, random_state=random_state)


# ----------------------------------------------------------------- sensitivity/specificity
def sensitivity_score(y_true, y_pred, *, labels=None, pos_label=1, average="binary",
                      sample_weight=None, zero_division="warn"):
    """Sensitivity (true positive rate, recall): TP / (TP + FN).

    The clinical name for :func:`sklearn.metrics.recall_score`, which computes it; all
    parameters are passed through unchanged, once ``y_true`` and ``y_pred`` are checked
    for missing labels (None or NaN, refused with their rows named) and for labels
    mixing strings and numbers.

    Parameters
    ----------
    y_true, y_pred : array-like of shape (n_samples,)
        True and predicted labels (numbers or strings).
    labels : array-like, default=None
        Labels to include when ``average != "binary"``; by default all labels present.
    pos_label : int, float, bool or str, default=1
        Positive class when ``average="binary"``, e.g. ``pos_label="pneumonia"``.
    average : {"binary", "micro", "macro", "weighted"} or None, default="binary"
        None returns one value per label (one-vs-rest).
    sample_weight : array-like of shape (n_samples,), default=None
    zero_division : {"warn", 0.0, 1.0, np.nan}, default="warn"
        Value when a class has no true cases ("warn" returns 0 and warns).

    Returns
    -------
    score : float, or ndarray of shape (n_labels,) when ``average=None``

    Examples
    --------
    >>> sensitivity_score(["a", "b", "b", "b"], ["a", "b", "a", "b"], pos_label="b")
    0.666...
    """
    _check_label_pair(y_true, y_pred)
    return recall_score(y_true, y_pred, labels=labels, pos_label=pos_label, average=average,
                        sample_weight=sample_weight, zero_division=zero_division)


@validate_params({"zero_division": _ZERO_DIVISION}, prefer_skip_nested_validation=False)
def specificity_score(y_true, y_pred, *, labels=None, pos_label=1, average="binary",
                      sample_weight=None, zero_division="warn"):
    """Specificity (true negative rate): TN / (TN + FP), one-vs-rest per class.

    Written here because scikit-learn has no specificity function. Same conventions as
    :func:`sklearn.metrics.recall_score`: ``average="binary"`` scores ``pos_label``;
    otherwise each label k is scored one-vs-rest (its negatives are all other classes)
    from :func:`sklearn.metrics.multilabel_confusion_matrix`, then averaged.

    Parameters
    ----------
    y_true, y_pred : array-like of shape (n_samples,)
        True and predicted labels (numbers or strings).
    labels : array-like, default=None
        Labels to include when ``average != "binary"``; by default all labels present.
    pos_label : int, float, bool or str, default=1
        Positive class when ``average="binary"``.
    average : {"binary", "micro", "macro", "weighted"} or None, default="binary"
        "macro": unweighted mean over labels. "weighted": mean weighted by each label's
        number of true cases (as in ``recall_score``). "micro": sum of TN over sum of
        TN + FP across labels. None: one value per label.
    sample_weight : array-like of shape (n_samples,), default=None
    zero_division : {"warn", 0.0, 1.0, np.nan}, default="warn"
        Value when a label has no negative cases ("warn" returns 0 and warns).

    Returns
    -------
    score : float, or ndarray of shape (n_labels,) when ``average=None``

    Raises
    ------
    ValueError
        Unknown ``average`` or ``zero_division``; ``average="binary"`` with more than two
        classes; a ``pos_label`` absent from two present classes; multilabel or
        continuous targets; missing labels (None or NaN; the message names the rows) or
        labels mixing strings and numbers in ``y_true`` or ``y_pred``.

    Examples
    --------
    >>> specificity_score(["a", "b", "b", "a"], ["a", "b", "a", "b"], pos_label="b")
    0.5
    """
    _check_label_pair(y_true, y_pred)
    labels = _set_wise_labels(y_true, y_pred, labels, pos_label, average)
    mcm = multilabel_confusion_matrix(y_true, y_pred, labels=labels,
                                      sample_weight=sample_weight)
    tn, fp, fn, tp = (mcm[:, i, j] for i, j in ((0, 0), (0, 1), (1, 0), (1, 1)))
    if average == "micro":
        tn, fp = tn.sum(keepdims=True), fp.sum(keepdims=True)
    spec = _ratio(tn, tn + fp, zero_division, "Specificity", "negative")
    if average in ("micro", "binary"):
        return float(spec[0])
    if average is None:
        return spec
    weights = (tp + fn) if average == "weighted" else None
    if weights is not None and weights.sum() == 0:
        return float(_ratio(np.zeros(1), np.zeros(1), zero_division, "Specificity",
                            "true")[0])
    return float(np.average(spec, weights=weights))


def _check_label_pair(y_true, y_pred):
    for name, y in (("y_true", y_true), ("y_pred", y_pred)):
        _check_missing_labels(y, name)


def _set_wise_labels(y_true, y_pred, labels, pos_label, average):
    """Labels to score, validated as ``recall_score`` does."""
    if average not in _AVERAGES:
        raise ValueError(f"average has to be one of {list(_AVERAGES)}; got {average!r}")
    for name, y in (("y_true", y_true), ("y_pred", y_pred)):
        kind = type_of_target(y, input_name=name)
        if kind not in ("binary", "multiclass"):
            raise ValueError(f"{name} must hold binary or multiclass labels; got {kind}")
    present = unique_labels(y_true, y_pred).tolist()
    if average == "binary":
        if len(present) > 2:
            raise ValueError(
                "Target is multiclass but average='binary'. Please choose another average "
                "setting, one of [None, 'micro', 'macro', 'weighted']."
            )
        if pos_label not in present and len(present) >= 2:
            raise ValueError(f"pos_label={pos_label!r} is not a valid label. It should be "
                             f"one of {present}")
        return [pos_label]
    if pos_label not in (None, 1):
        warnings.warn(f"Note that pos_label (set to {pos_label!r}) is ignored when average "
                      f"!= 'binary' (got {average!r}). You may use labels=[pos_label] to "
                      "specify a single positive class.", UserWarning, stacklevel=3)
    return labels


def _ratio(num, den, zero_division, metric, cases):
    from sklearn.exceptions import UndefinedMetricWarning

    num, den = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    out = np.divide(num, den, out=np.zeros_like(num), where=den != 0)
    if np.any(den == 0):
        if isinstance(zero_division, str):  # "warn"
            warnings.warn(f"{metric} is ill-defined and being set to 0.0 for labels with no "
                          f"{cases} samples. Use `zero_division` to control this behavior.",
                          UndefinedMetricWarning, stacklevel=3)
            zero_division = 0.0
        out[den == 0] = zero_division
    return out


# ------------------------------------------------------------------------------- scorers
_SCORER_NAMES = ("accuracy", "sensitivity", "specificity", "f1", "roc_auc")
_PER_CLASS_NAMES = ("sensitivity", "specificity", "f1", "roc_auc")
_LABEL_FUNCS = {"sensitivity": sensitivity_score, "specificity": specificity_score,
                "f1": f1_score}


class _RequestsSampleWeight(_MetadataRequester):
    """``set_score_request(sample_weight=...)`` for our scorers, as sklearn's scorers
    have it (metadata routing of the weights into scoring)."""

    def set_score_request(self, *, sample_weight=None):
        """Request ``sample_weight`` for scoring (sklearn metadata routing).

        Parameters
        ----------
        sample_weight : bool, str or None
            True: pass ``sample_weight`` to this scorer; False: do not; a str: pass the
            metadata of that name as ``sample_weight``; None: error if it is given.

        Returns
        -------
        self
        """
        if not _routing_enabled():
            raise RuntimeError("set_score_request is only available when metadata routing "
                               "is enabled: sklearn.set_config(enable_metadata_routing=True)")
        request = MetadataRequest(owner=self)
        request.score.add_request(param="sample_weight", alias=sample_weight)
        self.__dict__["_score_request"] = request
        return self

    def _get_metadata_request(self):
        return self.__dict__.get("_score_request") or MetadataRequest(owner=self)


class _ClinicalScorer(_RequestsSampleWeight):
    """Scorer ``f(estimator, X, y, sample_weight=None)`` that builds the binary or
    multiclass sklearn scorer from ``estimator.classes_`` at call time, so one dict serves
    both problems. Under metadata routing, ``set_score_request(sample_weight=True)``
    asks for the weights, as sklearn's own scorers do.

    With ``label`` set it scores that one class against the rest (per-class scorers).
    """

    def __init__(self, name, pos_label=None, label=None):
        self.name = name
        self.pos_label = pos_label
        self.label = label

    def __repr__(self):
        key = self.name if self.label is None else f"{self.name}_{self.label}"
        return f"clinical_scorers(pos_label={self.pos_label!r})[{key!r}]"

    def __getattr__(self, name):
        # sklearn's TunedThresholdClassifierCV reads a fixed scorer's private metric
        # function; this scorer only picks its metric at call time.
        if name in ("_score_func", "_sign", "_kwargs", "_response_method"):
            raise AttributeError(
                f"{self!r} chooses its sklearn scorer from estimator.classes_ at call time "
                "and cannot serve where a fixed scorer is needed, such as "
                "TunedThresholdClassifierCV(scoring=...); pass e.g. "
                "sklearn.metrics.make_scorer(sensitivity_score, pos_label=...) there")
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __call__(self, estimator, X, y_true, sample_weight=None):
        if is_multilabel(y_true):  # macro over findings, NaN labels left out
            key = self.name if self.label is None else f"{self.name}_{self.label}"
            return _multilabel_scores(estimator, X, y_true, sample_weight)[key]
        scorer = self._sklearn_scorer(np.asarray(estimator.classes_))
        kwargs = {} if sample_weight is None else {"sample_weight": sample_weight}
        return scorer(estimator, X, y_true, **kwargs)

    def _sklearn_scorer(self, classes):
        if self.label is not None:
            return self._one_vs_rest_scorer(classes)
        if self.name == "accuracy":
            return get_scorer("accuracy")
        if len(classes) == 2:
            if self.name == "roc_auc":
                if self.pos_label is not None:
                    self._binary_pos_label(classes)  # a wrong one is still an error
                # ROC AUC is symmetric in the two classes: classes_[1]'s column suffices,
                # so it needs no positive class.
                return make_scorer(roc_auc_score, response_method="predict_proba")
            return make_scorer(_LABEL_FUNCS[self.name],
                               pos_label=self._binary_pos_label(classes))
        if self.name == "roc_auc":
            return make_scorer(roc_auc_score, response_method="predict_proba",
                               multi_class="ovr", average="macro", labels=classes)
        return make_scorer(_LABEL_FUNCS[self.name], average="macro", labels=classes)

    def _binary_pos_label(self, classes):
        if self.pos_label is None:
            return _implicit_pos_label(classes.tolist(), f"{self!r}")
        if self.pos_label not in classes.tolist():
            # inside a search sklearn turns this error into a NaN score and a warning
            # (error_score=np.nan): say so, since every candidate then scores NaN
            raise ValueError(
                f"{self!r}: pos_label={self.pos_label!r} is not one of the estimator's "
                f"classes {classes.tolist()}{did_you_mean(self.pos_label, classes.tolist())}"
                ". In a grid search every score of this scorer would be NaN: pass "
                "error_score='raise' to the search to stop at the first such error")
        return self.pos_label

    def _one_vs_rest_scorer(self, classes):
        if self.label not in classes.tolist():
            raise ValueError(f"{self!r}: class {self.label!r} is not one of the "
                             f"estimator's classes {classes.tolist()}")
        if self.name == "roc_auc":
            return make_scorer(_class_roc_auc, response_method="predict_proba",
                               label=self.label, classes=classes.tolist())
        return make_scorer(_LABEL_FUNCS[self.name], labels=[self.label], average="macro")


def _class_roc_auc(y_true, y_score, *, label, classes):
    """One-vs-rest ROC AUC of class ``label`` from ``predict_proba``.

    For a binary estimator sklearn's scorer hands over the ``classes[1]`` column only
    (one cached column for every scorer of a multi-metric call, whatever their
    ``pos_label``), so ``classes[0]`` is scored on its complement.
    """
    y_score = np.asarray(y_score)
    if y_score.ndim == 2:
        y_score = y_score[:, classes.index(label)]
    elif label == classes[0]:
        y_score = 1 - y_score
    return roc_auc_score(np.asarray(y_true) == label, y_score)


class _PerClassScorers(_RequestsSampleWeight):
    """One scorer returning a dict: the overall clinical scores plus
    ``<metric>_<class>`` for each of ``estimator.classes_``.

    The class names are known only once the estimator is fitted, so this is a single
    callable (scikit-learn accepts a callable returning a dict as multi-metric
    ``scoring=``); :func:`sklearn.metrics.check_scoring` combines the per-metric sklearn
    scorers, so ``predict`` and ``predict_proba`` run once per call.
    """

    def __init__(self, pos_label=None):
        self.pos_label = pos_label

    def __repr__(self):
        return f"clinical_scorers(pos_label={self.pos_label!r}, per_class=True)"

    def __call__(self, estimator, X, y_true, sample_weight=None):
        if is_multilabel(y_true):
            return _multilabel_scores(estimator, X, y_true, sample_weight)
        classes = np.asarray(estimator.classes_)
        scorers = {name: _ClinicalScorer(name, self.pos_label)._sklearn_scorer(classes)
                   for name in _SCORER_NAMES}
        for label in classes.tolist():
            for name in _PER_CLASS_NAMES:
                scorers[f"{name}_{label}"] = _ClinicalScorer(
                    name, label=label)._sklearn_scorer(classes)
        kwargs = {} if sample_weight is None else {"sample_weight": sample_weight}
        return check_scoring(estimator, scoring=scorers)(estimator, X, y_true, **kwargs)


def _multilabel_scores(estimator, X, y_true, sample_weight):
    """All clinical scores of a multilabel ``estimator`` (one ``predict_proba``), at its
    per-finding ``thresholds`` when it has them (:func:`findings_scores`)."""
    step = estimator.steps[-1][1] if hasattr(estimator, "steps") else estimator
    names = getattr(step, "findings_", None)
    names = None if names is None else list(np.asarray(names).tolist())
    thresholds = getattr(step, "thresholds", None)
    return findings_scores(y_true, estimator.predict_proba(X), names=names,
                           threshold=thresholds, sample_weight=sample_weight)


def clinical_scorers(pos_label=None, *, per_class=False):
    """Scorers for model selection: accuracy, sensitivity, specificity, F1 and ROC AUC.

    Parameters
    ----------
    pos_label : int, str or None, default=None
        Positive class of a binary problem, e.g. ``"pneumonia"``. None is allowed only
        when the estimator's classes are {0, 1} or {-1, 1} (positive class 1, as in
        scikit-learn); for other binary classes, e.g. strings, the sensitivity,
        specificity and F1 scorers raise a ValueError naming the classes (accuracy and
        ROC AUC are symmetric and need none). Ignored for multiclass estimators.
    per_class : bool, default=False
        Also score each class one-vs-rest: ``sensitivity_<class>``,
        ``specificity_<class>``, ``f1_<class>`` and ``roc_auc_<class>`` for every class
        of ``estimator.classes_`` (e.g. ``sensitivity_viral``), the tie-breaker of a
        3-class selection. The names depend on the fitted classes, so the result is then
        one callable that returns a dict of all scores.

    Returns
    -------
    scorers : dict of str -> callable, or callable
        ``per_class=False``: keys "accuracy", "sensitivity", "specificity", "f1",
        "roc_auc"; each value is a callable ``scorer(estimator, X, y)`` usable as
        ``scoring=`` in :func:`~sklearn.model_selection.cross_validate` or
        :class:`~sklearn.model_selection.GridSearchCV` (e.g. with ``refit="roc_auc"``).
        Binary problems score ``pos_label``; ROC AUC uses the positive-class column of
        ``predict_proba``. Multiclass problems use the macro average over
        ``estimator.classes_`` (one-vs-rest macro ROC AUC from ``predict_proba``).
        Each call builds the matching :func:`sklearn.metrics.make_scorer` scorer from
        the fitted estimator's ``classes_``. Threshold tuning
        (:class:`~sklearn.model_selection.TunedThresholdClassifierCV`) needs a fixed
        scorer instead: ``make_scorer(sensitivity_score, pos_label="pneumonia")``.
        ``per_class=True``: one callable ``scorer(estimator, X, y) -> dict`` with the
        five keys above plus the per-class ones; pass it as ``scoring=`` and refit by
        any of its names (``refit="sensitivity_viral"``); ``cv_results_`` then holds
        ``mean_test_sensitivity_viral`` etc.
        Multilabel ``y`` (n, k) with NaN for missing labels: each score is the macro
        mean over findings, each computed on the images labelled for it, at the
        estimator's ``thresholds`` (accuracy: at 0.5); ``per_class=True`` adds
        ``<metric>_<finding>``. sklearn's ``check_cv`` refuses NaN in ``y`` when ``cv``
        is an int, so pass a splitter object: ``cv=grouped_cv(5)`` (stratified on
        findings, grouped by patient) or ``GroupKFold(5)``, with ``groups=``.

    Examples
    --------
    >>> from sklearn.linear_model import LogisticRegression
    >>> from sklearn.model_selection import cross_validate
    >>> X = [[0.0], [0.2], [0.4], [0.6], [0.8], [1.0]] * 5
    >>> y = ["normal", "normal", "normal", "pneumonia", "pneumonia", "pneumonia"] * 5
    >>> cv = cross_validate(LogisticRegression(), X, y, cv=3,
    ...                     scoring=clinical_scorers(pos_label="pneumonia"))
    >>> float(cv["test_sensitivity"].mean())
    1.0
    >>> y3 = ["normal", "normal", "viral", "viral", "bacterial", "bacterial"] * 5
    >>> cv = cross_validate(LogisticRegression(), X, y3, cv=3,
    ...                     scoring=clinical_scorers(per_class=True))
    >>> float(cv["test_sensitivity_normal"].mean())
    1.0
    """
    if not isinstance(per_class, (bool, np.bool_)):
        raise ValueError(f"per_class must be True or False; got {per_class!r}")
    if per_class:
        return _PerClassScorers(pos_label)
    return {name: _ClinicalScorer(name, pos_label) for name in _SCORER_NAMES}
