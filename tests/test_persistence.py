"""cxr_estimators.save / load: round trips with identical predictions, no code run on
load, atomic writes. (Bad model files are cases of tests/test_errors.py.)"""

import copy
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import joblib
import numpy as np
import pytest
import sklearn
import torch
from sklearn.ensemble import VotingClassifier
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline

import cxr_estimators
from cxr_estimators import CXRClassifier, ImageLoader
from cxr_estimators.persistence import ModelFileError

from bad_inputs import Payload
from conftest import _toy_images

X8, Y8 = _toy_images(n=24, size=16)
RAW = (np.random.default_rng(0).random((24, 20, 20)) * 255).astype(np.uint8)
RAW[Y8 == "pneumonia", :6, :6] = 255


def _pipe(seed=0, **clf):
    return Pipeline([("load", ImageLoader(size=16, channels=1, normalize=(0.5, 0.25))),
                     ("clf", CXRClassifier(backbone="simple_cnn", neurons=8, max_epochs=2,
                                           batch_size=8, random_state=seed, **clf))])


def _roundtrip(est, tmp_path, name="m.safetensors", **load_kwargs):
    path = tmp_path / name
    cxr_estimators.save(est, path)
    return cxr_estimators.load(path, **load_kwargs)


def test_classifier_roundtrip_is_identical(tmp_path, small_clf_params):
    clf = CXRClassifier(**small_clf_params, lr_schedule={"patience": 1},
                        class_weight={"normal": 2.0}).fit(X8, Y8)
    loaded = _roundtrip(clf, tmp_path)
    np.testing.assert_array_equal(loaded.predict_proba(X8), clf.predict_proba(X8))
    assert loaded.get_params() == clf.get_params()
    assert loaded.classes_.tolist() == clf.classes_.tolist()
    assert loaded.image_shape_ == clf.image_shape_ and loaded.best_epoch_ == clf.best_epoch_
    assert list(loaded.history_[:, "train_loss"]) == list(clf.history_[:, "train_loss"])
    assert loaded.module_.training is False
    # a loaded model refits like a fresh one
    assert loaded.fit(X8, Y8).predict(X8).shape == (24,)


def test_head_schedule_averaging_and_tta_parameters_roundtrip(tmp_path):
    """The network is rebuilt by the code fit uses, so every head/training option loads."""
    clf = CXRClassifier(backbone="simple_cnn", backbone_kwargs={"widths": (8, 16)},
                        pooling="max", neurons=(16, 8), head_batch_norm=True,
                        input_dropout=0.1, average_weights="ema", lr_schedule="cosine",
                        label_smoothing=0.1, augment={"rotation": 5}, tta=2, max_epochs=2,
                        batch_size=8, random_state=0).fit(X8, Y8)
    loaded = _roundtrip(clf, tmp_path)
    np.testing.assert_array_equal(loaded.predict_proba(X8), clf.predict_proba(X8))
    assert loaded.backbone_kwargs == {"widths": (8, 16)} and loaded.neurons == (16, 8)


def test_pipeline_gridsearch_best_estimator_roundtrip(tmp_path):
    search = GridSearchCV(_pipe(), {"clf__lr": [1e-3, 1e-2]}, cv=2).fit(RAW, Y8)
    loaded = _roundtrip(search.best_estimator_, tmp_path)
    np.testing.assert_array_equal(loaded.predict_proba(RAW), search.predict_proba(RAW))
    assert isinstance(loaded, Pipeline) and loaded[0].normalize == (0.5, 0.25)


def test_soft_voting_of_pipelines_roundtrip(tmp_path):
    vote = VotingClassifier([("a", _pipe(0)), ("b", _pipe(1, dropout=0.2))],
                            voting="soft").fit(RAW, Y8)
    loaded = _roundtrip(vote, tmp_path)
    np.testing.assert_array_equal(loaded.predict_proba(RAW), vote.predict_proba(RAW))
    assert loaded.named_estimators_["b"] is loaded.estimators_[1]  # shared, not copied
    assert loaded.classes_.tolist() == ["normal", "pneumonia"]


