"""Multilabel label files in their published formats, written small by the tests:
ChestX-ray14's Data_Entry_2017.csv, CheXpert's train.csv, and a plain CSV with several
label columns (load_image_csv)."""

import numpy as np
import pytest
from PIL import Image

from cxr_estimators.datasets import load_chestxray14, load_chexpert, load_image_csv

NIH_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
              "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],\n")
CHEXPERT_HEADER = (
    "Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,Cardiomegaly,"
    "Lung Opacity,Lung Lesion,Edema,Consolidation,Pneumonia,Atelectasis,Pneumothorax,"
    "Pleural Effusion,Pleural Other,Fracture,Support Devices\n")


def png(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(path)


@pytest.fixture
def nih(tmp_path):
    rows = [("00000001_000.png", "Cardiomegaly", 1), ("00000001_001.png",
                                                        "Cardiomegaly|Emphysema", 1),
            ("00000002_000.png", "No Finding", 2), ("00000003_000.png",
                                                    "Atelectasis|Effusion|Hernia", 3)]
    lines = [f"{name},{labels},{i},{pid:08d},58,M,PA,2682,2749,0.143,0.143\n"
             for i, (name, labels, pid) in enumerate(rows)]
    (tmp_path / "Data_Entry_2017.csv").write_text(NIH_HEADER + "".join(lines))
    for i, (name, _, _) in enumerate(rows):  # the download's two-level layout
        png(tmp_path / f"images_00{1 + i % 2}" / "images" / name)
    return tmp_path


def test_load_chestxray14(nih):
    data = load_chestxray14(nih / "Data_Entry_2017.csv", nih)
    assert data.target.shape == (4, 14) and len(data.target_names) == 14
    names = list(data.target_names)
    assert data.target[0, names.index("Cardiomegaly")] == 1 and data.target[0].sum() == 1
    assert data.target[1, names.index("Emphysema")] == 1
    assert data.target[2].sum() == 0  # No Finding
    assert data.target[3, [names.index(f) for f in ("Atelectasis", "Effusion",
                                                    "Hernia")]].tolist() == [1, 1, 1]
    assert data.groups.tolist() == ["00000001", "00000001", "00000002", "00000003"]
    assert all(p.endswith(".png") for p in data.filenames)


def test_chestxray14_bad_finding_and_missing_image(nih):
    csv = nih / "Data_Entry_2017.csv"
    text = csv.read_text()
    csv.write_text(text.replace("Cardiomegaly|Emphysema", "Cardiomegaly|Emphysma"))
    with pytest.raises(ValueError, match=r"line 3: finding 'Emphysma' is not one of "
                                         r"ChestX-ray14's.*did you mean 'Emphysema'"):
        load_chestxray14(csv, nih)
    csv.write_text(text + "00000009_000.png,Mass,0,00000009,40,F,PA,1,1,1,1\n")
    with pytest.raises(FileNotFoundError, match="00000009_000.png"):
        load_chestxray14(csv, nih)
    with pytest.warns(UserWarning, match="1 image"):
        data = load_chestxray14(csv, nih, on_error="skip")
    assert len(data.filenames) == 4 and len(data.skipped) == 1


@pytest.fixture
def chexpert(tmp_path):
    def row(patient, study, view, kind, values):
        return (f"CheXpert-v1.0-small/train/patient{patient:05d}/study{study}/"
                f"view{view}_{kind.lower()}.jpg,Female,68,{kind},AP," + ",".join(values) + "\n")
    blank14 = [""] * 14
    r1 = list(blank14)
    r1[0] = "1.0"  # No Finding
    r2 = list(blank14)
    r2[5], r2[8], r2[10] = "-1.0", "1.0", "0.0"  # Edema uncertain, Atelectasis, Effusion
    rows = [row(1, 1, 1, "Frontal", r1), row(2, 1, 1, "Frontal", r2),
            row(2, 1, 2, "Lateral", r2)]
    (tmp_path / "train.csv").write_text(CHEXPERT_HEADER + "".join(rows))
    for line in rows:
        png(tmp_path / line.split(",")[0])
    return tmp_path


def test_load_chexpert(chexpert):
    data = load_chexpert(chexpert / "train.csv", chexpert)
    names = list(data.target_names)
    assert data.target.shape == (3, 14) and names[0] == "No Finding"
    assert data.target[0, 0] == 1 and np.isnan(data.target[0, 1:]).all()
    assert data.target[1, names.index("Edema")] == -1
    assert data.target[1, names.index("Atelectasis")] == 1
    assert data.target[1, names.index("Pleural Effusion")] == 0
    assert data.groups.tolist() == ["patient00001", "patient00002", "patient00002"]
    frontal = load_chexpert(chexpert / "train.csv", chexpert, view="frontal")
    assert len(frontal.filenames) == 2 and set(frontal.view) == {"Frontal"}
    with pytest.raises(ValueError, match="did you mean 'lateral'"):
        load_chexpert(chexpert / "train.csv", chexpert, view="lateal")


def test_chexpert_bad_value_names_line_and_column(chexpert):
    csv = chexpert / "train.csv"
    csv.write_text(csv.read_text().replace("-1.0", "maybe", 1))
    with pytest.raises(ValueError, match=r"line 3, column 'Edema': 'maybe' is not a label"):
        load_chexpert(csv, chexpert)


def test_load_image_csv_several_label_columns(tmp_path):
    for name in ("a.png", "b.png", "c.png"):
        png(tmp_path / name)
    (tmp_path / "labels.csv").write_text(
        "path,patient,Atelectasis,Effusion\na.png,p1,1,0\nb.png,p1,,1\nc.png,p2,-1,0\n")
    data = load_image_csv(tmp_path / "labels.csv", label_column=["Atelectasis", "Effusion"],
                          group_column="patient")
    assert data.target_names.tolist() == ["Atelectasis", "Effusion"]
    np.testing.assert_array_equal(data.target, [[1, 0], [np.nan, 1], [-1, 0]])
    assert data.groups.tolist() == ["p1", "p1", "p2"]
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['Edema'\]"):
        load_image_csv(tmp_path / "labels.csv", label_column=["Atelectasis", "Edema"])
