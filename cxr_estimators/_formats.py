"""What an image file is and how its samples map to [0, 1], for :mod:`cxr_estimators.io`.

Only PNG, JPEG, TIFF, BMP and DICOM are decoded; the format is recognised by the file's
magic bytes, never by its extension, so a PostScript or SVG file named ``x.png`` never
reaches a Pillow plugin (Pillow's EPS plugin runs Ghostscript). Pillow is then told to
use that one plugin (``Image.open(formats=[...])``). Also here: the PNG ``sBIT`` chunk
(how many bits of 16-bit samples are significant), which Pillow does not expose; the
scaling of each Pillow mode and of DICOM values to float32 in [0, 1]; and the errors.
"""

from __future__ import annotations

import math
import struct
import warnings

import numpy as np

class ImageReadError(ValueError):
    """A file could not be decoded as an image; the message names the file and why."""


class ImageNotFoundError(ImageReadError, FileNotFoundError):
    """The image path does not exist (also a :class:`FileNotFoundError`)."""


class ImagePermissionError(ImageReadError, PermissionError):
    """The image file cannot be read by this user (also a :class:`PermissionError`)."""



for _cls in (ImageReadError, ImageNotFoundError, ImagePermissionError):
    _cls.__module__ = "cxr_estimators.io"  # where users import them from

_COLOUR_MODES_TO_RGB = ("CMYK", "YCbCr", "LAB", "HSV", "RGBX", "RGBa")
_UINT16_MODES = ("I;16", "I;16B", "I;16L", "I;16N")

#: Formats :func:`cxr_estimators.io.read_image` decodes (Pillow plugin names + DICOM).
ALLOWED_FORMATS = ("PNG", "JPEG", "TIFF", "BMP", "DICOM")

_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"II+\x00", "TIFF"),  # BigTIFF
    (b"MM\x00+", "TIFF"),
    (b"BM", "BMP"),
)

#: Signatures of formats people have sent us under image names, for the error message.
_KNOWN_OTHERS = (
    (b"%!PS", "PostScript/EPS"), (b"\xc5\xd0\xd3\xc6", "EPS"), (b"GIF8", "GIF"),
    (b"RIFF", "RIFF (WebP?)"), (b"<?xml", "XML/SVG"), (b"<svg", "SVG"), (b"%PDF", "PDF"),
    (b"PK\x03\x04", "zip"), (b"\x80", "Python pickle"), (b"\x00\x00\x00\x0cjP", "JPEG 2000"),
    (b"\xffO\xffQ", "JPEG 2000 codestream"), (b"\x1f\x8b", "gzip"),
)


def sniff(head):
    """The allowed format of a file starting with ``head`` (its first 132 bytes), or None."""
    if head[128:132] == b"DICM":
        return "DICOM"
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    return None


def describe(head):
    """What a refused file looks like, for the error message."""
    for magic, name in _KNOWN_OTHERS:
        if head.startswith(magic):
            return f"it looks like {name}"
    return f"it starts with {head[:8]!r}"


def png_significant_bits(fh):
    """The gray/first-channel significant bits from a PNG's ``sBIT`` chunk, or None.

    Reads chunk headers up to the first ``IDAT`` (no pixel data); ``fh`` is left at 0."""
    try:
        fh.seek(8)
        while True:
            header = fh.read(8)
            if len(header) < 8:
                return None
            length, kind = struct.unpack(">I4s", header)
            if kind == b"sBIT":
                data = fh.read(length)
                return data[0] if data else None
            if kind in (b"IDAT", b"IEND") or length > 1 << 24:
                return None
            fh.seek(length + 4, 1)  # data + CRC
    finally:
        fh.seek(0)


# ------------------------------------------------------------ samples → [0, 1]
def _scaled(im, dtype=np.float32):
    """Pixels of an 8-bit image as float32 / 255, divided in place (one float copy)."""
    arr = np.asarray(im, dtype=dtype)
    arr /= 255.0
    return arr


def pil_to_array(im, name="image", bits=None):
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
        return _scaled(im.getchannel(0))
    if mode == "RGB":
        return _scaled(im)
    if mode == "RGBA":
        return _scaled(im.convert("RGB"))
    if mode in _COLOUR_MODES_TO_RGB:
        return _scaled(im.convert("RGB"))
    if mode in _UINT16_MODES:
        return _scale_16bit(np.asarray(im), name, bits)
    if mode == "I":
        arr = np.asarray(im).astype(np.float64)
        if arr.min() >= 0 and arr.max() <= 65535:
            return (arr / 65535.0).astype(np.float32)
        return min_max(arr)
    if mode == "F":
        arr = np.asarray(im, dtype=np.float32)
        if not np.isfinite(arr).all():
            raise ValueError("mode F image contains NaN or inf")
        return arr.copy() if arr.min() >= 0 and arr.max() <= 1 else min_max(arr)
    return _scaled(im.convert("RGB"))


def _scale_16bit(raw, name, bits):
    """16-bit samples / (2**bits - 1); warn when 16 bits are assumed for 12-bit data."""
    if bits is None:
        if raw.size and 0 < raw.max() < 4096:
            warnings.warn(
                f"image {name!r} is 16-bit but all its values are below 4096 (max "
                f"{int(raw.max())}): scaled by 65535 it comes out nearly black. If it "
                "holds 10- or 12-bit data, read it with read_image(path, bits=12) (or "
                "store an sBIT chunk in the PNG)", UserWarning, stacklevel=5)
        bits = 16
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) \
            or not 1 <= bits <= 16:
        raise ImageReadError(f"image {name!r}: bits={bits!r} is not an int in [1, 16]")
    if raw.max(initial=0) > 2**bits - 1:
        raise ImageReadError(f"image {name!r} has values up to {int(raw.max())}, more than "
                             f"{bits} significant bits hold")
    arr = raw.astype(np.float32)
    arr /= float(2**bits - 1)
    return arr


def min_max(arr):
    arr = np.asarray(arr, dtype=np.float64)
    lo, hi = arr.min(), arr.max()
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.float32)
    return ((arr - lo) / (hi - lo)).astype(np.float32)


def dicom_to_unit(ds, arr):
    if int(ds.get("SamplesPerPixel", 1)) == 3:
        bits = int(ds.get("BitsStored", 8))
        return np.clip(arr / (2**bits - 1), 0, 1).astype(np.float32)
    slope = ds.get("RescaleSlope")
    slope = 1.0 if slope is None or str(slope).strip() == "" else float(slope)
    if not (math.isfinite(slope) and slope != 0):  # 0 would make every pixel one value
        raise ValueError(f"RescaleSlope is {slope!r}: it must be a finite, non-zero number")
    arr = arr * slope + float(ds.get("RescaleIntercept", 0) or 0)
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is not None and width is not None:
        center, width = _first(center), _first(width)
        if width > 0:
            lo = center - width / 2
            arr = np.clip((arr - lo) / width, 0, 1).astype(np.float32)
        else:
            arr = min_max(arr)
    else:
        arr = min_max(arr)
    if not np.isfinite(arr).all():
        raise ValueError("non-finite pixel values after rescaling")
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        arr = 1.0 - arr
    return arr.astype(np.float32)


def _first(value):
    try:
        return float(value[0])
    except (TypeError, IndexError):
        return float(value)
