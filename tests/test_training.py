"""Training plumbing (cxr_estimators._training): per-fit random streams, device placement,
sample weights, extra callbacks and warm start."""

import threading
from concurrent.futures import ThreadPoolExecutor

import joblib
import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from skorch.callbacks import Callback, EpochScoring

from cxr_estimators import CXRClassifier, ImageLoader
from cxr_estimators import _rng, distributed


@pytest.fixture
def noisy_params(small_clf_params):
    """Every torch random draw a fit makes: init, dropout, augmentation, shuffling."""
    return {**small_clf_params, "dropout": 0.5, "augment": True}


# ------------------------------------------------------------------------ randomness
@pytest.mark.parametrize("random_state", [0, None])
def test_fit_leaves_the_global_torch_rng_as_found(toy_binary, noisy_params, random_state):
    X, y = toy_binary
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    clf = CXRClassifier(**{**noisy_params, "random_state": random_state}).fit(X, y)
    clf.predict_proba(X)
    assert torch.equal(torch.get_rng_state(), before)


def test_threaded_fits_with_one_seed_give_identical_models(toy_binary, noisy_params):
    X, y = toy_binary
    sequential = CXRClassifier(**noisy_params).fit(X, y).predict_proba(X)
    start = threading.Barrier(2)

    def fit(_):
        start.wait()  # both fits train at the same time
        return CXRClassifier(**noisy_params).fit(X, y).predict_proba(X)

    with ThreadPoolExecutor(2) as pool:
        threaded = list(pool.map(fit, range(2)))
    for proba in threaded:
        np.testing.assert_array_equal(proba, sequential)


def test_grid_search_with_threading_backend_is_reproducible(toy_binary, noisy_params):
    X, y = toy_binary
    grid = {"lr": [1e-2, 3e-3]}
    params = {**noisy_params, "max_epochs": 2}

    def search(n_jobs):
        gs = GridSearchCV(CXRClassifier(**params), grid, cv=StratifiedKFold(2),
                          scoring="roc_auc", n_jobs=n_jobs, refit=False)
        return gs.fit(X, y).cv_results_["mean_test_score"]

    serial = search(1)
    with joblib.parallel_backend("threading"):
        first, second = search(2), search(2)
    np.testing.assert_array_equal(first, serial)
    np.testing.assert_array_equal(second, serial)


def test_random_state_none_follows_numpys_global_seed(toy_binary, small_clf_params):
    X, y = toy_binary
    params = {**small_clf_params, "random_state": None, "max_epochs": 1}
    np.random.seed(3)
    a = CXRClassifier(**params).fit(X, y).predict_proba(X)
    np.random.seed(3)
    b = CXRClassifier(**params).fit(X, y).predict_proba(X)
    c = CXRClassifier(**params).fit(X, y).predict_proba(X)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_fit_random_stream_swaps_and_restores():
    rng = _rng.FitRandomness(5)
    torch.manual_seed(0)
    caller = torch.get_rng_state()
    with rng.global_stream():
        first = torch.rand(3)
    with rng.global_stream():
        second = torch.rand(3)
    assert torch.equal(torch.get_rng_state(), caller)
    torch.manual_seed(5)
    np.testing.assert_array_equal(torch.cat([first, second]), torch.rand(6))


