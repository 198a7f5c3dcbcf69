import warnings
from unittest import mock

import joblib
import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_validate
from sklearn.pipeline import Pipeline

from cxr_estimators import CXRClassifier, ImageLoader, OneClassWarning
from cxr_estimators.augment import Augmenter


def test_binary_string_labels(toy_binary, small_clf_params):
    X, y = toy_binary
    clf = CXRClassifier(**{**small_clf_params, "max_epochs": 15}).fit(X, y)
    assert list(clf.classes_) == ["normal", "pneumonia"]
    proba = clf.predict_proba(X)
    assert proba.shape == (len(X), 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)
    pred = clf.predict(X)
    assert set(pred) <= {"normal", "pneumonia"}
    assert clf.score(X, y) >= 0.9  # the corner patch is easy to learn
    # predict follows the argmax of predict_proba, in classes_ order
    np.testing.assert_array_equal(pred, clf.classes_[proba.argmax(1)])
    dec = clf.decision_function(X)
    assert dec.shape == (len(X),)
    np.testing.assert_array_equal(dec > 0, pred == "pneumonia")


def test_multiclass_and_3d_input(toy_multiclass, small_clf_params):
    X, y = toy_multiclass
    clf = CXRClassifier(**{**small_clf_params, "max_epochs": 20}).fit(X[:, 0], y)
    assert list(clf.classes_) == ["bacterial", "normal", "viral"]
    assert clf.predict_proba(X[:, 0]).shape == (len(X), 3)
    assert clf.score(X[:, 0], y) >= 0.8
    assert clf.decision_function(X[:, 0]).shape == (len(X), 3)


