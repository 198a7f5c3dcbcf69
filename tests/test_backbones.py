import pytest
import torch
from torch import nn

from cxr_estimators.backbones import (
    available_backbones, build_model, build_trunk, find_last_conv, trunk_blocks,
)


def test_available_backbones_lists_torchvision_and_small_cnns():
    names = available_backbones()
    for name in ("resnet18", "resnet50", "densenet121", "mobilenet_v2", "efficientnet_b0",
                 "efficientnet_b4", "vgg16", "vgg19", "inception_v3", "simple_cnn", "deep_cnn"):
        assert name in names
    assert "fasterrcnn_resnet50_fpn" not in names  # detection models are not classifiers


@pytest.mark.parametrize("name, size", [
    ("simple_cnn", 28), ("deep_cnn", 28), ("resnet18", 32), ("mobilenet_v2", 32),
    ("efficientnet_b0", 32), ("densenet121", 32),
])
def test_forward_shapes_and_head(name, size):
    torch.manual_seed(0)
    model = build_model(name, 3, in_channels=1, neurons=7, dropout=0.25)
    head = list(model.head)
    assert isinstance(head[0], nn.Linear) and head[0].out_features == 7
    assert isinstance(head[1], nn.ReLU) and isinstance(head[2], nn.Dropout)
    assert head[2].p == 0.25 and head[3].out_features == 3
    model.eval()
    out = model(torch.rand(2, 1, size, size))
    assert out.shape == (2, 3)
    assert model.forward_features(torch.rand(2, 1, size, size)).shape == (2, model.n_features)


@pytest.mark.slow
@pytest.mark.parametrize("name, size", [("resnet50", 64), ("vgg16", 32), ("vgg19", 32),
                                        ("inception_v3", 80), ("efficientnet_b4", 64),
                                        ("convnext_tiny", 32), ("vit_b_16", 224)])
def test_forward_large_backbones(name, size):
    model = build_model(name, 2).eval()
    assert model(torch.rand(1, 3, size, size)).shape == (1, 2)


def test_grayscale_repeated_for_rgb_trunk():
    torch.manual_seed(0)
    model = build_model("resnet18", 2, in_channels=1).eval()
    gray = torch.rand(2, 1, 32, 32)
    torch.testing.assert_close(model(gray), model(gray.expand(-1, 3, -1, -1)))
    with pytest.raises(ValueError, match="X has 2 channels"):
        build_model("resnet18", 2, in_channels=2)


def test_small_cnn_shapes():
    simple = build_trunk("simple_cnn", in_channels=1)[0]
    deep = build_trunk("deep_cnn", in_channels=1)[0]
    assert len(simple.features) == 3
    assert [b[0].out_channels for b in deep.features] == [32, 64, 128, 256, 256]
    assert any(isinstance(m, nn.BatchNorm2d) for m in deep.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in simple.modules())


def test_trunk_blocks_and_last_conv():
    trunk = build_trunk("resnet18")[0]
    names = [type(b).__name__ for b in trunk_blocks(trunk)]
    assert names[-2:] == ["Sequential", "Sequential"]  # layer3, layer4
    assert find_last_conv(trunk) == "layer4.1.conv2"
    dense = build_trunk("densenet121")[0]
    assert type(trunk_blocks(dense)[-1]).__name__ == "BatchNorm2d"  # norm5 inside features
    with pytest.raises(ValueError, match="no nn.Conv2d"):
        find_last_conv(nn.Linear(2, 2))


def test_frozen_batchnorm_stays_in_eval_mode():
    model = build_model("deep_cnn", 2, in_channels=1, freeze=True)
    model.train()
    assert model.head.training
    assert not any(m.training for m in model.trunk.features)
    partly = build_model("deep_cnn", 2, in_channels=1, freeze=1)
    partly.train()
    assert [b.training for b in partly.trunk.features] == [False] * 4 + [True]


def test_small_cnn_rejects_named_weights():
    with pytest.raises(ValueError, match="has no pretrained weights"):
        build_trunk("simple_cnn", weights="DEFAULT")


def test_imagenet_weights_resolved_without_download(monkeypatch):
    """The Weights API path: the enum is resolved by name; loading is torchvision's own."""
    from cxr_estimators import backbones
    import torchvision

    seen = {}

    def fake_get_model(name, weights=None, **kwargs):
        seen["weights"] = weights
        return torchvision.models.resnet18(weights=None)

    monkeypatch.setattr(torchvision.models, "get_model", fake_get_model)
    _, _, _, enum = backbones.build_trunk("resnet18", weights="IMAGENET1K_V1")
    assert seen["weights"] is torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    assert enum is torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    backbones.build_trunk("resnet18", weights="DEFAULT")
    assert seen["weights"] is torchvision.models.ResNet18_Weights.DEFAULT


@pytest.mark.parametrize("name", ["inception_v3", "googlenet"])
def test_input_transform_same_with_and_without_weights(name, monkeypatch):
    """torchvision turns ``transform_input`` on only when it loads its weights; ``load``
    rebuilds a saved model without weights, so a pretrained model would have predicted
    differently once loaded. Both builds now ask for it."""
    import torchvision

    asked = []
    real = torchvision.models.get_model

    def recording(model_name, weights=None, **kwargs):
        asked.append(kwargs.get("transform_input"))
        return real(model_name, weights=None, **kwargs)

    monkeypatch.setattr(torchvision.models, "get_model", recording)
    with_weights, *_ = build_trunk(name, weights="DEFAULT")  # resolved, not downloaded
    without, *_ = build_trunk(name, weights=None)
    assert asked == [True, True]
    assert with_weights.transform_input and without.transform_input


def test_imagenet_weights_from_torch_home_cache(tmp_path, monkeypatch):
    """Real Weights API path, offline: a file already in $TORCH_HOME is used, no download."""
    import os

    import torch.hub
    import torchvision
    from cxr_estimators import backbones

    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.manual_seed(7)
    reference = torchvision.models.resnet18(weights=None).state_dict()
    torch.save(reference, cache / os.path.basename(weights.url))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def no_download(*args, **kwargs):
        raise AssertionError("tests must never download weights")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    trunk, n_features, _, enum = backbones.build_trunk("resnet18", weights="IMAGENET1K_V1")
    assert enum is weights and n_features == 512
    torch.testing.assert_close(trunk.state_dict()["layer1.0.conv1.weight"],
                               reference["layer1.0.conv1.weight"])
