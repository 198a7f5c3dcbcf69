"""Save and load fitted estimators without pickle: :func:`save` and :func:`load`.

``joblib.load`` / ``pickle.load`` of a file runs whatever code the file carries (a
``__reduce__`` payload runs on load): never load a pickle you did not make. The files
written here cannot do that. A model file is one `safetensors
<https://github.com/huggingface/safetensors>`_ file: the network weights and numeric
arrays are raw tensors, and everything else — the estimator tree, each estimator's
``get_params()`` and fitted attributes, the training history — is JSON in the file's
header, next to the versions of the packages that wrote it and a SHA-256 checksum.

What the checksum protects against: accidental damage (bit rot, a truncated copy, a
careless hand edit). It is not a signature: anyone who can write the file can recompute
it, so a deliberate edit (swapped ``classes_``, changed weights) loads. Against that,
``save(..., key=secret)`` adds an HMAC-SHA256 under a secret key and
``load(..., key=secret)`` refuses a file whose HMAC does not match (or that has none).
Whatever a file says, loading it never runs code and builds only the listed classes
(:func:`cxr_estimators._trust.allowed_classes`).

What can be in the tree is data only: None, bool, int, float, str, lists, tuples (tagged),
dicts, paths, NumPy arrays and scalars, and estimators whose class is a scikit-learn or
``cxr_estimators`` :class:`~sklearn.base.BaseEstimator` (Pipelines, ``ImageLoader``,
``CXRClassifier``, ``VotingClassifier``, ``LabelEncoder``, ...), plus the members of a
fitted ``CalibratedClassifierCV`` (a fixed sklearn class, see ``_calibrated``). Loading
imports those
classes by name, refuses any other, calls their ``__init__`` with the saved parameters
and sets the saved fitted attributes. A ``CXRClassifier``'s network is rebuilt by the
same code ``fit`` uses (:meth:`CXRClassifier._initialize_net`) and gets the saved
weights, so new parameters need no change here. Anything else (a callable parameter, a
scorer, a custom class) is refused by :func:`save` with an error naming where it is.

Because the network is rebuilt from the saved parameters, :func:`save` first rebuilds it
the same way (on the CPU, untrained) for every fitted ``CXRClassifier`` in the tree and
refuses, naming the parameters, when the fitted weights would not fit it: a parameter
that shapes the network (``neurons``, ``backbone``, ``pooling``, ...) changed by
``set_params`` since the last successful fit. Parameters read only at prediction time or
by the next fit (``tta``, ``predict_batch_size``, ``device``, ``lr``, ...) may change.
:func:`save` replaces only a cxr_estimators model file (or an empty file): never a
directory, FIFO or device, nor another file that happens to be at the path.

Written here because neither skops (not a dependency; it would also need every skorch
and torch type it meets declared trusted) nor skorch (``save_params`` stores one net's
tensors, not an sklearn estimator tree) covers this.
"""

from __future__ import annotations

import importlib
import json
import numbers
import os
import pathlib
import platform
import warnings

import numpy as np
import torch
import sklearn
from sklearn.base import BaseEstimator
from sklearn.calibration import _CalibratedClassifier
from sklearn.isotonic import IsotonicRegression
from sklearn.utils import Bunch

from . import distributed
from ._safefile import (
    SafeFileError, atomic_write, file_size, read_metadata, read_safetensors, signing_key,
    tensor_digest,
)
from ._rebuild import check_rebuildable
from ._trust import allowed_classes, check_hmac, trusted_class

__all__ = ["save", "load", "ModelFileError", "VersionMismatchWarning", "FORMAT"]

#: Identifies the file layout; a file of another format is refused by :func:`load`.
FORMAT = "cxr_estimators.model.v1"

_PACKAGES = ("cxr_estimators", "torch", "torchvision", "sklearn", "skorch", "numpy",
             "safetensors")


class ModelFileError(SafeFileError):
    """A model file is corrupt, modified, of an unknown format, or names a class that may
    not be loaded. The message names the file and the reason."""


class VersionMismatchWarning(UserWarning):
    """The model file was written with other package versions than those installed."""


