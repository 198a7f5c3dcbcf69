"""Bad-input cases of the second pass (issue #27): what a hostile tester found, one or
more cases of our own per category — divergence that stays finite, integrity against
deliberate edits, the exact class allowlist, parameters read loosely, scale mix-ups,
audits on other layouts, other silent results, the process's own memory limit, the
head's size, and library errors that now name the user's mistake.

Machinery (``Case``, ``Raises``, ``Warns``, ``Handled``, the workspace) is
``tests/bad_inputs.py``'s; ``tests/test_errors.py`` runs these with its own cases and
``python -m benchmarks.robustness`` counts them."""

from __future__ import annotations

import json
import os
import shutil
import types
import warnings
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from sklearn.exceptions import NotFittedError

import cxr_estimators
from bad_inputs import Case, Handled, Raises, Warns, dicom, find_node
from cxr_estimators import CXRClassifier, ImageLoader, _validation
from cxr_estimators._divergence import TrainingDivergedError
from cxr_estimators.audit import audit_dataset, find_duplicates
from cxr_estimators.augment import Augmenter
from cxr_estimators.datasets import load_image_csv, load_medmnist
from cxr_estimators.evaluation import external_validate, retrain_on_all
from cxr_estimators.explain import grad_cam
from cxr_estimators.io import ImageReadError, read_image
from cxr_estimators.persistence import ModelFileError

KEY = b"a secret only the model's owner holds"


def _fit(ws, X=None, y=None, fit_kwargs=None, **params):
    return CXRClassifier(**{**ws.params, **params}).fit(
        ws.X if X is None else X, ws.y if y is None else y, **(fit_kwargs or {}))


def _refit(ws, fit_kwargs=None, **params):
    """Refit a fitted model (kept by ``ws.keep``, checked by ``ws.kept``) with ``params``."""
    clf = ws.keep(ws.fitted())
    return clf.set_params(**params).fit(ws.X, ws.y, **(fit_kwargs or {}))


# ------------------------------------------------------------- divergence that stays finite
def _imbalanced(ws):
    y = np.array(["normal"] * 14 + ["pneumonia"] * 2)
    return _fit(ws, y=y, max_epochs=4)


class _PushToOneClass(__import__("skorch").callbacks.Callback):
    """At the last epoch's start, sets the output bias so that every image is predicted
    as class 0 with a confident, wrong answer for the others: a collapse a bad optimiser
    state would cause, made deterministic."""

    def on_epoch_begin(self, net, **kwargs):
        if len(net.history) == net.max_epochs:
            last = [m for m in net.module_.modules() if isinstance(m, torch.nn.Linear)][-1]
            with torch.no_grad():
                last.weight.zero_()
                last.bias.copy_(torch.tensor([30.0, -30.0]))


DIVERGENCE = [
    Case("a model collapsed to one class with a high loss", "faults",
         lambda ws: _refit(ws, max_epochs=2, callbacks=[("push", _PushToOneClass())]),
         Raises(TrainingDivergedError, r"predicts class index 0 for every training image at "
                                       r"epoch 2 although they have 2 classes",
                after=lambda ws: ws.kept())),
    Case("Adam lr=1e4: a finite loss that explodes", "faults",
         lambda ws: _refit(ws, lr=1e4, max_epochs=3),
         Raises(TrainingDivergedError, r"loss exploded to .* at epoch 1.*likely cause: the "
                                       r"learning rate: lr=10000", after=lambda ws: ws.kept())),
    Case("SGD lr=1e3: a finite loss that explodes", "faults",
         lambda ws: _refit(ws, optimizer="sgd", lr=1e3, max_epochs=2),
         Raises(TrainingDivergedError, r"training diverged.*lr=1000 \(SGD\)",
                after=lambda ws: ws.kept())),
    Case("sample weights up to 1e38 (overflowed float32)", "faults",
         lambda ws: _fit(ws, max_epochs=2, fit_kwargs={"sample_weight": np.r_[[1e38, 1.0] * 8]}),
         Handled(lambda clf, ws: np.isfinite(clf.history_[:, "train_loss"]).all())),
    Case("class weight of 1e38 blamed on class_weight", "faults",
         lambda ws: _refit(ws, class_weight={"normal": 1e38, "pneumonia": 1.0}),
         Raises(TrainingDivergedError, r"likely cause: the class weights \(class_weight\)",
                after=lambda ws: ws.kept())),
    Case("brightness 1e30 (trained to a loss of 4e26)", "parameters",
         lambda ws: _refit(ws, augment={"brightness": 1e30}),
         Raises(ValueError, r"augment brightness=1e\+30 is beyond 10",
                after=lambda ws: ws.kept())),
    Case("a high but workable lr is no divergence", "faults",
         lambda ws: _fit(ws, lr=0.3, max_epochs=6),
         Handled(lambda clf, ws: len(clf.history_) == 6)),
    Case("imbalanced data predicting the majority is no collapse", "faults", _imbalanced,
         Handled(lambda clf, ws: len(clf.history_) == 4)),
]


