"""A model-level shortcut test: does the model's performance depend on the image border?

:func:`cxr_estimators.explain.shortcut_warning` judges one heatmap at a time and fires on
most images whatever the model learned. This asks the model instead: blank the border
band (or everything outside a lung mask), predict again, and measure how much the ROC AUC
falls and how much the probabilities move, with paired bootstrap CIs (the same images
resampled for both). A model that reads the lungs loses little; one that reads a marker
in a corner loses most of its AUC. Re-exported as :func:`cxr_estimators.explain.
shortcut_test`.

The AUCs are :func:`sklearn.metrics.roc_auc_score`; written here by hand (nothing in
scikit-learn masks inputs): the masking, and the paired bootstrap, which reuses the
vectorised weighted AUC of :func:`~cxr_estimators.metrics.clinical_report`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import Pipeline
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from ._validation import is_finite_number
from .report._clinical import _implicit_pos_label, _weighted_auc, bootstrap_weights

__all__ = ["ShortcutTest", "shortcut_test", "MIN_AUC_DROP"]

#: The test fires when the lower 95 % bound of the AUC drop exceeds this.
MIN_AUC_DROP = 0.02


@dataclass
class ShortcutTest:
    """What :func:`shortcut_test` found; ``str()`` reads as a verdict.

    Attributes
    ----------
    auc, auc_masked : float
        ROC AUC on the images as they are and with the region outside the chest blanked.
    auc_drop, auc_drop_ci : float, (float, float)
        ``auc - auc_masked`` and its paired 95 % bootstrap interval.
    mean_change, mean_change_ci : float, (float, float)
        Mean absolute change of the positive-class probability, and its interval.
    fires : bool
        ``auc_drop_ci[0] > min_auc_drop``: the model needs what lies outside the chest.
    region : str
        What was blanked.
    """

    auc: float
    auc_masked: float
    auc_drop: float
    auc_drop_ci: tuple
    mean_change: float
    mean_change_ci: tuple
    fires: bool
    region: str
    n_images: int
    min_auc_drop: float

    def to_dict(self):
        """Plain JSON-ready types."""
        out = asdict(self)
        out["auc_drop_ci"], out["mean_change_ci"] = list(self.auc_drop_ci), list(
            self.mean_change_ci)
        return out

    def __str__(self):
        verdict = ("FIRES: the model loses discrimination when only the outside of the "
                   "chest is hidden; it may rely on markers, borders or positioning there"
                   if self.fires else "Does not fire: hiding the outside of the chest "
                   "leaves the model's discrimination (nearly) intact")
        return (f"Shortcut test on {self.n_images} images, {self.region} blanked: ROC AUC "
                f"{self.auc:.3f} -> {self.auc_masked:.3f} (drop {self.auc_drop:.3f} "
                f"[{self.auc_drop_ci[0]:.3f}, {self.auc_drop_ci[1]:.3f}]); mean probability "
                f"change {self.mean_change:.3f} [{self.mean_change_ci[0]:.3f}, "
                f"{self.mean_change_ci[1]:.3f}]. {verdict} (threshold: lower bound > "
                f"{self.min_auc_drop}).")


def _split(model, X):
    """(estimator, images it takes): ``X`` itself when it is an image array, else (paths)
    what a Pipeline's steps before the last make of it, for its last step."""
    check_is_fitted(model)
    if isinstance(X, np.ndarray) and X.ndim >= 3 and X.dtype.kind in "uif":
        return model, X
    if isinstance(model, Pipeline) and len(model) > 1:
        return model[-1], model[:-1].transform(X)
    return model, X


