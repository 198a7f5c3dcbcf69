"""What ``CXRClassifier.fit`` and its prediction methods accept, checked and converted.

Images (arrays, tensors, lazy datasets, :class:`~cxr_estimators.preprocessing.CompactImages`)
become float32 ``(n, C, H, W)`` or stay lazy/compact; labels are encoded; a given
validation set and prediction input are checked against what fit saw. sklearn's
``check_array`` and ``LabelEncoder`` do the generic part; written here by hand: the image
shapes and channel counts, compact-image normalisation, and errors that name the
offending input (``X``, ``X_val``, ``y_val``, ``groups``) and value.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from sklearn.preprocessing import LabelEncoder
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_array, column_or_1d

from . import _feed, _targets
from ._validation import (check_flattened, check_image_batch, check_labels, check_memory,
                          check_not_paths, warn_unnormalised)
from .preprocessing import CompactImages

__all__ = ["as_images", "encode_targets", "image_shape", "prediction_input",
           "training_input", "validation_set"]


def image_shape(X):
    """(C, H, W) of the model input; C counts the channels a gray CompactImages is
    repeated to."""
    if isinstance(X, CompactImages):
        return (X.channels, *X.shape[2:])
    return tuple(X.shape[1:]) if hasattr(X, "shape") else tuple(X[0].shape)


def as_images(X, name="X"):
    """Validate X and return float32 (n, C, H, W), or a lazy image dataset as is.

    2-D X of shape (n, d) is taken as n images of 1 × 1 × d pixels (so sklearn's generic
    estimator checks can run); (n, H, W) as single-channel images. A
    ``torch.utils.data.Dataset`` of ``(C, H, W)`` tensors (e.g. ``ImageLoader(lazy=True)``
    output) is used lazily: images are produced batch by batch. A
    :class:`~cxr_estimators.preprocessing.CompactImages` (uint8/uint16 with its
    normalisation) is kept as it is: the model normalises it on its device.
    """
    if isinstance(X, CompactImages) and X.normalization is not None:
        return CompactImages(X, *X.normalization)  # checks the shape; no copy if contiguous
    if isinstance(X, torch.utils.data.Dataset):
        return _check_dataset(X, name)
    if isinstance(X, torch.Tensor):
        X = X.detach().cpu().numpy()
    check_not_paths(X, name)
    if getattr(X, "dtype", np.float32) != np.float32:
        check_memory(4 * int(np.size(X)), f"converting {name} ({np.shape(X)}, {X.dtype}) to "
                     "float32", "pass float32 images or fewer of them at a time")
    if hasattr(X, "__len__") and len(X) == 0:
        raise ValueError(f"{name} is empty (0 images)")
    raw_dtype = getattr(X, "dtype", None)
    if isinstance(X, (list, tuple)):
        shapes = sorted({np.shape(x) for x in X}, key=str)
        if len(shapes) > 1:
            raise ValueError(f"{name} is a list of images of different shapes {shapes[:4]}; "
                             "make them one size first (ImageLoader(size=...) resizes)")
    X = check_array(X, allow_nd=True, dtype=np.float32, ensure_min_samples=1,
                    input_name=name)
    warn_unnormalised(X, raw_dtype, name)
    if X.ndim == 2:
        check_flattened(X)
        X = X[:, None, None, :]
    elif X.ndim == 3:
        X = X[:, None]
    elif X.ndim != 4:
        raise ValueError(f"{name} must have shape (n, C, H, W), (n, H, W) or (n, d); got "
                         f"{X.shape}")
    if X.shape[1] not in (1, 3):
        raise ValueError(
            f"{name} has {X.shape[1]} channels (shape {X.shape}); expected 1 or 3 in (n, C, H, W) "
            "order. Use ImageLoader to convert images."
        )
    if 0 in X.shape[2:]:
        raise ValueError(f"{name} has images of {X.shape[2]}x{X.shape[3]} pixels (shape "
                         f"{X.shape}): no pixels to learn from")
    return np.ascontiguousarray(X)


def _check_dataset(X, name):
    if len(X) == 0:
        raise ValueError(f"{name} is an empty dataset")
    if not hasattr(X, "shape") and not hasattr(X[0], "shape"):
        raise ValueError(f"{name}'s items must be (C, H, W) arrays or tensors; got "
                         f"{type(X[0]).__name__} (a TensorDataset yields tuples: pass "
                         "the tensor itself)")
    shape = image_shape(X)
    if len(shape) != 3 or shape[0] not in (1, 3):
        raise ValueError(f"{name}'s items must be (C, H, W) with C = 1 or 3; got {shape}")
    return X


def encode_targets(y, estimator="CXRClassifier", sampling=None):
    """``(classes, y encoded as int64)`` for fit; at least two images and two classes."""
    if y is None:
        raise ValueError(f"{estimator} requires y to be passed, but the target y is None")
    y = column_or_1d(y, warn=True)
    check_labels(y, missing=True)
    if len(y) < 2:
        raise ValueError(f"n_samples={len(y)}: need at least 2 labelled images to fit")
    check_classification_targets(y)
    encoder = LabelEncoder().fit(y)
    check_labels(encoder.classes_)
    if len(encoder.classes_) < 2:
        raise ValueError(
            f"y has a single class {encoder.classes_.tolist()}; need at least 2 classes"
            + (f" (and sampling={sampling!r} needs classes to balance)" if sampling else "")
        )
    return encoder.classes_, encoder.transform(y).astype(np.int64)


def training_input(X, y, groups=None, estimator="CXRClassifier", sampling=None,
                   uncertain=None):
    """``(X as images, classes, y encoded, groups as 1-D or None)``, lengths checked.

    A multilabel ``y`` (n, k) gives the finding names as ``classes`` and a float32
    ``y`` (n, k) with NaN for labels left out (:mod:`cxr_estimators._targets`)."""
    if _targets.is_multilabel(y):
        if sampling is not None:
            raise ValueError(f"sampling={sampling!r} balances the classes of a 1-D y; with "
                             "multilabel y use class_weight='balanced' (a positive weight "
                             "per finding)")
        classes, y_enc = _targets.multilabel_targets(y, uncertain)
        _targets.check_training_findings(classes, y_enc)
    else:
        classes, y_enc = encode_targets(y, estimator, sampling)
    kind = getattr(getattr(X, "dtype", None), "kind", "f")
    X = as_images(X)
    check_float_scale(X, None, estimator, kind=kind)
    if len(X) != len(y_enc):
        raise ValueError(f"X has {len(X)} images but y has {len(y_enc)} labels")
    if groups is not None:
        groups = column_or_1d(groups)
        if len(groups) != len(y_enc):
            raise ValueError(f"groups has {len(groups)} entries but y has "
                             f"{len(y_enc)} labels")
        missing = [i for i, g in enumerate(groups.tolist()) if g is None or g != g]
        if missing:  # NaN != NaN; all missing ids would become one shared "patient"
            raise ValueError(f"groups has missing patient ids (None or NaN) at rows "
                             f"{missing[:10]}; give every image its patient id, or "
                             "groups=None")
    return X, classes, y_enc, groups


def validation_set(X_val, y_val, classes, fit_shape, normalization,
                   estimator="CXRClassifier", X=None, uncertain=None, multilabel=False):
    """``(X_val, y_val encoded)`` checked against the training data ``X`` (images of
    the same shape, compact ones normalised as X, float ones on a similar scale), or
    None. ``multilabel``: ``classes`` are the findings ``y_val``'s columns must be."""
    if X_val is None and y_val is None:
        return None
    if X_val is None or y_val is None:
        given, missing = ("X_val", "y_val") if y_val is None else ("y_val", "X_val")
        raise ValueError(f"{given} was given without {missing}; pass both or neither")
    kind = getattr(getattr(X_val, "dtype", None), "kind", None)
    X_val = _feed.match_normalization(as_images(X_val, "X_val"), kind, normalization,
                                      estimator, "X_val")
    check_float_scale(X_val, normalization, estimator, "X_val", kind or "f")
    shape = image_shape(X_val)
    if shape != fit_shape:
        raise ValueError(f"X_val has images of shape {shape} but X has {fit_shape}; "
                         "preprocess both the same way (in a Pipeline: "
                         "transform_input=['X_val'])")
    if multilabel:
        if not _targets.is_multilabel(y_val):
            raise ValueError(f"y_val has shape {np.shape(y_val)} but y has "
                             f"{len(classes)} findings {list(classes)}; pass y_val with the "
                             "same columns")
        _, y_val = _targets.multilabel_targets(y_val, uncertain, "y_val", findings=classes)
        if len(y_val) != len(X_val):
            raise ValueError(f"X_val has {len(X_val)} images but y_val has {len(y_val)} "
                             "rows")
        warn_other_scale(X, X_val)
        return X_val, y_val
    y_val = column_or_1d(y_val, warn=True)
    if len(y_val) != len(X_val):
        raise ValueError(f"X_val has {len(X_val)} images but y_val has {len(y_val)} "
                         "labels")
    check_known_labels(y_val, classes, "y_val", "y's classes")
    warn_other_scale(X, X_val)
    return X_val, np.searchsorted(classes, y_val).astype(np.int64)