# ------------------------------------------------------------------------- integrity
def _signed_file(ws, name):
    path = ws.path(name)
    cxr_estimators.save(ws.fitted(), path, key=KEY)
    return path


def _swap_classes(tree, meta, tensors):
    node = find_node(tree, "CXRClassifier")["fitted"]["classes_"]
    node["__ndarray_list__"] = node["__ndarray_list__"][::-1]


def _forge_cache(ws, path, edit, rekey=False):
    """Rewrite a feature cache file with its SHA-256 recomputed (and, with ``rekey``, its
    HMAC too, as only the owner of the user's cache key could)."""
    from safetensors.torch import save

    from cxr_estimators._safefile import read_safetensors, tensor_digest, user_key

    tensors, meta = read_safetensors(path)
    tensors = {"features": edit(tensors["features"])}
    meta["sha256"] = tensor_digest(tensors, meta["key"])
    if rekey:
        meta["hmac"] = tensor_digest(tensors, meta["key"], key=user_key("feature-cache"))
    Path(path).write_bytes(save(tensors, metadata=meta))


def _cache_with(ws, spoil):
    cache = Path(ws.path("feature_cache2"))
    shutil.rmtree(cache, ignore_errors=True)
    params = {**ws.params, "freeze": True, "cache": str(cache)}
    ws.state["first"] = CXRClassifier(**params).fit(ws.X, ws.y).predict_proba(ws.X)
    (path,) = cache.glob("features-*.safetensors")
    spoil(ws, path)
    ws.state["again"] = CXRClassifier(**params).fit(ws.X, ws.y).predict_proba(ws.X)
    return ws.state["again"]


def _cache_same(ws):
    return np.allclose(ws.state["first"], ws.state["again"], atol=1e-6)


