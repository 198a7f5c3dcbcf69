"""torchxrayvision's chest-X-ray models as backbones: ``backbone="xrv:<weights name>"``
(``pip install 'cxr_estimators[xrv]'``), e.g. ``xrv:densenet121-res224-all`` (a
DenseNet-121 trained on eight public CXR datasets) and its siblings (``-nih``, ``-pc``,
``-chex``, ``-rsna``, ``-mimic_nb``, ``-mimic_ch``), and ``xrv:resnet50-res512-all``.

torchxrayvision gives the architecture (built with ``weights=None``) and the weights'
metadata (file name, pathologies, resolution). Written here, because torchxrayvision
downloads on construction and unpickles whole model objects (``weights_only=False``):
the weights are read only from a local file or torchxrayvision's cache folder
(``~/.torchxrayvision/models_data/``), never downloaded, with ``weights_only=True`` (its
released DenseNet files are pickled models: their classes are allow-listed, the
torchxrayvision and torch.nn ones only); and the trunk (its features, ReLU, global
average pooling), or with ``backbone_kwargs={"outputs": "pathologies"}`` its 18
pathology logits as the features our head learns from.

Input convention: torchxrayvision's models take one channel scaled to [-1024, 1024].
``ImageLoader(channels=1, normalize="xrv")`` gives exactly that (mean 0.5, std 1/2048
on [0, 1] images): the registry's ``normalization`` for these backbones, also what
:func:`~cxr_estimators.backbones.loader_params` returns.
"""

from __future__ import annotations

import os
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from .registry import FAMILIES, Trunk, check_name, require
from .weights import (load_checkpoint, local_weights_path, looks_like_path, unavailable)

__all__ = ["XRVTrunk", "names", "build", "cache_file"]

_FAMILY = next(f for f in FAMILIES if f.name == "torchxrayvision")

#: mean and std on [0, 1] images that give torchxrayvision's [-1024, 1024]
XRV_NORMALIZATION = ((0.5,), (1 / 2048,))


def _xrv():
    # torchxrayvision calls warnings.filterwarnings("ignore") when imported, which
    # would silence this package's warnings process-wide: keep the filters as they were
    with warnings.catch_warnings():
        return require(_FAMILY, "torchxrayvision")


def names():
    urls = _xrv().models.model_urls
    return sorted(n for n in urls if n.startswith(("densenet121-", "resnet50-")))


class XRVTrunk(nn.Module):
    """A torchxrayvision model as a trunk. ``outputs``: "features" (pooled
    ``relu(features(x))``, 1024 for a DenseNet-121, 2048 for the ResNet-50), "map" (the
    map before pooling, for ``pooling=``) or "pathologies" (its classifier's logits, one
    per finding of ``pathologies``)."""

    def __init__(self, model, outputs="features", pathologies=()):
        super().__init__()
        self.model = model
        self.outputs = outputs
        self.pathologies = list(pathologies)

    def extra_repr(self):
        return f"outputs={self.outputs!r}"

    def _map(self, x):
        if hasattr(self.model, "features") and isinstance(self.model.features, nn.Module):
            return F.relu(self.model.features(x))  # DenseNet: features, then a ReLU
        m = self.model.model  # ResNet: a torchvision resnet50 inside
        x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
        return m.layer4(m.layer3(m.layer2(m.layer1(x))))

    def forward(self, x):
        out = self._map(x)
        if self.outputs == "map":
            return out
        pooled = torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)
        if self.outputs == "features":
            return pooled
        head = self.model.classifier if hasattr(self.model, "classifier") else self.model.model.fc
        return head(pooled)


def cache_file(name):
    """Where torchxrayvision keeps (and this package looks for) the weights of ``name``."""
    xrv = _xrv()
    url = xrv.models.model_urls[name]["weights_url"]
    return os.path.join(xrv.utils.get_cache_dir(), os.path.basename(url))


