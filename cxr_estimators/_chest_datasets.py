"""Loaders for the published multilabel chest X-ray label files, re-exported by
:mod:`cxr_estimators.datasets`: NIH ChestX-ray14's ``Data_Entry_2017.csv`` and
CheXpert's ``train.csv`` / ``valid.csv``; :func:`label_matrix`, the parser of
multilabel CSV cells that ``load_image_csv(label_column=[...])`` uses; and
:func:`make_findings`, a generated multilabel task of planted image patterns.

Written by hand: torchvision has no loader for either dataset, and torchxrayvision's
(``NIH_Dataset``, ``CheX_Dataset``) are torch datasets that read images, relabel the
findings and have no sklearn-style ``Bunch`` with patient ids.
"""

from __future__ import annotations

import contextlib
import csv
import os
import re
import warnings

import numpy as np
from sklearn.utils import Bunch

from ._validation import did_you_mean

__all__ = ["CHESTXRAY14_FINDINGS", "CHEXPERT_OBSERVATIONS", "label_matrix",
           "load_chestxray14", "load_chexpert", "make_findings"]

#: The 14 findings of ChestX-ray14, in the order of the dataset's paper (Wang et al. 2017).
CHESTXRAY14_FINDINGS = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule",
    "Pneumonia", "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis",
    "Pleural_Thickening", "Hernia")
#: The 14 observations of CheXpert (Irvin et al. 2019), in the order of its CSV columns.
CHEXPERT_OBSERVATIONS = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity",
    "Lung Lesion", "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax",
    "Pleural Effusion", "Pleural Other", "Fracture", "Support Devices")
_CHEXPERT_PATIENT = re.compile(r"(?:^|/)(patient\d+)/")


def label_matrix(cells, lines, findings, where):
    """Float (n, k) from text cells: "1", "0", "-1" (also "1.0" ...), blank → NaN; any
    other value is an error naming the line and the finding."""
    out = np.full((len(cells), len(findings)), np.nan)
    for i, (row, line) in enumerate(zip(cells, lines)):
        for j, cell in enumerate(row):
            if not cell.strip():
                continue
            try:
                value = float(cell)
            except ValueError:
                value = None
            if value not in (0.0, 1.0, -1.0):
                raise ValueError(f"{where} line {line}, column {findings[j]!r}: {cell!r} is "
                                 "not a label; expected 1, 0, -1 (uncertain) or blank "
                                 "(missing)")
            out[i, j] = value
    return out


@contextlib.contextmanager
def checked_csv(csv_path, required):
    """``(csv.DictReader, column names stripped)`` of a CSV (UTF-8, BOM tolerated) that
    has the ``required`` columns; else a ValueError naming those missing."""
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            columns = [c.strip() for c in (reader.fieldnames or [])]
            missing = [c for c in required if c not in columns]
            if missing:
                raise ValueError(f"CSV {os.fspath(csv_path)!r} lacks column(s) {missing}; "
                                 f"columns found: {columns}")
            reader.fieldnames = columns
            yield reader, columns  # the caller's reading of rows raises here too
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"CSV {os.fspath(csv_path)!r} is not UTF-8 (byte "
            f"{exc.object[exc.start:exc.start + 1]!r} at offset {exc.start}); save it as "
            "UTF-8 (e.g. from Excel: 'CSV UTF-8'), or convert it, e.g. iconv -f latin1 "
            "-t utf-8 for a Latin-1 file") from None


def _read(csv_path, required):
    """Rows of a CSV as dicts (with their 1-based line numbers); missing columns named."""
    with checked_csv(csv_path, required) as (reader, _):
        return [(reader.line_num, {k: (v or "").strip() for k, v in row.items()
                                   if k is not None}) for row in reader]


def _check_files(paths, on_error, where):
    """Indices of the paths that exist; a missing one raises (``on_error="raise"``) or
    is listed in the returned ``skipped`` with a warning."""
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    keep, skipped = [], []
    for i, path in enumerate(paths):
        if os.path.isfile(path):
            keep.append(i)
        elif on_error == "raise":
            raise FileNotFoundError(f"{where}: image {path!r} does not exist (pass "
                                    "on_error='skip' to load the images that do)")
        else:
            skipped.append((path, "file does not exist"))
    if skipped:
        warnings.warn(f"{len(skipped)} image(s) of {where} skipped (not found), e.g. "
                      f"{skipped[0][0]!r}; see Bunch.skipped", UserWarning, stacklevel=3)
    return np.asarray(keep, dtype=np.intp), skipped


