"""The machinery of the bad-input suite (tests/test_errors.py) and of
``python -m benchmarks.robustness``: case kinds, the outcome of running one, and a
workspace of bad files and fitted models built on demand.

A case runs one bad action and says what should happen:

* ``Raises(type, fragment)``: an exception of ``type`` whose message matches
  ``fragment`` (a regex naming the culprit) → outcome "clear error";
* ``Warns(type, fragment)``: the action completes and warns so → "handled";
* ``Handled(check)``: the action completes and ``check(result, ws)`` holds → "handled".

Any of them may carry ``after(ws)``: a check of the state left behind (a fitted model
unchanged by a failed fit, the old file intact after a failed save); if it fails, the
outcome is "silent". Otherwise: no exception / warning / right result → "silent"; another
exception or a message without the culprit → "obscure"; running out of memory →
"memory".
"""

from __future__ import annotations

import copy
import json
import pickle
import re
import struct
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

OUTCOMES = ("clear error", "handled", "silent", "obscure", "memory")
CATEGORIES = ("files", "arrays", "labels", "parameters", "faults", "model files")


@dataclass
class Raises:
    type: type
    fragment: str
    after: Callable | None = None


@dataclass
class Warns:
    type: type
    fragment: str
    after: Callable | None = None


@dataclass
class Handled:
    check: Callable
    after: Callable | None = None


@dataclass
class Case:
    id: str
    category: str
    run: Callable
    expect: object

    @property
    def expected_outcome(self):
        return "clear error" if isinstance(self.expect, Raises) else "handled"


def _is_memory_error(exc):
    return isinstance(exc, MemoryError) or (
        isinstance(exc, RuntimeError)
        and re.search(r"can't allocate memory|out of memory|DefaultCPUAllocator", str(exc)))


def run_case(case, ws):
    """Run ``case`` in workspace ``ws``; return ``(outcome, detail)``."""
    expect = case.expect
    ws.state.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = case.run(ws)
        except BaseException as exc:  # KeyboardInterrupt is a case too
            if isinstance(exc, (SystemExit, GeneratorExit)):
                raise
            detail = f"{type(exc).__name__}: {exc}"
            if isinstance(expect, Raises) and isinstance(exc, expect.type) \
                    and re.search(expect.fragment, str(exc)):
                return _after(expect, ws, "clear error", detail)
            if _is_memory_error(exc):
                return "memory", detail
            return "obscure", detail
    if isinstance(expect, Raises):
        return "silent", f"no exception (expected {expect.type.__name__})"
    if isinstance(expect, Warns):
        hits = [w for w in caught if issubclass(w.category, expect.type)
                and re.search(expect.fragment, str(w.message))]
        if not hits:
            shown = [f"{w.category.__name__}: {w.message}" for w in caught][:3]
            return "silent", f"no matching {expect.type.__name__} (got {shown})"
        return _after(expect, ws, "handled", str(hits[0].message))
    if not expect.check(result, ws):
        return "silent", f"wrong result: {result!r:.200}"
    return _after(expect, ws, "handled", "check passed")


def _after(expect, ws, outcome, detail):
    if expect.after is not None and not expect.after(ws):
        return "silent", f"{detail} — but the state left behind is wrong"
    return outcome, detail


