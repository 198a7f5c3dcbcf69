"""The input feed: compact (uint8/uint16) images through the Pipeline, batch-gathered
in-memory input, device-resident data, batch losses kept on the device (``_feed.py``)."""

import pickle

import joblib
import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline

from conftest_data import PerItem
from cxr_estimators import CXRClassifier, ImageLoader, _feed, _training
from cxr_estimators.augment import Augmenter
from cxr_estimators.backbones import build_model
from cxr_estimators.explain import grad_cam
from cxr_estimators.preprocessing import CompactImages, InputNormalization

PARAMS = dict(backbone="simple_cnn", max_epochs=2, batch_size=16, neurons=16,
              random_state=0, lr=1e-2)


def _uint8(X):
    return (X[:, 0] * 255).round().astype(np.uint8)


# ---------------------------------------------------------------- batched = per item
@pytest.mark.parametrize("extra", [{}, {"augment": True, "validation_fraction": 0.25}])
def test_batched_path_gives_the_same_model_as_the_per_item_path(toy_binary, extra, monkeypatch):
    X, y = toy_binary
    gathers = []
    batch = _feed.ArrayDataset.batch
    monkeypatch.setattr(_feed.ArrayDataset, "batch",
                        lambda self, idx: gathers.append(len(idx)) or batch(self, idx))
    monkeypatch.setattr(_feed.ArrayDataset, "__getitem__", None)  # never item by item
    batched = CXRClassifier(**PARAMS, **extra).fit(X, y)
    assert gathers and max(gathers) == PARAMS["batch_size"]  # one gather per batch
    n_gathers = len(gathers)
    per_item = CXRClassifier(**PARAMS, **extra).fit(PerItem(X), y)
    assert len(gathers) == n_gathers  # the per-item path did not use the feed
    a, b = batched.module_.state_dict(), per_item.module_.state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    for key in ("train_loss", "valid_loss") if extra else ("train_loss",):
        assert batched.history_[:, key] == per_item.history_[:, key]


def test_weighted_batches_give_the_same_model_as_the_per_item_path(toy_binary):
    X, y = toy_binary
    w = np.random.default_rng(0).random(len(y)).astype(np.float32) + 0.1
    batched = CXRClassifier(**PARAMS).fit(X, y, sample_weight=w)
    per_item = CXRClassifier(**PARAMS).fit(PerItem(X), y, sample_weight=w)
    unweighted = CXRClassifier(**PARAMS).fit(X, y)
    np.testing.assert_array_equal(batched.predict_proba(X), per_item.predict_proba(X))
    assert not np.allclose(batched.predict_proba(X), unweighted.predict_proba(X))
    labels = np.arange(len(y)) % 2
    data = _feed.ArrayDataset({"X": X, "sample_weight": w}, labels)
    xb, yb = next(iter(_feed.make_iterator(data, batch_size=4)))
    np.testing.assert_array_equal(xb["sample_weight"], w[:4])
    assert xb["X"].shape == (4, *X.shape[1:]) and yb.tolist() == [0, 1, 0, 1]


def test_a_given_sampler_replaces_shuffling():
    """DDP hands the iterator a DistributedSampler: each rank gets its share, batched."""
    data = _feed.ArrayDataset(np.arange(20, dtype=np.float32)[:, None, None, None],
                              np.arange(20))
    for rank in (0, 1):
        sampler = torch.utils.data.DistributedSampler(data, num_replicas=2, rank=rank,
                                                      shuffle=True, seed=5)
        feed = _feed.make_iterator(data, batch_size=4, sampler=sampler)
        assert isinstance(feed, _feed.BatchFeed)
        assert [i for _, yb in feed for i in yb.tolist()] == list(sampler)


def test_shuffled_order_is_torch_dataloaders_and_follows_the_seed():
    data = _feed.ArrayDataset(np.arange(50, dtype=np.float32)[:, None, None, None],
                              np.arange(50))

    def order(seed):
        feed = _feed.make_iterator(data, batch_size=8, shuffle=True,
                                   generator=torch.Generator().manual_seed(seed))
        return [yb.tolist() for _ in range(2) for _, yb in feed]  # two epochs

    loader = torch.utils.data.DataLoader(torch.arange(50), batch_size=8, shuffle=True,
                                         generator=torch.Generator().manual_seed(3))
    assert order(3) == [b.tolist() for _ in range(2) for b in loader]
    assert order(3) == order(3) and order(3) != order(4)
    assert order(3)[:7] != order(3)[7:]  # a new order each epoch