def check_known_labels(y, classes, name, where="classes_ (the labels seen in fit)"):
    """Refuse labels of ``y`` that are not among ``classes``."""
    y = column_or_1d(y, warn=True)
    unseen = sorted(set(y.tolist()) - set(np.asarray(classes).tolist()), key=str)
    if unseen:
        raise ValueError(f"{name} has labels {unseen[:10]} not in {where} "
                         f"{np.asarray(classes).tolist()}")


#: Images per set whose pixels :func:`warn_other_scale` compares.
SCALE_SAMPLE = 256


def warn_other_scale(X, X_val):
    """Warn when float ``X_val`` looks preprocessed otherwise than ``X``: the means of
    the two sets' pixels differ by more than half of X's standard deviation, or the
    deviations by more than a factor of two ([0, 1] against [-1, 1] does both). Two
    samples of one preprocessing stay far inside these bounds."""
    if not (isinstance(X, np.ndarray) and isinstance(X_val, np.ndarray)) \
            or isinstance(X_val, CompactImages):
        return
    (m, s), (m_val, s_val) = (_pixel_stats(a) for a in (X, X_val))
    if s > 0 and s_val > 0 and (abs(m_val - m) > 0.5 * s or not 0.5 <= s_val / s <= 2):
        warnings.warn(
            f"X_val's pixels (mean {m_val:.3g}, std {s_val:.3g}) are on another scale than "
            f"X's (mean {m:.3g}, std {s:.3g}): preprocess both the same way (in a Pipeline: "
            "transform_input=['X_val'] sends X_val through X's ImageLoader). Early stopping "
            "on a mis-scaled validation set stops at the wrong epoch", UserWarning,
            stacklevel=4)