INTEGRITY = [
    Case("swapped classes_, checksum recomputed, load(key=)", "model files",
         lambda ws: cxr_estimators.load(ws.retamper(_signed_file(ws, "s.safetensors"),
                                                    _swap_classes), key=KEY),
         Raises(ModelFileError, r"s\.safetensors.*modified after it was saved.*HMAC")),
    Case("load(key=) with the wrong key", "model files",
         lambda ws: cxr_estimators.load(_signed_file(ws, "k.safetensors"), key=b"guess"),
         Raises(ModelFileError, r"k\.safetensors.*key is not the one")),
    Case("load(key=) of a file saved without a key", "model files",
         lambda ws: cxr_estimators.load(ws.model_file("u.safetensors"), key=KEY),
         Raises(ModelFileError, r"u\.safetensors' carries no HMAC")),
    Case("a signed file loads with its key", "model files",
         lambda ws: cxr_estimators.load(_signed_file(ws, "ok.safetensors"), key=KEY.decode()),
         Handled(lambda clf, ws: np.array_equal(clf.predict_proba(ws.X),
                                                ws.fitted().predict_proba(ws.X)))),
    Case("save with an empty key", "model files",
         lambda ws: cxr_estimators.save(ws.fitted(), ws.path("e.safetensors"), key=b""),
         Raises(ValueError, r"save: key is empty")),
    Case("save with an int key", "model files",
         lambda ws: cxr_estimators.save(ws.fitted(), ws.path("i.safetensors"), key=42),
         Raises(TypeError, r"save: key must be bytes or a str; got int")),
    Case("forged feature cache (digest recomputed, no key)", "faults",
         lambda ws: _cache_with(ws, lambda ws, p: _forge_cache(ws, p, lambda t: t * 0)),
         Warns(UserWarning, r"feature cache file .*not valid.*HMAC does not match",
               after=_cache_same)),
    Case("feature cache file with the wrong row count", "faults",
         lambda ws: _cache_with(ws, lambda ws, p: _forge_cache(ws, p, lambda t: t[:5],
                                                               rekey=True)),
         Warns(UserWarning, r"feature cache file .*features of shape \(5, \d+\) for 16",
               after=_cache_same)),
    Case("a skorch net re-exported by a cxr_estimators module", "model files",
         lambda ws: cxr_estimators.load(ws.retamper(ws.model_file("r.safetensors"),
                                                    _set_class("cxr_estimators._training:"
                                                               "NeuralNetClassifier"))),
         Raises(ModelFileError, r"'cxr_estimators._training:NeuralNetClassifier' is not one "
                                r"of the .* classes a model file may name")),
    Case("sklearn's BaseEstimator itself", "model files",
         lambda ws: cxr_estimators.load(ws.retamper(ws.model_file("b.safetensors"),
                                                    _set_class("sklearn.base:BaseEstimator"))),
         Raises(ModelFileError, r"'sklearn.base:BaseEstimator' is not one of")),
]


def _set_class(path):
    def edit(tree, meta, tensors):
        tree["__estimator__"] = path
    return edit


# ------------------------------------------------------------------- parameters read loosely
PARAMETERS = [
    Case("amsgrad='no' (bool('no') is True)", "parameters",
         lambda ws: _refit(ws, optimizer_kwargs={"amsgrad": "no"}),
         Raises(ValueError, r"optimizer_kwargs=\{'amsgrad': 'no'\}.*amsgrad must be True or "
                            r"False", after=lambda ws: ws.kept())),
    Case("SGD nesterov=1", "parameters",
         lambda ws: _fit(ws, optimizer="sgd", optimizer_kwargs={"nesterov": 1,
                                                                "momentum": 0.9}),
         Raises(ValueError, r"nesterov must be True or False")),
    Case("betas=(0.9,)", "parameters",
         lambda ws: _fit(ws, optimizer_kwargs={"betas": (0.9,)}),
         Raises(ValueError, r"betas must be a tuple of 2 numbers")),
    Case("cosine eta_min above lr", "parameters",
         lambda ws: _fit(ws, lr=0.01, max_epochs=2,
                         lr_schedule={"policy": "cosine", "eta_min": 0.96}),
         Raises(ValueError, r"eta_min=0.96 is above lr=0.01")),
    Case("plateau mode='max' on the loss", "parameters",
         lambda ws: _fit(ws, lr_schedule={"mode": "max"}),
         Raises(ValueError, r"lr_schedule mode='max'.*must be 'min'")),
    Case("weight_decay=True (a bool read as 1)", "parameters",
         lambda ws: _fit(ws, weight_decay=True),
         Raises(ValueError, r"'weight_decay' parameter of CXRClassifier must be a number, "
                            r"not the boolean True")),
    Case("lr=True", "parameters", lambda ws: _fit(ws, lr=True),
         Raises(ValueError, r"'lr' parameter .* must be a number, not the boolean")),
    Case("class_weight value True", "labels",
         lambda ws: _fit(ws, class_weight={"pneumonia": True}),
         Raises(ValueError, r"class_weight values must be numbers, not booleans")),
    Case("plateau min_lr above lr", "parameters",
         lambda ws: _fit(ws, lr=1e-3, lr_schedule={"min_lr": 0.5}),
         Raises(ValueError, r"min_lr=0.5 is above lr=0.001")),
    Case("plateau with a negative threshold", "parameters",
         lambda ws: _fit(ws, lr_schedule={"threshold": -1.0}),
         Raises(ValueError, r"threshold=-1.0 must be >= 0")),
    Case("NaN patient ids in fit's groups", "labels",
         lambda ws: CXRClassifier(**{**ws.params, "validation_fraction": 0.25}).fit(
             ws.X, ws.y, groups=np.r_[np.arange(12.0), [np.nan] * 4]),
         Raises(ValueError, r"groups has missing patient ids \(None or NaN\) at rows "
                            r"\[12, 13, 14, 15\]")),
    Case("early_stopping min_delta=True", "parameters",
         lambda ws: _fit(ws, early_stopping={"patience": 2, "min_delta": True}),
         Raises(ValueError, r"min_delta must be a number >= 0; got True")),
    Case("plateau patience=True", "parameters",
         lambda ws: _fit(ws, lr_schedule={"patience": True}),
         Raises(ValueError, r"lr_schedule patience=True must be a number, not a boolean")),
    Case("ImageLoader normalize=(True, True)", "parameters",
         lambda ws: ImageLoader(normalize=(True, True)).fit_transform(
             np.zeros((2, 8, 8), np.uint8)),
         Raises(ValueError, r"normalize \(mean, std\) must be numbers, not booleans")),
    Case("fixed brightness factor (1.5, 1.5) is applied", "parameters",
         lambda ws: Augmenter(brightness=(1.5, 1.5))(torch.from_numpy(ws.X[:2])),
         Handled(lambda out, ws: not torch.equal(out, torch.from_numpy(ws.X[:2])))),
    Case("fractional warm-up with one batch per epoch", "parameters",
         lambda ws: _fit(ws, batch_size=16, max_epochs=2,
                         lr_schedule={"policy": "cosine", "warmup_epochs": 1.5}),
         Handled(lambda clf, ws: len(clf.history_) == 2)),
]


