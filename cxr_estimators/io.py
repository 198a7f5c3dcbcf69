"""Decode one image file robustly into a float32 array in [0, 1], with a decode cache.

:func:`read_image` is the only place the package turns bytes on disk into pixels. It
reads JPEG/PNG (and anything else Pillow opens) in every Pillow mode, honours EXIF
orientation, reads DICOM through the optional ``pydicom`` dependency, refuses
decompression bombs, and raises :class:`ImageReadError` naming the file and the reason
instead of a bare traceback from deep inside Pillow.

Decoded images are kept in an in-process LRU cache keyed by
``(absolute path, mtime_ns, size)`` and bounded by the bytes it holds (1 GiB by
default, :func:`set_cache_bytes`), so a cross-validation or grid search that reloads
the same files decodes each file once as long as they fit (see :func:`cache_info`).
Cached arrays are returned read-only so that no caller can corrupt the cache; call
``.copy()`` if you need to write. Each process has its own cache (DataLoader workers
do not share it).

:func:`check_image_file` is the cheap check (the file exists, is a readable non-empty
file, and its header identifies an image of an acceptable size) that the dataset
loaders run on every file without decoding pixels.
"""

from __future__ import annotations

import importlib.util
import os
import threading
import warnings
from collections import OrderedDict, namedtuple
from contextlib import contextmanager

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "ImageReadError",
    "ImageNotFoundError",
    "ImagePermissionError",
    "CacheInfo",
    "check_image_file",
    "read_image",
    "set_cache_bytes",
    "cache_info",
    "clear_cache",
]

#: Default decompression-bomb limit for :func:`read_image` (width * height).
DEFAULT_MAX_PIXELS = 100_000_000
#: Default upper bound of the decode cache, in bytes of decoded float32 pixels (1 GiB:
#: about 50 full-resolution 2500 x 2000 radiographs, or 300,000 28 x 28 MedMNIST images).
DEFAULT_CACHE_BYTES = 1 << 30

_DICOM_SUFFIXES = (".dcm", ".dicom")
_COLOUR_MODES_TO_RGB = ("CMYK", "YCbCr", "LAB", "HSV", "RGBX", "RGBa")
_UINT16_MODES = ("I;16", "I;16B", "I;16L", "I;16N")


class ImageReadError(ValueError):
    """A file could not be decoded as an image; the message names the file and why."""


class ImageNotFoundError(ImageReadError, FileNotFoundError):
    """The image path does not exist (also a :class:`FileNotFoundError`)."""


class ImagePermissionError(ImageReadError, PermissionError):
    """The image file cannot be read by this user (also a :class:`PermissionError`)."""


CacheInfo = namedtuple("CacheInfo", ["hits", "misses", "max_bytes", "nbytes", "currsize"])


class _LRUCache:
    """Thread-safe mapping bounded by the total ``nbytes`` of its arrays, with counters."""

    def __init__(self, max_bytes):
        self.max_bytes = max_bytes
        self.nbytes = 0
        self.hits = self.misses = 0
        self._data = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key):
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                self.hits += 1
                return self._data[key]
            self.misses += 1
            return None

    def put(self, key, value):
        with self._lock:
            if value.nbytes > self.max_bytes:
                return  # would evict everything else and still not fit
            old = self._data.pop(key, None)
            self.nbytes += value.nbytes - (0 if old is None else old.nbytes)
            self._data[key] = value
            self._evict()

    def _evict(self):
        while self.nbytes > self.max_bytes:
            _, evicted = self._data.popitem(last=False)
            self.nbytes -= evicted.nbytes

    def resize(self, max_bytes):
        with self._lock:
            self.max_bytes = max_bytes
            self._evict()

    def clear(self):
        with self._lock:
            self._data.clear()
            self.nbytes = 0
            self.hits = self.misses = 0

    def info(self):
        with self._lock:
            return CacheInfo(self.hits, self.misses, self.max_bytes, self.nbytes,
                             len(self._data))


_CACHE = _LRUCache(DEFAULT_CACHE_BYTES)