def _image_index(image_dir):
    """File name → path of every file under ``image_dir`` (the download unpacks into
    ``images_001/images/...``, or one flat ``images/`` folder)."""
    index = {}
    for folder, _, names in os.walk(image_dir):
        for name in names:
            index.setdefault(name, os.path.join(folder, name))
    return index


def load_chestxray14(csv_path, image_dir, *, on_error="raise"):
    """NIH ChestX-ray14 (``Data_Entry_2017.csv`` and its image folder) as a Bunch.

    Parameters
    ----------
    csv_path : str or os.PathLike
        ``Data_Entry_2017.csv``: columns "Image Index", "Finding Labels" (findings
        joined by ``|``, or "No Finding") and "Patient ID" (others ignored).
    image_dir : str or os.PathLike
        Folder holding the PNG files, searched recursively (both the flat ``images/``
        folder and the ``images_001/images/`` ... layout of the download work).
    on_error : {"raise", "skip"}, default="raise"
        An image listed in the CSV but not found: an error, or skipped (listed in
        ``skipped``, with a warning), e.g. when only some archives were unpacked.

    Returns
    -------
    data : sklearn.utils.Bunch
        ``filenames`` (n,), ``target`` (n, 14) float 0/1 (ChestX-ray14 has no missing or
        uncertain labels; "No Finding" is all zeros), ``target_names`` the 14 findings
        (:data:`CHESTXRAY14_FINDINGS`), ``groups`` (n,) patient ids, ``skipped``,
        ``DESCR``. Rows keep the CSV's order.

    Raises
    ------
    ValueError
        A missing column, or a finding name that is not one of the 14 (naming the line
        and the closest name).
    """
    csv_path = os.fspath(csv_path)
    rows = _read(csv_path, ["Image Index", "Finding Labels", "Patient ID"])
    index = _image_index(os.fspath(image_dir))
    position = {name: j for j, name in enumerate(CHESTXRAY14_FINDINGS)}
    target = np.zeros((len(rows), len(CHESTXRAY14_FINDINGS)))
    for i, (line, row) in enumerate(rows):
        for label in filter(None, (s.strip() for s in row["Finding Labels"].split("|"))):
            if label == "No Finding":
                continue
            if label not in position:
                raise ValueError(
                    f"CSV {csv_path!r} line {line}: finding {label!r} is not one of "
                    f"ChestX-ray14's {list(CHESTXRAY14_FINDINGS)}"
                    f"{did_you_mean(label, CHESTXRAY14_FINDINGS)}")
            target[i, position[label]] = 1.0
    paths = [index.get(row["Image Index"], os.path.join(os.fspath(image_dir),
                                                        row["Image Index"]))
             for _, row in rows]
    keep, skipped = _check_files(paths, on_error, f"CSV {csv_path!r}")
    return Bunch(filenames=np.asarray(paths, dtype=str)[keep], target=target[keep],
                 target_names=np.asarray(CHESTXRAY14_FINDINGS),
                 groups=np.asarray([row["Patient ID"] for _, row in rows], dtype=str)[keep],
                 skipped=skipped,
                 DESCR=f"ChestX-ray14 {csv_path!r}: {len(keep)} images, "
                       f"{len(skipped)} skipped.")


