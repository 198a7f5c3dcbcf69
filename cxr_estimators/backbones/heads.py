"""The head: how the backbone's feature map becomes class scores.

``pooling`` turns the trunk's output into a vector: None keeps what the torchvision model
does before its last ``nn.Linear`` (global average pooling for most models; VGG's and
MobileNetV3's pre-logit dense layers included); "avg" / "max" pool the *conv map* (the
input of the model's own global pooling) globally; "flatten" keeps every position of it,
as Keras' ``Flatten()`` on a model's conv base does. Then one or more dense layers, each
``Linear → [BatchNorm1d] → ReLU → Dropout``, with optional dropout before the first, and
the output ``Linear``. Written here by hand, because neither torchvision nor skorch builds
heads; the pooling and layers themselves are torch's.

Also here: which parameters the optimizer's weight decay reaches
(``weight_decay_scope``).
"""

from __future__ import annotations

import numbers
from collections import OrderedDict

import torch
from torch import nn

__all__ = ["POOLINGS", "conv_map_trunk", "make_head", "make_pool", "decay_param_groups"]

#: Values of ``pooling`` besides None (the backbone's own).
POOLINGS = ("avg", "max", "flatten")

_GLOBAL_POOLS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


class _InceptionInput(nn.Module):
    """torchvision's ``Inception3._transform_input`` / ``GoogLeNet._transform_input``
    (ImageNet-normalised input re-normalised the way Google's weights expect), for a
    trunk cut out of such a model."""

    def forward(self, x):
        mean = x.new_tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = x.new_tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        return (x * std + mean - 0.5) / 0.5


def conv_map_trunk(model, classifier="fc"):
    """The part of a classification model that computes its last feature map.

    An ``nn.Sequential`` of the model's top-level children up to (not including) its
    global pooling or, in models that pool functionally (densenet, mobilenet_v2,
    shufflenet, mnasnet), the child named ``classifier`` (the one that held the last
    ``nn.Linear``). Children keep their names (``layer4``, ``features``), so Grad-CAM layer
    names and checkpoint keys are those of the full model. All torchvision CNNs and the
    small CNNs call their children in this order; densenet's ReLU after ``features``
    (functional in its ``forward``) and inception's input transform are added. Vision
    transformers (no feature map) are refused.
    """
    if type(model).__name__ == "VisionTransformer":
        raise ValueError(f"backbone {type(model).__name__!r} has no convolutional feature "
                         "map before its classifier; use pooling=None")
    kept = OrderedDict()
    if getattr(model, "transform_input", False):
        kept["transform_input"] = _InceptionInput()
    for name, child in model.named_children():
        if isinstance(child, _GLOBAL_POOLS) or name == classifier:
            break
        kept[name] = child
    if type(model).__name__ == "DenseNet":
        kept["relu"] = nn.ReLU()  # not in place: Grad-CAM hooks features
    if any(isinstance(c, (nn.ModuleList, nn.ModuleDict)) for c in kept.values()):
        # its forward loops over blocks itself (maxvit): no sequence of children to cut
        raise ValueError(f"backbone {type(model).__name__!r} does not call its blocks in "
                         "sequence, so its feature map cannot be cut out; use pooling=None")
    return nn.Sequential(kept)


def probe_map_shape(trunk, channels, image_size, backbone):
    """``(C, H, W)`` (or whatever the trunk gives) for one image of ``image_size``."""
    was_training = trunk.training
    trunk.eval()
    try:
        with torch.no_grad():
            out = trunk(torch.zeros(1, channels, *image_size))
    except RuntimeError as exc:
        raise ValueError(f"backbone {backbone!r} cannot compute its feature map for "
                         f"{tuple(image_size)} images: {exc}") from exc
    finally:
        trunk.train(was_training)
    return tuple(out.shape[1:])


class _GlobalPool(nn.Module):
    def __init__(self, pooling):
        super().__init__()
        self.pooling = pooling
        self.pool = nn.AdaptiveAvgPool2d(1) if pooling == "avg" else nn.AdaptiveMaxPool2d(1)

    def forward(self, x):
        return torch.flatten(self.pool(x), 1)

    def extra_repr(self):
        return f"pooling={self.pooling!r}"


def make_pool(pooling):
    """Module from the conv map ``(n, C, H, W)`` to ``(n, d)``; identity for None."""
    if pooling is None:
        return nn.Identity()
    if pooling == "flatten":
        return nn.Flatten()
    if pooling in ("avg", "max"):
        return _GlobalPool(pooling)
    raise ValueError(f"pooling={pooling!r} is not one of {[None, *POOLINGS]}")


def check_map(pooling, map_shape, backbone):
    """Refuse pooling a map that is not one (``(C, H, W)``, from a probe forward pass)."""
    if len(map_shape) != 3:
        raise ValueError(f"pooling={pooling!r}: backbone {backbone!r} gives features of "
                         f"shape {tuple(map_shape)}, not a (C, H, W) map; use pooling=None")
    if pooling == "flatten" and tuple(map_shape[1:]) == (1, 1):
        raise ValueError(
            f"pooling='flatten': backbone {backbone!r} reduces these images to a 1 × 1 "
            f"feature map ({map_shape[0]} channels), so flattening is global pooling; use "
            "larger images or pooling='avg'")


