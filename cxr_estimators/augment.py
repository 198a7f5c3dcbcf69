"""Train-time augmentation for chest X-rays, with Keras ``ImageDataGenerator``'s knobs.

``augment=`` takes True (the mild defaults of :data:`DEFAULT_AUGMENTATION`) or a dict of
the keys below. **A dict lists the transforms to apply: a key it omits is off** (``{"zoom":
(0.9, 1.1)}`` zooms and does nothing else); unknown keys are an error that suggests the
key meant (Keras' names such as ``rotation_range`` included).

=================  ===================================================================
key                meaning (Keras ``ImageDataGenerator`` argument)
=================  ===================================================================
rotation           max degrees, uniform in ``[-r, r]`` (``rotation_range``)
shift              max fraction of width / height (``width/height_shift_range``)
shear              max shear angle in degrees, uniform in ``[-s, s]`` (``shear_range``)
zoom               Keras' ``zoom_range``: float z is ``(1 - z, 1 + z)``; width and height
                   are each divided by their own factor drawn from that ``(min, max)``
                   range, so a factor > 1 zooms out and < 1 zooms in
scale              torchvision's ``RandomAffine(scale=(min, max))``, for PyTorch studies:
                   one magnification for both axes from that range, > 1 enlarges (give
                   ``zoom`` or ``scale``, not both)
horizontal_flip    True or False: flip left-right with probability 0.5
                   (``horizontal_flip``)
fill               "constant" (0, the mean after normalisation), "nearest" (edge pixels
                   repeated) or "reflect", for pixels the transform brings in
                   (``fill_mode``)
brightness         float b: additive offset in ``[-b, b]`` image standard deviations;
                   ``(lo, hi)``: multiplicative factor in that range about the image's
                   darkest value (``brightness_range``)
contrast           factor in ``[1 - c, 1 + c]`` about the image's mean
=================  ===================================================================

Geometric transforms are one affine warp per image, drawn independently and applied to
the whole batch at once with :func:`torch.nn.functional.affine_grid` /
:func:`~torch.nn.functional.grid_sample` (bilinear). Written here by hand because
torchvision's ``RandomAffine`` can only fill with a constant, while Keras studies use
"nearest" and "reflect". Brightness and contrast are written here because torchvision's
``ColorJitter`` assumes [0, 1] images and clamps, while our batches are already
normalised; a multiplicative brightness about the darkest value is what Keras' factor on
raw pixels becomes after normalisation when the image contains black.

The augmenter lives inside the model (:class:`cxr_estimators.backbones.CXRNet`) and acts
only while the model is in training mode, i.e. on training batches; skorch puts the model
in eval mode for validation and prediction, so nothing is augmented there.
"""

from __future__ import annotations

import difflib

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._validation import did_you_mean, is_finite_number

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

KEYS = ("rotation", "shift", "shear", "zoom", "scale", "horizontal_flip", "fill",
        "brightness", "contrast")
#: Largest brightness offset (image standard deviations) or factor accepted.
MAX_BRIGHTNESS = 10.0

FILLS = {"constant": "zeros", "nearest": "border", "reflect": "reflection"}
#: Keras ImageDataGenerator (and other common) names → ours, for the did-you-mean.
_KERAS_NAMES = {"flip": "horizontal_flip", "rotate": "rotation",
                "rotation_range": "rotation", "width_shift_range": "shift",
                "height_shift_range": "shift", "shear_range": "shear", "zoom_range": "zoom",
                "brightness_range": "brightness", "fill_mode": "fill"}


