"""Backbones: a torchvision classification model (or a small from-scratch CNN) + our head.

Models are looked up in torchvision's own registry (:func:`torchvision.models.get_model`)
and pretrained weights through its Weights API (:func:`torchvision.models.get_model_weights`),
so any classification model torchvision knows works by name. What torchvision does not
do, and is written here by hand:

* cutting the classifier off any model generically (the *last* ``nn.Linear`` is replaced by
  ``nn.Identity``; its ``in_features`` is the feature width);
* the head (:mod:`cxr_estimators.heads`: pooling, dense layers, BatchNorm, dropout);
* freezing all of the trunk or all but its last ``k`` blocks, keeping frozen BatchNorm
  layers in inference mode (as Keras' ``trainable=False`` does);
* the two small CNNs students build (``simple_cnn``, ``deep_cnn``);
* finding the last convolution of the trunk (used by Grad-CAM);
* warning about random frozen weights, and refusing frozen features that do not vary.
"""

from __future__ import annotations

import numbers
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn
import torchvision

from ._validation import did_you_mean
from .heads import (
    MAX_HEAD_PARAMETERS, check_map, conv_map_trunk, make_head, make_pool, probe_map_shape,
)
from .preprocessing import InputNormalization

__all__ = [
    "CXRNet",
    "check_frozen_features",
    "SimpleCNN",
    "DeepCNN",
    "available_backbones",
    "build_model",
    "find_last_conv",
    "trunk_blocks",
]

#: The two small from-scratch CNNs, by name.
SMALL_CNNS = ("simple_cnn", "deep_cnn")


class _ConvBlock(nn.Sequential):
    def __init__(self, c_in, c_out, batch_norm):
        layers = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=not batch_norm)]
        if batch_norm:
            layers.append(nn.BatchNorm2d(c_out))
        layers += [nn.ReLU(inplace=True), nn.MaxPool2d(2, ceil_mode=True)]
        super().__init__(*layers)


