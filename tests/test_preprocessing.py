import numpy as np
import pytest
from PIL import Image
from sklearn.base import clone

from cxr_estimators import ImageLoader
from cxr_estimators.preprocessing import NORMALIZATION_PRESETS


def test_uint8_array_to_unit_tensor():
    X = np.stack([np.full((10, 12), 0, np.uint8), np.full((10, 12), 255, np.uint8)])
    out = ImageLoader(size=None, channels=1, normalize="unit").fit_transform(X)
    assert out.shape == (2, 1, 10, 12) and out.dtype == np.float32
    assert out[0].max() == 0.0 and out[1].min() == 1.0


@pytest.mark.parametrize("preset, lo, hi", [("minus_one_one", -1.0, 1.0), ("unit", 0.0, 1.0)])
def test_normalization_presets(preset, lo, hi):
    X = np.stack([np.zeros((8, 8), np.uint8), np.full((8, 8), 255, np.uint8)])
    out = ImageLoader(size=8, channels=3, normalize=preset).fit_transform(X)
    np.testing.assert_allclose(out[0], lo, atol=1e-6)
    np.testing.assert_allclose(out[1], hi, atol=1e-6)


def test_imagenet_normalization_per_channel():
    X = np.full((1, 4, 4), 255, np.uint8)
    out = ImageLoader(size=4, channels=3, normalize="imagenet").fit_transform(X)
    mean, std = NORMALIZATION_PRESETS["imagenet"]
    np.testing.assert_allclose(out[0, :, 0, 0], (1 - np.array(mean)) / np.array(std), rtol=1e-5)
    custom = ImageLoader(size=4, channels=1, normalize=([0.5], [0.25])).fit_transform(X)
    np.testing.assert_allclose(custom, 2.0, rtol=1e-6)


def test_uint16_and_float_inputs():
    X16 = np.full((1, 6, 6), 65535, np.uint16)
    assert ImageLoader(size=6, channels=1, normalize="unit").fit_transform(X16).min() == 1.0
    Xf = np.full((1, 6, 6), 0.25, np.float32)
    np.testing.assert_allclose(ImageLoader(size=6, channels=1, normalize="unit")
                               .fit_transform(Xf), 0.25)
    with pytest.raises(ValueError, match="image 0 is float with values in \\[3, 3\\]"):
        ImageLoader(size=6).fit_transform(np.full((1, 6, 6), 3.0))
    bad = np.zeros((2, 6, 6), np.float32)
    bad[1, 0, 0] = np.nan
    with pytest.raises(ValueError, match="image 1 contains NaN"):
        ImageLoader(size=6).fit_transform(bad)


def test_rgb_to_gray_and_gray_to_rgb():
    rgb = np.zeros((1, 5, 5, 3), np.uint8)
    rgb[..., 0] = 255  # pure red → luma 0.299
    gray = ImageLoader(size=5, channels=1, normalize="unit").fit_transform(rgb)
    np.testing.assert_allclose(gray, 0.299, atol=2e-3)
    g = np.full((1, 5, 5), 128, np.uint8)
    out = ImageLoader(size=5, channels=3, normalize="unit").fit_transform(g)
    assert out.shape == (1, 3, 5, 5)
    np.testing.assert_array_equal(out[:, 0], out[:, 2])


def test_resize_and_center_crop():
    img = np.zeros((1, 20, 20), np.uint8)
    img[:, 5:15, 5:15] = 255  # bright centre, dark border
    out = ImageLoader(size=(8, 10), channels=1, normalize="unit").fit_transform(img)
    assert out.shape == (1, 1, 8, 10)
    cropped = ImageLoader(size=10, channels=1, center_crop=0.5,
                          normalize="unit").fit_transform(img)
    np.testing.assert_allclose(cropped, 1.0)  # only the bright centre is left