# ------------------------------------------------------------------------- scale mix-ups
def _compact(ws):
    raw = (ws.X[:, 0] * 255).clip(0, 255).astype(np.uint8)
    return ImageLoader(size=16, dtype="uint8", channels=1).fit_transform(raw)


def _compact_model(ws):
    return ws.once("compact_model", lambda: _fit(ws, X=_compact(ws)))


SCALES = [
    Case("0-255 floats to a model fitted on CompactImages", "arrays",
         lambda ws: _compact_model(ws).predict(_compact(ws).astype("float32")),
         Raises(ValueError, r"fitted on compact images .* but X is float with values up to "
                            r"\d+: 0-255 pixels")),
    Case("np.concatenate of compact and float images", "arrays",
         lambda ws: _compact_model(ws).predict(np.concatenate([_compact(ws)[:4],
                                                               _compact(ws)[4:].to_float32()])),
         Raises(ValueError, r"X mixes two scales: images \[0, 1, 2, 3\]")),
    Case("0-255 floats to fit", "arrays",
         lambda ws: _fit(ws, X=(ws.X * 255).astype(np.float32)),
         Warns(UserWarning, r"X is float with values up to \d+(\.\d+)?: 0-255 pixels, not "
                            r"normalised images")),
    Case("compact X with a float X_val of another normalisation", "arrays",
         lambda ws: _fit(ws, X=_compact(ws), fit_kwargs={
             "X_val": _compact(ws).to_float32() * 0.3 + 2, "y_val": ws.y}),
         Warns(UserWarning, r"X_val's pixels .* are on another scale than X's")),
]


# ------------------------------------------------------------------ audits on other layouts
def _gray_u8(n=12, seed=0):
    X = np.random.default_rng(seed).integers(30, 220, (n, 28, 28), dtype=np.uint8)
    X[5] = X[3]
    return X