def test_subsets_of_a_validation_split_are_resolved_to_rows():
    X = np.arange(30, dtype=np.float32).reshape(30, 1, 1, 1)
    data = _feed.ArrayDataset(X, np.arange(30) * 10)
    inner = torch.utils.data.Subset(data, np.arange(5, 25))
    outer = torch.utils.data.Subset(inner, [3, 0, 7])
    feed = _feed.make_iterator(outer, batch_size=2)
    assert isinstance(feed, _feed.BatchFeed) and len(feed) == 2
    xs, ys = zip(*feed)
    np.testing.assert_array_equal(torch.cat(xs).flatten(), [8, 5, 12])
    np.testing.assert_array_equal(torch.cat(ys), [80, 50, 120])
    lazy = _feed.make_iterator(torch.utils.data.TensorDataset(torch.zeros(4)), batch_size=2)
    assert isinstance(lazy, torch.utils.data.DataLoader)


@pytest.mark.parametrize("dtype", [np.float32, np.uint8, np.uint16])
def test_tensor_resident_data_gives_the_same_batches(dtype):
    """The device-resident path (here with CPU tensors) = the host path, uint16 included."""
    rng = np.random.default_rng(0)
    X = (rng.random((37, 2, 3, 3)) * 200).astype(dtype)
    y = rng.integers(0, 3, 37)

    def batches(data):
        feed = _feed.BatchFeed(data, np.arange(3, 37), batch_size=8, shuffle=True,
                               generator=torch.Generator().manual_seed(0))
        return list(feed)

    host = batches(_feed.ArrayDataset(X, y))
    resident = batches(_feed.ArrayDataset(torch.from_numpy(X), torch.from_numpy(y)))
    assert len(host) == len(resident) == 5
    for (xa, ya), (xb, yb) in zip(host, resident):
        assert xa.dtype == xb.dtype
        torch.testing.assert_close(xa, xb, rtol=0, atol=0)
        torch.testing.assert_close(ya, yb, rtol=0, atol=0)


def test_staging_buffers_hold_each_batch_until_refilled():
    """The host half of the CUDA path, with plain memory: two buffers taking turns."""
    X = np.arange(40, dtype=np.uint8).reshape(40, 1, 1, 1)
    data = _feed.ArrayDataset(X, np.arange(40))

    def feed():
        return _feed.BatchFeed(data, batch_size=6, shuffle=True,
                               generator=torch.Generator().manual_seed(1))

    expected = list(feed())
    staged = [(slot, x.clone(), y.clone(), x) for slot, x, y, _ in feed().staged(False)]
    assert len(staged) == len(expected) == 7
    assert len({id(s[0]) for s in staged}) == 2
    for (_, x, y, _), (xe, ye) in zip(staged, expected):
        torch.testing.assert_close(x, xe, rtol=0, atol=0)
        torch.testing.assert_close(y, ye, rtol=0, atol=0)
    assert staged[0][3].data_ptr() == staged[2][3].data_ptr()  # the buffer is reused


def test_consecutive_rows_are_sliced_without_a_copy():
    X = np.zeros((10, 1, 2, 2), np.uint8)
    xb, _ = _feed.ArrayDataset(X).batch(np.arange(2, 6))
    assert np.shares_memory(xb.numpy(), X)
    xb, _ = _feed.ArrayDataset(X).batch(np.array([2, 4]))
    assert not np.shares_memory(xb.numpy(), X)


@pytest.mark.parametrize("deferred", [False, True])
def test_batch_losses_are_floats_in_the_history(toy_binary, deferred, monkeypatch):
    X, y = toy_binary
    monkeypatch.setattr(_training._Net, "_defers_losses", lambda self: deferred)
    clf = CXRClassifier(**PARAMS, validation_fraction=0.25).fit(X, y)
    for entry in clf.history_[-1]["batches"]:
        loss = entry.get("train_loss", entry.get("valid_loss"))
        assert type(loss) is float
    losses = clf.history_[-1, "batches", :, "train_loss"]
    sizes = clf.history_[-1, "batches", :, "train_batch_size"]
    assert clf.history_[-1, "train_loss"] == pytest.approx(np.average(losses, weights=sizes))


