"""Grad-CAM heatmaps for any backbone, overlays, and a shortcut-learning warning.

Grad-CAM (Selvaraju et al., ICCV 2017) weights the feature maps ``A_k`` of a convolutional
layer by the spatial mean of the gradient of the target class' logit with respect to them,
``w_k = mean_ij dy_c / dA_kij``, and keeps ``ReLU(sum_k w_k A_k)``: the regions whose
features raise that logit. The map is upsampled (bilinear) to the input size and divided
by its maximum, so each map lies in [0, 1] and an all-zero map stays zero.

Written here by hand, with a forward hook and :func:`torch.autograd.grad`, rather than
using the ``grad-cam`` package or captum: it is about sixty lines, neither package is a
dependency of this project (nor installable offline), and doing it ourselves lets us
guarantee what the estimator needs: the model is left exactly as it was (train/eval flags,
``requires_grad`` flags, no ``.grad`` on any parameter, no hook left behind, also when an
error is raised), frozen backbones work, and in-place ReLUs after the hooked layer (resnet
blocks, densenet's final ReLU) cannot corrupt the captured activation.

:func:`attention_outside` and :func:`shortcut_warning` turn the heatmaps into a number:
the share of attention outside the chest region. A model that looks at arm position, text
markers or the image border instead of the lungs can score well on one hospital's images
and fail elsewhere (a COVID-19 model this project started from did exactly that).
"""

from __future__ import annotations

import difflib
import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.pipeline import Pipeline
from sklearn.utils.validation import check_is_fitted

from ._validation import did_you_mean, is_finite_number

__all__ = [
    "COARSE_MAP_CELLS",
    "SHORTCUT_WARNING_THRESHOLD",
    "attention_outside",
    "grad_cam",
    "overlay",
    "save_overlays",
    "shortcut_warning",
]

#: A heatmap is flagged when more than this share of its mass lies outside the region of
#: interest, i.e. when *most* of the evidence comes from outside the chest. With the default
#: ``border=0.15`` the outside band covers 51 % of the image, so 0.5 is also about what a
#: flat, featureless map scores: a flagged map prefers the chest no more than chance.
SHORTCUT_WARNING_THRESHOLD = 0.5


# ---------------------------------------------------------------------------- Grad-CAM
def _split_estimator(estimator, X):
    """Return (fitted CXRClassifier, X as the classifier's float32 (n, C, H, W))."""
    from .classifier import CXRClassifier

    clf = estimator[-1] if isinstance(estimator, Pipeline) else estimator
    if not isinstance(clf, CXRClassifier):
        raise TypeError(
            "grad_cam needs a CXRClassifier or a Pipeline ending in one; got "
            f"{type(clf).__name__}"
        )
    check_is_fitted(clf, "net_")
    if isinstance(estimator, Pipeline) and len(estimator) > 1:
        X = estimator[:-1].transform(X)
    return clf, clf._check_X(X)


def _resolve_layer(module, layer):
    """The named submodule, or a ValueError listing valid names near ``layer``."""
    names = dict(module.named_modules())
    if layer in names and layer != "":
        return names[layer]
    near = difflib.get_close_matches(str(layer), [n for n in names if n], n=5, cutoff=0.4)
    if not near:
        near = [n for n in names if n.startswith("trunk.")][-5:]
    raise ValueError(
        f"layer={layer!r} is not a module of {type(module).__name__}; valid names near it: "
        f"{near} (see dict(estimator.module_.named_modules()))"
    )


def _map_shapes(module, x):
    """Output shape of every submodule of ``module`` on one image (4-D tensors only)."""
    names = {m: n for n, m in module.named_modules() if n}
    shapes = {}

    def record(mod, inputs, out):
        if isinstance(out, torch.Tensor) and out.ndim == 4:
            shapes.setdefault(names[mod], tuple(out.shape[-2:]))

    handles = [m.register_forward_hook(record) for m in names]
    try:
        with torch.no_grad():
            module(x[:1])
    finally:
        for h in handles:
            h.remove()
    return shapes


#: Cells per side below which a map localises a quadrant at best: one cell then spans a
#: third of the image or more, far coarser than the 15 % border band of
#: :func:`attention_outside`, so that check cannot separate the border from the chest.
COARSE_MAP_CELLS = 4


