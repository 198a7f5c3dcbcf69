"""Loaders: folder trees, CSV files, MedMNIST archives, Kermany names, grouped CV."""

import os

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score
from sklearn.model_selection import (GridSearchCV, StratifiedGroupKFold, StratifiedKFold,
                                     train_test_split)

from conftest_data import (SHARED_NPZ, kermany_names, noise_image, save, write_bad_files,
                           write_csv_with_extra_fields)
from cxr_estimators.datasets import (load_image_csv, load_image_folder, load_medmnist,
                                     parse_kermany_filename)
from cxr_estimators.io import ImageReadError, clear_cache


@pytest.fixture(autouse=True)
def fresh_cache():
    clear_cache()


@pytest.fixture
def tree(tmp_path):
    """root/NORMAL, root/PNEUMONIA with Kermany names, junk files, an empty class."""
    root = tmp_path / "xray"
    for k, name in enumerate(["IM-0115-0001.jpeg", "NORMAL2-IM-0041-0001.jpeg"]):
        save(root / "NORMAL" / name, noise_image(k))
    for k, name in enumerate(["person1_virus_6.jpeg", "person12_bacteria_45.jpeg",
                              "person12_bacteria_46.jpeg"]):
        save(root / "PNEUMONIA" / name, noise_image(10 + k))
    (root / "PNEUMONIA" / ".DS_Store").write_bytes(b"\0\1")
    (root / "PNEUMONIA" / "notes.txt").write_text("ignored")
    os.makedirs(root / "EMPTY")
    return root


@pytest.mark.parametrize("name,expected", [
    ("person12_bacteria_45.jpeg", ("bacterial", "person12")),
    ("person1_virus_6.jpeg", ("viral", "person1")),
    ("NORMAL2-IM-0041-0001.jpeg", ("normal", "NORMAL2-IM-0041")),
    ("IM-0115-0001.jpeg", ("normal", "IM-0115")),
    ("/data/train/PNEUMONIA/person3_bacteria_10.jpeg", ("bacterial", "person3")),
])
def test_parse_kermany_filename(name, expected):
    assert parse_kermany_filename(name) == expected


def test_parse_kermany_filename_rejects_other_names():
    with pytest.raises(ValueError, match="scan_01.png"):
        parse_kermany_filename("scan_01.png")


def test_folder_labels_sorted_with_groups_and_empty_class_warning(tree):
    with pytest.warns(UserWarning, match="EMPTY.*contains no images"):
        data = load_image_folder(tree)
    assert list(data.target_names) == ["NORMAL", "PNEUMONIA"]
    assert list(data.filenames) == sorted(data.filenames) and len(data.filenames) == 5
    assert list(data.target) == ["NORMAL"] * 2 + ["PNEUMONIA"] * 3
    assert list(data.groups) == ["IM-0115", "NORMAL2-IM-0041", "person12", "person12",
                                 "person1"]  # '2' sorts before '_'

    assert data.skipped == [] and "5 images" in data.DESCR


def test_kermany_labels_give_three_classes(tree):
    with pytest.warns(UserWarning, match="EMPTY"):
        data = load_image_folder(tree, label_from="kermany")
    assert list(data.target_names) == ["bacterial", "normal", "viral"]
    assert dict(zip(map(os.path.basename, data.filenames), data.target))[
        "person1_virus_6.jpeg"] == "viral"


def test_folder_groups_none_for_non_kermany_names(tmp_path):
    save(tmp_path / "a" / "one.png", noise_image(0))
    save(tmp_path / "b" / "two.PNG", noise_image(1))
    data = load_image_folder(tmp_path)
    assert data.groups is None and list(data.target) == ["a", "b"]
    with pytest.raises(ValueError, match="one.png.*not a Kermany-style name"):
        load_image_folder(tmp_path, label_from="kermany")
    with pytest.warns(UserWarning, match="2 file"):
        assert len(load_image_folder(tmp_path, label_from="kermany",
                                     on_error="skip").skipped) == 2


