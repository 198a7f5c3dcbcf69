"""Dataset-shift audit: can a classifier tell the new images from the reference ones?

A classifier two-sample test (Lopez-Paz & Oquab, ICLR 2017): label the reference images 0
and the new images 1, and measure by cross-validation how well a linear classifier
separates them. Out-of-fold ROC AUC 0.5 means indistinguishable; well above 0.5 means the
new images differ in a way a model can pick up, so figures measured on the reference
images (validation) are likely optimistic for the new ones (test, another hospital).
Re-exported as :func:`cxr_estimators.audit.shift_audit`.

scikit-learn does the folds (:class:`~sklearn.model_selection.StratifiedGroupKFold`, so a
patient's images stay on one side), the scaling (:class:`~sklearn.preprocessing.
StandardScaler`) and the AUC (:func:`~sklearn.metrics.roc_auc_score`). Written here by
hand: the ridge domain classifier in closed form, because its held-out scores are linear
in the domain labels, so the permutation test's 1000 refits are one matrix product per
fold (``sklearn.model_selection.permutation_test_score`` would refit 5000 times; the
scores equal ``RidgeClassifier``'s, see ``tests/test_shift.py``), and the vectorised
bootstrap of the AUC shared with :func:`~cxr_estimators.metrics.clinical_report`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.preprocessing import StandardScaler
from sklearn.utils import check_random_state

from .report._clinical import _weighted_auc, bootstrap_weights
from .io import read_image

__all__ = ["ShiftAudit", "shift_audit", "MIN_IMAGES_PER_SET"]

N_SPLITS = 5
#: Fewest images per set (and per class, for ``per_class``): two per CV fold.
MIN_IMAGES_PER_SET = 2 * N_SPLITS
#: Side of the average-pooled pixel grid of the representation without a model.
POOLED_SIDE = 16
HISTOGRAM_BINS = 16
RIDGE_ALPHA = 100.0
#: p-value below which the sets are called distinguishable.
ALPHA = 0.05


@dataclass
class ShiftAudit:
    """What :func:`shift_audit` found. ``str(audit)`` is a readable verdict.

    Attributes
    ----------
    auc : float
        Out-of-fold ROC AUC of the domain classifier (new = positive); 0.5: no shift.
    auc_ci : (float, float)
        95 % percentile bootstrap interval of ``auc`` (resampling images).
    p_value : float
        Permutation p-value of ``auc`` (domain labels shuffled between patients, or
        between images without ``groups``; the same folds).
    n_ref, n_new : int
    representation : str
        "model features" or "pixels (16x16 pooled + histogram)".
    per_class : dict
        Class label -> dict(auc, auc_ci, p_value, n_ref, n_new), when both label sets
        were given; a class with too few images in either set has NaNs and a "skipped"
        reason.
    atypical : list of int
        Indices into ``X_new`` of the (at most 10) images the classifier finds most unlike
        the reference: look at them.
    scores : ndarray
        Out-of-fold domain scores of the new images (higher = more unlike the reference).
    """

    auc: float
    auc_ci: tuple
    p_value: float
    n_ref: int
    n_new: int
    representation: str
    n_permutations: int
    per_class: dict = field(default_factory=dict)
    atypical: list = field(default_factory=list)
    scores: np.ndarray = field(default=None, repr=False)

    @property
    def shifted(self):
        """True when the sets are distinguishable (``p_value`` < 0.05)."""
        return bool(self.p_value < ALPHA)

    def to_dict(self):
        """Plain JSON-ready types (``scores`` left out)."""
        return {"auc": self.auc, "auc_ci": list(self.auc_ci), "p_value": self.p_value,
                "shifted": self.shifted, "n_ref": self.n_ref, "n_new": self.n_new,
                "representation": self.representation,
                "n_permutations": self.n_permutations,
                "per_class": {str(k): {**v, "auc_ci": list(v["auc_ci"])}
                              for k, v in self.per_class.items()},
                "atypical": list(self.atypical)}

    def __str__(self):
        lines = [f"Shift audit: {self.n_new} new vs {self.n_ref} reference images "
                 f"({self.representation}, {N_SPLITS}-fold domain classifier)",
                 "  " + _line("all images", self.auc, self.auc_ci, self.p_value)]
        for label, row in self.per_class.items():
            lines.append("  " + (_line(f"class {label}", row["auc"], row["auc_ci"],
                                       row["p_value"])
                                 if "skipped" not in row else
                                 f"class {label}: {row['skipped']}"))
        if self.shifted:
            lines.append("  The new images are distinguishable from the reference images: "
                         "expect figures measured on the reference set to be optimistic "
                         "for them.")
        else:
            lines.append("  No shift detected (a 0.5 AUC is what identical sources give).")
        lines.append(f"  most atypical new images: {self.atypical}")
        return "\n".join(lines)


def _line(name, auc, ci, p):
    return (f"{name}: domain AUC {auc:.3f} [{ci[0]:.3f}, {ci[1]:.3f}], "
            f"permutation p = {p:.3g}" + ("  <- shift" if p < ALPHA else ""))


# ---------------------------------------------------------------------------- inputs
def _is_paths(X):
    if isinstance(X, (str, os.PathLike)):
        raise ValueError("X must be a list of image paths or an array of images, not one path")
    if isinstance(X, np.ndarray):
        return X.dtype.kind in "USO"
    return len(X) > 0 and all(isinstance(x, (str, os.PathLike)) for x in X)


def _image_array(X, name):
    """A 4-D float array (n, C, H, W) in [0, 1]-ish units; channels-last turned round."""
    arr = np.asarray(X)
    scale = {"u1": 255.0, "u2": 65535.0}.get(arr.dtype.str[1:], 1.0)
    if arr.ndim == 3:
        arr = arr[:, None]
    elif arr.ndim == 4 and arr.shape[-1] in (1, 3, 4) and arr.shape[1] not in (1, 3, 4):
        arr = np.moveaxis(arr, -1, 1)
    elif arr.ndim != 4:
        raise ValueError(f"{name} must be images (n, H, W), (n, H, W, C), (n, C, H, W) or "
                         f"a list of paths; got an array of shape {arr.shape}")
    return arr.astype(np.float32) / scale


def _pixel_features(X, name):
    """Representation without a model: 16x16 average-pooled gray intensities, a
    16-bin intensity histogram, mean and standard deviation, per image."""
    if _is_paths(X):
        # a copy: read_image hands out its cache's read-only arrays
        images = [np.array(read_image(p), dtype=np.float32) for p in X]
        images = [im.mean(-1) if im.ndim == 3 else im for im in images]
        return np.stack([_one_image_features(torch.as_tensor(im)[None, None])[0]
                         for im in images])
    arr = _image_array(X, name)
    return _one_image_features(torch.as_tensor(arr).mean(1, keepdim=True))


def _one_image_features(t):
    pooled = F.adaptive_avg_pool2d(t, POOLED_SIDE).flatten(1)
    flat = t.flatten(1)
    lo, hi = float(flat.min()), float(flat.max())
    edges = torch.linspace(min(lo, 0.0), max(hi, 1.0), HISTOGRAM_BINS + 1)
    bins = torch.bucketize(flat, edges[1:-1])
    hist = F.one_hot(bins, HISTOGRAM_BINS).float().mean(1)
    stats = torch.stack([flat.mean(1), flat.std(1)], 1)
    return torch.cat([pooled, hist, stats], 1).numpy()


def _model_features(model, X):
    """The fitted classifier's frozen trunk features (n, d), after its pipeline steps."""
    from ._features import _compute
    from .explain import _split_estimator

    clf, X = _split_estimator(model, X)
    device = next(clf.module_.parameters()).device
    feats = _compute(clf.module_, X, device, 64, clf._runtime())
    return feats.reshape(len(feats), -1)