# ---------------------------------------------------------------- compact images
def test_compact_images_keep_their_normalisation_where_an_array_goes():
    X = CompactImages(np.arange(48, dtype=np.uint8).reshape(3, 1, 4, 4), [0.5] * 3, [0.25] * 3)
    assert X.channels == 3 and X.normalization == ((0.5,) * 3, (0.25,) * 3)
    for derived in (X[1:], X[[2, 0]], X.take([1], axis=0), X.copy(),
                    pickle.loads(pickle.dumps(X))):
        assert isinstance(derived, CompactImages) and derived.normalization == X.normalization
    for plain in (X / 255, X.astype(np.float32), np.asarray(X), X + 1):
        assert getattr(plain, "normalization", None) is None
    out = X.to_float32()
    assert out.shape == (3, 3, 4, 4) and out.dtype == np.float32
    np.testing.assert_allclose(out[0, :, 0, 1], (1 / 255 - 0.5) / 0.25, rtol=1e-6)


def test_compact_images_bad_input():
    with pytest.raises(ValueError, match="must be uint8 or uint16; got float32"):
        CompactImages(np.zeros((1, 1, 2, 2), np.float32), [0.5], [0.5])
    with pytest.raises(ValueError, match=r"C = 1 or 3 \(len\(mean\)\); got \(1, 2, 2, 2\)"):
        CompactImages(np.zeros((1, 2, 2, 2), np.uint8), [0.5] * 3, [0.5] * 3)
    with pytest.raises(ValueError, match="as many stds > 0"):
        CompactImages(np.zeros((1, 1, 2, 2), np.uint8), [0.5], [0.0])


@pytest.mark.parametrize("dtype, top", [("uint8", 255), ("uint16", 65535)])
def test_loader_compact_output_equals_float_output_quantised(dtype, top):
    rng = np.random.default_rng(0)
    images = (rng.random((4, 20, 20)) * 65535).astype(np.uint16)
    kw = dict(size=14, channels=3, normalize="imagenet")
    compact = ImageLoader(**kw, dtype=dtype).fit_transform(images)
    floats = ImageLoader(**kw).fit_transform(images)
    assert isinstance(compact, CompactImages) and compact.dtype == dtype
    assert compact.shape == (4, 1, 14, 14)  # gray kept with one channel
    std = np.array([0.229, 0.224, 0.225])[:, None, None]
    assert np.abs(compact.to_float32() - floats).max() <= 0.5 / top / std.min() + 1e-5
    lazy = ImageLoader(**kw, dtype=dtype, lazy=True).fit_transform(images)
    assert lazy[0].dtype == getattr(torch, dtype) and lazy[0].shape == (3, 14, 14)
    np.testing.assert_array_equal(np.asarray(lazy), np.repeat(compact, 3, axis=1))


def test_loader_compact_channels():
    gray = np.full((6, 6), 100, np.uint8)
    grey_rgb = np.repeat(gray[..., None], 3, axis=-1)  # a gray image stored as RGB
    colour = grey_rgb.copy()
    colour[..., 0] = 200
    loader = ImageLoader(size=6, channels=3, dtype="uint8")
    assert loader.fit_transform([gray, grey_rgb]).shape == (2, 1, 6, 6)
    mixed = loader.fit_transform([gray, colour, gray])
    assert mixed.shape == (3, 3, 6, 6)
    np.testing.assert_array_equal(mixed[0], mixed[2])
    np.testing.assert_array_equal(mixed[1, 0], 200)
    assert ImageLoader(size=6, channels=1, dtype="uint8").fit_transform([colour]).shape == \
        (1, 1, 6, 6)


def test_loader_input_checks_hold_for_compact_output():
    loader = ImageLoader(size=6, dtype="uint8")
    with pytest.raises(ValueError, match=r"image 0 is float with values in \[3, 3\]"):
        loader.fit_transform(np.full((1, 6, 6), 3.0))
    assert loader.fit_transform(np.full((1, 6, 6), 0.5)).max() == 128  # float in [0, 1]
    assert ImageLoader(size=6, dtype="uint16").fit_transform(
        np.full((1, 6, 6), 65535, np.uint16)).min() == 65535
    with pytest.raises(ValueError, match="'dtype' parameter"):
        ImageLoader(dtype="int8").fit(None)