def _versions():
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for name in _PACKAGES:
        dist = "scikit-learn" if name == "sklearn" else name
        try:
            found[name] = version(dist)
        except PackageNotFoundError:
            found[name] = getattr(importlib.import_module(name), "__version__", "unknown")
    return found


# ---------------------------------------------------------------------------- encoding
class _Encoder:
    """Estimator tree → JSON-able structure + a dict of tensors."""

    def __init__(self):
        self.tensors = {}
        self.ids = {}  # id(estimator) → node number, so shared estimators stay shared

    def tensor(self, value):
        key = f"t{len(self.tensors)}"
        self.tensors[key] = value
        return key

    def encode(self, value, where):
        if value is None or isinstance(value, (bool, str)):
            return value
        if isinstance(value, np.generic):
            return self._np_scalar(value, where)
        if isinstance(value, numbers.Integral):
            return int(value)
        if isinstance(value, float):
            return float(value)
        if isinstance(value, BaseEstimator):
            return self.estimator(value, where)
        if isinstance(value, Bunch):
            return {"__bunch__": self.items(value, where)}
        if isinstance(value, dict):
            return {"__dict__": self.items(value, where)}
        if isinstance(value, tuple):
            return {"__tuple__": [self.encode(v, f"{where}[{i}]") for i, v in enumerate(value)]}
        if isinstance(value, list):
            return [self.encode(v, f"{where}[{i}]") for i, v in enumerate(value)]
        if isinstance(value, pathlib.PurePath):
            return {"__path__": str(value)}
        if isinstance(value, np.ndarray) and not isinstance(value, np.ma.MaskedArray):
            return self._array(value, where)
        if isinstance(value, torch.Tensor):
            return {"__tensor__": self.tensor(value.detach().cpu().contiguous().clone())}
        if isinstance(value, np.random.RandomState):
            return {"__random_state__": self.encode(value.get_state(legacy=True), where)}
        if type(value).__name__ == "MetadataRequest":
            return {"__metadata_request__": self.encode(value._serialize(), where)}
        if isinstance(value, _CalibratedClassifier):  # CalibratedClassifierCV's members
            return {"__calibrated__": self.items(vars(value), where)}
        raise TypeError(
            f"cannot save {where}: a {type(value).__module__}.{type(value).__qualname__} is "
            "not data this format stores (None, bool, int, float, str, list, tuple, dict, "
            "path, NumPy array, scikit-learn or cxr_estimators estimator); replace it by "
            "such a value (e.g. a name instead of a callable)")

    def items(self, mapping, where):
        return [[self.encode(k, f"{where} key"), self.encode(v, f"{where}[{k!r}]")]
                for k, v in mapping.items()]

    def _np_scalar(self, value, where):
        if value.dtype.kind not in "biuf":
            if value.dtype.kind in "US":
                return str(value)
            raise TypeError(f"cannot save {where}: NumPy scalar of dtype {value.dtype}")
        return {"__np_scalar__": value.item(), "dtype": value.dtype.str}

    def _array(self, arr, where):
        if arr.dtype.kind in "biuf" and arr.dtype.str not in ("<u4", "<u8", ">u4", ">u8"):
            tensor = torch.from_numpy(np.array(arr, dtype=arr.dtype.newbyteorder("="),
                                               order="C", copy=True))
            return {"__ndarray__": self.tensor(tensor), "dtype": arr.dtype.str}
        if arr.dtype.kind in "iu":  # uint32/uint64: no torch dtype safetensors stores
            return {"__ndarray_list__": arr.tolist(), "dtype": arr.dtype.str,
                    "shape": list(arr.shape)}
        if arr.dtype.kind in "US":
            return {"__ndarray_list__": arr.tolist(), "dtype": arr.dtype.str,
                    "shape": list(arr.shape)}
        if arr.dtype == object:
            flat = [self.encode(v, f"{where}[{i}]") for i, v in enumerate(arr.ravel().tolist())]
            return {"__ndarray_object__": flat, "shape": list(arr.shape)}
        raise TypeError(f"cannot save {where}: array of dtype {arr.dtype}")

    def estimator(self, est, where):
        if id(est) in self.ids:
            return {"__ref__": self.ids[id(est)]}
        cls = type(est)
        path = f"{cls.__module__}:{cls.__qualname__}"
        if cls not in allowed_classes():
            raise TypeError(
                f"cannot save {where}: {path} is not a scikit-learn or cxr_estimators "
                "estimator, and load() builds only those")
        node_id = self.ids[id(est)] = len(self.ids)
        params = est.get_params(deep=False)
        state = {k: v for k, v in vars(est).items()
                 if k not in params and not k.startswith("__")
                 and not (k == "f_" and isinstance(est, IsotonicRegression))}
        if "cv_results_" in state:
            raise TypeError(f"cannot save {where}: a fitted {cls.__name__}; save its "
                            "best_estimator_ (the refitted model) instead")
        # params before fitted attributes, as load decodes them: an object shared by both
        # (CalibratedClassifierCV's estimator) is stored in full where it is met first
        encoded_params = {k: self.encode(v, f"{where}.{k}") for k, v in params.items()}
        fitted = {}
        has_net = "net_" in state and hasattr(est, "_initialize_net")  # a CXRClassifier
        for key, value in state.items():
            if key == "net_" and has_net:
                fitted[key] = self._net(value, f"{where}.{key}")
            else:
                fitted[key] = self.encode(value, f"{where}.{key}")
        node = {"__estimator__": path, "id": node_id, "params": encoded_params,
                "fitted": fitted}
        if has_net:  # after the params: one that is not data is the first error
            check_rebuildable(est, where)
        return node

    def _net(self, net, where):
        state = {f"{k}": self.tensor(v.detach().cpu().contiguous().clone())
                 for k, v in net.module_.state_dict().items()}
        history = [{k: v for k, v in row.items()} for row in net.history]
        return {"__net__": {"state": state, "history": self.encode(history, f"{where}.history")}}