def _pixel_stats(images):
    step = max(1, len(images) // SCALE_SAMPLE)
    sample = images[::step][:SCALE_SAMPLE]
    if isinstance(sample, CompactImages):  # compared as the model sees them: normalised
        sample = sample.to_float32()
    sample = sample.astype(np.float64)
    return float(sample.mean()), float(sample.std())


#: Normalised images stay within a few units of 0 (ImageNet's normalisation spans about
#: [-2.1, 2.6]); 0-255 pixels held as floats reach tens or hundreds.
RAW_PEAK, NORMALISED_PEAK = 20.0, 5.0


def check_float_scale(X, fitted, estimator="CXRClassifier", input_name="X", kind="f"):
    """Refuse float images on the 0-255 pixel scale where normalised ones are expected:
    for a model fitted on compact images (``fitted``: their normalisation), which takes
    float input as already normalised; and a float array mixing both scales (e.g.
    ``np.concatenate`` of compact and float images). Warn about 0-255 floats otherwise.
    ``kind``: the dtype kind X came with (integer input has its own warning)."""
    if kind != "f" or not isinstance(X, np.ndarray) or isinstance(X, CompactImages) \
            or X.dtype.kind != "f" or X.ndim != 4 or min(X.shape[2:]) < 2 or not X.size:
        return
    flat = X.reshape(len(X), -1)
    peaks = np.abs(flat).max(axis=1)
    # 0-255 pixels are never negative: torchxrayvision's [-1024, 1024] input is not raw
    raw = (peaks > RAW_PEAK) & (flat.min(axis=1) >= 0)
    normalised = peaks <= NORMALISED_PEAK
    if raw.any() and normalised.any():
        raise ValueError(
            f"{input_name} mixes two scales: images {np.flatnonzero(raw)[:5].tolist()} have "
            f"values up to {peaks[raw].max():.4g} (0-255 pixels) and images "
            f"{np.flatnonzero(normalised)[:5].tolist()} are normalised (within "
            f"±{NORMALISED_PEAK:g}), e.g. np.concatenate of CompactImages and float "
            "images; convert all of them the same way (CompactImages.to_float32(), or one "
            "ImageLoader)")
    if fitted is None and raw.all():
        warnings.warn(
            f"{input_name} is float with values up to {peaks.max():.4g}: 0-255 pixels, not "
            "normalised images, reach the network; use ImageLoader (or scale "
            f"{input_name}) first, the same way for fit and predict", UserWarning,
            stacklevel=4)
    if fitted is not None and raw.all():
        raise ValueError(
            f"{estimator} was fitted on compact images (uint8/uint16, normalised inside the "
            f"model with (mean, std) = {fitted}), but {input_name} is float with values up "
            f"to {peaks.max():.4g}: 0-255 pixels, which the model would take as already "
            f"normalised. Pass the compact images themselves (not .astype('float32')), or "
            f"CompactImages(X.astype(np.uint8), *clf.input_normalization_)")


def prediction_input(X, fit_shape, normalization, estimator="CXRClassifier"):
    """X for a prediction method of a model fitted on images of ``fit_shape`` with
    compact-image ``normalization`` (None: float images)."""
    if getattr(X, "ndim", None) == 3:
        check_image_batch(X.shape, fit_shape)
    kind = getattr(getattr(X, "dtype", None), "kind", None)
    X = _feed.match_normalization(as_images(X), kind, normalization, estimator)
    check_float_scale(X, normalization, estimator, kind=kind or "f")
    shape = image_shape(X)
    if shape != fit_shape:
        raise ValueError(
            f"X has {int(np.prod(shape))} features, but {estimator} is expecting "
            f"{int(np.prod(fit_shape))} features as input (images of shape {shape} vs "
            f"{fit_shape} seen in fit)"
        )
    return X