def _check_same_kind(X_ref, X_new):
    ref_paths, new_paths = _is_paths(X_ref), _is_paths(X_new)
    if ref_paths != new_paths:
        raise ValueError("X_ref and X_new must both be paths or both be image arrays; got "
                         f"{'paths' if ref_paths else 'an array'} and "
                         f"{'paths' if new_paths else 'an array'}")
    if ref_paths:
        return
    ref, new = _image_array(X_ref, "X_ref"), _image_array(X_new, "X_new")
    if ref.shape[1:] != new.shape[1:]:
        raise ValueError(f"X_new images are {_shape(new)} but X_ref images are "
                         f"{_shape(ref)}: prepare both sets the same way (e.g. one "
                         "ImageLoader(size=..., channels=...)), or the audit would find "
                         "the resizing, not the data")


def _shape(arr):
    return f"{arr.shape[2]}x{arr.shape[3]} with {arr.shape[1]} channel(s)"


def _check_counts(n_ref, n_new, what):
    for name, n in (("X_ref", n_ref), ("X_new", n_new)):
        if n < MIN_IMAGES_PER_SET:
            raise ValueError(f"shift_audit needs at least {MIN_IMAGES_PER_SET} images in "
                             f"each set ({N_SPLITS}-fold cross-validation, two per fold); "
                             f"{name}{what} has {n}")