def _too_small(shape, minimum=2):
    return shape is None or min(shape) < minimum


def _default_layer(module, x, shapes=None):
    """The deepest of the registry's Grad-CAM layers (``module.cam_layers``, see
    :mod:`cxr_estimators.backbones.registry`) whose output is a 4-D map of at least 2x2,
    checked by forward hooks on one image. A deeper one whose map is smaller (resnet18's
    layer4 at 32 px is 1x1) is passed over with a warning: the Grad-CAM of a 1x1 map is
    one constant. ``shapes``: :func:`_map_shapes` of ``x``, when the caller has it."""
    shapes = _map_shapes(module, x) if shapes is None else shapes
    skipped = []
    name = _last_big_enough(module, shapes, skipped)
    if name is None:
        raise ValueError(
            f"Grad-CAM: none of the layers the backbone registry names "
            f"({list(module.cam_layers)}) outputs a 4-D map of at least 2x2 at this input "
            f"size ({tuple(x.shape[-2:])}); use larger images or pass layer=")
    if skipped:
        small = shapes[skipped[0]]
        warnings.warn(
            f"Grad-CAM: layer {skipped[0]!r} outputs a {small[0]}x{small[1]} map at this "
            f"input size, too small to localise anything; using {name!r} "
            f"({shapes[name][0]}x{shapes[name][1]}) instead (pass layer= to choose)",
            UserWarning, stacklevel=4)
    return name


def _last_big_enough(module, shapes, skipped, minimum=2):
    """The deepest of ``module.cam_layers`` with a 4-D output of at least ``minimum``
    cells per side (the deeper ones recorded in ``skipped``), or None."""
    for name in reversed(getattr(module, "cam_layers", ())):
        if name not in shapes:
            continue
        if not _too_small(shapes[name], minimum):
            return name
        skipped.append(name)
    return None


def _check_layer_size(module, layer, x, shapes):
    """Refuse a ``layer`` whose map is smaller than 2x2 and warn about one smaller than
    :data:`COARSE_MAP_CELLS` per side, naming a finer one where the trunk has it."""
    shape = shapes.get(layer)
    if shape is None or not _too_small(shape, COARSE_MAP_CELLS):
        return
    size = tuple(x.shape[-2:])
    if _too_small(shape):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            better = _default_layer(module, x, shapes)
        raise ValueError(
            f"layer={layer!r} outputs a {shape[0]}x{shape[1]} map at this input size "
            f"({size}): its Grad-CAM is one constant value. Use an earlier "
            f"layer, e.g. layer={better!r}, or larger images")
    finer = _last_big_enough(module, shapes, [], COARSE_MAP_CELLS)
    hint = (f"pass layer={finer!r} ({shapes[finer][0]}x{shapes[finer][1]}) or use larger "
            "images" if finer is not None else "use larger images")
    warnings.warn(
        f"Grad-CAM: layer {layer!r} outputs a {shape[0]}x{shape[1]} map at this input size "
        f"({size}): each cell spans a third of the image or more, so a heatmap points at "
        "a quadrant at best, and attention_outside / shortcut_warning cannot tell the "
        f"border band from the chest at this resolution; {hint}",
        UserWarning, stacklevel=3)


def _rows(X, start, stop, device):
    """Images ``start:stop`` of X as a tensor on ``device`` (float32, or uint8/uint16
    that the model normalises). X is the classifier's input: an array (sliced) or a torch
    Dataset, e.g. from ``ImageLoader(lazy=True)``, whose items (an image, or an
    ``(image, label)`` pair) are stacked."""
    if not isinstance(X, torch.utils.data.Dataset):
        return torch.as_tensor(np.asarray(X[start:stop]), device=device)
    items = [X[i] for i in range(start, min(stop, len(X)))]
    images = [item[0] if isinstance(item, (tuple, list)) else item for item in items]
    # no dtype cast: uint8/uint16 items (ImageLoader(dtype="uint8", lazy=True)) are
    # normalised by the model itself
    return torch.stack([torch.as_tensor(image) for image in images]).to(device)


