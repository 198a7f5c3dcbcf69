"""The skorch callbacks of :class:`~cxr_estimators.CXRClassifier` (ours, and the user's
``callbacks=`` appended after them: :func:`user_callbacks`).

skorch does the work: :class:`~skorch.callbacks.EpochScoring` computes the monitored
validation metric every epoch (from the predictions the validation pass already made: no
extra forward pass) and writes it to the history as ``valid_<metric>``;
:class:`~skorch.callbacks.EarlyStopping` watches it and restores the best weights;
:class:`~skorch.callbacks.Checkpoint` saves the epoch early stopping keeps;
:class:`~skorch.callbacks.LRScheduler` runs torch's schedulers (``lr_schedule``). Written
here: turning the ``early_stopping`` parameter (int or dict) into that configuration with
errors that name the bad key or value, the scorer of each monitor with the right positive
class, reading back which epoch's weights were kept (``best_epoch_``), and the LR schedules
below. Weight averaging (``average_weights``) is :mod:`cxr_estimators._averaging`'s
callback, added last.

LR schedules (``lr_schedule``) are :mod:`cxr_estimators._schedules`'.

The divergence guard (a non-finite or exploding loss stops training with an error naming
the likely cause) is :mod:`cxr_estimators._divergence`'s. Telling a user's Ctrl-C from
early stopping's own ``KeyboardInterrupt``, which skorch's ``partial_fit`` swallows alike
(:func:`mark_interrupted`, :func:`raise_if_interrupted`), is here.
"""

from __future__ import annotations

import copy
import numbers
import os
import tempfile
import warnings

import numpy as np
import torch
from sklearn.base import clone
from sklearn.metrics import get_scorer, make_scorer, f1_score
from skorch.callbacks import (
    Callback, Checkpoint, EarlyStopping, EpochScoring, ProgressBar,
)
from skorch.utils import noop

from . import _targets, distributed
from ._averaging import WeightAveraging, check_average_weights
from ._divergence import DivergenceGuard, TrainingDivergedError  # noqa: F401 (re-export)
from ._schedules import make_lr_scheduler
from ._validation import did_you_mean

#: Metrics ``early_stopping={"monitor": ...}`` accepts.
MONITORS = ("loss", "f1", "roc_auc", "accuracy", "balanced_accuracy")

_ES_KEYS = ("patience", "monitor", "min_delta", "pos_label", "finding")
_ES_DEFAULTS = {"monitor": "loss", "min_delta": 0.0, "pos_label": None, "finding": None}


def early_stopping_spec(early_stopping, classes):
    """Validate ``early_stopping`` (None, int patience or dict) against the classes of y.

    Returns None or a dict with ``patience``, ``monitor``, ``min_delta`` and
    ``pos_index`` (the encoded positive class, or None where the metric needs none)."""
    if early_stopping is None:
        return None
    if isinstance(early_stopping, numbers.Integral) and not isinstance(early_stopping, bool):
        early_stopping = {"patience": int(early_stopping)}
    if not isinstance(early_stopping, dict):
        raise ValueError(f"early_stopping must be None, an int (patience) or a dict; got "
                         f"{early_stopping!r}")
    for key in early_stopping:
        if key not in _ES_KEYS:
            raise ValueError(f"early_stopping has an unknown key {key!r}; known: "
                             f"{list(_ES_KEYS)}{did_you_mean(key, _ES_KEYS)}")
    if "patience" not in early_stopping:
        raise ValueError(f"early_stopping={early_stopping!r} needs a 'patience' (int >= 1)")
    spec = {**_ES_DEFAULTS, **early_stopping}
    patience, monitor, min_delta = spec["patience"], spec["monitor"], spec["min_delta"]
    if (not isinstance(patience, numbers.Integral) or isinstance(patience, bool)
            or patience < 1):
        raise ValueError(f"early_stopping patience must be an int >= 1; got {patience!r}")
    if monitor not in MONITORS:
        raise ValueError(f"early_stopping monitor={monitor!r} is not one of "
                         f"{list(MONITORS)}{did_you_mean(monitor, MONITORS)}")
    if not isinstance(min_delta, numbers.Real) or isinstance(min_delta, (bool, np.bool_)) \
            or not min_delta >= 0:
        raise ValueError(f"early_stopping min_delta must be a number >= 0; got {min_delta!r}")
    return {"patience": int(patience), "monitor": monitor, "min_delta": float(min_delta),
            "pos_index": _pos_index(monitor, spec["pos_label"], classes),
            "finding": spec["finding"]}  # multilabel y: checked by _targets.check_monitor


