"""Plots: training curves, ROC curves and the confusion matrix.

matplotlib is optional (``pip install 'cxr_estimators[plot]'``) and imported inside each
function. Figures are :class:`matplotlib.figure.Figure` objects on an Agg canvas, not
registered with pyplot, so nothing here changes the global backend or needs a display.
The ROC curves and the confusion matrix are drawn by scikit-learn's
:class:`~sklearn.metrics.RocCurveDisplay` and :class:`~sklearn.metrics.ConfusionMatrixDisplay`;
only the training-curve plot is written here (skorch has none).
"""

from __future__ import annotations

import numpy as np

from ._report import _implicit_pos_label
from .metrics import _check_labels_and_scores

__all__ = ["plot_confusion_matrix", "plot_roc", "plot_training_curves"]

_DPI = 100


def _new_figure(figsize):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError("cxr_estimators.plotting needs matplotlib: "
                          "pip install 'cxr_estimators[plot]'") from exc
    fig = Figure(figsize=figsize, dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path):
    if path is not None:
        fig.savefig(path, format="png", dpi=fig.dpi)
    return fig


def _history_of(obj):
    """A list of per-epoch dicts from a fitted estimator, a Pipeline, or a history."""
    if hasattr(obj, "steps"):  # Pipeline: the classifier is the last step
        obj = obj.steps[-1][1]
    history = getattr(obj, "history_", obj)
    try:
        history = list(history)
    except TypeError:
        history = []
    if not history or not all(isinstance(row, dict) for row in history):
        raise ValueError("expected a fitted classifier with a history_ (a skorch History: "
                         f"a list of per-epoch dicts); got {type(obj).__name__}")
    return history


def plot_training_curves(estimator_or_history, path=None):
    """Train/validation loss and validation accuracy per epoch.

    Parameters
    ----------
    estimator_or_history : fitted classifier, Pipeline or skorch History
        An object with ``history_`` (e.g. a fitted :class:`~cxr_estimators.CXRClassifier`),
        a Pipeline whose last step has it, or the history itself: a list of per-epoch
        dicts with keys "epoch", "train_loss", and optionally "valid_loss",
        "train_acc" and "valid_acc" (epochs missing a key are left out of that curve).
    path : str or os.PathLike, default=None
        Save the figure there as PNG.

    Returns
    -------
    fig : matplotlib.figure.Figure
        Loss on the left axis, train and validation accuracy (if recorded) on the right.

    Raises
    ------
    ValueError
        No history, or no epoch recorded a loss.
    ImportError
        matplotlib is not installed.
    """
    history = _history_of(estimator_or_history)
    fig = _new_figure((7.0, 4.0))
    ax = fig.add_subplot()
    epochs = [row.get("epoch", i + 1) for i, row in enumerate(history)]

    def curve(key):
        points = [(e, row[key]) for e, row in zip(epochs, history)
                  if row.get(key) is not None]
        return tuple(zip(*points)) if points else ((), ())

    drawn = []
    for key, style in (("train_loss", "-o"), ("valid_loss", "-s")):
        x, values = curve(key)
        if x:
            drawn += ax.plot(x, values, style, label=key.replace("_", " "))
    if not drawn:
        raise ValueError("the history has no 'train_loss' or 'valid_loss' in any epoch")
    ax.set_xlabel("epoch")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel("loss")
    accuracy = [(curve(key), style, color, key.replace("_acc", " accuracy"))
                for key, style, color in (("train_acc", "--o", "tab:olive"),
                                          ("valid_acc", "-^", "tab:green"))]
    if any(x for (x, _), *_ in accuracy):
        acc_ax = ax.twinx()
        for (x, values), style, color, label in accuracy:
            if x:
                drawn += acc_ax.plot(x, values, style, color=color, label=label)
        acc_ax.set_ylabel("accuracy")
        acc_ax.set_ylim(0, 1.02)
    # below the axes: inside, "best" would only avoid the loss curves, not the accuracy ones
    fig.legend(drawn, [line.get_label() for line in drawn], loc="outside lower center",
               ncols=len(drawn))
    ax.set_title("Training curves")
    return _save(fig, path)