def _blank_outside(X, mask, border):
    """A copy of ``X`` (..., H, W) with the outside of the region of interest set to each
    image's own mean, so no edge or marker survives and the intensity stays typical."""
    from .explain import _roi_masks

    arr = np.asarray(X)
    if arr.ndim < 3:
        raise ValueError(f"shortcut_test needs images (n, [C,] H, W) as the model's input; "
                         f"got shape {arr.shape}")
    h, w = arr.shape[-2:]
    roi = _roi_masks((len(arr), h, w), mask, border)
    if roi.ndim == 3 and arr.ndim == 4:
        roi = roi[:, None]
    out = X.copy()
    means = arr.reshape(*arr.shape[:-2], -1).mean(-1)[..., None, None]
    np.copyto(out, np.broadcast_to(means, arr.shape).astype(arr.dtype), where=~roi)
    return out


def shortcut_test(model, X, y, *, pos_label=None, mask=None, border=0.15,
                  n_bootstraps=1000, min_auc_drop=MIN_AUC_DROP, random_state=None):
    """Test whether a fitted binary classifier needs what lies outside the chest.

    Parameters
    ----------
    model : fitted classifier or Pipeline
        With ``predict_proba``.
    X : images (n, [C,] H, W), or paths for a Pipeline
        Image arrays are masked as given; otherwise a Pipeline's steps before the last
        turn ``X`` into images (e.g. ``ImageLoader``: paths -> arrays), which are masked
        and given to its last step.
    y : array-like of shape (n,)
        True labels (both classes present).
    pos_label : object, default=None
        Positive class; None only for classes {0, 1} or {-1, 1}.
    mask : ndarray of bool, shape (H, W) or (n, H, W), optional
        True inside the region to keep (e.g. a lung mask). Default: the central box left
        after removing a ``border`` band on each side.
    border : float in [0, 0.5), default=0.15
        Width of that band per side (at 0.15 it covers 51 % of the image, so a model
        whose evidence lies near the edges loses some AUC even without a shortcut: give
        a lung mask, or a smaller border, for tightly cropped images).
    n_bootstraps : int, default=1000
    min_auc_drop : float, default=MIN_AUC_DROP (0.02)
    random_state : int, RandomState or None, default=None

    Returns
    -------
    result : ShortcutTest

    Raises
    ------
    ValueError
        Fewer than two classes in ``y``, a bad ``mask`` / ``border``, or inputs that are
        not images.
    sklearn.exceptions.NotFittedError
        The model is not fitted.
    """
    if not is_finite_number(n_bootstraps, integral=True) or n_bootstraps < 1:
        raise ValueError(f"n_bootstraps must be an int >= 1; got {n_bootstraps!r}")
    final, Xm = _split(model, X)
    y = np.asarray(y)
    classes = list(final.classes_)
    if len(np.unique(y)) != 2:
        raise ValueError(f"shortcut_test needs both classes in y; got {np.unique(y).tolist()}")
    pos_label = _implicit_pos_label(classes, "shortcut_test") if pos_label is None else pos_label
    column = classes.index(pos_label)
    positive = y == pos_label
    before = final.predict_proba(Xm)[:, column]
    after = final.predict_proba(_blank_outside(Xm, mask, border))[:, column]
    rng = check_random_state(random_state)
    n = len(y)
    weights = bootstrap_weights(n, int(n_bootstraps), rng)
    drops = (_weighted_auc(before, positive, weights, np.argsort(before, kind="stable"))
             - _weighted_auc(after, positive, weights, np.argsort(after, kind="stable")))
    change = np.abs(after - before)
    changes = weights @ change / n
    auc, auc_masked = roc_auc_score(positive, before), roc_auc_score(positive, after)
    drop_ci = tuple(float(v) for v in np.nanpercentile(drops, [2.5, 97.5]))
    region = ("outside the mask" if mask is not None
              else f"the border band ({border:g} of each side)")
    return ShortcutTest(
        auc=float(auc), auc_masked=float(auc_masked), auc_drop=float(auc - auc_masked),
        auc_drop_ci=drop_ci, mean_change=float(change.mean()),
        mean_change_ci=tuple(float(v) for v in np.percentile(changes, [2.5, 97.5])),
        fires=bool(drop_ci[0] > min_auc_drop), region=region, n_images=n,
        min_auc_drop=float(min_auc_drop))
