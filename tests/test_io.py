"""read_image: every Pillow mode, EXIF, DICOM, bad files, decompression bombs, cache."""

import os
import sys

import numpy as np
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from conftest_data import gradient, noise_image, png_claiming_size, save, write_bad_files, \
    write_dicom
from cxr_estimators import io as cio
from cxr_estimators.io import (ImageNotFoundError, ImagePermissionError, ImageReadError,
                               cache_info, check_image_file, clear_cache, read_image,
                               set_cache_bytes)


@pytest.fixture(autouse=True)
def fresh_cache():
    clear_cache()
    yield
    set_cache_bytes(cio.DEFAULT_CACHE_BYTES)
    clear_cache()


def test_grayscale_png_is_2d_float32_in_unit_range(tmp_path):
    path = save(tmp_path / "g.png", gradient())
    img = read_image(path)
    assert img.shape == (12, 16) and img.dtype == np.float32
    assert img.min() == 0.0 and img.max() == 1.0


def test_16bit_png_uses_full_bit_range(tmp_path):
    raw = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    path = save(tmp_path / "deep.png", raw)
    assert Image.open(path).mode.startswith("I")
    np.testing.assert_allclose(read_image(path), raw / 65535.0, atol=1e-6)


@pytest.mark.parametrize("mode,expected", [("I", 1000 / 65535.0), ("F", 0.25)])
def test_int32_and_float_tiffs(tmp_path, mode, expected):
    value = 1000 if mode == "I" else 0.25
    arr = np.full((4, 5), value, dtype=np.int32 if mode == "I" else np.float32)
    arr[0, 0] = 0
    path = save(tmp_path / f"{mode}.tif", Image.fromarray(arr, mode=mode))
    img = read_image(path)
    assert img.shape == (4, 5)
    assert img[1, 1] == pytest.approx(expected, rel=1e-6) and img[0, 0] == 0


def test_float_tiff_outside_unit_range_is_min_max_scaled(tmp_path):
    arr = np.array([[-5.0, 0.0, 5.0]], dtype=np.float32)
    img = read_image(save(tmp_path / "f.tif", Image.fromarray(arr, mode="F")))
    np.testing.assert_allclose(img, [[0.0, 0.5, 1.0]])


def test_one_bit_png(tmp_path):
    bits = Image.fromarray(gradient() > 128).convert("1")
    img = read_image(save(tmp_path / "bits.png", bits))
    assert img.shape == (12, 16) and set(np.unique(img)) == {0.0, 1.0}


def test_la_drops_alpha(tmp_path):
    la = Image.merge("LA", [Image.fromarray(gradient()), Image.new("L", (16, 12), 0)])
    img = read_image(save(tmp_path / "la.png", la))
    np.testing.assert_allclose(img, gradient() / 255.0, atol=1e-6)


def test_rgba_drops_alpha_not_composited(tmp_path):
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0] = 255  # red, fully transparent
    img = read_image(save(tmp_path / "rgba.png", rgba))
    assert img.shape == (4, 4, 3)
    np.testing.assert_array_equal(img[0, 0], [1.0, 0.0, 0.0])


def test_gray_palette_is_2d_colour_palette_is_rgb(tmp_path):
    gray = read_image(save(tmp_path / "p_gray.png", Image.fromarray(gradient()).convert("P")))
    assert gray.shape == (12, 16)
    np.testing.assert_allclose(gray, gradient() / 255.0, atol=1e-6)
    colour = np.zeros((6, 6, 3), dtype=np.uint8)
    colour[:3, :, 0] = 200
    pal = Image.fromarray(colour).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    img = read_image(save(tmp_path / "p_col.png", pal))
    assert img.shape == (6, 6, 3) and img[0, 0, 0] > 0.7 and img[5, 5].max() < 0.05


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    path = save(tmp_path / "cmyk.jpg", Image.new("CMYK", (10, 8), (0, 0, 0, 0)))
    img = read_image(path)
    assert img.shape == (8, 10, 3) and img.min() > 0.9  # no ink = white


def test_exif_orientation_is_applied(tmp_path):
    im = Image.fromarray(np.zeros((10, 20), dtype=np.uint8))
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    path = save(tmp_path / "rot.jpg", im, exif=exif)
    assert read_image(path).shape == (20, 10)


#: Bad files that the header check already catches, with the reason each error gives.
HEADER_BAD = [("empty", "zero bytes"), ("text", "not a recognised image"),
              ("directory", "is a directory"), ("huge", "100000x100000")]


