"""skorch and torch plumbing of :class:`~cxr_estimators.CXRClassifier`.

The skorch net with the CUDA bf16-autocast / channels_last forward pass (skorch's own AMP
needs ``accelerate``), device resolution, the grouped validation split, the dataset
wrapper that pairs lazily decoded images with labels, seeding, and what is dropped from a
fitted net before pickling. Written here because skorch does none of these as we need.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.model_selection import StratifiedGroupKFold
from skorch import NeuralNetClassifier
from skorch.callbacks import ProgressBar
from skorch.dataset import get_len

class _Net(NeuralNetClassifier):
    """skorch net whose forward pass may run under bf16 autocast with channels_last input."""

    def __init__(self, *args, amp=False, channels_last=False, **kwargs):
        super().__init__(*args, **kwargs)
        self.amp = amp
        self.channels_last = channels_last

    def infer(self, x, **fit_params):
        # After a GPU-trained model is loaded on a CPU-only machine, skorch moves it to the
        # CPU; autocast and channels_last are then skipped.
        on_cuda = str(self.device).startswith("cuda")
        if not (on_cuda and (self.amp or self.channels_last)):
            return super().infer(x, **fit_params)
        x = torch.as_tensor(x).to(self.device, non_blocking=True)
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp):
            return self.module_(x, **fit_params).float()

    def run_single_epoch(self, iterator, training, prefix, step_fn, **fit_params):
        """skorch's epoch, but the batch losses stay on the device until the epoch ends.

        skorch records ``loss.item()`` after every step, which makes the host wait for
        the GPU each batch. Here each batch's history entry holds the detached 0-d loss
        tensor while the epoch runs (a callback reading it mid-epoch still gets a number
        it can format or compare) and the floats are written in one transfer at the end,
        before the epoch's callbacks average them. With a progress bar, which shows every
        batch's loss, skorch's per-batch ``item()`` is kept."""
        if iterator is None:
            return
        if any(isinstance(cb, ProgressBar) for _, cb in self.callbacks_):
            return super().run_single_epoch(iterator, training, prefix, step_fn, **fit_params)
        key = prefix + "_loss"
        losses = []
        for batch in iterator:
            self.notify("on_batch_begin", batch=batch, training=training)
            step = step_fn(batch, **fit_params)
            losses.append(step["loss"].detach())
            self.history.record_batch(key, losses[-1])
            self.history.record_batch(prefix + "_batch_size", get_len(
                batch[0] if isinstance(batch, (tuple, list)) else batch))
            self.notify("on_batch_end", batch=batch, training=training, **step)
        if losses:
            values = torch.stack(losses).float().cpu().tolist()
            for entry, value in zip(self.history[-1]["batches"][-len(losses):], values):
                entry[key] = value
        self.history.record(prefix + "_batch_count", len(losses))


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
    CUDA model, hold CUDA tensors that plain pickle cannot load on a CPU-only machine."""
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