# ---------------------------------------------------------------------------- decoding
class _Decoder:
    def __init__(self, tensors, name, device):
        self.tensors = tensors
        self.name = name
        self.device = device
        self.nodes = {}

    def fail(self, reason):
        raise ModelFileError(f"model file {self.name!r}: {reason}")

    def tensor(self, key):
        if key not in self.tensors:
            self.fail(f"tensor {key!r} named in the header is missing")
        return self.tensors[key]

    def decode(self, value):
        if value is None or isinstance(value, (bool, str, int, float)):
            return value
        if isinstance(value, list):
            return [self.decode(v) for v in value]
        if not isinstance(value, dict) or len(value) == 0:
            self.fail(f"unexpected entry {value!r:.80}")
        tag = next(iter(value))
        handler = _TAGS.get(tag)
        if handler is None:
            self.fail(f"unknown entry {tag!r}")
        return handler(self, value)

    def pairs(self, items):
        return [(self.decode(k), self.decode(v)) for k, v in items]

    def array(self, node):
        arr = self.tensor(node["__ndarray__"]).numpy()
        return arr.astype(np.dtype(node["dtype"]), copy=False)

    def array_list(self, node):
        return np.array(node["__ndarray_list__"], dtype=np.dtype(node["dtype"])).reshape(
            node["shape"])

    def array_object(self, node):
        flat = [self.decode(v) for v in node["__ndarray_object__"]]
        out = np.empty(len(flat), dtype=object)
        out[:] = flat
        return out.reshape(node["shape"])

    def random_state(self, node):
        rs = np.random.RandomState()
        state = self.decode(node["__random_state__"])
        rs.set_state((state[0], np.asarray(state[1], dtype=np.uint32), *state[2:]))
        return rs

    def metadata_request(self, node):
        from sklearn.utils._metadata_requests import MetadataRequest

        request = MetadataRequest(owner="loaded")
        for method, params in self.decode(node["__metadata_request__"]).items():
            for param, alias in params.items():
                getattr(request, method).add_request(param=param, alias=alias)
        return request

    def estimator(self, node):
        cls = trusted_class(node["__estimator__"], self.fail)
        params = {k: self.decode(v) for k, v in node["params"].items()}
        try:
            est = cls(**params)
        except TypeError as exc:
            self.fail(f"{cls.__name__} does not take the saved parameters ({exc}); was the "
                      "file written by another version of the package?")
        self.nodes[node["id"]] = est
        fitted = node["fitted"]
        for key, value in fitted.items():
            if key == "net_":
                continue
            self._check_attribute(cls, key)
            setattr(est, key, self.decode(value))
        if "net_" in fitted:
            self._net(est, fitted["net_"]["__net__"])
        _rebuild_functions(est)
        return est

    def _check_attribute(self, cls, key):
        """A fitted attribute may not shadow a method or property of its class (a file
        naming ``predict`` would replace the method with data)."""
        if not (isinstance(key, str) and key.isidentifier() and not key.startswith("__")):
            self.fail(f"fitted attribute {key!r:.80} of {cls.__name__} is not a name")
        member = getattr(cls, key, None)
        if callable(member) or isinstance(member, property):
            self.fail(f"fitted attribute {key!r} of {cls.__name__} would replace its "
                      f"{'property' if isinstance(member, property) else 'method'} "
                      f"{key!r}; refused")

    def ref(self, node):
        if node["__ref__"] not in self.nodes:
            self.fail(f"reference to an unknown estimator {node['__ref__']!r}")
        return self.nodes[node["__ref__"]]

    def _net(self, est, node):
        from skorch.history import History

        device = self.device or est.device_
        if str(device).startswith("cuda") and not torch.cuda.is_available():
            warnings.warn(f"model file {self.name!r} holds a model trained on {est.device_!r}; "
                          "no CUDA GPU here, so it is loaded on the CPU", UserWarning,
                          stacklevel=4)
            device = "cpu"
        est.device_ = str(device)
        try:
            net = est._initialize_net()  # the head's size is checked before allocation
        except ValueError as exc:
            self.fail(f"the network its parameters describe cannot be built: {exc}")
        state = {k: self.tensor(v) for k, v in node["state"].items()}
        try:
            net.module_.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            self.fail(f"the saved weights do not fit the network its parameters build "
                      f"({str(exc).splitlines()[0]}); written by another package version?")
        net.history = History(self.decode(node["history"]))
        est.net_ = net


