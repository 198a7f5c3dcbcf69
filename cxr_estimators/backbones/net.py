"""The network a :class:`~cxr_estimators.CXRClassifier` trains: a backbone from the
registry (:mod:`.registry`), pooling, and our head (:mod:`.heads`).

Written here by hand, because neither torchvision, timm nor skorch does it: freezing all
of the trunk or all but its last ``k`` blocks (the blocks the registry names), keeping
frozen BatchNorm layers in inference mode (as Keras' ``trainable=False`` does), repeating
gray input to three channels, warning about random frozen weights and refusing frozen
features that do not vary.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import nn

from ..preprocessing import InputNormalization
from .heads import check_map, make_head, make_pool, probe_map_shape
from .registry import build_backbone
from .torchvision_models import block_names, cam_layers as cam_layers_of, trunk_blocks

__all__ = ["CXRNet", "build_trunk", "build_model", "apply_freeze", "check_frozen_features"]


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
    blocks, cam_layers : sequence of str or None
        Names in ``trunk`` of the blocks ``freeze=k`` counts and of the layers Grad-CAM
        may use, both in forward order (:class:`~.registry.Trunk`); None: torchvision's
        generic rule (:func:`~.torchvision_models.trunk_blocks`).
    input_norm : nn.Module or None
        The first step: a :class:`~cxr_estimators.preprocessing.InputNormalization` turns
        uint8/uint16 images into normalised float ones on the model's device (float input
        passes unchanged); before the channel repeat and the augmentation.
    """

    def __init__(self, trunk, n_features, n_classes, neurons=128, dropout=0.5, in_channels=3,
                 augment=None, *, pool=None, head=None, input_norm=None, blocks=None,
                 cam_layers=None):
        super().__init__()
        # registry knowledge, as names in this module (None: torchvision's generic rule)
        self.block_names = tuple(f"trunk.{b}" for b in (
            blocks if blocks is not None else block_names(trunk)))
        self.cam_layers = tuple(f"trunk.{b}" for b in (
            cam_layers_of(trunk) if cam_layers is None else cam_layers))
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

    def blocks(self):
        """The trunk blocks ``freeze=k`` counts, in forward order."""
        return [self.get_submodule(name) for name in self.block_names]

    def train(self, mode=True):
        """Like ``nn.Module.train`` but frozen trunk blocks stay in eval mode, so their
        BatchNorm statistics and dropout do not change while the head trains."""
        super().train(mode)
        if mode:
            for block in self.blocks():
                if not any(p.requires_grad for p in block.parameters()):
                    block.eval()
        return self



def build_trunk(backbone, weights=None, in_channels=3, *, backbone_kwargs=None):
    """Build a feature extractor by name (see :func:`~.registry.build_backbone`).

    Returns ``(trunk, n_features, trunk_in_channels, weights_enum)``; ``weights_enum`` is
    torchvision's Weights entry when its weights were asked for, else None."""
    spec = build_backbone(backbone, weights, in_channels, backbone_kwargs)
    return spec.module, spec.n_features, spec.in_channels, spec.weights_enum


def apply_freeze(trunk, freeze, blocks=None):
    """``freeze=True``: no trunk parameter trains; ``False``: all do; int ``k``: only the
    last ``k`` of ``blocks`` (modules in forward order; default: the registry's
    generic :func:`~.torchvision_models.trunk_blocks`) train."""
    if isinstance(freeze, bool):
        for p in trunk.parameters():
            p.requires_grad_(not freeze)
        return
    blocks = trunk_blocks(trunk) if blocks is None else blocks
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


def _resolvable(module, names):
    """The ``names`` that are submodules of ``module`` (pooling="..." cuts some off)."""
    found = dict(module.named_modules())
    return tuple(n for n in names if n in found)


def build_model(backbone, n_classes, *, weights=None, in_channels=3, neurons=128,
                dropout=0.5, freeze=False, augment=None, pooling=None, head_batch_norm=False,
                input_dropout=0.0, backbone_kwargs=None, image_size=(224, 224),
                normalization=None, head_order="bn_act"):
    """Build a :class:`CXRNet` for ``n_classes`` outputs. See :class:`CXRClassifier`.

    ``image_size``: (H, W) of the input; with ``pooling`` set, one probe forward pass at
    that size gives the feature map's shape (and refuses ``"flatten"`` on a 1 × 1 map).
    ``normalization``: ``(mean, std)`` (one value per input channel) that the model
    applies to uint8/uint16 input (:class:`~cxr_estimators.preprocessing.CompactImages`);
    None: mean 0, std 1. The model always has this ``input_norm`` step, so its
    ``state_dict`` keys do not depend on the input type."""
    spec = build_backbone(backbone, weights, in_channels, backbone_kwargs)
    trunk, n_features, trunk_channels = spec.module, spec.n_features, spec.in_channels
    if in_channels not in (1, trunk_channels):
        raise ValueError(
            f"X has {in_channels} channels but backbone {backbone!r} takes "
            f"{trunk_channels}; load the images with ImageLoader(channels={trunk_channels})")
    if pooling is not None:
        if spec.conv_map is None:
            raise ValueError(f"pooling={pooling!r}: backbone {backbone!r} has no "
                             "convolutional feature map to pool; use pooling=None")
        trunk = spec.conv_map()
        map_shape = probe_map_shape(trunk, trunk_channels, image_size, backbone)
        check_map(pooling, map_shape, backbone)
        n_features = map_shape[0] * (map_shape[1] * map_shape[2] if pooling == "flatten" else 1)
    blocks = _resolvable(trunk, spec.blocks)
    apply_freeze(trunk, freeze, [trunk.get_submodule(b) for b in blocks])
    if spec.weights_source == "random init" and spec.extras.get("pretrainable", True) and any(
            not p.requires_grad for p in trunk.parameters()):
        warnings.warn(
            f"backbone {backbone!r} with weights=None and freeze={freeze!r}: the frozen "
            "layers keep their random initialisation, so the features they give are random; "
            "give pretrained weights (weights='DEFAULT' or a checkpoint path) or "
            "freeze=False", UserWarning, stacklevel=3)
    head = make_head(n_features, n_classes, neurons, dropout, batch_norm=head_batch_norm,
                     input_dropout=input_dropout, order=head_order)
    mean, std = normalization or ([0.0] * in_channels, [1.0] * in_channels)
    return CXRNet(trunk, n_features, n_classes, in_channels=trunk_channels, augment=augment,
                  pool=make_pool(pooling), head=head, input_norm=InputNormalization(mean, std),
                  blocks=blocks, cam_layers=_resolvable(trunk, spec.cam_layers))


def check_frozen_features(module, X, backbone, n_images=64):
    """Refuse a frozen part of ``module`` whose output does not vary over images ``X``.

    The output of the last frozen trunk block (the pooled features for a fully frozen
    trunk) on the first ``n_images`` images, in eval mode. A variance of ~0 for every
    feature (EfficientNet with random weights gives ~1e-28) means the head would train on
    a constant. Nothing to check without frozen blocks."""
    blocks = module.blocks()
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