def test_bad_files_raise_or_are_skipped_and_reported(tree):
    bad = write_bad_files(tree / "PNEUMONIA")
    # without decoding, the header check still catches empty, non-image and huge files
    with pytest.warns(UserWarning, match="EMPTY"), \
            pytest.raises(ImageReadError, match="empty.png.*zero bytes"):
        load_image_folder(tree)
    os.rmdir(bad["directory"])
    with pytest.warns(UserWarning) as record:
        unchecked = load_image_folder(tree, on_error="skip")
    assert any("3 file(s) skipped" in str(w.message) for w in record)
    assert {os.path.basename(p) for p, _ in unchecked.skipped} == {"empty.png", "notes.png",
                                                                   "huge.png"}
    assert len(unchecked.filenames) == 6  # truncated.jpg has a valid header: only decoding fails
    with pytest.warns(UserWarning, match="EMPTY"), \
            pytest.raises(ImageReadError, match="empty.png.*zero bytes"):
        load_image_folder(tree, check_images=True)
    os.makedirs(bad["directory"])
    with pytest.warns(UserWarning) as record:
        data = load_image_folder(tree, check_images=True, on_error="skip")
    assert any("5 file(s) skipped" in str(w.message) for w in record)
    skipped = {os.path.basename(p): reason for p, reason in data.skipped}
    assert set(skipped) == {"empty.png", "truncated.jpg", "notes.png", "x.png", "huge.png"}
    assert "truncated" in skipped["truncated.jpg"] and "directory" in skipped["x.png"]
    assert "100000x100000" in skipped["huge.png"]
    assert len(data.filenames) == 5


@pytest.mark.parametrize("kind, reason, exc_type", [
    ("empty", "zero bytes", ImageReadError),
    ("text", "not a recognised image", ImageReadError),
    ("directory", "is a directory", ValueError),
    ("huge", r"100000x100000.*decompression-bomb", ImageReadError),
    ("truncated", "truncated or corrupt", ImageReadError),  # found by decoding only
])
@pytest.mark.parametrize("check_images", [False, True])
def test_each_bad_file_raises_naming_it(tmp_path, kind, reason, exc_type, check_images):
    save(tmp_path / "a" / "ok.png", noise_image(0))
    bad = write_bad_files(tmp_path / "b")
    for other, path in bad.items():
        if other != kind:
            (os.rmdir if os.path.isdir(path) else os.remove)(path)
    name = os.path.basename(bad[kind])
    if kind == "truncated" and not check_images:
        assert len(load_image_folder(tmp_path).filenames) == 2
        return
    with pytest.raises(exc_type, match=f"{name}.*{reason}"):
        load_image_folder(tmp_path, check_images=check_images)


def test_class_folders_differing_by_case_or_whitespace_are_an_error(tmp_path):
    save(tmp_path / "NORMAL" / "a.png", noise_image(0))
    save(tmp_path / "normal " / "b.png", noise_image(1))
    save(tmp_path / "PNEUMONIA" / "c.png", noise_image(2))
    with pytest.raises(ValueError, match=r"differing only by case.*'NORMAL' at folder .*NORMAL"
                                         r".*'normal ' at folder .*normal ") as info:
        load_image_folder(tmp_path)
    assert "PNEUMONIA" not in str(info.value)


def test_unreadable_file_keeps_its_permission_error_type(tree, monkeypatch):
    from cxr_estimators import io as cio

    def deny(name):
        raise PermissionError(13, "Permission denied", name)

    monkeypatch.setattr(cio, "_open_file", deny)
    with pytest.warns(UserWarning, match="EMPTY"), \
            pytest.raises(PermissionError, match="IM-0115-0001.jpeg.*permission denied"):
        load_image_folder(tree)
    csv = _write_csv(tree / "l.csv", "path,label\nNORMAL/IM-0115-0001.jpeg,normal\n")
    with pytest.raises(PermissionError, match="line 2.*IM-0115-0001.jpeg.*permission denied"):
        load_image_csv(csv)


def test_bad_parameters_are_named(tree):
    with pytest.raises(ValueError, match="on_error"):
        load_image_folder(tree, on_error="ignore")
    with pytest.raises(ValueError, match="label_from"):
        load_image_folder(tree, label_from="csv")
    with pytest.raises(FileNotFoundError, match="missing_root"):
        load_image_folder(tree / "missing_root")


def _write_csv(path, text):
    path.write_text(text)
    return path


@pytest.fixture
def csv_images(tmp_path):
    for k in range(3):
        save(tmp_path / "img" / f"{k}.png", noise_image(k))
    return tmp_path