def test_paths_any_pil_mode(tmp_path):
    arr = (np.arange(64 * 48) % 256).astype(np.uint8).reshape(48, 64)
    paths = []
    for mode in ("L", "RGB", "RGBA", "P", "LA"):
        p = tmp_path / f"img_{mode}.png"
        Image.fromarray(arr).convert(mode).save(p)
        paths.append(str(p))
    p16 = tmp_path / "img16.png"
    Image.fromarray((arr.astype(np.uint16) * 257)).save(p16)
    paths.append(str(p16))
    jpg = tmp_path / "img.jpg"
    Image.fromarray(arr).save(jpg, quality=95)
    paths.append(jpg)  # PathLike works too
    out = ImageLoader(size=32, channels=1, normalize="unit").fit_transform(paths)
    assert out.shape == (len(paths), 1, 32, 32)
    for i in range(1, len(paths)):  # all modes decode to (about) the same picture
        np.testing.assert_allclose(out[i], out[0], atol=0.03, err_msg=str(paths[i]))


def test_bad_inputs():
    with pytest.raises(ValueError, match="not a single path"):
        ImageLoader().fit_transform("a.png")
    with pytest.raises(ValueError, match="shape \\(3, 4\\): a single \\(H, W\\) image"):
        ImageLoader().fit_transform(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="image 1 has size \\(5, 5\\) but image 0 has"):
        ImageLoader(size=None).fit_transform([np.zeros((4, 4), np.uint8),
                                              np.zeros((5, 5), np.uint8)])
    with pytest.raises(ValueError, match="channels must be 1 or 3; got 2"):
        ImageLoader(channels=2).fit(None)
    with pytest.raises(ValueError, match="'normalize' parameter"):
        ImageLoader(normalize="zscore").fit(None)
    with pytest.raises(ValueError, match="std must be > 0"):
        ImageLoader(normalize=([0.5], [0.0])).fit(None)
    with pytest.raises(ValueError, match=r"normalize \(mean, std\) must be numbers; got "
                                         r"\(None, 0.5\)"):
        ImageLoader(normalize=(None, 0.5)).fit_transform(np.zeros((1, 4, 4), np.uint8))
    with pytest.raises(ValueError, match=r"image 1 has 0x5 pixels: an empty image"):
        ImageLoader(size=None).fit_transform([np.zeros((4, 4), np.uint8),
                                              np.zeros((0, 5), np.uint8)])


def test_missing_file_named(tmp_path):
    missing = tmp_path / "nope.png"
    with pytest.raises((FileNotFoundError, ValueError), match="nope.png"):
        ImageLoader().fit_transform([str(missing)])


@pytest.mark.parametrize("lazy", [False, True])
def test_read_errors_name_the_row_and_the_file(tmp_path, lazy):
    good = tmp_path / "ok.png"
    Image.fromarray(np.zeros((6, 6), np.uint8)).save(good)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    loader = ImageLoader(size=6, lazy=lazy)
    with pytest.raises(FileNotFoundError, match=r"image 1 of X: .*nope.png.*does not exist"):
        np.asarray(loader.fit_transform([str(good), str(tmp_path / "nope.png")]))
    with pytest.raises(ValueError, match=r"image 2 of X: .*empty.png.*zero bytes"):
        np.asarray(loader.fit_transform([str(good), str(good), str(empty)]))


def test_clone_and_stateless():
    loader = ImageLoader(size=16, channels=1, center_crop=0.8)
    assert clone(loader).get_params() == loader.get_params()
    X = np.zeros((2, 10, 10), np.uint8)
    np.testing.assert_array_equal(ImageLoader(size=16).transform(X),
                                  ImageLoader(size=16).fit(X).transform(X))


def test_differently_sized_images_as_list_or_object_array():
    """Images of several sizes come as a list or a ragged object array, never as paths."""
    rng = np.random.default_rng(0)
    images = [(rng.random(shape) * 255).astype(np.uint8) for shape in [(20, 30), (40, 40)]]
    ragged = np.empty(2, dtype=object)
    ragged[:] = images
    loader = ImageLoader(size=16, channels=1, normalize="unit")
    from_list = loader.fit_transform(images)
    assert from_list.shape == (2, 1, 16, 16)
    np.testing.assert_array_equal(loader.fit_transform(ragged), from_list)


# ------------------------------------------------------------------ input conveniences
def _png_files(tmp_path, n=3):
    paths = []
    for i in range(n):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(path)
        paths.append(str(path))
    return paths