AUDITS = [
    Case("audit of (n, 1, H, W) images", "arrays",
         lambda ws: audit_dataset(_gray_u8()[:, None]),
         Handled(lambda r, ws: not r.odd_images and r.duplicate_groups == [[3, 5]]
                 and r.image_sizes == {"28x28": 12})),
    Case("perceptual hashes of channels-first RGB", "arrays",
         lambda ws: find_duplicates(np.repeat(_gray_u8()[:, None], 3, axis=1),
                                    method="phash", max_distance=4),
         Handled(lambda pairs, ws: len(pairs) == len(find_duplicates(
             _gray_u8(), method="phash", max_distance=4)))),
    Case("float images in [0, 255] are not all 'very bright'", "arrays",
         lambda ws: audit_dataset(_gray_u8().astype(np.float32)),
         Handled(lambda r, ws: not r.odd_images)),
    Case("an all-NaN image is flagged", "arrays",
         lambda ws: audit_dataset(np.where(np.arange(12)[:, None, None] == 4, np.nan,
                                           _gray_u8() / 255.0)),
         Handled(lambda r, ws: r.odd_images == {4: ["all pixels NaN or inf"]})),
    Case("NaN patient ids are no shared patient", "labels",
         lambda ws: audit_dataset(_gray_u8(), groups=[np.nan] * 12, X_other=_gray_u8(seed=1),
                                  groups_other=[np.nan] * 12),
         Warns(UserWarning, r"groups has 12 missing patient ids",
               after=lambda ws: True)),
]


# ---------------------------------------------------------------------- other silent ones
def _latin1_csv(ws):
    path = ws.write("latin.csv", "path,label\nr\xe9sum\xe9.png,normal\n".encode("latin-1"))
    return load_image_csv(path)


def _npz(ws, n_images, n_labels, labels=None):
    path = ws.path("bad.npz")
    np.savez(path, train_images=np.zeros((n_images, 4, 4), np.uint8),
             train_labels=np.zeros((n_labels, 1), np.uint8) if labels is None else labels)
    return load_medmnist(path, "train")


OTHER = [
    Case("score() with labels never seen in fit", "labels",
         lambda ws: ws.fitted().score(ws.X, np.where(ws.y == "normal", "covid", ws.y)),
         Raises(ValueError, r"score: y has labels \['covid'\] not in classes_")),
    Case("DICOM RescaleSlope=0", "files",
         lambda ws: read_image(dicom(ws.path("slope0.dcm"),
                                     np.arange(16, dtype=np.uint16).reshape(4, 4),
                                     RescaleSlope=b"0 ")),
         Raises(ImageReadError, r"slope0\.dcm.*RescaleSlope is 0.0")),
    Case("one (28, 28, 1) image to ImageLoader", "arrays",
         lambda ws: ImageLoader(size=8).fit_transform(np.zeros((28, 28, 1), np.uint8)),
         Raises(ValueError, r"shape \(28, 28, 1\): a single \(H, W, C\) image")),
    Case("a non-UTF-8 (latin-1) CSV", "files", _latin1_csv,
         Raises(ValueError, r"latin\.csv' is not UTF-8.*offset")),
    Case("a UTF-16 CSV", "files",
         lambda ws: load_image_csv(ws.write("u16.csv", "path,label\na.png,x\n".encode("utf-16"))),
         Raises(ValueError, r"u16\.csv' is not UTF-8")),
    Case("a CSV with a header and no rows", "files",
         lambda ws: load_image_csv(ws.write("empty.csv", "path,label\n")),
         Raises(ValueError, r"empty\.csv' has a header \['path', 'label'\] but no rows")),
    Case("serialised Python objects named .npz", "files",
         lambda ws: load_medmnist(ws.write("pickled.npz", __import__("pickle").dumps([1, 2]))),
         Raises(ValueError, r"pickled\.npz' is not a MedMNIST \.npz archive of arrays")),
    Case("an .npz with object-array labels", "files",
         lambda ws: _npz(ws, 2, 2, labels=np.array([{"a": 1}, {"b": 2}], dtype=object)),
         Raises(ValueError, r"bad\.npz': Object arrays cannot be loaded")),
    Case("fit on a list of images of different sizes", "arrays",
         lambda ws: _fit(ws, X=[ws.X[0], ws.X[1, :, :8, :8]] * 8),
         Raises(ValueError, r"X is a list of images of different shapes")),
    Case("external_validate with fewer labels than images", "labels",
         lambda ws: external_validate(ws.fitted(), {"site_b": (ws.X, ws.y[:3])},
                                      pos_label="pneumonia", n_bootstraps=10),
         Raises(ValueError, r"dataset 'site_b' has 16 images but 3 labels")),
    Case("an .npz with fewer labels than images", "files", lambda ws: _npz(ws, 4, 3),
         Raises(ValueError, r"bad\.npz' split 'train' has 4 images but 3 labels")),
    Case("bytes paths to save and load", "model files",
         lambda ws: (cxr_estimators.save(ws.fitted(), os.fsencode(ws.path("by.safetensors"))),
                     cxr_estimators.load(os.fsencode(ws.path("by.safetensors"))))[1],
         Handled(lambda clf, ws: clf.predict(ws.X).shape == (16,))),
    Case("bytes paths to ImageLoader", "files",
         lambda ws: ImageLoader(size=8).fit_transform([os.fsencode(ws.image("b1.png"))]),
         Handled(lambda X, ws: X.shape == (1, 3, 8, 8))),
]


