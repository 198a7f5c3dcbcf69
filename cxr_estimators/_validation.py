"""Input checks shared by the estimators: each names the culprit and its value.

sklearn's ``_parameter_constraints`` does most parameter validation; it cannot say that
``True`` is not a patience of 1 (``bool`` is an ``int``), put an upper bound that keeps
an allocation sane, or look at the data. Those checks are here, written by hand:

* :class:`StrictParamsMixin`: booleans refused for integer parameters, upper bounds;
* labels that differ only by case or surrounding whitespace (``"normal"``/``"normal "``);
* 2-D ``X`` that is clearly flattened images, a single image where a batch is expected;
* class weights that are NaN, infinite, negative or all zero;
* memory: an estimate of what a step allocates against the memory available, so a step
  that cannot fit is refused before it allocates instead of swapping or being killed.
"""

from __future__ import annotations

import difflib
import math
import numbers
import os
import warnings

import numpy as np
import torch
from sklearn.utils._param_validation import Interval

from ._runtime import run_probe

__all__ = ["StrictParamsMixin", "available_memory", "check_labels", "check_class_weights",
           "check_fit_memory", "check_flattened", "check_image_batch", "check_memory",
           "check_not_paths", "format_bytes", "warn_unnormalised"]

#: Fraction of the available memory one step may plan to use.
MEMORY_FRACTION = 0.8


class StrictParamsMixin:
    """``_validate_params`` that also refuses booleans for integer parameters and values
    above ``_param_upper_bounds`` (``{name: bound}``; ints, or tuples/lists of ints)."""

    _param_upper_bounds: dict = {}

    def _validate_params(self):
        super()._validate_params()
        params = self.get_params(deep=False)
        for name, constraints in self._parameter_constraints.items():
            value = params.get(name)
            kinds = {c.type for c in constraints if isinstance(c, Interval)}
            if isinstance(value, (bool, np.bool_)) and "boolean" not in constraints and kinds:
                kind = "an int" if numbers.Integral in kinds else "a number"
                raise ValueError(
                    f"The '{name}' parameter of {type(self).__name__} must be {kind}, not "
                    f"the boolean {value!r} (a bool is not taken as {int(value)})")
        for name, bound in self._param_upper_bounds.items():
            value = params.get(name)
            values = value if isinstance(value, (tuple, list)) else [value]
            for v in values:
                if isinstance(v, numbers.Real) and not isinstance(v, bool) and v > bound:
                    raise ValueError(
                        f"The '{name}' parameter of {type(self).__name__} is {value!r}; "
                        f"values above {bound} are refused (they would allocate more "
                        "memory than any machine has)")


def available_memory():
    """Bytes of memory this process may still use now: the least of the machine's
    available memory (Linux ``MemAvailable``, else psutil), the room left under the
    process's address-space limit (``RLIMIT_AS``, as ``ulimit -v`` sets) and the room
    left under its cgroup's memory limit (``memory.max`` of cgroup v2, or
    ``memory.limit_in_bytes`` of v1: containers, CI runners); None when none is known."""
    known = [n for n in (_machine_available(), _rlimit_room(), _cgroup_room())
             if n is not None]
    return min(known) if known else None


def _machine_available():
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.virtual_memory().available)


