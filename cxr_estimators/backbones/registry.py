"""The backbone registry: one place that knows, per backbone, how to build it and what
the rest of the package needs from it.

A backbone name picks a family by its prefix: ``timm:<name>`` (:mod:`.timm_models`),
``xrv:<name>`` (:mod:`.xrv_models`), ``resnet50v2`` (:mod:`.keras_resnet_v2`), the
small CNNs (:mod:`.small_cnns`), else a torchvision classification model
(:mod:`.torchvision_models`). Each family's ``build`` returns a :class:`Trunk`: the
feature extractor, its feature width and input channels, the blocks ``freeze=k``
counts, the Grad-CAM layers, the normalisation and input size its weights expect (from
torchvision's ``weights.transforms()``, timm's ``pretrained_cfg``, torchxrayvision's
convention), and where its weights came from. :class:`~.net.CXRNet`, Grad-CAM, the
feature cache and save/load read these; nothing else guesses from layer names.
"""

from __future__ import annotations

import fnmatch
import importlib
from dataclasses import dataclass, field

from torch import nn

from .._validation import did_you_mean

__all__ = ["loader_params", "Trunk", "Family", "FAMILIES", "family_of", "list_backbones", "build_backbone",
           "BackboneExtraMissingError"]


class BackboneExtraMissingError(ImportError):
    """A ``timm:`` / ``xrv:`` backbone asked for without its optional package."""


@dataclass
class Trunk:
    """What the registry knows of one built backbone.

    Attributes
    ----------
    module : nn.Module
        Maps ``(n, in_channels, H, W)`` to ``(n, n_features)`` (its classifier removed).
    n_features, in_channels : int
        Feature width; channels the module takes (1-channel input is repeated to 3).
    blocks : tuple of str
        Names (in ``module``) of the blocks ``freeze=k`` counts, in forward order.
    cam_layers : tuple of str
        Names (in ``module``) of the layers Grad-CAM may use, in forward order: it takes
        the deepest one whose map is at least 2x2.
    conv_map : callable or None
        ``conv_map()`` -> (module giving the last feature map, its names unchanged) for
        ``pooling="avg"/"max"/"flatten"``; None: this backbone has no such map.
    normalization : (tuple, tuple) or None
        Mean and std (per channel of [0, 1] input) its weights were trained with.
    input_size : (int, int) or None
        (H, W) its weights were trained at; ``interpolation``: the resize they used.
    weights_source : str
        "random init", a library's weights name, or the file the weights came from.
    weights_enum : object or None
        torchvision's Weights entry, when used.
    """

    module: nn.Module
    n_features: int
    in_channels: int
    blocks: tuple
    cam_layers: tuple
    conv_map: object = None
    normalization: tuple | None = None
    input_size: tuple | None = None
    interpolation: str | None = None
    weights_source: str = "random init"
    weights_enum: object = None
    extras: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Family:
    """A backbone family: a name prefix and the module that builds its models.

    ``module`` defines ``names()`` (the names it accepts, without prefix) and
    ``build(name, weights, in_channels, kwargs) -> Trunk``; ``extra``: the pip extra that
    installs its library (None: always available)."""

    name: str
    prefix: str
    module: str
    extra: str | None = None

    def impl(self):
        return importlib.import_module(f"{__package__}.{self.module}")

    def names(self):
        return [self.prefix + n for n in self.impl().names()]


FAMILIES = (
    Family("timm", "timm:", "timm_models", extra="timm"),
    Family("torchxrayvision", "xrv:", "xrv_models", extra="xrv"),
    Family("keras", "", "keras_resnet_v2"),
    Family("small_cnn", "", "small_cnns"),
    Family("torchvision", "", "torchvision_models"),
)