class SimpleCNN(nn.Module):
    """Three conv blocks (32, 64, 128 channels; conv3x3 → ReLU → max-pool), global average
    pooling. The shape of the Keras models students write first. Output ``(n, 128)``."""

    def __init__(self, in_channels=1, widths=(32, 64, 128), batch_norm=False):
        super().__init__()
        chans = (in_channels, *widths)
        self.features = nn.Sequential(
            *[_ConvBlock(a, b, batch_norm) for a, b in zip(chans[:-1], chans[1:])]
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Identity()  # keeps the "last Linear replaced" convention
        self.classifier_name = "fc"
        self.num_features = widths[-1]

    def forward(self, x):
        return torch.flatten(self.pool(self.features(x)), 1)

    def activation_elements(self, height, width):
        """Elements per image of the largest activation for ``height`` x ``width`` input:
        the biggest convolution output of the blocks (each block halves the size, rounding
        up). It sizes the CPU prediction batch (:func:`_runtime.cpu_predict_batch_size`)."""
        largest = 0
        for block in self.features:
            largest = max(largest, block[0].out_channels * height * width)
            height, width = -(-height // 2), -(-width // 2)
        return largest


class DeepCNN(SimpleCNN):
    """Five conv blocks with BatchNorm (32, 64, 128, 256, 256 channels). Output ``(n, 256)``."""

    def __init__(self, in_channels=1, widths=(32, 64, 128, 256, 256), batch_norm=True):
        super().__init__(in_channels, widths=widths, batch_norm=batch_norm)


_SMALL_CNN_KWARGS = ("widths", "batch_norm")


def _small_cnn(backbone, in_channels, kwargs):
    """``SimpleCNN`` / ``DeepCNN`` with ``backbone_kwargs`` checked."""
    for key in kwargs:
        if key not in _SMALL_CNN_KWARGS:
            raise ValueError(
                f"backbone_kwargs has an unknown key {key!r} for {backbone!r}; known: "
                f"{list(_SMALL_CNN_KWARGS)}{did_you_mean(key, _SMALL_CNN_KWARGS)}")
    widths = kwargs.get("widths")
    if widths is not None and (
            isinstance(widths, (str, bytes)) or not hasattr(widths, "__len__") or not widths
            or not all(isinstance(w, numbers.Integral) and not isinstance(w, bool) and w >= 1
                       for w in widths)):
        raise ValueError(f"backbone_kwargs widths must be a non-empty tuple of ints >= 1 "
                         f"(channels per conv block); got {widths!r}")
    if "batch_norm" in kwargs and not isinstance(kwargs["batch_norm"], bool):
        raise ValueError(f"backbone_kwargs batch_norm must be True or False; got "
                         f"{kwargs['batch_norm']!r}")
    if widths:  # bounded before any allocation, as the head is (heads.check_head_size)
        chans = (in_channels, *map(int, widths))
        count = sum(9 * a * b for a, b in zip(chans, chans[1:]))
        if count > MAX_HEAD_PARAMETERS:
            raise ValueError(f"backbone_kwargs widths={tuple(widths)!r} makes a {backbone} of "
                             f"{count:,} conv weights ({count * 4 / 2**30:.1f} GiB of float32), "
                             f"above the limit of {MAX_HEAD_PARAMETERS:,}; use narrower blocks")
    kwargs = {**kwargs, **({"widths": tuple(int(w) for w in widths)} if widths else {})}
    return (SimpleCNN if backbone == "simple_cnn" else DeepCNN)(in_channels, **kwargs)


def available_backbones():
    """Names accepted as ``backbone``: torchvision's classification models + the small CNNs."""
    return sorted(torchvision.models.list_models(module=torchvision.models)) + list(SMALL_CNNS)


class CXRNet(nn.Module):
    """Trunk (features), pooling, then the dense head.

    Parameters
    ----------
    trunk : nn.Module
        Maps ``(n, C, H, W)`` to ``(n, n_features)``, or to a feature map that ``pool``
        turns into ``(n, n_features)``.
    n_features, n_classes, neurons, dropout : int, int, int, float
        Head sizes: ``Linear(n_features, neurons) → ReLU → Dropout(dropout) →
        Linear(neurons, n_classes)``, unless ``head`` is given.
    in_channels : int
        Channels the trunk expects. A 1-channel input given to a 3-channel trunk is
        repeated to three channels, so ImageNet first-layer weights are used unchanged.
    augment : nn.Module or None
        Applied to the input only in training mode (see :mod:`cxr_estimators.augment`).
    pool : nn.Module or None
        Between trunk and head (:func:`cxr_estimators.heads.make_pool`); None: identity.
    head : nn.Module or None
        The head (:func:`cxr_estimators.heads.make_head`); None builds the default one.
    input_norm : nn.Module or None
        The first step: a :class:`~cxr_estimators.preprocessing.InputNormalization` turns
        uint8/uint16 images into normalised float ones on the model's device (float input
        passes unchanged); before the channel repeat and the augmentation.
    """

    def __init__(self, trunk, n_features, n_classes, neurons=128, dropout=0.5, in_channels=3,
                 augment=None, *, pool=None, head=None, input_norm=None):
        super().__init__()
        self.input_norm = input_norm
        self.trunk = trunk
        self.in_channels = in_channels
        self.n_features = n_features
        self.augment = augment
        self.pool = pool if pool is not None else nn.Identity()
        self.head = head if head is not None else make_head(n_features, n_classes, neurons,
                                                            dropout)

    def forward_features(self, x):
        if x.ndim == 3:
            x = x.unsqueeze(1)
        if self.input_norm is not None:
            x = self.input_norm(x)
        if x.shape[1] == 1 and self.in_channels == 3:
            x = x.expand(-1, 3, -1, -1)
        if self.training and self.augment is not None:
            x = self.augment(x)
        out = self.trunk(x)
        if isinstance(out, tuple):  # inception / googlenet in train mode with aux heads
            out = out[0]
        return self.pool(out)

    def forward(self, x):
        return self.head(self.forward_features(x))

    def train(self, mode=True):
        """Like ``nn.Module.train`` but frozen trunk blocks stay in eval mode, so their
        BatchNorm statistics and dropout do not change while the head trains."""
        super().train(mode)
        if mode:
            for block in trunk_blocks(self.trunk):
                if not any(p.requires_grad for p in block.parameters()):
                    block.eval()
        return self


def _strip_classifier(model):
    """Replace the last ``nn.Linear`` of a torchvision model by ``nn.Identity``.

    Returns the feature width (that layer's ``in_features``)."""
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = name
    if last is None:
        raise ValueError(
            f"backbone {type(model).__name__!r} has no final nn.Linear classifier to replace; "
            "use a classification model such as 'resnet18'"
        )
    parent_name, _, attr = last.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    n_features = getattr(parent, attr).in_features
    setattr(parent, attr, nn.Identity())
    model.classifier_name = last.split(".")[0]  # the top-level child that held it
    return n_features


def _resolve_weights(backbone, weights):
    """Map ``weights`` to (torchvision weights enum or None, local path or None)."""
    if weights is None:
        return None, None
    text = os.fspath(weights) if isinstance(weights, os.PathLike) else weights
    if not isinstance(text, str):
        raise ValueError(f"weights must be None, a weights name or a file path; got {weights!r}")
    looks_like_path = (isinstance(weights, os.PathLike) or os.sep in text
                       or text.endswith((".pt", ".pth", ".ckpt", ".bin", ".safetensors"))
                       or os.path.exists(os.path.expanduser(text)))
    if looks_like_path:
        path = Path(text).expanduser()
        if path.is_dir():
            raise ValueError(f"weights={text!r} is a folder, not a weights file")
        if not path.is_file():
            raise FileNotFoundError(f"weights file {str(path)!r} does not exist")
        return None, path
    if backbone in SMALL_CNNS:
        raise ValueError(
            f"weights={text!r}: backbone {backbone!r} has no pretrained weights; "
            "use weights=None or a path to a checkpoint"
        )
    enum = torchvision.models.get_model_weights(backbone)
    try:
        return enum[text] if text != "DEFAULT" else enum.DEFAULT, None
    except KeyError:
        known = ["DEFAULT"] + [w.name for w in enum]
        raise ValueError(
            f"weights={text!r} is not a known weights name for {backbone!r}; known: {known}"
        ) from None


#: Keys under which training scripts commonly nest the model's state_dict.
_STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model")


def _load_checkpoint(path):
    try:
        # weights_only: a checkpoint file must not be able to run code when loaded
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"weights file {str(path)!r} could not be loaded as a torch "
                         f"checkpoint of tensors: {exc}") from exc
    for key in _STATE_DICT_KEYS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict):
        raise ValueError(f"weights file {str(path)!r} does not hold a state_dict")
    return obj


