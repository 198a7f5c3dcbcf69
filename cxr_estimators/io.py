"""Decode one image file robustly into a float32 array in [0, 1], with a decode cache.

:func:`read_image` is the only place the package turns bytes on disk into pixels. It
reads PNG, JPEG, TIFF and BMP (recognised by content, never by extension: no other Pillow
plugin is ever used, see :mod:`cxr_estimators._formats`) in every Pillow mode, honours
EXIF orientation, reads DICOM through the optional ``pydicom`` dependency, refuses
decompression bombs and multi-frame files without a chosen frame, and raises
:class:`ImageReadError` naming the file and the reason (for every ``OSError`` too)
instead of a bare traceback from deep inside Pillow.

Decoded images are kept in an in-process LRU cache keyed by :func:`file_key` (path,
inode, size, mtime, ctime and a digest of the file's content) and bounded by the bytes
it holds (1 GiB by default, :func:`set_cache_bytes`), so a cross-validation or grid search that reloads
the same files decodes each file once as long as they fit (see :func:`cache_info`).
Cached arrays are returned read-only so that no caller can corrupt the cache; call
``.copy()`` if you need to write. Each process has its own cache (DataLoader workers
do not share it).

:func:`check_image_file` is the cheap check (the file exists, is a readable non-empty
file, and its header identifies an image of an acceptable size) that the dataset
loaders run on every file without decoding pixels.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import stat
import struct
import threading
import warnings
from contextlib import contextmanager

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ._formats import (ALLOWED_FORMATS, ImageNotFoundError, ImagePermissionError,
                       ImageReadError, describe, dicom_to_unit, pil_to_array,
                       png_significant_bits, sniff)
from ._lru import CacheInfo, _LRUCache

__all__ = [
    "ALLOWED_FORMATS",
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
    "file_key",
]

#: Default decompression-bomb limit for :func:`read_image` (width * height): 40 million
#: pixels (e.g. 6300 x 6300, twice the largest radiograph detectors) keeps one decode of
#: an RGB file under about 1 GB (8-bit data as read plus the float32 result).
DEFAULT_MAX_PIXELS = 40_000_000
#: Default upper bound of the decode cache, in bytes of decoded float32 pixels (1 GiB:
#: about 50 full-resolution 2500 x 2000 radiographs, or 300,000 28 x 28 MedMNIST images).
DEFAULT_CACHE_BYTES = 1 << 30

_DICOM_SUFFIXES = (".dcm", ".dicom")


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


def read_image(path, *, max_pixels=DEFAULT_MAX_PIXELS, frame=None, bits=None):
    """Decode an image file into a read-only float32 array in [0, 1].

    Parameters
    ----------
    path : str, bytes or os.PathLike
        A PNG, JPEG, TIFF or BMP file, or a DICOM file (the ``DICM`` magic at byte 128,
        or a ``.dcm``/``.dicom`` file without preamble; needs ``pydicom``). The format is
        recognised by content, never by extension; any other format is refused before a
        decoder sees it (see :data:`ALLOWED_FORMATS`).
    max_pixels : int or None, default=40_000_000
        Refuse images with ``width * height > max_pixels`` (decompression-bomb guard)
        before decoding any pixels: at the default one decode of an RGB image stays
        under about 1 GB. None disables this check. Pillow's own
        ``PIL.Image.MAX_IMAGE_PIXELS`` guard still applies on top of it (Pillow refuses
        images above twice that value); raise both to read larger images.
    frame : int or None, default=None
        The frame (page) to read from a multi-frame file (multi-page TIFF, animated
        PNG, multi-frame DICOM). None: a multi-frame file is an error, so that a stack
        is never silently reduced to its first image.
    bits : int in [1, 16] or None, default=None
        Significant bits of 16-bit data: values are divided by ``2**bits - 1``. None:
        from the PNG's ``sBIT`` chunk when it has one, else 16 (with a warning when all
        values fit in 12 bits, as 10- and 12-bit detector data stored in 16-bit files
        would otherwise come out nearly black).

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
        Zero-byte, truncated or corrupt file, not an allowed image format, a directory,
        too many pixels, several frames and no ``frame``, or any other ``OSError``
        while reading (a symlink loop, a name too long, an I/O error); always naming
        the file.
    ImportError
        A DICOM file and ``pydicom`` is not installed.

    Notes
    -----
    Scaling per source: 8-bit data / 255; 16-bit data (``I;16*``) / 65535 (the true bit
    range, never / 255) or by ``bits``; mode ``I`` / 65535 when all values lie in
    [0, 65535], else min-max; mode ``F`` unchanged when within [0, 1], else min-max. EXIF
    orientation is applied (a rotated phone photo comes out upright, with height and
    width swapped). Alpha channels (LA, RGBA, PA) are dropped, not composited:
    radiographs carry no meaningful transparency and compositing on black would darken
    the image where alpha is partial. Palette images are expanded; a palette whose
    entries are all gray gives ``(H, W)``. CMYK, YCbCr, LAB, HSV are converted to RGB by
    Pillow. DICOM: pixel data × RescaleSlope + RescaleIntercept, then the first
    WindowCenter/WindowWidth if present (clipped to the window), else min-max;
    MONOCHROME1 is inverted so that bone is bright.

    The decode cache is keyed by the file's path, device, inode, size, modification and
    status-change times and a digest of its content (:func:`file_key`), so a file
    replaced under the same name is decoded again even with the same size and times.

    Examples
    --------
    >>> from cxr_estimators.io import read_image  # doctest: +SKIP
    >>> read_image("chest.png").shape  # doctest: +SKIP
    (1024, 1024)
    """
    name = _path_name(path)
    st = _stat(name)
    key = (file_key(name, st), frame, bits)
    image = _CACHE.get(key)
    if image is None:
        image = _decode(name, st.st_size, max_pixels, frame, bits)
        image.setflags(write=False)
        _CACHE.put(key, image)
    else:
        _check_pixels(name, image.shape[1], image.shape[0], max_pixels)
    return image


def _path_name(path):
    """``path`` as str (bytes paths decoded as the OS does), or a TypeError naming it."""
    try:
        name = os.fspath(path)
    except TypeError:
        raise TypeError(f"an image path must be a str, bytes or os.PathLike; got "
                        f"{type(path).__name__} {path!r:.60}") from None
    return os.fsdecode(name)


def _os_error(name, exc):
    """The package's error for an OSError met while reading ``name``."""
    if isinstance(exc, FileNotFoundError):
        return ImageNotFoundError(f"image file {name!r} does not exist")
    if isinstance(exc, PermissionError):
        return ImagePermissionError(f"image file {name!r}: permission denied ({exc})")
    reason = exc.strerror or str(exc) or type(exc).__name__
    return ImageReadError(f"image file {name!r} could not be read: {reason}"
                          + (f" (errno {exc.errno})" if exc.errno else ""))


