"""The divergence guard of :class:`~cxr_estimators.CXRClassifier`'s training loop.

skorch trains on whatever the loss becomes. :class:`DivergenceGuard` (a skorch callback,
the first of ours) stops a fit with :class:`TrainingDivergedError` when training has
diverged, by one of three rules:

* **non-finite**: a batch's training or validation loss is NaN or inf (at that batch; on
  CUDA, where batch losses stay on the device, at the end of its epoch);
* **explosion**: an epoch's mean training loss exceeds ``EXPLOSION_FACTOR`` (10**6)
  times the reference, the larger of the first training batch's loss and 1;
* **no recovery**: at the end of training, the last epoch's mean training loss exceeds
  ``FINAL_FACTOR`` (100) times the larger of the reference and ``ln K``;
* **collapse**: at the end of training the last epoch predicted one class for every
  training image, although its labels held several, *and* its mean training loss exceeds
  ``COLLAPSE_FACTOR`` (10) times the larger of the reference and ``ln K``.

Why these bounds: cross-entropy starts near ``ln K`` (0.69 for two classes) and a model
that guesses the class frequencies scores at most ``ln K``. A high but workable learning
rate can make the first epoch's loss jump by 10**4 (measured: Adam at ``lr=0.3`` on the
toy images, 0.7 → 8,000, back to 0.7 by epoch 2), so an epoch is judged alone only past
10**6; a fit that *ends* 100 times worse than a constant guess has not recovered.
Predicting only the majority class is normal in an imbalanced fit, but its loss is then
at most about ``ln K``; only a collapse with ten times that loss is an error.

The error names the epoch and the likely cause, checked in this order: non-finite
images; a batch whose class weights are all 0; class weights or sample weights spanning
more than ``WEIGHT_SPREAD`` (10**6) or above ``HUGE_WEIGHT`` (10**20); a strong
augmentation (brightness or contrast); else the learning rate. A previously fitted model
is left as it was. Written here because skorch has no such check.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from skorch.callbacks import Callback

EXPLOSION_FACTOR = 1e6
FINAL_FACTOR = 100.0
COLLAPSE_FACTOR = 10.0
WEIGHT_SPREAD = 1e6
HUGE_WEIGHT = 1e20


class TrainingDivergedError(FloatingPointError):
    """Training diverged: a non-finite loss, a loss that exploded by orders of magnitude,
    or a model collapsed to one class (rules: :mod:`cxr_estimators._divergence`). The
    message names the epoch and the likely cause. A previously fitted model is left as it
    was."""


class DivergenceGuard(Callback):
    """Raise :class:`TrainingDivergedError` when training diverges (module docstring).

    Reads the losses skorch has already recorded (no extra device sync for the
    non-finite rule); the collapse rule counts each training batch's predicted and true
    classes on the device and reads them once per epoch."""

    def on_train_begin(self, net, X=None, y=None, **kwargs):
        self.first_loss_ = None
        self.weights_ = _sample_weights(X)
        self._counts = None

    def on_epoch_begin(self, net, **kwargs):
        self._counts = None

    def on_batch_end(self, net, batch=None, training=None, y_pred=None, **kwargs):
        key = "train_loss" if training else "valid_loss"
        batches = net.history[-1]["batches"]
        loss = batches[-1].get(key)
        if training and isinstance(y_pred, torch.Tensor) and y_pred.ndim == 2 \
                and isinstance(batch, (tuple, list)) and isinstance(batch[1], torch.Tensor):
            self._count(y_pred, batch[1])
        if loss is None or isinstance(loss, torch.Tensor):
            return  # a tensor: still on the device, checked in on_epoch_end
        if training and self.first_loss_ is None:
            self.first_loss_ = float(loss)
        if not math.isfinite(loss):
            self._raise(net, f"the {_phase(key)} loss is {loss} at epoch "
                             f"{net.history[-1]['epoch']}, batch "
                             f"{sum(1 for b in batches if key in b)}", batch)

    def _count(self, y_pred, y_true):
        k = y_pred.shape[1]
        with torch.no_grad():
            pred = torch.bincount(y_pred.detach().argmax(1), minlength=k)
            true = torch.bincount(y_true.detach().long().reshape(-1).clamp(0, k - 1),
                                  minlength=k)
        counts = torch.stack([pred, true.to(pred.device)])
        self._counts = counts if self._counts is None else self._counts + counts

    def on_epoch_end(self, net, **kwargs):
        epoch = net.history[-1]["epoch"]
        for key in ("train_loss", "valid_loss"):
            losses = [b[key] for b in net.history[-1]["batches"] if key in b]
            if key == "train_loss" and losses and self.first_loss_ is None:
                self.first_loss_ = float(losses[0])
            bad = [i for i, loss in enumerate(losses) if not math.isfinite(loss)]
            if bad:  # the batch itself is gone: the cause is named from the weights
                self._raise(net, f"the {_phase(key)} loss is {losses[bad[0]]} at epoch "
                                 f"{epoch}, batch {bad[0] + 1}", None)
        mean = self._mean_train_loss(net)
        if mean is None or self.first_loss_ is None:
            return
        start = max(abs(self.first_loss_), 1.0)
        if mean > EXPLOSION_FACTOR * start:
            self._raise(net, f"the training loss exploded to {mean:.3g} at epoch {epoch}, "
                             f"from {self.first_loss_:.3g} at the first batch (more than "
                             f"{EXPLOSION_FACTOR:g} times)", None)

    def _reference(self, n_classes):
        return max(self.first_loss_, math.log(max(n_classes, 2)), 1.0)

    def on_train_end(self, net, **kwargs):
        mean = self._mean_train_loss(net)
        if mean is None or self.first_loss_ is None or not len(net.history):
            return
        epoch = net.history[-1]["epoch"]
        classes = getattr(net, "classes", None)
        n_classes = 2 if classes is None else len(classes)
        if mean > FINAL_FACTOR * self._reference(n_classes):
            self._raise(net, f"the training loss is {mean:.3g} at the last epoch ({epoch}), "
                             f"{FINAL_FACTOR:g} times worse than a constant guess", None)
        if self._counts is None:
            return
        pred, true = self._counts.cpu().numpy()
        if (pred > 0).sum() != 1 or (true > 0).sum() < 2:
            return
        if mean > COLLAPSE_FACTOR * self._reference(len(pred)):
            self._raise(net, f"the model predicts class index {int(pred.argmax())} for "
                             f"every training image at epoch {epoch} "
                             f"although they have {int((true > 0).sum())} classes, with a "
                             f"training loss of {mean:.3g} (a constant guess scores at "
                             f"most {math.log(n_classes):.2f})", None)

    @staticmethod
    def _mean_train_loss(net):
        losses = [b["train_loss"] for b in net.history[-1]["batches"] if "train_loss" in b]
        losses = [float(v) for v in losses if not isinstance(v, torch.Tensor)]
        return float(np.mean(losses)) if losses else None

    def _raise(self, net, what, batch):
        raise TrainingDivergedError(f"training diverged: {what}; likely cause: "
                                    f"{likely_cause(net, batch, self.weights_)}")


def _phase(key):
    return "training" if key == "train_loss" else "validation"


def _sample_weights(X):
    """The training set's sample weights (numpy), wherever the fit put them, or None."""
    w = X.get("sample_weight") if isinstance(X, dict) else getattr(X, "sample_weight", None)
    if w is None:
        return None
    w = w.detach().cpu().numpy() if isinstance(w, torch.Tensor) else np.asarray(w)
    return w.astype(np.float64, copy=False)


