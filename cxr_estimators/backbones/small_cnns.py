"""The two small from-scratch CNNs students build (``simple_cnn``, ``deep_cnn``),
written here because no library ships them: conv3x3 → [BatchNorm] → ReLU → max-pool
blocks, then global average pooling."""

from __future__ import annotations

import numbers

import torch
from torch import nn

from .._validation import did_you_mean
from .heads import MAX_HEAD_PARAMETERS, conv_map_trunk
from .registry import Trunk
from .weights import load_local_weights, local_weights_path, looks_like_path

__all__ = ["SimpleCNN", "DeepCNN", "SMALL_CNNS", "names", "build"]

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


def names():
    return list(SMALL_CNNS)


def _checked_kwargs(backbone, kwargs, in_channels):
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
    return {**kwargs, **({"widths": tuple(int(w) for w in widths)} if widths else {})}


def build(name, weights, in_channels, kwargs):
    """``SimpleCNN`` / ``DeepCNN`` for ``in_channels`` with ``backbone_kwargs`` checked."""
    if weights is not None and not looks_like_path(weights):
        raise ValueError(f"weights={weights!r}: backbone {name!r} has no pretrained weights; "
                         "use weights=None or a path to a checkpoint")
    path = local_weights_path(weights) if weights is not None else None
    model = (SimpleCNN if name == "simple_cnn" else DeepCNN)(
        in_channels, **_checked_kwargs(name, kwargs, in_channels))
    if path is not None:
        load_local_weights(model, path, name)
    blocks = tuple(f"features.{i}" for i in range(len(model.features)))
    return Trunk(model, model.num_features, in_channels, blocks, blocks,
                 conv_map=lambda: conv_map_trunk(model, "fc"),
                 weights_source=str(path) if path else "random init",
                 extras={"pretrainable": False})
