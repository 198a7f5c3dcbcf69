"""CPU runtime: channels_last and bf16 per backbone family, the prediction loop,
``predict_batch_size``, thread sharing between concurrent fits, ``compile=True``.

Speed is measured in ``benchmarks/cpu_speed.py`` and ``benchmarks/cpu_layout.py``, not here.
"""

import os
import pickle
import platform
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
from sklearn.utils._param_validation import InvalidParameterError

from cxr_estimators import CXRClassifier, _runtime, load, save
from cxr_estimators._runtime import cpu_policy, resolve_runtime, thread_share
from cxr_estimators.backbones import build_model
from cxr_estimators.explain import grad_cam

CL = torch.channels_last


def _fit(X, y, params, **extra):
    return CXRClassifier(**{**params, **extra}, device="cpu").fit(X, y)


def _first_conv(clf):
    return next(m for m in clf.module_.modules() if isinstance(m, torch.nn.Conv2d))


def _as_contiguous(clf):
    """The same fitted model, switched to the contiguous layout."""
    clf.module_.to(memory_format=torch.contiguous_format)
    clf.net_.channels_last = False
    return clf


class _Seen:
    """Forward pre-hook on a module: records what each call's input looked like."""

    def __init__(self, module):
        self.calls = []
        self.handle = module.register_forward_pre_hook(self)

    def __call__(self, module, args):
        x = args[0]
        self.calls.append({"n": len(x), "channels_last": x.is_contiguous(memory_format=CL),
                           "inference": torch.is_inference_mode_enabled(),
                           "ptr": x.data_ptr(), "threads": torch.get_num_threads()})


# ------------------------------------------------------------------ policy
@pytest.mark.parametrize("backbone, expected", [
    ("simple_cnn", (True, True)), ("deep_cnn", (True, True)), ("resnet18", (True, True)),
    ("resnet50", (True, True)), ("densenet121", (True, True)),
    ("mobilenet_v2", (True, False)), ("efficientnet_b0", (True, False)),
    ("vgg16", (True, False)), ("vit_b_16", (False, False)),  # unmeasured: as before
])
def test_cpu_policy_per_family(backbone, expected):
    assert cpu_policy(backbone) == expected


def test_precision_resolution(monkeypatch):
    monkeypatch.setattr(_runtime, "cpu_has_native_bf16", lambda: True)
    assert resolve_runtime("simple_cnn", "cpu").amp
    assert not resolve_runtime("simple_cnn", "cpu", "float32").amp
    assert not resolve_runtime("mobilenet_v2", "cpu").amp  # bf16 backward slower there
    assert resolve_runtime("mobilenet_v2", "cpu", "bfloat16").amp
    monkeypatch.setattr(_runtime, "cpu_has_native_bf16", lambda: False)
    rt = resolve_runtime("simple_cnn", "cpu")
    assert not rt.amp and rt.channels_last
    assert not resolve_runtime("simple_cnn", "mps").channels_last
    with pytest.raises(ValueError, match="precision='bfloat16'.*'mps'"):
        resolve_runtime("simple_cnn", "mps", "bfloat16")


@pytest.mark.parametrize("hardware, aten, onednn, expected", [
    ({"amx_bf16": True}, "AVX512", None, True),
    ({"avx512_bf16": True}, "AVX512", "AVX512_CORE_BF16", True),
    ({"amx_bf16": True}, "AVX512", "avx10_1_512_amx", True),  # alias, any case
    ({"amx_bf16": True}, "AVX2", None, False),            # ATEN_CPU_CAPABILITY=avx2
    ({"amx_bf16": True}, "AVX512", "AVX2", False),        # ONEDNN_MAX_CPU_ISA=AVX2
    ({"amx_bf16": True}, "AVX512", "AVX512_CORE_VNNI", False),
    ({"amx_bf16": True}, "AVX512", "NOT_AN_ISA", False),  # unknown: a cap, float32
    ({"avx2": True}, "AVX2", None, False),                # an AVX2-only CPU
])
def test_native_bf16_honours_the_standard_cpu_switches(monkeypatch, hardware, aten, onednn,
                                                       expected):
    """The two documented switches make torch run as a lesser CPU; precision="auto"
    follows them, so `ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2` runs as AVX2."""
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: hardware)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: aten)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    if onednn is None:
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    else:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", onednn)
    assert _runtime.cpu_has_native_bf16() is expected
    assert resolve_runtime("simple_cnn", "cpu").amp is expected


