"""CUDA-only behaviour: mixed precision, channels_last, and a GPU-trained model on CPU.

Marked ``gpu`` and skipped by default; run with ``pytest -m gpu`` on a CUDA machine.
"""

import os
import subprocess
import sys

import joblib
import numpy as np
import pytest
import torch

from cxr_estimators import CXRClassifier

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_cuda_fit_uses_bf16_autocast_and_channels_last(toy_binary, small_clf_params):
    X, y = toy_binary
    clf = CXRClassifier(**{**small_clf_params, "max_epochs": 15, "backbone": "deep_cnn"},
                        device="auto").fit(X, y)
    assert clf.device_ == "cuda"
    assert clf.net_.amp == torch.cuda.is_bf16_supported()
    conv = clf.module_.trunk.features[0][0].weight
    assert conv.is_cuda
    if clf.net_.amp:
        assert conv.is_contiguous(memory_format=torch.channels_last)
    proba = clf.predict_proba(X)
    np.testing.assert_allclose(proba.sum(1), 1, atol=1e-6)
    assert clf.score(X, y) >= 0.9


def test_resnet_on_cuda_frozen_cache(toy_binary):
    X, y = toy_binary
    X = np.repeat(np.repeat(X, 4, -1), 4, -2)
    params = dict(backbone="resnet18", freeze=True, max_epochs=3, batch_size=16,
                  random_state=0, neurons=16, device="cuda")
    a = CXRClassifier(**params, cache=True).fit(X, y).predict_proba(X)
    b = CXRClassifier(**params).fit(X, y).predict_proba(X)
    # cached features are computed in fp32, the uncached path runs under bf16 autocast
    np.testing.assert_allclose(a, b, atol=0.05)


def test_gpu_trained_model_loads_on_cpu_only_machine(tmp_path, toy_binary, small_clf_params):
    X, y = toy_binary
    clf = CXRClassifier(**{**small_clf_params, "max_epochs": 15}).fit(X, y)
    assert clf.device_ == "cuda"
    path = tmp_path / "gpu_model.joblib"
    joblib.dump(clf, path)
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "proba.npy", clf.predict_proba(X))
    code = (
        "import joblib, numpy as np, torch, warnings; warnings.simplefilter('ignore');"
        "assert not torch.cuda.is_available();"
        f"m = joblib.load(r'{path}'); X = np.load(r'{tmp_path / 'X.npy'}');"
        f"p = m.predict_proba(X); ref = np.load(r'{tmp_path / 'proba.npy'}');"
        "assert next(m.module_.parameters()).device.type == 'cpu';"
        "np.testing.assert_allclose(p, ref, atol=0.02); print('CPU-OK')"
    )
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "CPU-OK" in out.stdout


def test_cuda_runtime_and_predict_batch_size(toy_binary, small_clf_params):
    """The GPU path is unchanged: bf16 + channels_last together, prediction batches of
    ``batch_size``; ``precision="float32"`` turns both off, ``predict_batch_size`` is used."""
    X, y = toy_binary
    clf = CXRClassifier(**small_clf_params, device="cuda").fit(X, y)
    bf16 = torch.cuda.is_bf16_supported()
    assert clf.net_.amp == bf16 and clf.net_.channels_last == bf16
    assert clf.net_.amp_device == "cuda" and clf._predict_batch_size() == clf.batch_size
    plain = CXRClassifier(**small_clf_params, device="cuda", precision="float32",
                          predict_batch_size=7).fit(X, y)
    assert not plain.net_.amp and not plain.net_.channels_last
    sizes = []
    conv = next(m for m in plain.module_.modules() if isinstance(m, torch.nn.Conv2d))
    handle = conv.register_forward_pre_hook(lambda m, a: sizes.append(len(a[0])))
    plain.predict_proba(X)
    handle.remove()
    assert sizes == [7] * 6 + [6]


