"""``resnet50v2``: Keras' ResNet50V2 (He et al., "Identity Mappings in Deep Residual
Networks", 2016) layer for layer, written here because neither torchvision nor timm
builds Keras' variant (timm's ``resnetv2_50`` differs: no conv biases, stride on the
first block of a stage, another stem).

As ``keras.applications.ResNet50V2(include_top=False)`` builds it: a 7x7/2 conv with bias
(zero padding 3), zero padding 1 and a 3x3/2 max-pool (zeros pad the pool, as Keras'
``ZeroPadding2D`` does); four stages of pre-activation bottlenecks (3, 4, 6, 3 blocks;
64, 128, 256, 512 filters, 4x that out) whose *last* block strides in stages 2-4 (its
shortcut a 1x1/2 max-pool), whose first block has a 1x1 conv shortcut (with bias) from
the pre-activation; BatchNorm eps 1.001e-5, momentum 0.99 (torch's 0.01); a final
BatchNorm and ReLU. 23,564,800 parameters as Keras counts them (its BatchNorm moving
mean and variance included; torch keeps those as buffers), 23,519,360 trainable.

Weights: random init, or a local torch checkpoint of this module (``weights=
"/path/to/file.pth"``, loaded strictly). Keras' ImageNet weights (an HDF5 file) are
*not* converted here; module names follow Keras' layer names (``conv2_block1_1_conv``
is ``conv2.block1.conv1``) so a converter would be a renaming.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from .heads import conv_map_trunk
from .registry import Trunk
from .weights import load_local_weights, local_weights_path, looks_like_path

__all__ = ["ResNet50V2", "names", "build"]

_EPS, _MOMENTUM = 1.001e-5, 0.01  # Keras' epsilon and momentum 0.99


def _bn(channels):
    return nn.BatchNorm2d(channels, eps=_EPS, momentum=_MOMENTUM)


class PreactBottleneck(nn.Module):
    """Keras' ``block2``: BN-ReLU pre-activation, 1x1 → 3x3 (stride) → 1x1 (bias)."""

    def __init__(self, c_in, filters, stride=1, conv_shortcut=False):
        super().__init__()
        self.preact_bn = _bn(c_in)
        self.shortcut = (nn.Conv2d(c_in, 4 * filters, 1, stride=stride) if conv_shortcut
                         else nn.MaxPool2d(1, stride) if stride > 1 else nn.Identity())
        self.conv_shortcut = conv_shortcut
        self.conv1 = nn.Conv2d(c_in, filters, 1, bias=False)
        self.bn1 = _bn(filters)
        self.conv2 = nn.Conv2d(filters, filters, 3, stride=stride, padding=1, bias=False)
        self.bn2 = _bn(filters)
        self.conv3 = nn.Conv2d(filters, 4 * filters, 1)
        self.relu = nn.ReLU()

    def forward(self, x):
        preact = self.relu(self.preact_bn(x))
        shortcut = self.shortcut(preact if self.conv_shortcut else x)
        out = self.relu(self.bn1(self.conv1(preact)))
        out = self.relu(self.bn2(self.conv2(out)))
        return shortcut + self.conv3(out)


def _stage(c_in, filters, blocks, stride):
    """Keras' ``stack2``: conv shortcut in block 1, ``stride`` in the last block."""
    layers = [PreactBottleneck(c_in, filters, conv_shortcut=True)]
    layers += [PreactBottleneck(4 * filters, filters) for _ in range(blocks - 2)]
    layers.append(PreactBottleneck(4 * filters, filters, stride=stride))
    return nn.Sequential(OrderedDict((f"block{i + 1}", b) for i, b in enumerate(layers)))


class ResNet50V2(nn.Module):
    """Keras' ResNet50V2 without its top; ``forward`` gives the pooled ``(n, 2048)``
    features (``pooling="avg"``), the children up to ``post`` the ``(n, 2048, h, w)``
    map."""

    def __init__(self, in_channels=3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3)
        self.pool1 = nn.Sequential(nn.ZeroPad2d(1), nn.MaxPool2d(3, 2))
        self.conv2 = _stage(64, 64, 3, 2)
        self.conv3 = _stage(256, 128, 4, 2)
        self.conv4 = _stage(512, 256, 6, 2)
        self.conv5 = _stage(1024, 512, 3, 1)
        self.post = nn.Sequential(_bn(2048), nn.ReLU())
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Identity()  # the classifier convention: no top
        self.classifier_name = "fc"
        self.num_features = 2048

    def forward(self, x):
        for stage in (self.conv1, self.pool1, self.conv2, self.conv3, self.conv4, self.conv5,
                      self.post):
            x = stage(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def keras_parameter_count(module):
    """Parameters as Keras counts them: torch's parameters plus BatchNorm running stats."""
    stats = sum(m.running_mean.numel() + m.running_var.numel() for m in module.modules()
                if isinstance(m, nn.BatchNorm2d))
    return sum(p.numel() for p in module.parameters()) + stats


def names():
    return ["resnet50v2"]


def build(name, weights, in_channels, kwargs):
    if kwargs:
        raise ValueError(f"backbone_kwargs={kwargs!r}: 'resnet50v2' takes none")
    if weights is not None and not looks_like_path(weights):
        raise ValueError(
            f"weights={weights!r}: 'resnet50v2' has no named weights here (Keras' ImageNet "
            "weights are not converted); use weights=None or a path to a torch checkpoint "
            "of this model")
    path = local_weights_path(weights) if weights is not None else None
    model = ResNet50V2(in_channels=3)
    if path is not None:
        load_local_weights(model, path, name, strict=True)
    blocks = ("conv1", "conv2", "conv3", "conv4", "conv5", "post")
    return Trunk(model, 2048, 3, blocks, blocks,
                 conv_map=lambda: conv_map_trunk(model, "fc"),
                 normalization=((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # Keras' "tf" mode
                 input_size=(224, 224), interpolation="bilinear",
                 weights_source=str(path) if path else "random init")