def family_of(backbone):
    """The :class:`Family` of a backbone name, or a ValueError with close names."""
    if not isinstance(backbone, str):
        raise ValueError(f"backbone must be a model name (str); got {backbone!r}")
    for family in FAMILIES:
        if family.prefix and backbone.startswith(family.prefix):
            return family
    for family in FAMILIES:
        if not family.prefix and backbone in family.impl().names():
            return family
    if ":" in backbone:
        prefix = backbone.split(":", 1)[0] + ":"
        raise ValueError(f"backbone={backbone!r}: unknown family prefix {prefix!r}; known: "
                         f"{[f.prefix for f in FAMILIES if f.prefix]}"
                         f"{did_you_mean(prefix, [f.prefix for f in FAMILIES if f.prefix])}")
    known = [n for f in FAMILIES if not f.prefix for n in f.names()]
    raise ValueError(
        f"backbone={backbone!r} is not a known backbone{did_you_mean(backbone, known)} "
        "(see cxr_estimators.backbones.list_backbones(); timm models are 'timm:<name>', "
        "torchxrayvision ones 'xrv:<name>')")


def check_name(family, name, known):
    """ValueError for a ``name`` its family does not know, with close names."""
    if name not in known:
        raise ValueError(
            f"backbone={family.prefix + name!r} is not a {family.name} model"
            f"{did_you_mean(name, known)} (see cxr_estimators.backbones.list_backbones("
            f"{family.prefix + '*'!r}))")


def require(family, package):
    """Import a family's optional package, or say which extra installs it."""
    try:
        return importlib.import_module(package)
    except ImportError as exc:
        raise BackboneExtraMissingError(
            f"backbones '{family.prefix}<name>' need the {package!r} package, which is not "
            f"installed ({exc}); pip install 'cxr_estimators[{family.extra}]'") from exc


def list_backbones(pattern="*"):
    """Backbone names accepted as ``backbone``, filtered by an fnmatch ``pattern``.

    ``"timm:*"`` / ``"xrv:*"`` list those families (empty when the extra is not
    installed); ``"resnet*"`` torchvision's resnets, ``resnet50v2`` and no timm model.

    Examples
    --------
    >>> from cxr_estimators.backbones import list_backbones
    >>> list_backbones("resnet50*")
    ['resnet50', 'resnet50v2']
    """
    names = []
    for family in FAMILIES:
        if family.prefix and not pattern.startswith(family.prefix) and pattern != "*":
            continue
        try:
            names += family.names()
        except BackboneExtraMissingError:
            continue
    return sorted(n for n in names if fnmatch.fnmatchcase(n, pattern))


def build_backbone(backbone, weights=None, in_channels=3, backbone_kwargs=None):
    """Build ``backbone`` by its family: a :class:`Trunk`."""
    family = family_of(backbone)
    name = backbone[len(family.prefix):]
    return family.impl().build(name, weights, in_channels, dict(backbone_kwargs or {}))


def loader_params(backbone, weights="DEFAULT"):
    """:class:`~cxr_estimators.ImageLoader` parameters matching what ``backbone``'s
    weights expect: ``size``, ``channels``, ``normalize`` (mean, std), ``interpolation``
    and ``center_crop`` (from torchvision's ``weights.transforms()``, timm's
    ``pretrained_cfg``, torchxrayvision's [-1024, 1024] convention). Nothing is
    downloaded. Parameters a backbone does not declare are left out (ImageLoader's
    defaults apply).

    Examples
    --------
    >>> from cxr_estimators.backbones import loader_params
    >>> loader_params("resnet50")["normalize"]
    ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    """
    family = family_of(backbone)
    name = backbone[len(family.prefix):]
    impl = family.impl()
    crop = None
    if hasattr(impl, "preprocessing"):
        normalization, size, mode, crop = impl.preprocessing(name, weights)
        channels = 3
    else:
        channels = 1 if family.name in ("timm", "torchxrayvision", "small_cnn") else 3
        spec = impl.build(name, None, channels, {})
        normalization, size, mode = spec.normalization, spec.input_size, spec.interpolation
        crop = spec.extras.get("pretrained_cfg", {}).get("crop_pct")
    params = {"size": tuple(size) if size else None, "channels": channels,
              "normalize": normalization, "interpolation": mode,
              "center_crop": crop if crop and crop < 1 else None}
    return {k: v for k, v in params.items() if v is not None}
