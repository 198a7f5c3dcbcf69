"""Duplicates, leakage between splits, odd images; the measured PneumoniaMNIST counts."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from conftest_data import SHARED_NPZ, noise_image, save
from cxr_estimators.audit import AuditReport, audit_dataset, find_duplicates, perceptual_hash
from cxr_estimators.datasets import load_medmnist


def _images(n=6, seed=0):
    return np.stack([noise_image(seed + k) for k in range(n)])


def test_exact_duplicates_within_one_set():
    X = _images()
    X[3] = X[0]
    X[5] = X[0]
    assert find_duplicates(X) == [(0, 3), (0, 5), (3, 5)]
    assert find_duplicates(_images()) == []


def test_exact_duplicates_across_sets_index_each_side():
    A, B = _images(4), _images(3, seed=100)
    B[2] = A[1]
    assert find_duplicates(A, B) == [(1, 2)]


def test_exact_needs_equal_shape_and_dtype():
    a = np.zeros((2, 4, 4), dtype=np.uint8)
    assert find_duplicates([a[0], np.zeros((2, 8), np.uint8), a[1].astype(np.int8)]) == []


def test_phash_finds_rescaled_and_reencoded_copies(tmp_path):
    base = np.asarray(Image.fromarray(noise_image(1, (8, 8))).resize((64, 64)))
    bigger = np.asarray(Image.fromarray(base).resize((96, 96)))
    rgb = np.repeat(base[..., None], 3, axis=-1)
    others = [np.asarray(Image.fromarray(noise_image(k, (8, 8))).resize((64, 64)))
              for k in range(2, 5)]
    X = [base, bigger, rgb] + others
    assert find_duplicates(X) == []  # different shapes: never exact
    pairs = find_duplicates(X, method="phash", max_distance=4)
    assert {(0, 1), (0, 2), (1, 2)} <= set(pairs)
    assert all(i < 3 and j < 3 for i, j in pairs)
    jpeg = save(tmp_path / "copy.jpg", base, quality=70)
    assert find_duplicates([jpeg], [base], method="phash", max_distance=4) == [(0, 0)]
    assert 0 <= perceptual_hash(base) < 2**64


def test_paths_are_decoded(tmp_path):
    paths = [save(tmp_path / f"{k}.png", img) for k, img in enumerate(_images(3))]
    paths.append(save(tmp_path / "copy.png", noise_image(0)))
    assert find_duplicates(paths) == [(0, 3)]


def test_bad_arguments_are_named():
    X = _images(2)
    with pytest.raises(ValueError, match="method"):
        find_duplicates(X, method="md5")
    with pytest.raises(ValueError, match="max_distance=3 needs method='phash'"):
        find_duplicates(X, max_distance=3)
    with pytest.raises(ValueError, match="max_distance"):
        find_duplicates(X, method="phash", max_distance=65)


def test_audit_report_on_arrays():
    X = _images(8).astype(np.float32) / 255
    X[1] = X[0]  # duplicate, same label
    X[3] = X[2]  # duplicate, conflicting label
    X[4] = 0.02  # dark and uniform
    X[5] = 0.97  # bright and uniform
    y = np.array(["a", "a", "a", "b", "a", "b", "a", "b"])
    other = np.stack([X[6], _images(1, seed=50)[0] / 255.0]).astype(np.float32)
    report = audit_dataset(X, y, groups=list("pqrstuvw"), X_other=other,
                           groups_other=["w", "z"])
    assert report.class_counts == {"a": 5, "b": 3}
    assert report.duplicate_groups == [[0, 1], [2, 3]]
    assert report.label_conflicts == [[2, 3]]
    assert report.cross_duplicates == [(6, 0)]
    assert report.shared_patients == ["w"]
    assert report.odd_images == {4: ["very dark", "nearly uniform"],
                                 5: ["very bright", "nearly uniform"]}
    text = str(report)
    assert "2 groups (4 images), 1 with conflicting labels" in text
    assert "patients in both sets: 1" in text
    json.dumps(report.to_dict())


def test_audit_report_on_paths_flags_colour_and_aspect(tmp_path):
    gray = save(tmp_path / "gray.png", noise_image(0, (32, 32)))
    rgb_gray = save(tmp_path / "rgb_gray.png",
                    np.repeat(noise_image(1, (32, 32))[..., None], 3, axis=-1))
    photo = np.zeros((32, 32, 3), dtype=np.uint8)
    photo[..., 0], photo[..., 1] = 200, noise_image(2, (32, 32)) // 2
    colour = save(tmp_path / "photo.jpg", photo)
    strip = save(tmp_path / "strip.png", noise_image(3, (10, 40)))
    report = audit_dataset([gray, rgb_gray, colour, strip])
    assert report.image_modes == {"L": 2, "RGB": 2}
    assert report.image_sizes == {"32x32": 3, "10x40": 1}
    assert report.odd_images == {2: ["colour image (likely not a radiograph)"],
                                 3: ["extreme aspect ratio"]}
    assert isinstance(report, AuditReport)


def test_audit_checks_lengths():
    with pytest.raises(ValueError, match="y has 1 labels but X has 2"):
        audit_dataset(_images(2), y=[0])


@pytest.mark.skipif(not os.path.exists(SHARED_NPZ), reason="../shared/data not present")
def test_pneumoniamnist_measured_duplicates():
    train, val, test = (load_medmnist(SHARED_NPZ, s) for s in ("train", "val", "test"))
    within_train = find_duplicates(train.images)
    assert len(within_train) == 18  # 18 pairs, no image in three copies
    labels = train.target[np.array(within_train)]
    assert (labels[:, 0] == labels[:, 1]).all()  # no label conflicts
    assert int((labels[:, 0] == 1).sum()) == 17  # 17 pneumonia pairs + 1 normal pair
    assert len(find_duplicates(val.images)) == 0
    assert len(find_duplicates(test.images)) == 3
    assert len(find_duplicates(train.images, val.images)) == 10  # train/val leakage
    assert len(find_duplicates(train.images, test.images)) == 0
    assert len(find_duplicates(val.images, test.images)) == 0
