"""Learning-rate schedules of :class:`~cxr_estimators.CXRClassifier` (``lr_schedule``).

A schedule name (or a dict with a ``"policy"`` key and the scheduler's arguments) becomes
a skorch :class:`~skorch.callbacks.LRScheduler` over torch's own schedulers:

* ``"plateau"``: :class:`torch.optim.lr_scheduler.ReduceLROnPlateau` on the monitored
  loss, stepped every epoch (a dict without ``"policy"`` still means this one);
* ``"cosine"``: :class:`~torch.optim.lr_scheduler.CosineAnnealingLR` from ``lr`` to
  ``eta_min`` (default 0) over all batches of ``max_epochs`` epochs, after an optional
  linear warm-up of ``warmup_epochs`` (:class:`~torch.optim.lr_scheduler.LinearLR`, chained
  by :class:`~torch.optim.lr_scheduler.SequentialLR`);
* ``"onecycle"``: :class:`~torch.optim.lr_scheduler.OneCycleLR` with peak ``lr`` over all
  batches of ``max_epochs`` epochs.

Written here by hand: skorch's ``LRScheduler`` builds its torch scheduler when training
begins, before the validation split exists, so it cannot tell a per-batch schedule how
many batches an epoch has. :class:`_PerBatchLR` builds it at the first epoch instead,
from the length of the training DataLoader. Early stopping may end training before the
schedule does (the learning rate then never reaches its end value).
"""

from __future__ import annotations

import difflib
import inspect

from skorch.callbacks import LRScheduler
from torch.optim import lr_scheduler as torch_lr

__all__ = ["SCHEDULES", "make_lr_scheduler", "check_lr_schedule"]

SCHEDULES = ("plateau", "cosine", "onecycle")

# The arguments the package sets itself, per schedule; the user may set the others.
_OWN_ARGS = {
    "plateau": {"optimizer"},
    "onecycle": {"optimizer", "max_lr", "total_steps", "epochs", "steps_per_epoch",
                 "last_epoch"},
}
_COSINE_ARGS = ("warmup_epochs", "eta_min")


def _did_you_mean(value, options):
    close = difflib.get_close_matches(str(value), [str(o) for o in options], n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _allowed_args(policy):
    if policy == "cosine":
        return set(_COSINE_ARGS)
    cls = torch_lr.ReduceLROnPlateau if policy == "plateau" else torch_lr.OneCycleLR
    return set(inspect.signature(cls).parameters) - _OWN_ARGS[policy]


def check_lr_schedule(lr_schedule, max_epochs):
    """Validate ``lr_schedule``; return ``(policy, kwargs)`` or None.

    Raises ValueError naming an unknown schedule or argument (with the closest valid
    name) and a warm-up that does not leave at least one epoch of cosine decay.
    """
    if lr_schedule is None:
        return None
    if isinstance(lr_schedule, str):
        policy, kwargs = lr_schedule, {}
    else:
        kwargs = dict(lr_schedule)
        policy = kwargs.pop("policy", "plateau")
    if policy not in SCHEDULES:
        raise ValueError(f"lr_schedule={policy!r} is not a known schedule; known: "
                         f"{list(SCHEDULES)}{_did_you_mean(policy, SCHEDULES)}")
    allowed = _allowed_args(policy)
    for key in kwargs:
        if key not in allowed:
            raise ValueError(
                f"lr_schedule {policy!r} has no argument {key!r}; known: {sorted(allowed)}"
                f"{_did_you_mean(key, allowed)}")
    warmup = kwargs.get("warmup_epochs", 0)
    if not 0 <= warmup < max_epochs:
        raise ValueError(f"lr_schedule warmup_epochs={warmup!r} must be >= 0 and below "
                         f"max_epochs={max_epochs}")
    return policy, kwargs


def _cosine(optimizer, steps_per_epoch, n_epochs, warmup_epochs=0, eta_min=0.0):
    total = n_epochs * steps_per_epoch
    warm = round(warmup_epochs * steps_per_epoch)
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
    """The skorch callback for ``lr_schedule`` (see the module docstring), or None."""
    checked = check_lr_schedule(lr_schedule, max_epochs)
    if checked is None:
        return None
    policy, kwargs = checked
    if policy == "plateau":
        return LRScheduler(policy=torch_lr.ReduceLROnPlateau, monitor=monitor, **kwargs)
    return _PerBatchLR(_cosine if policy == "cosine" else _onecycle, **kwargs)