def test_input_normalization_module():
    norm = InputNormalization([0.5, 0.25, 0.0], [0.5, 0.25, 1.0])
    x8 = torch.tensor([[[[0, 255]]]], dtype=torch.uint8)
    out = norm(x8)
    assert out.shape == (1, 3, 1, 2) and out.dtype == torch.float32
    torch.testing.assert_close(out[0, :, 0, 1], torch.tensor([1.0, 3.0, 1.0]))
    x16 = torch.tensor([[[[0, 65535]]]], dtype=torch.uint16)
    torch.testing.assert_close(norm(x16), out)
    xf = torch.rand(1, 3, 2, 2)
    assert norm(xf) is xf  # float images are normalised already
    with pytest.raises(TypeError, match="float, uint8 or uint16; got torch.int64"):
        norm(torch.zeros(1, 1, 2, 2, dtype=torch.int64))


# ---------------------------------------------------------------- through the estimator
@pytest.mark.parametrize("channels", [1, 3])
def test_uint8_pipeline_predicts_like_the_float_pipeline(toy_binary, channels):
    X, y = toy_binary
    images = _uint8(X)

    def pipe(**kw):
        return Pipeline([("load", ImageLoader(size=24, channels=channels, **kw)),
                         ("clf", CXRClassifier(**PARAMS))]).fit(images, y)

    floats, compact = pipe(), pipe(dtype="uint8")
    clf = compact[-1]
    assert clf.input_normalization_ == compact[0].transform(images[:1]).normalization
    assert clf.image_shape_ == (channels, 24, 24)
    np.testing.assert_allclose(compact.predict_proba(images), floats.predict_proba(images),
                               atol=0.03)
    buffers = clf.module_.input_norm.state_dict()
    np.testing.assert_allclose(buffers["mean"].flatten(), clf.input_normalization_[0])
    lazy = Pipeline([("load", ImageLoader(size=24, channels=channels, dtype="uint8",
                                          lazy=True)), ("clf", CXRClassifier(**PARAMS))])
    np.testing.assert_allclose(lazy.fit(images, y).predict_proba(images),
                               compact.predict_proba(images), atol=1e-5)


def test_uint8_pipeline_grid_search_clone_and_joblib(tmp_path, toy_binary):
    X, y = toy_binary
    images = _uint8(X)
    pipe = Pipeline([("load", ImageLoader(size=16, channels=1, dtype="uint8")),
                     ("clf", CXRClassifier(**{**PARAMS, "max_epochs": 1}))])
    search = GridSearchCV(pipe, {"clf__lr": [1e-2, 1e-3]}, cv=2).fit(images, y)
    assert search.best_estimator_[-1].input_normalization_ is not None
    assert clone(pipe).get_params()["load__dtype"] == "uint8"
    joblib.dump(search.best_estimator_, tmp_path / "pipe.joblib")
    loaded = joblib.load(tmp_path / "pipe.joblib")
    np.testing.assert_array_equal(loaded.predict_proba(images),
                                  search.best_estimator_.predict_proba(images))
    # the classifier alone on compact arrays: sklearn's CV indexing keeps the normalisation
    compact = ImageLoader(size=16, channels=1, dtype="uint8").fit_transform(images)
    GridSearchCV(CXRClassifier(**{**PARAMS, "max_epochs": 1}), {"lr": [1e-2]},
                 cv=2).fit(compact, y)


def test_normalisation_survives_state_dict_reload(toy_binary):
    X, y = toy_binary
    compact = ImageLoader(size=16, channels=3, normalize="minus_one_one",
                          dtype="uint8").fit_transform(_uint8(X))
    clf = CXRClassifier(**PARAMS).fit(compact, y)
    rebuilt = build_model("simple_cnn", 2, in_channels=3, neurons=16,
                          normalization=clf.input_normalization_)
    rebuilt.load_state_dict(clf.module_.state_dict())
    plain = build_model("simple_cnn", 2, in_channels=3, neurons=16)  # buffers from the file
    plain.load_state_dict(clf.module_.state_dict())
    x = torch.from_numpy(np.asarray(compact[:4]))
    expected = clf.module_.eval()(x)
    torch.testing.assert_close(rebuilt.eval()(x), expected)
    torch.testing.assert_close(plain.eval()(x), expected)