def _pos_index(monitor, pos_label, classes):
    """Encoded index of the positive class, resolved as sklearn's ``f1_score`` does: the
    label 1 for {0, 1} or {-1, 1} labels, else ``pos_label`` must be given."""
    classes = list(np.asarray(classes).tolist())
    if pos_label is not None:
        if pos_label not in classes:
            raise ValueError(f"early_stopping pos_label={pos_label!r} is not one of y's "
                             f"classes {classes}")
        return classes.index(pos_label)
    if monitor != "f1" or len(classes) != 2:  # multiclass f1 is macro-averaged
        return None
    if set(classes) in ({0, 1}, {-1, 1}):
        return classes.index(1)
    raise ValueError(
        f"early_stopping monitor='f1' needs a positive class: y's classes are {classes}; "
        "give early_stopping={..., 'pos_label': <one of them>}")


def _scorer(monitor, n_classes, pos_index):
    if monitor == "f1":
        if n_classes == 2:
            return make_scorer(f1_score, pos_label=pos_index)
        return get_scorer("f1_macro")
    if monitor == "roc_auc":  # binary AUC does not depend on which class is positive
        return _needs_every_class(get_scorer("roc_auc" if n_classes == 2 else "roc_auc_ovr"),
                                  n_classes)
    return get_scorer(monitor)


def _needs_every_class(scorer, n_classes):
    """``scorer`` (AUC), refusing a validation set without every class (a rare class left
    out of the split), where sklearn raises "Number of classes in y_true not equal…" or
    returns NaN, with an error naming the set and what to change."""
    def score(net, X, y=None):
        labels = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else y
        present = [] if y is None else np.unique(np.asarray(labels)).tolist()
        if y is not None and len(present) < n_classes:
            raise ValueError(
                f"early_stopping monitor='roc_auc' cannot be computed: the validation set "
                f"({len(y)} images) holds only class index(es) {present} of the "
                f"{n_classes} classes. Give X_val/y_val with every class, a larger "
                "validation_fraction, or monitor='loss'")
        return scorer(net, X, y)
    return score


def monitor_name(spec, has_valid):
    """History key early stopping, checkpoints and ``best_epoch_`` follow."""
    metric = "loss" if spec is None else spec["monitor"]
    return f"{'valid' if has_valid else 'train'}_{metric}"


class _KeptByEarlyStopping:
    """Checkpoint ``monitor``: true in the epochs early stopping takes as its new best
    (so the checkpoint holds the weights fit keeps, ``min_delta`` included)."""

    def __call__(self, net):
        stopper = dict(net.callbacks_)["early_stopping"]
        return stopper.best_epoch_ == net.history[-1, "epoch"]


#: Subfolder of ``checkpoint_dir`` a fit writes its checkpoint files into while it runs.
STAGING_DIR = ".incoming"


class _PromoteCheckpoint(Callback):
    """Move the checkpoint files of this fit from ``checkpoint_dir/.incoming`` over those
    in ``checkpoint_dir`` when training ends (done, stopped early or interrupted: the
    estimator then holds the same weights). A fit that crashes (divergence, an error)
    leaves the previous fit's checkpoint where it was and its own in ``.incoming``.
    Written here: skorch's Checkpoint writes straight into its folder."""

    def __init__(self, staging):
        self.staging = staging

    def on_train_end(self, net, **kwargs):
        if not os.path.isdir(self.staging):
            return
        target = os.path.dirname(self.staging)
        for name in os.listdir(self.staging):
            os.replace(os.path.join(self.staging, name), os.path.join(target, name))
        os.rmdir(self.staging)


def check_checkpoint_dir(checkpoint_dir):
    """``checkpoint_dir`` is a folder (made if missing) this process can write to; else a
    ValueError naming it, before training (skorch would only skip each save)."""
    path = os.fspath(checkpoint_dir)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"checkpoint_dir={path!r} exists and is not a folder")
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise ValueError(f"checkpoint_dir={path!r} cannot be written to: {exc}") from exc


def _checkpoint_sink(verbose):
    """skorch's Checkpoint reports a failed save (a full disk) only to its sink, printed
    when verbose: warn about that one whatever the verbosity, print the rest if verbose."""
    def sink(text):
        if text.startswith("Unable to save"):
            warnings.warn(f"checkpoint not written: {text}", UserWarning, stacklevel=2)
        elif verbose:
            print(text)
    return sink