def test_aten_cpu_capability_reaches_the_decision_in_a_fresh_process():
    """Not a monkeypatch: torch itself reads ATEN_CPU_CAPABILITY at start-up."""
    code = ("import torch; from cxr_estimators import _runtime; "
            "print(torch.backends.cpu.get_cpu_capability(), _runtime.cpu_has_native_bf16())")
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=120, check=True)
    assert out.stdout.split() == ["AVX2", "False"]


def test_precision_auto_follows_the_cpu(toy_binary, small_clf_params, monkeypatch):
    X, y = toy_binary
    params = {**small_clf_params, "max_epochs": 1}
    monkeypatch.setattr(_runtime, "cpu_has_native_bf16", lambda: False)
    assert not _fit(X, y, params).net_.amp
    monkeypatch.setattr(_runtime, "cpu_has_native_bf16", lambda: True)
    assert _fit(X, y, params).net_.amp
    assert not _fit(X, y, params, precision="float32").net_.amp


# ------------------------------------------------------------------ channels_last
def test_model_and_every_batch_are_channels_last_on_cpu(toy_binary, small_clf_params):
    X, y = toy_binary
    X3 = np.repeat(X, 3, axis=1)  # 3 channels: a layout change is a real conversion
    clf = CXRClassifier(**{**small_clf_params, "max_epochs": 1, "validation_fraction": 0.25},
                        device="cpu")
    seen = {}

    def record(module, args):
        seen.setdefault("calls", []).append(args[0].is_contiguous(memory_format=CL))

    clf.fit(X3, y)
    assert _first_conv(clf).weight.is_contiguous(memory_format=CL)
    handle = _first_conv(clf).register_forward_pre_hook(record)
    clf.predict_proba(X3)
    grad_cam(clf, X3[:4])
    handle.remove()
    assert seen["calls"] and all(seen["calls"])
    # training and validation batches: hook a fresh fit's model before it trains
    clf2 = CXRClassifier(**{**small_clf_params, "max_epochs": 1,
                            "validation_fraction": 0.25}, device="cpu")
    calls = []
    real = torch.nn.Conv2d.forward

    def spy(self, x):
        if len(x) > 1:  # not the one-image probe of fit's memory check
            calls.append(x.is_contiguous(memory_format=CL))
        return real(self, x)

    try:
        torch.nn.Conv2d.forward = spy
        clf2.fit(X3, y)
    finally:
        torch.nn.Conv2d.forward = real
    assert len(calls) > 3 and all(calls)


def test_channels_last_equals_contiguous(toy_binary, small_clf_params, monkeypatch):
    X, y = toy_binary
    params = {**small_clf_params, "backbone": "deep_cnn", "precision": "float32",
              "max_epochs": 2, "optimizer": "sgd"}  # SGD: the update is linear in the grads
    cl = _fit(X, y, params)
    assert cl.net_.channels_last
    proba_cl, cam_cl = cl.predict_proba(X), grad_cam(cl, X[:6], layer="trunk.features.2")
    same = _as_contiguous(cl)
    np.testing.assert_allclose(same.predict_proba(X), proba_cl, atol=1e-5)
    np.testing.assert_allclose(grad_cam(same, X[:6], layer="trunk.features.2"), cam_cl,
                               atol=1e-4)
    # one training step (forward, backward, Adam) in each layout from the same seed: the
    # same model within float tolerance (over many steps the last bits compound)
    step = {**params, "max_epochs": 1, "batch_size": len(y), "validation_fraction": 0,
            "early_stopping": None}
    cl_step = _fit(X, y, step)
    monkeypatch.setattr(_runtime, "cpu_policy", lambda backbone: (False, False))
    contiguous = _fit(X, y, step)
    assert not contiguous.net_.channels_last
    assert _first_conv(contiguous).weight.is_contiguous()
    for a, b in zip(cl_step.module_.parameters(), contiguous.module_.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)
    np.testing.assert_allclose(contiguous.predict_proba(X), cl_step.predict_proba(X),
                               atol=1e-5)


