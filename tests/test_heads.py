"""heads.py and the head / optimizer / backbone parameters of CXRClassifier."""

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from cxr_estimators import CXRClassifier, _features
from cxr_estimators.backbones import build_model, build_trunk
from cxr_estimators.explain import grad_cam
from cxr_estimators.heads import conv_map_trunk, make_head


def _types(seq):
    return [type(m).__name__ for m in seq]


def test_default_head_is_todays():
    head = make_head(32, 2)
    assert _types(head) == ["Linear", "ReLU", "Dropout", "Linear"]
    assert head[0].out_features == 128 and head[2].p == 0.5


def test_several_dense_layers_batch_norm_and_input_dropout():
    head = make_head(32, 3, (16, 8), 0.3, batch_norm=True, input_dropout=0.2)
    assert _types(head) == ["Dropout", "Linear", "BatchNorm1d", "ReLU", "Dropout",
                            "Linear", "BatchNorm1d", "ReLU", "Dropout", "Linear"]
    assert head[0].p == 0.2 and head[4].p == head[8].p == 0.3
    assert [m.out_features for m in head if isinstance(m, nn.Linear)] == [16, 8, 3]
    with pytest.raises(ValueError, match=r"neurons must be an int >= 1 or a non-empty tuple"):
        make_head(32, 2, (16, 0))


@pytest.mark.parametrize("pooling, n_features", [("avg", 128), ("max", 128),
                                                 ("flatten", 128 * 2 * 2)])
def test_pooling_of_the_conv_map(pooling, n_features):
    torch.manual_seed(0)
    model = build_model("simple_cnn", 2, in_channels=1, pooling=pooling,
                        image_size=(16, 16)).eval()
    x = torch.rand(3, 1, 16, 16)
    conv_map = model.trunk(x)
    assert conv_map.shape == (3, 128, 2, 2) and model.n_features == n_features
    expected = {"avg": conv_map.mean((2, 3)), "max": conv_map.amax((2, 3)),
                "flatten": conv_map.flatten(1)}[pooling]
    torch.testing.assert_close(model.forward_features(x), expected)
    assert model(x).shape == (3, 2)


def test_vgg_flatten_uses_the_conv_base_without_fc6_fc7():
    model = build_model("vgg11", 2, pooling="flatten", image_size=(64, 64))
    assert not any(isinstance(m, nn.Linear) for m in model.trunk.modules())
    assert model.n_features == 512 * 2 * 2
    default = build_model("vgg11", 2, image_size=(32, 32))  # today's: fc6/fc7 kept
    assert sum(isinstance(m, nn.Linear) for m in default.trunk.modules()) == 2


def test_densenet_conv_map_is_after_its_relu():
    trunk = build_trunk("densenet121")[0].eval()
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        expected = torch.relu(trunk.features(x))
        got = conv_map_trunk(trunk, trunk.classifier_name)(x)
    torch.testing.assert_close(got, expected)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "densenet121", "mobilenet_v2", "vgg16",
                                  "efficientnet_b0", "inception_v3", "convnext_tiny",
                                  "mobilenet_v3_small", "shufflenet_v2_x0_5", "mnasnet0_5",
                                  "regnet_y_400mf", "googlenet", "swin_t", "deep_cnn"])
def test_conv_map_is_the_input_of_the_models_own_pooling(name):
    """Checked against torchvision's FX feature extractor: the node before the pooling."""
    from torchvision.models.feature_extraction import (create_feature_extractor,
                                                       get_graph_node_names)
    trunk = build_trunk(name, in_channels=3)[0].eval()
    nodes = get_graph_node_names(trunk)[1]
    pool = next(k for k, n in enumerate(nodes) if n in ("avgpool", "pool")
                or n.startswith(("adaptive_avg_pool2d", "mean")))
    size = 299 if name == "inception_v3" else 224
    x = torch.rand(1, 3, size, size)
    with torch.no_grad():
        ref = create_feature_extractor(trunk, {nodes[pool - 1]: "map"})(x)["map"]
        got = conv_map_trunk(trunk, trunk.classifier_name).eval()(x)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_flatten_on_a_1x1_map_is_refused():
    with pytest.raises(ValueError, match=r"pooling='flatten': backbone 'deep_cnn' reduces "
                                         r"these images to a 1 × 1 feature map"):
        build_model("deep_cnn", 2, in_channels=1, pooling="flatten", image_size=(16, 16))