def _rebuild_functions(est):
    """IsotonicRegression keeps a scipy function (``f_``), not data: it is saved without
    it and rebuilt here by sklearn's own unpickling step, as ``pickle.load`` would."""
    if isinstance(est, IsotonicRegression) and hasattr(est, "X_thresholds_"):
        est.__setstate__({**vars(est), "_sklearn_version": sklearn.__version__})


def _calibrated(decoder, node):
    """A fitted ``CalibratedClassifierCV`` member: a fixed sklearn class (never one named
    by the file) built from its saved estimator, calibrators, classes and method."""
    fields = dict(decoder.pairs(node["__calibrated__"]))
    if set(fields) != {"estimator", "calibrators", "classes", "method"}:
        decoder.fail(f"calibrated classifier with fields {sorted(fields)}")
    return _CalibratedClassifier(**fields)


_TAGS = {
    "__estimator__": _Decoder.estimator,
    "__ref__": _Decoder.ref,
    "__dict__": lambda d, n: dict(d.pairs(n["__dict__"])),
    "__bunch__": lambda d, n: Bunch(**dict(d.pairs(n["__bunch__"]))),
    "__tuple__": lambda d, n: tuple(d.decode(v) for v in n["__tuple__"]),
    "__path__": lambda d, n: pathlib.Path(n["__path__"]),
    "__np_scalar__": lambda d, n: np.dtype(n["dtype"]).type(n["__np_scalar__"]),
    "__ndarray__": _Decoder.array,
    "__ndarray_list__": _Decoder.array_list,
    "__ndarray_object__": _Decoder.array_object,
    "__tensor__": lambda d, n: d.tensor(n["__tensor__"]),
    "__random_state__": _Decoder.random_state,
    "__metadata_request__": _Decoder.metadata_request,
    "__calibrated__": _calibrated,
}