def _check_labels(y_ref, y_new, n_ref, n_new):
    if (y_ref is None) != (y_new is None):
        given = "y_ref" if y_ref is not None else "y_new"
        raise ValueError(f"{given} is given but not the other: the per-class audit "
                         "compares each class across the two sets, so pass both y_ref "
                         "and y_new, or neither")
    for name, y, n in (("y_ref", y_ref, n_ref), ("y_new", y_new, n_new)):
        if y is not None and len(y) != n:
            raise ValueError(f"{name} has {len(y)} labels but its set has {n} images")


def _groups(groups_ref, groups_new, n_ref, n_new):
    for name, g, n in (("groups_ref", groups_ref, n_ref), ("groups_new", groups_new, n_new)):
        if g is not None and len(g) != n:
            raise ValueError(f"{name} has {len(g)} entries but its set has {n} images")
    ref = (np.asarray(groups_ref, dtype=str) if groups_ref is not None
           else np.char.add("ref_", np.arange(n_ref).astype(str)))
    new = (np.asarray(groups_new, dtype=str) if groups_new is not None
           else np.char.add("new_", np.arange(n_new).astype(str)))
    return np.concatenate([ref, new])


# ---------------------------------------------------------------------------- the test
def _ridge_maps(Z, domain, groups, rng):
    """Per fold: (test indices, train indices, B, W) with held-out scores = B @ (W @
    centred train labels) + train-label mean; B and W depend on the images only."""
    cv = StratifiedGroupKFold(N_SPLITS, shuffle=True, random_state=rng.randint(2 ** 31))
    maps = []
    for train, test in cv.split(Z, domain, groups):
        scaler = StandardScaler().fit(Z[train])
        A, B = scaler.transform(Z[train]), scaler.transform(Z[test])
        mean = A.mean(0)
        A, B = A - mean, B - mean
        gram = A.T @ A + RIDGE_ALPHA * np.eye(A.shape[1])
        maps.append((test, train, B, np.linalg.solve(gram, A.T)))
    return maps


def _held_out_scores(maps, labels):
    """Held-out ridge scores for label columns ``labels`` (n, P)."""
    out = np.empty(labels.shape, dtype=float)
    for test, train, B, W in maps:
        y = labels[train]
        out[test] = B @ (W @ (y - y.mean(0))) + y.mean(0)
    return out


