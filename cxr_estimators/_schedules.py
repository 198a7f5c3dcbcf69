"""Learning-rate schedules (``lr_schedule``), torch's own schedulers run by skorch.

* ``"plateau"``: :class:`torch.optim.lr_scheduler.ReduceLROnPlateau` on the loss of the
  validation set (training batches without one), stepped every epoch (a dict without
  ``"policy"`` still means this one);
* ``"cosine"``: :class:`~torch.optim.lr_scheduler.CosineAnnealingLR` from ``lr`` to
  ``eta_min`` (default 0) over all batches of ``max_epochs`` epochs, after an optional
  linear warm-up of ``warmup_epochs`` (:class:`~torch.optim.lr_scheduler.LinearLR`, chained
  by :class:`~torch.optim.lr_scheduler.SequentialLR`);
* ``"onecycle"``: :class:`~torch.optim.lr_scheduler.OneCycleLR` peaking at ``lr``, over all
  batches of ``max_epochs`` epochs.

skorch's ``LRScheduler`` builds its torch scheduler when training begins, before the
validation split exists, so it cannot tell a per-batch schedule how many batches an epoch
has: :class:`_PerBatchLR` builds it at the first epoch instead, from the length of the
training DataLoader. Early stopping may end training before a schedule does (the learning
rate then never reaches its end value).

Written here: the name/dict → scheduler mapping with errors that name the bad key or
value (each value torch refuses is found by building and stepping the scheduler on a
one-parameter optimizer before training), and :class:`_PerBatchLR`.
"""

from __future__ import annotations

import inspect

import numpy as np
import torch
from skorch.callbacks import LRScheduler
from torch.optim import lr_scheduler as torch_lr

from ._validation import did_you_mean, is_finite_number

__all__ = ["SCHEDULES", "check_lr_schedule", "make_lr_scheduler"]

#: Names ``lr_schedule`` accepts.
SCHEDULES = ("plateau", "cosine", "onecycle")

# The arguments the package sets itself, per schedule; the user may set the others.
_OWN_ARGS = {
    "plateau": {"optimizer"},
    "onecycle": {"optimizer", "max_lr", "total_steps", "epochs", "steps_per_epoch",
                 "last_epoch"},
}
_COSINE_ARGS = ("warmup_epochs", "eta_min")


def _allowed_args(policy):
    if policy == "cosine":
        return set(_COSINE_ARGS)
    cls = torch_lr.ReduceLROnPlateau if policy == "plateau" else torch_lr.OneCycleLR
    return set(inspect.signature(cls).parameters) - _OWN_ARGS[policy]


def check_lr_schedule(lr_schedule, max_epochs, lr=1e-3):
    """Validate ``lr_schedule``; return ``(policy, kwargs)`` or None.

    Raises ValueError naming an unknown schedule or argument (with the closest valid
    name), a warm-up that does not leave at least one epoch of cosine decay, a negative
    ``eta_min``, and any value torch's scheduler refuses when it is built and stepped on a
    one-parameter optimizer (``factor=2``, ``patience="2"``). Run once per fit, before
    training; :func:`make_lr_scheduler` then only parses.
    """
    parsed = _parse(lr_schedule, max_epochs)
    if parsed is not None:
        eta_min = parsed[1].get("eta_min", 0.0)
        min_lr = parsed[1].get("min_lr", 0.0)
        if parsed[0] == "plateau" and is_finite_number(lr) and is_finite_number(min_lr) \
                and min_lr > lr:
            raise ValueError(f"lr_schedule min_lr={min_lr!r} is above lr={lr!r}: the plateau "
                             "schedule would raise the learning rate when the loss stalls; "
                             "give min_lr <= lr")
        if parsed[0] == "cosine" and is_finite_number(lr) and eta_min > lr:
            raise ValueError(f"lr_schedule eta_min={eta_min!r} is above lr={lr!r}: the "
                             "cosine schedule would raise the learning rate instead of "
                             "decaying it; give eta_min <= lr")
        _try_schedule(lr_schedule, *parsed, max_epochs, lr)
    return parsed


def _default(policy, key):
    """The default of ``key`` in the torch scheduler of ``policy`` (None if unknown)."""
    if policy == "cosine":
        return None
    cls = torch_lr.ReduceLROnPlateau if policy == "plateau" else torch_lr.OneCycleLR
    param = inspect.signature(cls).parameters.get(key)
    return None if param is None else param.default


