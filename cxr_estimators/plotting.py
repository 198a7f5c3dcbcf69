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

from .report._clinical import _implicit_pos_label
from .metrics import _check_labels_and_scores

__all__ = ["plot_calibration", "plot_confusion_matrix", "plot_heatmap", "plot_roc",
           "plot_training_curves"]

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
        A classifier's ``best_epoch_`` (the epoch whose weights it kept) is marked by a
        dotted vertical line.
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
    if _best_epoch_of(estimator_or_history) is None:
        fig.legend(drawn, [line.get_label() for line in drawn], loc="outside lower center",
                   ncols=len(drawn))
    best = _best_epoch_of(estimator_or_history)
    if best is not None:
        drawn.append(ax.axvline(best, color="tab:red", linestyle=":",
                                label=f"best epoch ({best}, kept)"))
        fig.legend(drawn, [line.get_label() for line in drawn], loc="outside lower center",
                   ncols=min(len(drawn), 3))
    ax.set_title("Training curves")
    return _save(fig, path)


def _best_epoch_of(obj):
    """``best_epoch_`` of a fitted classifier (or a Pipeline's last step), else None."""
    if hasattr(obj, "steps"):
        obj = obj.steps[-1][1]
    best = getattr(obj, "best_epoch_", None)
    return int(best) if best is not None else None