def test_frozen_feature_cache_in_channels_last(toy_binary):
    from cxr_estimators import _features

    X, y = toy_binary
    X = np.repeat(np.repeat(X, 2, -1), 2, -2)  # 32 px
    params = dict(backbone="resnet18", freeze=True, max_epochs=2, batch_size=16, neurons=8,
                  random_state=0, precision="float32", device="cpu")
    _features.clear_cache()
    cached = CXRClassifier(**params, cache=True).fit(X, y)
    plain = CXRClassifier(**params).fit(X, y)
    assert cached.net_.channels_last and _features.cache_info()["misses"] >= 1
    np.testing.assert_allclose(cached.predict_proba(X), plain.predict_proba(X), atol=1e-4)


def test_bf16_is_close_to_float32(toy_binary, small_clf_params, monkeypatch):
    X, y = toy_binary
    clf = _fit(X, y, small_clf_params, precision="float32")
    p32 = clf.predict_proba(X)
    clf.net_.amp = True  # the same weights, predicted under bf16 autocast
    p16 = clf.predict_proba(X)
    assert not np.array_equal(p16, p32)
    np.testing.assert_allclose(p16, p32, atol=0.05)


# ------------------------------------------------------------------ prediction loop
def test_prediction_is_lean(toy_binary, small_clf_params):
    X, y = toy_binary
    clf = _fit(X, y, small_clf_params, predict_batch_size=10)
    seen = _Seen(_first_conv(clf))
    proba = clf.predict_proba(X)
    seen.handle.remove()
    assert [c["n"] for c in seen.calls] == [10, 10, 10, 10, 8]
    assert all(c["inference"] and c["channels_last"] for c in seen.calls)
    # each batch is a view of X itself: no per-batch host copy or dtype conversion
    lo, hi = X.ctypes.data, X.ctypes.data + X.nbytes
    assert all(lo <= c["ptr"] < hi for c in seen.calls)
    assert proba.dtype == np.float64 and proba.shape == (48, 2)
    np.testing.assert_allclose(proba.sum(1), 1, atol=1e-12)


def test_predict_batch_size_default_and_equivalence(toy_binary, small_clf_params,
                                                    monkeypatch):
    X, y = toy_binary
    # a small CNN's default batch keeps its largest activation (here the first block's
    # 32 channels x 16 x 16 float32 = 32 KiB per image) within the budget: 16 images
    monkeypatch.setattr(_runtime, "CPU_PREDICT_ACTIVATION_BYTES", 16 * 32 * 16 * 16 * 4)
    clf = _fit(X, y, small_clf_params, precision="float32")
    seen = _Seen(_first_conv(clf))
    default = clf.predict_proba(X)
    assert clf.batch_size == 16 and clf._predict_batch_size() == 16
    assert [c["n"] for c in seen.calls] == [16, 16, 16]
    seen.handle.remove()
    for size in (1, 7, 1000):
        np.testing.assert_allclose(clf.set_params(predict_batch_size=size).predict_proba(X),
                                   default, atol=1e-6)


