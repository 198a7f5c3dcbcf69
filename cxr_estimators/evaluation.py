"""Evaluation helpers: patient-grouped CV, external validation, retraining on all data.

All are thin: :func:`grouped_cv` is scikit-learn's
:class:`~sklearn.model_selection.StratifiedGroupKFold` with shuffling on;
:func:`external_validate` runs :func:`cxr_estimators.metrics.clinical_report` on each
held-out dataset after checking that its labels are ones the model knows;
:func:`best_epoch_scorer` and :func:`retrain_on_all` are the "select with early stopping on
validation data, then retrain on train + validation for that many epochs" protocol
around a :class:`~sklearn.model_selection.GridSearchCV` (whose own ``refit`` would early-stop
again, on an internal split).
"""

from __future__ import annotations

import numbers
import warnings

import numpy as np
from sklearn.base import clone
from sklearn.pipeline import Pipeline
from sklearn.utils.validation import check_is_fitted

from ._callbacks import OneClassWarning
from ._targets import StratifiedFindingGroupKFold
from .metrics import clinical_report
from ._thresholds import SensitivityThreshold, sensitivity_threshold
from .report._page import report

__all__ = ["SensitivityThreshold", "best_epoch_scorer", "external_validate", "grouped_cv",
           "report", "retrain_on_all", "sensitivity_threshold"]


def grouped_cv(n_splits=5, *, random_state=None):
    """Stratified K-fold that keeps each group (patient) on one side of every split.

    Parameters
    ----------
    n_splits : int, default=5
    random_state : int, RandomState instance or None, default=None
        Seed of the shuffling of groups; an int gives the same folds on every call.

    Returns
    -------
    cv : sklearn.model_selection.StratifiedGroupKFold
        ``StratifiedGroupKFold(n_splits, shuffle=True, random_state=random_state)``;
        pass ``groups=`` (e.g. ``Bunch.groups`` from :mod:`cxr_estimators.datasets`) to
        ``fit``/``split``/``cross_validate``. A multilabel ``y`` (n, k), NaN allowed, is
        stratified on each image's rarest positive finding (a subclass,
        :class:`cxr_estimators._targets.StratifiedFindingGroupKFold`: a light stand-in
        for iterative stratification, without a scikit-multilearn dependency).

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.model_selection import cross_validate
    >>> from sklearn.linear_model import LogisticRegression
    >>> X = np.arange(40, dtype=float).reshape(20, 2)
    >>> y = np.array([0, 1] * 10)
    >>> patients = np.repeat(np.arange(10), 2)
    >>> scores = cross_validate(LogisticRegression(), X, y, groups=patients,
    ...                         cv=grouped_cv(5, random_state=0))
    >>> len(scores["test_score"])
    5
    """
    return StratifiedFindingGroupKFold(n_splits, shuffle=True, random_state=random_state)


def _unpack(name, data, classes):
    """(X, y) from a tuple or a Bunch with filenames/images and target."""
    if isinstance(data, tuple):
        if len(data) != 2:
            raise ValueError(f"dataset {name!r}: expected an (X, y) tuple; got a tuple of "
                             f"length {len(data)}")
        return data
    if not hasattr(data, "target"):
        raise ValueError(f"dataset {name!r}: expected an (X, y) tuple or a Bunch with "
                         f"'target'; got {type(data).__name__}")
    X = getattr(data, "filenames", None)
    if X is None:
        X = getattr(data, "images", None)
    if X is None:
        raise ValueError(f"dataset {name!r}: the Bunch has neither 'filenames' nor 'images'")
    y = np.asarray(data.target)
    names = getattr(data, "target_names", None)
    # Integer targets become names only when the model was trained on names.
    if (names is not None and y.dtype.kind in "iu"
            and np.asarray(classes).dtype.kind not in "iufb"):
        y = np.asarray(names)[y]
    return X, y