# ---------------------------------------------------------------------------- devices
@pytest.fixture
def two_gpus(monkeypatch):
    """Pretend torch sees two CUDA GPUs (device resolution only; nothing runs on them)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("LOCAL_RANK", raising=False)


def test_device_cuda_index(two_gpus):
    assert distributed.resolve_device("cuda:1") == "cuda:1"
    assert distributed.resolve_device("auto") == "cuda"
    with pytest.raises(ValueError, match=r"device='cuda:7' but this process sees 2 CUDA "
                                         r"GPUs \(cuda:0 to cuda:1\)"):
        distributed.resolve_device("cuda:7")


@pytest.mark.parametrize("local_rank, n_gpus, expected", [
    ("0", 2, "cuda:0"), ("1", 2, "cuda:1"),
    ("3", 1, "cuda:0"),  # each rank was given its own GPU with CUDA_VISIBLE_DEVICES
])
def test_device_auto_follows_local_rank(two_gpus, monkeypatch, local_rank, n_gpus, expected):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: n_gpus)
    monkeypatch.setenv("LOCAL_RANK", local_rank)
    assert distributed.resolve_device("auto") == expected


def test_device_auto_with_more_ranks_than_gpus(two_gpus, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "5")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    with pytest.raises(ValueError, match=r"LOCAL_RANK=5.*sees 2 CUDA GPUs.*"
                                         r"CUDA_VISIBLE_DEVICES='2,3'"):
        distributed.resolve_device("auto")


# ---------------------------------------------------------------------- sample_weight
def test_equal_weights_give_the_unweighted_model(toy_binary, small_clf_params):
    X, y = toy_binary
    plain = CXRClassifier(**small_clf_params).fit(X, y).predict_proba(X)
    for w in (np.full(len(y), 2.5), 3.0):
        got = CXRClassifier(**small_clf_params).fit(X, y, sample_weight=w).predict_proba(X)
        np.testing.assert_array_equal(got, plain)


def test_weighted_batch_loss_is_the_weighted_mean(toy_binary, small_clf_params):
    X, y = toy_binary
    w = np.linspace(0.0, 2.0, len(y)).astype(np.float32)
    clf = CXRClassifier(**small_clf_params, class_weight={"pneumonia": 3.0}).fit(
        X, y, sample_weight=w)
    net = clf.net_
    logits = net.module_(torch.as_tensor(X[:16]))
    y_enc = torch.as_tensor((y[:16] == "pneumonia").astype(np.int64))
    # training=True: the training loss (valid_loss leaves class weights out by default)
    got = net.get_loss(logits, y_enc, X={"X": X[:16], "sample_weight": w[:16]},
                       training=True)
    per_image = torch.nn.functional.cross_entropy(logits, y_enc, reduction="none")
    c = torch.where(y_enc == 1, 3.0, 1.0)
    expected = (torch.as_tensor(w[:16]) * c * per_image).sum() / (torch.as_tensor(w[:16]) * c).sum()
    torch.testing.assert_close(got, expected)
    zero = net.get_loss(logits, y_enc, X={"X": X[:16], "sample_weight": np.zeros(16)},
                        training=True)
    assert float(zero.detach()) == 0.0


def test_validation_loss_is_weighted(toy_binary, small_clf_params):
    X, y = toy_binary
    rng = np.random.default_rng(0)
    w = (np.where(y == "pneumonia", 3.0, 0.2) * rng.uniform(0.5, 1.5, len(y))).astype(
        np.float32)
    # float32: the expected loss below is recomputed without bf16 autocast
    clf = CXRClassifier(**{**small_clf_params, "max_epochs": 6, "batch_size": 64,
                           "validation_fraction": 0.25, "early_stopping": None,
                           "precision": "float32"}).fit(X, y, sample_weight=w)
    net = clf.net_
    y_enc = (y == "pneumonia").astype(np.int64)
    _, valid = net.train_split(net.get_dataset({"X": X, "sample_weight": w}, y_enc), y_enc)
    idx = np.asarray(valid.indices)
    with torch.no_grad():
        losses = torch.nn.functional.cross_entropy(
            net.module_(torch.as_tensor(X[idx])), torch.as_tensor(y_enc[idx]),
            reduction="none").numpy()
    expected = np.sum(w[idx] * losses) / np.sum(w[idx])
    assert clf.history_[-1, "valid_loss"] == pytest.approx(expected, rel=1e-5)
    assert not np.isclose(expected, losses.mean(), rtol=1e-2)  # the weights mattered


def test_given_validation_set_is_scored_unweighted(toy_binary, small_clf_params):
    X, y = toy_binary
    w = np.where(y == "pneumonia", 5.0, 1.0)
    clf = CXRClassifier(**{**small_clf_params, "max_epochs": 2, "early_stopping": None,
                           "precision": "float32"}).fit(  # recomputed in float32 below
        X[8:], y[8:], sample_weight=w[8:], X_val=X[:8], y_val=y[:8])
    with torch.no_grad():
        expected = torch.nn.functional.cross_entropy(
            clf.module_(torch.as_tensor(X[:8])),
            torch.as_tensor((y[:8] == "pneumonia").astype(np.int64)))
    assert clf.history_[-1, "valid_loss"] == pytest.approx(float(expected), rel=1e-5)


def test_weights_change_the_model_lazy_and_cached_alike(toy_binary, small_clf_params):
    X, y = toy_binary
    w = np.where(y == "pneumonia", 4.0, 1.0)
    plain = CXRClassifier(**small_clf_params).fit(X, y).predict_proba(X)
    weighted = CXRClassifier(**small_clf_params).fit(X, y, sample_weight=w)
    assert not np.allclose(weighted.predict_proba(X), plain)
    lazy = ImageLoader(size=16, channels=1, normalize="unit", lazy=True).fit_transform(
        (X[:, 0] * 255).round().astype(np.uint8))
    eager = np.asarray(lazy)
    a = CXRClassifier(**small_clf_params).fit(eager, y, sample_weight=w)
    b = CXRClassifier(**small_clf_params).fit(lazy, y, sample_weight=w)
    np.testing.assert_allclose(a.predict_proba(eager), b.predict_proba(eager), atol=1e-5)
    frozen = {**small_clf_params, "freeze": True}
    c = CXRClassifier(**frozen).fit(X, y, sample_weight=w)
    d = CXRClassifier(**frozen, cache=True).fit(X, y, sample_weight=w)
    np.testing.assert_allclose(c.predict_proba(X), d.predict_proba(X), atol=1e-5)


# -------------------------------------------------------------------------- callbacks
class _EpochCounter(Callback):
    """Appends to a list it is given; holds a lock, which cannot be deep-copied."""

    def __init__(self, seen, lock=None):
        self.seen = seen
        self.lock = lock

    def on_epoch_end(self, net, **kwargs):
        with self.lock:
            self.seen.append(len(net.history))


def test_extra_callbacks_run_after_ours_and_are_cloned(toy_binary, small_clf_params):
    X, y = toy_binary
    auc = EpochScoring("roc_auc", name="valid_auc", lower_is_better=False)
    seen = []
    counter = _EpochCounter(seen, threading.Lock())
    clf = CXRClassifier(**small_clf_params, callbacks=[auc, ("count", counter)]).fit(X, y)
    assert "valid_auc" in clf.history_[-1]
    assert seen == [1, 2, 3]  # a shallow clone shares the list (and the lock)
    names = [name for name, _ in clf.net_.callbacks_]
    assert names.index("count") > names.index("early_stopping")
    assert not hasattr(auc, "best_score_")  # the given instance was not the one used
    assert all(cb is not auc for _, cb in clf.net_.callbacks_)
    clf.fit(X, y)  # a second fit starts the callbacks afresh
    assert seen == [1, 2, 3, 1, 2, 3]


def test_extra_callbacks_in_a_grid_search(toy_binary, small_clf_params):
    X, y = toy_binary
    auc = EpochScoring("roc_auc", name="valid_auc", lower_is_better=False)
    seen = []
    counter = _EpochCounter(seen, threading.Lock())  # sklearn's clone cannot deep-copy it
    gs = GridSearchCV(CXRClassifier(**{**small_clf_params, "max_epochs": 1},
                                    callbacks=[auc, ("count", counter)]),
                      {"lr": [1e-2, 1e-3]}, cv=2).fit(X, y)
    assert "valid_auc" in gs.best_estimator_.history_[-1]
    assert seen == [1] * 5  # 2 points × 2 folds + refit, each one epoch
    assert clone(gs.best_estimator_).callbacks[1][1].lock is counter.lock


# ------------------------------------------------------------------ train/eval modes
class _ModeRecorder(Callback):
    """Unfreezes the trunk when epoch ``unfreeze_at`` begins (as skorch's ``Unfreezer``
    does) and records, after each training batch, the epoch and whether every trunk
    BatchNorm was in training mode, and the mode of each call of the module's ``train``."""

    def __init__(self, unfreeze_at=2):
        self.unfreeze_at = unfreeze_at

    def on_train_begin(self, net, **kwargs):
        self.modes, self.train_calls = [], []
        module, train = net.module_, net.module_.train

        def counted(mode=True):
            self.train_calls.append(bool(mode))
            return train(mode)
        module.train = counted

    def on_epoch_begin(self, net, **kwargs):
        if len(net.history) == self.unfreeze_at:
            for p in net.module_.trunk.parameters():
                p.requires_grad_(True)

    def on_batch_end(self, net, batch=None, training=False, **kwargs):
        if training:
            bn = [m for m in net.module_.trunk.modules()
                  if isinstance(m, torch.nn.BatchNorm2d)]
            self.modes.append((len(net.history), all(m.training for m in bn)))