def _widths(neurons):
    widths = (neurons,) if isinstance(neurons, numbers.Integral) else tuple(neurons)
    if not widths or not all(isinstance(w, numbers.Integral) and not isinstance(w, bool)
                             and w >= 1 for w in widths):
        raise ValueError(f"neurons must be an int >= 1 or a non-empty tuple of them; got "
                         f"{neurons!r}")
    return widths


#: Most weights a head may have (1 GiB of float32): each width of ``neurons`` is bounded,
#: but their products are not (``neurons=(65536, 65536)`` is a 16 GiB layer).
MAX_HEAD_PARAMETERS = 2**28


def check_head_size(n_features, n_classes, widths, neurons):
    """Refuse, before any allocation, a head with more than :data:`MAX_HEAD_PARAMETERS`
    weights (fit builds it, and so does :func:`cxr_estimators.load` from a file's
    header)."""
    sizes = (int(n_features),) + tuple(int(w) for w in widths) + (int(n_classes),)
    count = sum((a + 1) * b for a, b in zip(sizes, sizes[1:]))
    if count > MAX_HEAD_PARAMETERS:
        raise ValueError(
            f"neurons={neurons!r} on {n_features} features makes a head of {count:,} "
            f"weights ({count * 4 / 2**30:.1f} GiB of float32), above the limit of "
            f"{MAX_HEAD_PARAMETERS:,}; use narrower layers")


#: Values of ``head_order``: where BatchNorm sits in a dense layer of the head.
HEAD_ORDERS = ("bn_act", "act_bn")


def make_head(n_features, n_classes, neurons=128, dropout=0.5, *, batch_norm=False,
              input_dropout=0.0, order="bn_act"):
    """``[Dropout(input_dropout)] → (Linear → [BatchNorm1d] → ReLU → Dropout)`` per entry
    of ``neurons`` ``→ Linear(n_classes)``. Defaults give today's
    ``Linear → ReLU → Dropout → Linear`` with the same layer indices.

    ``order`` (with ``batch_norm``): "bn_act" normalises before the ReLU (Keras'
    ``Dense → BatchNormalization → Activation("relu")``); "act_bn" after it (Keras'
    ``Dense(activation="relu") → BatchNormalization``, the way most Keras scripts write
    it). The layer indices are the same in both orders: ``head.0`` is the first Linear."""
    if order not in HEAD_ORDERS:
        raise ValueError(f"head_order={order!r} is not one of {list(HEAD_ORDERS)}")
    widths = _widths(neurons)
    check_head_size(n_features, n_classes, widths, neurons)
    layers = []
    if input_dropout:
        layers.append(nn.Dropout(input_dropout))
    width = n_features
    for out in widths:
        layers.append(nn.Linear(width, out))
        norm_act = [nn.BatchNorm1d(out)] if batch_norm else []
        norm_act.insert(0 if order == "act_bn" else len(norm_act), nn.ReLU(inplace=True))
        layers += [*norm_act, nn.Dropout(dropout)]
        width = out
    layers.append(nn.Linear(width, n_classes))
    return nn.Sequential(*layers)


def decay_param_groups(module, scope):
    """skorch ``optimizer__param_groups`` for ``weight_decay_scope``.

    "all": None (the optimizer's ``weight_decay`` applies to every parameter, as torch
    does). "head": weight decay only on the weights of the head's ``nn.Linear`` layers
    (the Keras ``kernel_regularizer`` on dense layers); every other parameter (trunk,
    biases, BatchNorm) gets ``weight_decay=0``. A list of fnmatch patterns of parameter
    names (``"head.0.weight"``, ``"trunk.features.[1-5].0.weight"``): decay only on the
    parameters they match; a pattern matching no parameter is an error naming it.
    ``module``: a :class:`~cxr_estimators.backbones.CXRNet`, or its bare head
    (feature-cache training: the trunk is frozen, so trunk patterns have nothing to
    decay there).
    """
    if isinstance(scope, str) and scope == "all":
        return None
    head = getattr(module, "head", module)
    prefix = "head." if head is not module else ""
    if isinstance(scope, str):  # "head"
        names = [f"{prefix}{name}.weight" for name, layer in head.named_modules()
                 if isinstance(layer, nn.Linear)]
    else:
        names = _matched_patterns(module, prefix, scope)
    # skorch matches fnmatch patterns in order; the rest falls through to "*"
    return [(name, {}) for name in names] + [("*", {"weight_decay": 0.0})]


def _matched_patterns(module, prefix, patterns):
    """The patterns as names in ``module``; ValueError for one matching no parameter."""
    import fnmatch

    from .._validation import did_you_mean

    if isinstance(patterns, (bytes, dict)) or not all(isinstance(p, str) for p in patterns):
        raise ValueError(f"weight_decay_scope must be 'all', 'head' or a list of parameter-"
                         f"name patterns (str); got {patterns!r}")
    names = [n for n, _ in module.named_parameters()]
    kept = []
    for pattern in patterns:
        local = pattern
        if not prefix:  # a bare head: "head.x" is "x" here, trunk patterns have no target
            if pattern.startswith("trunk."):
                continue
            local = pattern[len("head."):] if pattern.startswith("head.") else pattern
        if not fnmatch.filter(names, local):
            full = [f"{'' if prefix else 'head.'}{n}" for n in names]
            raise ValueError(
                f"weight_decay_scope pattern {pattern!r} matches no parameter of the model"
                f"{did_you_mean(pattern, full)}. Parameter names look like {full[:2]} ... "
                f"{full[-2:]} (see [n for n, _ in clf.module_.named_parameters()])")
        kept.append(local)
    return kept
