"""Where a backbone's weights come from, and the one error when they cannot be had.

Three sources: a name the backbone's library knows (torchvision's Weights API, a timm
pretrained tag, a torchxrayvision model), found in that library's cache folder or
downloaded by it; a local file (``weights="/path/to/file.pth"``); or none (random init).
What the libraries do not do, and is written here: one error type,
:class:`WeightsUnavailableError`, raised while the model is built (before any training,
so a grid search fails once, not once per fit), naming the exact file to place and the
local-file alternative; and loading a local ``state_dict`` safely (``weights_only=True``)
into a trunk, naming the first tensor that does not fit.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

__all__ = ["WeightsUnavailableError", "looks_like_path", "local_weights_path",
           "load_checkpoint", "load_local_weights", "unavailable"]

#: File name endings read as a path even when the file does not exist.
_WEIGHT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".safetensors", ".tar")

#: Keys under which training scripts commonly nest the model's state_dict.
_STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model")


class WeightsUnavailableError(FileNotFoundError):
    """Pretrained weights that cannot be had: no network and not in the cache, or a
    missing file. Raised while the model is built, before any training. The message
    names the file to place (and where) and the ``weights="/path/to/file.pth"``
    alternative."""


def unavailable(what, place, cause=None):
    """A :class:`WeightsUnavailableError` for ``what`` (e.g. "torchvision weights
    ResNet50_Weights.IMAGENET1K_V2") whose file belongs at ``place``."""
    because = f" ({type(cause).__name__}: {cause})" if cause is not None else ""
    return WeightsUnavailableError(
        f"{what} are not available offline{because}. Place the file at {place} (copy it "
        "from a machine with network access), or pass a local checkpoint as "
        "weights='/path/to/file.pth'")


def looks_like_path(weights, names=("DEFAULT",)):
    """Whether ``weights`` names a file rather than one of the library's weights
    ``names``.

    A path-like object, a separator or a checkpoint suffix make a path; so does an
    existing file of another name (``weights="cxr_model"``). A weights name stays a name:
    a file or folder called ``DEFAULT`` in the working directory does not change what
    ``weights="DEFAULT"`` means."""
    if isinstance(weights, os.PathLike):
        return True
    if not isinstance(weights, str) or weights in names:
        return False
    return (os.sep in weights or (os.altsep or os.sep) in weights or weights.startswith("~")
            or weights.lower().endswith(_WEIGHT_SUFFIXES) or os.path.isfile(weights))


def local_weights_path(weights):
    """The existing file ``weights`` names; :class:`WeightsUnavailableError` if missing."""
    path = Path(os.fspath(weights)).expanduser()
    if path.is_dir():
        raise ValueError(f"weights={os.fspath(weights)!r} is a folder, not a weights file")
    if not path.is_file():
        raise WeightsUnavailableError(
            f"weights file {str(path)!r} does not exist; pass the path of a checkpoint "
            "(a state_dict saved with torch.save), or weights=None for random init")
    return path


def load_checkpoint(path):
    """The ``state_dict`` in a torch checkpoint file, read with ``weights_only=True`` (a
    weights file must not be able to run code), unwrapped from common nestings."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"weights file {str(path)!r} could not be loaded as a torch "
                         f"checkpoint of tensors: {exc}") from exc
    for key in _STATE_DICT_KEYS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict):
        raise ValueError(f"weights file {str(path)!r} does not hold a state_dict")
    if obj and all(k.startswith("module.") for k in obj):  # saved from DataParallel
        obj = {k[len("module."):]: v for k, v in obj.items()}
    if any(k.startswith("trunk.") for k in obj):  # saved from a whole CXRNet
        obj = {k[len("trunk."):]: v for k, v in obj.items() if k.startswith("trunk.")}
    return obj


def load_local_weights(trunk, path, backbone, *, strict=False):
    """Load the checkpoint at ``path`` into ``trunk``.

    Tensors whose name and shape fit are loaded; classifier keys the trunk no longer has
    are skipped. ``strict``: every trunk tensor must be in the file with its shape (the
    first one missing or of another shape is named). Not strict: a file matching no trunk
    tensor, or one whose first-layer weight differs only in input channels, is an error;
    a partial match warns. Returns the names left at their initialisation."""
    state = load_checkpoint(path)
    own = trunk.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    broken = [k for k, v in usable.items()
              if v.is_floating_point() and not torch.isfinite(v).all()]
    if broken:
        raise ValueError(
            f"weights file {str(path)!r} has tensors with NaN or inf values ({len(broken)}, "
            f"e.g. {broken[:3]}): it was saved from a diverged model or is corrupt")
    mismatched = [k for k in own if k in state and state[k].shape != own[k].shape]
    channels = _channel_mismatch(own, state, mismatched)
    if channels:
        raise ValueError(f"weights file {str(path)!r} does not fit backbone {backbone!r}: "
                         f"{channels}")
    missing = [k for k in own if k not in usable]
    if not usable or (strict and missing):
        first = missing[0]
        why = (f"has shape {tuple(state[first].shape)} in the file, "
               f"{tuple(own[first].shape)} in the model" if first in state
               else "is not in the file")
        raise ValueError(
            f"weights file {str(path)!r} does not fit backbone {backbone!r}: the first "
            f"mismatched tensor {first!r} {why} (file's first keys: {list(state)[:3]}); "
            "was it saved from another architecture?")
    trunk.load_state_dict(usable, strict=False)
    if missing:
        warnings.warn(
            f"weights file {str(path)!r} fits {len(usable)} of the {len(own)} tensors of "
            f"backbone {backbone!r}; the other {len(missing)} (e.g. {missing[:3]}) keep "
            "their random initialisation. Was it saved from another architecture or for "
            "another number of input channels?", UserWarning, stacklevel=4)
    return missing


def _channel_mismatch(own, state, mismatched):
    """A message when the only shape difference of a 4-D weight is its input channels."""
    for key in mismatched:
        a, b = own[key].shape, state[key].shape
        if len(a) == 4 and a[0] == b[0] and a[2:] == b[2:] and a[1] != b[1]:
            return (f"its {key!r} takes {b[1]} input channel(s) and the model "
                    f"{a[1]}; build the model for {b[1]}-channel images (ImageLoader("
                    f"channels={b[1]}) or the backbone's in_chans) or convert the file")
    return None