def test_grad_cam_on_uint8_pipelines(toy_binary):
    X, y = toy_binary
    images = _uint8(X)
    maps = {}
    for name, kw in [("float32", {}), ("uint8", {"dtype": "uint8"}),
                     ("lazy", {"dtype": "uint8", "lazy": True})]:
        pipe = Pipeline([("load", ImageLoader(size=16, channels=1, **kw)),
                         ("clf", CXRClassifier(**PARAMS))]).fit(images, y)
        maps[name] = grad_cam(pipe, images[:6])
        assert maps[name].shape == (6, 16, 16)
        assert maps[name].min() >= 0 and maps[name].max() <= 1
    np.testing.assert_allclose(maps["uint8"], maps["float32"], atol=1e-4)
    np.testing.assert_allclose(maps["lazy"], maps["uint8"], atol=1e-5)


def test_frozen_feature_cache_on_compact_images(toy_binary):
    from cxr_estimators import _features

    X, y = toy_binary
    params = {**PARAMS, "freeze": True, "cache": True}
    loader = ImageLoader(size=16, channels=1, dtype="uint8")
    compact = loader.fit_transform(_uint8(X))
    _features.clear_cache()
    cached = CXRClassifier(**params).fit(compact, y).predict_proba(compact)
    plain = CXRClassifier(**{**params, "cache": None}).fit(compact, y).predict_proba(compact)
    np.testing.assert_allclose(cached, plain, atol=1e-5)
    other = CompactImages(compact, [0.0], [1.0])  # same bytes, another normalisation
    assert _features._digest(other) != _features._digest(compact)


def test_augmentation_runs_batched_on_the_models_device_on_every_path(toy_binary, monkeypatch):
    X, y = toy_binary
    calls = []
    forward = Augmenter.forward
    monkeypatch.setattr(Augmenter, "forward", lambda self, x: calls.append(
        (x.shape[0], x.dtype, x.device.type)) or forward(self, x))
    images = _uint8(X)
    inputs = {"float array": X, "uint8 array": ImageLoader(size=16, channels=1,
                                                           dtype="uint8").fit_transform(images),
              "lazy uint8": ImageLoader(size=16, channels=1, dtype="uint8",
                                        lazy=True).fit_transform(images)}
    for name, data in inputs.items():
        calls.clear()
        CXRClassifier(**{**PARAMS, "max_epochs": 1}, augment=True,
                      validation_fraction=0).fit(data, y)
        assert [c[0] for c in calls] == [16, 16, 16], name  # batches, not images
        assert {c[1:] for c in calls} == {(torch.float32, "cpu")}, name  # normalised first


# ---------------------------------------------------------------- bad input
def test_data_device_errors_and_fallback(toy_binary, capsys, monkeypatch):
    X, y = toy_binary
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="data_device='cuda' .*no CUDA GPU is available"):
            CXRClassifier(**PARAMS, data_device="cuda").fit(X, y)
    with pytest.raises(ValueError, match="data_device='cuda' .*the model is on device 'cpu'"
                       if torch.cuda.is_available() else "no CUDA GPU"):
        CXRClassifier(**PARAMS, data_device="cuda", device="cpu").fit(X, y)
    with pytest.raises(ValueError, match="'data_device' parameter"):
        CXRClassifier(**PARAMS, data_device="gpu").fit(X, y)
    lazy = ImageLoader(size=16, channels=1, lazy=True).fit_transform(_uint8(X))
    with pytest.raises(ValueError, match="data_device='cuda' .* X is a lazy dataset"):
        CXRClassifier(**PARAMS, data_device="cuda").fit(lazy, y)
    # not fitting: "cuda" is an error, "auto" falls back with a reason
    with pytest.raises(ValueError, match=r"training set \(1.00 GiB\) does not fit in 50% of "
                                         r"the GPU's free memory \(1.00 GiB\)"):
        _feed.choose_data_device("cuda", "cuda", 2**30, free_bytes=2**30)
    where, why = _feed.choose_data_device("auto", "cuda", 2**30, free_bytes=2**30)
    assert where == "cpu" and why.startswith("data_device='auto': the training set")
    assert _feed.choose_data_device("auto", "cuda", 2**20, free_bytes=2**30) == ("cuda", None)
    assert _feed.choose_data_device("auto", "cpu", 2**20) == ("cpu", None)
    monkeypatch.setattr(_feed, "choose_data_device", lambda *a, **k: ("cpu", why))
    clf = CXRClassifier(**{**PARAMS, "max_epochs": 1}, verbose=1).fit(X, y)
    assert clf.data_device_ == "cpu"
    assert capsys.readouterr().out.count("data_device='auto'") == 1