@pytest.mark.parametrize("reader,kind,reason",
                         [(read_image, *bad) for bad in HEADER_BAD + [("truncated", "truncated")]]
                         + [(check_image_file, *bad) for bad in HEADER_BAD])
def test_bad_files_raise_naming_file_and_reason(tmp_path, reader, kind, reason):
    """read_image decodes; check_image_file reads the header only (so not 'truncated')."""
    path = write_bad_files(tmp_path)[kind]
    with pytest.raises(ImageReadError, match=reason) as info:
        reader(path)
    assert path in str(info.value)


def test_missing_file_is_file_not_found_naming_path(tmp_path):
    path = str(tmp_path / "nope.png")
    with pytest.raises(FileNotFoundError, match="nope.png") as info:
        read_image(path)
    assert isinstance(info.value, ImageNotFoundError)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root can read any file")
def test_unreadable_file_permission_denied(tmp_path):
    path = save(tmp_path / "secret.png", gradient())
    os.chmod(path, 0)
    try:
        with pytest.raises(ImagePermissionError, match="permission denied"):
            read_image(path)
    finally:
        os.chmod(path, 0o644)


def test_permission_error_while_opening_is_reported(tmp_path, monkeypatch):
    path = save(tmp_path / "secret.png", gradient())

    def deny(name):
        raise PermissionError(13, "Permission denied", name)

    monkeypatch.setattr(cio, "_open_file", deny)
    with pytest.raises(PermissionError, match="secret.png.*permission denied"):
        read_image(path)


def test_max_pixels_refuses_before_decoding(tmp_path):
    path = save(tmp_path / "big.png", gradient())
    with pytest.raises(ImageReadError, match=r"big.png.*16x12 = 192 pixels.*max_pixels=100"):
        read_image(path, max_pixels=100)
    assert read_image(path, max_pixels=None).shape == (12, 16)
    with pytest.raises(ImageReadError, match="16x12"):  # also checked on a cache hit
        read_image(path, max_pixels=100)


def test_png_header_claiming_huge_size_is_refused(tmp_path):
    path = png_claiming_size(tmp_path / "bomb.png", 200_000, 100_000)
    with pytest.raises(ImageReadError, match=r"bomb.png.*200000x100000"):
        read_image(path)
    small = png_claiming_size(tmp_path / "bomb2.png", 10_000, 9_000)  # under Pillow's limit
    with pytest.raises(ImageReadError, match=r"bomb2.png.*10000x9000.*max_pixels"):
        read_image(small, max_pixels=1_000_000)


def test_dicom_monochrome1_window_and_rescale(tmp_path):
    pytest.importorskip("pydicom")
    pixels = np.array([[0, 1000, 2000, 4000]], dtype=np.uint16)
    plain = read_image(write_dicom(tmp_path / "m2.dcm", pixels))
    np.testing.assert_allclose(plain, [[0.0, 0.25, 0.5, 1.0]], atol=1e-6)
    inverted = read_image(write_dicom(tmp_path / "m1.dcm", pixels, photometric="MONOCHROME1"))
    np.testing.assert_allclose(inverted, 1 - plain, atol=1e-6)
    # slope 2, intercept -1000 → [-1000, 1000, 3000, 7000]; window 1000 ± 1000 → clip
    windowed = read_image(write_dicom(tmp_path / "w.dcm", pixels, window=(1000, 2000),
                                      slope=2, intercept=-1000))
    np.testing.assert_allclose(windowed, [[0.0, 0.5, 1.0, 1.0]], atol=1e-6)


def test_dicom_detected_by_magic_without_suffix(tmp_path):
    pytest.importorskip("pydicom")
    path = write_dicom(tmp_path / "scan.img", np.arange(6, dtype=np.uint16).reshape(2, 3))
    assert read_image(path).shape == (2, 3)


def test_dicom_without_pydicom_says_how_to_install(tmp_path, monkeypatch):
    path = tmp_path / "fake.dcm"
    path.write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 16)
    monkeypatch.setitem(sys.modules, "pydicom", None)
    with pytest.raises(ImportError, match=r"pip install 'cxr_estimators\[dicom\]'"):
        read_image(str(path))


