"""skorch and torch plumbing of :class:`~cxr_estimators.CXRClassifier`.

The skorch net with the bf16-autocast / channels_last forward pass (skorch's own AMP
needs ``accelerate``; what runs how is decided in :mod:`cxr_estimators._runtime`), the
prediction loop, device resolution, the grouped validation split, the dataset
wrapper that pairs lazily decoded images with labels, seeding, and what is dropped from a
fitted net before pickling. Written here because skorch does none of these as we need.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.model_selection import StratifiedGroupKFold
from skorch import NeuralNetClassifier

from . import _runtime


class _Net(NeuralNetClassifier):
    """skorch net whose forward pass may run under bf16 autocast with channels_last input
    (on the device type ``amp_device`` the model was fitted for; see
    :mod:`cxr_estimators._runtime`), sharing the cores with concurrent fits."""

    def __init__(self, *args, amp=False, channels_last=False, amp_device="cuda", **kwargs):
        super().__init__(*args, **kwargs)
        self.amp = amp
        self.channels_last = channels_last
        self.amp_device = amp_device

    def on_epoch_begin(self, net, dataset_train=None, dataset_valid=None, **kwargs):
        super().on_epoch_begin(net, dataset_train, dataset_valid, **kwargs)
        _runtime.refresh_thread_share()

    def forward_module(self):
        """The module that runs forward passes: the compiled one if ``compile=True``."""
        return getattr(self, "compiled_module_", None) or self.module_

    def infer(self, x, **fit_params):
        # After a GPU-trained model is loaded on a CPU-only machine, skorch moves it to the
        # CPU; autocast and channels_last are then skipped.
        on_own_device = torch.device(self.device).type == getattr(self, "amp_device", "cuda")
        if not (on_own_device and (self.amp or self.channels_last)) and not hasattr(
                self, "compiled_module_"):
            return super().infer(x, **fit_params)
        x = torch.as_tensor(x).to(self.device, non_blocking=True)
        if on_own_device and self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(torch.device(self.device).type, dtype=torch.bfloat16,
                            enabled=on_own_device and self.amp):
            return self.forward_module()(x, **fit_params).float()

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("compiled_module_", None)  # rebuilt on demand, never pickled
        return state


def _predict_batches(net, X, batch_size):
    """Batches of X as tensors: views of an in-memory array (no copy, no collate), or a
    DataLoader over a lazy dataset with the net's workers."""
    if not isinstance(X, torch.utils.data.Dataset):
        for start in range(0, len(X), batch_size):
            yield torch.from_numpy(X[start:start + batch_size])
        return
    loader = torch.utils.data.DataLoader(
        X, batch_size=batch_size, num_workers=net.iterator_valid__num_workers,
        pin_memory=str(net.device).startswith("cuda"))
    for batch in loader:
        yield batch[0] if isinstance(batch, (tuple, list)) else batch


def stream_proba(net, X, n_classes, batch_size):
    """Softmax probabilities (n, n_classes), float64, of ``net`` on ``X``, written batch by
    batch into one array allocated up front; written by hand for two reasons.

    skorch's ``predict_proba`` collects a list of small per-batch arrays and concatenates
    them at the end: ``benchmarks/memory.py`` (modes ``lazy`` and ``lazy_skorch``, 224 px,
    up to 10,000 images; docs/benchmarks.md) measured the process growing with the number
    of images that way, and not this way (our reading, not verified further: the small
    arrays, allocated between the large per-batch buffers, keep glibc from reusing or
    returning the freed ones). And skorch batches an in-memory array item by item
    (``__getitem__`` + collate) under ``no_grad``; here a batch is a view of the array,
    run under ``inference_mode`` with its own batch size (``predict_batch_size``).
    """
    proba = np.empty((len(X), n_classes), dtype=np.float64)
    out = torch.from_numpy(proba)
    net.module_.eval()
    start = 0
    with torch.inference_mode():
        for xb in _predict_batches(net, X, batch_size):
            logits = net.infer(xb)
            out[start:start + len(logits)].copy_(torch.softmax(logits.float(), dim=1))
            start += len(logits)
    return proba


def _mps_available():
    mps = getattr(torch.backends, "mps", None)
    return mps is not None and mps.is_available()


def _resolve_device(device):
    if device != "auto":
        if device == "cuda" and not torch.cuda.is_available():
            raise ValueError("device='cuda' but no CUDA GPU is available; use device='auto'")
        if device == "mps" and not _mps_available():
            raise ValueError("device='mps' but no Apple GPU (MPS) is available; use "
                             "device='auto'")
        return device
    if torch.cuda.is_available():
        return "cuda"
    if _mps_available():
        return "mps"
    return "cpu"


class _Labelled(torch.utils.data.Dataset):
    """(image, label) pairs from an image dataset, as skorch's iterators expect."""

    def __init__(self, images, y=None):
        self.images = images
        self.y = y

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], (self.y[i] if self.y is not None else 0)


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
    CUDA model, hold CUDA tensors that plain pickle cannot load on a CPU-only machine.
    A compiled module (``compile=True``) is kept aside for prediction in this process;
    ``module_`` is the plain module, which pickles."""
    orig = getattr(net.module_, "_orig_mod", None)
    if orig is not None:
        net.compiled_module_ = net.module_
        net.module_ = orig
    for _, callback in net.callbacks_:
        if hasattr(callback, "best_model_weights_"):
            callback.best_model_weights_ = None
        if hasattr(callback, "lr_scheduler_"):  # holds the optimizer and its state
            callback.lr_scheduler_ = None
    # The ``module`` *parameter* is the same instance as ``module_``; skorch maps only
    # ``module_`` to the CPU on load, so keep the class here, not the CUDA instance.
    net.module = type(net.module_)


def _seed_everything(random_state):
    """Seed torch's global RNG (weight init, dropout, augmentation) from ``random_state``."""
    if random_state is None:
        return None
    if isinstance(random_state, np.random.RandomState):
        seed = int(random_state.randint(0, 2**31 - 1))
    else:
        seed = int(random_state)
    torch.manual_seed(seed)
    return seed
