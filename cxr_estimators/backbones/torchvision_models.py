"""torchvision's classification models as backbones.

Models and weights come from torchvision's own registry
(:func:`torchvision.models.get_model`, :func:`torchvision.models.get_model_weights`), and
the weights' ``transforms()`` gives their normalisation, input size and resize. Written
here by hand, because torchvision does not expose them: cutting the classifier off any
model (the *last* ``nn.Linear`` becomes ``nn.Identity``; its ``in_features`` is the
feature width), the blocks ``freeze=k`` counts (:func:`trunk_blocks`), the Grad-CAM
layers (each block, or in a VGG-style stack the activation before its final pooling),
and the offline check of the weights file (:class:`~.weights.WeightsUnavailableError`).
"""

from __future__ import annotations

import os

import torch
import torchvision
from torch import nn

from .heads import conv_map_trunk
from .registry import FAMILIES, Trunk
from .weights import load_local_weights, local_weights_path, looks_like_path, unavailable

__all__ = ["names", "build", "trunk_blocks", "cam_layer", "find_last_conv"]

_FAMILY = next(f for f in FAMILIES if f.name == "torchvision")


def names():
    """torchvision's classification models."""
    return sorted(torchvision.models.list_models(module=torchvision.models))


def trunk_blocks(trunk):
    """The trunk's blocks, in forward order, for ``freeze=k``.

    The top-level children that hold parameters; while there is only one such child (a
    wrapper like densenet's ``features``), descend into it."""
    module = trunk
    while True:
        blocks = [m for m in module.children() if any(True for _ in m.parameters())]
        if len(blocks) != 1:
            return blocks
        module = blocks[0]


def block_names(trunk):
    """Dotted names (in ``trunk``) of :func:`trunk_blocks`."""
    names_of = {m: n for n, m in trunk.named_modules()}
    return tuple(names_of[b] for b in trunk_blocks(trunk))


_POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveMaxPool2d, nn.AdaptiveAvgPool2d)


def cam_layer(block, name):
    """The Grad-CAM layer of a block: the block itself, except in a flat VGG-style stack
    (an ``nn.Sequential`` holding several ``nn.Conv2d`` and ending in pooling), where it
    is the activation after the last convolution: that final pooling halves the map (1x1
    for vgg at 32 px) and adds nothing to explain."""
    layers = list(block.named_children()) if isinstance(block, nn.Sequential) else []
    convs = [i for i, (_, layer) in enumerate(layers) if isinstance(layer, nn.Conv2d)]
    if len(convs) < 2 or not isinstance(layers[-1][1], _POOLS):
        return name
    last = convs[-1]
    while last + 1 < len(layers) and not isinstance(layers[last + 1][1], _POOLS):
        last += 1  # past BatchNorm to the activation
    return f"{name}.{layers[last][0]}"


def cam_layers(trunk):
    """:func:`cam_layer` of each of :func:`trunk_blocks`, in forward order."""
    names_of = {m: n for n, m in trunk.named_modules()}
    return tuple(cam_layer(b, names_of[b]) for b in trunk_blocks(trunk))


def find_last_conv(module):
    """Dotted name of the last ``nn.Conv2d`` in a model (in ``named_modules`` order)."""
    last = None
    for name, sub in module.named_modules():
        if isinstance(sub, nn.Conv2d):
            last = name
    if last is None:
        raise ValueError(f"{type(module).__name__} has no nn.Conv2d layer")
    return last


def strip_classifier(model):
    """Replace the last ``nn.Linear`` of a model by ``nn.Identity``; return its
    ``in_features`` and record the top-level child that held it (``classifier_name``)."""
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = name
    if last is None:
        raise ValueError(
            f"backbone {type(model).__name__!r} has no final nn.Linear classifier to replace; "
            "use a classification model such as 'resnet18'")
    parent_name, _, attr = last.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    n_features = getattr(parent, attr).in_features
    setattr(parent, attr, nn.Identity())
    model.classifier_name = last.split(".")[0]
    return n_features