def test_cache_returns_read_only_arrays_and_counts_hits(tmp_path):
    path = save(tmp_path / "c.png", gradient())
    first = read_image(path)
    with pytest.raises(ValueError):
        first[0, 0] = 0.5
    second = read_image(path)
    assert second is first
    info = cache_info()
    assert (info.hits, info.misses, info.currsize) == (1, 1, 1)


def test_cache_sees_changed_files(tmp_path):
    path = save(tmp_path / "c.png", gradient())
    old = read_image(path)
    save(path, np.zeros((3, 3), dtype=np.uint8))
    os.utime(path, ns=(0, 1))  # a different mtime even on coarse file systems
    assert read_image(path).shape == (3, 3) and old.shape == (12, 16)
    assert cache_info().nbytes == 3 * 3 * 4 + 12 * 16 * 4  # the stale entry ages out


def test_cache_is_bounded_by_bytes_and_evicts_least_recent(tmp_path):
    paths = [save(tmp_path / f"n{k}.png", noise_image(k)) for k in range(4)]  # 1 kB each
    per_image = 16 * 16 * 4
    set_cache_bytes(2 * per_image + 10)
    for path in paths:
        read_image(path)
    info = cache_info()
    assert (info.currsize, info.nbytes, info.max_bytes) == (2, 2 * per_image, 2 * per_image + 10)
    read_image(paths[3])  # most recent: still cached
    read_image(paths[0])  # evicted first: decoded again
    assert (cache_info().hits, cache_info().misses) == (1, 5)
    set_cache_bytes(per_image - 1)  # shrinking evicts; a too-large image is not cached
    assert cache_info().currsize == 0
    read_image(paths[1])
    assert cache_info().nbytes == 0
    set_cache_bytes(0)
    assert read_image(paths[2]).shape == (16, 16) and cache_info().currsize == 0
    with pytest.raises(ValueError, match="max_bytes must be a non-negative int"):
        set_cache_bytes(-1)
    assert cio.DEFAULT_CACHE_BYTES == 2**30


def _read_flat(paths):
    return np.stack([read_image(p).ravel() for p in paths])


def test_grid_search_decodes_each_file_once(tmp_path):
    paths = [save(tmp_path / f"img{k:02d}.png", noise_image(k, (8, 8))) for k in range(12)]
    y = np.array([0, 1] * 6)
    pipe = make_pipeline(FunctionTransformer(_read_flat), LogisticRegression(max_iter=200))
    search = GridSearchCV(pipe, {"logisticregression__C": [0.1, 1.0]}, cv=3)
    search.fit(np.array(paths), y)
    info = cache_info()
    assert info.misses == len(paths)  # every file decoded exactly once ...
    assert info.hits >= 5 * len(paths)  # ... though 6 fits + refit + scoring read them


def test_grid_search_over_more_than_256_files_decodes_nothing_twice(tmp_path):
    """A count-capped cache (256 entries) missed on every file of a second pass."""
    paths = [save(tmp_path / f"img{k:03d}.png", noise_image(k, (4, 4))) for k in range(300)]
    y = np.array([0, 1] * 150)
    pipe = make_pipeline(FunctionTransformer(_read_flat), LogisticRegression(max_iter=50))
    GridSearchCV(pipe, {"logisticregression__C": [0.1, 1.0]}, cv=2).fit(np.array(paths), y)
    first = cache_info()
    assert first.misses == len(paths) and first.currsize == len(paths)
    _read_flat(paths)  # a second pass
    assert cache_info().misses == len(paths)
    assert cache_info().hits == first.hits + len(paths)


def test_check_image_file_reads_headers_only(tmp_path):
    bad = write_bad_files(tmp_path)
    check_image_file(bad["truncated"])  # the header is intact: only decoding finds it
    check_image_file(save(tmp_path / "ok.png", gradient()))
    with pytest.raises(ImageReadError, match="max_pixels=100"):
        check_image_file(save(tmp_path / "big.png", gradient()), max_pixels=100)
    with pytest.raises(FileNotFoundError, match="nope.png"):
        check_image_file(tmp_path / "nope.png")
    assert cache_info().misses == 0  # nothing decoded


def test_check_image_file_dicom(tmp_path):
    pytest.importorskip("pydicom")
    check_image_file(write_dicom(tmp_path / "ok.dcm", np.zeros((2, 3), np.uint16)))
    fake = tmp_path / "fake.dcm"
    fake.write_text("not dicom at all")
    with pytest.raises(ImageReadError, match="fake.dcm.*could not be parsed"):
        check_image_file(fake)
