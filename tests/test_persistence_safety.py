"""cxr_estimators.save / load refuse what would lose the user's work or hang: a model file
load() could not read back (parameters changed since fit), replacing a FIFO, a device or
someone's file, reading a FIFO or /dev/zero, an unknown device name."""

import copy
import json
import os
import stat
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import save as save_tensors
from sklearn.ensemble import VotingClassifier
from sklearn.pipeline import Pipeline

import cxr_estimators
from cxr_estimators import CXRClassifier, ImageLoader
from cxr_estimators._features import cache_info

from conftest import _toy_images

X, Y = _toy_images(n=16, size=16)
PARAMS = dict(backbone="simple_cnn", max_epochs=1, batch_size=8, neurons=16,
              validation_fraction=0, precision="float32", random_state=0)


@pytest.fixture(scope="module")
def fitted():
    return CXRClassifier(**PARAMS).fit(X, Y)


@pytest.fixture(scope="module")
def fitted_avg_pool():
    return CXRClassifier(**PARAMS, pooling="avg").fit(X, Y)


def _saved(model, path):
    cxr_estimators.save(model, path)
    return path.read_bytes()


def _assert_refused_untouched(model, path, before, match):
    with pytest.raises(ValueError, match=match):
        cxr_estimators.save(model, path)
    assert path.read_bytes() == before  # refused before the file was touched
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temp file


# ------------------------------------------------ parameters changed since the last fit
def test_failed_refit_with_new_neurons_cannot_be_saved(fitted, tmp_path):
    path = tmp_path / "m.safetensors"
    before = _saved(fitted, path)
    clf = copy.deepcopy(fitted).set_params(neurons=4, optimizer_kwargs={"betas": 0.9})
    with pytest.raises(ValueError):
        clf.fit(X, Y)  # the refit fails; the fitted model is kept, with the new params
    _assert_refused_untouched(
        clf, path, before, r"cannot save CXRClassifier: .*neurons: 16 \(fitted\) vs 4 \(now\); "
        r"optimizer_kwargs: \{\} \(fitted\) vs \{'betas': 0.9\} \(now\).*refit")


@pytest.mark.parametrize("params, match", [
    ({"backbone": "deep_cnn"}, r"backbone: 'simple_cnn' \(fitted\) vs 'deep_cnn' \(now\)"),
    ({"backbone_kwargs": {"widths": (8, 16, 32)}},
     r"tensor 'trunk\.features\.0\.0\.weight' is of shape \(32, 1, 3, 3\) in the fitted "
     r"network but of shape \(8, 1, 3, 3\).*backbone_kwargs=\{'widths': \(8, 16, 32\)\}"),
    ({"neurons": (16, 8)}, r"neurons: 16 \(fitted\) vs \(16, 8\) \(now\)"),
    ({"head_batch_norm": True}, r"head_batch_norm: False \(fitted\) vs True \(now\)"),
    ({"input_dropout": 0.2}, r"input_dropout: 0.0 \(fitted\) vs 0.2 \(now\)"),
    ({"pooling": "avg"}, r"pooling: None \(fitted\) vs 'avg' \(now\)"),
    ({"precision": "bfloat16"}, r"precision='bfloat16' it would predict under bf16 "
                                r"autocast.*the fitted model predicts in float32"),
    ({"class_weight": {"cat": 2.0}}, r"class_weight has labels \['cat'\] not in"),
    ({"optimizer": "sgd", "optimizer_kwargs": {"betas": (0.8, 0.9)}},
     r"optimizer: 'adam' \(fitted\) vs 'sgd' \(now\).*'betas', not an argument of SGD"),
], ids=lambda v: "-".join(v) if isinstance(v, dict) else None)
def test_params_that_shape_the_network_must_match_the_fit(fitted, tmp_path, params, match):
    path = tmp_path / "m.safetensors"
    before = _saved(fitted, path)
    _assert_refused_untouched(copy.deepcopy(fitted).set_params(**params), path, before, match)