def _architecture(xrv, name):
    if name.startswith("densenet"):
        return xrv.models.DenseNet(weights=None, in_channels=1)
    import torchvision

    model = torchvision.models.resnet50(num_classes=18, weights=None)
    model.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    holder = nn.Module()
    holder.model = model
    return holder


def _state_dict(xrv, path):
    """The state_dict in a torchxrayvision weights file: a state_dict, or a pickled
    model whose classes are torchxrayvision's and torch.nn's (loaded with
    ``weights_only=True`` and those classes allow-listed)."""
    try:
        return load_checkpoint(path)
    except ValueError as first:
        import collections

        classes = [c for m in (xrv.models, nn) for c in vars(m).values()
                   if isinstance(c, type) and issubclass(c, nn.Module)]
        try:
            with torch.serialization.safe_globals([*classes, collections.OrderedDict, set]):
                model = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001
            raise ValueError(
                f"weights file {str(path)!r} is neither a state_dict nor a pickled "
                f"torchxrayvision model made of allow-listed classes ({exc}). If you trust "
                "it, convert it once: python -c \"import torch, torchxrayvision; torch.save("
                f"torch.load('{path}', weights_only=False).state_dict(), 'xrv_state.pth')\" "
                "and pass weights='xrv_state.pth'") from first
        return model.state_dict()


def build(name, weights, in_channels, kwargs):
    """The torchxrayvision model ``name`` as a frozen-ready trunk (1 input channel)."""
    xrv = _xrv()
    check_name(_FAMILY, name, names())
    outputs = kwargs.pop("outputs", "features")
    if kwargs or outputs not in ("features", "pathologies"):
        raise ValueError(f"backbone_kwargs for 'xrv:{name}' take only outputs='features' or "
                         f"'pathologies'; got {dict(kwargs, outputs=outputs)!r}")
    if weights is None:
        path, source = None, "random init"
    elif looks_like_path(weights):
        path = local_weights_path(weights)
        source = str(path)
    elif weights == "DEFAULT":
        path = cache_file(name)
        if not os.path.isfile(path):
            url = xrv.models.model_urls[name]["weights_url"]
            raise unavailable(f"torchxrayvision weights {name!r}",
                              f"{path} (downloaded from {url})")
        source = path
    else:
        raise ValueError(f"weights={weights!r}: 'xrv:{name}' takes weights=None, 'DEFAULT' "
                         "(torchxrayvision's cache folder) or a file path")
    model = _architecture(xrv, name)
    if path is not None:
        state = _state_dict(xrv, path)
        target = model if name.startswith("densenet") else model.model
        own = target.state_dict()
        for key, tensor in own.items():
            if key not in state or state[key].shape != tensor.shape:
                why = ("is not in the file" if key not in state else
                       f"has shape {tuple(state[key].shape)} in the file, "
                       f"{tuple(tensor.shape)} in the model")
                raise ValueError(
                    f"weights file {str(path)!r} does not fit backbone 'xrv:{name}': the "
                    f"first mismatched tensor {key!r} {why}")
        target.load_state_dict({k: state[k] for k in own})
    pathologies = xrv.models.model_urls[name]["labels"]
    trunk = XRVTrunk(model, outputs, pathologies)
    body = model.features if name.startswith("densenet") else model.model
    prefix = "model.features." if name.startswith("densenet") else "model.model."
    blocks = tuple(prefix + n for n, m in body.named_children()
                   if any(True for _ in m.parameters()) and n != "fc")
    size = xrv.models.model_urls[name].get("input_resolution", 224)
    width = 18 if outputs == "pathologies" else (1024 if name.startswith("densenet") else 2048)
    return Trunk(trunk, width, 1, blocks, blocks,
                 conv_map=(lambda: XRVTrunk(model, "map", pathologies))
                 if outputs == "features" else None,
                 normalization=XRV_NORMALIZATION, input_size=(size, size),
                 interpolation="bilinear", weights_source=source,
                 extras={"pathologies": pathologies})