def _stat(name):
    try:
        st = os.stat(name)
    except OSError as exc:
        raise _os_error(name, exc) from None
    except ValueError as exc:  # embedded NUL byte
        raise ImageReadError(f"image path {name!r} is not a valid path: {exc}") from None
    if stat.S_ISDIR(st.st_mode):
        raise ImageReadError(f"image path {name!r} is a directory, not an image file")
    if not stat.S_ISREG(st.st_mode):  # a FIFO or device would block or never end
        raise ImageReadError(f"image path {name!r} is not a regular file (a pipe, socket "
                             "or device)")
    return st


_SAMPLE = 64 * 1024
#: Files up to this size are digested in full by :func:`file_key` (a radiograph's PNG or
#: JPEG is a few MiB: reading it costs far less than decoding it again).
FULL_DIGEST_BYTES = 16 * 2**20


def file_key(name, st=None):
    """Identity of a file's current content: (absolute path, device, inode, size,
    mtime_ns, ctime_ns, BLAKE2 digest of the whole file up to
    :data:`FULL_DIGEST_BYTES`, else of its first, middle and last 64 KiB).

    The digest catches a file replaced in place with the same size and times (``cp -p``,
    ``os.utime``, a file system whose timestamps are coarse), not only the times."""
    st = _stat(name) if st is None else st
    h = hashlib.blake2b(digest_size=12)
    try:
        with _open_file(name) as fh:
            if st.st_size <= FULL_DIGEST_BYTES:
                h.update(fh.read(st.st_size))
            else:
                for at in (0, st.st_size // 2, st.st_size - _SAMPLE):
                    fh.seek(at)
                    h.update(fh.read(_SAMPLE))
    except OSError as exc:
        raise _os_error(name, exc) from None
    return (os.path.abspath(name), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns,
            st.st_ctime_ns, h.hexdigest())


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
    """The file open for binary reading; an OSError (opening or reading) becomes the
    package's error naming the file."""
    try:
        with _open_file(name) as fh:
            yield fh
    except ImageReadError:
        raise
    except OSError as exc:
        raise _os_error(name, exc) from None


def _format_of(name, fh):
    """"PNG", "JPEG", "TIFF", "BMP" or "DICOM" from the content; else ImageReadError."""
    head = fh.read(132)
    fh.seek(0)
    kind = sniff(head)
    if kind is None and name.lower().endswith(_DICOM_SUFFIXES):
        kind = "DICOM"  # DICOM without the 128-byte preamble: pydicom checks the content
    if kind is None:
        raise ImageReadError(
            f"file {name!r} is not a recognised image: its content is not one of "
            f"{', '.join(ALLOWED_FORMATS)} ({describe(head)}); other formats are refused "
            "whatever the file is named")
    return kind


def _decode(name, size, max_pixels, frame=None, bits=None):
    _check_not_empty(name, size)
    with _opened(name) as fh:
        kind = _format_of(name, fh)
        if kind == "DICOM":
            return _decode_dicom(name, fh, max_pixels, frame)
        return _decode_pil(name, fh, kind, max_pixels, frame, bits)


def check_image_file(path, *, max_pixels=DEFAULT_MAX_PIXELS):
    """Check that a file is a readable image from its header alone, decoding no pixels.

    Much cheaper than :func:`read_image` (one ``stat`` and a header read), so the dataset
    loaders run it on every file.

    Parameters
    ----------
    path : str, bytes or os.PathLike
    max_pixels : int or None, default=40_000_000
        As in :func:`read_image`, checked against the size the header declares.

    Raises
    ------
    ImageNotFoundError, ImagePermissionError, ImageReadError
        As :func:`read_image` does for a missing path, an unreadable file, a directory, a
        zero-byte file, a file whose content is not an allowed format (e.g. text or
        PostScript named ``.png``), a DICOM header pydicom cannot parse, or a declared
        size above ``max_pixels``. A truncated or corrupt pixel stream passes: only
        decoding (:func:`read_image`) finds it; so does a multi-frame file (read_image
        needs ``frame=`` for it). Without ``pydicom`` a DICOM file's header is not
        checked.
    """
    name = _path_name(path)
    _check_not_empty(name, _stat(name).st_size)
    with _opened(name) as fh:
        kind = _format_of(name, fh)
        if kind != "DICOM":
            with _pil_errors(name, fh), Image.open(fh, formats=[kind]) as im:
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
    except MemoryError:
        raise ImageReadError(f"image {name!r}: not enough memory to decode it") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        if isinstance(exc, ImageReadError):
            raise
        raise ImageReadError(f"image {name!r} is truncated or corrupt: {exc}") from None


def _decode_pil(name, fh, kind, max_pixels, frame, bits):
    with _pil_errors(name, fh), Image.open(fh, formats=[kind]) as im:
        _check_pixels(name, im.width, im.height, max_pixels)
        _seek_frame(name, im, getattr(im, "n_frames", 1), frame, im.seek)
        if bits is None and kind == "PNG" and im.mode.startswith("I;16"):
            bits = png_significant_bits(fh)
        im.load()
        return pil_to_array(ImageOps.exif_transpose(im), name, bits)


def _seek_frame(name, im, n_frames, frame, seek):
    """Refuse a multi-frame file without ``frame``; go to ``frame`` if given."""
    if frame is None:
        if n_frames > 1:
            raise ImageReadError(
                f"image {name!r} has {n_frames} frames (pages); pass frame=k "
                "(0-based) to read_image to choose one")
        return
    if isinstance(frame, bool) or not isinstance(frame, (int, np.integer)) \
            or not 0 <= frame < n_frames:
        raise ImageReadError(f"image {name!r}: frame={frame!r} is not an int in "
                             f"[0, {n_frames - 1}] (the file has {n_frames} frame(s))")
    if n_frames > 1:
        seek(int(frame))


_PIL_LIMIT_LOCK = threading.Lock()


def _header_size(fh):
    """(width, height) from the header alone, for the error message of a refused file."""
    with _PIL_LIMIT_LOCK:
        limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            fh.seek(0)
            with Image.open(fh, formats=list(ALLOWED_FORMATS[:-1])) as im:  # header only
                return im.size
        finally:
            Image.MAX_IMAGE_PIXELS = limit


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


def _decode_dicom(name, fh, max_pixels, frame=None):
    ds = _read_dicom(name, fh, max_pixels)
    try:
        n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        raise ImageReadError(f"DICOM file {name!r}: NumberOfFrames "
                             f"{ds.get('NumberOfFrames')!r} is not a number") from None
    _seek_frame(name, None, n_frames, frame, lambda k: None)
    try:
        arr = ds.pixel_array
    except Exception as exc:  # missing pixel data, unsupported transfer syntax, truncation
        raise ImageReadError(f"DICOM file {name!r}: pixel data not decodable: {exc}") from None
    if n_frames > 1:
        arr = arr[int(frame)]
    try:
        return dicom_to_unit(ds, arr.astype(np.float64))
    except (TypeError, ValueError, IndexError, OverflowError) as exc:
        raise ImageReadError(f"DICOM file {name!r} has an invalid pixel-value tag "
                             f"(SamplesPerPixel, BitsStored, RescaleSlope/Intercept, "
                             f"WindowCenter/Width): {exc}") from None



