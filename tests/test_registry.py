"""The backbone registry: names, families, what it records per backbone, resnet50v2,
and the one error for weights that cannot be had (offline: TORCH_HOME an empty folder,
downloads made to fail; nothing is downloaded)."""

import os
import urllib.error

import numpy as np
import pytest
import torch
import torchvision
from sklearn.model_selection import GridSearchCV

from cxr_estimators import CXRClassifier, WeightsUnavailableError
from cxr_estimators.backbones import (build_backbone, build_model, list_backbones,
                                      loader_params)
from cxr_estimators.backbones.keras_resnet_v2 import ResNet50V2, keras_parameter_count


def test_list_backbones_filters_by_pattern():
    assert list_backbones("resnet50*") == ["resnet50", "resnet50v2"]
    assert "simple_cnn" in list_backbones() and "timm:resnet18" in list_backbones()
    assert all(n.startswith("timm:") for n in list_backbones("timm:*"))


@pytest.mark.parametrize("name, match", [
    ("resnet50_v2", "did you mean 'resnet50v2'"),
    ("timm:convnext_tiyn", "did you mean 'convnext_tiny'"),
    ("xrv:densenet121-res224-al", "did you mean 'densenet121-res224-all'"),
    ("tim:resnet18", "unknown family prefix 'tim:'; .*did you mean 'timm:'"),
])
def test_unknown_names_suggest_the_closest(name, match):
    with pytest.raises(ValueError, match=match):
        build_backbone(name)


def test_missing_extra_names_the_pip_command(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "timm", None)  # import timm now raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'cxr_estimators\[timm\]'"):
        build_backbone("timm:resnet18")
    assert list_backbones("timm:*") == []  # listing skips a family not installed


def test_registry_records_what_the_rest_reads():
    spec = build_backbone("resnet18")
    assert spec.n_features == 512 and spec.in_channels == 3
    assert spec.blocks[-1] == "layer4" and spec.cam_layers[-1] == "layer4"
    assert spec.weights_source == "random init" and spec.normalization is None
    net = build_model("vgg16", 2, pooling="avg", freeze=1, weights=None)
    assert net.cam_layers[-1] == "trunk.features.29"  # the ReLU before vgg's last pool
    assert [n for n in net.block_names] == ["trunk.features"]


def test_loader_params_from_the_weights_metadata():
    """torchvision's transforms(): EfficientNet-B4 is bicubic at 380 px."""
    params = loader_params("efficientnet_b4")
    assert params["size"] == (380, 380) and params["interpolation"] == "bicubic"
    assert params["normalize"] == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert params["center_crop"] == pytest.approx(380 / 384, abs=1e-4)
    assert loader_params("resnet50v2")["normalize"] == ((0.5,) * 3, (0.5,) * 3)


# ------------------------------------------------------------------ resnet50v2
def test_resnet50v2_counts_keras_parameters():
    """keras.applications.ResNet50V2(include_top=False).count_params(): 23,564,800, of
    which 23,519,360 trainable (Keras counts BatchNorm's moving mean and variance)."""
    model = ResNet50V2()
    assert keras_parameter_count(model) == 23_564_800
    assert sum(p.numel() for p in model.parameters()) == 23_519_360


def test_resnet50v2_layers_as_keras_builds_them():
    model = ResNet50V2().eval()
    x = torch.rand(1, 3, 224, 224)
    maps = {}

    def record(name):
        def hook(module, inputs, out):
            maps[name] = tuple(out.shape[1:])
        return hook

    for name in ("conv2", "conv3", "conv4", "conv5"):
        model.get_submodule(name).register_forward_hook(record(name))
    assert model(x).shape == (1, 2048)
    # stride on the *last* block of stages 2-4: 56 -> 28 -> 14 -> 7, stage 5 keeps 7
    assert maps == {"conv2": (256, 28, 28), "conv3": (512, 14, 14),
                    "conv4": (1024, 7, 7), "conv5": (2048, 7, 7)}
    block = model.conv2.block1
    assert block.conv1.bias is None and block.conv3.bias is not None  # Keras' use_bias
    assert isinstance(block.shortcut, torch.nn.Conv2d) and block.shortcut.bias is not None
    assert isinstance(model.conv2.block3.shortcut, torch.nn.MaxPool2d)
    assert block.preact_bn.eps == pytest.approx(1.001e-5)


