"""skorch and torch plumbing of :class:`~cxr_estimators.CXRClassifier`.

The skorch net with the CUDA bf16-autocast / channels_last forward pass (skorch's own AMP
needs ``accelerate``), its construction from the estimator's parameters, device
resolution, the validation set (skorch's ``predefined_split`` for a given one, a stratified
or grouped split otherwise), the dataset wrapper that pairs lazily decoded images with
labels, seeding, and what is dropped from a fitted net before pickling. Written here
because skorch does none of these as we need.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
import torch
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.utils import compute_class_weight
from skorch import NeuralNetClassifier
from skorch.dataset import Dataset, ValidSplit
from skorch.helper import predefined_split
from torch import nn

from ._callbacks import make_callbacks

OPTIMIZERS = {"adam": torch.optim.Adam, "rmsprop": torch.optim.RMSprop, "sgd": torch.optim.SGD}

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


def class_weights(class_weight, classes, y_enc):
    """Cross-entropy class weights (float32 tensor) or None, as sklearn's ``class_weight``."""
    if class_weight is None:
        return None
    if isinstance(class_weight, dict):
        unknown = set(class_weight) - set(classes.tolist())
        if unknown:
            raise ValueError(
                f"class_weight has labels {sorted(map(str, unknown))} not in y's classes "
                f"{classes.tolist()}"
            )
        weights = np.array([float(class_weight.get(c, 1.0)) for c in classes])
    else:
        weights = compute_class_weight(class_weight, classes=np.arange(len(classes)), y=y_enc)
    return torch.as_tensor(weights, dtype=torch.float32)


def train_split(validation_fraction, y_enc, groups=None, seed=None, valid=None):
    """skorch ``train_split``: ``valid`` (a dataset) as is, else a stratified (or, with
    ``groups``, patient-grouped) split of ``validation_fraction``; None without one."""
    if valid is not None:
        return predefined_split(valid)
    frac = validation_fraction
    if frac == 0:
        return None
    counts = np.bincount(y_enc)
    n_valid = int(np.ceil(frac * len(y_enc)))
    too_few = counts.min() < 2 or n_valid < len(counts) or len(y_enc) - n_valid < len(counts)
    if groups is not None:
        n_groups = len(np.unique(groups))
        too_few = too_few or n_groups < max(2, round(1 / frac))
    if too_few:
        warnings.warn(
            f"validation_fraction={frac}: too few samples ({len(y_enc)}, smallest class "
            f"{counts.min()}{'' if groups is None else f', {n_groups} groups'}) for a "
            "stratified validation split; training without one",
            UserWarning, stacklevel=4,
        )
        return None
    if groups is not None:
        return _GroupedValidSplit(frac, groups, seed)
    return ValidSplit(frac, stratified=True, random_state=seed)


def valid_dataset(X_val, y_val_enc):
    """The given validation set as a dataset skorch's ``predefined_split`` takes."""
    if isinstance(X_val, torch.utils.data.Dataset):
        return _Labelled(X_val, y_val_enc)
    return Dataset(X_val, y_val_enc)


def make_net(est, module, classes, y_enc, *, device, amp, split, es_spec, seed):
    """The skorch net for one fit of ``est`` (a :class:`CXRClassifier`) on labels
    ``classes[y_enc]``."""
    n_classes = len(classes)
    kwargs = {}
    weights = class_weights(est.class_weight, classes, y_enc)
    if weights is not None:
        kwargs["criterion__weight"] = weights
    if not est.verbose:
        kwargs["callbacks__print_log"] = None
    callbacks = make_callbacks(es_spec, n_classes=n_classes, has_valid=split is not None,
                               lr_schedule=est.lr_schedule,
                               checkpoint_dir=est.checkpoint_dir, verbose=est.verbose)
    return _Net(
        module=module,
        criterion=nn.CrossEntropyLoss,
        optimizer=OPTIMIZERS[est.optimizer],
        optimizer__weight_decay=est.weight_decay,
        lr=est.lr,
        batch_size=est.batch_size,
        max_epochs=est.max_epochs,
        train_split=split,
        callbacks=callbacks,
        classes=np.arange(n_classes),
        iterator_train__shuffle=True,
        iterator_train__generator=torch.Generator().manual_seed(seed)
        if seed is not None else None,
        iterator_train__num_workers=est.num_workers,
        iterator_valid__num_workers=est.num_workers,
        iterator_train__pin_memory=device == "cuda",
        iterator_valid__pin_memory=device == "cuda",
        device=device,
        amp=amp,
        channels_last=amp,
        verbose=int(bool(est.verbose)),
        **kwargs,
    )


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
    if isinstance(net.train_split, functools.partial):  # predefined_split holds X_val
        net.train_split = None  # the validation images must not travel with the model


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
