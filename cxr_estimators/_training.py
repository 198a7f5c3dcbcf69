"""skorch and torch plumbing of :class:`~cxr_estimators.CXRClassifier`.

The skorch net with the CUDA bf16-autocast / channels_last forward pass (skorch's own AMP
needs ``accelerate``), per-image loss weights (``sample_weight``), device resolution, the
grouped validation split, the dataset wrapper that pairs lazily decoded images with
labels, the per-fit random streams, and what is dropped from a fitted net before
pickling. Written here because skorch does none of these as we need.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import re
import threading

import numpy as np
import torch
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.utils import check_random_state
from skorch import NeuralNetClassifier
from skorch.utils import to_tensor

from . import distributed


class _Net(NeuralNetClassifier):
    """skorch net whose forward pass may run under bf16 autocast with channels_last input.

    Also: training forward passes draw from the fit's own random stream
    (:class:`_FitRandomness`, attribute ``fit_rng_``), a batch given as
    ``{"X": images, "sample_weight": w}`` weights each image's loss, and under torch DDP
    (:mod:`cxr_estimators.distributed`) training batches go through the DDP wrapper and a
    ``DistributedSampler``."""

    def __init__(self, *args, amp=False, channels_last=False, **kwargs):
        super().__init__(*args, **kwargs)
        self.amp = amp
        self.channels_last = channels_last

    def get_iterator(self, dataset, training=False):
        ddp = getattr(self, "ddp_", None)
        if training and ddp is not None:
            return ddp.train_iterator(self, dataset)
        return super().get_iterator(dataset, training)

    def infer(self, x, **fit_params):
        if isinstance(x, dict):  # {"X": images, "sample_weight": w}: weights are get_loss's
            x = x["X"]
        module, rng = self.module_, None
        if module.training:
            ddp, rng = getattr(self, "ddp_", None), getattr(self, "fit_rng_", None)
            module = module if ddp is None else ddp.wrapped(module, self.device)
        with rng.global_stream() if rng is not None else contextlib.nullcontext():
            return self._forward(module, x, **fit_params)

    def _forward(self, module, x, **fit_params):
        # After a GPU-trained model is loaded on a CPU-only machine, skorch moves it to the
        # CPU; autocast and channels_last are then skipped.
        on_cuda = str(self.device).startswith("cuda")
        if not (on_cuda and (self.amp or self.channels_last)):
            return module(to_tensor(x, device=self.device), **fit_params)
        x = torch.as_tensor(x).to(self.device, non_blocking=True)
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp):
            return module(x, **fit_params).float()

    def get_loss(self, y_pred, y_true, X=None, training=False):
        """Cross-entropy; with ``sample_weight`` the weighted mean over the batch,
        ``sum(w_i c_i l_i) / sum(w_i c_i)`` (``c_i``: the class weight of image i's label,
        as torch's own class-weighted mean), as sklearn's ``MLPClassifier`` weights its
        batches. A batch whose weights are all 0 has loss 0."""
        if not (isinstance(X, dict) and "sample_weight" in X):
            return super().get_loss(y_pred, y_true, X=X, training=training)
        per_image = super().get_loss(y_pred, y_true, X=X, training=training)  # reduction none
        w = to_tensor(X["sample_weight"], device=per_image.device).to(per_image.dtype)
        class_weight = getattr(self.criterion_, "weight", None)
        norm = w if class_weight is None else w * class_weight[
            to_tensor(y_true, device=per_image.device)]
        return (w * per_image).sum() / norm.sum().clamp_min(torch.finfo(norm.dtype).tiny)


# ----------------------------------------------------------------------------- devices
_DEVICE_RE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def _mps_available():
    mps = getattr(torch.backends, "mps", None)
    return mps is not None and mps.is_available()


def _resolve_device(device):
    """``device`` → the torch device string fit uses.

    "auto": CUDA, then MPS, then CPU. On CUDA it is "cuda" (the first GPU that
    ``CUDA_VISIBLE_DEVICES`` shows this process; dask-cuda and ``CUDA_VISIBLE_DEVICES=N
    dask worker ...`` give each worker its own that way), or ``"cuda:<LOCAL_RANK>"``
    under a distributed launcher (torchrun) that sets ``LOCAL_RANK``: one rank per GPU
    with no user code. "cuda:N" must name a visible GPU."""
    if not isinstance(device, str) or not _DEVICE_RE.fullmatch(device):
        close = difflib.get_close_matches(str(device), ["auto", "cpu", "cuda", "mps"], n=1)
        raise ValueError(
            f"device={device!r} is not one of 'auto', 'cpu', 'cuda', 'cuda:N' (N = GPU "
            f"index) or 'mps'" + (f"; did you mean {close[0]!r}?" if close else ""))
    if device == "auto":
        if torch.cuda.is_available():
            return _cuda_for_local_rank()
        return "mps" if _mps_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device={device!r} but no CUDA GPU is available; use "
                             "device='auto'")
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ValueError(f"device={device!r} but {_visible_gpus()}")
    if device == "mps" and not _mps_available():
        raise ValueError("device='mps' but no Apple GPU (MPS) is available; use "
                         "device='auto'")
    return device


def _visible_gpus():
    n = torch.cuda.device_count()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return (f"this process sees {n} CUDA GPU{'s' if n != 1 else ''} (cuda:0 to "
            f"cuda:{n - 1})" + ("" if visible is None else
                                f" with CUDA_VISIBLE_DEVICES={visible!r}"))


def _cuda_for_local_rank():
    rank = distributed.local_rank()
    if rank is None:
        return "cuda"
    n = torch.cuda.device_count()
    if rank < n:
        return f"cuda:{rank}"
    if n == 1:  # the launcher gave each rank its own GPU through CUDA_VISIBLE_DEVICES
        return "cuda:0"
    raise ValueError(f"device='auto' with LOCAL_RANK={rank}, but {_visible_gpus()}; give "
                     "each rank its GPU (one GPU per rank, or CUDA_VISIBLE_DEVICES per "
                     "rank) or pass device='cuda:N'")


def _bf16_supported(device):
    """Whether autocast to bf16 pays off on ``device`` (CUDA Ampere or newer)."""
    if not str(device).startswith("cuda"):
        return False
    with torch.cuda.device(torch.device(device)):
        return torch.cuda.is_bf16_supported()


class _Labelled(torch.utils.data.Dataset):
    """(image, label) pairs from an image dataset, as skorch's iterators expect; with
    ``sample_weight``, ``({"X": image, "sample_weight": w}, label)``."""

    def __init__(self, images, y=None, sample_weight=None):
        self.images = images
        self.y = y
        self.sample_weight = sample_weight

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        label = self.y[i] if self.y is not None else 0
        if self.sample_weight is None:
            return self.images[i], label
        return {"X": self.images[i], "sample_weight": self.sample_weight[i]}, label


def _training_data(X, y, sample_weight):
    """What ``net.fit`` gets: X, a dict with the weights, or a labelled dataset."""
    if isinstance(X, torch.utils.data.Dataset):
        return _Labelled(X, y, sample_weight)
    return X if sample_weight is None else {"X": X, "sample_weight": sample_weight}


def _check_sample_weight(sample_weight, n):
    """float32 (n,) weights, or None when absent or all equal (the weighted mean is
    then the plain mean, so the unweighted path gives the same model)."""
    if sample_weight is None:
        return None
    try:
        w = np.asarray(sample_weight, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"sample_weight must be numbers; got {exc}") from None
    if w.ndim == 0:
        w = np.full(n, float(w))
    if w.shape != (n,):
        raise ValueError(f"sample_weight has shape {w.shape} but y has {n} labels; "
                         f"expected shape ({n},)")
    for bad, what in ((~np.isfinite(w), "not finite"), (w < 0, "negative")):
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"sample_weight[{i}] = {w[i]!r} is {what}; sample weights "
                             "must be finite and >= 0")
    if not w.any():
        raise ValueError(f"sample_weight is zero for all {n} images; nothing to train on")
    if np.all(w == w[0]):
        return None
    return w.astype(np.float32)


#: Callback names skorch's NeuralNetClassifier gives its own default callbacks.
_SKORCH_DEFAULT_CALLBACKS = ("epoch_timer", "train_loss", "valid_loss", "valid_acc",
                             "print_log")


def _user_callbacks(callbacks, ours):
    """``callbacks=`` validated and cloned, as skorch ``(name, callback)`` pairs.

    Clones: :func:`sklearn.base.clone` (how skorch callbacks are meant to be copied);
    where a parameter cannot be deep-copied (an open writer, a lock), a shallow copy —
    the callback's fitted state, set up again by skorch at every fit, is its own either
    way, while such a parameter is shared with the object given."""
    from skorch.callbacks import Callback

    taken = set(ours) | set(_SKORCH_DEFAULT_CALLBACKS)
    scores = {"train_loss", "train_acc", "valid_loss", "valid_acc"}  # history keys of ours
    out = []
    for i, item in enumerate(callbacks or []):
        name, cb = item if isinstance(item, tuple) and len(item) == 2 else (None, item)
        is_callback = isinstance(cb, Callback) or (isinstance(cb, type)
                                                   and issubclass(cb, Callback))
        if not is_callback or not (name is None or isinstance(name, str)):
            raise ValueError(f"callbacks[{i}] = {item!r} is not a skorch callback (an "
                             "instance or class of skorch.callbacks.Callback, or a "
                             "(name, callback) pair)")
        shown = name or (cb.__name__ if isinstance(cb, type) else type(cb).__name__)
        if shown in taken:
            raise ValueError(f"callbacks[{i}] is named {shown!r}, which CXRClassifier "
                             f"already uses (taken: {sorted(taken)}); give it another "
                             f"name, e.g. ('my_{shown}', callback)")
        key = getattr(cb, "name", None) if not isinstance(cb, type) else None
        if isinstance(key, str) and key in scores:
            raise ValueError(f"callbacks[{i}] records its score as {key!r}, which "
                             "CXRClassifier's own history already has; pass another "
                             "name= to it")
        if name is not None:  # skorch numbers unnamed callbacks of one class itself
            taken.add(name)
        cb = cb if isinstance(cb, type) else _clone_callback(cb)
        out.append(cb if name is None else (name, cb))
    return out


def _clone_callback(cb):
    import copy

    from sklearn.base import clone

    try:
        return clone(cb)
    except Exception:  # noqa: BLE001 - any failure to deep-copy: share the parameters
        return copy.copy(cb)


class _GroupedValidSplit:
    """skorch ``train_split``: a validation part of about ``fraction`` of the images that
    shares no group (patient) with the training part, stratified as far as groups allow.

    skorch's ``ValidSplit`` cannot do this (it never passes y to a grouped splitter), so
    it is sklearn's ``StratifiedGroupKFold``'s first fold with ``round(1 / fraction)``
    folds."""

    def __init__(self, fraction, groups, random_state):
        self.fraction = fraction
        self.groups = np.asarray(groups)
        self.random_state = random_state

    def __call__(self, dataset, y, **fit_params):
        cv = StratifiedGroupKFold(max(2, round(1 / self.fraction)), shuffle=True,
                                  random_state=self.random_state)
        y = np.asarray(y)
        train, valid = next(cv.split(np.zeros(len(y)), y, self.groups))
        return (torch.utils.data.Subset(dataset, train),
                torch.utils.data.Subset(dataset, valid))


def _drop_training_state(net):
    """Free what only training needs: EarlyStopping's copy of the best weights (already
    restored into the module) and the LR scheduler. They would bloat the pickle and, for a
    CUDA model, hold CUDA tensors that plain pickle cannot load on a CPU-only machine."""
    for _, callback in net.callbacks_:
        if hasattr(callback, "best_model_weights_"):
            callback.best_model_weights_ = None
        if hasattr(callback, "lr_scheduler_"):  # holds the optimizer and its state
            callback.lr_scheduler_ = None
    # The ``module`` *parameter* is the same instance as ``module_``; skorch maps only
    # ``module_`` to the CPU on load, so keep the class here, not the CUDA instance.
    net.module = type(net.module_)
    net.fit_rng_ = None
    net.ddp_ = None


# ------------------------------------------------------------------------ randomness
#: Held while torch's global RNG serves one fit (see :class:`_FitRandomness`).
_GLOBAL_RNG_LOCK = threading.RLock()


def _fit_seed(random_state):
    """The int seed of one fit: ``random_state`` itself, or drawn from it (a
    ``RandomState``, or numpy's global one for None, as sklearn estimators do)."""
    if isinstance(random_state, (int, np.integer)):
        return int(random_state)
    return int(check_random_state(random_state).randint(0, 2**31 - 1))


class _FitRandomness:
    """One fit's random stream for what cannot take a ``torch.Generator``.

    Weight initialisation (``nn.Module`` constructors), dropout and torchvision's random
    transforms draw from torch's *global* RNG and accept no generator. So each fit keeps
    its own RNG state (CPU, and the fit's CUDA device), seeded from ``random_state``, and
    :meth:`global_stream` swaps it into the global RNG for the duration of a block, under
    one process-wide lock, then swaps the caller's state back. The caller's global torch
    RNG is left as it was, and threaded fits with the same seed do not interleave their
    draws. Shuffling takes a ``torch.Generator`` directly (:meth:`generator`), outside
    the lock.

    The lock serialises the *training forward passes* of fits running in threads of one
    process (backward passes and everything else run concurrently);
    ``benchmarks/scale_out.py`` measures what this costs (``rng_lock`` in its JSON).
    """

    def __init__(self, seed, device="cpu"):
        self.seed = seed
        self.cuda_index = (torch.device(device).index or 0
                           if str(device).startswith("cuda") else None)
        self.cpu_state = torch.Generator().manual_seed(seed).get_state()
        self.cuda_state = None
        if self.cuda_index is not None:
            g = torch.Generator(device=f"cuda:{self.cuda_index}").manual_seed(seed)
            self.cuda_state = g.get_state()

    def generator(self, offset=0):
        """A fresh CPU ``torch.Generator`` seeded from this fit's seed (+ ``offset``)."""
        return torch.Generator().manual_seed(self.seed + offset)

    def reseed(self, offset):
        """Restart the stream from ``seed + offset`` (e.g. one stream per DDP rank)."""
        self.__init__(self.seed + offset, f"cuda:{self.cuda_index}"
                      if self.cuda_index is not None else "cpu")

    @contextlib.contextmanager
    def global_stream(self):
        """Run the block with torch's global RNG set to this fit's stream."""
        with _GLOBAL_RNG_LOCK:
            saved_cpu = torch.get_rng_state()
            saved_cuda = (torch.cuda.get_rng_state(self.cuda_index)
                          if self.cuda_index is not None else None)
            torch.set_rng_state(self.cpu_state)
            if saved_cuda is not None:
                torch.cuda.set_rng_state(self.cuda_state, self.cuda_index)
            try:
                yield
            finally:
                self.cpu_state = torch.get_rng_state()
                torch.set_rng_state(saved_cpu)
                if saved_cuda is not None:
                    self.cuda_state = torch.cuda.get_rng_state(self.cuda_index)
                    torch.cuda.set_rng_state(saved_cuda, self.cuda_index)