def test_one_column_dataframe_of_paths_is_read_like_a_series(tmp_path):
    pd = pytest.importorskip("pandas")
    paths = _png_files(tmp_path)
    loader = ImageLoader(size=8, channels=1, normalize="unit")
    expected = loader.transform(paths)
    frame = pd.DataFrame({"path": paths})
    np.testing.assert_array_equal(loader.transform(frame), expected)
    np.testing.assert_array_equal(loader.transform(frame["path"]), expected)
    np.testing.assert_array_equal(np.asarray(ImageLoader(size=8, channels=1, normalize="unit",
                                                         lazy=True).transform(frame)), expected)
    frame["label"] = ["a", "b", "a"]
    with pytest.raises(ValueError, match=r"DataFrame with 2 columns \['path', 'label'\]"):
        loader.transform(frame)


@pytest.mark.parametrize("channels", [1, 3])
def test_channels_first_arrays(channels):
    rng = np.random.default_rng(0)
    last = rng.integers(0, 256, (4, 10, 12, channels), dtype=np.uint8)
    first = np.moveaxis(last, -1, 1)  # (n, C, H, W)
    loader = ImageLoader(size=None, channels=3, normalize="unit")
    expected = loader.transform(last)
    np.testing.assert_array_equal(loader.transform(first), expected)
    np.testing.assert_array_equal(loader.transform(list(first)), expected)  # one by one
    lazy = ImageLoader(size=None, channels=3, normalize="unit", lazy=True).transform(first)
    np.testing.assert_array_equal(np.asarray(lazy), expected)


def test_ambiguous_channel_layout_says_what_it_assumed():
    X = np.zeros((2, 3, 6, 3), np.uint8)  # (n, C=3, H=6, W=3) or (n, H=3, W=6, C=3)?
    with pytest.warns(UserWarning, match=r"shape \(3, 6, 3\) could be channels-first.*"
                                         r"assumed channels-last \(H, W, C\)"):
        out = ImageLoader(size=None, channels=3, normalize="unit").transform(X)
    assert out.shape == (2, 3, 3, 6)


def test_set_output_default_and_frames_refused():
    from sklearn.pipeline import Pipeline

    from cxr_estimators import CXRClassifier

    loader = ImageLoader(size=8)
    assert loader.set_output(transform="default") is loader
    pipe = Pipeline([("load", loader), ("clf", CXRClassifier())])
    assert pipe.set_output(transform="default") is pipe
    for frame in ("pandas", "polars"):
        with pytest.raises(ValueError, match=rf"set_output\(transform='{frame}'\): "
                                             r"ImageLoader outputs image batches .*cannot "
                                             rf"be {frame} DataFrames"):
            pipe.set_output(transform=frame)
    with pytest.raises(ValueError, match="transform='numpy'"):
        loader.set_output(transform="numpy")


def test_interpolation_filters():
    """bicubic (EfficientNet's) and lanczos differ from bilinear, stay in [0, 1] before
    normalisation; nearest keeps only source values; the default is unchanged."""
    rng = np.random.default_rng(0)
    X = (rng.random((2, 45, 37)) * 255).astype(np.uint8)
    out = {mode: ImageLoader(size=24, channels=1, normalize="unit",
                             interpolation=mode).fit_transform(X)
           for mode in ("bilinear", "bicubic", "nearest", "lanczos")}
    np.testing.assert_array_equal(out["bilinear"],
                                  ImageLoader(size=24, channels=1,
                                              normalize="unit").fit_transform(X))
    for mode in ("bicubic", "lanczos"):
        assert 0 <= out[mode].min() and out[mode].max() <= 1
        assert np.abs(out[mode] - out["bilinear"]).max() > 1e-3
    assert set(np.unique(np.rint(out["nearest"] * 255))) <= set(np.unique(X))
    with pytest.raises(ValueError, match="interpolation"):
        ImageLoader(interpolation="area").fit_transform(X)


def test_xrv_normalization_preset():
    X = np.array([[[0, 255]]], dtype=np.uint8)
    out = ImageLoader(size=None, channels=1, normalize="xrv").fit_transform(X)
    np.testing.assert_allclose(out.ravel(), [-1024, 1024])
