"""Image loading and preprocessing as an sklearn transformer.

Decoding of files lives in :mod:`cxr_estimators.io`; resizing, cropping and channel
conversion use :mod:`torchvision.transforms.v2.functional`. Written here: the sklearn
wrapper, the normalisation presets and the checks that name the offending row.
"""

from __future__ import annotations

import numbers
import os
import warnings

import numpy as np
import torch
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils._param_validation import Interval, StrOptions
from torchvision.transforms.v2 import functional as F

from ._validation import StrictParamsMixin, check_memory, format_bytes
from .io import ImageReadError, file_key

__all__ = ["ImageLoader", "NORMALIZATION_PRESETS"]

#: name → (mean, std) per channel, applied to images scaled to [0, 1].
NORMALIZATION_PRESETS = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "minus_one_one": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "unit": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}


def _is_path_list(X):
    if isinstance(X, (str, os.PathLike)):
        raise ValueError("X must be a list of image paths or an image array, not a single path")
    if isinstance(X, np.ndarray) and X.dtype.kind in "US":
        return True
    if isinstance(X, np.ndarray) and X.dtype != object:
        return False
    # a list, or an object array: paths, or images of different sizes
    return all(isinstance(x, (str, os.PathLike)) for x in X)


def _frame_column(X):
    """A one-column DataFrame (pandas, polars) → that column as an array; else X as is.
    Iterating a DataFrame yields its column *names*, which would be read as paths."""
    columns, shape = getattr(X, "columns", None), getattr(X, "shape", None)
    if columns is None or shape is None or len(shape) != 2:
        return X
    if shape[1] != 1:
        raise ValueError(f"X is a DataFrame with {shape[1]} columns {list(columns)[:5]}; "
                         "pass the one column of image paths, e.g. X[['path']] or "
                         "X['path']")
    return np.asarray(X)[:, 0]


def _channels_first(shape, what):
    """Whether an image array of ``shape`` (C, H, W) / (H, W, C) (batch axis removed) is
    channels-first. Channels are 1 or 3 first, or 1, 3 or 4 (RGBA) last; when both
    readings fit, channels-last is assumed and a warning says so."""
    first, last = shape[0] in (1, 3), shape[-1] in (1, 3, 4)
    if first and last:
        warnings.warn(
            f"{what} of shape {tuple(shape)} could be channels-first (C, H, W) or "
            "channels-last (H, W, C); assumed channels-last (H, W, C) with "
            f"{shape[-1]} channels. Transpose to (H, W, C) to silence this.",
            UserWarning, stacklevel=4)
    return first and not last


