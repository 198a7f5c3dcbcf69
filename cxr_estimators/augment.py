"""Train-time augmentation for chest X-rays.

Geometric transforms are torchvision's (:class:`torchvision.transforms.v2.RandomAffine`,
:class:`~torchvision.transforms.v2.RandomHorizontalFlip`), drawn independently for every
image of a batch. Brightness/contrast are written here because torchvision's
``ColorJitter`` assumes [0, 1] images and clamps, while our batches are already normalised:
the jitter below is affine in intensity, so it behaves the same for every normalisation
preset.

The augmenter lives inside the model (:class:`cxr_estimators.backbones.CXRNet`) and acts
only while the model is in training mode, i.e. on training batches; skorch puts the model
in eval mode for validation and prediction, so nothing is augmented there.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.transforms import v2

__all__ = ["Augmenter", "DEFAULT_AUGMENTATION", "make_augmenter"]

#: What ``augment=True`` means: mild, CXR-safe settings; no horizontal flip, because the
#: heart's side is anatomy, not noise.
DEFAULT_AUGMENTATION = {
    "rotation": 10.0,
    "shift": 0.1,
    "zoom": 0.1,
    "brightness": 0.1,
    "contrast": 0.1,
    "horizontal_flip": False,
}


class Augmenter(nn.Module):
    """Random rotation, shift, zoom, brightness, contrast (and optional horizontal flip).

    Parameters
    ----------
    rotation : float
        Maximum rotation in degrees (uniform in ``[-rotation, rotation]``).
    shift : float
        Maximum translation as a fraction of width/height.
    zoom : float
        Scale drawn from ``[1 - zoom, 1 + zoom]``.
    brightness : float
        Additive offset drawn from ``[-brightness, brightness]`` times the image's std.
    contrast : float
        Factor drawn from ``[1 - contrast, 1 + contrast]`` applied around the image's mean.
    horizontal_flip : bool
        Flip left-right with probability 0.5. Off by default for chest X-rays.
    """

    def __init__(self, rotation=10.0, shift=0.1, zoom=0.1, brightness=0.1, contrast=0.1,
                 horizontal_flip=False):
        super().__init__()
        for name, value in [("rotation", rotation), ("shift", shift), ("zoom", zoom),
                            ("brightness", brightness), ("contrast", contrast)]:
            if not value >= 0:
                raise ValueError(f"augment {name} must be >= 0; got {value!r}")
        if shift > 1 or zoom >= 1 or contrast > 1:
            raise ValueError(
                f"augment shift must be <= 1, zoom < 1 and contrast <= 1; got shift={shift}, "
                f"zoom={zoom}, contrast={contrast}"
            )
        self.brightness = float(brightness)
        self.contrast = float(contrast)
        geometric = []
        if rotation or shift or zoom:
            geometric.append(v2.RandomAffine(
                degrees=rotation, translate=(shift, shift) if shift else None,
                scale=(1 - zoom, 1 + zoom) if zoom else None,
                interpolation=v2.InterpolationMode.BILINEAR,
            ))
        if horizontal_flip:
            geometric.append(v2.RandomHorizontalFlip())
        self.geometric = v2.Compose(geometric) if geometric else None

    def forward(self, x):
        if self.geometric is not None:
            x = torch.stack([self.geometric(img) for img in x])
        if self.brightness or self.contrast:
            n = x.shape[0]
            shape = (n,) + (1,) * (x.ndim - 1)
            dims = tuple(range(1, x.ndim))
            mean = x.mean(dim=dims, keepdim=True)
            std = x.std(dim=dims, keepdim=True)
            c = 1 + (torch.rand(shape, device=x.device) * 2 - 1) * self.contrast
            b = (torch.rand(shape, device=x.device) * 2 - 1) * self.brightness
            x = (x - mean) * c + mean + b * std
        return x


def make_augmenter(augment):
    """``None``/``False`` → None; ``True`` → defaults; dict → defaults updated by it."""
    if augment is None or augment is False:
        return None
    if augment is True:
        return Augmenter(**DEFAULT_AUGMENTATION)
    if isinstance(augment, dict):
        unknown = set(augment) - set(DEFAULT_AUGMENTATION)
        if unknown:
            raise ValueError(
                f"augment has unknown keys {sorted(unknown)}; known: {sorted(DEFAULT_AUGMENTATION)}"
            )
        return Augmenter(**{**DEFAULT_AUGMENTATION, **augment})
    raise ValueError(f"augment must be None, True/False or a dict; got {augment!r}")