def _parse(lr_schedule, max_epochs):
    """``(policy, kwargs)`` of ``lr_schedule`` or None, with the checks that need no
    torch scheduler."""
    if lr_schedule is None:
        return None
    if isinstance(lr_schedule, str):
        policy, kwargs = lr_schedule, {}
    else:
        kwargs = dict(lr_schedule)
        policy = kwargs.pop("policy", "plateau")
    if policy not in SCHEDULES:
        raise ValueError(f"lr_schedule={policy!r} is not a known schedule; known: "
                         f"{list(SCHEDULES)}{did_you_mean(policy, SCHEDULES)}")
    allowed = _allowed_args(policy)
    for key in kwargs:
        if key not in allowed:
            raise ValueError(
                f"lr_schedule {policy!r} has no argument {key!r}; known: {sorted(allowed)}"
                f"{did_you_mean(key, allowed)}")
    flags = [k for k, v in kwargs.items()
             if isinstance(v, (bool, np.bool_)) and not isinstance(_default(policy, k), bool)]
    if flags:  # torch reads patience=True as 1
        raise ValueError(f"lr_schedule {flags[0]}={kwargs[flags[0]]!r} must be a number, not "
                         "a boolean")
    warmup = kwargs.get("warmup_epochs", 0)
    if not (is_finite_number(warmup) and 0 <= warmup < max_epochs):
        raise ValueError(f"lr_schedule warmup_epochs={warmup!r} must be >= 0 and below "
                         f"max_epochs={max_epochs}")
    eta_min = kwargs.get("eta_min", 0.0)
    if not (is_finite_number(eta_min) and eta_min >= 0):  # torch would train at a negative lr
        raise ValueError(f"lr_schedule eta_min={eta_min!r} must be a number >= 0: the "
                         "learning rate the cosine decays to")
    threshold = kwargs.get("threshold", 0.0)
    if policy == "plateau" and is_finite_number(threshold) and threshold < 0:
        raise ValueError(f"lr_schedule threshold={threshold!r} must be >= 0: a negative "
                         "threshold counts a worse loss as an improvement, so the rate is "
                         "never cut")
    if policy == "plateau" and kwargs.get("mode", "min") != "min":
        raise ValueError(f"lr_schedule mode={kwargs['mode']!r}: the plateau schedule watches "
                         "the loss, where lower is better, so mode must be 'min' (mode="
                         "'max' would cut the learning rate while the loss improves)")
    return policy, kwargs


def _try_schedule(lr_schedule, policy, kwargs, max_epochs, lr):
    """Build the torch scheduler on a one-parameter optimizer and step it twice: a value
    torch refuses or cannot compare is then an error naming ``lr_schedule`` before
    training, not a torch traceback after the first epoch."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    try:
        if policy == "plateau":
            scheduler = torch_lr.ReduceLROnPlateau(optimizer, **kwargs)
            for loss in (1.0, 1.0):
                scheduler.step(loss)
        else:
            build = _cosine if policy == "cosine" else _onecycle
            scheduler = build(optimizer, 2, max_epochs, **kwargs)
            for _ in range(2):
                optimizer.step()
                scheduler.step()
    except (TypeError, ValueError, ZeroDivisionError) as exc:
        raise ValueError(f"lr_schedule={lr_schedule!r} is not valid for torch's {policy!r} "
                         f"scheduler: {exc}") from exc


def _cosine(optimizer, steps_per_epoch, n_epochs, warmup_epochs=0, eta_min=0.0):
    total = n_epochs * steps_per_epoch
    # at least one batch of cosine decay, whatever the rounding of a fractional warm-up
    warm = min(round(warmup_epochs * steps_per_epoch), total - 1)
    cosine = torch_lr.CosineAnnealingLR(optimizer, T_max=total - warm, eta_min=eta_min)
    if warm == 0:
        return cosine
    # first warm-up batch at lr / (warm + 1), reaching lr after `warm` batches
    linear = torch_lr.LinearLR(optimizer, start_factor=1 / (warm + 1), total_iters=warm)
    return torch_lr.SequentialLR(optimizer, [linear, cosine], milestones=[warm])


def _onecycle(optimizer, steps_per_epoch, n_epochs, **kwargs):
    return torch_lr.OneCycleLR(optimizer, max_lr=[g["lr"] for g in optimizer.param_groups],
                               total_steps=n_epochs * steps_per_epoch, **kwargs)


class _PerBatchLR(LRScheduler):
    """skorch ``LRScheduler`` stepped after every training batch, whose torch scheduler
    ``policy(optimizer, steps_per_epoch, n_epochs, **kwargs)`` is built at the first epoch,
    when the training split and so the number of batches per epoch are known."""

    def __init__(self, policy, event_name="event_lr", **kwargs):
        super().__init__(policy=policy, event_name=event_name, step_every="batch", **kwargs)

    def on_train_begin(self, net, **kwargs):
        self.batch_idx_ = 0
        self.lr_scheduler_ = None

    def on_epoch_begin(self, net, dataset_train=None, **kwargs):
        if self.lr_scheduler_ is None:
            steps = len(net.get_iterator(dataset_train, training=True))
            self.lr_scheduler_ = self.policy_(net.optimizer_, steps, net.max_epochs,
                                              **self.kwargs)


def make_lr_scheduler(lr_schedule, max_epochs, monitor):
    """The skorch callback for ``lr_schedule`` (see the module docstring), or None; fit
    has already run :func:`check_lr_schedule` on it."""
    checked = _parse(lr_schedule, max_epochs)
    if checked is None:
        return None
    policy, kwargs = checked
    if policy == "plateau":
        return LRScheduler(policy=torch_lr.ReduceLROnPlateau, monitor=monitor, **kwargs)
    return _PerBatchLR(_cosine if policy == "cosine" else _onecycle, **kwargs)