def test_a_pooling_without_weights_must_match_the_fit(fitted_avg_pool, tmp_path):
    """avg and max pooling have the same weights, but load() would predict otherwise."""
    path = tmp_path / "m.safetensors"
    before = _saved(fitted_avg_pool, path)
    _assert_refused_untouched(
        copy.deepcopy(fitted_avg_pool).set_params(pooling="max"), path, before,
        r"pooling: 'avg' \(fitted\) vs 'max' \(now\).*layer 'pool\.pool' is "
        r"AdaptiveAvgPool2d in the fitted network but AdaptiveMaxPool2d")


def test_every_classifier_in_a_voting_of_pipelines_is_checked(tmp_path):
    raw = (np.random.default_rng(0).random((16, 20, 20)) * 255).astype(np.uint8)
    members = [(name, Pipeline([("load", ImageLoader(size=16, channels=1)),
                                ("clf", CXRClassifier(**{**PARAMS, "random_state": seed}))]))
               for seed, name in enumerate("ab")]
    vote = VotingClassifier(members, voting="soft").fit(raw, Y)
    vote.named_estimators_["b"].set_params(clf__neurons=3)
    with pytest.raises(ValueError, match=r"cannot save VotingClassifier\.estimators_\[1\]\."
                                         r"steps\[1\]\[1\]: .*neurons: 16 \(fitted\) vs 3"):
        cxr_estimators.save(vote, tmp_path / "vote.safetensors")
    assert not (tmp_path / "vote.safetensors").exists()


def test_params_read_at_prediction_or_by_the_next_fit_may_change(fitted, tmp_path):
    """Not a bug fix: what the check above must let through (and it leaves torch's global
    random state alone although it builds a network)."""
    clf = copy.deepcopy(fitted).set_params(
        tta=2, predict_batch_size=3, verbose=1, device="cpu", lr=0.5, max_epochs=7,
        early_stopping=None, dropout=0.1, augment={"rotation": 5}, warm_start=True,
        optimizer_kwargs={"betas": (0.8, 0.9)}, freeze=True, cache=True)
    rng = torch.random.get_rng_state()
    cxr_estimators.save(clf, tmp_path / "m.safetensors")
    assert torch.equal(torch.random.get_rng_state(), rng)
    loaded = cxr_estimators.load(tmp_path / "m.safetensors")
    assert loaded.tta == 2 and loaded.lr == 0.5
    np.testing.assert_array_equal(loaded.predict_proba(X), clf.predict_proba(X))


# ------------------------------------------------------------------ what save replaces
def test_save_does_not_replace_a_fifo(fitted, tmp_path):
    path = tmp_path / "pipe"
    os.mkfifo(path)
    with pytest.raises(ValueError, match=r"save target '.*pipe' is a FIFO \(named pipe\), "
                                         r"not a regular file"):
        cxr_estimators.save(fitted, path)
    assert stat.S_ISFIFO(os.lstat(path).st_mode)


def test_save_does_not_replace_a_device_node(fitted, tmp_path):
    path = tmp_path / "null"  # a /dev/null of our own: as root, save replaced the real one
    try:
        os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    except (AttributeError, PermissionError, OSError) as exc:
        pytest.skip(f"cannot make a device node here: {exc}")
    with pytest.raises(ValueError, match=r"'.*null' is a character device, not a regular"):
        cxr_estimators.save(fitted, path)
    assert stat.S_ISCHR(os.lstat(path).st_mode)


