"""timm's models as backbones: ``backbone="timm:<name>"`` (``pip install
'cxr_estimators[timm]'``).

timm builds the model (:func:`timm.create_model` with ``num_classes=0``: its classifier
removed, its pooled features the output; ``in_chans``: the images' channels, so gray
X-rays go in with one channel and pretrained first-layer weights are summed over RGB by
timm), loads local weights (``pretrained_cfg_overlay=dict(file=...)``, read with
``weights_only=True``), and tells the rest: ``feature_info`` (the blocks ``freeze=k``
counts and the Grad-CAM layers) and ``pretrained_cfg`` (mean, std, input size,
interpolation). Written here: the wrapper that gives the conv map for ``pooling=``, and
turning timm's failures into this package's errors.
"""

from __future__ import annotations

from torch import nn

from .registry import FAMILIES, Trunk, check_name, require
from .weights import (WeightsUnavailableError, load_checkpoint, local_weights_path,
                      looks_like_path)

__all__ = ["TimmTrunk", "names", "build"]

_FAMILY = next(f for f in FAMILIES if f.name == "timm")


def _timm():
    return require(_FAMILY, "timm")


def names():
    """Every architecture timm can build (its pretrained tags are ``weights=``)."""
    return _timm().list_models()


class TimmTrunk(nn.Module):
    """A timm model as a trunk: its pooled features, or (``pooled=False``) the output of
    ``forward_features`` (the last feature map, for ``pooling=``). Both share the model
    (child ``model``), so layer names are ``model.<timm's name>``."""

    def __init__(self, model, pooled=True):
        super().__init__()
        self.model = model
        self.pooled = pooled

    def extra_repr(self):
        return f"pooled={self.pooled}"

    def forward(self, x):
        return self.model(x) if self.pooled else self.model.forward_features(x)


def _weights_args(name, weights):
    """(model name with tag, create_model kwargs, source text) for ``weights``."""
    if weights is None:
        return name, {"pretrained": False}, "random init"
    if looks_like_path(weights):
        path = str(local_weights_path(weights))
        return name, {"pretrained": True, "pretrained_cfg_overlay": {"file": path}}, path
    if not isinstance(weights, str):
        raise ValueError(f"weights must be None, 'DEFAULT', a timm pretrained tag or a "
                         f"file path; got {weights!r}")
    full = name if weights == "DEFAULT" else f"{name}.{weights}"
    tags = _timm().list_pretrained(f"{name}.*")
    if weights != "DEFAULT" and full not in tags:
        raise ValueError(f"weights={weights!r} is not a timm pretrained tag of {name!r}; "
                         f"known: {['DEFAULT'] + [t.split('.', 1)[1] for t in tags]}")
    return full, {"pretrained": True}, f"timm {full}"


def _unavailable(full, exc):
    timm = _timm()
    try:
        hub = getattr(timm.models.get_pretrained_cfg(full), "hf_hub_id", None)
    except RuntimeError:
        hub = None
    from huggingface_hub import constants

    where = (f"the Hugging Face cache {constants.HF_HUB_CACHE} (as huggingface_hub "
             f"downloads https://huggingface.co/{hub}), or download its "
             "model.safetensors on another machine" if hub else "a local file")
    return WeightsUnavailableError(
        f"timm weights {full!r} are not available offline ({type(exc).__name__}: {exc}). "
        f"Place them in {where} and pass weights='/path/to/model.safetensors' (or "
        "'/path/to/file.pth'). With HF_HUB_OFFLINE=1 huggingface_hub does not retry the "
        "network first")


def _first_mismatch(name, path, in_channels):
    """ValueError naming the first tensor of the model that a timm weights file lacks or
    holds in another shape (timm itself loads such a file non-strictly, with a log line,
    leaving the model random); None when it fits. The first conv may differ in input
    channels (timm adapts it) and the classifier is not compared (it is removed)."""
    fresh = _timm().create_model(name, pretrained=False, num_classes=0, in_chans=in_channels)
    first_conv = (fresh.pretrained_cfg or {}).get("first_conv") or ""
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = load_checkpoint(path)
    for key, tensor in fresh.state_dict().items():
        found = state.get(key)
        if found is not None and (found.shape == tensor.shape or (
                key == f"{first_conv}.weight" and found.ndim == tensor.ndim
                and found.shape[:1] + found.shape[2:] == tensor.shape[:1] + tensor.shape[2:])):
            continue
        why = ("is not in the file" if found is None else
               f"has shape {tuple(found.shape)} in the file, {tuple(tensor.shape)} in the "
               "model")
        return ValueError(
            f"weights file {str(path)!r} does not fit backbone 'timm:{name}': the first "
            f"mismatched tensor {key!r} {why} (file's first keys: {list(state)[:3]}); "
            "was it saved from another architecture?")
    return None


def build(name, weights, in_channels, kwargs):
    """``timm.create_model(name, num_classes=0, in_chans=in_channels)``: a Trunk."""
    timm = _timm()
    check_name(_FAMILY, timm.models.get_arch_name(name) if "." in name else name, names())
    full, weight_kwargs, source = _weights_args(name, weights)
    if "pretrained_cfg_overlay" in weight_kwargs:
        mismatch = _first_mismatch(name, source, in_channels)
        if mismatch is not None:
            raise mismatch
    try:
        model = timm.create_model(full, num_classes=0, in_chans=in_channels,
                                  **weight_kwargs, **kwargs)
    except TypeError as exc:
        raise ValueError(f"backbone_kwargs={kwargs!r} do not fit timm's {name!r}: "
                         f"{exc}") from exc
    except Exception as exc:  # noqa: BLE001 - hub and file errors of several libraries
        if "pretrained_cfg_overlay" in weight_kwargs:
            raise ValueError(f"weights file {source!r} could not be loaded into "
                             f"'timm:{name}': {exc}") from exc
        if weights is None or isinstance(exc, ValueError):
            raise
        raise _unavailable(full, exc) from exc
    info = [f["module"] for f in getattr(model, "feature_info", [])]
    modules = dict(model.named_modules())
    blocks = tuple(f"model.{m}" for m in info
                   if m in modules and any(True for _ in modules[m].parameters()))
    cfg = model.pretrained_cfg or {}
    mean, std = cfg.get("mean"), cfg.get("std")
    if mean is not None and in_channels == 1:
        mean, std = (sum(mean) / len(mean),), (sum(std) / len(std),)
    size = cfg.get("input_size")
    return Trunk(TimmTrunk(model), model.num_features, in_channels, blocks,
                 tuple(f"model.{m}" for m in info if m in modules),
                 conv_map=lambda: TimmTrunk(model, pooled=False),
                 normalization=(tuple(mean), tuple(std)) if mean is not None else None,
                 input_size=tuple(size[1:]) if size else None,
                 interpolation=cfg.get("interpolation"), weights_source=source,
                 extras={"pretrained_cfg": dict(cfg)})
