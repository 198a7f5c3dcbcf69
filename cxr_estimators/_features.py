"""Frozen-backbone feature cache.

With a frozen backbone (in eval mode) and no augmentation, the trunk maps each training
image to the same feature vector in every epoch, CV fold and grid point; only the head
learns. So the features are computed once and the head is trained on them. Nothing in
skorch or sklearn shares such work across fits, hence this module.

Keys are (backbone, a digest of the trunk's weights and pooling, a digest of the input); values are float32
feature arrays. ``memory=True`` keeps them in a small in-process LRU; a directory path
stores each as a safetensors file (``features-<key hash>.safetensors``) that survives
processes. Those files hold raw float32 bytes, the full key, a SHA-256 of key and array
and an HMAC-SHA256 of both under a random key kept in this user's cache folder
(``~/.cache/cxr_estimators/feature-cache.key``, mode 0600, made on first use): reading
one never unpickles (a file replaced by a pickle payload cannot run code), and a file
whose key, digest or HMAC does not match (bit rot; an edit, even one that recomputed the
SHA-256; a file written by another user or machine), or whose row count differs from
the images', is recomputed and rewritten, with a warning. Someone who can read your
cache key can still forge a file; where the user cache folder cannot be written there is
no key, and the SHA-256 detects accidents only. Writes are atomic.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import warnings
from collections import OrderedDict

import numpy as np
import torch

from . import _feed, _runtime
from ._safefile import (
    SafeFileError, atomic_write, read_safetensors, tensor_digest, user_key,
)

__all__ = ["features_digest", "trunk_digest", "trunk_features", "clear_cache", "cache_info"]

_MAX_ENTRIES = 8
_memory_cache: OrderedDict = OrderedDict()
_stats = {"hits": 0, "misses": 0}


def _digest(X):
    if hasattr(X, "fingerprint"):  # a lazy ImageDataset: paths + mtimes + loader params
        return X.fingerprint()
    h = hashlib.blake2b(digest_size=16)
    # compact images: the normalisation the model applies is part of what they mean
    h.update(str((X.shape, X.dtype.str, getattr(X, "normalization", None))).encode())
    h.update(memoryview(np.ascontiguousarray(X)).cast("B"))
    return h.hexdigest()


def compute_features(trunk_forward, X, device, batch_size, runtime=None):
    """Run ``trunk_forward`` over ``X`` in batches under ``inference_mode``; float32 (n, d)
    written into one array allocated after the first batch.

    ``runtime`` (:class:`cxr_estimators._runtime.Runtime`): the layout and bf16 autocast
    of the uncached training forward pass, so both paths see the same features."""
    runtime = runtime or _runtime.Runtime(device)
    if isinstance(X, torch.utils.data.Dataset):
        # its own generator: a DataLoader without one draws from torch's global RNG
        batches = torch.utils.data.DataLoader(X, batch_size=batch_size,
                                              generator=torch.Generator())
    else:  # in memory: gathered batches (views of X on CPU), pinned and prefetched on CUDA
        batches = _feed.device_batches(X, batch_size, device)
    out, start = None, 0
    with torch.inference_mode(), runtime.autocast():
        for xb in batches:
            feats = trunk_forward(runtime.layout(torch.as_tensor(xb).to(device))).float()
            if out is None:
                out = torch.empty((len(X), *feats.shape[1:]), dtype=torch.float32)
            out[start:start + len(feats)].copy_(feats)
            start += len(feats)
    return out.numpy()


def _compute(module, X, device, batch_size, runtime=None):
    module = module.to(device)
    was_training = module.training
    module.eval()
    try:
        return compute_features(module.forward_features, X, device, batch_size, runtime)
    finally:
        module.train(was_training)


def trunk_digest(module):
    """Digest of a module's parameters and buffers: two trunks with the same weights (the
    same checkpoint, or the same seed for a random init) share cached features.

    Hashing a large trunk takes tens of milliseconds, so a caller whose trunk stays frozen
    computes this once and passes it to :func:`trunk_features`."""
    h = hashlib.blake2b(digest_size=16)
    for name, tensor in module.state_dict().items():
        t = tensor.detach().cpu().reshape(-1).contiguous()  # 0-d buffers → 1-d
        h.update(name.encode())
        h.update(memoryview(t.view(torch.uint8).numpy()).cast("B"))
    return h.hexdigest()


def features_digest(module):
    """:func:`trunk_digest` of a :class:`~cxr_estimators.backbones.CXRNet`'s trunk plus
    its pooling and what the trunk outputs (its ``extra_repr``, e.g. torchxrayvision's
    features or pathology logits): the same weights used another way give other features."""
    return (f"{trunk_digest(module.trunk)}/{getattr(module, 'pool', None)!r}/"
            f"{module.trunk.extra_repr()}")


def check_cache(cache):
    """``cache``: None/False/True, or a folder path (made at the first store); a
    ValueError names an empty path or one that is a file, before training."""
    if cache is None or isinstance(cache, bool):
        return
    path = os.fspath(cache)
    if not path:
        raise ValueError("cache='' is not a folder path; give a folder, True (in memory) "
                         "or None")
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"cache={path!r} exists and is not a folder")


def trunk_features(module, X, backbone, device, batch_size, memory=True, runtime=None,
                   digest=None):
    """Features of ``X`` from ``module``'s (frozen) trunk, cached as described above.

    ``runtime``: see :func:`compute_features`. ``digest``: :func:`features_digest` of
    ``module`` if already known."""
    runtime = runtime or _runtime.Runtime(device)
    key = (backbone, digest or features_digest(module), _digest(X), runtime.amp,
           runtime.channels_last)
    if memory is True:
        if key in _memory_cache:
            _stats["hits"] += 1
            _memory_cache.move_to_end(key)
            return _memory_cache[key]
        _stats["misses"] += 1
        feats = _compute(module, X, device, batch_size, runtime)
        feats.setflags(write=False)
        _memory_cache[key] = feats
        while len(_memory_cache) > _MAX_ENTRIES:
            _memory_cache.popitem(last=False)
        return feats
    return _disk_cached(os.fspath(memory), repr(key),
                        lambda: _compute(module, X, device, batch_size, runtime), len(X))


def _disk_cached(directory, key, compute, n_rows):
    """The array stored under ``key`` in ``directory``, else ``compute()``, stored. A
    stored array is used only if its HMAC (under this user's key, see the module
    docstring) matches and it has ``n_rows`` finite rows."""
    from safetensors.torch import save as save_tensors

    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "features-"
                        + hashlib.sha256(key.encode()).hexdigest()[:32] + ".safetensors")
    secret = user_key("feature-cache")
    if os.path.exists(path):
        try:
            tensors, meta = read_safetensors(path, what="feature cache file")
            feats = tensors["features"].numpy()
            reason = _invalid_features(feats, meta, key, tensors, secret, n_rows)
            if reason is None:
                _stats["hits"] += 1
                feats.setflags(write=False)
                return feats
        except (SafeFileError, KeyError) as exc:
            reason = str(exc)
        warnings.warn(f"feature cache file {path!r} is not valid ({reason}); "
                      "recomputing it", UserWarning, stacklevel=4)
    _stats["misses"] += 1
    feats = np.ascontiguousarray(compute(), dtype=np.float32)
    tensors = {"features": torch.from_numpy(feats)}
    atomic_write(path, save_tensors(tensors, metadata={
        "key": key, "sha256": tensor_digest(tensors, key),
        "hmac": "" if secret is None else tensor_digest(tensors, key, key=secret)}))
    return feats


def _invalid_features(feats, meta, key, tensors, secret, n_rows):
    """Why a stored feature array may not be used, or None."""
    if meta.get("key") != key or meta.get("sha256") != tensor_digest(tensors, key):
        return "its key or digest does not match its content"
    if secret is not None and not hmac.compare_digest(
            str(meta.get("hmac", "")), tensor_digest(tensors, key, key=secret)):
        return ("its HMAC does not match this user's cache key: written by another user, "
                "or forged")
    if feats.ndim != 2 or len(feats) != n_rows:
        return f"it holds features of shape {feats.shape} for {n_rows} images"
    if not np.isfinite(feats).all():
        return "it holds NaN or inf"
    return None


def clear_cache():
    """Empty the in-process feature cache and reset its counters."""
    _memory_cache.clear()
    _stats.update(hits=0, misses=0)


def cache_info():
    """``{"hits": int, "misses": int, "entries": int}`` of the in-process cache."""
    return {**_stats, "entries": len(_memory_cache)}