# ---------------------------------------------------------------------------- public API
def save(estimator, path, *, key=None):
    """Write ``estimator`` (fitted or not) to ``path`` as a safe model file.

    Parameters
    ----------
    estimator : estimator
        A :class:`~cxr_estimators.CXRClassifier`, a Pipeline (e.g. ``ImageLoader`` →
        ``CXRClassifier``, or ``GridSearchCV.best_estimator_``), a ``VotingClassifier``
        of such pipelines, or any tree of scikit-learn / cxr_estimators estimators whose
        parameters and fitted attributes are data (see the module docstring).
    path : str or os.PathLike
        The file to write, e.g. ``"model.safetensors"``. An existing file there is
        replaced atomically, if it is a model file (or empty): if saving fails (disk
        full, an error, a crash) it keeps its old content.
    key : bytes or str, default=None
        A secret: the file then also records an HMAC-SHA256 of its content under this
        key, which ``load(path, key=key)`` verifies. Without it, the file's SHA-256
        checksum detects accidental damage (bit rot, truncation, a bad copy) but not a
        deliberate edit: whoever edits the file can recompute the checksum.

    Raises
    ------
    TypeError
        Something in the tree cannot be stored as data (the message names where, e.g.
        ``"steps[1][1].augment"``), or the estimator is a fitted search (save its
        ``best_estimator_``).
    ValueError
        A fitted ``CXRClassifier`` in the tree has parameters, changed by ``set_params``
        since its last successful fit, that :func:`load` could not rebuild its network
        from (the message names them, e.g. ``"neurons: 128 (fitted) vs 4 (now)"``): set
        them back or refit. Or ``path`` is a directory, a FIFO or a device.
    FileExistsError
        ``path`` is a file that is not a cxr_estimators model file (e.g. ``notes.txt``);
        it is left as it is.
    OSError
        The file cannot be written (the previous file is unchanged).

    Examples
    --------
    >>> import numpy as np, cxr_estimators
    >>> from cxr_estimators import CXRClassifier
    >>> X = np.random.default_rng(0).random((8, 1, 16, 16), dtype=np.float32)
    >>> y = ["normal", "pneumonia"] * 4
    >>> clf = CXRClassifier(backbone="simple_cnn", max_epochs=1, random_state=0).fit(X, y)
    >>> import tempfile, os; path = os.path.join(tempfile.mkdtemp(), "model.safetensors")
    >>> cxr_estimators.save(clf, path)
    >>> (cxr_estimators.load(path).predict_proba(X) == clf.predict_proba(X)).all()
    np.True_
    """
    if not isinstance(estimator, BaseEstimator):
        raise TypeError(f"save expects a scikit-learn estimator; got "
                        f"{type(estimator).__name__}")
    from safetensors.torch import save as save_tensors

    name = os.fsdecode(os.fspath(path))
    _check_replaceable(name)
    encoder = _Encoder()
    tree = json.dumps(encoder.encode(estimator, type(estimator).__name__), sort_keys=True)
    versions = json.dumps(_versions(), sort_keys=True)
    metadata = {"format": FORMAT, "tree": tree, "versions": versions,
                "checksum": tensor_digest(encoder.tensors, FORMAT, tree, versions)}
    if key is not None:
        metadata["hmac"] = tensor_digest(encoder.tensors, FORMAT, tree, versions,
                                         key=signing_key(key, "save: key"))
    atomic_write(name, save_tensors(encoder.tensors, metadata=metadata), what="save target")


def _check_replaceable(name):
    """Refuse a path whose content save() would destroy: anything but a regular file (a
    FIFO, ``/dev/null``), and a file that is not a model file (someone's notes). An
    empty file may go: a path made by ``tempfile.mkstemp`` holds nothing yet."""
    size = file_size(name, what="save target",
                     doing="save() replaces only model files: choose another path")
    if not size:
        return
    try:
        fmt = read_metadata(name).get("format")
    except (SafeFileError, OSError):
        fmt, why = None, ""
    else:
        why = f" (a safetensors file of format {fmt!r})"
    if not str(fmt).startswith(FORMAT.rpartition(".")[0] + "."):  # any version of ours
        raise FileExistsError(
            f"cannot save to {name!r}: the file exists and is not a cxr_estimators model "
            f"file{why}, so save() does not replace it; delete it or choose another path")