def test_cpu_predict_batch_size_rule(monkeypatch):
    small = build_model("simple_cnn", 2, in_channels=1)
    assert small.trunk.activation_elements(64, 64) == 32 * 64 * 64
    # a later block is the largest when the widths grow faster than the size shrinks;
    # each block halves the size, rounding up (28 -> 14 -> 7)
    wide = build_model("simple_cnn", 2, in_channels=1,
                       backbone_kwargs={"widths": (4, 64, 1024)})
    assert wide.trunk.activation_elements(28, 28) == 1024 * 7 * 7
    cases = [((1, 28, 28), True, 64), ((1, 64, 64), True, 32), ((1, 64, 64), False, 16),
             ((1, 128, 128), True, 8), ((1, 224, 224), True, 4),
             ((1, 512, 512), True, 4), ((3, 80, 80), True, 16)]
    other = build_model("resnet18", 2, in_channels=1)
    for threads in (1, 2, 64):
        monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
        for shape, amp, expected in cases:  # the same whatever the threads
            assert _runtime.cpu_predict_batch_size(small, shape, amp) == expected, shape
        # any other model: its largest activation (resnet18: the stem, 64 channels at
        # half the size) within 64 MiB, at least 4, at most 32 per thread (cap 256)
        assert _runtime.cpu_predict_batch_size(other, (1, 64, 64), True) == min(
            32 * threads, 256)
        for shape, amp, by_bytes in [((1, 224, 224), True, 32), ((1, 224, 224), False, 16),
                                     ((1, 512, 512), True, 8), ((1, 1024, 1024), True, 4)]:
            assert _runtime.cpu_predict_batch_size(other, shape, amp) == min(
                by_bytes, 32 * threads), shape
        assert _runtime.cpu_predict_batch_size() == min(32 * threads, 256)


def test_largest_activation_traced_once_without_side_effects():
    model = build_model("resnet18", 2, in_channels=1).train()
    stats = [b.clone() for b in model.buffers()]
    assert _runtime.largest_activation_elements(model, (1, 224, 224)) == 64 * 112 * 112
    # every module back in training mode, BatchNorm statistics untouched
    assert all(m.training for m in model.modules())
    assert all(torch.equal(a, b) for a, b in zip(stats, model.buffers()))
    calls = []
    model.register_forward_pre_hook(lambda *_: calls.append(1))
    # kept per model and shape: the hooked model is not run again for a known shape ...
    assert _runtime.largest_activation_elements(model, (1, 224, 224)) == 64 * 112 * 112
    # ... and never for a new one, since its hooks would see the probe image
    assert _runtime.largest_activation_elements(model, (1, 64, 64)) is None
    assert _runtime.cpu_predict_batch_size(model, (1, 64, 64), True) == min(
        32 * torch.get_num_threads(), 256)
    assert calls == []


def test_torchvision_model_probed_only_when_a_batch_size_is_needed(toy_binary, tmp_path):
    X, y = toy_binary
    params = dict(backbone="resnet18", max_epochs=1, batch_size=8, device="cpu",
                  early_stopping=None, random_state=0)
    clf = CXRClassifier(**params, validation_fraction=0).fit(X, y)
    assert clf.module_ not in _runtime._largest_activations  # no validation pass to size
    clf.predict_proba(X[:2])
    assert tuple(X.shape[1:]) in _runtime._largest_activations[clf.module_]
    with_val = CXRClassifier(**params, validation_fraction=0.25).fit(X, y)
    assert tuple(X.shape[1:]) in _runtime._largest_activations[with_val.module_]
    path = tmp_path / "model.safetensors"
    save(clf, path)
    loaded = load(path)
    assert loaded.module_ not in _runtime._largest_activations  # load has nothing to size
    np.testing.assert_allclose(loaded.predict_proba(X[:2]), clf.predict_proba(X[:2]),
                               atol=1e-6)
    assert tuple(X.shape[1:]) in _runtime._largest_activations[loaded.module_]


# ------------------------------------------------------------- BatchNorm folding
def _batch_norms(module):
    return [m for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)]


def _unfolded_proba(clf, X):
    """predict_proba on the fitted module itself (no folded copy)."""
    with torch.inference_mode():
        x = torch.from_numpy(X).contiguous(memory_format=CL)
        return torch.softmax(clf.module_.eval()(x).float(), 1).numpy()