def _target_indices(target, classes, n, findings=False):
    """Class indices (n,) from ``target`` (one label or one label per image), or None;
    ``findings``: ``classes`` are a multilabel model's finding names."""
    if target is None:
        return None
    index = {c: i for i, c in enumerate(classes.tolist())}
    labels = np.asarray(target, dtype=object)
    if labels.ndim == 0:
        labels = np.full(n, labels.item(), dtype=object)
    if labels.shape != (n,):
        raise ValueError(
            f"target has shape {labels.shape}; expected one label or {n} labels (one per image)"
        )
    for label in labels:
        if label not in index:
            what = "findings_" if findings else "classes_"
            raise ValueError(f"target {label!r} is not in {what} {classes.tolist()}"
                             f"{did_you_mean(label, classes.tolist())}")
    return np.array([index[label] for label in labels], dtype=np.int64)


def _cam_batch(module, layer_module, layer, x, targets):
    """Grad-CAM maps (n, H, W) on the model's device for one batch."""
    captured = {}

    def hook(mod, inputs, output):
        if not isinstance(output, torch.Tensor) or output.ndim != 4:
            shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output)
            raise ValueError(
                f"layer={layer!r} outputs {shape}, not a 4-D feature map (n, C, h, w); "
                "choose a convolutional layer or block"
            )
        act = output
        if not act.requires_grad:  # frozen layers: make the activation a leaf we can differentiate
            act = output.detach().requires_grad_(True)
        captured["A"] = act
        # Later in-place ops (resnet's / densenet's ReLU) then modify the clone, not A.
        return act.clone()

    handle = layer_module.register_forward_hook(hook)
    try:
        logits = module(x)
    finally:
        handle.remove()
    targets = logits.argmax(1) if targets is None else torch.as_tensor(targets, device=x.device)
    score = logits.gather(1, targets[:, None]).sum()
    if "A" not in captured:
        raise ValueError(f"layer={layer!r} does not run when the model predicts (the "
                         "augmentation runs only in training), so it has no feature map to "
                         "explain; choose a layer of the trunk (layer=None picks one)")
    act = captured["A"]
    (grads,) = torch.autograd.grad(score, act)
    weights = grads.float().mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * act.detach().float()).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    peak = cam.amax(dim=(1, 2), keepdim=True)
    return torch.where(peak > 0, cam / peak.clamp_min(1e-12), torch.zeros_like(cam))


