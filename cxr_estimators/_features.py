"""Frozen-backbone feature cache.

With a frozen backbone (in eval mode) and no augmentation, the trunk maps each training
image to the same feature vector in every epoch, CV fold and grid point; only the head
learns. So the features are computed once and the head is trained on them. Nothing in
skorch or sklearn shares such work across fits, hence this module.

Keys are (backbone, a digest of the trunk's weights and pooling, a digest of the input); values are float32
feature arrays. ``memory=True`` keeps them in a small in-process LRU; a directory path
stores them with :class:`joblib.Memory`, which survives processes.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict

import numpy as np
import torch

__all__ = ["features_digest", "trunk_digest", "trunk_features", "clear_cache", "cache_info"]

_MAX_ENTRIES = 8
_memory_cache: OrderedDict = OrderedDict()
_stats = {"hits": 0, "misses": 0}


def _digest(X):
    if hasattr(X, "fingerprint"):  # a lazy ImageDataset: paths + mtimes + loader params
        return X.fingerprint()
    h = hashlib.blake2b(digest_size=16)
    h.update(str((X.shape, X.dtype.str)).encode())
    h.update(memoryview(np.ascontiguousarray(X)).cast("B"))
    return h.hexdigest()


def compute_features(trunk_forward, X, device, batch_size, amp=False):
    """Run ``trunk_forward`` over ``X`` in batches without gradients; float32 (n, d).

    ``amp``: on CUDA, run under bf16 autocast with channels_last input, exactly as the
    uncached training forward pass does, so both paths see the same features."""
    out = []
    if isinstance(X, torch.utils.data.Dataset):
        # its own generator: a DataLoader without one draws from torch's global RNG
        batches = torch.utils.data.DataLoader(X, batch_size=batch_size,
                                              generator=torch.Generator())
    else:
        batches = (X[start:start + batch_size] for start in range(0, len(X), batch_size))
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
        for xb in batches:
            xb = torch.as_tensor(xb).to(device)
            if amp and xb.ndim == 4:
                xb = xb.contiguous(memory_format=torch.channels_last)
            out.append(trunk_forward(xb).float().cpu())
    return torch.cat(out).numpy()


def _compute(module, X, device, batch_size, amp=False):
    module = module.to(device)
    was_training = module.training
    module.eval()
    try:
        return compute_features(module.forward_features, X, device, batch_size, amp)
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
    its pooling: the same trunk pooled another way gives other features."""
    return f"{trunk_digest(module.trunk)}/{getattr(module, 'pool', None)!r}"


def trunk_features(module, X, backbone, device, batch_size, memory=True, amp=False,
                   digest=None):
    """Features of ``X`` from ``module``'s (frozen) trunk, cached as described above.

    ``digest``: :func:`features_digest` of ``module`` if already known."""
    key = (backbone, digest or features_digest(module), _digest(X), amp)
    if memory is True:
        if key in _memory_cache:
            _stats["hits"] += 1
            _memory_cache.move_to_end(key)
            return _memory_cache[key]
        _stats["misses"] += 1
        feats = _compute(module, X, device, batch_size, amp)
        feats.setflags(write=False)
        _memory_cache[key] = feats
        while len(_memory_cache) > _MAX_ENTRIES:
            _memory_cache.popitem(last=False)
        return feats
    import joblib

    store = joblib.Memory(os.fspath(memory), verbose=0)

    @store.cache(ignore=["module", "X", "device", "batch_size"])
    def _cached(key, module, X, device, batch_size):
        return _compute(module, X, device, batch_size, amp)

    return _cached(key, module, X, device, batch_size)


def clear_cache():
    """Empty the in-process feature cache and reset its counters."""
    _memory_cache.clear()
    _stats.update(hits=0, misses=0)


def cache_info():
    """``{"hits": int, "misses": int, "entries": int}`` of the in-process cache."""
    return {**_stats, "entries": len(_memory_cache)}
