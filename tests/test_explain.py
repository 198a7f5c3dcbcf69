import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.exceptions import NotFittedError
from sklearn.pipeline import Pipeline

from cxr_estimators import CXRClassifier, ImageLoader
from cxr_estimators.backbones import build_model
from cxr_estimators.explain import (
    SHORTCUT_WARNING_THRESHOLD, _default_layer, _jet, attention_outside, grad_cam, overlay,
    save_overlays, shortcut_warning,
)

torch.set_num_threads(1)

SIZE = 32


def _square_task(n=120, seed=0):
    """Low-level noise; "pos" images carry a bright 8x8 square in the top-left corner."""
    rng = np.random.default_rng(seed)
    X = rng.random((n, 1, SIZE, SIZE), dtype=np.float32) * 0.2
    y = np.array(["neg", "pos"] * (n // 2))
    X[y == "pos", :, :8, :8] += 0.8
    return X, y


def _fit_square_model(device="cpu"):
    X, y = _square_task()
    clf = CXRClassifier(backbone="simple_cnn", max_epochs=15, lr=1e-2, neurons=32,
                        random_state=0, validation_fraction=0, device=device)
    return clf.fit(X, y), X, y


def _top_left_share(heatmaps):
    half = SIZE // 2
    return heatmaps[:, :half, :half].sum(axis=(1, 2)) / heatmaps.sum(axis=(1, 2))


@pytest.fixture(scope="module")
def square_model():
    torch.set_num_threads(1)
    return _fit_square_model()


def _snapshot(module):
    return (
        {k: v.detach().clone() for k, v in module.state_dict().items()},
        {name: m.training for name, m in module.named_modules()},
        {name: p.requires_grad for name, p in module.named_parameters()},
        {n: None if p.grad is None else p.grad.clone() for n, p in module.named_parameters()},
    )


def _assert_untouched(module, snapshot):
    state, modes, flags, grads = snapshot
    for key, value in module.state_dict().items():
        assert torch.equal(value, state[key]), key  # bit-identical, buffers included
    assert {n: m.training for n, m in module.named_modules()} == modes
    assert {n: p.requires_grad for n, p in module.named_parameters()} == flags
    for name, p in module.named_parameters():  # no new .grad, old ones (from fit) unchanged
        assert (p.grad is None) if grads[name] is None else torch.equal(p.grad, grads[name])
    for m in module.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks


# ---------------------------------------------------------------------------- Grad-CAM
def test_grad_cam_localises_the_discriminative_square(square_model):
    clf, X, y = square_model
    assert (clf.predict(X) == y).mean() >= 0.9
    heatmaps = grad_cam(clf, X)
    assert heatmaps.shape == (len(X), SIZE, SIZE) and heatmaps.dtype == np.float32
    assert heatmaps.min() >= 0 and heatmaps.max() <= 1
    share = _top_left_share(heatmaps[y == "pos"])
    assert share.min() > 0.5, share  # uniform attention would give 0.25
    # explaining "pos" on a "pos" image by name gives the same maps as the default
    np.testing.assert_allclose(grad_cam(clf, X[y == "pos"], target="pos"),
                               heatmaps[y == "pos"], atol=1e-6)


def test_heatmaps_differ_between_inputs(square_model):
    clf, X, y = square_model
    pos, neg = np.flatnonzero(y == "pos")[0], np.flatnonzero(y == "neg")[0]
    heatmaps = grad_cam(clf, X[[pos, neg]])
    assert heatmaps[1].max() > 0
    assert not np.allclose(heatmaps[0], heatmaps[1], atol=1e-3)


def test_batches_match_single_images(square_model):
    clf, X, _ = square_model
    together = grad_cam(clf, X[:5], batch_size=2)
    alone = np.concatenate([grad_cam(clf, X[i:i + 1]) for i in range(5)])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_target_per_image(square_model):
    clf, X, y = square_model
    per_image = grad_cam(clf, X[:4], target=y[:4])
    np.testing.assert_allclose(per_image, grad_cam(clf, X[:4]), atol=1e-6)  # all correct
    as_pos = grad_cam(clf, X[:4], target="pos")
    np.testing.assert_allclose(as_pos[1::2], per_image[1::2], atol=1e-6)
    assert not np.allclose(as_pos[0], per_image[0])


def test_explicit_layer(square_model):
    clf, X, _ = square_model
    heatmaps = grad_cam(clf, X[:3], layer="trunk.features.1")  # 8x8 maps, upsampled
    assert heatmaps.shape == (3, SIZE, SIZE)
    assert heatmaps.min() >= 0 and heatmaps.max() == pytest.approx(1.0)


def test_pipeline_with_uint8_input(square_model):
    clf, X, _ = square_model
    images = np.round(X[:6, 0] * 255).astype(np.uint8)
    pipe = Pipeline([("load", ImageLoader(size=SIZE, channels=1, normalize="unit").fit(images)),
                     ("clf", clf)])
    heatmaps = grad_cam(pipe, images)
    assert heatmaps.shape == (6, SIZE, SIZE)
    expected = grad_cam(clf, images[:, None].astype(np.float32) / 255)
    np.testing.assert_allclose(heatmaps, expected, atol=1e-5)


@pytest.mark.parametrize("batch_size", [4, 32])
def test_pipeline_with_lazy_loader_matches_eager(square_model, tmp_path, batch_size):
    clf, X, _ = square_model
    images = np.round(X[:6, 0] * 255).astype(np.uint8)
    paths = []
    for i, image in enumerate(images):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(image).save(paths[-1])

    def pipe(lazy):
        return Pipeline([("load", ImageLoader(size=SIZE, channels=1, normalize="unit",
                                              lazy=lazy)), ("clf", clf)])

    lazy = grad_cam(pipe(True), paths, batch_size=batch_size)
    assert lazy.shape == (6, SIZE, SIZE) and lazy.dtype == np.float32 and lazy.max() > 0
    np.testing.assert_allclose(lazy, grad_cam(pipe(False), paths, batch_size=batch_size),
                               atol=1e-6)
    np.testing.assert_allclose(grad_cam(pipe(True), paths, target="pos", layer="trunk.features.1"),
                               grad_cam(pipe(False), paths, target="pos", layer="trunk.features.1"),
                               atol=1e-6)


def test_model_left_unchanged(square_model):
    clf, X, _ = square_model
    module = clf.module_
    module.zero_grad(set_to_none=True)  # skorch leaves the last step's .grad behind
    module.train()  # also a model left in train mode must come back in train mode
    try:
        before = _snapshot(module)
        grad_cam(clf, X[:8], batch_size=3)
        _assert_untouched(module, before)
        assert all(p.grad is None for p in module.parameters())
    finally:
        module.eval()
    before = _snapshot(module)
    with torch.no_grad():  # an outer no_grad context must not break it
        grad_cam(clf, X[:2])
    _assert_untouched(module, before)


@pytest.mark.parametrize("freeze", [False, True])
def test_batchnorm_model_in_train_mode_left_unchanged(freeze):
    """deep_cnn has BatchNorm: a forward pass in train mode would update running stats."""
    X, y = _square_task(n=16)
    clf = CXRClassifier(backbone="deep_cnn", freeze=freeze, max_epochs=1, neurons=8,
                        random_state=0, validation_fraction=0, device="cpu").fit(X, y)
    module = clf.module_
    bn = [m for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bn and all(m.track_running_stats for m in bn)
    module.zero_grad(set_to_none=True)
    module.train()  # with freeze=True, CXRNet.train keeps the frozen trunk in eval mode
    assert module.training and all(m.training for m in bn) is not freeze
    try:
        before = _snapshot(module)
        running = [(m.running_mean.clone(), m.running_var.clone(),
                    m.num_batches_tracked.clone()) for m in bn]
        heatmaps = grad_cam(clf, X, batch_size=5)
        assert heatmaps.shape == (16, SIZE, SIZE) and np.isfinite(heatmaps).all()
        _assert_untouched(module, before)  # every parameter and buffer, flags, hooks
        for m, (mean, var, count) in zip(bn, running):
            assert torch.equal(m.running_mean, mean) and torch.equal(m.running_var, var)
            assert torch.equal(m.num_batches_tracked, count)
        assert module.training and all(m.training for m in bn) is not freeze
        assert all(p.grad is None for p in module.parameters())
    finally:
        module.eval()


def test_hooks_removed_after_error(square_model):
    clf, X, _ = square_model
    before = _snapshot(clf.module_)
    with pytest.raises(ValueError, match="not a 4-D feature map"):
        grad_cam(clf, X[:2], layer="head.0")
    _assert_untouched(clf.module_, before)


def test_errors(square_model):
    clf, X, _ = square_model
    with pytest.raises(NotFittedError):
        grad_cam(CXRClassifier(backbone="simple_cnn"), X[:2])
    with pytest.raises(ValueError, match=r"trunk\.featurs\.2.*trunk\.features\.2"):
        grad_cam(clf, X[:2], layer="trunk.featurs.2")
    with pytest.raises(ValueError, match=r"'maybe' is not in classes_ \['neg', 'pos'\]"):
        grad_cam(clf, X[:2], target="maybe")
    with pytest.raises(ValueError, match="one label or 2 labels"):
        grad_cam(clf, X[:2], target=["pos"] * 3)
    with pytest.raises(TypeError, match="CXRClassifier"):
        grad_cam(object(), X[:2])
    for size in (None, 2.5, 0, True):
        with pytest.raises(ValueError, match=rf"batch_size must be an int >= 1; got {size}"):
            grad_cam(clf, X[:2], batch_size=size)
    maps = np.zeros((2, SIZE, SIZE))
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]; got '0.5'"):
        overlay(X[0], maps[0], alpha="0.5")
    with pytest.raises(ValueError, match=r"border must be in \[0, 0.5\); got '0.1'"):
        attention_outside(maps, border="0.1")
    with pytest.raises(ValueError, match=r"threshold must be a number in \[0, 1\]; got nan"):
        shortcut_warning(maps, threshold=float("nan"))


def test_frozen_backbone():
    X, y = _square_task(n=16)
    clf = CXRClassifier(backbone="simple_cnn", freeze=True, max_epochs=1, neurons=8,
                        random_state=0, validation_fraction=0, device="cpu").fit(X, y)
    assert not any(p.requires_grad for p in clf.module_.trunk.parameters())
    before = _snapshot(clf.module_)
    heatmaps = grad_cam(clf, X, target="pos")
    assert heatmaps.shape == (16, SIZE, SIZE) and heatmaps.max() > 0
    _assert_untouched(clf.module_, before)


@pytest.mark.parametrize("backbone, layer", [
    ("resnet18", "trunk.layer4"),             # blocks end in an in-place ReLU
    ("densenet121", "trunk.features.norm5"),  # followed by F.relu(inplace=True)
    ("mobilenet_v2", "trunk.features.18"),
])
def test_torchvision_backbones(backbone, layer):
    rng = np.random.default_rng(0)
    X = rng.random((4, 1, 64, 64), dtype=np.float32)
    clf = CXRClassifier(backbone=backbone, max_epochs=1, batch_size=4, random_state=0,
                        validation_fraction=0, device="cpu").fit(X, [0, 1, 0, 1])
    assert _default_layer(clf.module_, torch.from_numpy(X[:1])) == layer
    before = _snapshot(clf.module_)
    heatmaps = grad_cam(clf, X, batch_size=3)
    assert heatmaps.shape == (4, 64, 64) and heatmaps.dtype == np.float32
    assert np.isfinite(heatmaps).all() and heatmaps.min() >= 0 and heatmaps.max() <= 1
    _assert_untouched(clf.module_, before)


def test_densenet_matches_reference_despite_inplace_relu():
    """densenet applies F.relu(inplace=True) to norm5's output: the captured activation must
    be norm5's output, not the ReLU'd tensor."""
    rng = np.random.default_rng(1)
    X = rng.random((3, 1, 64, 64), dtype=np.float32)
    clf = CXRClassifier(backbone="densenet121", max_epochs=1, batch_size=4, random_state=0,
                        validation_fraction=0, device="cpu").fit(X, [0, 1, 0])
    model = clf.module_
    with torch.enable_grad():  # densenet's forward after `features`, written out by hand
        A = model.trunk.features(torch.from_numpy(X).expand(-1, 3, -1, -1)).detach()
        A.requires_grad_(True)
        pooled = torch.flatten(torch.nn.functional.adaptive_avg_pool2d(torch.relu(A), 1), 1)
        score = model.head(pooled)[:, 1].sum()
        (grads,) = torch.autograd.grad(score, A)
    cam = torch.relu((grads.mean((2, 3), keepdim=True) * A.detach()).sum(1, keepdim=True))
    cam = torch.nn.functional.interpolate(cam, size=(64, 64), mode="bilinear")[:, 0]
    peak = cam.amax((1, 2), keepdim=True)
    expected = torch.where(peak > 0, cam / peak.clamp_min(1e-12), 0.0).numpy()
    assert expected.max() > 0
    np.testing.assert_allclose(grad_cam(clf, X, target=1), expected, atol=1e-4)


@pytest.mark.parametrize("backbone, size, layer", [
    ("simple_cnn", 32, "trunk.features.2"),
    ("deep_cnn", 64, "trunk.features.4"),
    ("efficientnet_b0", 64, "trunk.features.8"),
    ("mobilenet_v3_small", 64, "trunk.features"),
    ("inception_v3", 139, "trunk.Mixed_7c"),  # not the last conv: one branch of Mixed_7c
])
def test_default_layer(backbone, size, layer):
    torch.manual_seed(0)
    model = build_model(backbone, 2, in_channels=1).eval()
    assert _default_layer(model, torch.rand(1, 1, size, size)) == layer


def test_default_layer_of_a_vgg_style_stack_is_before_the_final_pool():
    """vgg's trunk.features ends in a max-pool (1x1 maps at small sizes); the default is the
    activation after its last convolution. The same rule, on a small stand-in."""
    from cxr_estimators.backbones import CXRNet

    layers = []
    for c_in, c_out in [(1, 4), (4, 8)]:
        layers += [torch.nn.Conv2d(c_in, c_out, 3, padding=1), torch.nn.BatchNorm2d(c_out),
                   torch.nn.ReLU(inplace=True), torch.nn.MaxPool2d(2)]
    trunk = torch.nn.Sequential()
    trunk.features = torch.nn.Sequential(*layers)
    trunk.pool = torch.nn.AdaptiveAvgPool2d(1)
    trunk.flat = torch.nn.Flatten()
    trunk.classifier = torch.nn.Linear(8, 8)  # as vgg's: the trunk has two blocks
    model = CXRNet(trunk, 8, 2, neurons=4, in_channels=1).eval()
    assert _default_layer(model, torch.rand(1, 1, 8, 8)) == "trunk.features.6"


@pytest.mark.slow
@pytest.mark.parametrize("backbone, size, layer", [
    ("vgg16", 32, "trunk.features.29"),  # the last ReLU before the final max-pool
    ("resnet50", 64, "trunk.layer4"),
    ("convnext_tiny", 32, "trunk.features"), ("efficientnet_b4", 64, "trunk.features.8"),
])
def test_default_layer_large_backbones(backbone, size, layer):
    model = build_model(backbone, 2, in_channels=1).eval()
    assert _default_layer(model, torch.rand(1, 1, size, size)) == layer


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_grad_cam_on_cuda():
    clf, X, y = _fit_square_model(device="cuda")
    assert next(clf.module_.parameters()).is_cuda
    assert (clf.predict(X) == y).mean() >= 0.9
    before = _snapshot(clf.module_)
    heatmaps = grad_cam(clf, X)
    assert heatmaps.shape == (len(X), SIZE, SIZE) and heatmaps.dtype == np.float32
    assert _top_left_share(heatmaps[y == "pos"]).min() > 0.5
    _assert_untouched(clf.module_, before)


# ---------------------------------------------------------------------------- overlays
@pytest.mark.parametrize("shape", [(20, 24), (20, 24, 3), (20, 24, 1), (3, 20, 24), (1, 20, 24)])
def test_overlay_shapes(shape):
    rng = np.random.default_rng(0)
    image = rng.normal(size=shape) * 100  # any range
    rgb = overlay(image, rng.random((5, 6)))
    assert rgb.shape == (20, 24, 3) and rgb.dtype == np.uint8


def test_overlay_alpha_extremes():
    image = np.linspace(-3, 5, 16 * 16).reshape(16, 16)
    heatmap = np.zeros((16, 16))
    gray = overlay(image, heatmap, alpha=0.0)
    assert gray[0, 0].tolist() == [0, 0, 0] and gray[-1, -1].tolist() == [255, 255, 255]
    blue = overlay(image, heatmap, alpha=1.0)  # jet(0) is dark blue
    assert (blue[..., 2] > 100).all() and (blue[..., :2] == 0).all()
    with pytest.raises(ValueError, match="alpha"):
        overlay(image, heatmap, alpha=2)
    with pytest.raises(ValueError, match="expected"):
        overlay(np.zeros((5, 6, 7)), heatmap)


def test_builtin_jet_matches_matplotlib():
    matplotlib = pytest.importorskip("matplotlib")
    values = np.linspace(0, 1, 101)
    assert np.abs(_jet(values) - matplotlib.colormaps["jet"](values)[:, :3]).max() < 0.15


def test_save_overlays(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.random((3, 1, 16, 16), dtype=np.float32)
    paths = save_overlays(images, rng.random((3, 16, 16)), tmp_path / "out", prefix="cam",
                          annotate=False)
    assert [p.rsplit("/", 1)[-1] for p in paths] == ["cam_000.png", "cam_001.png", "cam_002.png"]
    with Image.open(paths[0]) as img:
        assert img.size == (16, 16) and img.mode == "RGB"
    with pytest.raises(ValueError, match="3 images but 2 heatmaps"):
        save_overlays(images, rng.random((2, 16, 16)), tmp_path)
    with pytest.raises(ValueError, match="probabilities has 2 entries but there are 3"):
        save_overlays(images, rng.random((3, 16, 16)), tmp_path, probabilities=[0.1, 0.2])


def test_save_overlays_annotated_figure(tmp_path):
    """A titled figure with a colour bar; low attention leaves the image untinted."""
    pytest.importorskip("matplotlib")
    image = np.tile(np.linspace(0, 1, 28, dtype=np.float32), (1, 28, 1))
    heat = np.zeros((28, 28))
    heat[20:, 20:] = 1.0
    (path,) = save_overlays([image], [heat], tmp_path, true_labels=["pneumonia"],
                            predicted_labels=["normal"], probabilities=[0.83])
    with Image.open(path) as img:
        rgb = np.asarray(img.convert("RGB")).astype(int)
    assert rgb.shape[0] > 200 and rgb.shape[1] > 200  # a figure, not a 28x28 array
    # the image's untinted mid-grays (R = G = B) still show where attention is 0
    gray = (np.ptp(rgb, axis=-1) <= 2) & (rgb[..., 0] > 40) & (rgb[..., 0] < 215)
    assert gray.sum() > 2000
    # and the attended corner is coloured (not gray)
    assert (np.ptp(rgb, axis=-1) > 100).sum() > 500


# ---------------------------------------------------------------------------- shortcut check
def _maps_centre_and_border(size=20):
    centre = np.zeros((size, size))
    centre[8:12, 8:12] = 1.0
    border = np.zeros((size, size))
    border[:2, :] = 0.7
    return np.stack([centre, border])


def test_attention_outside_default_box():
    maps = _maps_centre_and_border()
    np.testing.assert_allclose(attention_outside(maps), [0.0, 1.0])
    # a flat map: the 3-pixel band of a 20-pixel side covers 1 - 14**2 / 20**2 of the area
    np.testing.assert_allclose(attention_outside(np.ones((20, 20))), [1 - 196 / 400])
    assert np.isnan(attention_outside(np.zeros((1, 20, 20)))[0])
    with pytest.raises(ValueError, match="non-negative"):
        attention_outside(-maps)
    with pytest.raises(ValueError, match="border"):
        attention_outside(maps, border=0.5)


def test_attention_outside_with_mask():
    maps = _maps_centre_and_border()
    left = np.zeros((20, 20), dtype=bool)
    left[:, :10] = True  # a "lung" mask: the left half
    np.testing.assert_allclose(attention_outside(maps, left), [0.5, 0.5])
    per_image = np.stack([np.ones((20, 20), bool), np.zeros((20, 20), bool)])
    np.testing.assert_allclose(attention_outside(maps, per_image.astype(int)), [0.0, 1.0])
    with pytest.raises(ValueError, match="mask has shape"):
        attention_outside(maps, np.ones((10, 10), bool))


def test_shortcut_warning():
    maps = _maps_centre_and_border()
    assert SHORTCUT_WARNING_THRESHOLD == 0.5
    with pytest.warns(UserWarning, match="1 of 2 images put most Grad-CAM attention"):
        flagged = shortcut_warning(maps)
    assert flagged.tolist() == [1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert shortcut_warning(maps[:1]).tolist() == []
        assert shortcut_warning(maps, threshold=1.0).tolist() == []
