"""augment.py: Keras ImageDataGenerator keys, omitted keys off, fill modes, errors."""

import numpy as np
import pytest
import torch
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from cxr_estimators import CXRClassifier
from cxr_estimators.augment import DEFAULT_AUGMENTATION, Augmenter, make_augmenter


@pytest.fixture
def draws_max(monkeypatch):
    """torch.rand → ones: every uniform draw takes its upper bound, no flip."""
    monkeypatch.setattr(torch, "rand", lambda *shape, device=None: torch.ones(*shape))


def test_augmenter_changes_images_and_flip_default_off():
    torch.manual_seed(0)
    x = torch.rand(4, 1, 16, 16)
    aug = make_augmenter(True)
    assert aug.horizontal_flip is False
    assert aug.rotation == DEFAULT_AUGMENTATION["rotation"] and aug.zoom == (0.9, 1.1)
    out = aug(x)
    assert out.shape == x.shape and not torch.allclose(out, x)


def test_omitted_keys_are_off():
    torch.manual_seed(0)
    x = torch.rand(3, 1, 16, 16)
    assert torch.equal(make_augmenter({})(x), x)
    only_zoom = make_augmenter({"zoom": (1.05, 1.15)})
    assert (only_zoom.rotation, only_zoom.shift, only_zoom.shear, only_zoom.contrast) == (0,) * 4
    assert only_zoom.brightness == (0.0, 0.0) and not only_zoom.horizontal_flip
    # intensity untouched: the centre pixel of a smooth image hardly moves under zoom
    smooth = torch.linspace(0, 1, 16).repeat(3, 1, 16, 1)
    out = only_zoom(smooth)
    assert torch.allclose(out[..., 4:12, 4:12].mean(), smooth[..., 4:12, 4:12].mean(), atol=0.02)


@pytest.mark.parametrize("kw, tv", [
    ({"zoom": (1.3, 1.3)}, dict(angle=0.0, translate=[0, 0], scale=1 / 1.3,
                                shear=[0.0, 0.0])),  # Keras: a factor > 1 zooms out
    ({"scale": (1.3, 1.3)}, dict(angle=0.0, translate=[0, 0], scale=1.3,
                                 shear=[0.0, 0.0])),  # torchvision's own scale
    ({"rotation": 30}, dict(angle=30.0, translate=[0, 0], scale=1.0, shear=[0.0, 0.0])),
    ({"shift": 0.25}, dict(angle=0.0, translate=[6, 5], scale=1.0, shear=[0.0, 0.0])),
    ({"shear": 20}, dict(angle=0.0, translate=[0, 0], scale=1.0, shear=[-20.0, 0.0])),
])
def test_warp_matches_torchvision_affine(draws_max, kw, tv):
    """Same geometry as torchvision's affine (up to the sign of shear, drawn symmetric)."""
    x = torch.arange(20 * 24, dtype=torch.float32).reshape(1, 1, 20, 24) / 480
    out = Augmenter(**kw)(x)
    ref = TF.affine(x, interpolation=InterpolationMode.BILINEAR, **tv)
    np.testing.assert_allclose(out[..., 3:-3, 3:-3], ref[..., 3:-3, 3:-3], atol=1e-5)


def test_fill_modes(draws_max):
    x = torch.arange(8, dtype=torch.float32).repeat(1, 1, 8, 1) + 1  # columns 1..8
    shifted = {fill: Augmenter(shift=0.25, fill=fill)(x)[0, 0, 4] for fill in
               ("constant", "nearest", "reflect")}
    # content moves right by 2 columns; the two new left columns are filled
    np.testing.assert_allclose(shifted["constant"][:2], [0, 0], atol=1e-6)
    np.testing.assert_allclose(shifted["nearest"][:2], [1, 1], atol=1e-6)
    np.testing.assert_allclose(shifted["reflect"][:2], [2, 1], atol=1e-6)
    for out in shifted.values():
        np.testing.assert_allclose(out[2:], np.arange(1, 7), atol=1e-5)