def _range(name, value, *, around_one):
    """``(lo, hi)`` of a float-or-pair key; floats are symmetric about 0 or 1."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2 or not all(is_finite_number(v) for v in value) \
                or not 0 < value[0] <= value[1]:
            raise ValueError(f"augment {name} must be a float or a (min, max) pair with "
                             f"0 < min <= max; got {value!r}")
        return float(value[0]), float(value[1])
    if not is_finite_number(value) or not value >= 0:
        raise ValueError(f"augment {name} must be a finite number >= 0; got {value!r}")
    if around_one and value >= 1:
        raise ValueError(f"augment {name} as a float must be < 1 (a scale in [1 - {name}, "
                         f"1 + {name}]); got {value!r}; give a (min, max) pair instead")
    return (1 - value, 1 + value) if around_one else (-float(value), float(value))


def _scale_range(scale, zoom):
    """torchvision's ``scale`` pair, or None; refused next to a Keras ``zoom``."""
    if scale is None:
        return None
    if not isinstance(scale, (tuple, list)):
        raise ValueError(f"augment scale must be a (min, max) pair, as torchvision's "
                         f"RandomAffine(scale=...); got {scale!r}")
    if zoom != (1.0, 1.0):
        raise ValueError("augment has both zoom (Keras' zoom_range) and scale "
                         "(torchvision's RandomAffine scale); give one of them")
    return _range("scale", scale, around_one=True)