def load(path, *, device=None, key=None):
    """Read an estimator written by :func:`save`; no code from the file is run.

    Parameters
    ----------
    path : str or os.PathLike
    device : None or str, default=None
        Where a ``CXRClassifier``'s network goes: None keeps the device it was trained on
        if it is available here (a CUDA model on a machine without CUDA goes to the CPU,
        with a warning); ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"`` force one (it
        must be present), ``"auto"`` picks the best present, as ``CXRClassifier(device=)``
        does. Its ``device`` parameter (used by a new ``fit``) is left as saved.
    key : bytes or str, default=None
        The secret the file was saved with (``save(..., key=)``): the file must then
        carry an HMAC-SHA256 under that key, so a file edited by someone without the key
        (its checksum recomputed or not), or saved without a key, is refused. Without
        ``key`` only the checksum is verified, which catches accidental damage, not a
        deliberate edit. Neither protects against someone who holds the key.

    Returns
    -------
    estimator
        Predicting with it gives the same output as the saved estimator did, on the same
        device.

    Raises
    ------
    ModelFileError
        The file is not a model file (a pickle, truncated, garbage, a directory, a FIFO, a
        device such as ``/dev/zero``: these are refused before they are opened), its
        checksum does not match (bit rot, a careless edit), its HMAC does not match
        ``key``, its format is unknown, it names a class other than a scikit-learn /
        cxr_estimators estimator, or its content does not describe a buildable model.
        A ``ValueError``.
    ValueError
        ``device`` is not a device name, or names one that is not present.
    FileNotFoundError
        No file at ``path``.

    Warns
    -----
    VersionMismatchWarning
        The file was written with other versions of the packages (listed) than are
        installed; the model loads, but check its predictions.
    """
    name = os.fsdecode(os.fspath(path))
    device = _load_device(device)
    key = None if key is None else signing_key(key, "load: key")
    try:
        tensors, metadata = read_safetensors(name, what="model file")
    except SafeFileError as exc:
        raise ModelFileError(str(exc)) from None
    fmt = metadata.get("format")
    if fmt != FORMAT:
        raise ModelFileError(
            f"model file {name!r} has format {fmt!r}, expected {FORMAT!r}: "
            + ("not written by cxr_estimators.save" if fmt is None else
               "written by another version of cxr_estimators"))
    tree, versions = metadata.get("tree", ""), metadata.get("versions", "")
    expected = metadata.get("checksum")
    actual = tensor_digest(tensors, fmt, tree, versions)
    if actual != expected:
        raise ModelFileError(
            f"model file {name!r} is corrupt or was modified: its checksum is {actual[:16]}…, "
            f"the file records {str(expected)[:16]}…; restore it from a backup")
    if key is not None:
        check_hmac(name, metadata, tensors, key, ModelFileError)
    _warn_versions(name, versions)
    try:
        node = json.loads(tree)
    except json.JSONDecodeError as exc:
        raise ModelFileError(f"model file {name!r}: malformed header ({exc})") from None
    except RecursionError:
        raise ModelFileError(f"model file {name!r}: its header is nested too deeply to be "
                             "an estimator tree") from None
    try:
        return _Decoder(tensors, name, device).decode(node)
    except ModelFileError:
        raise
    except RecursionError:
        raise ModelFileError(f"model file {name!r}: its estimator tree is nested too "
                             "deeply") from None
    except (KeyError, TypeError, AttributeError, IndexError, ValueError) as exc:
        raise ModelFileError(f"model file {name!r}: malformed estimator tree "
                             f"({type(exc).__name__}: {str(exc)[:200]})") from None


def _load_device(device):
    """``load(device=...)`` checked as ``CXRClassifier(device=...)`` is, before the file
    is read; None stays None (the device each model was trained on)."""
    if device is None:
        return None
    try:
        return distributed.resolve_device(str(device) if isinstance(device, torch.device)
                                          else device)
    except ValueError as exc:
        raise ValueError(f"load: {exc} (or None: the device it was trained on)") from None


def _warn_versions(name, versions):
    saved = json.loads(versions)
    here = _versions()
    differ = [f"{pkg} {saved[pkg]} (installed: {here.get(pkg, 'missing')})"
              for pkg in saved if saved[pkg] != here.get(pkg)]
    if differ:
        warnings.warn(f"model file {name!r} was written with " + ", ".join(differ)
                      + "; it loads, but check its predictions", VersionMismatchWarning,
                      stacklevel=3)