@pytest.mark.parametrize("name, content", [
    ("notes.txt", b"patient list, do not lose\n"),
    ("weights.safetensors", save_tensors({"w": torch.zeros(2)}, metadata={"format": "pt"})),
])
def test_save_does_not_overwrite_a_file_that_is_not_a_model_file(fitted, tmp_path, name,
                                                                  content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(FileExistsError, match=rf"cannot save to '.*{name}': the file exists "
                                              r"and is not a cxr_estimators model file"):
        cxr_estimators.save(fitted, path)
    assert path.read_bytes() == content


def test_save_replaces_an_empty_file_and_a_model_file(fitted, tmp_path):
    """Not a bug fix: a path from tempfile.mkstemp and a re-save still work."""
    path = tmp_path / "m.safetensors"
    path.write_bytes(b"")
    cxr_estimators.save(CXRClassifier(), path)
    cxr_estimators.save(fitted, path)
    np.testing.assert_array_equal(cxr_estimators.load(path).predict_proba(X),
                                  fitted.predict_proba(X))


# ----------------------------------------------------------------- what load reads
_LOAD_EACH = """
import json, resource, sys, cxr_estimators
try:  # an endless read fails with MemoryError, 2 GiB on, instead of filling the machine
    with open("/proc/self/status") as fh:
        vm = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmSize"))
    resource.setrlimit(resource.RLIMIT_AS, (vm + 2**31, resource.getrlimit(resource.RLIMIT_AS)[1]))
except (OSError, StopIteration, ValueError):
    pass
out = {}
for path in sys.argv[1:]:
    try:
        cxr_estimators.load(path)
    except Exception as exc:
        out[path] = [type(exc).__name__, str(exc)]
print(json.dumps(out))
"""


def test_load_refuses_dev_zero_and_a_fifo_before_opening_them(tmp_path):
    """In a child process: before the fix, /dev/zero was read into memory without end and
    the FIFO blocked in open()."""
    fifo = tmp_path / "model.safetensors"
    os.mkfifo(fifo)
    paths = (["/dev/zero"] if os.path.exists("/dev/zero") else []) + [str(fifo)]
    try:
        child = subprocess.run([sys.executable, "-c", _LOAD_EACH, *paths], timeout=60,
                               capture_output=True, text=True, check=True)
    except subprocess.TimeoutExpired:
        pytest.fail(f"load() of {paths} did not return")
    result = json.loads(child.stdout.strip().splitlines()[-1])
    assert result[str(fifo)] == [
        "ModelFileError", f"model file {str(fifo)!r} is a FIFO (named pipe), not a regular "
                          "file; not read: reading one can block or never end"]
    if "/dev/zero" in paths:
        assert result["/dev/zero"] == [
            "ModelFileError", "model file '/dev/zero' is a character device, not a regular "
                              "file; not read: reading one can block or never end"]


def test_load_names_an_unknown_device(fitted, tmp_path):
    cxr_estimators.save(fitted, tmp_path / "m.safetensors")
    with pytest.raises(ValueError, match=r"device='gpu' is not one of 'auto', 'cpu', 'cuda', "
                                         r"'cuda:N' .* or 'mps'.*None"):
        cxr_estimators.load(tmp_path / "m.safetensors", device="gpu")


def test_disk_feature_cache_still_reads_its_files(tmp_path):
    """Not a bug fix: the feature cache reads through the same, now stricter, code."""
    params = {**PARAMS, "freeze": True, "cache": str(tmp_path / "cache")}
    first = CXRClassifier(**params).fit(X, Y).predict_proba(X)
    hits = cache_info()["hits"]
    again = CXRClassifier(**params).fit(X, Y).predict_proba(X)
    assert cache_info()["hits"] > hits
    np.testing.assert_allclose(again, first, atol=1e-6)


def test_load_does_not_make_the_checkpoint_dir(tmp_path):
    """checkpoint_dir is made (and checked) by fit; a model loaded elsewhere must not
    create the folder it was trained with."""
    folder = tmp_path / "ckpt"
    model = CXRClassifier(**PARAMS, checkpoint_dir=str(folder)).fit(X, Y)
    assert folder.is_dir()
    cxr_estimators.save(model, tmp_path / "m.safetensors")
    for child in folder.iterdir():
        child.unlink()
    folder.rmdir()
    loaded = cxr_estimators.load(tmp_path / "m.safetensors")
    assert not folder.exists()
    np.testing.assert_allclose(loaded.predict_proba(X), model.predict_proba(X), atol=1e-6)