def test_vit_has_no_conv_map():
    with pytest.raises(ValueError, match="no convolutional feature map"):
        build_model("vit_b_16", 2, pooling="avg", image_size=(224, 224))


def test_classifier_with_new_head_fits_explains_and_caches(toy_binary, small_clf_params):
    X, y = toy_binary
    params = {**small_clf_params, "pooling": "flatten", "neurons": (16, 8),
              "head_batch_norm": True, "input_dropout": 0.2, "dropout": 0.3}
    clf = CXRClassifier(**params).fit(X, y)
    assert clf.module_.n_features == 512 and clf.score(X, y) > 0.5
    heatmaps = grad_cam(clf, X[:2], target="pneumonia")
    assert heatmaps.shape == (2, 16, 16) and np.isfinite(heatmaps).all()
    # the feature cache trains the same head on the pooled (flattened) features
    _features.clear_cache()
    frozen = {**params, "freeze": True, "random_state": 0}
    cached = CXRClassifier(**frozen, cache=True).fit(X, y)
    plain = CXRClassifier(**frozen).fit(X, y)
    assert cached._uses_cache and _features.cache_info()["misses"] >= 1
    np.testing.assert_allclose(cached.predict_proba(X), plain.predict_proba(X), atol=1e-5)
    # same trunk weights pooled another way: other features, not the cached ones
    other = CXRClassifier(**{**frozen, "pooling": "max"}, cache=True).fit(X, y)
    assert other.module_.n_features == 128 and _features.cache_info()["entries"] == 2


def test_weight_decay_scope_head(toy_binary, small_clf_params):
    X, y = toy_binary
    clf = CXRClassifier(**small_clf_params, weight_decay=1e-3, weight_decay_scope="head",
                        head_batch_norm=True).fit(X, y)
    module = clf.module_
    decay = {id(p): g["weight_decay"] for g in clf.net_.optimizer_.param_groups
             for p in g["params"]}
    linear_weights = {id(m.weight) for m in module.head if isinstance(m, nn.Linear)}
    for name, p in module.named_parameters():
        assert decay[id(p)] == (1e-3 if id(p) in linear_weights else 0.0), name
    everywhere = CXRClassifier(**small_clf_params, weight_decay=1e-3).fit(X, y)
    assert {g["weight_decay"] for g in everywhere.net_.optimizer_.param_groups} == {1e-3}


def test_weight_decay_scope_head_with_feature_cache(toy_binary, small_clf_params):
    X, y = toy_binary
    clf = CXRClassifier(**small_clf_params, freeze=True, cache=True, weight_decay=1e-3,
                        weight_decay_scope="head").fit(X, y)
    decay = {id(p): g["weight_decay"] for g in clf.net_.optimizer_.param_groups
             for p in g["params"]}
    head = clf.module_.head
    assert [decay[id(p)] for p in (head[0].weight, head[0].bias, head[3].weight)] == [
        1e-3, 0.0, 1e-3]