def _proc_status_bytes(field):
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _rlimit_room():
    """Address space left under ``RLIMIT_AS`` (None: no limit, or not known here)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    soft = resource.getrlimit(resource.RLIMIT_AS)[0]
    if soft == resource.RLIM_INFINITY:
        return None
    return max(soft - (_proc_status_bytes("VmSize") or 0), 0)


def _read_number(path):
    try:
        with open(path) as fh:
            text = fh.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # "max": no limit


def _inactive_file(folder):
    try:
        with open(f"{folder}/memory.stat") as fh:
            for line in fh:
                name, _, value = line.partition(" ")
                if name in ("inactive_file", "total_inactive_file"):
                    return int(value)
    except (OSError, ValueError):
        pass
    return 0


def _cgroup_room(proc_file="/proc/self/cgroup", root="/sys/fs/cgroup"):
    """Memory left under this process's cgroup limit (v2 ``memory.max``, v1
    ``memory.limit_in_bytes``) less its working set; None without one."""
    try:
        with open(proc_file) as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2: the unified hierarchy
            base = root + path.rstrip("/")
            limit, used = "memory.max", "memory.current"
        elif "memory" in controllers.split(","):
            base = root + "/memory" + path.rstrip("/")
            limit, used = "memory.limit_in_bytes", "memory.usage_in_bytes"
        else:
            continue
        root = base[:len(base) - len(path.rstrip("/"))]  # a namespaced view mounts it here
        for folder in dict.fromkeys((base, root)):
            cap = _read_number(f"{folder}/{limit}")
            if cap is not None and cap < 2**60:  # v1 writes ~2**63 for "no limit"
                # the working set, as the kubelet counts it: page cache the kernel can drop
                # (inactive_file) is not memory the fit competes with
                usage = (_read_number(f"{folder}/{used}") or 0) - _inactive_file(folder)
                return max(cap - max(usage, 0), 0)
    return None


def format_bytes(n):
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def did_you_mean(value, options):
    """``"; did you mean 'x'?"`` for the option closest to ``value``: one equal but for
    case first (``'pneumonia'`` vs Kaggle's folder name ``'PNEUMONIA'``), else difflib's
    closest, else ""."""
    same_but_case = [o for o in options if str(o).casefold() == str(value).casefold()]
    if same_but_case:
        return f"; did you mean {same_but_case[0]!r}? (names are case-sensitive)"
    close = difflib.get_close_matches(str(value), [str(o) for o in options], n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def is_finite_number(value, integral=False):
    """A real (or, with ``integral``, an integer) number, finite, and not a bool: what a
    numeric parameter must be before it is compared (``"0.5" < 1`` is a TypeError, NaN
    passes every comparison's negation, ``bool`` is an ``int``)."""
    kind = numbers.Integral if integral else numbers.Real
    return (isinstance(value, kind) and not isinstance(value, (bool, np.bool_))
            and math.isfinite(value))


def check_memory(needed, what, hint, available=None, fraction=MEMORY_FRACTION):
    """Refuse a step that would need ``needed`` bytes when less is available."""
    available = available_memory() if available is None else available
    if available is not None and needed > fraction * available:
        raise MemoryError(
            f"{what} needs about {format_bytes(needed)} but only "
            f"{format_bytes(available)} of memory is available; {hint}")


def _label_key(label):
    return label.strip().casefold()


def check_labels(labels, name="y", missing=False):
    """Refuse string labels that differ only by case or surrounding whitespace; with
    ``missing``, also None/NaN/empty labels and labels mixing strings and numbers (all
    rows)."""
    labels = np.asarray(labels)
    if missing and labels.dtype == object:
        gone = [i for i, v in enumerate(labels.tolist())
                if v is None or (isinstance(v, float) and math.isnan(v))]
        if gone:
            raise ValueError(f"{name} has missing labels (None or NaN) at rows "
                             f"{gone[:10]}{' ...' if len(gone) > 10 else ''}")
        kinds = {"str" if isinstance(v, str) else type(v).__name__ for v in labels.tolist()}
        if any(isinstance(v, str) for v in labels.tolist()) and len(kinds) > 1:
            first = next(i for i, v in enumerate(labels.tolist()) if not isinstance(v, str))
            raise ValueError(f"{name} mixes label types {sorted(kinds)} (e.g. row {first}: "
                             f"{labels[first]!r}); use one type for every label")
    if missing and labels.dtype.kind in "OU":
        blank = [i for i, v in enumerate(labels.tolist()) if isinstance(v, str)
                 and not v.strip()]
        if blank:
            raise ValueError(f"{name} has empty labels ('' or only whitespace, how a text "
                             f"column writes a missing one) at rows {blank[:10]}"
                             f"{' ...' if len(blank) > 10 else ''}; drop or label them")
    if missing:
        return
    by_key = {}
    for label in labels.tolist():
        if isinstance(label, str):
            by_key.setdefault(_label_key(label), []).append(str(label))
    clashes = [v for v in by_key.values() if len(v) > 1]
    if clashes:
        raise ValueError(
            f"{name} has labels that differ only by case or surrounding whitespace: "
            f"{clashes}; they would become separate classes. Fix the spelling so that "
            "each class has one name")


def check_not_paths(X, name="X"):
    """Refuse file paths given where images are expected."""
    first = X[0] if isinstance(X, (list, tuple)) and len(X) else (
        X.flat[0] if isinstance(X, np.ndarray) and X.dtype.kind in "USO" and X.size else None)
    if isinstance(first, (str, bytes, os.PathLike)):
        raise ValueError(f"{name} holds file paths or strings (e.g. {first!r}), not images; "
                         "put an ImageLoader before CXRClassifier in a Pipeline")


def warn_unnormalised(X, raw_dtype, name="X"):
    """Warn when integer pixels (0-255) reach the network unnormalised."""
    if raw_dtype is not None and np.dtype(raw_dtype).kind in "ui" and X.size \
            and X.ndim >= 3 and X.max() > 1:
        warnings.warn(
            f"{name} is {np.dtype(raw_dtype)} with values up to {X.max():g}: the network gets "
            "raw pixel values, not normalised images; use ImageLoader (or scale X) first"
            + (" (in a Pipeline, transform_input=['X_val'] sends X_val through it)"
               if name == "X_val" else ""),
            UserWarning, stacklevel=4)


def check_class_weights(weights, classes):
    """Refuse NaN, infinite or negative class weights, and all-zero ones."""
    weights = np.asarray(weights, dtype=np.float64)
    bad = [(c, w) for c, w in zip(np.asarray(classes).tolist(), weights.tolist())
           if not math.isfinite(w) or w < 0]
    if bad:
        raise ValueError(
            f"class_weight gives {', '.join(f'class {c!r} the weight {w!r}' for c, w in bad)}; "
            "class weights must be finite and >= 0 (NaN or inf make every loss NaN)")
    if not weights.any():
        raise ValueError(f"class_weight gives every class the weight 0 ({weights.tolist()}); "
                         "the loss would be 0/0 = NaN")


def check_flattened(X):
    """Refuse 2-D ``X`` of shape (n, d) whose d is the pixel count of square images
    (784 = 28x28, 3 x 64 x 64, ...): such X is flattened images, which would train on
    1 x 1 x d strips. Small d (tabular data, sklearn's estimator checks) passes."""
    d = X.shape[1]
    for channels in (1, 3):
        side = math.isqrt(d // channels)
        if d >= 256 and d % channels == 0 and side * side * channels == d:
            shape = (X.shape[0], channels, side, side)
            raise ValueError(
                f"X is 2-D with shape {X.shape}: that looks like flattened {side}x{side}"
                f"{'' if channels == 1 else ' RGB'} images, which would be read as "
                f"1x1x{d} strips. Pass images shaped (n, C, H, W), e.g. "
                f"X.reshape{shape}")


def check_image_batch(shape, fit_shape=None):
    """Refuse a single (C, H, W) image where a batch (n, C, H, W) is expected: 3-D input
    equal to the fitted image shape with C = 3 (a grayscale (1, H, W) is a batch of one
    anyway)."""
    if fit_shape is not None and tuple(shape) == tuple(fit_shape) and fit_shape[0] == 3:
        raise ValueError(
            f"X has shape {tuple(shape)}: a single image of the fitted shape {fit_shape}, "
            "not a batch; it would be read as 3 grayscale images. Pass X[None] for one "
            "image")



def _activation_bytes(module, image_shape, probe=80, backbone=None):
    """Bytes of the activations one image of ``image_shape`` makes in ``module``'s forward
    pass, estimated from one forward pass at ``probe`` pixels (activations of a
    convolutional network grow with the pixel count); None if a scaled-down probe fails.
    Where the probe is the image's own size (at most ``probe`` pixels), a failure means
    the fit would fail too: a ValueError naming ``backbone`` and the shape."""
    c, h, w = image_shape
    scale = min(1.0, probe / max(h, w))
    ph, pw = max(1, round(h * scale)), max(1, round(w * scale))
    seen, total = set(), [0]

    def record(out):
        if isinstance(out, torch.Tensor) and out.data_ptr() not in seen:  # in-place ops once
            seen.add(out.data_ptr())
            total[0] += out.numel() * 4

    try:
        run_probe(module, torch.zeros(1, c, ph, pw, device=next(module.parameters()).device),
                  record)
    except Exception as exc:  # noqa: BLE001 - torch's error for too small an input varies
        if scale < 1.0:  # the probe, not the image, may be too small for this backbone
            return None
        raise ValueError(
            f"backbone={backbone!r} cannot run on images of shape {tuple(image_shape)}: "
            f"{type(exc).__name__}: {exc}. Use larger images (ImageLoader(size=...))"
        ) from exc
    return total[0] * (h * w) / (ph * pw)


def check_fit_memory(module, image_shape, batch_size, device, amp=False, training=True,
                     available=None, backbone=None):
    """Refuse a fit whose batch of activations (kept for the backward pass and matched by
    their gradients when ``training``) cannot fit in the memory of ``device``.

    A rough estimate that errs high only by the activations' gradients, and compared with
    all of the available memory: it refuses fits that cannot run (two 4096 x 4096 images
    on a laptop), not ones that merely come close."""
    per_image = _activation_bytes(module, image_shape, backbone=backbone)
    if per_image is None:
        return
    needed = per_image * batch_size * (2 if training else 1) * (0.5 if amp else 1)
    needed += sum(p.numel() * 4 for p in module.parameters()) * (4 if training else 1)
    if available is None:
        if str(device).startswith("cuda"):
            available = torch.cuda.mem_get_info(torch.device(device))[0]
        elif str(device) == "cpu":
            available = available_memory()
    check_memory(needed, f"training on batches of {batch_size} images of shape "
                 f"{tuple(image_shape)} on {device}",
                 "use smaller images (ImageLoader(size=...)), a smaller batch_size, or a "
                 "frozen backbone with cache=True", available=available, fraction=1.0)
