"""Audit a chest X-ray dataset before training: duplicates, leakage, odd images.

:func:`find_duplicates` finds identical (``method="exact"``) or perceptually near-identical
(``method="phash"``) images within one set or across two. :func:`audit_dataset`
collects class balance, image sizes, duplicate groups and their label conflicts,
duplicates and patients shared with another split, and images that a few simple
heuristics flag as odd. Numbers, not verdicts: look at the flagged images.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field

import numpy as np
import scipy.fft
from PIL import Image

from .io import read_image

__all__ = ["find_duplicates", "audit_dataset", "AuditReport", "perceptual_hash"]

#: Thresholds of the odd-image heuristics (intensities are in [0, 1]).
DARK_MEAN = 0.1
BRIGHT_MEAN = 0.9
LOW_STD = 0.03
MAX_ASPECT = 2.0
COLOUR_SATURATION = 0.15


def _is_paths(X):
    if isinstance(X, np.ndarray):
        return X.dtype.kind in "US" or X.dtype == object
    return len(X) > 0 and all(isinstance(x, (str, bytes, os.PathLike)) for x in X)


def _iter_images(X):
    """Yield ``(index, image)``; paths are decoded with :func:`read_image`."""
    if isinstance(X, (str, os.PathLike)):
        raise ValueError("X must be a list of image paths or an array of images, not one path")
    if _is_paths(X):
        for i, path in enumerate(X):
            yield i, read_image(os.fsdecode(path))
        return
    X = X if isinstance(X, list) else np.asarray(X)
    if isinstance(X, np.ndarray) and X.ndim not in (3, 4):
        raise ValueError(f"image array must be (n, H, W), (n, H, W, C) or (n, C, H, W); got "
                         f"shape {X.shape}")
    scale = _float_scale(X) if isinstance(X, np.ndarray) else None
    for i, image in enumerate(X):
        image = _channels_last(np.asarray(image))
        if scale is None and image.dtype.kind == "f":  # a list: each image on its own
            image = image / _float_scale(image)
        yield i, image if scale is None or scale == 1 else image / scale


def _channels_last(image):
    """One image as (H, W) or (H, W, C): a channels-first (C, H, W) image (C = 1 or 3,
    its last axis not a channel count) is transposed, a single channel dropped."""
    if image.ndim == 3 and image.shape[0] in (1, 3) and image.shape[-1] not in (1, 3, 4):
        image = np.moveaxis(image, 0, -1)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    return image


def _float_scale(X):
    """What float pixels are divided by to lie in [0, 1]: 1 when they already do (or are
    normalised), 255 or 65535 when their largest value says they are 8- or 16-bit
    pixels held as floats."""
    if X.dtype.kind != "f" or not X.size or not np.isfinite(X).any():
        return 1
    peak = float(np.nanmax(np.where(np.isfinite(X), X, np.nan)))
    return 1 if peak <= 1 else 255 if peak <= 255 else 65535 if peak <= 65535 else 1


def _exact_hash(image):
    image = np.ascontiguousarray(image)
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{image.dtype.str}{image.shape}".encode())
    h.update(image.tobytes())
    return h.hexdigest()


def _to_unit_gray(image):
    arr = np.asarray(image)
    scale = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}.get(arr.dtype, 1.0)
    arr = arr.astype(np.float32) / scale
    return arr.mean(axis=-1) if arr.ndim == 3 else arr


def perceptual_hash(image):
    """64-bit DCT perceptual hash of one image (grayscale or colour).

    The image is converted to grayscale, resized to 32x32 (bilinear), transformed with a
    2-D DCT-II; the 8x8 lowest frequencies are compared with their median, giving 64
    bits. Similar images have hashes at a small Hamming distance.

    Parameters
    ----------
    image : ndarray, shape (H, W) or (H, W, C)

    Returns
    -------
    hash : int
        Unsigned 64-bit integer.
    """
    gray = Image.fromarray(_to_unit_gray(image).astype(np.float32), mode="F")
    small = np.asarray(gray.resize((32, 32), Image.Resampling.BILINEAR), dtype=np.float64)
    low = scipy.fft.dctn(small, type=2, norm="ortho")[:8, :8]
    bits = (low > np.median(low)).ravel()
    return int(np.packbits(bits).view(">u8")[0])


def _hash_all(X, method):
    fn = _exact_hash if method == "exact" else perceptual_hash
    return [fn(image) for _, image in _iter_images(X)]


def _exact_pairs(ha, hb):
    index_b = defaultdict(list)
    for j, h in enumerate(hb if hb is not None else ha):
        index_b[h].append(j)
    return [(i, j) for i, h in enumerate(ha) for j in index_b[h] if hb is not None or i < j]


def _phash_pairs(ha, hb, max_distance, chunk=512):
    a = np.asarray(ha, dtype=np.uint64)
    b = a if hb is None else np.asarray(hb, dtype=np.uint64)
    pairs = []
    for start in range(0, len(a), chunk):
        dist = np.bitwise_count(a[start:start + chunk, None] ^ b[None, :])
        i, j = np.nonzero(dist <= max_distance)
        i = i + start
        keep = i < j if hb is None else slice(None)
        pairs.extend(zip(i[keep].tolist(), j[keep].tolist()))
    return pairs


def find_duplicates(X_a, X_b=None, *, method="exact", max_distance=0):
    """Find duplicate images within one set or across two sets.

    Parameters
    ----------
    X_a : array-like of shape (n_a, H, W[, C]) or list of paths
        Images (an array, a list of differently sized arrays, or file paths decoded with
        :func:`cxr_estimators.io.read_image`).
    X_b : same as X_a, optional
        A second set; if given, only pairs across the two sets are returned.
    method : {"exact", "phash"}, default="exact"
        ``"exact"``: identical pixel arrays (same shape, dtype and bytes; BLAKE2b hashes
        grouped). ``"phash"``: 64-bit DCT perceptual hashes (:func:`perceptual_hash`)
        within Hamming distance ``max_distance``; finds re-encoded, rescaled or
        slightly altered copies, at the price of false positives as ``max_distance``
        grows.
    max_distance : int, default=0
        Largest Hamming distance (0..64) counted as a duplicate with ``"phash"``; must be
        0 with ``"exact"``.

    Returns
    -------
    pairs : list of (int, int)
        Sorted pairs ``(i, j)``: ``i`` indexes ``X_a`` and ``j`` indexes ``X_b``; within
        one set ``i < j`` and a group of k copies gives k(k-1)/2 pairs.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.zeros((3, 4, 4), dtype=np.uint8); X[1] += 1
    >>> find_duplicates(X)
    [(0, 2)]
    """
    if method not in ("exact", "phash"):
        raise ValueError(f"method must be 'exact' or 'phash', got {method!r}")
    if isinstance(max_distance, bool) or not isinstance(max_distance, (int, np.integer)) \
            or not 0 <= max_distance <= 64:
        raise ValueError(f"max_distance must be an int in [0, 64], got {max_distance!r}")
    if method == "exact" and max_distance != 0:
        raise ValueError(f"max_distance={max_distance} needs method='phash'; "
                         "method='exact' only finds identical images")
    ha = _hash_all(X_a, method)
    hb = None if X_b is None else _hash_all(X_b, method)
    if method == "exact":
        pairs = _exact_pairs(ha, hb)
    else:
        pairs = _phash_pairs(ha, hb, max_distance)
    return sorted((int(i), int(j)) for i, j in pairs)


@dataclass
class AuditReport:
    """What :func:`audit_dataset` found. ``str(report)`` is a readable summary.

    Attributes
    ----------
    n_images, n_other : int
        Images in X and in X_other (0 when not given).
    class_counts : dict
        Label → count (empty without y).
    image_sizes, image_modes : dict
        ``"HxW"`` → count; Pillow mode (or ``"gray"``/``"rgb"`` for arrays) → count.
    duplicate_groups : list of list of int
        Indices into X of identical images, one list per group.
    label_conflicts : list of list of int
        The duplicate groups whose copies carry different labels.
    cross_duplicates : list of (int, int)
        Identical images ``(i in X, j in X_other)``: leakage between the splits.
    shared_patients : list of str
        Patient ids present in both ``groups`` and ``groups_other``.
    odd_images : dict
        Index into X → list of reasons (see :func:`audit_dataset` for the heuristics).
    """

    n_images: int = 0
    n_other: int = 0
    class_counts: dict = field(default_factory=dict)
    image_sizes: dict = field(default_factory=dict)
    image_modes: dict = field(default_factory=dict)
    duplicate_groups: list = field(default_factory=list)
    label_conflicts: list = field(default_factory=list)
    cross_duplicates: list = field(default_factory=list)
    shared_patients: list = field(default_factory=list)
    odd_images: dict = field(default_factory=dict)

    def to_dict(self):
        """Return the report as plain Python types (JSON-serialisable)."""
        return asdict(self)

    def __str__(self):
        n_dup = sum(len(g) for g in self.duplicate_groups)
        lines = [f"Audit of {self.n_images} images"]
        if self.class_counts:
            total = sum(self.class_counts.values())
            balance = ", ".join(f"{k}: {v} ({v / total:.1%})"
                                for k, v in self.class_counts.items())
            lines.append(f"  classes: {balance}")
        lines.append(f"  sizes: {_top(self.image_sizes)}")
        lines.append(f"  modes: {_top(self.image_modes)}")
        lines.append(f"  exact duplicates: {len(self.duplicate_groups)} groups "
                     f"({n_dup} images), {len(self.label_conflicts)} with conflicting labels")
        if self.n_other:
            lines.append(f"  identical images shared with the other set ({self.n_other} "
                         f"images): {len(self.cross_duplicates)} pairs")
        if self.shared_patients:
            lines.append(f"  patients in both sets: {len(self.shared_patients)} "
                         f"(e.g. {self.shared_patients[:5]})")
        reasons = Counter(r for rs in self.odd_images.values() for r in rs)
        lines.append(f"  odd images: {len(self.odd_images)}"
                     + (f" ({dict(reasons)})" if reasons else ""))
        return "\n".join(lines)


def _top(counts, k=3):
    items = sorted(counts.items(), key=lambda kv: -kv[1])
    more = f" and {len(items) - k} more" if len(items) > k else ""
    return ", ".join(f"{key} ×{n}" for key, n in items[:k]) + more if items else "-"


def _odd_reasons(image):
    """Reasons the heuristics flag one image (float in [0, 1] or integer)."""
    arr = np.asarray(image)
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        return ["NaN or inf pixels" if np.isfinite(arr).any() else "all pixels NaN or inf"]
    gray = _to_unit_gray(arr)
    reasons = []
    mean, std = float(gray.mean()), float(gray.std())
    if mean < DARK_MEAN:
        reasons.append("very dark")
    elif mean > BRIGHT_MEAN:
        reasons.append("very bright")
    if std < LOW_STD:
        reasons.append("nearly uniform")
    h, w = gray.shape
    if max(h, w) / max(min(h, w), 1) > MAX_ASPECT:
        reasons.append("extreme aspect ratio")
    if arr.ndim == 3 and arr.shape[-1] >= 3:
        rgb = arr[..., :3].astype(np.float32)
        hi, lo = rgb.max(axis=-1), rgb.min(axis=-1)
        saturation = np.where(hi > 0, (hi - lo) / np.maximum(hi, 1e-12), 0.0)
        if float(saturation.mean()) > COLOUR_SATURATION:
            reasons.append("colour image (likely not a radiograph)")
    return reasons


def _patient_ids(groups, name):
    """The patient ids as strings, without missing ones (None, NaN, ""): those are no
    patient, and two of them are not the same patient (a warning names their rows)."""
    missing = [i for i, g in enumerate(groups)
               if g is None or g != g or str(g).strip() == ""]  # NaN != NaN
    if missing:
        warnings.warn(f"{name} has {len(missing)} missing patient ids (None, NaN or '') at "
                      f"rows {missing[:10]}{' ...' if len(missing) > 10 else ''}; they are "
                      "left out of the shared-patient check", UserWarning, stacklevel=3)
    skip = set(missing)
    return {str(g) for i, g in enumerate(groups) if i not in skip}


def _pil_mode(path):
    try:
        with Image.open(path) as im:
            return im.mode
    except Exception:  # DICOM and other non-Pillow files
        return os.path.splitext(os.fspath(path))[1].lstrip(".").upper() or "unknown"


def audit_dataset(X, y=None, groups=None, *, X_other=None, groups_other=None):
    """Audit a dataset (and optionally its relation to another split).

    Parameters
    ----------
    X : array-like (n, H, W[, C]) or list of paths
        The images to audit; paths are decoded once each with
        :func:`cxr_estimators.io.read_image`.
    y : array-like of shape (n,), optional
        Labels: class balance and label conflicts among duplicates.
    groups : array-like of shape (n,), optional
        Patient ids of X.
    X_other : same as X, optional
        Another split (e.g. the test set): identical images shared with X are reported.
    groups_other : array-like, optional
        Patient ids of X_other: patients present in both splits are reported.

    Returns
    -------
    report : AuditReport

    Notes
    -----
    Odd-image heuristics, on intensities scaled to [0, 1] (module constants):
    mean < ``DARK_MEAN`` = 0.1 "very dark"; mean > ``BRIGHT_MEAN`` = 0.9 "very bright";
    standard deviation < ``LOW_STD`` = 0.03 "nearly uniform" (blank or failed exports);
    longer/shorter side > ``MAX_ASPECT`` = 2.0 "extreme aspect ratio" (cropped strips,
    scanned reports); for colour sources, mean HSV saturation > ``COLOUR_SATURATION`` =
    0.15 "colour image (likely not a radiograph)" (photos, screenshots, annotated
    images; radiographs stored as RGB have R = G = B and saturation 0). There is no
    lateral-view detector, by choice: the obvious statistic, left-right asymmetry of the
    column-mean intensity profile, is also high for frontal films with one lung
    opacified (unilateral pneumonia) or framed off-centre, so it would flag disease as
    well as view, and with no lateral images at hand its worth cannot be measured.
    """
    if y is not None and len(y) != len(X):
        raise ValueError(f"y has {len(y)} labels but X has {len(X)} images")
    if groups is not None and len(groups) != len(X):
        raise ValueError(f"groups has {len(groups)} entries but X has {len(X)} images")
    report = AuditReport(n_images=len(X))
    if y is not None:
        report.class_counts = {str(k): int(v) for k, v in sorted(Counter(
            np.asarray(y).tolist()).items(), key=lambda kv: str(kv[0]))}
    sizes, modes, hashes = Counter(), Counter(), []
    paths = _is_paths(X)
    for i, image in _iter_images(X):
        hashes.append(_exact_hash(image))
        sizes[f"{image.shape[0]}x{image.shape[1]}"] += 1
        modes[_pil_mode(X[i]) if paths else ("rgb" if image.ndim == 3 else "gray")] += 1
        reasons = _odd_reasons(image)
        if reasons:
            report.odd_images[i] = reasons
    report.image_sizes, report.image_modes = dict(sizes), dict(modes)
    by_hash = defaultdict(list)
    for i, h in enumerate(hashes):
        by_hash[h].append(i)
    report.duplicate_groups = sorted(g for g in by_hash.values() if len(g) > 1)
    if y is not None:
        y_arr = np.asarray(y)
        report.label_conflicts = [g for g in report.duplicate_groups
                                  if len(set(y_arr[g].tolist())) > 1]
    if X_other is not None:
        report.n_other = len(X_other)
        other = [_exact_hash(image) for _, image in _iter_images(X_other)]
        report.cross_duplicates = sorted(_exact_pairs(hashes, other))
    if groups is not None and groups_other is not None:
        report.shared_patients = sorted(
            _patient_ids(groups, "groups") & _patient_ids(groups_other, "groups_other"))
    return report


from ._shift import MIN_IMAGES_PER_SET, ShiftAudit, shift_audit  # noqa: E402  (re-export)

__all__ += ["shift_audit", "ShiftAudit", "MIN_IMAGES_PER_SET"]