def _trained_bn(X, y, **extra):
    """deep_cnn (BatchNorm after every conv) with non-trivial running statistics."""
    return _fit(X, y, dict(backbone="deep_cnn", max_epochs=2, batch_size=8, neurons=8,
                           random_state=0, precision="float32", **extra))


def test_prediction_runs_on_a_batch_norm_folded_copy(toy_binary):
    X, y = toy_binary
    clf = _trained_bn(X, y)
    assert clf.net_._folded_inference is None  # made by the first prediction
    reference = _unfolded_proba(clf, X)
    first = clf.predict_proba(X)
    copy = clf.net_._folded_inference._folded
    np.testing.assert_allclose(first, reference, atol=1e-5)
    assert _batch_norms(clf.module_) and not _batch_norms(copy.trunk)  # all folded
    assert all(m.track_running_stats for m in _batch_norms(clf.module_))  # untouched
    conv = next(m for m in copy.trunk.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=CL)
    # the head's tensors are shared, not copied
    assert [id(p) for p in copy.head.parameters()] == [
        id(p) for p in clf.module_.head.parameters()]
    # the same copy serves every later call: results do not depend on earlier calls
    # (other batch sizes may differ in the last bits: oneDNN picks its kernels by shape)
    np.testing.assert_allclose(clf.predict_proba(X[:5]), first[:5], atol=1e-6)
    np.testing.assert_allclose(clf.predict_proba(np.concatenate([X] * 6))[:len(X)],
                               first, atol=1e-6)
    np.testing.assert_array_equal(clf.predict_proba(X), first)
    assert clf.net_._folded_inference._folded is copy
    # under bf16 autocast the folded weights round differently, within bf16's tolerance
    clf.net_.amp = True
    np.testing.assert_allclose(clf.predict_proba(X), reference, atol=0.02)


def test_folded_copy_follows_the_weights(toy_binary, tmp_path):
    X, y = toy_binary
    clf = _trained_bn(X, y)
    big = np.concatenate([X] * 2)
    clf.predict_proba(big)
    first = clf.net_._folded_inference._folded
    bn = _batch_norms(clf.module_)[0]
    with torch.no_grad():  # an in-place edit of the weights: the next call sees it
        bn.weight.mul_(3.0)
        bn.running_mean.add_(0.5)
    np.testing.assert_allclose(clf.predict_proba(big)[:len(X)], _unfolded_proba(clf, X),
                               atol=1e-5)
    assert clf.net_._folded_inference._folded is not first
    # a new fit (warm start: the same module object, trained further) drops the copy
    clf.set_params(warm_start=True).fit(X, y)
    assert clf.net_._folded_inference is None
    np.testing.assert_allclose(clf.predict_proba(big)[:len(X)], _unfolded_proba(clf, X),
                               atol=1e-5)
    # neither pickle nor the package's own file carries the copy
    loaded = pickle.loads(pickle.dumps(clf))
    assert loaded.net_._folded_inference._folded is None
    np.testing.assert_allclose(loaded.predict_proba(big), clf.predict_proba(big),
                               atol=1e-6)
    import cxr_estimators

    cxr_estimators.save(clf, tmp_path / "model.safetensors")
    reloaded = cxr_estimators.load(tmp_path / "model.safetensors")
    np.testing.assert_allclose(reloaded.predict_proba(big), clf.predict_proba(big),
                               atol=1e-6)


def test_hooks_and_other_devices_keep_the_module_itself(toy_binary):
    X, y = toy_binary
    clf = _trained_bn(X, y)
    big = np.concatenate([X] * 2)
    seen = _Seen(_first_conv(clf))  # a user's hook sees every image it is asked for
    clf.predict_proba(big)
    clf.predict_proba(big)
    seen.handle.remove()
    assert sum(c["n"] for c in seen.calls) == 2 * len(big)
    net = clf.net_
    assert net.inference_module() is not net.module_  # no hook: folded
    net.device = "cuda"  # the GPU path is unchanged (nothing runs on the device here)
    try:
        assert net.inference_module() is net.module_
    finally:
        net.device = "cpu"


