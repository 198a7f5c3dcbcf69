"""timm models as backbones (``timm:<name>``), on timm's tiny test models; nothing is
downloaded (hub downloads are made to fail)."""

import numpy as np
import pytest
import torch

timm = pytest.importorskip("timm")

from cxr_estimators import CXRClassifier, WeightsUnavailableError, load, save  # noqa: E402
from cxr_estimators.backbones import build_backbone, build_model  # noqa: E402
from cxr_estimators.explain import grad_cam  # noqa: E402


def test_timm_model_one_channel_blocks_and_cam_layers_from_feature_info():
    spec = build_backbone("timm:test_resnet", in_channels=1)
    assert spec.in_channels == 1 and spec.n_features == 96
    assert spec.module.model.conv1[0].in_channels == 1  # in_chans=1, no channel repeat
    assert spec.blocks == ("model.layer1", "model.layer2", "model.layer3", "model.layer4")
    assert spec.cam_layers[-1] == "model.layer4"
    assert spec.normalization == ((0.5,), (0.5,))  # pretrained_cfg, averaged to one channel
    assert spec.input_size == (160, 160) and spec.interpolation == "bilinear"
    assert spec.module(torch.rand(2, 1, 32, 32)).shape == (2, 96)


def test_classifier_fits_explains_and_reloads_a_timm_backbone(toy_binary, tmp_path):
    X, y = toy_binary
    X = np.kron(X, np.ones((1, 1, 2, 2), np.float32))  # 32 px
    clf = CXRClassifier(backbone="timm:test_resnet", freeze=2, pooling="avg", max_epochs=1,
                        batch_size=16, random_state=0)
    with pytest.warns(UserWarning, match="keep their random initialisation"):
        clf.fit(X, y)
    module = clf.module_
    trainable = {n.split(".")[1] for n, p in module.trunk.named_parameters()
                 if p.requires_grad}
    assert trainable == {"layer3", "layer4"}  # freeze=2: the last two feature_info blocks
    with pytest.warns(UserWarning, match="model.layer4"):  # 1x1 at 32 px: passed over
        heatmaps = grad_cam(clf, X[:2])
    assert heatmaps.shape == (2, 32, 32) and np.isfinite(heatmaps).all()
    save(clf, tmp_path / "timm.cxr")
    again = load(tmp_path / "timm.cxr")
    np.testing.assert_allclose(again.predict_proba(X[:4]), clf.predict_proba(X[:4]),
                               atol=1e-6)


def test_local_weights_file_through_pretrained_cfg_overlay(tmp_path):
    """A 3-channel timm checkpoint (its classifier included) loads into a 1-channel
    model: timm drops the classifier and sums the first conv over RGB."""
    torch.manual_seed(0)
    source = timm.create_model("test_resnet", pretrained=False)
    torch.save(source.state_dict(), tmp_path / "test_resnet.pth")
    spec = build_backbone("timm:test_resnet", str(tmp_path / "test_resnet.pth"),
                          in_channels=1)
    torch.testing.assert_close(spec.module.model.conv1[0].weight,
                               source.conv1[0].weight.sum(1, keepdim=True))
    torch.testing.assert_close(spec.module.model.layer4[0].conv1.weight,
                               source.layer4[0].conv1.weight)
    assert spec.weights_source == str(tmp_path / "test_resnet.pth")


def test_weights_of_another_architecture_name_the_first_mismatched_key(tmp_path):
    torch.save(timm.create_model("test_convnext").state_dict(), tmp_path / "convnext.pth")
    with pytest.raises(ValueError, match=r"first mismatched tensor 'conv1\.0\.weight' is "
                                         r"not in the file"):
        build_backbone("timm:test_resnet", str(tmp_path / "convnext.pth"), in_channels=1)


def test_pretrained_tag_offline_is_weights_unavailable(monkeypatch):
    from timm.models import _hub

    def no_network(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(_hub, "hf_hub_download", no_network)
    with pytest.raises(WeightsUnavailableError,
                       match=r"timm weights 'test_resnet'.*huggingface.co/timm/test_resnet"):
        build_backbone("timm:test_resnet", "DEFAULT", in_channels=1)
    with pytest.raises(ValueError, match="not a timm pretrained tag.*r160_in1k"):
        build_backbone("timm:test_resnet", "in22k", in_channels=1)


def test_vision_transformer_has_no_map_to_pool():
    with pytest.raises(ValueError, match=r"not a \(C, H, W\) map; use pooling=None"):
        build_model("timm:test_vit", 2, in_channels=1, pooling="avg", image_size=(160, 160))