def _as_unit_tensor(image, row, channels_last=False):
    """(H, W), (H, W, C) or (C, H, W) array → float32 tensor (C, H, W) in [0, 1].

    ``channels_last``: a 3-D image is known to be (H, W, C) (it comes from a 4-D array
    whose layout was decided once)."""
    arr = np.asarray(image)
    if arr.dtype == np.uint8:
        arr = arr.astype(np.float32) / 255.0
    elif arr.dtype == np.uint16:
        arr = arr.astype(np.float32) / 65535.0
    elif arr.dtype.kind == "f":
        arr = arr.astype(np.float32, copy=False)
        if not np.isfinite(arr).all():
            raise ValueError(f"image {row} contains NaN or inf")
        if arr.min() < -1e-3 or arr.max() > 1 + 1e-3:
            raise ValueError(
                f"image {row} is float with values in [{arr.min():.3g}, {arr.max():.3g}]; "
                "float images must be scaled to [0, 1] (or pass uint8/uint16)"
            )
    else:
        raise ValueError(f"image {row} has unsupported dtype {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[None]
    elif arr.ndim == 3 and not channels_last and _channels_first(arr.shape, f"image {row}"):
        pass  # already (C, H, W)
    elif arr.ndim == 3 and arr.shape[-1] in (1, 3, 4):
        arr = np.moveaxis(arr[..., :3], -1, 0)
    else:
        raise ValueError(f"image {row} has shape {arr.shape}; expected (H, W), (H, W, C) "
                         "or (C, H, W) with C = 1 or 3")
    # arrays from io.read_image are read-only views of its cache: never share them
    return torch.from_numpy(np.array(arr, dtype=np.float32, order="C", copy=True if not arr.flags.writeable else None))


#: Largest output image ImageLoader makes, in bytes of float32 (as one decode, ~1 GB).
MAX_IMAGE_BYTES = 1 << 30


def _check_array_batch(X):
    """Refuse an array that is one image, not a batch; warn about uint16 holding 8-bit data."""
    if X.ndim == 2:
        raise ValueError(f"X has shape {X.shape}: a single (H, W) image, not a batch of "
                         "images; pass X[None] (a batch of one)")
    if X.ndim == 3 and X.shape[-1] in (3, 4) and X.shape[1] >= 8 * X.shape[-1]:
        raise ValueError(
            f"X has shape {X.shape}: a single (H, W, C) image, not a batch; as a batch it "
            f"would be {X.shape[0]} images of {X.shape[1]}x{X.shape[2]} pixels. Pass "
            "X[None] (a batch of one)")
    _warn_uint16_8bit(X, "X")


def _warn_uint16_8bit(arr, what):
    if arr.dtype == np.uint16 and arr.size and arr.max() <= 255:
        warnings.warn(
            f"{what} is uint16 but all its values are <= 255 (max {int(arr.max())}): "
            "uint16 is scaled by 65535, so 8-bit data comes out nearly black; pass "
            "X.astype(np.uint8) if it holds 8-bit data", UserWarning, stacklevel=4)


class ImageLoader(StrictParamsMixin, TransformerMixin, BaseEstimator):
    """Load chest X-rays from paths or arrays into a normalised float32 batch.

    Parameters
    ----------
    size : int, (int, int) or None, default=224
        Output height and width (an int means square). None keeps the size, which must
        then be the same for every image.
    channels : {1, 3}, default=3
        1: grayscale (colour sources converted with ITU-R 601 luma); 3: RGB (grayscale
        repeated).
    center_crop : float in (0, 1] or None, default=None
        Keep this central fraction of height and width before resizing (e.g. 0.7 cuts off
        the shoulders and text markers at the border).
    normalize : {"imagenet", "minus_one_one", "unit"} or (mean, std), default="imagenet"
        "imagenet": torchvision's ImageNet mean/std; "minus_one_one": scale to [-1, 1];
        "unit": keep [0, 1]; or per-channel sequences ``(mean, std)``.
    lazy : bool, default=False
        False: ``transform`` returns one float32 array. True: it returns an
        :class:`ImageDataset` that decodes and preprocesses each image when a batch asks
        for it, so memory stays bounded by the batch (``CXRClassifier`` accepts it; use it
        for predicting on many images at high resolution).

    Notes
    -----
    ``fit`` learns nothing (``n_features_in_`` is not defined: inputs are images). Input to
    ``transform`` is a list/array of file paths (decoded by :func:`cxr_estimators.io.read_image`,
    which caches decoded files) or a one-column DataFrame of them, or a uint8/uint16/float
    array ``(n, H, W)``, ``(n, H, W, C)`` or ``(n, C, H, W)``; float arrays must be in
    [0, 1]. A 4-D array is channels-first when its axis 1 is 1 or 3 and its last axis is
    not 1, 3 or 4; when both readings fit (tiny images), it is read as channels-last and
    a warning says so. Output is always an array (or dataset): ``set_output`` accepts
    only "default".

    Examples
    --------
    >>> import numpy as np
    >>> from cxr_estimators import ImageLoader
    >>> ImageLoader(size=32, channels=1).fit_transform(np.zeros((2, 28, 28), np.uint8)).shape
    (2, 1, 32, 32)
    """

    _parameter_constraints = {
        "size": [Interval(numbers.Integral, 1, None, closed="left"), tuple, list, None],
        "channels": [Interval(numbers.Integral, 1, 3, closed="both")],
        "center_crop": [Interval(numbers.Real, 0, 1, closed="right"), None],
        "normalize": [StrOptions(set(NORMALIZATION_PRESETS)), tuple, list],
        "lazy": ["boolean"],
    }

    def __init__(self, size=224, channels=3, center_crop=None, normalize="imagenet",
                 lazy=False):
        self.size = size
        self.channels = channels
        self.center_crop = center_crop
        self.normalize = normalize
        self.lazy = lazy

    def fit(self, X, y=None):
        """Validate the parameters; nothing is learned. Returns self."""
        self._check_params()
        self.is_fitted_ = True
        return self

    def _check_params(self):
        self._validate_params()
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3; got {self.channels!r}")
        self._mean_std()
        self._out_size()

    def _mean_std(self):
        if isinstance(self.normalize, str):
            mean, std = NORMALIZATION_PRESETS[self.normalize]
        else:
            try:
                mean, std = self.normalize
                mean, std = list(np.broadcast_to(mean, 3)), list(np.broadcast_to(std, 3))
            except (TypeError, ValueError):
                raise ValueError(
                    f"normalize must be a preset name or (mean, std); got {self.normalize!r}"
                ) from None
            mean, std = [float(m) for m in mean], [float(s) for s in std]
            if not np.isfinite(np.asarray(mean + std, dtype=float)).all():
                raise ValueError(f"normalize must be finite; got mean {mean}, std {std}")
            if min(std) <= 0:
                raise ValueError(f"normalize std must be > 0; got {std}")
        return list(mean[: self.channels]), list(std[: self.channels])

    def _out_size(self):
        if self.size is None:
            return None
        if isinstance(self.size, numbers.Integral):
            size = [int(self.size), int(self.size)]
        elif (len(self.size) != 2 or not all(isinstance(s, numbers.Integral)
                                             and not isinstance(s, bool) for s in self.size)
              or min(self.size) < 1):
            raise ValueError(f"size must be an int or (height, width) of ints >= 1; got "
                             f"{self.size!r}")
        else:
            size = [int(s) for s in self.size]
        nbytes = size[0] * size[1] * self.channels * 4
        if nbytes > MAX_IMAGE_BYTES:
            raise ValueError(
                f"size={self.size!r} makes images of {size[0]}x{size[1]}x{self.channels} "
                f"float32 = {format_bytes(nbytes)} each, above the "
                f"{format_bytes(MAX_IMAGE_BYTES)} limit per image")
        return size

    def _prepare(self, image, row, mean, std, size, channels_last=False):
        img = _as_unit_tensor(image, row, channels_last)
        if img.shape[0] == 1 and self.channels == 3:
            img = img.expand(3, -1, -1)
        elif img.shape[0] == 3 and self.channels == 1:
            img = F.rgb_to_grayscale(img)
        if self.center_crop is not None and self.center_crop < 1:
            h, w = img.shape[-2:]
            img = F.center_crop(img, [max(1, round(h * self.center_crop)),
                                      max(1, round(w * self.center_crop))])
        if size is not None and list(img.shape[-2:]) != size:
            img = F.resize(img, size, antialias=True)
        return F.normalize(img.float(), mean, std)

    def _sources(self, X):
        """(items, names, reader): what to decode, how to name it in errors, how to read."""
        X = _frame_column(X)
        if _is_path_list(X):
            from .io import read_image

            return list(X), [f"{i} ({os.fspath(p)!r})" for i, p in enumerate(X)], read_image
        ragged = not isinstance(X, np.ndarray) or X.dtype == object
        if ragged and all(np.ndim(x) in (2, 3) for x in X):
            for i, x in enumerate(X):
                _warn_uint16_8bit(np.asarray(x), f"image {i} of X")
            return list(X), [str(i) for i in range(len(X))], None  # differently sized images
        if ragged and any(isinstance(x, (str, os.PathLike)) for x in X):
            first = next(i for i, x in enumerate(X) if not isinstance(x, (str, os.PathLike)))
            raise ValueError(f"X mixes file paths and other values: item {first} is "
                             f"{type(X[first]).__name__} {X[first]!r:.40}")
        X = np.asarray(X)
        _check_array_batch(X)
        if X.ndim not in (3, 4):
            raise ValueError(
                f"X must be a list of paths or an array (n, H, W), (n, H, W, C) or "
                f"(n, C, H, W); got shape {X.shape}"
            )
        if X.ndim == 4 and _channels_first(X.shape[1:], "X's images"):
            X = np.moveaxis(X, 1, -1)  # a view: lazy datasets copy nothing
        return X, [str(i) for i in range(len(X))], None

    def transform(self, X):
        """Return a float32 array ``(n, channels, H, W)`` (an :class:`ImageDataset` if lazy)."""
        self._check_params()  # stateless: transform works without fit, as tagged
        dataset = ImageDataset(self, *self._sources(X))
        if len(dataset) == 0:
            raise ValueError("X is empty: no images to transform")
        if self.lazy:
            return dataset
        out = []
        for i in range(len(dataset)):
            img = dataset[i]
            if not out:  # torch.stack below copies: the list and the batch coexist
                check_memory(2 * len(dataset) * img.numel() * img.element_size(),
                             f"ImageLoader.transform of {len(dataset)} images of shape "
                             f"{tuple(img.shape)}", "use ImageLoader(lazy=True), a smaller "
                             "size=, or transform in chunks")
            if out and img.shape != out[0].shape:
                raise ValueError(
                    f"image {dataset.names[i]} has size {tuple(img.shape[-2:])} but image 0 "
                    f"has {tuple(out[0].shape[-2:])}; set size= to resize all images"
                )
            out.append(img)
        return torch.stack(out).numpy()

    def set_output(self, *, transform=None):
        """Accept ``transform="default"`` (or None): the output stays an array.

        Image batches ``(n, C, H, W)`` cannot be pandas or polars frames, so those are
        refused; ``Pipeline.set_output(transform="default")`` works."""
        if transform in (None, "default"):
            return self
        if transform in ("pandas", "polars"):
            raise ValueError(
                f"set_output(transform={transform!r}): ImageLoader outputs image batches "
                f"of shape (n, C, H, W), which cannot be {transform} DataFrames (a frame "
                "is 2-D: one row per image, one column per feature); use "
                "set_output(transform='default')")
        raise ValueError(f"set_output(transform={transform!r}): transform must be "
                         "'default' or None")

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.string = True
        tags.requires_fit = False
        return tags


class ImageDataset(torch.utils.data.Dataset):
    """Images decoded and preprocessed on access, for bounded-memory fit/predict.

    Returned by ``ImageLoader(lazy=True).transform``; item ``i`` is a float32 tensor
    ``(C, H, W)``. ``shape`` is ``(n, C, H, W)`` (from the first image: with ``size=None``
    all images must share its size). ``np.asarray(dataset)`` materialises everything.
    """

    def __init__(self, loader, items, names, reader):
        self.loader = loader
        self.items = items
        self.names = names
        self.reader = reader
        self._mean_std = loader._mean_std()
        self._size = loader._out_size()

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        # items of one 4-D array were made (n, H, W, C) by ImageLoader._sources
        stacked = isinstance(self.items, np.ndarray) and self.items.ndim == 4
        return self.loader._prepare(self._read(i), self.names[i], *self._mean_std,
                                    self._size, channels_last=stacked)

    def _read(self, i):
        """Image ``i`` as decoded; a read error names the row as well as the file, and
        keeps its type (an ``ImageNotFoundError`` is still a ``FileNotFoundError``)."""
        if self.reader is None:
            return self.items[i]
        try:
            return self.reader(self.items[i])
        except ImageReadError as exc:
            raise type(exc)(f"image {i} of X: {exc}") from None

    @property
    def shape(self):
        return (len(self), *self[0].shape)

    def __array__(self, dtype=None, copy=None):
        arr = torch.stack([self[i] for i in range(len(self))]).numpy()
        return arr if dtype is None else arr.astype(dtype)

    def fingerprint(self):
        """A digest of the sources (:func:`~cxr_estimators.io.file_key` of paths, or array
        bytes) and the loader's parameters: equal fingerprints mean equal images."""
        import hashlib

        h = hashlib.blake2b(digest_size=16)
        h.update(repr(sorted(self.loader.get_params().items())).encode())
        for item in self.items:
            if isinstance(item, (str, os.PathLike)):
                h.update(repr(file_key(os.fspath(item))).encode())
            else:
                arr = np.ascontiguousarray(item)
                h.update(str((arr.shape, arr.dtype.str)).encode())
                h.update(memoryview(arr).cast("B"))
        return h.hexdigest()