def test_optimizer_kwargs(toy_binary, small_clf_params):
    X, y = toy_binary
    clf = CXRClassifier(**small_clf_params, optimizer="rmsprop",
                        optimizer_kwargs={"alpha": 0.9, "eps": 1e-7}).fit(X, y)
    group = clf.net_.optimizer_.param_groups[0]
    assert (group["alpha"], group["eps"]) == (0.9, 1e-7)
    with pytest.raises(ValueError, match=r"optimizer_kwargs has 'rho', not an argument of "
                                         r"RMSprop"):
        CXRClassifier(**small_clf_params, optimizer="rmsprop",
                      optimizer_kwargs={"rho": 0.9}).fit(X, y)
    with pytest.raises(ValueError, match="did you mean 'momentum'"):
        CXRClassifier(**small_clf_params, optimizer="sgd",
                      optimizer_kwargs={"momentun": 0.9}).fit(X, y)
    with pytest.raises(ValueError, match="optimizer_kwargs has 'lr'; set the lr= parameter"):
        CXRClassifier(**small_clf_params, optimizer_kwargs={"lr": 0.1}).fit(X, y)


def test_backbone_kwargs_small_cnn(toy_binary, small_clf_params):
    X, y = toy_binary
    clf = CXRClassifier(**small_clf_params, backbone_kwargs={"widths": (8, 16, 16, 32),
                                                             "batch_norm": True}).fit(X, y)
    convs = [m for m in clf.module_.trunk.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8, 16, 16, 32]
    assert any(isinstance(m, nn.BatchNorm2d) for m in clf.module_.trunk.modules())
    assert clf.module_.n_features == 32
    for bad, match in [({"width": (8,)}, "unknown key 'width'.*did you mean 'widths'"),
                       ({"widths": ()}, "widths must be a non-empty tuple"),
                       ({"batch_norm": 1}, "batch_norm must be True or False")]:
        with pytest.raises(ValueError, match=match):
            CXRClassifier(**small_clf_params, backbone_kwargs=bad).fit(X, y)


def test_backbone_kwargs_torchvision():
    trunk = build_trunk("resnet18", backbone_kwargs={"zero_init_residual": True})[0]
    assert torch.count_nonzero(trunk.layer1[0].bn2.weight) == 0
    with pytest.raises(ValueError, match=r"backbone_kwargs=\{'depth': 3\} do not fit "
                                         r"torchvision's 'resnet18' builder"):
        build_trunk("resnet18", backbone_kwargs={"depth": 3})