def _column_aucs(labels, scores):
    """ROC AUC of each column (Mann-Whitney, ties counted 1/2) of 0/1 ``labels``."""
    ranks = rankdata(scores, axis=0)
    n_pos = labels.sum(0)
    n_neg = len(labels) - n_pos
    return ((ranks * labels).sum(0) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def _shuffler(domain, groups):
    """A function ``rng -> shuffled domain labels``: shuffled between patients (each
    patient's images move together: under no shift, patients, not images, are
    exchangeable), or between images when no patient has several images or one has
    images in both sets."""
    units, inverse = np.unique(groups, return_inverse=True)
    per_unit = np.zeros(len(units), dtype=domain.dtype)
    per_unit[inverse] = domain
    if len(units) == len(domain) or not np.array_equal(per_unit[inverse], domain):
        return lambda rng: rng.permutation(domain)
    return lambda rng: rng.permutation(per_unit)[inverse]


def _domain_test(Z, domain, groups, n_permutations, n_bootstraps, rng):
    maps = _ridge_maps(Z, domain, groups, rng)
    scores = _held_out_scores(maps, domain[:, None].astype(float))[:, 0]
    auc = float(roc_auc_score(domain, scores))
    shuffle = _shuffler(domain, groups)
    perms = np.stack([shuffle(rng) for _ in range(n_permutations)], 1)
    null = _held_out_scores(maps, perms.astype(float))
    null_auc = _column_aucs(perms, null)
    p_value = float((1 + np.sum(null_auc >= auc)) / (1 + n_permutations))
    n = len(domain)
    weights = bootstrap_weights(n, n_bootstraps, rng)
    boot = _weighted_auc(scores, domain.astype(bool), weights, np.argsort(scores,
                                                                         kind="stable"))
    boot = boot[np.isfinite(boot)]
    ci = tuple(float(v) for v in np.percentile(boot, [2.5, 97.5]))
    return auc, ci, p_value, scores


def shift_audit(X_ref, X_new, *, y_ref=None, y_new=None, model=None, groups_ref=None,
                groups_new=None, n_permutations=1000, n_bootstraps=1000,
                random_state=None):
    """Test whether new images (test set, another site) differ from reference images.

    A domain classifier (ridge on standardised features) is cross-validated (5 folds,
    patients kept on one side) to tell ``X_new`` from ``X_ref``; its out-of-fold ROC AUC
    is 0.5 when the sets come from one source and rises with any difference a model can
    see. Such a difference warns that figures measured on the reference set (e.g.
    validation) will be optimistic for the new set.

    Parameters
    ----------
    X_ref, X_new : arrays (n, H, W), (n, H, W, C) or (n, C, H, W) (``CompactImages``
        too), or lists of image paths (both the same kind). Arrays must have the same
        image size and channels in both sets.
    y_ref, y_new : array-like, optional
        Labels of both sets (both or neither): adds the same test within each class.
    model : fitted CXRClassifier or Pipeline ending in one, optional
        Use its frozen trunk features (after its preprocessing steps, e.g. an
        ``ImageLoader`` for paths) as the representation: the differences *this* model
        sees. Default: a small pixel representation (16x16 average-pooled intensities, a
        16-bin histogram, mean and standard deviation).
    groups_ref, groups_new : array-like, optional
        Patient ids; a patient's images stay on one side of every CV split.
    n_permutations : int, default=1000
        Domain-label shuffles for the p-value (each is one matrix product per fold).
    n_bootstraps : int, default=1000
        Resamples of the AUC's 95 % percentile interval.
    random_state : int, RandomState or None, default=None

    Returns
    -------
    audit : ShiftAudit
        ``auc``, ``auc_ci``, ``p_value``, ``shifted``, ``per_class``, ``atypical``.

    Raises
    ------
    ValueError
        Fewer than ``MIN_IMAGES_PER_SET`` (10) images in a set; arrays of different image
        sizes or channel counts; paths mixed with arrays; labels for one set only;
        label or group counts that do not match their set.
    sklearn.exceptions.NotFittedError
        ``model`` is not fitted.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> ref = rng.random((40, 8, 8)); new = rng.random((40, 8, 8)) + 0.3
    >>> audit = shift_audit(ref, new, n_permutations=99, random_state=0)
    >>> audit.shifted, round(audit.auc, 2)
    (True, 1.0)
    """
    n_ref, n_new = len(X_ref), len(X_new)
    _check_counts(n_ref, n_new, "")
    _check_labels(y_ref, y_new, n_ref, n_new)
    groups = _groups(groups_ref, groups_new, n_ref, n_new)
    if model is not None:
        from sklearn.utils.validation import check_is_fitted

        check_is_fitted(model)
        Z = np.concatenate([_model_features(model, X_ref), _model_features(model, X_new)])
        representation = "model features"
    else:
        _check_same_kind(X_ref, X_new)
        Z = np.concatenate([_pixel_features(X_ref, "X_ref"), _pixel_features(X_new, "X_new")])
        representation = f"pixels ({POOLED_SIDE}x{POOLED_SIDE} pooled + histogram)"
    domain = np.r_[np.zeros(n_ref, dtype=int), np.ones(n_new, dtype=int)]
    rng = check_random_state(random_state)
    auc, ci, p, scores = _domain_test(Z, domain, groups, n_permutations, n_bootstraps, rng)
    new_scores = scores[n_ref:]
    audit = ShiftAudit(auc=auc, auc_ci=ci, p_value=p, n_ref=n_ref, n_new=n_new,
                       representation=representation, n_permutations=n_permutations,
                       atypical=np.argsort(-new_scores, kind="stable")[:10].tolist(),
                       scores=new_scores)
    if y_ref is not None:
        labels = np.concatenate([np.asarray(y_ref), np.asarray(y_new)])
        for label in sorted(set(labels.tolist()), key=str):
            keep = labels == label
            nr, nn = int(keep[:n_ref].sum()), int(keep[n_ref:].sum())
            if min(nr, nn) < MIN_IMAGES_PER_SET:
                audit.per_class[label] = {
                    "auc": float("nan"), "auc_ci": (float("nan"), float("nan")),
                    "p_value": float("nan"), "n_ref": nr, "n_new": nn,
                    "skipped": f"fewer than {MIN_IMAGES_PER_SET} images in a set "
                               f"({nr} reference, {nn} new)"}
                continue
            a, c, pc, _ = _domain_test(Z[keep], domain[keep], groups[keep],
                                       n_permutations, n_bootstraps, rng)
            audit.per_class[label] = {"auc": a, "auc_ci": c, "p_value": pc,
                                      "n_ref": nr, "n_new": nn}
    return audit