def test_csv_extra_columns_whitespace_and_groups(csv_images):
    path = _write_csv(csv_images / "labels.csv",
                      "path,label,patient,site\nimg/1.png, pneumonia ,p1,A\n"
                      "img/0.png,normal,p0,B\n\nimg/2.png,normal ,p0,B\n")
    data = load_image_csv(path, group_column="patient")
    assert [os.path.basename(f) for f in data.filenames] == ["0.png", "1.png", "2.png"]
    assert list(data.target) == ["normal", "pneumonia", "normal"]
    assert list(data.groups) == ["p0", "p1", "p0"]
    assert list(data.target_names) == ["normal", "pneumonia"]


def test_csv_missing_column_names_it_and_the_columns_found(csv_images):
    path = _write_csv(csv_images / "bad.csv", "file,label\nimg/0.png,normal\n")
    with pytest.raises(ValueError, match=r"\['path'\].*columns found: \['file', 'label'\]"):
        load_image_csv(path)
    with pytest.raises(ValueError, match="'patient'"):
        load_image_csv(path, path_column="file", group_column="patient")


def test_csv_duplicate_rows(csv_images):
    agree = _write_csv(csv_images / "agree.csv",
                       "path,label\nimg/0.png,normal\nimg/1.png,pneumonia\nimg/0.png,normal\n")
    with pytest.warns(UserWarning, match=r"1 duplicate row.*\(2, 4\)"):
        assert len(load_image_csv(agree).filenames) == 2
    clash = _write_csv(csv_images / "clash.csv",
                       "path,label\nimg/0.png,normal\nimg/1.png,normal\nimg/0.png,pneumonia\n")
    with pytest.raises(ValueError, match="'img/0.png'.*lines 2 and 4"):
        load_image_csv(clash)


def test_csv_labels_differing_only_by_case_are_an_error(csv_images):
    path = _write_csv(csv_images / "case.csv",
                      "path,label\nimg/0.png,Normal\nimg/1.png,normal\nimg/2.png,Normal\n")
    with pytest.raises(ValueError, match=r"differing only by case.*\['Normal', 'normal'\]"
                                         r".*'Normal' at line 2, 4; 'normal' at line 3"):
        load_image_csv(path)


def test_csv_missing_and_bad_files_name_the_row(csv_images):
    (csv_images / "img" / "empty.png").write_bytes(b"")
    path = _write_csv(csv_images / "m.csv",
                      "path,label\nimg/0.png,normal\nimg/gone.png,normal\nimg/empty.png,x\n")
    with pytest.raises(FileNotFoundError, match="gone.png.*line 3.*does not exist"):
        load_image_csv(path)
    with pytest.warns(UserWarning, match="2 file"):
        data = load_image_csv(path, on_error="skip")  # empty.png fails the header check
    assert len(data.filenames) == 1 and "line 3" in data.skipped[0][1]
    assert "line 4" in data.skipped[1][1] and "zero bytes" in data.skipped[1][1]
    with pytest.raises(ImageReadError, match="line 4.*empty.png.*zero bytes"):
        load_image_csv(_write_csv(csv_images / "e.csv",
                                  "path,label\nimg/0.png,a\nimg/1.png,b\nimg/empty.png,b\n"),
                       check_images=True)


def test_csv_missing_file_is_a_file_not_found_error_naming_the_line(csv_images):
    path = _write_csv(csv_images / "m.csv", "path,label\nimg/0.png,a\nimg/gone.png,b\n")
    for check_images in (False, True):
        with pytest.raises(FileNotFoundError, match="gone.png.*line 3"):
            load_image_csv(path, check_images=check_images)


@pytest.mark.parametrize("check_images", [False, True])
def test_csv_bad_rows_and_files_raise_naming_the_row_or_are_skipped(csv_images,
                                                                    check_images):
    bad = write_bad_files(csv_images / "img")
    names = ["img/0.png", "img/1.png", "img/2.png", "img/huge.png"]
    path = write_csv_with_extra_fields(csv_images / "x.csv", names)
    with pytest.raises(ValueError, match=r"1.png.*line 3: 1 field\(s\) more than the "
                                         r"header's 2 columns"):
        load_image_csv(path, check_images=check_images)
    with pytest.warns(UserWarning, match="2 file"):
        data = load_image_csv(path, check_images=check_images, on_error="skip")
    assert [os.path.basename(f) for f in data.filenames] == ["0.png", "2.png"]
    reasons = dict(data.skipped)
    assert "line 3" in reasons[os.path.normpath(csv_images / "img" / "1.png")]
    assert "line 5" in reasons[bad["huge"]] and "100000x100000" in reasons[bad["huge"]]
    huge_only = _write_csv(csv_images / "y.csv", "path,label\nimg/0.png,a\nimg/huge.png,b\n")
    with pytest.raises(ImageReadError, match=r"line 3.*huge.png.*100000x100000"):
        load_image_csv(huge_only, check_images=check_images)