def test_lazy_pipeline_and_cached_features_roundtrip(tmp_path):
    lazy = _pipe().set_params(load__lazy=True, clf__freeze=True, clf__cache=True)
    lazy.fit(RAW, Y8)
    loaded = _roundtrip(lazy, tmp_path)
    np.testing.assert_array_equal(loaded.predict_proba(RAW), lazy.predict_proba(RAW))
    assert loaded[-1]._uses_cache is True


@pytest.mark.parametrize("method", ["sigmoid", "isotonic"])
def test_calibrated_screening_model_roundtrip(tmp_path, method):
    """docs/clinical_evaluation.md's "one object to deploy": a FixedThresholdClassifier
    over CalibratedClassifierCV(FrozenEstimator(pipeline)). Its fitted members are
    sklearn's own _CalibratedClassifier (not an estimator class) and, for isotonic, an
    IsotonicRegression holding a scipy function; both once made save refuse the model."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.frozen import FrozenEstimator
    from sklearn.model_selection import FixedThresholdClassifier

    model = _pipe().fit(RAW[:16], Y8[:16])
    calibrated = CalibratedClassifierCV(FrozenEstimator(model), method=method, cv=2)
    screen = FixedThresholdClassifier(calibrated.fit(RAW[16:], Y8[16:]), threshold=0.3,
                                      pos_label="pneumonia")  # fitted: used as it is
    loaded = _roundtrip(screen, tmp_path)
    np.testing.assert_array_equal(loaded.predict_proba(RAW), screen.predict_proba(RAW))
    np.testing.assert_array_equal(loaded.predict(RAW), screen.predict(RAW))
    member = loaded.estimator.calibrated_classifiers_[0]
    assert member.method == method


def test_every_parameter_roundtrips_generically(tmp_path):
    """Parameters are saved from get_params(), so new ones (tuples, dicts, paths) need no
    change in persistence."""
    clf = CXRClassifier(backbone="simple_cnn", weights=Path("/x/w.pt"), freeze=1,
                        early_stopping={"patience": 3, "monitor": "f1", "pos_label": "b"},
                        lr_schedule={"factor": 0.5}, augment={"zoom": (0.9, 1.1)},
                        class_weight={0: 1.0, 1: 2.5}, random_state=np.random.RandomState(3))
    loader = ImageLoader(size=(32, 48), normalize=([0.1, 0.2, 0.3], (0.5, 0.5, 0.5)))
    for est in (clf, loader, Pipeline([("load", loader), ("clf", clf)])):
        loaded = _roundtrip(est, tmp_path)
        got, want = loaded.get_params(deep=False), est.get_params(deep=False)
        for key, value in want.items():
            if isinstance(value, np.random.RandomState):
                assert got[key].randint(1000) == copy.deepcopy(value).randint(1000)
            elif key != "steps":
                assert got[key] == value and type(got[key]) is type(value), key
    assert _roundtrip(clf, tmp_path).augment["zoom"] == (0.9, 1.1)  # a tuple stays a tuple


def test_metadata_routing_requests_roundtrip(tmp_path):
    with sklearn.config_context(enable_metadata_routing=True):
        clf = CXRClassifier(backbone="simple_cnn").set_fit_request(X_val=True, y_val=True)
        loaded = _roundtrip(clf, tmp_path)
        assert loaded._get_metadata_request().fit.requests["X_val"] is True


def test_file_records_versions_and_checksum(tmp_path):
    from cxr_estimators._safefile import read_safetensors

    path = tmp_path / "m.safetensors"
    cxr_estimators.save(CXRClassifier(), path)
    _, meta = read_safetensors(path)
    versions = json.loads(meta["versions"])
    assert versions["torch"] == torch.__version__.split("+")[0] or versions["torch"]
    assert {"cxr_estimators", "torch", "sklearn", "skorch", "numpy"} <= set(versions)
    assert len(meta["checksum"]) == 64 and meta["format"] == cxr_estimators.persistence.FORMAT


def test_load_never_unpickles_a_payload_that_joblib_would_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "model.joblib"
    path.write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(ModelFileError, match="pickle"):
        cxr_estimators.load(path)
    assert not marker.exists()
    joblib.load(path)  # what the README warns about: this runs the file's code
    assert marker.read_text() == "code ran"


def test_failed_save_leaves_the_old_file(tmp_path, monkeypatch, small_clf_params):
    path = tmp_path / "m.safetensors"
    old = CXRClassifier(**small_clf_params).fit(X8, Y8)
    cxr_estimators.save(old, path)
    before = path.read_bytes()

    def disk_full(data):
        raise OSError(28, "No space left on device")

    import cxr_estimators._safefile as safefile

    real_fdopen = os.fdopen

    class Full:
        def __init__(self, fd, mode):
            self.fh = real_fdopen(fd, mode)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def write(self, data):
            self.fh.write(data[: len(data) // 3])  # part of it reaches the disk
            disk_full(data)

    monkeypatch.setattr(safefile.os, "fdopen", Full)
    with pytest.raises(OSError, match="No space left on device.*previous file.*unchanged"):
        cxr_estimators.save(CXRClassifier(**{**small_clf_params, "neurons": 4}).fit(X8, Y8),
                            path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]  # no temp file
    np.testing.assert_array_equal(cxr_estimators.load(path).predict_proba(X8),
                                  old.predict_proba(X8))


@pytest.mark.skipif(torch.cuda.is_available(), reason="simulates a machine without CUDA")
def test_cuda_model_maps_to_cpu_without_cuda(tmp_path, small_clf_params):
    clf = CXRClassifier(**small_clf_params).fit(X8, Y8)
    clf.device_ = "cuda"  # as saved on a GPU machine: the tensors are written from the CPU
    with pytest.warns(UserWarning, match="no CUDA GPU here"):
        loaded = _roundtrip(clf, tmp_path)
    assert loaded.device_ == "cpu" and loaded.net_.device == "cpu"
    np.testing.assert_array_equal(loaded.predict_proba(X8), clf.predict_proba(X8))
    assert _roundtrip(clf, tmp_path, device="cpu").device_ == "cpu"


@pytest.mark.gpu
def test_cuda_trained_model_loads_on_cpu_only_process(tmp_path, small_clf_params):
    clf = CXRClassifier(**small_clf_params, device="cuda").fit(X8, Y8)
    path = tmp_path / "gpu.safetensors"
    cxr_estimators.save(clf, path)
    np.save(tmp_path / "X.npy", X8)
    code = ("import numpy as np, warnings, cxr_estimators; warnings.simplefilter('ignore');"
            f"m = cxr_estimators.load(r'{path}'); assert m.device_ == 'cpu';"
            f"np.save(r'{tmp_path / 'p.npy'}', m.predict_proba(np.load(r'{tmp_path / 'X.npy'}')))")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=300)
    cpu = np.load(tmp_path / "p.npy")
    gpu = clf.predict_proba(X8)
    # CUDA predicts under bf16 autocast, the CPU in float32: close, not bit-identical
    np.testing.assert_allclose(cpu, gpu, atol=2e-2)
    assert (cpu.argmax(1) == gpu.argmax(1)).mean() >= 0.9
    on_gpu = cxr_estimators.load(path)  # on a GPU machine it stays there, same output
    np.testing.assert_array_equal(on_gpu.predict_proba(X8), gpu)


def test_safetensors_header_length_starting_with_pickle_byte_is_read(tmp_path):
    """A header length whose low byte is 0x80 (how a pickle starts) is still safetensors."""
    from safetensors.torch import save as save_tensors

    from cxr_estimators._safefile import read_safetensors

    data = next(d for n in range(1, 400)
                if (d := save_tensors({"x" * n: torch.zeros(1)}, metadata={"k": "v"}))[0]
                == 0x80)
    path = tmp_path / "model.safetensors"
    path.write_bytes(data)
    tensors, metadata = read_safetensors(path)
    assert metadata == {"k": "v"} and list(tensors) == [next(iter(tensors))]