def test_integer_labels_sorted(toy_binary, small_clf_params):
    X, _ = toy_binary
    y = np.array([7, 2] * (len(X) // 2))
    clf = CXRClassifier(**small_clf_params).fit(X, y)
    assert list(clf.classes_) == [2, 7]


def test_random_state_reproducible(toy_binary, small_clf_params):
    X, y = toy_binary
    p1 = CXRClassifier(**small_clf_params).fit(X, y).predict_proba(X)
    p2 = CXRClassifier(**small_clf_params).fit(X, y).predict_proba(X)
    p3 = CXRClassifier(**{**small_clf_params, "random_state": 1}).fit(X, y).predict_proba(X)
    np.testing.assert_array_equal(p1, p2)
    assert not np.allclose(p1, p3)


def test_clone_params_pipeline_gridsearch_cv(toy_binary, small_clf_params):
    X, y = toy_binary
    images = (X[:, 0] * 255).astype(np.uint8)
    pipe = Pipeline([("load", ImageLoader(size=16, channels=1, normalize="unit")),
                     ("clf", CXRClassifier(**small_clf_params))])
    cloned = clone(pipe)
    assert cloned.get_params()["clf__neurons"] == 16
    cloned.set_params(clf__neurons=8)
    assert cloned.named_steps["clf"].neurons == 8
    search = GridSearchCV(pipe, {"clf__lr": [1e-2, 1e-3], "clf__dropout": [0.3, 0.5]},
                          cv=StratifiedKFold(2), n_jobs=1)
    search.fit(images, y)
    assert set(search.best_params_) == {"clf__lr", "clf__dropout"}
    assert search.cv_results_["mean_test_score"].shape == (4,)
    res = cross_validate(pipe, images, y, cv=StratifiedKFold(2), scoring="accuracy")
    assert res["test_score"].shape == (2,)


def test_joblib_roundtrip_pipeline(tmp_path, toy_binary, small_clf_params):
    X, y = toy_binary
    images = (X[:, 0] * 255).astype(np.uint8)
    pipe = Pipeline([("load", ImageLoader(size=16, channels=1)),
                     ("clf", CXRClassifier(**small_clf_params))]).fit(images, y)
    path = tmp_path / "model.joblib"
    joblib.dump(pipe, path)
    loaded = joblib.load(path)
    np.testing.assert_array_equal(loaded.predict_proba(images), pipe.predict_proba(images))


def test_class_weight(toy_binary, small_clf_params):
    X, y = toy_binary
    X, y = X[:30], y[:30].copy()
    y[:24] = "normal"  # 27 normal vs 3 pneumonia
    clf = CXRClassifier(**small_clf_params, class_weight="balanced",
                        validation_fraction=0).fit(X, y)
    w = clf.net_.criterion_.weight.cpu().numpy()
    np.testing.assert_allclose(w, 30 / (2 * np.array([27, 3])), rtol=1e-6)
    clf = CXRClassifier(**small_clf_params, class_weight={"pneumonia": 5.0}).fit(X, y)
    np.testing.assert_allclose(clf.net_.criterion_.weight.cpu().numpy(), [1.0, 5.0])
    with pytest.raises(ValueError, match="class_weight has labels \\['covid'\\]"):
        CXRClassifier(**small_clf_params, class_weight={"covid": 2.0}).fit(X, y)


@pytest.mark.parametrize("bad, match", [
    (np.zeros((4, 2, 3, 8, 8), np.float32), "Found array with dim 5|shape"),
    (np.zeros((4, 5, 8, 8), np.float32), "X has 5 channels"),
])
def test_bad_x_shape(bad, match, small_clf_params):
    with pytest.raises(ValueError, match=match):
        CXRClassifier(**small_clf_params).fit(bad, ["a", "b"] * 2)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_x(value, toy_binary, small_clf_params):
    X, y = toy_binary
    X = X.copy()
    X[3, 0, 2, 2] = value
    with pytest.raises(ValueError, match="NaN|infinity"):
        CXRClassifier(**small_clf_params).fit(X, y)


def test_length_mismatch_and_single_class(toy_binary, small_clf_params):
    X, y = toy_binary
    with pytest.raises(ValueError, match="X has 48 images but y has 47 labels"):
        CXRClassifier(**small_clf_params).fit(X, y[:-1])
    with pytest.raises(ValueError, match="groups has 3 entries but y has 48 labels"):
        CXRClassifier(**small_clf_params).fit(X, y, groups=[1, 2, 3])
    with pytest.raises(ValueError, match="single class \\['normal'\\]"):
        CXRClassifier(**small_clf_params).fit(X, np.full(len(X), "normal"))


def test_unknown_backbone_and_weights(toy_binary, small_clf_params, tmp_path):
    X, y = toy_binary
    with pytest.raises(ValueError, match="backbone='resnet9000'"):
        CXRClassifier(**{**small_clf_params, "backbone": "resnet9000"}).fit(X, y)
    with pytest.raises(ValueError, match="weights='IMAGENET9K' is not a known weights name"):
        CXRClassifier(backbone="resnet18", weights="IMAGENET9K").fit(X, y)
    missing = tmp_path / "nope.pt"
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        CXRClassifier(**small_clf_params, weights=str(missing)).fit(X, y)
    with pytest.raises(ValueError, match="'lr' parameter"):
        CXRClassifier(**{**small_clf_params, "lr": -1}).fit(X, y)


def test_not_fitted():
    with pytest.raises(NotFittedError):
        CXRClassifier().predict(np.zeros((2, 1, 8, 8), np.float32))


def test_predict_checks_image_shape(toy_binary, small_clf_params):
    X, y = toy_binary
    clf = CXRClassifier(**small_clf_params).fit(X, y)
    with pytest.raises(ValueError, match="images of shape \\(1, 8, 8\\) vs \\(1, 16, 16\\)"):
        clf.predict(X[:, :, :8, :8])


def test_local_weights_file_loaded(tmp_path, toy_binary):
    """A state_dict saved from a torchvision model is loaded by path (no download)."""
    import torchvision

    torch.manual_seed(123)
    reference = torchvision.models.get_model("resnet18", weights=None)
    path = tmp_path / "resnet18_local.pth"
    torch.save(reference.state_dict(), path)
    X, y = toy_binary
    clf = CXRClassifier(backbone="resnet18", weights=str(path), freeze=True, max_epochs=1,
                        batch_size=16, random_state=0).fit(np.repeat(X, 2, -1).repeat(2, -2), y)
    got = clf.module_.trunk.state_dict()
    for name in ("conv1.weight", "layer4.1.bn2.running_var", "layer4.1.conv2.weight"):
        torch.testing.assert_close(got[name].cpu(), reference.state_dict()[name])
    # a checkpoint of a whole fitted model (keys prefixed "trunk.") loads too
    whole = tmp_path / "whole.pt"
    torch.save({"state_dict": clf.module_.state_dict()}, whole)
    clf2 = CXRClassifier(backbone="resnet18", weights=whole, freeze=True, max_epochs=1,
                         batch_size=16, random_state=0).fit(np.repeat(X, 2, -1).repeat(2, -2), y)
    torch.testing.assert_close(clf2.module_.trunk.state_dict()["conv1.weight"].cpu(),
                               reference.state_dict()["conv1.weight"])


def test_weights_path_without_suffix_and_nested_keys(tmp_path, monkeypatch, toy_binary,
                                                     small_clf_params):
    """A file with no checkpoint suffix is a path, not a weights name, and a
    ``{"model_state_dict": ...}`` checkpoint (a common training-script layout) loads."""
    X, y = toy_binary
    torch.manual_seed(7)
    donor = CXRClassifier(**{**small_clf_params, "max_epochs": 1}).fit(X, y)
    path = tmp_path / "cxr_model"
    torch.save({"epoch": 3, "model_state_dict": donor.module_.state_dict()}, path)
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every tensor fits: no partial-load warning
        warnings.simplefilter("ignore", OneClassWarning)  # one epoch of a frozen trunk
        clf = CXRClassifier(**{**small_clf_params, "max_epochs": 1}, weights="cxr_model",
                            freeze=True).fit(X, y)
    for name, tensor in donor.module_.trunk.state_dict().items():
        torch.testing.assert_close(clf.module_.trunk.state_dict()[name], tensor, msg=name)


def test_partly_fitting_weights_file_warns(tmp_path, toy_binary, small_clf_params):
    X, y = toy_binary
    donor = CXRClassifier(**{**small_clf_params, "max_epochs": 1}).fit(X, y)
    state = donor.module_.trunk.state_dict()
    dropped = [k for k in state if k.startswith("features.2.")]
    assert dropped
    path = tmp_path / "partial.pt"
    torch.save({k: v for k, v in state.items() if k not in dropped}, path)
    with pytest.warns(UserWarning, match=rf"partial.pt' fits {len(state) - len(dropped)} of "
                                         rf"the {len(state)} tensors"):
        CXRClassifier(**small_clf_params, weights=str(path)).fit(X, y)


def test_weights_file_that_is_not_a_checkpoint(tmp_path, toy_binary, small_clf_params):
    path = tmp_path / "notes.pt"
    path.write_text("not a checkpoint")
    X, y = toy_binary
    with pytest.raises(ValueError, match="notes.pt' could not be loaded"):
        CXRClassifier(**small_clf_params, weights=str(path)).fit(X, y)


def test_weights_file_for_wrong_model(tmp_path, toy_binary, small_clf_params):
    path = tmp_path / "other.pt"
    torch.save({"foo.weight": torch.zeros(3)}, path)
    X, y = toy_binary
    with pytest.raises(ValueError, match="other.pt' does not fit backbone 'simple_cnn': the "
                                         "first mismatched tensor 'features.0.0.weight'"):
        CXRClassifier(**small_clf_params, weights=str(path)).fit(X, y)


def test_freeze_trains_only_head(toy_binary, small_clf_params):
    X, y = toy_binary
    torch.manual_seed(0)
    clf = CXRClassifier(**{**small_clf_params, "backbone": "deep_cnn"}, freeze=True).fit(X, y)
    trunk = clf.module_.trunk
    assert not any(p.requires_grad for p in trunk.parameters())
    assert all(p.requires_grad for p in clf.module_.head.parameters())
    # trunk unchanged by training: same as a fresh model with the same seed
    fresh = CXRClassifier(**{**small_clf_params, "backbone": "deep_cnn", "max_epochs": 1,
                             "lr": 1e-9}, freeze=True).fit(X, y)
    for (n, a), (_, b) in zip(trunk.state_dict().items(), fresh.module_.trunk.state_dict().items()):
        torch.testing.assert_close(a, b, msg=n)  # incl. BatchNorm running stats


def test_freeze_last_k_blocks(toy_binary, small_clf_params):
    X, y = toy_binary
    clf = CXRClassifier(**{**small_clf_params, "backbone": "deep_cnn", "max_epochs": 1},
                        freeze=2).fit(X, y)
    blocks = list(clf.module_.trunk.features)
    trainable = [any(p.requires_grad for p in b.parameters()) for b in blocks]
    assert trainable == [False, False, False, True, True]
    head_only = CXRClassifier(**{**small_clf_params, "backbone": "deep_cnn", "max_epochs": 1},
                              freeze=0).fit(X, y)
    assert not any(p.requires_grad for p in head_only.module_.trunk.parameters())
    with pytest.raises(ValueError, match="freeze=6 asks to train the last 6 blocks, but "
                                         "this DeepCNN trunk has 5"):
        CXRClassifier(**{**small_clf_params, "backbone": "deep_cnn"}, freeze=6).fit(X, y)


def test_grouped_validation_split_keeps_patients_apart(toy_binary, small_clf_params):
    from cxr_estimators._training import _GroupedValidSplit

    X, y = toy_binary
    groups = np.arange(len(y)) // 3  # 16 patients, 3 images each
    y_enc = (y == "pneumonia").astype(int)
    train, valid = _GroupedValidSplit(0.25, groups, 0)(np.arange(len(y)), y_enc)
    train_groups, valid_groups = set(groups[train.indices]), set(groups[valid.indices])
    assert train_groups and valid_groups and not train_groups & valid_groups
    assert len(valid.indices) == pytest.approx(0.25 * len(y), abs=3)
    assert set(y_enc[valid.indices]) == {0, 1}
    # fit routes groups to that split; in a Pipeline they come as clf__groups
    pipe = Pipeline([("clf", CXRClassifier(**small_clf_params, validation_fraction=0.25))])
    pipe.fit(X, y, clf__groups=groups)
    assert isinstance(pipe[-1].net_.train_split, _GroupedValidSplit)
    assert "valid_loss" in pipe[-1].history_[-1]
    # GridSearchCV: groups= for the outer folds, clf__groups= sliced to each training fold
    from sklearn.model_selection import StratifiedGroupKFold

    search = GridSearchCV(pipe, {"clf__lr": [1e-3, 1e-2]}, cv=StratifiedGroupKFold(3),
                          error_score="raise").fit(X, y, groups=groups, clf__groups=groups)
    assert isinstance(search.best_estimator_[-1].net_.train_split, _GroupedValidSplit)


def test_grouped_search_under_metadata_routing(toy_binary, small_clf_params):
    """With routing on (as for ``X_val``), ``clf__groups=`` is refused by sklearn; the
    documented form is ``set_fit_request(groups=True)`` and ``groups=`` alone, which
    reaches both the outer folds and each fit's internal split, sliced to its fold."""
    import sklearn
    from sklearn.model_selection import StratifiedGroupKFold

    from cxr_estimators._training import _GroupedValidSplit

    X, y = toy_binary
    groups = np.arange(len(y)) // 3
    seen = []

    class Recording(_GroupedValidSplit):
        def __call__(self, dataset, y, **fit_params):
            seen.append(np.asarray(self.groups).copy())
            return super().__call__(dataset, y, **fit_params)

    with sklearn.config_context(enable_metadata_routing=True), \
            mock.patch("cxr_estimators._training._GroupedValidSplit", Recording):
        clf = CXRClassifier(**small_clf_params, validation_fraction=0.25)
        pipe = Pipeline([("clf", clf.set_fit_request(groups=True))])
        with pytest.raises(TypeError, match="clf__groups"):
            GridSearchCV(pipe, {"clf__lr": [1e-3]}, cv=StratifiedGroupKFold(3)).fit(
                X, y, groups=groups, clf__groups=groups)
        search = GridSearchCV(pipe, {"clf__lr": [1e-3]}, cv=StratifiedGroupKFold(3),
                              error_score="raise").fit(X, y, groups=groups)
    assert isinstance(search.best_estimator_[-1].net_.train_split, _GroupedValidSplit)
    folds = list(StratifiedGroupKFold(3).split(X, y, groups))
    assert len(seen) == len(folds) + 1  # each fold's fit, then the refit on all of X
    for got, (train, _) in zip(seen, folds):
        np.testing.assert_array_equal(got, groups[train])
    np.testing.assert_array_equal(seen[-1], groups)


def test_unavailable_device_named(toy_binary, small_clf_params):
    X, y = toy_binary
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        pytest.skip("this machine has MPS")
    with pytest.raises(ValueError, match="device='mps' but no Apple GPU"):
        CXRClassifier(**small_clf_params, device="mps").fit(X, y)


def test_augmentation_only_while_training(toy_binary, small_clf_params, monkeypatch):
    calls = []
    original = Augmenter.forward

    def spy(self, x):
        calls.append(len(x))
        return original(self, x)

    monkeypatch.setattr(Augmenter, "forward", spy)
    X, y = toy_binary
    clf = CXRClassifier(**small_clf_params, augment={"rotation": 15, "horizontal_flip": False})
    clf.fit(X, y)
    n_train_calls = len(calls)
    # every training batch of every epoch is augmented, validation batches are not
    n_train = len(X) - int(np.ceil(0.1 * len(X)))
    assert sum(calls) == small_clf_params["max_epochs"] * n_train
    p1 = clf.predict_proba(X)
    p2 = clf.predict_proba(X)
    assert len(calls) == n_train_calls  # no augmentation at predict time
    np.testing.assert_array_equal(p1, p2)


def test_early_stopping_restores_best_and_checkpoint(tmp_path, toy_binary, small_clf_params):
    X, y = toy_binary
    clf = CXRClassifier(**{**small_clf_params, "max_epochs": 30, "lr": 0.05}, early_stopping=2,
                        checkpoint_dir=str(tmp_path / "ckpt"), validation_fraction=0.25)
    clf.fit(X, y)
    hist = clf.history_
    losses = hist[:, "valid_loss"]
    best_epoch = int(np.argmin(losses))
    assert len(hist) <= 30
    if len(hist) < 30:  # stopped early: patience epochs after the best one
        assert len(hist) - 1 - best_epoch == 2
    saved = torch.load(tmp_path / "ckpt" / "params.pt", map_location="cpu")
    for name, value in clf.module_.state_dict().items():
        torch.testing.assert_close(value.cpu(), saved[name].cpu(), msg=name)


def test_crashed_fit_leaves_the_previous_checkpoint(tmp_path, toy_binary, small_clf_params):
    """Checkpoints are written to checkpoint_dir/.incoming and replace the folder's files
    only when training ends: a fit that crashes in epoch 2 keeps the last good fit's."""
    from skorch.callbacks import Callback

    class Crash(Callback):
        def on_epoch_begin(self, net, **kwargs):
            if len(net.history) == 2:
                raise RuntimeError("crash in epoch 2")

    X, y = toy_binary
    folder = tmp_path / "ckpt"
    params = {**small_clf_params, "max_epochs": 3, "validation_fraction": 0.25,
              "early_stopping": None, "checkpoint_dir": str(folder)}
    CXRClassifier(**params).fit(X, y)
    good = (folder / "params.pt").read_bytes()
    assert not (folder / ".incoming").exists()
    with pytest.raises(RuntimeError, match="crash in epoch 2"):
        CXRClassifier(**params, callbacks=[("crash", Crash())]).fit(X, y)
    assert (folder / "params.pt").read_bytes() == good
    assert (folder / ".incoming" / "params.pt").is_file()  # the crashed fit's, kept aside
    CXRClassifier(**params).set_params(random_state=1).fit(X, y)  # a good fit replaces it
    assert (folder / "params.pt").read_bytes() != good and not (folder / ".incoming").exists()


def test_checkpoint_that_cannot_be_written_warns(tmp_path, toy_binary, small_clf_params):
    """skorch's Checkpoint catches a failed save (a full disk) and only prints it when
    verbose: the fit still ends, with the model, and a warning says no checkpoint was
    written, whatever the verbosity."""
    from skorch import NeuralNet

    X, y = toy_binary

    def full_disk(self, **kwargs):
        raise OSError(28, "No space left on device")

    clf = CXRClassifier(**{**small_clf_params, "max_epochs": 2}, verbose=0,
                        checkpoint_dir=str(tmp_path / "ckpt"), validation_fraction=0.25)
    with mock.patch.object(NeuralNet, "save_params", full_disk), \
            pytest.warns(UserWarning, match="checkpoint not written: Unable to save .*"
                                            "No space left on device"):
        clf.fit(X, y)
    assert clf.predict(X).shape == (len(y),)


def test_lr_schedule_reduces_lr(toy_binary, small_clf_params):
    X, y = toy_binary
    clf = CXRClassifier(**{**small_clf_params, "max_epochs": 6}, early_stopping=None,
                        lr_schedule={"patience": 0, "factor": 0.1, "threshold": 10.0})
    clf.fit(X, y)
    assert clf.net_.optimizer_.param_groups[0]["lr"] < small_clf_params["lr"] / 5


@pytest.mark.parametrize("name, cls", [("adam", torch.optim.Adam),
                                       ("rmsprop", torch.optim.RMSprop),
                                       ("sgd", torch.optim.SGD)])
def test_optimizers_and_weight_decay(name, cls, toy_binary, small_clf_params):
    X, y = toy_binary
    clf = CXRClassifier(**{**small_clf_params, "max_epochs": 1}, optimizer=name,
                        weight_decay=1e-3).fit(X, y)
    assert isinstance(clf.net_.optimizer_, cls)
    assert clf.net_.optimizer_.param_groups[0]["weight_decay"] == 1e-3


def test_validation_split_is_stratified_and_optional(toy_binary, small_clf_params):
    X, y = toy_binary
    clf = CXRClassifier(**small_clf_params, validation_fraction=0.25).fit(X, y)
    assert "valid_loss" in clf.history_[-1]
    assert clf.net_.train_split.stratified
    clf = CXRClassifier(**small_clf_params, validation_fraction=0).fit(X, y)
    assert "valid_loss" not in clf.history_[-1]
    with pytest.warns(UserWarning, match="too few samples"):
        CXRClassifier(**small_clf_params).fit(X[:3], y[:3])


def test_feature_cache_matches_uncached(toy_binary):
    from cxr_estimators import _features

    X, y = toy_binary
    X = np.repeat(np.repeat(X, 2, -1), 2, -2)  # 32 px for resnet18
    params = dict(backbone="resnet18", freeze=True, max_epochs=3, batch_size=16,
                  random_state=0, neurons=16)
    _features.clear_cache()
    cached = CXRClassifier(**params, cache=True).fit(X, y)
    again = CXRClassifier(**{**params, "lr": 1e-2}, cache=True).fit(X, y)
    assert _features.cache_info()["hits"] == 1 and _features.cache_info()["misses"] == 1
    plain = CXRClassifier(**params).fit(X, y)
    # float32 on CPU: equal within float tolerance (the whole-model path predicts with
    # BatchNorm folded into the convolutions); under bf16 autocast (CUDA, or a CPU with
    # native bf16) the paths round differently (kernel order on CUDA, folded weights)
    atol = 1e-2 if cached.device_ == "cuda" or cached.net_.amp else 1e-5
    np.testing.assert_allclose(cached.predict_proba(X), plain.predict_proba(X), atol=atol)
    assert not np.allclose(again.predict_proba(X), plain.predict_proba(X))
    # predicting on the fitted images reused their cached features (2 predict calls)
    assert _features.cache_info() == {"hits": 3, "misses": 1, "entries": 1}
    # ... and the head-on-cached-features path equals the whole model's forward pass
    np.testing.assert_allclose(cached.predict_proba(X), cached.net_.predict_proba(X),
                               atol=atol)
    # new images: one more miss, then cached
    X_new = X[::-1].copy()
    np.testing.assert_allclose(cached.predict_proba(X_new), cached.predict_proba(X)[::-1],
                               atol=1e-6)
    assert _features.cache_info()["misses"] == 2
    # augmentation or a trainable trunk switch the cache off
    CXRClassifier(**{**params, "freeze": 1}, cache=True).fit(X, y)
    CXRClassifier(**params, cache=True, augment=True).fit(X, y)
    assert _features.cache_info()["misses"] == 2


def test_feature_cache_on_disk(tmp_path, toy_binary, small_clf_params):
    X, y = toy_binary
    params = {**small_clf_params, "freeze": True}
    a = CXRClassifier(**params, cache=str(tmp_path)).fit(X, y).predict_proba(X)
    assert any(tmp_path.rglob("features-*.safetensors")) and not any(tmp_path.rglob("*.pkl"))
    b = CXRClassifier(**params, cache=str(tmp_path)).fit(X, y).predict_proba(X)
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_keyboard_interrupt_keeps_model_and_propagates(toy_binary, small_clf_params,
                                                       monkeypatch):
    """An interrupt during training propagates (a search stops) after leaving the model
    usable with the weights trained so far and the history marking the interruption."""
    from cxr_estimators import _training

    X, y = toy_binary
    original = _training._Net.train_step
    steps = []

    def interrupting(self, batch, **kw):
        steps.append(1)
        if len(steps) == 5:
            raise KeyboardInterrupt
        return original(self, batch, **kw)

    monkeypatch.setattr(_training._Net, "train_step", interrupting)
    clf = CXRClassifier(**{**small_clf_params, "max_epochs": 10})
    with pytest.raises(KeyboardInterrupt, match="fit interrupted during epoch 2 of 10"):
        clf.fit(X, y)
    assert clf.predict(X).shape == (len(X),)
    assert len(clf.history_) == 2 and clf.history_[-1, "interrupted"] is True
    assert "interrupted" not in clf.history_[0]


def test_device_auto_is_cpu_without_gpu(toy_binary, small_clf_params):
    X, y = toy_binary
    clf = CXRClassifier(**small_clf_params).fit(X, y)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert clf.device_ == expected
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device='cuda'"):
            CXRClassifier(**small_clf_params, device="cuda").fit(X, y)


def test_lazy_images_train_and_predict_like_arrays(toy_binary, small_clf_params):
    X, y = toy_binary
    images = [(x[0] * 255).astype(np.uint8) for x in X]
    loader = ImageLoader(size=16, channels=1, normalize="unit")
    dense = loader.fit_transform(images)
    lazy = ImageLoader(size=16, channels=1, normalize="unit", lazy=True).fit_transform(images)
    assert lazy.shape == dense.shape
    a = CXRClassifier(**small_clf_params).fit(dense, y)
    b = CXRClassifier(**small_clf_params).fit(lazy, y)
    np.testing.assert_allclose(a.predict_proba(dense), b.predict_proba(lazy), atol=1e-5)
    np.testing.assert_allclose(a.predict_proba(lazy), a.predict_proba(dense), atol=1e-6)
    # frozen-feature cache keyed by the lazy dataset's fingerprint
    from cxr_estimators import _features
    _features.clear_cache()
    for lr in (1e-2, 1e-3):
        CXRClassifier(**{**small_clf_params, "lr": lr}, freeze=True, cache=True).fit(lazy, y)
    assert _features.cache_info() == {"hits": 1, "misses": 1, "entries": 1}


def test_feature_cache_keyed_by_trunk_weights(toy_binary, small_clf_params):
    """Random-init trunks from different seeds must not share cached features."""
    from cxr_estimators import _features

    X, y = toy_binary
    params = {**small_clf_params, "freeze": True}
    _features.clear_cache()
    a = CXRClassifier(**params, cache=True).fit(X, y)
    b = CXRClassifier(**{**params, "random_state": 1}, cache=True).fit(X, y)
    assert _features.cache_info()["misses"] == 2
    plain_b = CXRClassifier(**{**params, "random_state": 1}).fit(X, y)
    np.testing.assert_allclose(b.predict_proba(X), plain_b.predict_proba(X), atol=1e-5)
    assert not np.allclose(a.predict_proba(X), b.predict_proba(X))


def test_streamed_predict_proba_equals_skorch(toy_binary, small_clf_params):
    """predict_proba fills one preallocated array batch by batch (bounded memory, see
    benchmarks/memory.py); it must give skorch's own predict_proba, also for a last
    partial batch and for lazily loaded images."""
    X, y = toy_binary
    clf = CXRClassifier(**small_clf_params).fit(X, y)
    X_odd = X[:37]  # batch_size 16: 16 + 16 + 5
    np.testing.assert_allclose(clf.predict_proba(X_odd), clf.net_.predict_proba(X_odd),
                               rtol=1e-6)
    lazy = ImageLoader(size=16, channels=1, normalize="unit", lazy=True).fit_transform(
        (X_odd[:, 0] * 255).astype(np.uint8))
    from cxr_estimators._training import _Labelled

    np.testing.assert_allclose(clf.predict_proba(lazy), clf.net_.predict_proba(_Labelled(lazy)),
                               rtol=1e-6)