def test_random_frozen_torchvision_backbone_warns():
    with pytest.warns(UserWarning, match=r"backbone 'resnet18' with weights=None and "
                                         r"freeze=True: the frozen layers keep their random"):
        build_model("resnet18", 2, freeze=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_model("resnet18", 2, freeze=False)
        build_model("simple_cnn", 2, in_channels=1, freeze=True)


def test_constant_frozen_features_are_refused(small_clf_params):
    """EfficientNet with random weights gives the same features for every image."""
    rng = np.random.default_rng(0)
    X = rng.random((8, 3, 32, 32), dtype=np.float32)
    y = np.array([0, 1] * 4)
    clf = CXRClassifier(backbone="efficientnet_b0", freeze=True, max_epochs=1,
                        batch_size=4, validation_fraction=0, random_state=0)
    with pytest.warns(UserWarning, match="efficientnet_b0"), \
            pytest.raises(ValueError, match=r"the frozen part of backbone 'efficientnet_b0' "
                                            r"gives the same features for every training"):
        clf.fit(X, y)


@pytest.mark.parametrize("pooling", [None, "max", "flatten"])
def test_grad_cam_layer_names_unchanged_by_pooling(pooling):
    from cxr_estimators.explain import _default_layer

    model = build_model("resnet18", 2, in_channels=1, pooling=pooling,
                        image_size=(64, 64)).eval()
    assert _default_layer(model, torch.rand(1, 1, 64, 64)) == "trunk.layer4"


def test_new_head_and_augmentation_survive_save_and_load(tmp_path, toy_binary,
                                                          small_clf_params):
    import cxr_estimators

    X, y = toy_binary
    clf = CXRClassifier(**{**small_clf_params, "neurons": (16, 8)}, pooling="flatten",
                        head_batch_norm=True, input_dropout=0.1,
                        backbone_kwargs={"widths": (8, 16, 16), "batch_norm": True},
                        augment={"zoom": (1.05, 1.15), "fill": "nearest", "shear": 5},
                        weight_decay=1e-4, weight_decay_scope="head",
                        optimizer_kwargs={"betas": (0.8, 0.99)}, sampling="balanced",
                        early_stopping={"patience": 2, "monitor": "roc_auc"}).fit(X, y)
    path = tmp_path / "model.safetensors"
    cxr_estimators.save(clf, path)
    loaded = cxr_estimators.load(path)
    assert loaded.get_params()["neurons"] == (16, 8)
    assert loaded.best_epoch_ == clf.best_epoch_
    np.testing.assert_array_equal(loaded.predict_proba(X), clf.predict_proba(X))


def _decays(clf):
    return {id(p): g["weight_decay"] for g in clf.net_.optimizer_.param_groups
            for p in g["params"]}


def test_weight_decay_scope_patterns_pick_the_layers(toy_binary, small_clf_params):
    """Study D: L2 on five of six conv layers; study E: the dense layer, not the output."""
    X, y = toy_binary
    params = {**small_clf_params, "backbone_kwargs": {"widths": (4, 4, 4, 4, 4, 4)},
              "max_epochs": 1}
    clf = CXRClassifier(**params, weight_decay=2e-3,
                        weight_decay_scope=["trunk.features.[1-5].0.weight"]).fit(X, y)
    decay = _decays(clf)
    decayed = {f"trunk.features.{i}.0.weight" for i in range(1, 6)}
    for name, p in clf.module_.named_parameters():
        assert decay[id(p)] == (2e-3 if name in decayed else 0.0), name
    cached = CXRClassifier(**params, freeze=True, cache=True, head_batch_norm=True,
                           weight_decay=1e-3, weight_decay_scope=["head.0.weight"]).fit(X, y)
    head, decay = cached.module_.head, _decays(cached)
    assert [decay[id(p)] for p in (head[0].weight, head[4].weight)] == [1e-3, 0.0]


def test_weight_decay_scope_pattern_matching_nothing(toy_binary, small_clf_params):
    X, y = toy_binary
    clf = CXRClassifier(**small_clf_params, weight_decay=1e-3,
                        weight_decay_scope=["head.0.weight", "head.O.weight"])
    with pytest.raises(ValueError, match=r"pattern 'head.O.weight' matches no parameter.*"
                                         r"did you mean 'head\.\d\.weight'"):
        clf.fit(X, y)


def test_head_order_places_batchnorm_after_the_relu():
    bn_act = make_head(8, 2, 4, batch_norm=True)
    act_bn = make_head(8, 2, 4, batch_norm=True, order="act_bn")
    assert [type(m).__name__ for m in bn_act] == [
        "Linear", "BatchNorm1d", "ReLU", "Dropout", "Linear"]
    assert [type(m).__name__ for m in act_bn] == [
        "Linear", "ReLU", "BatchNorm1d", "Dropout", "Linear"]
    with pytest.raises(ValueError, match="head_order='relu_bn' is not one of"):
        make_head(8, 2, 4, batch_norm=True, order="relu_bn")


def test_scope_patterns_and_head_order_survive_save_and_load(toy_binary, small_clf_params,
                                                             tmp_path):
    from cxr_estimators import load, save

    X, y = toy_binary
    clf = CXRClassifier(**{**small_clf_params, "max_epochs": 1}, head_batch_norm=True,
                        head_order="act_bn", weight_decay=1e-3,
                        weight_decay_scope=["head.0.weight"]).fit(X, y)
    save(clf, tmp_path / "m.cxr")
    again = load(tmp_path / "m.cxr")
    assert again.weight_decay_scope == ["head.0.weight"] and again.head_order == "act_bn"
    assert isinstance(again.module_.head[1], nn.ReLU)
    np.testing.assert_allclose(again.predict_proba(X[:4]), clf.predict_proba(X[:4]),
                               atol=1e-6)