def make_callbacks(spec, *, n_classes, has_valid, max_epochs, lr_schedule=None,
                   average_weights=None, checkpoint_dir=None, verbose=0, extra=None,
                   sync_ranks=False, writes_files=True, findings=None, labels=None):
    """The named skorch callbacks for one fit.

    ``spec``: :func:`early_stopping_spec` output. Without a validation set the monitored
    values are those of the training batches (``train_<metric>``). ``extra``: the user's
    ``callbacks=``, appended after ours (:func:`user_callbacks`). ``sync_ranks``: a
    data-parallel fit, whose epoch scores are averaged over the ranks before anything
    reads them; ``writes_files``: False on DDP ranks other than 0 (no checkpoint);
    ``findings``: a multilabel fit's finding names (the mean per-finding ROC AUC of the
    validation set is recorded instead of the accuracy; of the training batches only
    when early stopping watches it: it costs k AUCs per epoch); ``labels``:
    ``(classes, y_enc)`` of a single-label fit, for :class:`OneClassWatch`."""
    monitor = monitor_name(spec, has_valid)
    callbacks = [("divergence", DivergenceGuard())]
    watched = spec is not None and spec["monitor"] == "roc_auc"
    if findings is not None and (has_valid or watched):  # train AUC only when watched
        name = monitor_name({"monitor": "roc_auc"}, has_valid)
        callbacks.append((name, _targets.FindingsAUCScoring(
            _targets.FindingsAUC(findings, None if spec is None else spec["finding"]),
            name=name, on_train=not has_valid, lower_is_better=False)))
    elif findings is None:
        # accuracy of the training batches as trained (dropout, augmentation), from the
        # predictions skorch already made: no extra forward pass
        callbacks.append(("train_acc", EpochScoring("accuracy", on_train=True,
                                                    name="train_acc",
                                                    lower_is_better=False)))
    if spec is not None and spec["monitor"] != "loss" and findings is None:
        scoring = _scorer(spec["monitor"], n_classes, spec["pos_index"])
        callbacks.append((monitor, EpochScoring(scoring, name=monitor, on_train=not has_valid,
                                                lower_is_better=False)))
    if labels is not None and has_valid:  # training batches vary under dropout
        callbacks += one_class_watch(*labels)
    if sync_ranks:  # after the scoring callbacks, before those that read the scores
        callbacks.append(("sync_ranks", distributed.SyncEpochScores()))
    if spec is not None:
        callbacks.append(("early_stopping", EarlyStopping(
            monitor=monitor, patience=spec["patience"], load_best=True,
            threshold=spec["min_delta"], threshold_mode="abs",
            lower_is_better=spec["monitor"] == "loss",
            sink=print if verbose else noop,
        )))
    if lr_schedule is not None:
        # plateau: on the loss of the same set (ReduceLROnPlateau's mode="min")
        callbacks.append(("lr_schedule", make_lr_scheduler(
            lr_schedule, max_epochs, monitor_name(None, has_valid))))
    if checkpoint_dir is not None and writes_files:
        kept = _KeptByEarlyStopping() if spec is not None else f"{monitor}_best"
        staging = os.path.join(os.fspath(checkpoint_dir), STAGING_DIR)
        callbacks.append(("checkpoint", Checkpoint(monitor=kept, dirname=staging,
                                                   sink=_checkpoint_sink(verbose))))
        callbacks.append(("checkpoint_promote", _PromoteCheckpoint(staging)))
    if verbose and verbose > 1:
        callbacks.append(("progress", ProgressBar()))
    averaging = check_average_weights(average_weights, max_epochs)
    if averaging is not None:  # last: its weights replace those early stopping restored
        method, options = averaging
        callbacks.append(("average_weights", WeightAveraging(method, **options)))
    return callbacks + user_callbacks(extra, [name for name, _ in callbacks])


#: Callback names skorch's NeuralNetClassifier gives its own default callbacks.
_SKORCH_DEFAULT_CALLBACKS = ("epoch_timer", "train_loss", "valid_loss", "valid_acc",
                             "print_log")


def user_callbacks(callbacks, ours):
    """``callbacks=`` validated and cloned, as skorch ``(name, callback)`` pairs.

    Clones: :func:`sklearn.base.clone` (how skorch callbacks are meant to be copied);
    where a parameter cannot be deep-copied (an open writer, a lock), a shallow copy —
    the callback's fitted state, set up again by skorch at every fit, is its own either
    way, while such a parameter is shared with the object given."""
    taken = set(ours) | set(_SKORCH_DEFAULT_CALLBACKS)
    # history keys of ours (our EpochScorings are named by the key they write)
    scores = {"train_loss", "train_acc", "valid_loss", "valid_acc"} | set(ours)
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


def clone_callbacks(callbacks):
    """A copy of a ``callbacks=`` list for ``sklearn.base.clone`` of the estimator: each
    callback cloned as :func:`user_callbacks` clones it (shallowly where deep-copying
    fails), names and classes kept."""
    out = []
    for item in callbacks:
        name, cb = item if isinstance(item, tuple) and len(item) == 2 else (None, item)
        cb = cb if isinstance(cb, type) or not isinstance(cb, Callback) else _clone_callback(cb)
        out.append(cb if name is None else (name, cb))
    return out