def plot_roc(y_true, y_score, *, labels=None, pos_label=None, path=None):
    """ROC curve of a binary problem, or one-vs-rest curves of a multiclass one.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
    y_score : array-like of shape (n_samples,) or (n_samples, n_classes)
        1-D: the score of the positive class ``pos_label``. 2-D: probabilities with
        columns in ``labels`` order (e.g. ``predict_proba``); a two-column array plots
        the column of ``pos_label``, more columns one curve per class.
    labels : array-like, default=None
        Classes in column order; default sorted unique ``y_true``.
    pos_label : int, float, bool or str, default=None
        Positive class of a binary problem, e.g. ``pos_label="pneumonia"``. None: 1 when
        the classes are {0, 1} or {-1, 1}; for any other pair (strings) it must be given,
        as in :func:`~cxr_estimators.metrics.clinical_report` — guessing would silently
        plot the other class's curve. Ignored with more than two classes.
    path : str or os.PathLike, default=None
        Save the figure there as PNG.

    Returns
    -------
    fig : matplotlib.figure.Figure
        Curves labelled with their AUC, and the chance diagonal.

    Raises
    ------
    ValueError
        Invalid scores or labels (as :func:`~cxr_estimators.metrics.clinical_report`),
        ``pos_label`` missing for a binary problem with other classes than {0, 1} or
        {-1, 1}, or not one of ``labels``, or a class with no cases or only cases in
        ``y_true`` (its ROC curve is undefined).
    ImportError
        matplotlib is not installed.
    """
    y_true, y_score, labels = _check_labels_and_scores(y_true, y_score, labels)
    from sklearn.metrics import RocCurveDisplay

    if len(labels) == 2:
        labels = list(labels)
        if pos_label is None:
            pos_label = _implicit_pos_label(labels, "plot_roc")
        elif pos_label not in labels:
            raise ValueError(f"plot_roc: pos_label={pos_label!r} is not one of the classes "
                             f"{labels}")
        if y_score.ndim == 2:
            y_score = y_score[:, labels.index(pos_label)]
        columns = [(pos_label, y_score)]
    else:
        columns = [(label, y_score[:, k]) for k, label in enumerate(labels)]
    for label, _ in columns:
        if np.all(y_true == label) or not np.any(y_true == label):
            raise ValueError(f"the ROC curve of class {label!r} is undefined: y_true has "
                             f"{'only' if np.all(y_true == label) else 'no'} cases of it")
    fig = _new_figure((5.5, 5.0))
    ax = fig.add_subplot()
    for label, score in columns:
        name = str(label) if len(columns) == 1 else f"{label} vs rest"
        RocCurveDisplay.from_predictions(y_true == label, score, pos_label=True, name=name,
                                         ax=ax, plot_chance_level=label == columns[-1][0])
    ax.set_xlabel("false positive rate (1 - specificity)")
    ax.set_ylabel("true positive rate (sensitivity)")
    ax.set_title("ROC curve" if len(columns) == 1 else "ROC curves (one-vs-rest)")
    return _save(fig, path)


def plot_confusion_matrix(y_true, y_pred, *, labels=None, normalize=None, path=None):
    """Confusion matrix heat map (rows: true class, columns: predicted class).

    Parameters
    ----------
    y_true, y_pred : array-like of shape (n_samples,)
    labels : array-like, default=None
        Classes to show, in order; default all labels present in either.
    normalize : {"true", "pred", "all"} or None, default=None
        As :func:`sklearn.metrics.confusion_matrix`: "true" shows per-class sensitivity on
        the diagonal.
    path : str or os.PathLike, default=None
        Save the figure there as PNG.

    Returns
    -------
    fig : matplotlib.figure.Figure

    Raises
    ------
    ImportError
        matplotlib is not installed.
    """
    fig = _new_figure((5.5, 4.5))
    from sklearn.metrics import ConfusionMatrixDisplay

    ax = fig.add_subplot()
    ConfusionMatrixDisplay.from_predictions(
        y_true, y_pred, labels=labels, normalize=normalize, ax=ax, colorbar=True,
        values_format=".2f" if normalize else "d")
    ax.set_title("Confusion matrix" + (f" (normalised over {normalize})" if normalize else ""))
    return _save(fig, path)