def test_brightness_multiplicative_and_additive(draws_max):
    x = torch.linspace(-1, 1, 128).reshape(2, 1, 8, 8) ** 3
    black = x.amin(dim=(1, 2, 3), keepdim=True)
    out = Augmenter(brightness=(0.8, 1.2))(x)
    np.testing.assert_allclose(out, (x - black) * 1.2 + black, rtol=1e-6)
    out = Augmenter(brightness=0.5)(x)
    np.testing.assert_allclose(out, x + 0.5 * x.std(dim=(1, 2, 3), keepdim=True), rtol=1e-6)


@pytest.mark.parametrize("augment, match", [
    ({"rotation_range": 15}, "unknown key 'rotation_range'.*did you mean 'rotation'"),
    ({"width_shift_range": 0.1}, "did you mean 'shift'"),
    ({"fill_mode": "nearest"}, "did you mean 'fill'"),
    ({"flip": True}, "did you mean 'horizontal_flip'"),
    ({"zoom": (1.2, 1.1)}, r"augment zoom must be a float or a \(min, max\) pair.*\(1.2, 1.1\)"),
    ({"zoom": 1.5}, "augment zoom as a float must be < 1"),
    ({"brightness": (0, 1.2)}, "augment brightness must be"),
    ({"fill": "wrap"}, "augment fill='wrap' is not one of"),
    ({"rotation": -1}, "augment rotation must be a finite number >= 0; got -1"),
    ({"shear": 95}, "shear < 90 degrees"),
    ({"rotation": float("inf")}, "augment rotation must be a finite number >= 0; got inf"),
    ({"brightness": (0.8, float("inf"))}, r"augment brightness must be .*got \(0.8, inf\)"),
    ({"zoom": float("nan")}, "augment zoom must be a finite number >= 0; got nan"),
    ({"horizontal_flip": "no"}, "horizontal_flip must be True or False; got 'no'"),
    ({"horizontal_flip": 0.5}, "horizontal_flip must be True or False; got 0.5"),
    ({"zoom": 0.1, "scale": (1.05, 1.15)}, "both zoom .* and scale .*give one of them"),
    ({"scale": 1.1}, r"augment scale must be a \(min, max\) pair.*got 1.1"),
])
def test_bad_augment(augment, match):
    """Each a ValueError naming the key (inf once passed the >= 0 checks and surfaced as
    a diverged fit blamed on the learning rate; ``bool("no")`` turned flipping on)."""
    with pytest.raises(ValueError, match=match):
        make_augmenter(augment)


def test_augmented_fit_is_seeded(toy_binary, small_clf_params):
    X, y = toy_binary
    aug = {"rotation": 15, "shear": 10, "zoom": (1.05, 1.15), "brightness": (0.8, 1.2),
           "fill": "nearest", "horizontal_flip": True}
    a = CXRClassifier(**small_clf_params, augment=aug).fit(X, y).predict_proba(X)
    b = CXRClassifier(**small_clf_params, augment=aug).fit(X, y).predict_proba(X)
    np.testing.assert_array_equal(a, b)


def test_zoom_is_keras_zoom_range(draws_max):
    """Keras' ``zoom_range``: width and height divided by their factors, so (2, 2) halves
    a bright square's side (zooms out), (0.5, 0.5) doubles it; the two axes are drawn
    independently (Keras' ``zx, zy = uniform(lo, hi, 2)``)."""
    x = torch.zeros(1, 1, 32, 32)
    x[..., 12:20, 12:20] = 1.0  # an 8 x 8 square about the centre

    def bright(out):
        return int((out > 0.5).sum())

    assert bright(Augmenter(zoom=(2.0, 2.0))(x)) == 16   # 4 x 4
    assert bright(Augmenter(zoom=(0.5, 0.5))(x)) == 256  # 16 x 16
    # draws in order: rotation, shear (both ranges 0 here), zoom_x (low), zoom_y (high)
    calls = iter([torch.ones(1), torch.ones(1), torch.zeros(1), torch.ones(1)])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch, "rand", lambda *shape, device=None: next(calls, torch.ones(*shape)))
        out = Augmenter(zoom=(0.5, 2.0))(x)[0, 0] > 0.5
    rows, cols = out.any(1).sum().item(), out.any(0).sum().item()
    assert (rows, cols) == (4, 16)  # width doubled (0.5), height halved (2.0)
