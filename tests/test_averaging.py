"""``average_weights``: EMA and SWA (torch.optim.swa_utils); the averages are the fit."""

import copy

import numpy as np
import pytest
import torch
from skorch import NeuralNetClassifier
from skorch.callbacks import Callback
from torch import nn
from torch.optim.swa_utils import update_bn

from cxr_estimators import CXRClassifier
from cxr_estimators._averaging import WeightAveraging
from cxr_estimators.backbones import DeepCNN


class _Record(Callback):
    """Copies of the module's weights after every training batch or every epoch."""

    def __init__(self, every):
        self.every = every

    def initialize(self):
        self.weights_ = []
        return self

    def _record(self, net):
        self.weights_.append(copy.deepcopy(net.module_.state_dict()))

    def on_batch_end(self, net, training=False, **kwargs):
        if training and self.every == "batch":
            self._record(net)

    def on_epoch_end(self, net, **kwargs):
        if self.every == "epoch":
            self._record(net)


def _linear_net(averaging, every, max_epochs=4):
    torch.manual_seed(0)
    record = _Record(every)
    net = NeuralNetClassifier(nn.Linear(5, 2), criterion=nn.CrossEntropyLoss, lr=0.5,
                              batch_size=8, max_epochs=max_epochs, train_split=None,
                              callbacks=[record, averaging], verbose=0)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(32, 5)).astype(np.float32)
    return net.fit(X, (X[:, 0] > 0).astype(np.int64)), record


def test_swa_is_the_mean_of_the_end_of_epoch_weights():
    net, record = _linear_net(WeightAveraging("swa", start=2), "epoch")
    expected = torch.stack([w["weight"] for w in record.weights_[1:]]).mean(0)
    torch.testing.assert_close(net.module_.weight.data, expected)
    assert not torch.allclose(net.module_.weight.data, record.weights_[-1]["weight"])


def test_ema_is_the_moving_average_of_the_batch_weights():
    net, record = _linear_net(WeightAveraging("ema", decay=0.9), "batch")
    expected = record.weights_[0]["weight"]
    for t, w in enumerate(record.weights_[1:], start=1):
        decay = min(0.9, (1 + t) / (10 + t))  # warmed up: 0.18, 0.27, ... then 0.9
        expected = decay * expected + (1 - decay) * w["weight"]
    torch.testing.assert_close(net.module_.weight.data, expected)


def test_swa_that_averaged_nothing_warns_and_keeps_the_trained_weights():
    with pytest.warns(UserWarning, match="no weights were averaged"):
        net, record = _linear_net(WeightAveraging("swa", start=9), "epoch", max_epochs=2)
    torch.testing.assert_close(net.module_.weight.data, record.weights_[-1]["weight"])


def _bn_stats(module):
    return {name: (m.running_mean.clone(), m.running_var.clone())
            for name, m in module.named_modules() if isinstance(m, nn.BatchNorm2d)}


def test_swa_recomputes_batch_norm_statistics_on_the_training_data(toy_binary,
                                                                   small_clf_params):
    X, y = toy_binary
    # one batch of all images per epoch: the recomputed statistics do not depend on the
    # shuffled order of the batches
    clf = CXRClassifier(**{**small_clf_params, "backbone": "deep_cnn", "max_epochs": 3,
                           "validation_fraction": 0, "batch_size": len(X)},
                        average_weights={"method": "swa", "start": 1})
    clf.fit(X, y)
    fitted = _bn_stats(clf.module_)
    recomputed = copy.deepcopy(clf.module_)
    update_bn(torch.utils.data.DataLoader(torch.as_tensor(X), batch_size=len(X)), recomputed)
    for name, (mean, var) in _bn_stats(recomputed).items():
        torch.testing.assert_close(fitted[name][0], mean, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(fitted[name][1], var, rtol=1e-4, atol=1e-5)
    assert dict(clf.net_.callbacks_)["average_weights"].averaged_ is None  # not pickled


def test_swa_keeps_frozen_batch_norm_statistics(toy_binary, small_clf_params, tmp_path):
    X, y = toy_binary
    trunk = DeepCNN(1)
    generator = torch.Generator().manual_seed(0)
    for m in trunk.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1, generator=generator)
            m.running_var.uniform_(0.5, 2, generator=generator)
    torch.save(trunk.state_dict(), tmp_path / "trunk.pt")
    clf = CXRClassifier(**{**small_clf_params, "backbone": "deep_cnn", "max_epochs": 2},
                        weights=tmp_path / "trunk.pt", freeze=1, average_weights="swa")
    clf.fit(X, y)
    saved, fitted = _bn_stats(trunk), _bn_stats(clf.module_.trunk)
    frozen = [n for n in saved if not n.startswith("features.4")]
    for name in frozen:
        torch.testing.assert_close(fitted[name][0], saved[name][0])
        torch.testing.assert_close(fitted[name][1], saved[name][1])
    trained = "features.4.1"  # the last block's BatchNorm trains and is recomputed
    assert not torch.allclose(fitted[trained][0], saved[trained][0])


@pytest.mark.parametrize("method", ["ema", {"method": "swa", "start": 1}])
def test_averaging_changes_the_fitted_model(toy_binary, small_clf_params, method):
    X, y = toy_binary
    plain = CXRClassifier(**small_clf_params).fit(X, y)
    averaged = CXRClassifier(**small_clf_params, average_weights=method).fit(X, y)
    assert not np.allclose(plain.predict_proba(X), averaged.predict_proba(X))