def resolve_weights(backbone, weights):
    """``weights`` as (torchvision Weights entry or None, local path or None)."""
    if weights is None:
        return None, None
    enum = torchvision.models.get_model_weights(backbone)
    if looks_like_path(weights, ["DEFAULT"] + [w.name for w in enum]):
        return None, local_weights_path(weights)
    if not isinstance(weights, str):
        raise ValueError(f"weights must be None, a weights name or a file path; got {weights!r}")
    try:
        return (enum.DEFAULT if weights == "DEFAULT" else enum[weights]), None
    except KeyError:
        known = ["DEFAULT"] + [w.name for w in enum]
        raise ValueError(f"weights={weights!r} is not a known weights name for "
                         f"{backbone!r}; known: {known}") from None


def cache_file(entry):
    """Where torch.hub keeps (and torchvision looks for) the file of a Weights entry."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(entry.url))


def _get_model(backbone, entry, kwargs):
    try:
        return torchvision.models.get_model(backbone, weights=entry, **kwargs)
    except (OSError, RuntimeError) as exc:  # URLError is an OSError
        if entry is None or os.path.isfile(cache_file(entry)):
            raise
        what = f"torchvision weights {type(entry).__name__}.{entry.name} for {backbone!r}"
        raise unavailable(what, cache_file(entry) + f" (downloaded from {entry.url})",
                          exc) from exc


def _transforms_info(entry):
    """(mean, std), input size and interpolation from the weights' ``transforms()``."""
    if entry is None:
        return None, None, None
    t = entry.transforms()
    size = getattr(t, "crop_size", None)
    size = tuple(size) * (2 if len(size) == 1 else 1) if size else None
    mode = getattr(t, "interpolation", None)
    return ((tuple(t.mean), tuple(t.std)), size, getattr(mode, "value", None))


def preprocessing(name, weights):
    """(normalization, input size, interpolation, centre-crop fraction) that the weights
    ``weights`` of ``name`` declare (their ``transforms()``; metadata, nothing is
    downloaded); Nones for ``weights=None`` or a file."""
    entry, _ = resolve_weights(name, weights)
    normalization, size, mode = _transforms_info(entry)
    resize = getattr(entry.transforms(), "resize_size", None) if entry is not None else None
    crop = size[0] / resize[0] if size and resize else None
    return normalization, size, mode, crop


def build(name, weights, in_channels, kwargs):
    """A torchvision model, its classifier cut off: a :class:`~.registry.Trunk`."""
    entry, path = resolve_weights(name, weights)
    builder_kwargs = {}
    if name in ("inception_v3", "googlenet"):
        # torchvision turns transform_input on only with its weights; a model saved with
        # them is rebuilt without (load reads the weights from the file), so fix it on:
        # fit and load then give the input the same affine step
        builder_kwargs = {"aux_logits": entry is not None, "init_weights": False,
                          "transform_input": True}
    builder_kwargs.update(kwargs)
    try:
        model = _get_model(name, entry, builder_kwargs)
    except TypeError as exc:
        if not kwargs:
            raise
        raise ValueError(f"backbone_kwargs={kwargs!r} do not fit torchvision's {name!r} "
                         f"builder: {exc}") from exc
    if name in ("inception_v3", "googlenet"):
        model.aux_logits = False
        for aux in ("AuxLogits", "aux1", "aux2"):
            if hasattr(model, aux):
                setattr(model, aux, None)
    n_features = strip_classifier(model)
    if path is not None:
        load_local_weights(model, path, name)
    normalization, size, mode = _transforms_info(entry)
    source = (f"torchvision {type(entry).__name__}.{entry.name}" if entry is not None
              else str(path) if path is not None else "random init")
    return Trunk(model, n_features, 3, block_names(model), cam_layers(model),
                 conv_map=lambda: conv_map_trunk(model, model.classifier_name),
                 normalization=normalization, input_size=size, interpolation=mode,
                 weights_source=source, weights_enum=entry)