def grad_cam(estimator, X, *, target=None, layer=None, batch_size=32):
    """Grad-CAM heatmaps of a fitted classifier, one per image.

    Parameters
    ----------
    estimator : CXRClassifier or Pipeline
        A fitted :class:`~cxr_estimators.CXRClassifier`, or a fitted Pipeline ending in one
        (``X`` then goes through the pipeline's transformers first, e.g. an ``ImageLoader``
        turning paths into arrays).
    X : array-like or list of paths
        What ``estimator.predict`` accepts (also what a pipeline with
        ``ImageLoader(lazy=True)`` turns into a lazy dataset: images are then decoded
        batch by batch).
    target : label, array-like of shape (n,) or None, default=None
        Class from ``classes_`` whose logit (pre-softmax score) is explained; one label for
        all images or one per image. None explains each image's predicted class. A
        multilabel model takes a finding from ``findings_`` (``target="Effusion"``, its
        sigmoid's logit; an unknown name is an error suggesting the closest); None then
        explains each image's most probable finding.
    layer : str or None, default=None
        Dotted module name inside ``estimator.module_`` (a
        :class:`~cxr_estimators.backbones.CXRNet`), e.g. ``"trunk.layer4"``. None picks the
        last block of the trunk whose output is a 4-D feature map: ``trunk.layer4``
        (resnet), ``trunk.features.norm5`` (densenet121), ``trunk.features.18``
        (mobilenet_v2), ``trunk.Mixed_7c`` (inception_v3), ``trunk.features.2``
        (simple_cnn), ...; in a flat VGG-style stack the activation after its last
        convolution, before the final max-pool (``trunk.features.29`` for vgg16). A block
        whose map is smaller than 2x2 at the input size is skipped with a warning, and an
        explicit ``layer`` that small is an error naming a better one: the Grad-CAM of a
        1x1 map is one constant. A map under ``COARSE_MAP_CELLS`` (4) cells per side
        (resnet18's layer4 at 64 px is 2x2) is used with a warning that names a finer
        layer: it localises a quadrant at best, too coarse for :func:`shortcut_warning`.
    batch_size : int, default=32
        Images per forward/backward pass.

    Returns
    -------
    heatmaps : ndarray of shape (n, H, W), float32
        In [0, 1] (each map divided by its maximum; an all-zero map stays zero), at the
        classifier's input resolution.

    Notes
    -----
    The model is run in eval mode, in float32 (no autocast), on its own device and in its
    own memory layout (channels_last where the classifier uses it), and left unchanged:
    train/eval flags and ``requires_grad`` flags are restored, no hook remains and no
    parameter receives a ``.grad``.

    Examples
    --------
    >>> from cxr_estimators.explain import grad_cam, overlay
    >>> heatmaps = grad_cam(clf, X_test[:8])                       # doctest: +SKIP
    >>> rgb = overlay(X_test[0], heatmaps[0])                      # doctest: +SKIP
    """
    if not is_finite_number(batch_size, integral=True) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1; got {batch_size!r}")
    clf, X = _split_estimator(estimator, X)
    module = clf.module_
    device = next(module.parameters()).device
    modes = {m: m.training for m in module.modules()}
    flags = {p: p.requires_grad for p in module.parameters()}
    findings = getattr(clf, "findings_", None)  # multilabel: explain a finding's logit
    targets = _target_indices(target, clf.classes_ if findings is None else findings,
                              len(X), findings=findings is not None)
    layout = clf._runtime().layout  # a channels_last model is slow on contiguous input
    out = []
    try:
        module.eval()
        with torch.enable_grad():
            first = layout(_rows(X, 0, 1, device))
            shapes = _map_shapes(module, first)  # one probe for the choice and the check
            if layer is None:
                layer = _default_layer(module, first, shapes)
            layer_module = _resolve_layer(module, layer)
            _check_layer_size(module, layer, first, shapes)
            for start in range(0, len(X), int(batch_size)):
                stop = start + int(batch_size)
                x = layout(_rows(X, start, stop, device))
                t = None if targets is None else targets[start:stop]
                out.append(_cam_batch(module, layer_module, layer, x, t).cpu().numpy())
    finally:
        for m, training in modes.items():
            m.training = training
        for p, requires_grad in flags.items():
            p.requires_grad_(requires_grad)
    return np.concatenate(out).astype(np.float32, copy=False)


# ---------------------------------------------------------------------------- overlays
def _jet(values):
    """Matplotlib's "jet" without matplotlib: piecewise-linear blue → cyan → yellow → red."""
    v = values[..., None]
    centres = np.array([0.75, 0.5, 0.25])  # red, green, blue peaks
    return np.clip(1.5 - np.abs(4.0 * (v - centres)), 0.0, 1.0)


def _colorize(heatmap, colormap):
    try:
        import matplotlib
    except ImportError:
        if colormap != "jet":
            raise ImportError(
                f"colormap={colormap!r} needs matplotlib; without it only 'jet' is built in"
            ) from None
        return _jet(heatmap)
    return matplotlib.colormaps[colormap](heatmap)[..., :3]


def _display_image(image):
    """(H, W), (H, W, C) or (C, H, W), any range → float RGB (H, W, 3) in [0, 1]."""
    img = np.asarray(image, dtype=np.float64)
    if img.ndim == 3:
        if img.shape[-1] in (1, 3, 4):
            img = img[..., :3]
        elif img.shape[0] in (1, 3, 4):
            img = np.moveaxis(img[:3], 0, -1)
        else:
            raise ValueError(
                f"image has shape {img.shape}; expected (H, W), (H, W, C) or (C, H, W)"
            )
    elif img.ndim != 2:
        raise ValueError(f"image has shape {img.shape}; expected (H, W), (H, W, C) or (C, H, W)")
    if img.ndim == 2:
        img = img[..., None]
    if img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    lo, hi = np.nanmin(img), np.nanmax(img)
    return (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)