def test_resnet50v2_local_weights_round_trip_and_mismatch(tmp_path):
    torch.manual_seed(3)
    source = ResNet50V2()
    torch.save(source.state_dict(), tmp_path / "v2.pth")
    spec = build_backbone("resnet50v2", str(tmp_path / "v2.pth"))
    torch.testing.assert_close(spec.module.conv4.block2.conv2.weight,
                               source.conv4.block2.conv2.weight)
    torch.save(torchvision.models.resnet50().state_dict(), tmp_path / "v1.pth")
    with pytest.raises(ValueError, match=r"first mismatched tensor 'conv1.bias' is not in "
                                         r"the file.*another architecture"):
        build_backbone("resnet50v2", str(tmp_path / "v1.pth"))
    with pytest.raises(ValueError, match="Keras' ImageNet weights are not converted"):
        build_backbone("resnet50v2", "DEFAULT")


# ------------------------------------------------------------------ weights offline
@pytest.fixture
def offline(tmp_path, monkeypatch):
    """An empty TORCH_HOME and a download that fails as without network."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    calls = []

    def no_network(url, *args, **kwargs):
        calls.append(url)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return calls


def test_torchvision_weights_offline_name_the_file_to_place(offline, tmp_path):
    entry = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    expected = os.path.join(str(tmp_path / "torch_home"), "hub", "checkpoints",
                            os.path.basename(entry.url))
    with pytest.raises(WeightsUnavailableError) as info:
        build_backbone("resnet18", "DEFAULT")
    message = str(info.value)
    assert expected in message and "weights='/path/to/file.pth'" in message
    assert "URLError" in message and offline  # the download was tried, and failed


def test_a_folder_named_default_does_not_change_weights_default(offline, tmp_path,
                                                                 monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "DEFAULT").mkdir()
    with pytest.raises(WeightsUnavailableError, match="IMAGENET1K_V1"):
        build_backbone("resnet18", "DEFAULT")
    (tmp_path / "DEFAULT").rmdir()
    (tmp_path / "DEFAULT").write_bytes(b"not weights")
    with pytest.raises(WeightsUnavailableError, match="IMAGENET1K_V1"):
        build_backbone("resnet18", "DEFAULT")


@pytest.mark.parametrize("backbone", ["resnet18", "simple_cnn", "resnet50v2",
                                      "timm:test_resnet", "xrv:densenet121-res224-all"])
def test_missing_weights_file_is_the_same_error(backbone, tmp_path):
    with pytest.raises(WeightsUnavailableError, match="nope.pth.*does not exist"):
        build_backbone(backbone, str(tmp_path / "nope.pth"), in_channels=1)


def test_grid_search_fails_before_any_training(offline, toy_binary, monkeypatch):
    """The error comes while the model is built: no epoch runs, and with
    error_score="raise" (the README's search) it surfaces once, at the first fit."""
    from cxr_estimators import _training

    trained = []
    monkeypatch.setattr(_training._Net, "fit_loop",
                        lambda self, *a, **k: trained.append(1))
    X, y = toy_binary
    X = np.repeat(X, 3, axis=1)
    search = GridSearchCV(CXRClassifier(backbone="resnet18", weights="DEFAULT",
                                        max_epochs=1),
                          {"lr": [1e-3, 1e-4]}, cv=2, error_score="raise")
    with pytest.raises(WeightsUnavailableError, match="hub/checkpoints"):
        search.fit(X, y)
    assert trained == [] and len(offline) == 1


def test_weights_file_for_another_channel_count(tmp_path):
    torch.save(build_backbone("simple_cnn", in_channels=3).module.state_dict(),
               tmp_path / "rgb.pth")
    with pytest.raises(ValueError, match=r"'features\.0\.0\.weight' takes 3 input "
                                         r"channel\(s\) and the model 1.*channels=3"):
        build_backbone("simple_cnn", str(tmp_path / "rgb.pth"), in_channels=1)