def _clone_callback(cb):
    try:
        return clone(cb)
    except Exception:  # noqa: BLE001 - any failure to deep-copy: share the parameters
        return copy.copy(cb)


def best_epoch(net):
    """The (1-based) epoch whose weights the fitted net holds: early stopping's best epoch,
    or the last epoch trained without early stopping or with weights averaged up to it."""
    averaging = dict(net.callbacks_).get("average_weights")
    if averaging is not None and averaging.n_averaged_:
        return int(net.history[-1, "epoch"])
    stopper = dict(net.callbacks_).get("early_stopping")
    if stopper is not None and getattr(stopper, "best_epoch_", 0):
        return int(stopper.best_epoch_)
    return int(net.history[-1, "epoch"])


# ---------------------------------------------------------------------------- one class
class OneClassWarning(UserWarning):
    """A fit whose model predicted a single class for every image at every epoch while
    its labels hold several: what it learned separates nothing, and ``best_epoch_`` (or
    a search's winner) was chosen among equally useless epochs (or candidates)."""


#: History key of :class:`OneClassWatch`'s per-epoch record.
SINGLE_CLASS_KEY = "single_class"


def _single_class(net, X, y):
    """Encoded index of the one class predicted for every image of ``X``, or -1 when
    several are (from the predictions skorch cached for the epoch: no extra pass)."""
    predicted = np.unique(np.asarray(net.predict_proba(X)).argmax(axis=1))
    return float(predicted[0]) if len(predicted) == 1 else -1.0


class OneClassWatch(Callback):
    """Warn (:class:`OneClassWarning`) at the end of a fit in which every epoch's
    predictions of the validation images were a single class while
    the labels hold several, naming the class or classes seen and the epoch count.

    Written here because skorch records scores, not what they mean: a model stuck on
    one class has a finite, even improving, loss and raises nothing. The per-epoch
    record is an :class:`~skorch.callbacks.EpochScoring` (``valid_single_class``) that
    reuses the epoch's cached predictions."""

    def __init__(self, key, classes, n_labelled_classes):
        self.key = key
        self.classes = classes
        self.n_labelled_classes = n_labelled_classes

    def on_train_end(self, net, **kwargs):
        seen = [row.get(self.key) for row in net.history]
        if (self.n_labelled_classes < 2 or not seen
                or any(v is None or v < 0 for v in seen)):
            return
        names = sorted({str(self.classes[int(v)]) for v in seen})
        warnings.warn(
            f"the model predicted a single class ({' or '.join(repr(n) for n in names)}) "
            f"for every validation image at each of its {len(seen)} epoch(s), while the "
            f"labels hold "
            f"{self.n_labelled_classes} classes: it separates nothing (sensitivity 1 and "
            "specificity 0, or the reverse), so best_epoch_ and any search ranking are "
            "meaningless. Try more epochs, another lr, class_weight='balanced', "
            "pretrained weights, or freeze=False", OneClassWarning, stacklevel=2)


def one_class_watch(classes, y_enc):
    """The ``(name, callback)`` pairs that record and warn about one-class models (on
    the validation set: training batches are predicted under dropout and augmentation)."""
    key = f"valid_{SINGLE_CLASS_KEY}"
    return [(key, EpochScoring(_single_class, name=key, lower_is_better=False)),
            ("one_class_watch", OneClassWatch(key, list(np.asarray(classes).tolist()),
                                              len(np.unique(np.asarray(y_enc)))))]


# ---------------------------------------------------------------------------- interrupts
def _stopped_early(net):
    """True when the KeyboardInterrupt came from skorch's EarlyStopping (it stops training
    by raising one once ``misses_`` reaches ``patience``)."""
    return any(isinstance(cb, EarlyStopping) and cb.misses_ >= cb.patience
               for _, cb in getattr(net, "callbacks_", []))


def mark_interrupted(net):
    """Record a user's interrupt in the history (``history_[-1]["interrupted"]``) and on
    the net; early stopping's own interrupt is not one."""
    if _stopped_early(net):
        return
    if not len(net.history):
        net.history.new_epoch()
        net.history.record("epoch", 1)
    net.history.record("interrupted", True)
    net.interrupted_ = True


def raise_if_interrupted(net):
    """Re-raise a user's interrupt that skorch swallowed, once the estimator is usable."""
    if getattr(net, "interrupted_", False):
        raise KeyboardInterrupt(
            f"fit interrupted during epoch {net.history[-1, 'epoch']} of {net.max_epochs}: "
            f"the estimator holds the weights of epoch {best_epoch(net)} (the best so far "
            "with early stopping, else the latest) and history_[-1]['interrupted'] is True")
