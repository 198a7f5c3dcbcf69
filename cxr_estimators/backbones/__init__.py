"""Backbones: one registry (:mod:`.registry`) of the families a ``CXRClassifier`` can
build, each in its own module, and the network they go into (:mod:`.net`).

* torchvision's classification models by name (:mod:`.torchvision_models`);
* ``timm:<name>``: any timm model (:mod:`.timm_models`, extra ``[timm]``);
* ``xrv:<name>``: torchxrayvision's chest-X-ray models (:mod:`.xrv_models`, extra
  ``[xrv]``);
* ``resnet50v2``: Keras' ResNet50V2 layer for layer (:mod:`.keras_resnet_v2`);
* ``simple_cnn`` / ``deep_cnn``: small from-scratch CNNs (:mod:`.small_cnns`);
* the head after any of them (:mod:`.heads`).

:func:`list_backbones` lists the names, :func:`loader_params` the preprocessing a
backbone's weights expect; :class:`WeightsUnavailableError` is the one error for weights
that cannot be had (no network, missing file). See docs/backbones.md.
"""

from .net import CXRNet, apply_freeze, build_model, build_trunk, check_frozen_features
from .registry import (FAMILIES, BackboneExtraMissingError, Trunk, build_backbone, list_backbones,
                       loader_params)
from .small_cnns import SMALL_CNNS, DeepCNN, SimpleCNN
from .torchvision_models import find_last_conv, trunk_blocks
from .weights import WeightsUnavailableError


def available_backbones():
    """Names accepted as ``backbone`` without a family prefix: torchvision's
    classification models, ``resnet50v2`` and the small CNNs (``list_backbones()``
    adds the ``timm:`` and ``xrv:`` ones)."""
    return sorted(n for f in FAMILIES if not f.prefix for n in f.names())


__all__ = [
    "CXRNet",
    "check_frozen_features",
    "SimpleCNN",
    "DeepCNN",
    "SMALL_CNNS",
    "Trunk",
    "WeightsUnavailableError",
    "BackboneExtraMissingError",
    "available_backbones",
    "apply_freeze",
    "build_backbone",
    "build_model",
    "build_trunk",
    "find_last_conv",
    "list_backbones",
    "loader_params",
    "trunk_blocks",
]