def _resize_heatmap(heatmap, shape):
    heatmap = np.asarray(heatmap, dtype=np.float32)
    if heatmap.ndim != 2:
        raise ValueError(f"heatmap has shape {heatmap.shape}; expected (h, w)")
    if heatmap.shape != tuple(shape):
        t = torch.from_numpy(np.ascontiguousarray(heatmap))[None, None]
        heatmap = F.interpolate(t, size=tuple(shape), mode="bilinear",
                                align_corners=False)[0, 0].numpy()
    return np.clip(heatmap, 0.0, 1.0)


def overlay(image, heatmap, *, alpha=0.4, colormap="jet"):
    """Blend a heatmap over an image for display.

    Parameters
    ----------
    image : ndarray of shape (H, W), (H, W, C) or (C, H, W)
        Any value range (min-max normalised for display), e.g. one row of ImageLoader output.
    heatmap : ndarray of shape (h, w)
        Values in [0, 1]; resized (bilinear) to (H, W) if needed.
    alpha : float in [0, 1], default=0.4
        Weight of the coloured heatmap.
    colormap : str, default="jet"
        A matplotlib colormap name; without matplotlib only "jet" (built in) works.

    Returns
    -------
    rgb : ndarray of shape (H, W, 3), uint8
    """
    if not (is_finite_number(alpha) and 0.0 <= alpha <= 1.0):
        raise ValueError(f"alpha must be in [0, 1]; got {alpha!r}")
    img = _display_image(image)
    colours = _colorize(_resize_heatmap(heatmap, img.shape[:2]), colormap)
    blended = (1.0 - alpha) * img + alpha * colours
    return np.round(np.clip(blended, 0.0, 1.0) * 255).astype(np.uint8)


def save_overlays(images, heatmaps, directory, *, prefix="gradcam", alpha=0.4,
                  true_labels=None, predicted_labels=None, probabilities=None, grid=False,
                  annotate=True):
    """Write one Grad-CAM figure per image into ``directory`` (created if needed).

    With matplotlib (``annotate=True``, the default) each file is a figure drawn by
    :func:`cxr_estimators.plotting.plot_heatmap`: the image at its own resolution, the
    heatmap in a colormap transparent where attention is low, a colour bar, and a title
    with the true and predicted label and the probability when given. ``annotate=False``
    (or no matplotlib) writes the bare :func:`overlay` array at the image's size.

    Parameters
    ----------
    images : sequence of images or ndarray (n, C, H, W) / (n, H, W)
    heatmaps : ndarray of shape (n, h, w)
        E.g. the output of :func:`grad_cam`.
    directory : str or path
    prefix : str, default="gradcam"
        Files are named ``{prefix}_{i:03d}.png``.
    alpha : float, default=0.4
        Heatmap weight of the bare overlay (``annotate=False``).
    true_labels, predicted_labels, probabilities : sequences of length n, optional
        Shown in each figure's title.
    grid : bool, default=False
        Grid lines every 8 pixels.
    annotate : bool, default=True

    Returns
    -------
    paths : list of str
    """
    from PIL import Image

    if len(images) != len(heatmaps):
        raise ValueError(f"{len(images)} images but {len(heatmaps)} heatmaps")
    for name, values in (("true_labels", true_labels), ("predicted_labels", predicted_labels),
                         ("probabilities", probabilities)):
        if values is not None and len(values) != len(images):
            raise ValueError(f"{name} has {len(values)} entries but there are "
                             f"{len(images)} images")
    try:
        from .plotting import plot_heatmap
    except ImportError:  # pragma: no cover - plotting itself imports without matplotlib
        annotate = False
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (image, heatmap) in enumerate(zip(images, heatmaps)):
        path = directory / f"{prefix}_{i:03d}.png"
        try:
            if not annotate:
                raise ImportError
            plot_heatmap(image, heatmap, grid=grid, path=path,
                         **{key: None if values is None else values[i] for key, values in (
                             ("true_label", true_labels), ("predicted_label", predicted_labels),
                             ("probability", probabilities))})
        except ImportError:  # no matplotlib: the bare overlay
            Image.fromarray(overlay(image, heatmap, alpha=alpha)).save(path)
        paths.append(os.fspath(path))
    return paths


