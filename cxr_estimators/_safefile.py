"""Files that cannot run code when read, written so that a crash never destroys the old one.

Used by :mod:`cxr_estimators.persistence` (model files) and
:mod:`cxr_estimators._features` (the on-disk feature cache). Two pieces:

* :func:`atomic_write`: write to a temporary file in the target's directory, ``fsync``
  it, then ``os.replace`` it over the target (and ``fsync`` the directory). A failure at
  any point (disk full, an exception, a kill) leaves the previous file as it was; the
  temporary file is removed.
* :func:`read_safetensors`: parse a `safetensors <https://github.com/huggingface/safetensors>`_
  file — an 8-byte header length, a JSON header, raw tensor bytes — into its tensors and
  its string metadata. Nothing in the format can execute code. Each way a file can be
  wrong (missing, empty, truncated, a pickle, garbage) gives :class:`SafeFileError`
  naming the file.

safetensors itself does the tensor decoding; written here: the atomic write, the header
read (safetensors' Python API does not return the metadata of bytes it loads) and the
errors that say what the file is instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile

import numpy as np
import torch

__all__ = ["SafeFileError", "atomic_write", "read_safetensors", "tensor_digest"]

#: Largest JSON header accepted (safetensors' own limit is 100 MB).
_MAX_HEADER_BYTES = 100_000_000

_UMASK = os.umask(0)
os.umask(_UMASK)


class SafeFileError(ValueError):
    """A file is not a readable safetensors file; the message names the file and why."""


def atomic_write(path, data):
    """Write ``data`` (bytes) to ``path`` atomically: all of it, or the old file unchanged.

    Raises the ``OSError`` of the failing step (e.g. ``ENOSPC``: no space left on device)
    with the path and the assurance that the previous file is intact in its message.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"cannot write {path!r}: directory {directory!r} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp",
                               dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError):
            raise type(exc)(exc.errno, f"writing {path!r} failed ({exc.strerror or exc}); "
                                       "the previous file, if any, is unchanged") from exc
        raise
    _fsync_directory(directory)


def _fsync_directory(directory):
    """Make the rename durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _what_is_it(head):
    """A guess at what a non-safetensors file is, from its first bytes."""
    if head[:1] == b"\x80" or head[:2] in (b"(d", b"(l", b"}q"):
        return ("a Python pickle (joblib.dump / pickle.dump); it is refused because "
                "unpickling runs whatever code the file holds")
    if head[:2] == b"PK":
        return "a zip archive (e.g. torch.save output)"
    if head[:6] == b"\x93NUMPY":
        return "a NumPy .npy file"
    return None


def read_safetensors(path, *, what="file"):
    """Return ``(tensors, metadata)`` of a safetensors file: a dict of CPU tensors and the
    header's ``__metadata__`` dict of strings. ``what`` names the file in errors
    ("model file", "feature cache file")."""
    from safetensors.torch import load as load_tensors

    name = os.fspath(path)
    try:
        with open(name, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {name!r} does not exist") from None
    except IsADirectoryError:
        raise SafeFileError(f"{what} {name!r} is a directory") from None
    except OSError as exc:
        raise SafeFileError(f"{what} {name!r} could not be read: {exc}") from None
    if not data:
        raise SafeFileError(f"{what} {name!r} is empty (zero bytes)")
    # A safetensors file is an 8-byte header length, then a JSON header ("{..."). Only a
    # file without that layout is sniffed for what else it is: the length's first byte
    # may well be 0x80, which is also how a pickle starts.
    declared = int.from_bytes(data[:8], "little") if len(data) >= 8 else None
    laid_out = (declared is not None and data[8:9] == b"{"
                and declared <= min(_MAX_HEADER_BYTES, len(data) - 8))
    kind = None if laid_out else _what_is_it(data[:8])
    if kind:
        raise SafeFileError(f"{what} {name!r} is not a safetensors file: it looks like {kind}")
    if len(data) < 8:
        raise SafeFileError(f"{what} {name!r} is truncated ({len(data)} bytes)")
    n = int.from_bytes(data[:8], "little")
    if n > min(_MAX_HEADER_BYTES, len(data) - 8):
        raise SafeFileError(
            f"{what} {name!r} is truncated or not a safetensors file (header of {n} bytes "
            f"declared, {len(data) - 8} bytes follow)")
    try:
        header = json.loads(data[8:8 + n])
        metadata = header.get("__metadata__") or {}
        tensors = load_tensors(data)
    except Exception as exc:  # json.JSONDecodeError, SafetensorError, AttributeError
        raise SafeFileError(f"{what} {name!r} is corrupt or not a safetensors file: "
                            f"{type(exc).__name__}: {exc}") from None
    if not isinstance(metadata, dict):
        raise SafeFileError(f"{what} {name!r} has a malformed header")
    return tensors, metadata


def tensor_digest(tensors, *extra):
    """SHA-256 (hex) of ``extra`` strings and of every tensor's name, dtype, shape and
    bytes, in name order: independent of how the file lays the tensors out."""
    h = hashlib.sha256()
    for text in extra:
        h.update(text.encode())
        h.update(b"\0")
    for name in sorted(tensors):
        t = tensors[name]
        if isinstance(t, np.ndarray):
            t = torch.from_numpy(np.ascontiguousarray(t))
        t = t.detach().cpu().reshape(-1).contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(tensors[name].shape)}|".encode())
        h.update(memoryview(t.view(torch.uint8).numpy()).cast("B"))
    return h.hexdigest()