def set_cache_bytes(max_bytes):
    """Bound the memory of :func:`read_image`'s decode cache (0 disables caching).

    Parameters
    ----------
    max_bytes : int
        Largest total size of the cached arrays, in bytes (default
        ``DEFAULT_CACHE_BYTES`` = 1 GiB). A decoded image takes ``H * W * channels * 4``
        bytes (about 20 MB for a 2500 x 2000 radiograph, 3 kB for a 28 x 28 one); least
        recently used images are evicted first, and an image larger than the bound is not
        cached. Size it to hold every file a grid search reads, or each fit decodes again.

    Examples
    --------
    >>> from cxr_estimators.io import DEFAULT_CACHE_BYTES, cache_info, set_cache_bytes
    >>> set_cache_bytes(4 * 2**30)  # 4 GiB
    >>> cache_info().max_bytes
    4294967296
    >>> set_cache_bytes(DEFAULT_CACHE_BYTES)
    """
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, (int, np.integer)) \
            or max_bytes < 0:
        raise ValueError(f"set_cache_bytes: max_bytes must be a non-negative int, "
                         f"got {max_bytes!r}")
    _CACHE.resize(int(max_bytes))


def cache_info():
    """Return ``CacheInfo(hits, misses, max_bytes, nbytes, currsize)`` of the decode cache
    (``nbytes``: bytes held now; ``currsize``: images held now)."""
    return _CACHE.info()


def clear_cache():
    """Empty the decode cache and reset its hit/miss counters."""
    _CACHE.clear()


def read_image(path, *, max_pixels=DEFAULT_MAX_PIXELS):
    """Decode an image file into a read-only float32 array in [0, 1].

    Parameters
    ----------
    path : str or os.PathLike
        A JPEG, PNG (or any format Pillow reads), or a DICOM file (``.dcm``/``.dicom``
        suffix or the ``DICM`` magic at byte 128; needs ``pydicom``).
    max_pixels : int or None, default=100_000_000
        Refuse images with ``width * height > max_pixels`` (decompression-bomb guard)
        before decoding any pixels. None disables this check. Pillow's own
        ``PIL.Image.MAX_IMAGE_PIXELS`` guard still applies on top of it (Pillow refuses
        images above twice that value); raise both to read larger images.

    Returns
    -------
    image : ndarray of float32, shape (H, W) or (H, W, 3)
        ``(H, W)`` for grayscale sources (modes 1, L, LA, I, I;16*, F, grayscale
        palettes, monochrome DICOM), ``(H, W, 3)`` for colour ones. The array is
        read-only because it is shared with the cache.

    Raises
    ------
    ImageNotFoundError
        The path does not exist (a :class:`FileNotFoundError`).
    ImagePermissionError
        The file is not readable (a :class:`PermissionError`).
    ImageReadError
        Zero-byte, truncated or corrupt file, not an image, a directory, too many pixels.
    ImportError
        A DICOM file and ``pydicom`` is not installed.

    Notes
    -----
    Scaling per source: 8-bit data / 255; 16-bit data (``I;16*``) / 65535 (the true bit
    range, never / 255); mode ``I`` / 65535 when all values lie in [0, 65535], else
    min-max; mode ``F`` unchanged when within [0, 1], else min-max. EXIF orientation is
    applied (a rotated phone photo comes out upright, with height and width swapped).
    Alpha channels (LA, RGBA, PA) are dropped, not composited: radiographs carry no
    meaningful transparency and compositing on black would darken the image where alpha
    is partial. Palette images are expanded; a palette whose entries are all gray gives
    ``(H, W)``. CMYK, YCbCr, LAB, HSV are converted to RGB by Pillow. DICOM: pixel data ×
    RescaleSlope + RescaleIntercept, then the first WindowCenter/WindowWidth if present
    (clipped to the window), else min-max; MONOCHROME1 is inverted so that bone is bright.

    Examples
    --------
    >>> from cxr_estimators.io import read_image  # doctest: +SKIP
    >>> read_image("chest.png").shape  # doctest: +SKIP
    (1024, 1024)
    """
    name = os.fspath(path)
    st = _stat(name)
    key = (os.path.abspath(name), st.st_mtime_ns, st.st_size)
    image = _CACHE.get(key)
    if image is None:
        image = _decode(name, st.st_size, max_pixels)
        image.setflags(write=False)
        _CACHE.put(key, image)
    else:
        _check_pixels(name, image.shape[1], image.shape[0], max_pixels)
    return image