def test_untraceable_trunk_or_no_batch_norm_is_not_folded():
    class Branchy(torch.nn.Module):  # data-dependent control flow: torch.fx cannot trace
        def __init__(self):
            super().__init__()
            self.conv, self.bn = torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2)

        def forward(self, x):
            return self.bn(self.conv(x)) if x.sum() > 0 else x

    module = torch.nn.Module()
    module.trunk = Branchy()
    assert _runtime.fold_batch_norm(module) is None
    module.trunk = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU())
    assert _runtime.fold_batch_norm(module) is None
    module.trunk = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    folded = _runtime.fold_batch_norm(module)
    assert module.trunk.training and not _batch_norms(folded) and not folded.training


@pytest.mark.parametrize("bad", [0, -3, 2.5, "32", True])
def test_bad_predict_batch_size(toy_binary, small_clf_params, bad):
    X, y = toy_binary
    with pytest.raises(ValueError, match="'predict_batch_size' parameter"):
        _fit(X, y, small_clf_params, predict_batch_size=bad)


def test_bad_precision(toy_binary, small_clf_params):
    X, y = toy_binary
    with pytest.raises(InvalidParameterError, match="'precision' parameter"):
        _fit(X, y, small_clf_params, precision="fp16")


# ------------------------------------------------------------------ threads
def test_concurrent_fits_share_the_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with thread_share():
            assert torch.get_num_threads() == 2  # alone: unchanged
        inside, barrier = [], threading.Barrier(2)

        def work():
            with thread_share():
                barrier.wait()
                inside.append(_runtime.refresh_thread_share())
                inside.append(torch.get_num_threads())
                barrier.wait()
            inside.append(("after", torch.get_num_threads()))

        threads = [threading.Thread(target=work) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(x for x in inside if not isinstance(x, tuple)) == [1, 1, 1, 1]
        assert torch.get_num_threads() == 2 and _runtime._active["n"] == 0
    finally:
        torch.set_num_threads(before)


def test_fits_in_threads_use_their_share(toy_binary, small_clf_params, monkeypatch):
    """Two fits in two threads of one process (joblib's threading backend): once both
    run, each trains with half the threads; the calling thread's count is as before
    afterwards."""
    from cxr_estimators import backbones

    X, y = toy_binary
    refresh, forward = _runtime.refresh_thread_share, backbones.SimpleCNN.forward
    barrier, local, seen = threading.Barrier(2), threading.local(), {}

    def refresh_when_both_run():
        local.calls = getattr(local, "calls", 0) + 1
        if local.calls == 2:  # first epoch: wait until the other fit has entered too
            barrier.wait(timeout=120)
        return refresh()

    def recording_forward(self, x):
        if len(x) > 1:  # not the one-image probe of fit's memory check, before training
            seen.setdefault(threading.get_ident(), []).append(torch.get_num_threads())
        return forward(self, x)

    monkeypatch.setattr(_runtime, "refresh_thread_share", refresh_when_both_run)
    monkeypatch.setattr(backbones.SimpleCNN, "forward", recording_forward)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        threads = [threading.Thread(target=_fit, args=(X, y, small_clf_params),
                                    kwargs={"max_epochs": 2}) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert len(seen) == 2
    assert all(set(counts) == {1} for counts in seen.values()), seen


# ------------------------------------------------------------------ compile
def test_compile_without_compiler_is_a_clear_error(toy_binary, small_clf_params,
                                                   monkeypatch):
    X, y = toy_binary
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(_runtime.shutil, "which", lambda name: None)
    with pytest.raises(ValueError, match=r"compile=True needs a C\+\+ compiler"):
        _fit(X, y, small_clf_params, compile=True)


def test_compile_on_unsupported_device_or_python(monkeypatch):
    with pytest.raises(ValueError, match="compile=True.*'mps'"):
        _runtime.check_compile("mps")
    import torch._dynamo.eval_frame as eval_frame

    def unsupported():
        raise RuntimeError("Python 3.99 not yet supported for torch.compile")

    monkeypatch.setattr(eval_frame, "check_if_dynamo_supported", unsupported)
    with pytest.raises(ValueError, match="compile=True: torch.compile cannot run"):
        _runtime.check_compile("cpu")


@pytest.mark.slow
def test_compile_true_trains_predicts_and_pickles_on_cpu(toy_binary, small_clf_params,
                                                         tmp_path):
    """Compiling takes tens of seconds on a 2-core CPU: marked slow."""
    X, y = toy_binary
    # no dropout: inductor draws dropout masks from its own generator
    params = {**small_clf_params, "max_epochs": 1, "precision": "float32", "dropout": 0.0,
              "optimizer": "sgd", "predict_batch_size": 16, "validation_fraction": 0}
    plain = _fit(X, y, params)
    compiled = _fit(X, y, params, compile=True)
    assert compiled.net_.forward_module() is compiled.net_.compiled_module_
    np.testing.assert_allclose(compiled.predict_proba(X), plain.predict_proba(X), atol=1e-4)
    loaded = pickle.loads(pickle.dumps(compiled))
    assert not hasattr(loaded.net_, "compiled_module_")
    np.testing.assert_allclose(loaded.predict_proba(X), compiled.predict_proba(X), atol=1e-4)
    import cxr_estimators

    cxr_estimators.save(compiled, tmp_path / "model.safetensors")
    reloaded = cxr_estimators.load(tmp_path / "model.safetensors")
    assert getattr(reloaded.net_, "compiled_module_", None) is None  # predicts uncompiled
    np.testing.assert_allclose(reloaded.predict_proba(X), compiled.predict_proba(X),
                               atol=1e-4)


# ------------------------------------------------------------------ glibc malloc
_MALLOC_PROBE = """
import resource, sys
import numpy as np
if sys.argv[1] == "tuned":
    import cxr_estimators
applied = cxr_estimators.tune_cpu_malloc() if sys.argv[1] == "tuned" else None
faults = []
for _ in range(6):  # a training step's pattern: several 8 MiB blocks, all freed at its end
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    blocks = [np.ones(1 << 20) for _ in range(8)]
    del blocks
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(applied, sum(faults[2:]))
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_tune_cpu_malloc_keeps_freed_memory():
    """In a fresh process (the settings are process-wide): with glibc's defaults the
    freed blocks go back to the kernel and fault in again; tuned, they are reused."""
    import subprocess
    import sys

    def run(mode):
        out = subprocess.run([sys.executable, "-c", _MALLOC_PROBE, mode], check=True,
                             capture_output=True, text=True).stdout.split()
        return out[0], int(out[1])

    (_, default), (applied, tuned) = run("default"), run("tuned")
    assert applied == "True"
    # 4 steps: at least 8 MiB of pages each faulted in again by default, almost none tuned
    assert default >= 4 * 2048 and tuned < default / 20


@pytest.mark.parametrize("kwargs, match", [
    ({"mmap_threshold": 64 << 20}, "mmap_threshold must be an int >= 0 and at most"),
    ({"mmap_threshold": -1}, "mmap_threshold must be"),
    ({"trim_threshold": 1.5}, "trim_threshold must be an int >= 0"),
    ({"trim_threshold": True}, "trim_threshold must be"),
    ({"trim_threshold": 2**31}, "trim_threshold must be an int >= 0 and at most 2147483647"),
])
def test_tune_cpu_malloc_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _runtime.tune_cpu_malloc(**kwargs)


def test_tune_cpu_malloc_elsewhere_changes_nothing(monkeypatch):
    class NotGlibc:  # a C library without gnu_get_libc_version (musl, macOS)
        def __init__(self, name):
            pass

    monkeypatch.setattr(_runtime.ctypes, "CDLL", NotGlibc)
    assert _runtime.tune_cpu_malloc() is False