def external_validate(estimator, datasets, *, pos_label=None, n_bootstraps=1000,
                      random_state=None):
    """Clinical report of a fitted classifier on each external (held-out) dataset.

    Parameters
    ----------
    estimator : fitted classifier or Pipeline
        Must have ``classes_`` and ``predict_proba``.
    datasets : dict of str -> (X, y) or sklearn.utils.Bunch
        ``X`` as the estimator accepts it. A Bunch gives ``filenames`` if present, else
        ``images``, and ``target``; integer targets are mapped through ``target_names``
        when the estimator was trained on non-numeric class names.
    pos_label : object or None, default=None
        Positive class of a binary model, e.g. ``"pneumonia"``; None only for classes
        {0, 1} or {-1, 1} (positive class 1), as in :func:`clinical_report`.
    n_bootstraps : int, default=1000
    random_state : int, RandomState instance or None, default=None
        Seed of the bootstrap (an int seeds each dataset's report identically).

    Returns
    -------
    reports : dict of str -> ClinicalReport
        Computed from ``estimator.predict_proba(X)`` with ``labels=estimator.classes_``,
        in the order of ``datasets``.

    Raises
    ------
    ValueError
        A dataset's labels include a class the model does not know (the message names
        the dataset and the classes), a dataset is neither a pair nor a Bunch, or a
        binary model's classes are not {0, 1} / {-1, 1} and ``pos_label`` is None.

    Examples
    --------
    >>> from sklearn.linear_model import LogisticRegression
    >>> X = [[0.0], [0.3], [0.6], [1.0]] * 5
    >>> y = ["normal", "normal", "pneumonia", "pneumonia"] * 5
    >>> clf = LogisticRegression().fit(X, y)
    >>> reports = external_validate(clf, {"site_b": (X, y)}, pos_label="pneumonia",
    ...                             n_bootstraps=100, random_state=0)
    >>> reports["site_b"].overall["sensitivity"].value
    1.0
    """
    if not isinstance(datasets, dict):
        raise ValueError(f"datasets must be a dict name -> (X, y) or Bunch; got "
                         f"{type(datasets).__name__}")
    check_is_fitted(estimator)  # NotFittedError naming the estimator, as sklearn's
    classes = np.asarray(estimator.classes_)
    reports = {}
    for name, data in datasets.items():
        X, y = _unpack(name, data, classes)
        y = np.asarray(y)
        if hasattr(X, "__len__") and len(X) != len(y):
            raise ValueError(f"dataset {name!r} has {len(X)} images but {len(y)} labels")
        unknown = sorted(set(np.unique(y).tolist()) - set(classes.tolist()), key=str)
        if unknown:
            raise ValueError(f"dataset {name!r} has label(s) {unknown} that the model does "
                             f"not know; its classes are {classes.tolist()}")
        reports[name] = clinical_report(
            y, estimator.predict_proba(X), labels=classes, pos_label=pos_label,
            n_bootstraps=n_bootstraps, random_state=random_state)
    return reports


def _classifier_step(estimator):
    """``(parameter prefix, step)`` of the step with early stopping epochs (a
    :class:`~cxr_estimators.CXRClassifier`), the estimator itself or a Pipeline's step."""
    if isinstance(estimator, Pipeline):
        for name, step in estimator.steps:
            if "max_epochs" in step.get_params(deep=False):
                return f"{name}__", step
    elif "max_epochs" in estimator.get_params(deep=False):
        return "", estimator
    raise ValueError(f"{type(estimator).__name__} is neither a CXRClassifier nor a "
                     "Pipeline with one")


def best_epoch_scorer(estimator, X, y):
    """Scorer that records the fitted classifier's ``best_epoch_`` (``X``, ``y`` unused).

    Add it to a search's ``scoring`` dict (``{"roc_auc": "roc_auc", "best_epoch":
    best_epoch_scorer}``): ``cv_results_["mean_test_best_epoch"]`` then holds, per
    candidate, the epoch early stopping kept, which :func:`retrain_on_all` uses."""
    return float(_classifier_step(estimator)[1].best_epoch_)


def _chosen_index(results, metric):
    """The candidate ``metric`` (see :func:`retrain_on_all`) picks from ``cv_results_``."""
    if callable(metric):
        best = metric(results)
        if not isinstance(best, numbers.Integral) or not 0 <= best < len(results["params"]):
            raise ValueError(f"metric={metric!r} returned {best!r}; expected the index of "
                             f"a candidate in [0, {len(results['params'])})")
        return int(best)
    keys = [metric] if isinstance(metric, str) else list(metric)
    scorers = sorted(k[len("rank_test_"):] for k in results if k.startswith("rank_test_"))
    unknown = [k for k in keys if not isinstance(k, str) or f"rank_test_{k}" not in results]
    if isinstance(metric, str) and unknown:
        raise ValueError(f"metric={metric!r} is not one of the search's scorers {scorers}")
    if unknown or not keys:
        raise ValueError(f"metric={metric!r} has {unknown or 'no key'}, not among the "
                         f"search's scorers {scorers}")
    # np.lexsort sorts by the last key first; negated means: higher is better
    order = np.lexsort([-np.asarray(results[f"mean_test_{k}"], dtype=float)
                        for k in reversed(keys)])
    return int(order[0])


