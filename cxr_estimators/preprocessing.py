"""Image loading and preprocessing as an sklearn transformer.

Decoding of files lives in :mod:`cxr_estimators.io`; resizing, cropping and channel
conversion use :mod:`torchvision.transforms.v2.functional`. Written here: the sklearn
wrapper, the normalisation presets, the checks that name the offending row, and the
compact output: :class:`CompactImages` (uint8/uint16 images that carry their
normalisation) and :class:`InputNormalization`, the module that applies that
normalisation inside the model, on its device (see docs/design.md, "Compact images").
"""

from __future__ import annotations

import numbers
import os
import warnings

import numpy as np
import torch
from sklearn.base import BaseEstimator, TransformerMixin, clone
from sklearn.utils._param_validation import Interval, StrOptions
from torch import nn
from torchvision.transforms.v2 import functional as F

from ._validation import StrictParamsMixin, check_memory, format_bytes
from .io import ImageReadError, file_key

__all__ = ["CompactImages", "ImageLoader", "InputNormalization", "NORMALIZATION_PRESETS"]

#: name → (mean, std) per channel, applied to images scaled to [0, 1].
NORMALIZATION_PRESETS = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "minus_one_one": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "unit": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
    # torchxrayvision's models take [-1024, 1024]: (x - 0.5) * 2048 on [0, 1] images
    "xrv": ((0.5, 0.5, 0.5), (1 / 2048, 1 / 2048, 1 / 2048)),
}

#: Compact pixel types → the value that means 1.0 (white).
_COMPACT_MAX = {np.dtype(np.uint8): 255, np.dtype(np.uint16): 65535}


class InputNormalization(nn.Module):
    """The model's first step: uint8/uint16 images → normalised float32, on their device.

    ``(x / max - mean[c]) / std[c]`` per channel, ``max`` = 255 (uint8) or 65535 (uint16);
    a one-channel input with three-channel ``mean``/``std`` comes out with three channels
    (the gray → RGB repeat, done by broadcasting). Float input is taken as normalised
    already (``ImageLoader(dtype="float32")`` output) and returned unchanged. ``mean`` and
    ``std`` are buffers: they move with the model and are saved in its ``state_dict``.
    """

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1))

    def forward(self, x):
        if x.is_floating_point():
            return x
        if x.dtype == torch.uint16:
            # widened through int16 bits: every device and torch version converts int32
            x, top = x.view(torch.int16).int() & 0xFFFF, 65535.0
        elif x.dtype == torch.uint8:
            top = 255.0
        else:
            raise TypeError(f"images must be float, uint8 or uint16; got {x.dtype}")
        if x.ndim == 3:
            x = x.unsqueeze(1)
        scale = 1.0 / (top * self.std)
        return torch.addcmul(-self.mean / self.std, x.float(), scale)

    def extra_repr(self):
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