# ---------------------------------------------------------------------------- shortcut check
def _roi_masks(shape, mask, border):
    n, h, w = shape
    if mask is None:
        if not (is_finite_number(border) and 0.0 <= border < 0.5):
            raise ValueError(f"border must be in [0, 0.5); got {border!r}")
        roi = np.zeros((h, w), dtype=bool)
        dh, dw = int(round(border * h)), int(round(border * w))
        roi[dh:h - dh, dw:w - dw] = True
        return roi
    roi = np.asarray(mask)
    if roi.dtype != bool:
        if not np.isin(roi, (0, 1)).all():
            raise ValueError("mask must be boolean (True = region of interest, e.g. the lungs)")
        roi = roi.astype(bool)
    if roi.shape not in ((h, w), (n, h, w)):
        raise ValueError(
            f"mask has shape {roi.shape}; expected ({h}, {w}) or ({n}, {h}, {w}) to match "
            "the heatmaps"
        )
    return roi


def attention_outside(heatmaps, mask=None, *, border=0.15):
    """Fraction of each heatmap's mass outside the region of interest.

    Parameters
    ----------
    heatmaps : ndarray of shape (n, H, W) or (H, W)
        Non-negative maps, e.g. from :func:`grad_cam`.
    mask : ndarray of bool, shape (H, W) or (n, H, W), or None
        True inside the region of interest (e.g. a lung mask). None: the central box left
        after removing a ``border`` band on each side (where arms, shoulders, text markers
        and collimator edges usually are).
    border : float in [0, 0.5), default=0.15
        Width of that band as a fraction of height and width (ignored with a mask).

    Returns
    -------
    fractions : ndarray of shape (n,)
        In [0, 1]; NaN for an all-zero heatmap (no attention anywhere).
    """
    maps = np.asarray(heatmaps, dtype=np.float64)
    if maps.ndim == 2:
        maps = maps[None]
    if maps.ndim != 3:
        raise ValueError(f"heatmaps have shape {maps.shape}; expected (n, H, W) or (H, W)")
    if maps.size and maps.min() < 0:
        raise ValueError(f"heatmaps must be non-negative; minimum is {maps.min():.3g}")
    roi = _roi_masks(maps.shape, mask, border)
    total = maps.sum(axis=(1, 2))
    outside = np.where(roi, 0.0, maps).sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, outside / total, np.nan)


def shortcut_warning(heatmaps, mask=None, *, border=0.15, threshold=SHORTCUT_WARNING_THRESHOLD):
    """Warn when heatmaps put most of their attention outside the chest region.

    Parameters
    ----------
    heatmaps, mask, border
        As in :func:`attention_outside`.
    threshold : float, default=SHORTCUT_WARNING_THRESHOLD (0.5)
        Images whose outside fraction exceeds it are flagged.

    Returns
    -------
    indices : ndarray of int
        Flagged images. A ``UserWarning`` is issued when there is at least one.
    """
    if not (is_finite_number(threshold) and 0.0 <= threshold <= 1.0):
        raise ValueError(f"threshold must be a number in [0, 1]; got {threshold!r}")
    fractions = attention_outside(heatmaps, mask, border=border)
    flagged = np.flatnonzero(fractions > threshold)
    if len(flagged):
        region = "the mask" if mask is not None else f"the central chest box (border={border})"
        warnings.warn(
            f"{len(flagged)} of {len(fractions)} images put most Grad-CAM attention "
            f"(> {threshold:.0%} of the heatmap mass) outside {region}. The model may be "
            "using shortcuts - arm position, text markers, burned-in labels, the image "
            "border - rather than the lungs, as a COVID-19 model this project started from "
            "did; such a model can fail on another hospital's images. Inspect the overlays "
            f"(images {flagged[:10].tolist()}{'...' if len(flagged) > 10 else ''}) and "
            "consider ImageLoader(center_crop=...) or a lung mask.",
            UserWarning,
            stacklevel=2,
        )
    return flagged


from ._shortcut import MIN_AUC_DROP, ShortcutTest, shortcut_test  # noqa: E402  (re-export)

__all__ += ["MIN_AUC_DROP", "ShortcutTest", "shortcut_test"]