def _check_chosen_candidate(results, best, metric):
    """Refuse a choice made on NaN scores, and warn (:class:`OneClassWarning`) when the
    chosen candidate predicted one class on every validation split: sklearn's searches
    accept both silently (a scorer error becomes a NaN score and a warning)."""
    keys = ([metric] if isinstance(metric, str) else
            list(metric) if metric is not None and not callable(metric) else [])
    nan = [k for k in keys + ["best_epoch"]
           if not np.isfinite(np.asarray(results[f"mean_test_{k}"], dtype=float)).any()]
    if nan:
        raise ValueError(
            f"every candidate's mean_test_{nan[0]} is NaN: the search's scorers failed on "
            "every split (sklearn then warns 'Scoring failed' and scores NaN), so there is "
            "no winner to retrain. Fit the search with error_score='raise' to see the "
            "error, e.g. a pos_label that is not one of the classes")
    if "split0_test_sensitivity" not in results or "split0_test_specificity" not in results:
        return
    n_splits = sum(1 for k in results if k.startswith("split") and
                   k.endswith("_test_sensitivity"))
    pairs = [(float(results[f"split{i}_test_sensitivity"][best]),
              float(results[f"split{i}_test_specificity"][best])) for i in range(n_splits)]
    if all(pair in ((1.0, 0.0), (0.0, 1.0)) for pair in pairs):
        seen = ", ".join(f"{a:.3f} / {b:.3f}" for a, b in pairs)
        warnings.warn(
            f"the chosen candidate {results['params'][best]} predicted one class on every "
            f"validation split (sensitivity / specificity {seen}): it separates nothing, "
            "and so, probably, did the others it was ranked against. Retraining it "
            "gives a model that calls every image the same", OneClassWarning,
            stacklevel=3)


def retrain_on_all(search, X, y, *, metric=None, **fit_params):
    """Retrain a search's best candidate on all of ``X``, ``y`` for its best epoch count.

    The refit step of the protocol "choose hyper-parameters with early stopping on
    validation data, then train the chosen model on train + validation": a clone of
    ``search.estimator`` with the best parameters and ``max_epochs`` = the candidate's
    mean ``best_epoch_`` over the folds (rounded), ``early_stopping=None`` and
    ``validation_fraction=0``, fitted on every image. It is
    ``clf.set_params(max_epochs=clf.best_epoch_, early_stopping=None,
    validation_fraction=0).fit(X_all, y_all)`` for the winner of a search. Run the search
    with ``refit=False`` (its own refit would train once more, early-stopping on an
    internal split) and :func:`best_epoch_scorer` in ``scoring``.

    Parameters
    ----------
    search : fitted GridSearchCV or RandomizedSearchCV
        Of a :class:`~cxr_estimators.CXRClassifier` or a Pipeline ending in one, with
        ``scoring`` including ``"best_epoch": best_epoch_scorer``.
    X, y : all the training images (e.g. train + validation) and their labels
    metric : str, sequence of str, callable or None, default=None
        What ranks the candidates: a scoring key; several keys, compared in turn
        (``("accuracy", "roc_auc", "sensitivity")``: the best mean accuracy, ties broken
        by AUC, then by sensitivity); or a callable taking ``cv_results_`` and returning
        the chosen index, as sklearn's ``refit=callable``. None uses ``search.refit``
        when it names a key or is such a callable (else ``search.best_index_``).
    **fit_params
        Passed to ``fit`` (e.g. ``groups``).

    Returns
    -------
    estimator : the fitted clone

    Examples
    --------
    >>> from sklearn.model_selection import GridSearchCV, PredefinedSplit
    >>> from cxr_estimators.evaluation import best_epoch_scorer, retrain_on_all
    >>> search = GridSearchCV(pipe, grid, cv=PredefinedSplit(fold), refit=False,
    ...                       scoring={"roc_auc": "roc_auc", "best_epoch": best_epoch_scorer}
    ...                       )  # doctest: +SKIP
    >>> search.fit(X_all, y_all, X_val=X_val, y_val=y_val)  # doctest: +SKIP
    >>> final = retrain_on_all(search, X_all, y_all, metric="roc_auc")  # doctest: +SKIP
    """
    results = getattr(search, "cv_results_", None)
    if results is None:
        raise ValueError("search is not fitted: call search.fit first")
    if "mean_test_best_epoch" not in results:
        raise ValueError("search.cv_results_ has no 'mean_test_best_epoch': add "
                         "'best_epoch': best_epoch_scorer to the search's scoring dict")
    if metric is None and (isinstance(search.refit, str) or callable(search.refit)):
        metric = search.refit
    if metric is not None:
        best = _chosen_index(results, metric)
    elif hasattr(search, "best_index_"):
        best = int(search.best_index_)
    else:
        raise ValueError("retrain_on_all needs metric= (the scoring key that ranks the "
                         "candidates) for a search fitted with refit=False")
    _check_chosen_candidate(results, best, metric)
    mean_epoch = float(results["mean_test_best_epoch"][best])
    if not np.isfinite(mean_epoch):
        raise ValueError(
            f"candidate {best} ({results['params'][best]}) has no best epoch: its fits "
            "failed (a NaN score, e.g. training diverged), so it cannot be retrained; see "
            "cv_results_ and fix its parameters or rank the candidates by another metric")
    epochs = max(1, int(round(mean_epoch)))
    prefix, _ = _classifier_step(search.estimator)
    estimator = clone(search.estimator).set_params(**results["params"][best])
    estimator.set_params(**{f"{prefix}max_epochs": epochs, f"{prefix}early_stopping": None,
                            f"{prefix}validation_fraction": 0})
    return estimator.fit(X, y, **fit_params)