class CompactImages(np.ndarray):
    """uint8/uint16 images ``(n, C, H, W)`` carrying the normalisation that makes them the
    model's float input.

    ``ImageLoader(dtype="uint8" | "uint16").transform`` returns this. :class:`CXRClassifier`
    applies the normalisation inside its model (:class:`InputNormalization`), on its
    device, so host memory and host-to-device copies carry 1 or 2 bytes per pixel instead
    of 4, and a gray image once instead of three times.

    Parameters
    ----------
    images : array-like of uint8 or uint16, shape (n, C, H, W)
        ``C`` is ``len(mean)``, or 1 with three-channel ``mean``/``std``: a gray image
        that the model repeats to three channels.
    mean, std : sequence of float
        Per model input channel (1 or 3), applied to the images scaled to [0, 1]
        (÷ 255 for uint8, ÷ 65535 for uint16); as ``ImageLoader(normalize=...)``.

    Attributes
    ----------
    normalization : (tuple, tuple) or None
        ``(mean, std)``. None on arrays derived by arithmetic, ``astype`` to another dtype
        or concatenation: those are plain values.
    channels : int
        Channels of the model input (``len(mean)``).

    Notes
    -----
    An ndarray: slicing, fancy indexing (sklearn's CV splits), ``copy`` and pickling
    (including joblib's parallel workers) keep ``normalization``; ``np.asarray`` gives the
    plain integer array. :meth:`to_float32` returns what ``dtype="float32"`` would have.
    """

    def __new__(cls, images, mean, std):
        arr = np.ascontiguousarray(images)
        if arr.dtype not in _COMPACT_MAX:
            raise ValueError(f"CompactImages must be uint8 or uint16; got {arr.dtype}")
        mean = tuple(float(m) for m in np.atleast_1d(mean))
        std = tuple(float(s) for s in np.atleast_1d(std))
        if len(mean) not in (1, 3) or len(std) != len(mean) or min(std) <= 0:
            raise ValueError(f"CompactImages needs 1 or 3 means and as many stds > 0; got "
                             f"mean={mean}, std={std}")
        if arr.ndim != 4 or arr.shape[1] not in (1, len(mean)):
            raise ValueError(f"CompactImages must have shape (n, C, H, W) with C = 1 or "
                             f"{len(mean)} (len(mean)); got {arr.shape}")
        obj = arr.view(cls)
        obj.normalization = (mean, std)
        return obj

    def __array_finalize__(self, obj):
        keep = self.dtype in _COMPACT_MAX
        self.normalization = getattr(obj, "normalization", None) if keep else None

    def __array_wrap__(self, array, context=None, return_scalar=False):
        # ufunc results (x / 255, x == 0, x.sum()) are plain values, not images to normalise
        array = np.asarray(array)
        return array[()] if return_scalar else array

    def astype(self, dtype, *args, **kwargs):
        out = super().astype(dtype, *args, **kwargs)
        return out if out.dtype == self.dtype else out.view(np.ndarray)

    def __reduce__(self):
        # the plain array is pickled by whatever pickler runs (joblib's workers memmap it)
        return _rebuild_compact, (self.view(np.ndarray), self.normalization)

    @property
    def channels(self):
        return len(self.normalization[0]) if self.normalization else self.shape[1]

    def to_float32(self):
        """The normalised float32 ``(n, channels, H, W)`` array (``dtype="float32"`` output)."""
        with torch.no_grad():
            out = InputNormalization(*self.normalization)(torch.from_numpy(np.asarray(self)))
        return out.numpy()


def _rebuild_compact(array, normalization):
    if normalization is None:
        return array
    return CompactImages(array, *normalization)


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
    """A one-column DataFrame (pandas, polars) → that column as an array; a list of
    ``bytes`` paths → str paths (``os.fsdecode``); else X as is.
    Iterating a DataFrame yields its column *names*, which would be read as paths."""
    if isinstance(X, (list, tuple)) and X and all(isinstance(x, bytes) for x in X):
        return [os.fsdecode(x) for x in X]
    if isinstance(X, np.ndarray) and X.dtype.kind == "S":
        return [os.fsdecode(x) for x in X.tolist()]
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
    if 0 in arr.shape[1:]:
        raise ValueError(f"image {row} has {arr.shape[1]}x{arr.shape[2]} pixels: an empty "
                         f"image (shape {np.shape(image)})")
    # arrays from io.read_image are read-only views of its cache: never share them
    return torch.from_numpy(np.array(arr, dtype=np.float32, order="C", copy=True if not arr.flags.writeable else None))


#: Largest output image ImageLoader makes, in bytes of float32 (as one decode, ~1 GB).
MAX_IMAGE_BYTES = 1 << 30


def _check_array_batch(X):
    """Refuse an array that is one image, not a batch; warn about uint16 holding 8-bit data."""
    if X.ndim == 2:
        raise ValueError(f"X has shape {X.shape}: a single (H, W) image, not a batch of "
                         "images; pass X[None] (a batch of one)")
    # (28, 28, 1) too: a batch of 28 images one pixel wide is no X-ray
    if X.ndim == 3 and X.shape[-1] in (1, 3, 4) and X.shape[1] >= 8 * X.shape[-1]:
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


def _resize(img, size, interpolation):
    """Resize a float (C, H, W) image in [0, 1]; bicubic / lanczos overshoot is clipped."""
    if interpolation == "lanczos":  # torchvision resizes tensors without it: Pillow's
        from PIL import Image

        planes = [np.asarray(Image.fromarray(c.numpy()).resize(
            (size[1], size[0]), Image.Resampling.LANCZOS)) for c in img]
        return torch.from_numpy(np.stack(planes)).clamp_(0, 1)
    mode = F.InterpolationMode(interpolation)
    out = F.resize(img, size, interpolation=mode, antialias=mode != F.InterpolationMode.NEAREST)
    return out.clamp_(0, 1) if interpolation == "bicubic" else out