def test_modes_set_once_per_epoch_and_unfreezing_takes_effect(toy_binary):
    """skorch sets train mode before every batch; the net does it on an epoch's first
    batch (and on a change of mode) only. Frozen BatchNorm stays in eval mode until a
    callback unfreezes the trunk at an epoch's start; from then it trains."""
    X, y = toy_binary
    recorder = _ModeRecorder(unfreeze_at=2)
    clf = CXRClassifier(backbone="deep_cnn", freeze=True, cache=False, max_epochs=3,
                        batch_size=8, validation_fraction=0, early_stopping=None,
                        random_state=0, callbacks=[("modes", recorder)]).fit(X, y)
    used = clf.net_.callbacks_[-1][1]
    batches = len(X) // 8
    assert used.modes == ([(1, False)] * batches + [(2, True)] * batches
                          + [(3, True)] * batches)
    # one per epoch, not one per batch (18), and eval mode once the fit is done
    assert used.train_calls == [True] * 3 + [False]
    # with a validation split the mode changes twice an epoch, and is set each time
    clf.set_params(validation_fraction=0.25).fit(X, y)
    assert clf.net_.callbacks_[-1][1].train_calls == [True, False] * 3 + [False]


# ------------------------------------------------------------------------- warm start
def test_warm_start_continues_from_the_fitted_weights(toy_binary, small_clf_params):
    X, y = toy_binary
    clf = CXRClassifier(**small_clf_params, warm_start=True).fit(X, y)
    trained = {k: v.clone() for k, v in clf.module_.state_dict().items()}
    clf.set_params(lr=1e-12, max_epochs=1).fit(X, y)  # next to no update: weights kept
    for name, tensor in clf.module_.state_dict().items():
        torch.testing.assert_close(tensor, trained[name], msg=name)
    fresh = CXRClassifier(**{**small_clf_params, "lr": 1e-12, "max_epochs": 1}).fit(X, y)
    assert not torch.allclose(fresh.module_.head[0].weight, trained["head.0.weight"])
    cold = clf.set_params(warm_start=False).fit(X, y)  # warm_start=False starts over
    torch.testing.assert_close(cold.module_.head[0].weight, fresh.module_.head[0].weight)


