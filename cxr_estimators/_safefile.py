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
  naming the file. :func:`read_metadata` reads the header only.

Only regular files are read or replaced: a directory, a FIFO, a device (``/dev/zero``,
``/dev/null``) or a socket is refused by name before it is opened (:func:`file_size`),
because reading one can block or never end, and ``os.replace`` over one would destroy it.
A file is never read past the size ``stat`` gave.

safetensors itself does the tensor decoding; written here: the atomic write, the header
read (safetensors' Python API does not return the metadata of bytes it loads) and the
errors that say what the file is instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import stat
import tempfile

import numpy as np
import torch

__all__ = ["SafeFileError", "atomic_write", "file_size", "read_metadata", "read_safetensors",
           "tensor_digest", "signing_key", "user_key"]

#: Largest JSON header accepted (safetensors' own limit is 100 MB).
_MAX_HEADER_BYTES = 100_000_000

_UMASK = os.umask(0)
os.umask(_UMASK)

#: What a file that is not a regular one is, by its ``stat`` mode.
_SPECIAL_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                  (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                  (stat.S_ISSOCK, "a socket"))


class SafeFileError(ValueError):
    """A file is not a readable safetensors file, or not a regular file that may be read
    or replaced; the message names the file and why."""


def _refuse_special(mode, name, what, doing):
    """SafeFileError naming what ``name`` is unless ``mode`` is a regular file's."""
    if not stat.S_ISREG(mode):
        kind = next((kind for test, kind in _SPECIAL_KINDS if test(mode)),
                    "of an unknown kind")
        raise SafeFileError(f"{what} {name!r} is {kind}, not a regular file; {doing}")


def file_size(path, *, what="file", doing="refused"):
    """Size in bytes of the regular file ``path`` (symlinks followed), or None if nothing
    is there. Anything else raises :class:`SafeFileError` naming it and ending with
    ``doing`` (why that matters to the caller); other ``OSError`` s propagate."""
    name = os.fspath(path)
    try:
        info = os.stat(name)
    except FileNotFoundError:
        return None
    _refuse_special(info.st_mode, name, what, doing)
    return info.st_size


def atomic_write(path, data, *, what="file"):
    """Write ``data`` (bytes) to ``path`` atomically: all of it, or the old file unchanged.

    Raises the ``OSError`` of the failing step (e.g. ``ENOSPC``: no space left on device)
    with the path and the assurance that the previous file is intact in its message, and
    :class:`SafeFileError` if ``path`` is a directory, a FIFO or a device (``what`` names
    it), which ``os.replace`` would destroy.
    """
    path = os.fspath(path)
    file_size(path, what=what, doing="it is left as it is: write to another path")
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


#: Why a read refuses anything but a regular file.
_NOT_READ = "not read: reading one can block or never end"
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # not on Windows, where FIFOs are not files


@contextlib.contextmanager
def _open_regular(name, what):
    """``(binary file, size)`` of a regular file; a FIFO, a device or a directory is
    refused before it is opened."""
    try:
        size = file_size(name, what=what, doing=_NOT_READ)
        # non-blocking: a FIFO put in its place since the stat must not hang the open
        fd = None if size is None else os.open(name, os.O_RDONLY | _NONBLOCK)
    except OSError as exc:
        raise SafeFileError(f"{what} {name!r} could not be read: {exc}") from None
    if fd is None:
        raise FileNotFoundError(f"{what} {name!r} does not exist")
    with open(fd, "rb") as fh:
        _refuse_special(os.fstat(fd).st_mode, name, what, _NOT_READ)
        yield fh, size


def _header_length(head, size, name, what):
    """The JSON header's length that the first 9 bytes ``head`` of a ``size``-byte file
    declare; a file without the safetensors layout is refused, saying what it looks like."""
    if size == 0:
        raise SafeFileError(f"{what} {name!r} is empty (zero bytes)")
    # A safetensors file is an 8-byte header length, then a JSON header ("{..."). Only a
    # file without that layout is sniffed for what else it is: the length's first byte
    # may well be 0x80, which is also how a pickle starts (and so may a truncated file's).
    kind = None if head[8:9] == b"{" else _what_is_it(head[:8])
    if kind:
        raise SafeFileError(f"{what} {name!r} is not a safetensors file: it looks like {kind}")
    if size < 8:
        raise SafeFileError(f"{what} {name!r} is truncated ({size} bytes)")
    declared = int.from_bytes(head[:8], "little")
    if declared > min(_MAX_HEADER_BYTES, size - 8):
        raise SafeFileError(
            f"{what} {name!r} is truncated or not a safetensors file (header of {declared} "
            f"bytes declared, {size - 8} bytes follow)")
    return declared


def _metadata(header_bytes, name, what):
    """The ``__metadata__`` dict of a JSON header."""
    try:
        metadata = json.loads(header_bytes).get("__metadata__") or {}
    except (ValueError, AttributeError) as exc:  # JSONDecodeError, UnicodeDecodeError
        raise SafeFileError(f"{what} {name!r} is corrupt or not a safetensors file: "
                            f"{type(exc).__name__}: {exc}") from None
    if not isinstance(metadata, dict):
        raise SafeFileError(f"{what} {name!r} has a malformed header")
    return metadata


def read_metadata(path, *, what="file"):
    """The header's ``__metadata__`` dict of a safetensors file, reading the header only
    (not the tensors): a cheap look at what a file is. Errors as :func:`read_safetensors`."""
    name = os.fspath(path)
    with _open_regular(name, what) as (fh, size):
        head = fh.read(9)
        n = _header_length(head, size, name, what)
        return _metadata((head[8:] + fh.read(max(n - 1, 0)))[:n], name, what)


def read_safetensors(path, *, what="file"):
    """Return ``(tensors, metadata)`` of a safetensors file: a dict of CPU tensors and the
    header's ``__metadata__`` dict of strings. ``what`` names the file in errors
    ("model file", "feature cache file")."""
    from safetensors.torch import load as load_tensors

    name = os.fspath(path)
    with _open_regular(name, what) as (fh, size):
        try:
            data = fh.read(size)  # a file growing meanwhile cannot make this read endless
        except OSError as exc:
            raise SafeFileError(f"{what} {name!r} could not be read: {exc}") from None
    n = _header_length(data[:9], len(data), name, what)
    metadata = _metadata(data[8:8 + n], name, what)
    try:
        tensors = load_tensors(data)
    except Exception as exc:  # SafetensorError and whatever else bad bytes raise
        raise SafeFileError(f"{what} {name!r} is corrupt or not a safetensors file: "
                            f"{type(exc).__name__}: {exc}") from None
    return tensors, metadata


def signing_key(key, where="key"):
    """``key`` (bytes, or a str encoded as UTF-8) as the bytes of an HMAC key."""
    if isinstance(key, str):
        key = key.encode()
    if not isinstance(key, (bytes, bytearray)):
        raise TypeError(f"{where} must be bytes or a str; got {type(key).__name__}")
    if not key:
        raise ValueError(f"{where} is empty; an HMAC with an empty key proves nothing")
    return bytes(key)


def user_key(name):
    """A random 32-byte key kept in this user's cache folder (``$XDG_CACHE_HOME`` or
    ``~/.cache``, ``cxr_estimators/<name>.key``, mode 0600), made on first use; None when
    that folder cannot be written."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"),
                                                            ".cache")
    path = os.path.join(root, "cxr_estimators", f"{name}.key")
    try:
        with open(path, "rb") as fh:
            key = fh.read()
        if len(key) == 32:
            return key
    except OSError:
        pass
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path))  # mode 0600
        with os.fdopen(fd, "wb") as fh:
            fh.write(os.urandom(32))
        try:
            os.link(tmp, path)  # atomic, and the first process to get there wins
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
        with open(path, "rb") as fh:
            key = fh.read()
    except OSError:
        return None
    return key if len(key) == 32 else None


def tensor_digest(tensors, *extra, key=None):
    """SHA-256 (hex) of ``extra`` strings and of every tensor's name, dtype, shape and
    bytes, in name order: independent of how the file lays the tensors out. With ``key``
    (bytes), the HMAC-SHA256 of the same content: only a holder of the key can make it."""
    h = hashlib.sha256() if key is None else hmac.new(key, digestmod=hashlib.sha256)
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