def plot_roc(y_true, y_score, *, labels=None, pos_label=None, threshold=None,
             n_bootstraps=0, random_state=None, path=None):
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
    threshold : float or None, default=None
        Binary: mark the operating point (sensitivity, 1 - specificity of "score >=
        threshold") on the curve.
    n_bootstraps : int, default=0
        Binary: draw the 95 % percentile bootstrap band of the curve (sensitivity at each
        false positive rate, cases resampled) from this many resamples; 0: no band.
    random_state : int, RandomState or None, default=None
        Seed of the band's resampling.
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
    if len(columns) == 1:
        binary_true = y_true == columns[0][0]
        if n_bootstraps:
            _roc_band(ax, binary_true, columns[0][1], n_bootstraps, random_state)
        if threshold is not None:
            predicted = columns[0][1] >= threshold
            tpr, fpr = predicted[binary_true].mean(), predicted[~binary_true].mean()
            ax.plot([fpr], [tpr], "o", color="tab:red", markersize=8,
                    label=f"operating point (threshold {threshold:.3g}): "
                          f"sens {tpr:.2f}, spec {1 - fpr:.2f}")
        ax.legend(loc="lower right")
    ax.set_xlabel("false positive rate (1 - specificity)")
    ax.set_ylabel("true positive rate (sensitivity)")
    ax.set_title("ROC curve" if len(columns) == 1 else "ROC curves (one-vs-rest)")
    return _save(fig, path)


def _roc_band(ax, y_true, score, n_bootstraps, random_state):
    """Shade the 2.5-97.5 percentile band of bootstrap ROC curves on a common FPR grid."""
    from sklearn.metrics import roc_curve
    from sklearn.utils import check_random_state

    rng = check_random_state(random_state)
    grid = np.linspace(0, 1, 101)
    curves = []
    for _ in range(int(n_bootstraps)):
        idx = rng.randint(0, len(y_true), len(y_true))
        if y_true[idx].all() or not y_true[idx].any():
            continue
        fpr, tpr, _ = roc_curve(y_true[idx], score[idx])
        curves.append(np.interp(grid, fpr, tpr))
    low, high = np.percentile(curves, [2.5, 97.5], axis=0)
    ax.fill_between(grid, low, high, color="tab:blue", alpha=0.2,
                    label=f"95% bootstrap band ({len(curves)} resamples)")


def plot_calibration(y_true, y_score, *, pos_label=None, n_bins=10, path=None):
    """Reliability diagram of a binary classifier's probabilities, with the Brier score.

    Drawn by :class:`sklearn.calibration.CalibrationDisplay` (quantile bins, so each
    point holds about the same number of cases).

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
    y_score : array-like of shape (n_samples,)
        Predicted probability of ``pos_label``.
    pos_label : object, default=None
        Positive class; None only for classes {0, 1} or {-1, 1}.
    n_bins : int, default=10
    path : str or os.PathLike, default=None

    Returns
    -------
    fig : matplotlib.figure.Figure
    """
    from sklearn.calibration import CalibrationDisplay
    from sklearn.metrics import brier_score_loss

    y_true, y_score, labels = _check_labels_and_scores(y_true, y_score, None)
    if pos_label is None:
        pos_label = _implicit_pos_label(labels, "plot_calibration")
    positive = y_true == pos_label
    fig = _new_figure((5.5, 5.0))
    ax = fig.add_subplot()
    brier = brier_score_loss(positive, y_score)
    CalibrationDisplay.from_predictions(positive, y_score, n_bins=n_bins, strategy="quantile",
                                        ax=ax, name=f"model (Brier {brier:.3f})")
    ax.set_xlabel(f"predicted probability of {pos_label}")
    ax.set_ylabel(f"observed fraction of {pos_label}")
    ax.set_title("Calibration")
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


def _attention_colormap(name="jet", max_alpha=0.65):
    """``name`` with an opacity ramp: transparent at 0, ``max_alpha`` at 1, so low
    attention leaves the radiograph untinted (plain jet tints the whole image blue)."""
    from matplotlib import colormaps
    from matplotlib.colors import ListedColormap

    colours = colormaps[name](np.linspace(0, 1, 256))
    colours[:, 3] = max_alpha * np.clip((np.linspace(0, 1, 256) - 0.15) / 0.6, 0, 1)
    return ListedColormap(colours, name=f"{name}_fading")


def plot_heatmap(image, heatmap, *, true_label=None, predicted_label=None,
                 probability=None, colormap="jet", grid=False, path=None):
    """A Grad-CAM heatmap over its image, titled and with a colour bar.

    The image is drawn at its own resolution (one square per pixel, no smoothing; the
    axis labels give its size), the heatmap over it with a colormap that is transparent
    where attention is low.

    Parameters
    ----------
    image : ndarray of shape (H, W), (H, W, C) or (C, H, W)
        Any value range (min-max normalised for display).
    heatmap : ndarray of shape (h, w)
        In [0, 1], e.g. a row of :func:`cxr_estimators.explain.grad_cam`; resized
        (bilinear) to (H, W).
    true_label, predicted_label : object, optional
        Shown in the title.
    probability : float, optional
        The model's probability of ``predicted_label``, shown in the title.
    colormap : str, default="jet"
        A matplotlib colormap, given a transparent-to-opaque ramp.
    grid : bool, default=False
        Draw a line every 8 pixels (to read positions).
    path : str or os.PathLike, default=None
        Save the figure there as PNG.

    Returns
    -------
    fig : matplotlib.figure.Figure
    """
    from .explain import _display_image, _resize_heatmap

    img = _display_image(image)
    heat = _resize_heatmap(heatmap, img.shape[:2])
    fig = _new_figure((4.2, 3.9))
    ax = fig.add_subplot()
    h, w = img.shape[:2]
    ax.imshow(img, interpolation="nearest")
    shown = ax.imshow(heat, cmap=_attention_colormap(colormap), vmin=0, vmax=1,
                      interpolation="bilinear")
    bar = fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.03)
    bar.set_label("Grad-CAM attention (0-1)")
    parts = []
    if true_label is not None:
        parts.append(f"true: {true_label}")
    if predicted_label is not None:
        parts.append(f"predicted: {predicted_label}"
                     + (f" (p = {probability:.2f})" if probability is not None else ""))
    ax.set_title("\n".join(parts) or "Grad-CAM", fontsize=10)
    ax.set_xlabel(f"{w} x {h} px (source resolution)", fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    if grid:
        ax.set_xticks(np.arange(-0.5, w, 8), minor=True)
        ax.set_yticks(np.arange(-0.5, h, 8), minor=True)
        ax.grid(which="minor", color="white", linewidth=0.4, alpha=0.6)
        ax.tick_params(which="minor", length=0)
    return _save(fig, path)