def _load_local_weights(model, trunk, path):
    """Load a state_dict saved from the torchvision model, from a bare trunk, or from a whole
    :class:`CXRNet`. Classifier/head keys that do not fit are skipped; a checkpoint that
    matches no trunk parameter at all is an error."""
    state = _load_checkpoint(path)
    if all(k.startswith("module.") for k in state):  # saved from DataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    if any(k.startswith("trunk.") for k in state):  # saved from a whole CXRNet
        state = {k[len("trunk."):]: v for k, v in state.items() if k.startswith("trunk.")}
    own = trunk.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    broken = [k for k, v in usable.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if broken:
        raise ValueError(
            f"weights file {str(path)!r} has tensors with NaN or inf values ({len(broken)}, "
            f"e.g. {broken[:3]}): it was saved from a diverged model or is corrupt")
    if not usable:
        raise ValueError(
            f"weights file {str(path)!r} has no parameter matching backbone "
            f"{type(model).__name__!r} (first keys: {list(state)[:3]})"
        )
    trunk.load_state_dict(usable, strict=False)
    missing = sorted(set(own) - set(usable))
    if missing:
        warnings.warn(
            f"weights file {str(path)!r} fits {len(usable)} of the {len(own)} tensors of "
            f"backbone {type(model).__name__!r}; the other {len(missing)} (e.g. "
            f"{missing[:3]}) keep their random initialisation. Was it saved from another "
            "architecture or for another number of input channels?", UserWarning,
            stacklevel=4)
    return missing


def build_trunk(backbone, weights=None, in_channels=3, *, backbone_kwargs=None):
    """Build a feature extractor by name.

    ``backbone_kwargs``: for the small CNNs ``widths`` (channels per conv block) and
    ``batch_norm``; for torchvision models, keyword arguments of its builder
    (``torchvision.models.get_model``), e.g. ``{"dropout": 0.3}`` for an EfficientNet.

    Returns ``(trunk, n_features, trunk_in_channels, weights_enum)``; ``weights_enum`` is the
    torchvision weights object when ImageNet weights were requested (its ``transforms()``
    gives the matching preprocessing), else None.
    """
    backbone_kwargs = dict(backbone_kwargs or {})
    if not isinstance(backbone, str):
        raise ValueError(f"backbone must be a model name (str); got {backbone!r}")
    enum, path = _resolve_weights(backbone, weights) if backbone in available_backbones() else (None, None)
    if backbone in SMALL_CNNS:
        trunk = _small_cnn(backbone, in_channels, backbone_kwargs)
    elif backbone in available_backbones():
        kwargs = {}
        if backbone in ("inception_v3", "googlenet"):
            # torchvision turns transform_input on only with its weights; a model saved
            # with them is rebuilt without (load reads the weights from the file), so
            # fix it on: fit and load then give the input the same affine step
            kwargs = {"aux_logits": enum is not None, "init_weights": False,
                      "transform_input": True}
        kwargs.update(backbone_kwargs)
        # Downloads only when ImageNet weights are asked for and not in TORCH_HOME already.
        try:
            trunk = torchvision.models.get_model(backbone, weights=enum, **kwargs)
        except TypeError as exc:
            if not backbone_kwargs:
                raise
            raise ValueError(f"backbone_kwargs={backbone_kwargs!r} do not fit torchvision's "
                             f"{backbone!r} builder: {exc}") from exc
        if backbone in ("inception_v3", "googlenet"):
            trunk.aux_logits = False
            for aux in ("AuxLogits", "aux1", "aux2"):
                if hasattr(trunk, aux):
                    setattr(trunk, aux, None)
        in_channels = 3
    else:
        import difflib

        close = difflib.get_close_matches(backbone, available_backbones(), n=3)
        raise ValueError(
            f"backbone={backbone!r} is not a torchvision classification model nor one of "
            f"{SMALL_CNNS}{f'; did you mean {close}?' if close else ''} (see "
            "cxr_estimators.backbones.available_backbones())"
        )
    n_features = trunk.num_features if backbone in SMALL_CNNS else _strip_classifier(trunk)
    if path is not None:
        _load_local_weights(trunk, trunk, path)
    return trunk, n_features, in_channels, enum


def trunk_blocks(trunk):
    """The trunk's blocks, in forward order, for ``freeze=k``.

    The top-level children that hold parameters; while there is only one such child (a
    wrapper like densenet's ``features``), descend into it.
    """
    module = trunk
    while True:
        blocks = [m for m in module.children() if any(True for _ in m.parameters())]
        if len(blocks) != 1:
            return blocks
        module = blocks[0]


def apply_freeze(trunk, freeze):
    """``freeze=True``: no trunk parameter trains; ``False``: all do; int ``k``: only the
    last ``k`` blocks of :func:`trunk_blocks` train."""
    if isinstance(freeze, bool):
        for p in trunk.parameters():
            p.requires_grad_(not freeze)
        return
    blocks = trunk_blocks(trunk)
    if freeze > len(blocks):
        raise ValueError(
            f"freeze={freeze} asks to train the last {freeze} blocks, but this "
            f"{type(trunk).__name__} trunk has {len(blocks)} (see "
            "cxr_estimators.backbones.trunk_blocks); use freeze=False to train all of it")
    for p in trunk.parameters():
        p.requires_grad_(False)
    for block in blocks[len(blocks) - freeze:] if freeze > 0 else []:
        for p in block.parameters():
            p.requires_grad_(True)


def build_model(backbone, n_classes, *, weights=None, in_channels=3, neurons=128,
                dropout=0.5, freeze=False, augment=None, pooling=None, head_batch_norm=False,
                input_dropout=0.0, backbone_kwargs=None, image_size=(224, 224),
                normalization=None):
    """Build a :class:`CXRNet` for ``n_classes`` outputs. See :class:`CXRClassifier`.

    ``image_size``: (H, W) of the input; with ``pooling`` set, one probe forward pass at
    that size gives the feature map's shape (and refuses ``"flatten"`` on a 1 × 1 map).
    ``normalization``: ``(mean, std)`` (one value per input channel) that the model
    applies to uint8/uint16 input (:class:`~cxr_estimators.preprocessing.CompactImages`);
    None: mean 0, std 1. The model always has this ``input_norm`` step, so its
    ``state_dict`` keys do not depend on the input type."""
    trunk, n_features, trunk_channels, _ = build_trunk(backbone, weights, in_channels,
                                                       backbone_kwargs=backbone_kwargs)
    if in_channels not in (1, trunk_channels):
        raise ValueError(
            f"X has {in_channels} channels but backbone {backbone!r} takes {trunk_channels}"
        )
    if pooling is not None:
        trunk = conv_map_trunk(trunk, trunk.classifier_name)
        map_shape = probe_map_shape(trunk, trunk_channels, image_size, backbone)
        check_map(pooling, map_shape, backbone)
        n_features = map_shape[0] * (map_shape[1] * map_shape[2] if pooling == "flatten" else 1)
    apply_freeze(trunk, freeze)
    if weights is None and backbone not in SMALL_CNNS and any(
            not p.requires_grad for p in trunk.parameters()):
        warnings.warn(
            f"backbone {backbone!r} with weights=None and freeze={freeze!r}: the frozen "
            "layers keep their random initialisation, so the features they give are random; "
            "give pretrained weights (weights='DEFAULT' or a checkpoint path) or "
            "freeze=False", UserWarning, stacklevel=3)
    head = make_head(n_features, n_classes, neurons, dropout, batch_norm=head_batch_norm,
                     input_dropout=input_dropout)
    mean, std = normalization or ([0.0] * in_channels, [1.0] * in_channels)
    return CXRNet(trunk, n_features, n_classes, in_channels=trunk_channels, augment=augment,
                  pool=make_pool(pooling), head=head, input_norm=InputNormalization(mean, std))


def check_frozen_features(module, X, backbone, n_images=64):
    """Refuse a frozen part of ``module`` whose output does not vary over images ``X``.

    The output of the last frozen trunk block (the pooled features for a fully frozen
    trunk) on the first ``n_images`` images, in eval mode. A variance of ~0 for every
    feature (EfficientNet with random weights gives ~1e-28) means the head would train on
    a constant. Nothing to check without frozen blocks."""
    blocks = trunk_blocks(module.trunk)
    frozen = [b for b in blocks if not any(p.requires_grad for p in b.parameters())]
    if not frozen:
        return
    whole = all(not p.requires_grad for p in module.trunk.parameters())
    images = _first_images(X, n_images)
    if len(images) < 2:
        return
    seen = []
    handle = None if whole else frozen[-1].register_forward_hook(
        lambda m, i, out: seen.append(out[0] if isinstance(out, tuple) else out))
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            device = next(module.parameters()).device
            out = module.forward_features(images.to(device))
    finally:
        module.train(was_training)
        if handle is not None:
            handle.remove()
    features = (out if whole else seen[-1]).float().flatten(1)
    spread = float(features.var(dim=0).max())
    if not spread > 1e-10:
        where = "features" if whole else "output of its last frozen block"
        raise ValueError(
            f"the frozen part of backbone {backbone!r} gives the same {where} for every "
            f"training image (largest variance over {len(images)} images: {spread:.3g}); "
            "the head cannot learn from constant features. Random weights frozen? Give "
            "pretrained weights or set freeze=False")


def _first_images(X, n):
    if isinstance(X, torch.utils.data.Dataset):
        items = [X[i] for i in range(min(n, len(X)))]
        items = [item[0] if isinstance(item, (tuple, list)) else item for item in items]
        return torch.stack([torch.as_tensor(item) for item in items])
    # no dtype cast: uint8/uint16 images are normalised by the model's input_norm
    return torch.as_tensor(np.asarray(X[:n]))


def find_last_conv(module):
    """Dotted name of the last ``nn.Conv2d`` in a model (in ``named_modules`` order)."""
    last = None
    for name, sub in module.named_modules():
        if isinstance(sub, nn.Conv2d):
            last = name
    if last is None:
        raise ValueError(f"{type(module).__name__} has no nn.Conv2d layer")
    return last