class Augmenter(nn.Module):
    """Random affine warp (rotation, shift, shear, zoom, flip) and intensity jitter.

    Every parameter defaults to off; see the module docstring for their meaning.

    Parameters
    ----------
    rotation, shift, shear : float
    zoom : float or (float, float)
    scale : (float, float) or None
    horizontal_flip : bool
    fill : {"constant", "nearest", "reflect"}
    brightness : float or (float, float)
    contrast : float
    """

    def __init__(self, rotation=0.0, shift=0.0, zoom=0.0, brightness=0.0, contrast=0.0,
                 horizontal_flip=False, *, shear=0.0, fill="constant", scale=None):
        super().__init__()
        for name, value in [("rotation", rotation), ("shift", shift), ("shear", shear),
                            ("contrast", contrast)]:
            if not is_finite_number(value) or not value >= 0:
                raise ValueError(f"augment {name} must be a finite number >= 0; got "
                                 f"{value!r}")
        if shift > 1 or contrast > 1 or shear >= 90:
            raise ValueError(
                f"augment shift must be <= 1, contrast <= 1 and shear < 90 degrees; got "
                f"shift={shift}, contrast={contrast}, shear={shear}")
        if fill not in FILLS:
            raise ValueError(f"augment fill={fill!r} is not one of {list(FILLS)}"
                             f"{did_you_mean(fill, FILLS)}")
        self.rotation, self.shift, self.shear = float(rotation), float(shift), float(shear)
        self.zoom = (1.0, 1.0) if zoom == 0 else _range("zoom", zoom, around_one=True)
        self.scale = _scale_range(scale, self.zoom)
        if not isinstance(horizontal_flip, (bool, np.bool_)):  # bool("no") is True
            raise ValueError(f"augment horizontal_flip must be True or False; got "
                             f"{horizontal_flip!r}")
        self.horizontal_flip = bool(horizontal_flip)
        self.fill = fill
        self.multiplicative = isinstance(brightness, (tuple, list))
        self.brightness = _range("brightness", brightness, around_one=False)
        if self.brightness[1] > MAX_BRIGHTNESS:
            raise ValueError(
                f"augment brightness={brightness!r} is beyond {MAX_BRIGHTNESS:g} ("
                + ("a factor" if self.multiplicative else "an offset in image standard "
                   "deviations") + f" of up to {self.brightness[1]:g} makes images the "
                "network never sees again); typical values are 0.1 or (0.8, 1.2)")
        self.contrast = float(contrast)

    def _geometric(self):
        return (self.rotation or self.shift or self.shear or self.zoom != (1.0, 1.0)
                or self.scale is not None
                or self.horizontal_flip)

    def _theta(self, n, height, width, device):
        """(n, 2, 3) ``affine_grid`` matrices: output → input coordinates."""
        def uniform(lo, hi):
            return torch.rand(n, device=device) * (hi - lo) + lo

        angle = torch.deg2rad(uniform(-self.rotation, self.rotation))
        shear = torch.deg2rad(uniform(-self.shear, self.shear))
        # Keras: width and height are divided by factors drawn independently;
        # torchvision's scale multiplies both by one
        zoom_x, zoom_y = uniform(*self.zoom), uniform(*self.zoom)
        if self.scale is not None:
            zoom_x = zoom_y = 1 / uniform(*self.scale)
        flip = torch.ones(n, device=device)
        if self.horizontal_flip:
            flip = torch.where(torch.rand(n, device=device) < 0.5, -flip, flip)
        cos, sin, tan = torch.cos(angle), torch.sin(angle), torch.tan(shear)
        # forward map in pixel units about the centre: rotate · shear · scale · flip
        a = torch.stack([torch.stack([cos, cos * tan - sin], -1),
                         torch.stack([sin, sin * tan + cos], -1)], -2)
        a = a * torch.stack([flip / zoom_x, 1 / zoom_y], -1)[:, None]
        shift = torch.stack([uniform(-self.shift, self.shift) * width,
                             uniform(-self.shift, self.shift) * height], -1)
        inverse = torch.linalg.inv(a)
        half = torch.tensor([width / 2, height / 2], device=device)
        # normalised coordinates: x_n = x_pixel / half
        theta_a = inverse * half[None, None, :] / half[None, :, None]
        theta_t = -(inverse @ shift[:, :, None])[..., 0] / half
        return torch.cat([theta_a, theta_t[:, :, None]], dim=2)

    def forward(self, x):
        n = x.shape[0]
        if self._geometric():
            theta = self._theta(n, x.shape[-2], x.shape[-1], x.device).to(x.dtype)
            grid = F.affine_grid(theta, list(x.shape), align_corners=False)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode=FILLS[self.fill],
                              align_corners=False)
        lo, hi = self.brightness
        # a fixed factor (lo == hi != 1) changes every image too; a fixed offset 0 does not
        if hi > lo or (self.multiplicative and lo != 1) or self.contrast:
            shape = (n,) + (1,) * (x.ndim - 1)
            dims = tuple(range(1, x.ndim))
            b = torch.rand(shape, device=x.device) * (hi - lo) + lo
            if self.multiplicative:
                black = x.amin(dim=dims, keepdim=True)
                x = (x - black) * b + black
            else:
                x = x + b * x.std(dim=dims, keepdim=True)
            if self.contrast:
                mean = x.mean(dim=dims, keepdim=True)
                c = 1 + (torch.rand(shape, device=x.device) * 2 - 1) * self.contrast
                x = (x - mean) * c + mean
        return x

    def extra_repr(self):
        return (f"rotation={self.rotation}, shift={self.shift}, shear={self.shear}, "
                f"zoom={self.zoom}, scale={self.scale}, "
                f"horizontal_flip={self.horizontal_flip}, "
                f"fill={self.fill!r}, brightness={self.brightness}"
                f"{' (multiplicative)' if self.multiplicative else ''}, "
                f"contrast={self.contrast}")


def make_augmenter(augment):
    """``None``/``False`` → None; ``True`` → :data:`DEFAULT_AUGMENTATION`; dict → exactly
    the transforms it names (omitted keys are off)."""
    if augment is None or augment is False:
        return None
    if augment is True:
        return Augmenter(**DEFAULT_AUGMENTATION)
    if isinstance(augment, dict):
        for key in augment:
            if key not in KEYS:
                close = ([_KERAS_NAMES[key]] if key in _KERAS_NAMES
                         else difflib.get_close_matches(str(key), KEYS, n=1))
                raise ValueError(
                    f"augment has an unknown key {key!r}; known: {list(KEYS)}"
                    + (f"; did you mean {close[0]!r}?" if close else ""))
        return Augmenter(**augment)
    raise ValueError(f"augment must be None, True/False or a dict; got {augment!r}")
