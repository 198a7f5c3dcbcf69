"""Weight averaging of :class:`~cxr_estimators.CXRClassifier` (``average_weights``).

The averages are torch's own (:mod:`torch.optim.swa_utils`): an
:class:`~torch.optim.swa_utils.AveragedModel` that is either an exponential moving average
of the weights after every training batch (``"ema"``, BatchNorm statistics averaged along
with them; torch's EMA update with the decay warmed up as in TensorFlow's
``ExponentialMovingAverage(num_updates=)``: ``min(decay, (1 + t) / (10 + t))`` at the
t-th update, so a short fit is not dominated by its random initial weights) or the equal-weight average of the weights at the end of each epoch from a
start epoch on (``"swa"``, stochastic weight averaging), whose BatchNorm statistics are
then recomputed on the training split with :func:`~torch.optim.swa_utils.update_bn`.
At the end of training the averaged weights are copied into the trained module: they are
the fitted model.

Written here by hand: the skorch callback that drives the averaging, the decay warm-up,
and keeping the statistics of *frozen* BatchNorm layers (``freeze=``), which ``update_bn`` would reset
and, as they stay in inference mode, never recompute.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import warnings

import torch
from skorch.callbacks import Callback
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn, update_bn

from ._validation import is_finite_number

__all__ = ["WeightAveraging", "check_average_weights"]

METHODS = ("ema", "swa")
_DEFAULTS = {"ema": {"decay": 0.99}, "swa": {"start": 0.75}}


def check_average_weights(average_weights, max_epochs):
    """Validate ``average_weights``; return ``(method, options)`` or None.

    ``"ema"`` / ``"swa"``, or a dict ``{"method": "ema", "decay": 0.995}`` /
    ``{"method": "swa", "start": 0.5}`` (``start``: a fraction of ``max_epochs``, or an
    int epoch number from 1). Averaging needs at least two epochs.
    """
    if average_weights is None:
        return None
    options = ({"method": average_weights} if isinstance(average_weights, str)
               else dict(average_weights))
    method = options.pop("method", None)
    if method not in METHODS:
        raise ValueError(f"average_weights method {method!r} is not one of {list(METHODS)}")
    unknown = set(options) - set(_DEFAULTS[method])
    if unknown:
        raise ValueError(f"average_weights {method!r} has no option {sorted(unknown)}; "
                         f"known: {sorted(_DEFAULTS[method])}")
    if max_epochs < 2:
        raise ValueError(f"average_weights={average_weights!r} averages weights across "
                         f"epochs and needs max_epochs >= 2; got max_epochs={max_epochs}")
    options = {**_DEFAULTS[method], **options}
    if method == "ema" and not (is_finite_number(options["decay"]) and 0 < options["decay"] < 1):
        raise ValueError(f"average_weights decay={options['decay']!r} must be a number in "
                         "(0, 1)")
    if method == "swa":
        start = options["start"]
        if isinstance(start, numbers.Integral) and not isinstance(start, bool):
            if not 1 <= start <= max_epochs:
                raise ValueError(
                    f"average_weights start={start!r} is an epoch number (an int) and must "
                    f"be in [1, {max_epochs}]; for a fraction of max_epochs give a float in "
                    "[0, 1), e.g. 0.0")
        elif not (is_finite_number(start) and 0 <= start < 1):
            raise ValueError(f"average_weights start={start!r} must be a fraction in [0, 1) "
                             f"of max_epochs or an epoch number in [1, {max_epochs}]")
    return method, options


def _ema_update(decay):
    """``multi_avg_fn`` of torch's EMA with the decay warmed up over the first updates."""
    def update(averaged, current, n_averaged):
        t = float(n_averaged)
        get_ema_multi_avg_fn(min(decay, (1 + t) / (10 + t)))(averaged, current, n_averaged)
    return update


def _swa_start_epoch(start, max_epochs):
    if isinstance(start, numbers.Integral):
        return int(start)
    return max(1, math.ceil(start * max_epochs))


class WeightAveraging(Callback):
    """skorch callback: EMA or SWA of the module's weights, which replace the trained
    weights at the end of training.

    Parameters
    ----------
    method : {"ema", "swa"}
    decay : float, default=0.99
        EMA: weight of the running average at each batch, once warmed up: the t-th update
        uses ``min(decay, (1 + t) / (10 + t))`` (``"ema"`` only).
    start : float or int, default=0.75
        SWA: first epoch whose end-of-epoch weights enter the average, as a fraction of
        ``max_epochs`` or an epoch number (``"swa"`` only).

    Put it after early stopping in the callback list: early stopping restores its best
    weights at the end of training, and the averaged weights must replace those.
    """

    def __init__(self, method="ema", decay=0.99, start=0.75):
        self.method = method
        self.decay = decay
        self.start = start

    def initialize(self):
        self.averaged_ = None
        self.n_averaged_ = 0
        self.dataset_train_ = None
        return self

    def on_train_begin(self, net, **kwargs):
        module = net.module_
        if self.method == "ema":
            self.averaged_ = AveragedModel(
                module, multi_avg_fn=_ema_update(self.decay), use_buffers=True)
        else:
            self.averaged_ = AveragedModel(module)
        self.start_epoch_ = _swa_start_epoch(self.start, net.max_epochs)
        self.n_averaged_ = 0

    def on_epoch_begin(self, net, dataset_train=None, **kwargs):
        self.dataset_train_ = dataset_train

    def on_batch_end(self, net, training=False, **kwargs):
        if training and self.method == "ema":
            self._update(net)

    def on_epoch_end(self, net, **kwargs):
        if self.method == "swa" and len(net.history) >= self.start_epoch_:
            self._update(net)

    def _update(self, net):
        self.averaged_.update_parameters(net.module_)
        self.n_averaged_ += 1

    def on_train_end(self, net, **kwargs):
        try:
            if self.n_averaged_ == 0:
                warnings.warn(
                    f"average_weights={self.method!r}: no weights were averaged (training "
                    f"stopped after epoch {len(net.history)}, before SWA's start epoch "
                    f"{self.start_epoch_}); the fitted weights are the trained ones",
                    UserWarning, stacklevel=2)
                return
            if self.method == "swa":
                self._recompute_batch_norm(net)
            net.module_.load_state_dict(self.averaged_.module.state_dict())
        finally:
            self.averaged_ = None  # a second copy of the model: not kept in the pickle
            self.dataset_train_ = None

    def _recompute_batch_norm(self, net):
        """``update_bn`` on the training split, keeping frozen BatchNorm layers as trained."""
        averaged = self.averaged_.module
        # SWA averages parameters only: start from the trained model's buffers
        for own, trained in zip(averaged.buffers(), net.module_.buffers()):
            own.copy_(trained)
        averaged.train()  # frozen blocks stay in eval mode (CXRNet.train)
        frozen = {name: {k: v.clone() for k, v in m.state_dict().items()}
                  for name, m in averaged.named_modules()
                  if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and not m.training}
        loader = net.get_iterator(self.dataset_train_, training=True)
        rng = getattr(net, "fit_rng_", None)  # dropout in train mode: the fit's stream
        with rng.global_stream() if rng is not None else contextlib.nullcontext():
            update_bn(loader, self.averaged_, device=net.device)
        for name, state in frozen.items():
            averaged.get_submodule(name).load_state_dict(state)