def _stat(name):
    try:
        st = os.stat(name)
    except FileNotFoundError:
        raise ImageNotFoundError(f"image file {name!r} does not exist") from None
    except PermissionError as exc:
        raise ImagePermissionError(f"image file {name!r}: permission denied ({exc})") from None
    if os.path.isdir(name):
        raise ImageReadError(f"image path {name!r} is a directory, not an image file")
    return st


def _open_file(name):
    """Open for binary reading (a seam the tests use to simulate permission errors)."""
    return open(name, "rb")


def _check_pixels(name, width, height, max_pixels):
    if max_pixels is not None and width * height > max_pixels:
        raise ImageReadError(
            f"image {name!r} is {width}x{height} = {width * height} pixels, above "
            f"max_pixels={max_pixels} (possible decompression bomb); pass a larger "
            "max_pixels to read it"
        )


def _check_not_empty(name, size):
    if size == 0:
        raise ImageReadError(f"image file {name!r} is empty (zero bytes)")


@contextmanager
def _opened(name):
    """The file open for binary reading; a PermissionError becomes ImagePermissionError."""
    try:
        with _open_file(name) as fh:
            yield fh
    except PermissionError as exc:
        raise ImagePermissionError(f"image file {name!r}: permission denied ({exc})") from None


def _is_dicom(name, fh):
    head = fh.read(132)
    fh.seek(0)
    return name.lower().endswith(_DICOM_SUFFIXES) or head[128:132] == b"DICM"


def _decode(name, size, max_pixels):
    _check_not_empty(name, size)
    with _opened(name) as fh:
        if _is_dicom(name, fh):
            return _decode_dicom(name, fh, max_pixels)
        return _decode_pil(name, fh, max_pixels)


def check_image_file(path, *, max_pixels=DEFAULT_MAX_PIXELS):
    """Check that a file is a readable image from its header alone, decoding no pixels.

    Much cheaper than :func:`read_image` (one ``stat`` and a header read), so the dataset
    loaders run it on every file.

    Parameters
    ----------
    path : str or os.PathLike
    max_pixels : int or None, default=100_000_000
        As in :func:`read_image`, checked against the size the header declares.

    Raises
    ------
    ImageNotFoundError, ImagePermissionError, ImageReadError
        As :func:`read_image` does for a missing path, an unreadable file, a directory, a
        zero-byte file, a file Pillow cannot identify (e.g. text named ``.png``), a DICOM
        header pydicom cannot parse, or a declared size above ``max_pixels``. A truncated
        or corrupt pixel stream passes: only decoding (:func:`read_image`) finds it.
        Without ``pydicom`` a DICOM file's header is not checked.
    """
    name = os.fspath(path)
    _check_not_empty(name, _stat(name).st_size)
    with _opened(name) as fh:
        if not _is_dicom(name, fh):
            with _pil_errors(name, fh), Image.open(fh) as im:
                _check_pixels(name, im.width, im.height, max_pixels)
        elif importlib.util.find_spec("pydicom") is not None:
            _read_dicom(name, fh, max_pixels, stop_before_pixels=True)