# -------------------------------------------------------------------------------- memory
def _fit_big_under(ws, limit, gib):
    X = np.lib.stride_tricks.as_strided(np.zeros(1, np.float32), (2, 1, 4096, 4096),
                                        (0, 0, 0, 0))  # no memory behind it
    with mock.patch.object(_validation, "_machine_available", lambda: 256 << 30), \
            mock.patch.object(_validation, limit, lambda: gib << 30):
        return _fit(ws, X=X, y=ws.y[:2], backbone="resnet18")


def _params_edit(name, value):
    def edit(tree, meta, tensors):
        find_node(tree, "CXRClassifier")["params"][name] = value
    return edit


def _huge_head_file(ws):
    def edit(tree, meta, tensors):
        find_node(tree, "CXRClassifier")["params"]["neurons"] = {
            "__tuple__": [65536, 65536]}
    return cxr_estimators.load(ws.retamper(ws.model_file("huge.safetensors"), edit))


MEMORY = [
    Case("fit under a 4 GiB RLIMIT_AS on a 256 GiB machine", "arrays",
         lambda ws: _fit_big_under(ws, "_rlimit_room", 4),
         Raises(MemoryError, r"training on batches of 2 images of shape \(1, 4096, 4096\)")),
    Case("fit under a 4 GiB cgroup memory.max", "arrays",
         lambda ws: _fit_big_under(ws, "_cgroup_room", 4),
         Raises(MemoryError, r"needs about")),
    Case("neurons=(65536, 65536) (a 16 GiB head)", "parameters",
         lambda ws: _refit(ws, neurons=(65536, 65536)),
         Raises(ValueError, r"neurons=\(65536, 65536\) on \d+ features makes a head of "
                            r"4,\d+,\d+,\d+ weights \(16.0 GiB", after=lambda ws: ws.kept())),
    Case("backbone_kwargs widths=(65536, 65536) (a 154 GB trunk)", "parameters",
         lambda ws: _fit(ws, backbone_kwargs={"widths": (65536, 65536)}),
         Raises(ValueError, r"widths=\(65536, 65536\) makes a simple_cnn of "
                            r"38,\d+,\d+,\d+ conv weights")),
    Case("a model file whose header declares a 154 GB trunk", "model files",
         lambda ws: cxr_estimators.load(ws.retamper(ws.model_file("trunk.safetensors"),
                                                    _params_edit("backbone_kwargs", {
                                                        "__dict__": [["widths", {
                                                            "__tuple__": [65536, 65536]}]]}))),
         Raises(ModelFileError, r"trunk\.safetensors.*cannot be built.*conv weights")),
    Case("a model file whose header declares a 16 GiB head", "model files", _huge_head_file,
         Raises(ModelFileError, r"huge\.safetensors.*cannot be built.*head of")),
]


