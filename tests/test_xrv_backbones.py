"""torchxrayvision's CXR models as backbones (``xrv:<name>``). The tests write the weight
files (a pickled model, as torchxrayvision releases them, into its cache folder under a
temporary HOME; or a state_dict); nothing is downloaded."""

import warnings

import numpy as np
import pytest
import torch

with warnings.catch_warnings():  # it sets warnings.filterwarnings("ignore") on import
    xrv = pytest.importorskip("torchxrayvision")

from cxr_estimators import CXRClassifier, ImageLoader, WeightsUnavailableError  # noqa: E402
from cxr_estimators.backbones import build_backbone, loader_params  # noqa: E402
from cxr_estimators.backbones.xrv_models import cache_file  # noqa: E402

NAME = "densenet121-res224-all"


@pytest.fixture
def xrv_home(tmp_path, monkeypatch):
    """torchxrayvision's cache folder (~/.torchxrayvision/models_data/) in a temp HOME."""
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def _released_file(seed=0):
    """A file like torchxrayvision's releases: a whole pickled DenseNet."""
    torch.manual_seed(seed)
    model = xrv.models.DenseNet(weights=None)
    path = cache_file(NAME)
    import os

    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(model, path)
    return model, path


def test_importing_torchxrayvision_keeps_our_warnings(monkeypatch):
    """It calls warnings.filterwarnings("ignore") on import: the registry undoes that."""
    import sys

    for name in [n for n in sys.modules if n.split(".")[0] == "torchxrayvision"]:
        monkeypatch.delitem(sys.modules, name)  # imported afresh, restored afterwards
    before = list(warnings.filters)
    build_backbone(f"xrv:{NAME}", in_channels=1)
    assert warnings.filters == before


def test_weights_from_the_cache_folder_loaded_safely(xrv_home):
    model, path = _released_file()
    assert path.startswith(str(xrv_home))
    spec = build_backbone(f"xrv:{NAME}", "DEFAULT", in_channels=1)
    assert spec.weights_source == path and spec.n_features == 1024 and spec.in_channels == 1
    torch.testing.assert_close(spec.module.model.features.denseblock4.denselayer16.conv2.weight,
                               model.features.denseblock4.denselayer16.conv2.weight)
    x = torch.rand(2, 1, 64, 64) * 2048 - 1024
    model.eval(), spec.module.eval()
    with torch.no_grad():  # its own features2 (no input_resolution: built without weights)
        torch.testing.assert_close(spec.module(x), model.features2(x))


def test_missing_cache_file_names_where_to_place_it(xrv_home):
    with pytest.raises(WeightsUnavailableError) as info:
        build_backbone(f"xrv:{NAME}", "DEFAULT", in_channels=1)
    assert cache_file(NAME) in str(info.value) and str(xrv_home) in str(info.value)
    assert "weights='/path/to/file.pth'" in str(info.value)


def test_pathology_outputs_as_features(tmp_path):
    torch.manual_seed(1)
    model = xrv.models.DenseNet(weights=None).eval()
    torch.save(model.state_dict(), tmp_path / "state.pth")  # a state_dict works too
    spec = build_backbone(f"xrv:{NAME}", str(tmp_path / "state.pth"), in_channels=1,
                          backbone_kwargs={"outputs": "pathologies"})
    assert spec.n_features == 18 and spec.extras["pathologies"][8] == "Pneumonia"
    x = torch.rand(2, 1, 64, 64) * 2048 - 1024
    with torch.no_grad():
        torch.testing.assert_close(spec.module.eval()(x), model(x))  # its raw logits


def test_weights_of_another_architecture_name_the_first_mismatched_key(tmp_path):
    import torchvision

    torch.save(torchvision.models.densenet121().state_dict(), tmp_path / "tv.pth")
    with pytest.raises(ValueError, match=r"first mismatched tensor 'features\.conv0\.weight' "
                                         r"has shape \(64, 3, 7, 7\) in the file"):
        build_backbone(f"xrv:{NAME}", str(tmp_path / "tv.pth"), in_channels=1)


def test_image_loader_gives_the_xrv_range_and_a_frozen_trunk_trains_our_head(
        xrv_home, toy_binary):
    params = loader_params(f"xrv:{NAME}")
    assert params == {"size": (224, 224), "channels": 1, "normalize": ((0.5,), (1 / 2048,)),
                      "interpolation": "bilinear"}
    X, y = toy_binary
    images = ImageLoader(size=32, channels=1, normalize="xrv").fit_transform(X)
    assert images.min() >= -1024 and images.max() <= 1024 and images.max() > 500
    _released_file()
    clf = CXRClassifier(backbone=f"xrv:{NAME}", weights="DEFAULT", freeze=True,
                        max_epochs=1, batch_size=16, random_state=0).fit(images, y)
    assert all(not p.requires_grad for p in clf.module_.trunk.parameters())
    assert clf.predict_proba(images[:3]).shape == (3, 2)
    with pytest.raises(ValueError, match=r"X has 3 channels .* takes 1.*channels=1"):
        CXRClassifier(backbone=f"xrv:{NAME}", max_epochs=1).fit(np.repeat(images, 3, 1), y)


def test_feature_cache_keeps_features_and_pathologies_apart(toy_binary):
    """Same weights, other outputs: the frozen-feature cache must not mix them up."""
    X, y = toy_binary
    images = ImageLoader(size=32, channels=1, normalize="xrv").fit_transform(X)
    common = dict(backbone=f"xrv:{NAME}", freeze=True, cache=True, max_epochs=1,
                  batch_size=16, random_state=0)
    with pytest.warns(UserWarning, match="random initialisation"):
        features = CXRClassifier(**common).fit(images, y)
    with pytest.warns(UserWarning, match="random initialisation"):
        pathologies = CXRClassifier(**common,
                                    backbone_kwargs={"outputs": "pathologies"}).fit(images, y)
    assert features.module_.head[0].in_features == 1024
    assert pathologies.module_.head[0].in_features == 18


def test_xrv_input_range_is_not_taken_for_raw_pixels():
    """torchxrayvision's [-1024, 1024] input is wide but signed: the 0-255 check (whose
    pixels are never negative) stays quiet for it and still fires for raw pixels."""
    import warnings

    from cxr_estimators._inputs import check_float_scale

    rng = np.random.default_rng(0)
    xrv_scaled = rng.uniform(-1024, 1024, (4, 1, 8, 8)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_float_scale(xrv_scaled, None)
    with pytest.warns(UserWarning, match="0-255 pixels"):
        check_float_scale(np.abs(xrv_scaled) / 4, None)
