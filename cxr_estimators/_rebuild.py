"""Whether :func:`cxr_estimators.load` can rebuild a fitted ``CXRClassifier`` from its
parameters as they are now (:func:`check_rebuildable`, run by :func:`cxr_estimators.save`).

``load`` builds the network from the saved parameters (``_initialize_net``, the code
``fit`` uses) and loads the fitted weights into it strictly. After ``set_params`` changed
a parameter that shapes the network and no fit succeeded since (a failed refit keeps the
old model), that file would be unreadable. So ``save`` rebuilds the net the same way (on
the CPU, untrained, torch's global RNG untouched) and compares tensor names and shapes,
layer types and the runtime precision/layout with the fitted one, naming the parameters
whose fitted value differs. Written here: no library checks an sklearn estimator's
parameters against the torch module it fitted.
"""

from __future__ import annotations

import copy
import numbers
import warnings

import torch
from torch import nn

from . import _runtime
from ._training import OPTIMIZERS
from .backbones import DeepCNN, SimpleCNN

__all__ = ["check_rebuildable"]

#: ``CXRClassifier`` parameters that shape the network load() rebuilds (listed when no
#: single one can be pinned down). Any parameter that makes building the net fail counts
#: too (``optimizer_kwargs``, ``class_weight``, ``freeze``, ...).
_NETWORK_PARAMS = ("backbone", "backbone_kwargs", "pooling", "neurons", "head_batch_norm",
                   "head_order", "input_dropout", "precision")
_SMALL_CNN_NAMES = {SimpleCNN: "simple_cnn", DeepCNN: "deep_cnn"}


def check_rebuildable(est, where):
    """Refuse a fitted ``CXRClassifier`` whose network load() could not rebuild.

    load() builds the network from the saved parameters (``_initialize_net``) and loads
    the fitted weights into it strictly, so the file is readable only if the parameters
    as they are now still build the fitted network: not so after ``set_params`` changed
    one that shapes it and no fit succeeded since (a failed refit keeps the old model)."""
    try:
        reason, built = _network_difference(est), True
    except Exception as exc:  # noqa: BLE001 - what building it raises, load() would too
        reason = f"building the network from them fails ({type(exc).__name__}: {exc})"
        built = False
    if reason is None:
        return
    changed = _changed_params(est)
    if not changed and built:  # a difference no parameter shows the fitted value of
        reason += ("; the parameters that shape the network are now "
                   + ", ".join(f"{name}={getattr(est, name)!r}" for name in _NETWORK_PARAMS))
    raise ValueError(
        f"cannot save {where}: its parameters changed (set_params) since its last "
        f"successful fit{': ' + '; '.join(changed) if changed else ''}, and load() "
        f"rebuilds the model from them: {reason}. Set them back to the fitted values or "
        "refit before saving; no file was written")


def _rebuilt_net(est):
    """The net load() would build for ``est`` now, on the CPU (the network's structure does
    not depend on the device), leaving ``est`` and torch's global RNG as they were."""
    probe = copy.copy(est)
    probe.device_ = "cpu"
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # load() tells, not this rehearsal
        return probe._initialize_net()


def _network_difference(est):
    """How the network load() would build from ``est``'s parameters differs from the
    fitted one (a sentence), or None."""
    fitted, rebuilt = est.net_.module_, _rebuilt_net(est).module_
    return (_first_difference("tensor", _tensor_shapes(fitted), _tensor_shapes(rebuilt))
            or _first_difference("layer", _layer_types(fitted), _layer_types(rebuilt))
            or _runtime_difference(est))


def _tensor_shapes(module):
    """What a strict ``load_state_dict`` checks."""
    return {name: f"of shape {tuple(t.shape)}" for name, t in module.state_dict().items()}


def _layer_types(module):
    """Each layer's type: a different pooling has no weights but other outputs. The
    train-time augmenter is left out: it never runs in prediction and holds no weights."""
    return {name: type(layer).__name__ for name, layer in module.named_modules()
            if name.split(".")[0] != "augment"}


def _first_difference(what, fitted, rebuilt):
    for name in [*fitted, *(name for name in rebuilt if name not in fitted)]:
        if fitted.get(name) != rebuilt.get(name):
            return (f"{what} {name!r} is {fitted.get(name, 'absent')} in the fitted network "
                    f"but {rebuilt.get(name, 'absent')} in the one they build")
    return None


def _runtime_difference(est):
    """The fitted net's precision and layout vs those load() gives it on its device (None
    where that device is missing here: load() moves the model to the CPU anyway)."""
    kind = torch.device(est.device_).type
    if not (kind == "cpu" or kind == "cuda" and torch.cuda.is_available()):
        return None
    now = _runtime.resolve_runtime(est.backbone, est.device_, est.precision)
    fitted = (est.net_.amp, est.net_.channels_last)
    if fitted == (now.amp, now.channels_last):
        return None
    return (f"with precision={est.precision!r} it would predict "
            f"{_runtime_words(now.amp, now.channels_last)}, the fitted model predicts "
            f"{_runtime_words(*fitted)}")


def _runtime_words(amp, channels_last):
    return ("under bf16 autocast" if amp else "in float32") + (
        " (channels_last)" if channels_last else "")


def _fitted_values(net):
    """The values of the parameters that built the fitted ``net`` that it shows, in the
    form :func:`_as_fitted` gives the current ones."""
    module = net.module_
    head = list(module.head)
    widths = tuple(layer.out_features for layer in head if isinstance(layer, nn.Linear))
    skorch_params = net.get_params(deep=False)
    shown = {
        "pooling": getattr(module.pool, "pooling",
                           "flatten" if isinstance(module.pool, nn.Flatten) else None),
        "neurons": widths[:-1],  # the last Linear gives the class scores
        "head_batch_norm": any(isinstance(layer, nn.BatchNorm1d) for layer in head),
        "input_dropout": head[0].p if isinstance(head[0], nn.Dropout) else 0.0,
        "optimizer": next((name for name, cls in OPTIMIZERS.items()
                           if skorch_params.get("optimizer") is cls), None),
        "optimizer_kwargs": {key.partition("__")[2]: value
                             for key, value in skorch_params.items()
                             if key.startswith("optimizer__") and key not in
                             ("optimizer__weight_decay", "optimizer__param_groups")},
    }
    if type(module.trunk) in _SMALL_CNN_NAMES:  # a torchvision name is not in the net
        shown["backbone"] = _SMALL_CNN_NAMES[type(module.trunk)]
    return shown


def _as_fitted(name, value):
    """Parameter ``name``'s ``value`` in the form :func:`_fitted_values` gives it."""
    if name == "neurons":
        return (value,) if isinstance(value, numbers.Integral) else tuple(value)
    if name == "optimizer_kwargs":
        return dict(value or {})
    if name == "input_dropout":
        return float(value)
    return value


def _changed_params(est):
    """``"neurons: 128 (fitted) vs 4 (now)"`` for each parameter whose value the fitted
    network shows and that differs now."""
    changed = []
    for name, fitted in _fitted_values(est.net_).items():
        now = getattr(est, name)
        if fitted != _as_fitted(name, now):
            if name == "neurons" and len(fitted) == 1:
                fitted = fitted[0]
            changed.append(f"{name}: {fitted!r} (fitted) vs {now!r} (now)")
    return changed