def load_chexpert(csv_path, root, *, view=None, on_error="raise"):
    """CheXpert (``train.csv`` / ``valid.csv``) as a Bunch; uncertain labels kept.

    Parameters
    ----------
    csv_path : str or os.PathLike
        CheXpert's CSV: "Path" (e.g. ``CheXpert-v1.0/train/patient00001/study1/
        view1_frontal.jpg``), "Frontal/Lateral" and the 14 observation columns
        (:data:`CHEXPERT_OBSERVATIONS`) with 1.0, 0.0, -1.0 (uncertain) or blank.
    root : str or os.PathLike
        Folder the "Path" values are relative to (the one holding ``CheXpert-v1.0``).
    view : None, "frontal" or "lateral", default=None
        Keep only frontal or lateral images (by "Frontal/Lateral"); None keeps all.
    on_error : {"raise", "skip"}, default="raise"
        An image listed but not found: an error, or skipped with a warning.

    Returns
    -------
    data : sklearn.utils.Bunch
        ``filenames`` (n,), ``target`` (n, 14) float with NaN for blank and -1 for
        uncertain labels (choose a policy with ``CXRClassifier(uncertain=...)``),
        ``target_names``, ``groups`` (n,) patient ids taken from the path
        (``patient00001``), ``view`` (n,) "Frontal"/"Lateral", ``skipped``, ``DESCR``.
    """
    csv_path = os.fspath(csv_path)
    if view not in (None, "frontal", "lateral"):
        raise ValueError(f"view must be None, 'frontal' or 'lateral'; got {view!r}"
                         f"{did_you_mean(view, ('frontal', 'lateral'))}")
    rows = _read(csv_path, ["Path", "Frontal/Lateral", *CHEXPERT_OBSERVATIONS])
    if view is not None:
        rows = [(line, row) for line, row in rows
                if row["Frontal/Lateral"].casefold() == view]
    groups = []
    for line, row in rows:
        match = _CHEXPERT_PATIENT.search(row["Path"].replace("\\", "/"))
        if match is None:
            raise ValueError(f"CSV {csv_path!r} line {line}: path {row['Path']!r} has no "
                             "'patientNNNNN/' folder to take the patient id from")
        groups.append(match.group(1))
    target = label_matrix([[row[c] for c in CHEXPERT_OBSERVATIONS] for _, row in rows],
                          [line for line, _ in rows], list(CHEXPERT_OBSERVATIONS),
                          f"CSV {csv_path!r}")
    paths = [os.path.normpath(os.path.join(os.fspath(root), row["Path"])) for _, row in rows]
    keep, skipped = _check_files(paths, on_error, f"CSV {csv_path!r}")
    return Bunch(filenames=np.asarray(paths, dtype=str)[keep], target=target[keep],
                 target_names=np.asarray(CHEXPERT_OBSERVATIONS),
                 groups=np.asarray(groups, dtype=str)[keep],
                 view=np.asarray([row["Frontal/Lateral"] for _, row in rows], dtype=str)[keep],
                 skipped=skipped,
                 DESCR=f"CheXpert {csv_path!r}: {len(keep)} images"
                       f"{'' if view is None else ' (' + view + ')'}, {len(skipped)} skipped.")


def make_findings(n_samples=200, n_findings=4, *, image_size=32, missing=(0.1, 0.3),
                  prevalence=(0.02, 0.3), patients=None, random_state=None):
    """A generated multilabel task: each finding is a faint square planted at its own
    place in noisy images (for tests, examples and benchmarks; not a chest X-ray).

    Parameters
    ----------
    n_samples, n_findings : int
    image_size : int, default=32
        Images are (1, image_size, image_size), float32, about zero mean, unit scale.
    missing : (float, float), default=(0.1, 0.3)
        Each finding's fraction of NaN labels, spread evenly over this range.
    prevalence : (float, float), default=(0.02, 0.3)
        Each finding's prevalence, spread evenly (log scale) over this range; every
        second finding is more likely (x3) where the one before it is present, so
        findings co-occur as they do in chest X-rays (effusion with atelectasis).
    patients : int or None
        Number of patients (``groups``); None: about two images per patient.
    random_state : int, RandomState or None

    Returns
    -------
    data : sklearn.utils.Bunch
        ``images`` (n, 1, S, S) float32, ``target`` (n, k) float with NaN,
        ``target_full`` (n, k) without NaN, ``target_names`` ("finding_0", ...),
        ``groups`` (n,) patient ids.
    """
    rng = np.random.default_rng(random_state if not hasattr(random_state, "randint")
                                else random_state.randint(2 ** 31))
    k, size = n_findings, image_size
    rates = np.geomspace(prevalence[0], prevalence[1], k)
    full = np.zeros((n_samples, k))
    for j in range(k):
        p = np.full(n_samples, rates[j])
        if j % 2 == 1:  # co-occurs with the finding before it
            p = np.where(full[:, j - 1] == 1, np.minimum(1, 3 * rates[j]), rates[j])
        full[:, j] = rng.random(n_samples) < p
    side = int(np.ceil(np.sqrt(k)))
    cell = size // side
    patch = max(2, cell // 2)
    images = rng.normal(0, 1, (n_samples, 1, size, size)).astype(np.float32)
    for j in range(k):
        r, c = (j // side) * cell + (cell - patch) // 2, (j % side) * cell + (cell - patch) // 2
        rows = np.flatnonzero(full[:, j])
        strength = rng.uniform(0.8, 1.6, len(rows)).astype(np.float32)
        images[rows, 0, r:r + patch, c:c + patch] += strength[:, None, None]
    target = full.copy()
    for j, frac in enumerate(np.linspace(missing[0], missing[1], k)):
        target[rng.random(n_samples) < frac, j] = np.nan
    n_patients = patients or max(1, n_samples // 2)
    groups = np.sort(rng.integers(0, n_patients, n_samples)).astype(str)
    return Bunch(images=images, target=target, target_full=full,
                 target_names=np.asarray([f"finding_{j}" for j in range(k)]), groups=groups)