def test_csv_image_dir(csv_images, tmp_path_factory):
    other = tmp_path_factory.mktemp("elsewhere")
    path = _write_csv(other / "l.csv", "path,label\n0.png,a\n1.png,b\n")
    data = load_image_csv(path, image_dir=csv_images / "img")
    assert all(os.path.isfile(f) for f in data.filenames)


def test_load_medmnist_synthetic(tmp_path):
    path = tmp_path / "chestmnist_like.npz"
    np.savez(path, train_images=np.zeros((4, 5, 5), np.uint8),
             train_labels=np.array([[0], [2], [1], [0]]),
             test_images=np.zeros((2, 5, 5), np.uint8), test_labels=np.array([[3], [0]]))
    data = load_medmnist(path)
    assert data.images.shape == (4, 5, 5) and data.target.tolist() == [0, 2, 1, 0]
    assert data.target_names == ["0", "1", "2", "3"]
    with pytest.raises(ValueError, match=r"'valid'.*available splits: \['test', 'train'\]"):
        load_medmnist(path, split="valid")


@pytest.mark.skipif(not os.path.exists(SHARED_NPZ), reason="../shared/data not present")
def test_load_pneumoniamnist():
    data = load_medmnist(SHARED_NPZ, "val")
    assert data.images.shape == (524, 28, 28) and data.images.dtype == np.uint8
    assert data.target_names == ["normal", "pneumonia"]
    assert np.bincount(data.target).tolist() == [135, 389]


# --- patient-grouped cross-validation --------------------------------------------------

def _crosses(train, test, groups):
    return set(groups[train]) & set(groups[test])


def test_random_splits_leak_patients_grouped_splits_do_not():
    names, y, groups = kermany_names(n_patients=12, images_per_patient=3)
    X = np.zeros((len(names), 1))
    leaky = StratifiedKFold(3, shuffle=True, random_state=0).split(X, y)
    assert any(_crosses(tr, te, groups) for tr, te in leaky)
    tr, te = train_test_split(np.arange(len(y)), stratify=y, test_size=0.3, random_state=0)
    assert _crosses(tr, te, groups)
    grouped = StratifiedGroupKFold(3, shuffle=True, random_state=0).split(X, y, groups)
    assert not any(_crosses(tr, te, groups) for tr, te in grouped)


class _PatientRecordingLR(LogisticRegression):
    """Column 0 carries the patient number; the model sees only the other columns."""

    def fit(self, X, y):
        self.train_patients_ = set(X[:, 0].tolist())
        return super().fit(X[:, 1:], y)

    def predict(self, X):
        return super().predict(X[:, 1:])


def test_grid_search_with_group_cv_never_shares_a_patient():
    names, y, groups = kermany_names(n_patients=15, images_per_patient=3)
    patient_number = np.unique(groups, return_inverse=True)[1]
    pixels = np.random.default_rng(0).random((len(y), 16))
    X = np.column_stack([patient_number, pixels])
    scored = []

    def no_leak_accuracy(estimator, X_test, y_test):
        shared = estimator.train_patients_ & set(X_test[:, 0].tolist())
        assert not shared, f"patients {shared} in both train and test"
        scored.append(len(y_test))
        return accuracy_score(y_test, estimator.predict(X_test))

    search = GridSearchCV(_PatientRecordingLR(max_iter=200), {"C": [0.1, 1.0]},
                          cv=StratifiedGroupKFold(3), scoring=no_leak_accuracy,
                          error_score="raise")
    search.fit(X, y, groups=groups)
    assert len(scored) == 6


def test_bundled_sample_loads_by_path():
    from cxr_estimators.datasets import load_sample, sample_data_dir
    from cxr_estimators.io import read_image

    data = load_sample()
    assert len(data.filenames) == 400
    assert list(data.target_names) == ["normal", "pneumonia"]
    assert (data.target == "normal").sum() == 200
    assert all(str(f).startswith(sample_data_dir()) for f in data.filenames)
    assert read_image(data.filenames[0]).shape == (28, 28)