# ------------------------------------------------------------------------------ obscure
def _deep_header(ws):
    from safetensors.torch import save

    from cxr_estimators._safefile import read_safetensors, tensor_digest

    path = ws.model_file("deep.safetensors")
    tensors, meta = read_safetensors(path)
    meta["tree"] = "[" * 100_000 + "]" * 100_000
    meta["checksum"] = tensor_digest(tensors, meta["format"], meta["tree"], meta["versions"])
    Path(path).write_bytes(save(tensors, metadata=meta))
    return cxr_estimators.load(path)


def _bad_shape(tree, meta, tensors):
    find_node(tree, "CXRClassifier")["fitted"]["classes_"]["shape"] = [3]


def _method_attribute(tree, meta, tensors):
    find_node(tree, "CXRClassifier")["fitted"]["predict"] = "not a method"


def _search_with_nan_epoch():
    return types.SimpleNamespace(
        cv_results_={"mean_test_best_epoch": np.array([np.nan, 3.0]),
                     "params": [{"lr": 1e4}, {"lr": 1e-3}]},
        refit=False, best_index_=0, estimator=CXRClassifier())


def _head_checkpoint(ws):
    folder = ws.path("head_ckpt")
    shutil.rmtree(folder, ignore_errors=True)
    clf = _fit(ws, freeze=True, cache=True, checkpoint_dir=folder, max_epochs=2,
               validation_fraction=0.25)
    return clf.net_.load_params(f_params=os.path.join(folder, "params.pt"))


def _with_warnings_off(fn):
    def run(ws):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fn(ws)
    return run


OBSCURE = [
    Case("roc_auc monitor on a validation set missing a class", "labels",
         lambda ws: _fit(ws, early_stopping={"patience": 2, "monitor": "roc_auc"},
                         fit_kwargs={"X_val": ws.X[:4], "y_val": ["normal"] * 4}),
         Raises(ValueError, r"monitor='roc_auc' cannot be computed: the validation set \(4 "
                            r"images\) holds only class index\(es\) \[0\]")),
    Case("head_batch_norm with a one-image last batch", "parameters",
         lambda ws: _fit(ws, X=np.concatenate([ws.X, ws.X[:1]]), y=np.r_[ws.y, ws.y[:1]],
                         head_batch_norm=True),
         Raises(ValueError, r"BatchNorm layer .* cannot train on a batch of one image.*"
                            r"batch_size=8")),
    Case("a 100,000-deep header", "model files", _deep_header,
         Raises(ModelFileError, r"deep\.safetensors.*nested too deeply")),
    Case("an array of the wrong shape in a model file", "model files",
         lambda ws: cxr_estimators.load(ws.retamper(ws.model_file("shape.safetensors"),
                                                    _bad_shape)),
         Raises(ModelFileError, r"shape\.safetensors': malformed estimator tree \(ValueError: "
                                r"cannot reshape")),
    Case("a fitted attribute named like a method", "model files",
         lambda ws: cxr_estimators.load(ws.retamper(ws.model_file("meth.safetensors"),
                                                    _method_attribute)),
         Raises(ModelFileError, r"fitted attribute 'predict' of CXRClassifier would replace "
                                r"its method")),
    Case("grad_cam(layer='augment')", "arrays",
         lambda ws: grad_cam(ws.once("augmented", lambda: _fit(ws, augment={"rotation": 5.0})),
                             ws.X[:2], layer="augment"),
         Raises(ValueError, r"layer='augment' does not run when the model predicts")),
    Case("retrain_on_all on a diverged candidate", "faults",
         lambda ws: retrain_on_all(_search_with_nan_epoch(), ws.X, ws.y),
         Raises(ValueError, r"candidate 0 \(\{'lr': 10000.0\}\) has no best epoch")),
    Case("external_validate on an unfitted model", "arrays",
         lambda ws: external_validate(CXRClassifier(), {"site": (ws.X, ws.y)}),
         Raises(NotFittedError, r"CXRClassifier instance is not fitted")),
    Case("load_params of a cache=True checkpoint", "faults",
         _with_warnings_off(_head_checkpoint),
         Raises(RuntimeError, r"params\.pt' holds only the head's weights.*cache=")),
]

CASES = DIVERGENCE + INTEGRITY + PARAMETERS + SCALES + AUDITS + OTHER + MEMORY + OBSCURE