@contextmanager
def _pil_errors(name, fh):
    """Turn what Pillow raises for a bad file into ImageReadError naming the file."""
    try:
        with warnings.catch_warnings():
            # max_pixels is our guard; Pillow's warning below its hard limit is noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    except Image.DecompressionBombError as exc:
        width, height = _header_size(fh)
        raise ImageReadError(
            f"image {name!r} is {width}x{height} = {width * height} pixels, refused by "
            f"Pillow's decompression-bomb guard (PIL.Image.MAX_IMAGE_PIXELS): {exc}"
        ) from None
    except UnidentifiedImageError:
        raise ImageReadError(
            f"file {name!r} is not a recognised image (Pillow cannot identify its format)"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        if isinstance(exc, ImageReadError):
            raise
        raise ImageReadError(f"image {name!r} is truncated or corrupt: {exc}") from None


def _decode_pil(name, fh, max_pixels):
    with _pil_errors(name, fh), Image.open(fh) as im:
        _check_pixels(name, im.width, im.height, max_pixels)
        im.load()
        return _pil_to_array(ImageOps.exif_transpose(im))


_PIL_LIMIT_LOCK = threading.Lock()


def _header_size(fh):
    """(width, height) from the header alone, for the error message of a refused file."""
    with _PIL_LIMIT_LOCK:
        limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            fh.seek(0)
            with Image.open(fh) as im:  # header only: no pixel data is decoded
                return im.size
        finally:
            Image.MAX_IMAGE_PIXELS = limit


def _pil_to_array(im):
    mode = im.mode
    if mode in ("P", "PA"):
        im = im.convert("RGBA" if "transparency" in im.info or mode == "PA" else "RGB")
        rgb = np.asarray(im)[..., :3]
        if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
            return rgb[..., 0].astype(np.float32) / 255.0
        return rgb.astype(np.float32) / 255.0
    if mode == "1":
        return np.asarray(im, dtype=np.float32)  # bool pixels → 0.0 / 1.0
    if mode in ("L", "LA", "La"):
        return np.asarray(im.getchannel(0), dtype=np.float32) / 255.0
    if mode in ("RGB", "RGBA"):
        return np.asarray(im, dtype=np.float32)[..., :3] / 255.0
    if mode in _COLOUR_MODES_TO_RGB:
        return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    if mode in _UINT16_MODES:
        return np.asarray(im).astype(np.float32) / 65535.0
    if mode == "I":
        arr = np.asarray(im).astype(np.float64)
        if arr.min() >= 0 and arr.max() <= 65535:
            return (arr / 65535.0).astype(np.float32)
        return _min_max(arr)
    if mode == "F":
        arr = np.asarray(im, dtype=np.float32)
        if not np.isfinite(arr).all():
            raise ValueError("mode F image contains NaN or inf")
        return arr.copy() if arr.min() >= 0 and arr.max() <= 1 else _min_max(arr)
    return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0


def _min_max(arr):
    arr = np.asarray(arr, dtype=np.float64)
    lo, hi = arr.min(), arr.max()
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.float32)
    return ((arr - lo) / (hi - lo)).astype(np.float32)


def _read_dicom(name, fh, max_pixels, *, stop_before_pixels=False):
    """The parsed DICOM dataset, after checking its declared size against max_pixels."""
    try:
        import pydicom
    except ImportError:
        raise ImportError(
            f"reading DICOM file {name!r} needs pydicom: pip install 'cxr_estimators[dicom]'"
        ) from None
    try:
        ds = pydicom.dcmread(fh, stop_before_pixels=stop_before_pixels)
        rows, cols = int(ds.Rows), int(ds.Columns)
    except Exception as exc:  # pydicom raises many types for bad headers
        raise ImageReadError(f"DICOM file {name!r} could not be parsed: {exc}") from None
    _check_pixels(name, cols, rows, max_pixels)
    return ds


def _decode_dicom(name, fh, max_pixels):
    ds = _read_dicom(name, fh, max_pixels)
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise ImageReadError(
            f"DICOM file {name!r} has {ds.NumberOfFrames} frames; only single-frame "
            "radiographs are supported"
        )
    try:
        arr = ds.pixel_array.astype(np.float64)
    except Exception as exc:  # missing pixel data, unsupported transfer syntax, truncation
        raise ImageReadError(f"DICOM file {name!r}: pixel data not decodable: {exc}") from None
    if int(ds.get("SamplesPerPixel", 1)) == 3:
        bits = int(ds.get("BitsStored", 8))
        return np.clip(arr / (2**bits - 1), 0, 1).astype(np.float32)
    arr = arr * float(ds.get("RescaleSlope", 1) or 1) + float(ds.get("RescaleIntercept", 0) or 0)
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is not None and width is not None:
        center, width = _first(center), _first(width)
        if width > 0:
            lo = center - width / 2
            arr = np.clip((arr - lo) / width, 0, 1).astype(np.float32)
        else:
            arr = _min_max(arr)
    else:
        arr = _min_max(arr)
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        arr = 1.0 - arr
    return arr.astype(np.float32)


def _first(value):
    try:
        return float(value[0])
    except (TypeError, IndexError):
        return float(value)