def _spread(name, values):
    """Why ``values`` (weights) could break training, or None."""
    values = np.asarray(values, dtype=np.float64)
    positive = values[values > 0]
    if not positive.size:
        return None
    lo, hi = positive.min(), positive.max()
    if hi > HUGE_WEIGHT or hi / lo > WEIGHT_SPREAD:
        return (f"the {name}: they range from {lo:.3g} to {hi:.3g}; weights that far apart "
                f"(or that large) overflow float32 or make a few images the whole loss — "
                f"rescale them to a narrow range (e.g. mean 1)")
    return None


def likely_cause(net, batch, sample_weights=None):
    """The likely cause of a divergence, in words naming the parameter to change."""
    X, y = (batch[0], batch[1]) if isinstance(batch, (tuple, list)) else (batch, None)
    X = X.get("X") if isinstance(X, dict) else X
    if isinstance(X, torch.Tensor) and not torch.isfinite(X).all():
        return "the input: images of this batch contain NaN or inf"
    weight = getattr(getattr(net, "criterion_", None), "weight", None)
    if weight is not None and isinstance(y, torch.Tensor) and y.numel():
        if float(weight.cpu()[y.long().cpu()].sum()) == 0:
            return ("the class weights: every image of this batch is of a class with "
                    "weight 0 (class_weight), so the loss is 0/0")
    if weight is not None:
        cause = _spread("class weights (class_weight)", weight.detach().cpu().numpy())
        if cause:
            return cause
    if sample_weights is not None:
        cause = _spread("sample weights (sample_weight)", sample_weights)
        if cause:
            return cause
    cause = _augmentation(net)
    if cause:
        return cause
    lr = net.optimizer_.param_groups[0]["lr"] if hasattr(net, "optimizer_") else net.lr
    opt = getattr(net.optimizer, "__name__", str(net.optimizer))
    broken = not all(torch.isfinite(p).all() for p in net.module_.parameters())
    return (f"the learning rate: lr={lr:g} ({opt}) is too high"
            + (" — the weights have become NaN or inf" if broken else "")
            + "; try a learning rate 10 to 100 times smaller")


def _augmentation(net):
    """A strong intensity augmentation of the model, in words, or None."""
    augmenter = getattr(getattr(net, "module_", None), "augment", None)
    if augmenter is None:
        return None
    lo, hi = getattr(augmenter, "brightness", (0.0, 0.0))
    strong = (hi > 2 or lo < 0.25) if getattr(augmenter, "multiplicative", False) \
        else max(abs(lo), abs(hi)) > 1
    if strong:
        return (f"the augmentation: augment brightness {(lo, hi)} changes the images' "
                "intensities by more than the data varies; use e.g. 0.1 or (0.8, 1.2)")
    return None