def test_predict_input_must_match_the_fitted_normalisation(toy_binary):
    X, y = toy_binary
    images = _uint8(X)
    loader = ImageLoader(size=16, channels=1, dtype="uint8")
    clf = CXRClassifier(**PARAMS).fit(loader.fit_transform(images), y)
    other = ImageLoader(size=16, channels=1, dtype="uint8", normalize="unit")
    with pytest.raises(ValueError, match=r"normalised with \(mean, std\) = \(\(0.0,\), "
                                         r"\(1.0,\)\), but CXRClassifier was fitted on"):
        clf.predict(other.fit_transform(images))
    with pytest.raises(ValueError, match="X is a plain integer array without its "
                                         "normalisation"):
        clf.predict(images[:, None])
    # float images are taken as normalised already, as always
    assert clf.predict_proba(loader.transform(images).to_float32()).shape == (len(X), 2)


def test_no_per_batch_item_call_in_fit(toy_binary, monkeypatch):
    """skorch calls ``loss.item()`` after every step (a host sync on CUDA); the net here
    reads the losses once per epoch. (Adam's and the DataLoader's ``item()`` calls read
    CPU tensors: no sync.)"""
    import sys

    X, y = toy_binary
    callers = []
    item = torch.Tensor.item

    def spy(t):
        callers.append(sys._getframe(1).f_code.co_filename)
        return item(t)

    monkeypatch.setattr(torch.Tensor, "item", spy)
    # what the net does on CUDA (on the CPU item() waits for nothing: skorch's loop runs)
    monkeypatch.setattr(_training._Net, "_defers_losses", lambda self: True)
    clf = CXRClassifier(**PARAMS, validation_fraction=0.25).fit(X, y)
    n_batches = sum(len(epoch["batches"]) for epoch in clf.history_)
    assert n_batches == 2 * (3 + 1)
    from_skorch = [c for c in callers if "skorch" in c]
    assert from_skorch == []


def test_uint8_pipeline_survives_save_and_load(tmp_path, toy_binary):
    """persistence.py keeps ``input_normalization_`` (a fitted attribute) and rebuilds the
    model's ``input_norm`` step with it before loading the weights."""
    from cxr_estimators import load, save

    X, y = toy_binary
    images = _uint8(X)
    pipe = Pipeline([("load", ImageLoader(size=16, channels=3, dtype="uint8",
                                          normalize="minus_one_one")),
                     ("clf", CXRClassifier(**PARAMS))]).fit(images, y)
    save(pipe, tmp_path / "pipe.safetensors")
    loaded = load(tmp_path / "pipe.safetensors")
    assert loaded[-1].input_normalization_ == pipe[-1].input_normalization_
    assert loaded[0].dtype == "uint8"
    np.testing.assert_array_equal(loaded.predict_proba(images), pipe.predict_proba(images))


def test_divergence_is_caught_when_losses_stay_on_the_device(toy_binary, monkeypatch):
    """On CUDA the batch losses are checked at the epoch's end: same error, same batch."""
    from cxr_estimators._callbacks import TrainingDivergedError

    X, y = toy_binary
    monkeypatch.setattr(_training._Net, "_defers_losses", lambda self: True)
    with pytest.raises(TrainingDivergedError, match=r"training loss is nan at epoch 1, "
                                                    r"batch \d+; likely cause: the learning"):
        CXRClassifier(**{**PARAMS, "lr": 1e9}, validation_fraction=0).fit(X, y)
