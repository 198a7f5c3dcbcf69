"""Evaluation helpers: patient-grouped cross-validation and external validation.

Both are thin: :func:`grouped_cv` is scikit-learn's
:class:`~sklearn.model_selection.StratifiedGroupKFold` with shuffling on, and
:func:`external_validate` runs :func:`cxr_estimators.metrics.clinical_report` on each
held-out dataset after checking that its labels are ones the model knows.
"""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from .metrics import clinical_report

__all__ = ["external_validate", "grouped_cv"]


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
        ``fit``/``split``/``cross_validate``.

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
    return StratifiedGroupKFold(n_splits, shuffle=True, random_state=random_state)


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
    classes = np.asarray(estimator.classes_)
    reports = {}
    for name, data in datasets.items():
        X, y = _unpack(name, data, classes)
        y = np.asarray(y)
        unknown = sorted(set(np.unique(y).tolist()) - set(classes.tolist()), key=str)
        if unknown:
            raise ValueError(f"dataset {name!r} has label(s) {unknown} that the model does "
                             f"not know; its classes are {classes.tolist()}")
        reports[name] = clinical_report(
            y, estimator.predict_proba(X), labels=classes, pos_label=pos_label,
            n_bootstraps=n_bootstraps, random_state=random_state)
    return reports