class ImageLoader(StrictParamsMixin, TransformerMixin, BaseEstimator):
    """Load chest X-rays from paths or arrays into a normalised batch for the classifier.

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
        "unit": keep [0, 1]; "xrv": torchxrayvision's [-1024, 1024] (for
        ``backbone="xrv:..."``, with ``channels=1``); or per-channel sequences
        ``(mean, std)``. :func:`cxr_estimators.backbones.loader_params` gives the ones a
        backbone's weights expect.
    interpolation : {"bilinear", "bicubic", "nearest", "lanczos"}, default="bilinear"
        The resize filter (antialiased when shrinking; bicubic and lanczos results are
        clipped to [0, 1]): EfficientNet's weights were trained on bicubic resizes.
        torchvision's resize; "lanczos" is Pillow's (on float32 images).
    lazy : bool, default=False
        False: ``transform`` returns one array. True: it returns an
        :class:`ImageDataset` that decodes and preprocesses each image when a batch asks
        for it, so memory stays bounded by the batch (``CXRClassifier`` accepts it; use it
        for predicting on many images at high resolution).
    dtype : {"float32", "uint8", "uint16"}, default="float32"
        "float32": normalised float32 images. "uint8" / "uint16": the cropped, resized
        images quantised to 8 or 16 bits, unnormalised, as :class:`CompactImages` that
        carry the normalisation; ``CXRClassifier`` normalises them (and repeats gray to
        three channels) inside its model on its device: a quarter (uint8) or half
        (uint16) of the bytes in memory and on the way to the GPU, a third again for gray
        images with ``channels=3``, which are kept with one channel. "uint16" keeps the
        precision of 16-bit sources (DICOM, 16-bit PNG); "uint8" loses at most half a
        grey level of 255. With ``lazy=True`` the items are uint8/uint16 tensors with
        ``channels`` channels.

    Notes
    -----
    ``fit`` learns nothing (``n_features_in_`` is not defined: inputs are images). Input to
    ``transform`` is a list/array of file paths (decoded by :func:`cxr_estimators.io.read_image`,
    which caches decoded files) or a one-column DataFrame of them, or a uint8/uint16/float
    array ``(n, H, W)``, ``(n, H, W, C)`` or ``(n, C, H, W)``; float arrays must be in
    [0, 1]. A 4-D array is channels-first when its axis 1 is 1 or 3 and its last axis is
    not 1, 3 or 4; when both readings fit (tiny images), it is read as channels-last and
    a warning says so. A colour image whose three channels are equal is treated as gray.
    Output is always an array (or dataset): ``set_output`` accepts only "default".

    Examples
    --------
    >>> import numpy as np
    >>> from cxr_estimators import ImageLoader
    >>> ImageLoader(size=32, channels=1).fit_transform(np.zeros((2, 28, 28), np.uint8)).shape
    (2, 1, 32, 32)
    >>> compact = ImageLoader(size=32, channels=3, dtype="uint8").fit_transform(
    ...     np.zeros((2, 28, 28), np.uint8))
    >>> compact.dtype, compact.shape, compact.channels  # gray: stored once, used as RGB
    (dtype('uint8'), (2, 1, 32, 32), 3)
    """

    _parameter_constraints = {
        "size": [Interval(numbers.Integral, 1, None, closed="left"), tuple, list, None],
        "channels": [Interval(numbers.Integral, 1, 3, closed="both")],
        "center_crop": [Interval(numbers.Real, 0, 1, closed="right"), None],
        "normalize": [StrOptions(set(NORMALIZATION_PRESETS)), tuple, list],
        "interpolation": [StrOptions({"bilinear", "bicubic", "nearest", "lanczos"})],
        "lazy": ["boolean"],
        "dtype": [StrOptions({"float32", "uint8", "uint16"})],
    }

    def __init__(self, size=224, channels=3, center_crop=None, normalize="imagenet",
                 lazy=False, dtype="float32", interpolation="bilinear"):
        self.size = size
        self.channels = channels
        self.center_crop = center_crop
        self.normalize = normalize
        self.lazy = lazy
        self.dtype = dtype
        self.interpolation = interpolation

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
            if any(isinstance(v, (bool, np.bool_)) for v in mean + std):
                raise ValueError(f"normalize (mean, std) must be numbers, not booleans; got "
                                 f"{self.normalize!r}")
            try:
                mean, std = [float(m) for m in mean], [float(s) for s in std]
            except (TypeError, ValueError):
                raise ValueError(f"normalize (mean, std) must be numbers; got "
                                 f"{self.normalize!r}") from None
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

    def _unit_image(self, image, row, size, channels_last=False):
        """Float32 (C, H, W) in [0, 1], converted to ``channels``, cropped and resized;
        C is 1 for a gray source also when ``channels=3`` (repeated by the caller, after
        the resize: the same result for a third of the work)."""
        img = _as_unit_tensor(image, row, channels_last)
        if img.shape[0] == 3 and torch.equal(img[0], img[1]) and torch.equal(img[0], img[2]):
            img = img[:1]  # a gray image stored as RGB
        elif img.shape[0] == 3 and self.channels == 1:
            img = F.rgb_to_grayscale(img)
        if self.center_crop is not None and self.center_crop < 1:
            h, w = img.shape[-2:]
            img = F.center_crop(img, [max(1, round(h * self.center_crop)),
                                      max(1, round(w * self.center_crop))])
        if size is not None and list(img.shape[-2:]) != size:
            img = _resize(img, size, self.interpolation)
        return img

    def _normalized(self, img, mean, std):
        """Float32 output: repeated to ``channels`` and normalised."""
        return F.normalize(img.expand(self.channels, -1, -1).float(), mean, std)

    def _compact(self, img):
        """uint8/uint16 output: quantised, unnormalised, gray kept with one channel."""
        top = _COMPACT_MAX[np.dtype(self.dtype)]
        return np.rint(img.numpy() * top).clip(0, top).astype(self.dtype)

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
        """Return the images ``(n, channels, H, W)``: a float32 array, a
        :class:`CompactImages` (``dtype`` uint8/uint16), or an :class:`ImageDataset` if lazy."""
        self._check_params()  # stateless: transform works without fit, as tagged
        dataset = ImageDataset(self, *self._sources(X))
        if len(dataset) == 0:
            raise ValueError("X is empty: no images to transform")
        if self.lazy:
            return dataset
        return dataset._stack()

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

    Returned by ``ImageLoader(lazy=True).transform``; item ``i`` is a tensor ``(C, H, W)``:
    float32, or uint8/uint16 with ``dtype="uint8"/"uint16"`` (then ``normalization`` is
    the ``(mean, std)`` the model applies, else None). ``shape`` is ``(n, C, H, W)`` (from
    the first image: with ``size=None`` all images must share its size).
    ``np.asarray(dataset)`` materialises everything.
    """

    def __init__(self, loader, items, names, reader):
        self.loader = loader
        self.items = items
        self.names = names
        self.reader = reader
        self._mean_std = loader._mean_std()
        self._size = loader._out_size()
        self.normalization = (None if loader.dtype == "float32" else
                              tuple(tuple(float(v) for v in m) for m in self._mean_std))

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        img = self._image(i)
        if self.normalization is None:
            return torch.from_numpy(img)
        return torch.from_numpy(img).expand(self.loader.channels, -1, -1)

    def _image(self, i):
        """Image ``i`` as stored: normalised float32, or compact with gray kept 1-channel."""
        # items of one 4-D array were made (n, H, W, C) by ImageLoader._sources
        stacked = isinstance(self.items, np.ndarray) and self.items.ndim == 4
        img = self.loader._unit_image(self._read(i), self.names[i], self._size,
                                      channels_last=stacked)
        if self.normalization is None:
            return self.loader._normalized(img, *self._mean_std).numpy()
        return self.loader._compact(img)

    def _stack(self):
        """All images in one preallocated array (float32, or :class:`CompactImages` with
        one channel when every image is gray)."""
        out = None
        for i in range(len(self)):
            img = self._image(i)
            if out is None:  # one array for all: nothing else of this size is kept
                check_memory(len(self) * img.nbytes * (self.loader.channels // img.shape[0]),
                             f"ImageLoader.transform of {len(self)} images of shape "
                             f"{img.shape}", "use ImageLoader(lazy=True), a smaller size=, "
                             "or transform in chunks")
                out = np.empty((len(self), *img.shape), dtype=img.dtype)
            elif img.shape[-2:] != out.shape[-2:]:
                raise ValueError(
                    f"image {self.names[i]} has size {img.shape[-2:]} but image 0 has "
                    f"{out.shape[-2:]}; set size= to resize all images"
                )
            elif img.shape[0] > out.shape[1]:  # a colour image after gray ones
                out = np.repeat(out, img.shape[0], axis=1)
            out[i] = img
        if self.normalization is None:
            return out
        return CompactImages(out, *self.normalization)

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

    def to_float32(self):
        """The same images as normalised float32 items (a new dataset; nothing is decoded
        now)."""
        loader = clone(self.loader).set_params(dtype="float32")
        return ImageDataset(loader, self.items, self.names, self.reader)

    def __array__(self, dtype=None, copy=None):
        arr = np.asarray(self._stack())
        if arr.shape[1] < self.loader.channels:  # as the items: gray repeated
            arr = np.repeat(arr, self.loader.channels, axis=1)
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