def test_compile_true_on_cuda(toy_binary, small_clf_params):
    """compile=True (torch.compile) trains and predicts on the GPU; the model pickles."""
    import pickle

    X, y = toy_binary
    params = {**small_clf_params, "max_epochs": 2, "dropout": 0.0, "device": "cuda"}
    compiled = CXRClassifier(**params, compile=True).fit(X, y)
    assert compiled.net_.forward_module() is compiled.net_.compiled_module_
    proba = compiled.predict_proba(X)
    np.testing.assert_allclose(proba.sum(1), 1, atol=1e-6)
    loaded = pickle.loads(pickle.dumps(compiled))
    np.testing.assert_allclose(loaded.predict_proba(X), proba, atol=0.02)


# ---------------------------------------------------------------- the input feed (_feed.py)
def test_staged_feed_yields_the_host_batches():
    from cxr_estimators import _feed

    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, (203, 1, 8, 8), dtype=np.uint8)
    y = rng.integers(0, 2, 203)
    data = _feed.ArrayDataset(X, y)

    def batches(device):
        return list(_feed.BatchFeed(data, np.arange(3, 203), batch_size=16, shuffle=True,
                                    generator=torch.Generator().manual_seed(0),
                                    device=device))

    host, staged = batches("cpu"), batches("cuda")
    assert len(host) == len(staged) == 13  # many more batches than the two pinned slots
    for (xa, ya), (xb, yb) in zip(host, staged):
        assert xb.is_cuda and yb.is_cuda and xb.dtype == torch.uint8
        torch.testing.assert_close(xb.cpu(), xa, rtol=0, atol=0)
        torch.testing.assert_close(yb.cpu(), ya, rtol=0, atol=0)


def test_device_resident_fit_matches_the_host_fit(toy_binary, small_clf_params):
    from cxr_estimators import ImageLoader

    X, y = toy_binary
    compact = ImageLoader(size=16, channels=1, dtype="uint8").fit_transform(
        (X[:, 0] * 255).astype(np.uint8))
    params = {**small_clf_params, "max_epochs": 15, "device": "cuda"}
    resident = CXRClassifier(**params, data_device="cuda").fit(compact, y)
    host = CXRClassifier(**params, data_device="cpu").fit(compact, y)
    assert resident.data_device_ == "cuda" and host.data_device_ == "cpu"
    # same batches; cuDNN kernels and bf16 autocast are not bitwise deterministic
    np.testing.assert_allclose(resident.predict_proba(compact), host.predict_proba(compact),
                               atol=0.05)
    assert resident.score(compact, y) >= 0.9
    assert all(type(e["train_loss"]) is float for e in resident.history_[-1]["batches"])


def test_uint8_and_uint16_normalisation_on_cuda():
    from cxr_estimators.preprocessing import InputNormalization

    norm = InputNormalization([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    x16 = torch.randint(0, 65536, (2, 1, 5, 5), dtype=torch.int32).to(torch.uint16)
    x8 = torch.randint(0, 256, (2, 3, 5, 5), dtype=torch.uint8)
    for x in (x16, x8):
        torch.testing.assert_close(norm.cuda()(x.cuda()).cpu(), norm.cpu()(x))


def test_uint8_pipeline_on_cuda_predicts_like_float(toy_binary, small_clf_params):
    from sklearn.pipeline import Pipeline

    from cxr_estimators import ImageLoader
    from cxr_estimators.explain import grad_cam

    X, y = toy_binary
    images = (X[:, 0] * 255).astype(np.uint8)
    params = {**small_clf_params, "max_epochs": 15, "device": "cuda"}
    pipes = {dtype: Pipeline([("load", ImageLoader(size=16, channels=3, dtype=dtype)),
                              ("clf", CXRClassifier(**params))]).fit(images, y)
             for dtype in ("float32", "uint8")}
    np.testing.assert_allclose(pipes["uint8"].predict_proba(images),
                               pipes["float32"].predict_proba(images), atol=0.05)
    assert grad_cam(pipes["uint8"], images[:4]).shape == (4, 16, 16)
