"""The skorch callbacks of :class:`~cxr_estimators.CXRClassifier`.

skorch does the work: :class:`~skorch.callbacks.EpochScoring` computes the monitored
validation metric every epoch (from the predictions the validation pass already made: no
extra forward pass) and writes it to the history as ``valid_<metric>``;
:class:`~skorch.callbacks.EarlyStopping` watches it and restores the best weights;
:class:`~skorch.callbacks.Checkpoint` saves the epoch early stopping keeps. Written here:
turning the ``early_stopping`` parameter (int or dict) into that configuration with errors
that name the bad key or value, the scorer of each monitor with the right positive class,
and reading back which epoch's weights were kept (``best_epoch_``).
"""

from __future__ import annotations

import difflib
import numbers

import numpy as np
import torch
from sklearn.metrics import get_scorer, make_scorer, f1_score
from skorch.callbacks import Checkpoint, EarlyStopping, EpochScoring, LRScheduler, ProgressBar
from skorch.utils import noop

#: Metrics ``early_stopping={"monitor": ...}`` accepts.
MONITORS = ("loss", "f1", "roc_auc", "accuracy", "balanced_accuracy")

_ES_KEYS = ("patience", "monitor", "min_delta", "pos_label")
_ES_DEFAULTS = {"monitor": "loss", "min_delta": 0.0, "pos_label": None}


def _did_you_mean(value, options):
    close = difflib.get_close_matches(str(value), [str(o) for o in options], n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


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
                             f"{list(_ES_KEYS)}{_did_you_mean(key, _ES_KEYS)}")
    if "patience" not in early_stopping:
        raise ValueError(f"early_stopping={early_stopping!r} needs a 'patience' (int >= 1)")
    spec = {**_ES_DEFAULTS, **early_stopping}
    patience, monitor, min_delta = spec["patience"], spec["monitor"], spec["min_delta"]
    if (not isinstance(patience, numbers.Integral) or isinstance(patience, bool)
            or patience < 1):
        raise ValueError(f"early_stopping patience must be an int >= 1; got {patience!r}")
    if monitor not in MONITORS:
        raise ValueError(f"early_stopping monitor={monitor!r} is not one of "
                         f"{list(MONITORS)}{_did_you_mean(monitor, MONITORS)}")
    if not isinstance(min_delta, numbers.Real) or not min_delta >= 0:
        raise ValueError(f"early_stopping min_delta must be a number >= 0; got {min_delta!r}")
    return {"patience": int(patience), "monitor": monitor, "min_delta": float(min_delta),
            "pos_index": _pos_index(monitor, spec["pos_label"], classes)}


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
        return get_scorer("roc_auc" if n_classes == 2 else "roc_auc_ovr")
    return get_scorer(monitor)


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


def make_callbacks(spec, *, n_classes, has_valid, lr_schedule=None, checkpoint_dir=None,
                   verbose=0):
    """The named skorch callbacks for one fit.

    ``spec``: :func:`early_stopping_spec` output. Without a validation set the monitored
    values are those of the training batches (``train_<metric>``)."""
    monitor = monitor_name(spec, has_valid)
    # accuracy of the training batches as trained (dropout, augmentation), from the
    # predictions skorch already made: no extra forward pass
    callbacks = [("train_acc", EpochScoring("accuracy", on_train=True, name="train_acc",
                                            lower_is_better=False))]
    if spec is not None and spec["monitor"] != "loss":
        scoring = _scorer(spec["monitor"], n_classes, spec["pos_index"])
        callbacks.append((monitor, EpochScoring(scoring, name=monitor, on_train=not has_valid,
                                                lower_is_better=False)))
    if spec is not None:
        callbacks.append(("early_stopping", EarlyStopping(
            monitor=monitor, patience=spec["patience"], load_best=True,
            threshold=spec["min_delta"], threshold_mode="abs",
            lower_is_better=spec["monitor"] == "loss",
            sink=print if verbose else noop,
        )))
    if lr_schedule is not None:
        kwargs = {} if lr_schedule == "plateau" else dict(lr_schedule)
        # on the loss of the same set (ReduceLROnPlateau's mode="min")
        callbacks.append(("lr_schedule", LRScheduler(
            policy=torch.optim.lr_scheduler.ReduceLROnPlateau,
            monitor=monitor_name(None, has_valid), **kwargs)))
    if checkpoint_dir is not None:
        kept = _KeptByEarlyStopping() if spec is not None else f"{monitor}_best"
        callbacks.append(("checkpoint", Checkpoint(monitor=kept, dirname=str(checkpoint_dir))))
    if verbose and verbose > 1:
        callbacks.append(("progress", ProgressBar()))
    return callbacks


def best_epoch(net):
    """The (1-based) epoch whose weights the fitted net holds: early stopping's best epoch,
    or the last epoch trained without early stopping."""
    stopper = dict(net.callbacks_).get("early_stopping")
    if stopper is not None and getattr(stopper, "best_epoch_", 0):
        return int(stopper.best_epoch_)
    return int(net.history[-1, "epoch"])