# ---------------------------------------------------------------------------- workspace
class Payload:
    """Unpickling this runs code: it writes ``marker`` (what an attacker's file would do)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('code ran')",))


class Workspace:
    """Bad files and fitted models, built once per workspace on first use."""

    def __init__(self, root):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.state = {}
        self._memo = {}
        rng = np.random.default_rng(0)
        self.X = rng.random((16, 1, 16, 16), dtype=np.float32)
        self.y = np.array(["normal", "pneumonia"] * 8)
        self.X[self.y == "pneumonia", :, :5, :5] += 0.7
        self.params = dict(backbone="simple_cnn", max_epochs=1, batch_size=8, neurons=8,
                           random_state=0, validation_fraction=0)

    def path(self, name):
        return str(self.root / name)

    def write(self, name, data):
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data if isinstance(data, bytes) else data.encode())
        return str(path)

    def image(self, name, array=None, **save_kwargs):
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if array is None:
            array = np.random.default_rng(len(name)).integers(0, 256, (16, 16), np.uint8)
        image = array if isinstance(array, Image.Image) else Image.fromarray(array)
        image.save(path, **save_kwargs)
        return str(path)

    def once(self, key, build):
        if key not in self._memo:
            self._memo[key] = build()
        return self._memo[key]

    def marker(self, name):
        """A path that a payload creates if (and only if) its code runs."""
        path = self.root / "markers" / name
        path.parent.mkdir(exist_ok=True)
        if path.exists():
            path.unlink()
        return path

    def pickle_payload(self, name, marker):
        return self.write(name, pickle.dumps(Payload(marker)))

    # fitted models (copies, so that a case can refit or break them)
    def fitted(self, **params):
        from cxr_estimators import CXRClassifier

        key = ("fitted", tuple(sorted(params.items())))
        model = self.once(key, lambda: CXRClassifier(**{**self.params, **params})
                          .fit(self.X, self.y))
        return copy.deepcopy(model)

    def fitted_rgb(self):
        from cxr_estimators import CXRClassifier

        X3 = np.repeat(self.X, 3, axis=1)
        model = self.once("rgb", lambda: CXRClassifier(**self.params).fit(X3, self.y))
        return copy.deepcopy(model), X3

    def keep(self, clf):
        """Remember ``clf``'s predictions, for :meth:`kept`."""
        self.state["clf"] = clf
        self.state["net"] = clf.net_
        self.state["proba"] = clf.predict_proba(self.X)
        return clf

    def kept(self):
        """True when the remembered model still predicts exactly as before."""
        clf = self.state.get("clf")
        return clf is not None and np.array_equal(clf.predict_proba(self.X),
                                                  self.state["proba"])

    def model_file(self, name="model.safetensors"):
        """A fresh copy of a saved fitted model's file."""
        import cxr_estimators

        src = self.once("model_file", lambda: _save_to(cxr_estimators, self.fitted(),
                                                       self.path("_model.safetensors")))
        dst = self.path(name)
        Path(dst).write_bytes(Path(src).read_bytes())
        return dst

    def retamper(self, path, edit):
        """Rewrite a model file as an attacker who knows the format would: ``edit(tree,
        metadata, tensors)`` changes it in place, and the checksum is recomputed."""
        from safetensors.torch import save

        from cxr_estimators._safefile import read_safetensors, tensor_digest

        tensors, meta = read_safetensors(path)
        tree = json.loads(meta["tree"])
        edit(tree, meta, tensors)
        meta["tree"] = json.dumps(tree)
        meta["checksum"] = tensor_digest(tensors, meta["format"], meta["tree"],
                                         meta["versions"])
        Path(path).write_bytes(save(tensors, metadata=meta))
        return path


def _save_to(package, model, path):
    package.save(model, path)
    return path


def find_node(tree, class_suffix):
    """The estimator node of ``tree`` whose class path ends with ``class_suffix``."""
    if isinstance(tree, dict):
        if str(tree.get("__estimator__", "")).endswith(class_suffix):
            return tree
        values = tree.values()
    elif isinstance(tree, list):
        values = tree
    else:
        return None
    for value in values:
        found = find_node(value, class_suffix)
        if found is not None:
            return found
    return None


def png_claiming(path, width, height):
    """A tiny PNG whose header claims ``width`` x ``height`` pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    idat = b"IDAT" + zlib.compress(b"\x00" * 16)
    data = (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk
            + struct.pack(">I", zlib.crc32(chunk)) + struct.pack(">I", len(idat) - 4) + idat
            + struct.pack(">I", zlib.crc32(idat)))
    Path(path).write_bytes(data)
    return str(path)


def png_with_sbit(path, array, bits):
    """A 16-bit grayscale PNG of ``array`` with an sBIT chunk declaring ``bits``."""
    import io

    buf = io.BytesIO()
    Image.fromarray(array.astype(np.uint16)).save(buf, format="PNG")
    data = buf.getvalue()
    at = data.index(b"IDAT") - 4  # insert sBIT before the first IDAT chunk
    body = b"sBIT" + bytes([bits])
    chunk = struct.pack(">I", 1) + body + struct.pack(">I", zlib.crc32(body))
    Path(path).write_bytes(data[:at] + chunk + data[at:])
    return str(path)


def dicom(path, pixels, **tags):
    """A 16-bit grayscale DICOM file; ``tags`` set (or, as None, delete) elements."""
    from conftest_data import write_dicom

    return write_dicom(path, pixels, **tags)


def tiff_claiming(path, width, height):
    """A small TIFF whose ImageWidth/ImageLength tags are rewritten to claim a size."""
    import io

    buf = io.BytesIO()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(buf, format="TIFF")
    data = bytearray(buf.getvalue())
    assert data[:2] == b"II"
    ifd = struct.unpack_from("<I", data, 4)[0]
    (count,) = struct.unpack_from("<H", data, ifd)
    for k in range(count):
        at = ifd + 2 + 12 * k
        tag, kind = struct.unpack_from("<HH", data, at)
        if tag in (256, 257):
            value = width if tag == 256 else height
            struct.pack_into("<H" if kind == 3 else "<I", data, at + 8, value)
    Path(path).write_bytes(bytes(data))
    return str(path)