# Bad sample weights, callbacks, devices and warm starts: tests/test_errors.py


@pytest.mark.parametrize("valid_class_weight", [False, True])
def test_validation_loss_class_weights_only_when_asked(toy_binary, small_clf_params,
                                                       valid_class_weight):
    """Keras' val_loss ignores class_weight: so does valid_loss by default; with
    valid_class_weight=True it is the class-weighted mean, like the training loss."""
    from sklearn.metrics import log_loss

    X, y = toy_binary
    weights = {"normal": 1.0, "pneumonia": 4.0}
    clf = CXRClassifier(**{**small_clf_params, "max_epochs": 1}, class_weight=weights,
                        valid_class_weight=valid_class_weight, precision="float32",
                        early_stopping=None).fit(X[:32], y[:32], X_val=X[32:], y_val=y[32:])
    proba = clf.predict_proba(X[32:])
    w = np.array([weights[label] for label in y[32:]]) if valid_class_weight else None
    expected = log_loss(y[32:], proba, labels=clf.classes_, sample_weight=w)
    assert clf.history_[-1, "valid_loss"] == pytest.approx(expected, abs=1e-4)
    other = log_loss(y[32:], proba, labels=clf.classes_,
                     sample_weight=None if valid_class_weight else
                     np.array([weights[label] for label in y[32:]]))
    assert abs(clf.history_[-1, "valid_loss"] - other) > 1e-3
