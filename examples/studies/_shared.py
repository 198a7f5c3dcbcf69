"""What the five study scripts share: their command line, their data, their printed lines.

Not a study itself (sphinx-gallery skips files starting with ``_``). Everything here uses
the public API of :mod:`cxr_estimators` and scikit-learn; each study script imports it
with ``from _shared import ...`` (Python puts the script's folder on ``sys.path``).

Data sources, in order of preference:

* ``--data DIR``: a Kermany et al. (2018) ``chest_xray`` folder with ``train/``, ``val/``
  and ``test/`` sub-folders of ``NORMAL/`` and ``PNEUMONIA/`` images. The class
  (normal / bacterial / viral) and the patient come from the file names
  (:func:`cxr_estimators.datasets.load_image_folder` with ``label_from="kermany"``), so
  the three-class studies can run.
* ``--data FILE.npz``: a MedMNIST archive such as PneumoniaMNIST (its official
  train/val/test splits; normal vs pneumonia only).
* ``--data sample``: the 400-image sample bundled with the package, split 60/20/20 here.
* no ``--data``: ``../shared/data/pneumoniamnist.npz`` beside the repository if present,
  else the bundled sample.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split
from sklearn.utils import Bunch

from cxr_estimators.datasets import load_image_folder, load_medmnist, load_sample

ROOT = Path(__file__).resolve().parents[2]
SHARED_NPZ = ROOT.parent / "shared" / "data" / "pneumoniamnist.npz"
SPLITS = ("train", "val", "test")
SICK = ("bacterial", "viral")


def parse_args(doc, *, other=False):
    """The common command line; ``--weights`` defaults to ``"DEFAULT"`` (torchvision's
    pretrained weights, downloaded once) at full size and to random init with ``--quick``.
    ``other=True`` adds ``--other``, a second dataset to test on."""
    parser = argparse.ArgumentParser(description=doc.strip().splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    if other:
        parser.add_argument("--other", type=Path, default=None,
                            help="another dataset (Kermany folder or .npz) whose test "
                                 "split every model is also tested on")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run on a CPU in seconds (tiny images, few epochs, "
                             "random init)")
    parser.add_argument("--data", type=Path, default=None,
                        help="Kermany chest_xray folder, MedMNIST .npz or 'sample' (the "
                             "bundled one; default: ../shared PneumoniaMNIST if present, "
                             "else the sample)")
    parser.add_argument("--weights", default=None,
                        help="torchvision weights name or checkpoint path (default: "
                             "'DEFAULT' at full size, none with --quick)")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for figures, checkpoints and reports")
    args = parser.parse_args()
    if args.weights is None and not args.quick:
        args.weights = "DEFAULT"
    if args.weights in ("none", "None", ""):
        args.weights = None
    # Quick runs compute in float32 on every CPU, so that docs/studies.md's numbers hold
    # on any machine: under precision="auto" a CPU with native bf16 (AMX, AVX512-BF16)
    # trains in bf16 autocast and a near-chance quick model can flip its predictions.
    args.precision = "float32" if args.quick else "auto"
    name = Path(sys.argv[0]).stem
    args.out = args.out or ROOT / "study_output" / name
    args.out.mkdir(parents=True, exist_ok=True)
    return args


def load_splits(args, quick_sizes=(240, 80, 160), seed=0):
    """Train, val and test ``(X, y)`` of the chosen source, labels as strings.

    ``X`` is a uint8 image array (MedMNIST) or a list of file paths (folders); both go
    straight into :class:`~cxr_estimators.ImageLoader`. With ``--quick`` each split is a
    stratified subsample of ``quick_sizes`` images.

    Returns
    -------
    Bunch
        ``train``, ``val``, ``test``: ``(X, y)``; ``three_class``: whether ``y`` names
        bacterial and viral pneumonia (Kermany file names) or only normal / pneumonia;
        ``source``: a line saying where the images came from.
    """
    path = args.data
    if path is None:
        path = SHARED_NPZ if SHARED_NPZ.is_file() else "sample"
    if str(path) == "sample":
        splits, source = _bundled_sample(seed), "bundled PneumoniaMNIST sample (400 images)"
    elif Path(path).is_dir():
        splits = {s: _kermany_split(Path(path), s) for s in SPLITS}
        source = f"Kermany folders {path}"
    else:
        splits = {s: _medmnist_split(path, s) for s in SPLITS}
        source = f"MedMNIST archive {path}"
    if args.quick:
        splits = {s: _subsample(*splits[s], n, seed) for s, n in zip(SPLITS, quick_sizes)}
    counts = ", ".join(f"{s} {len(splits[s][1])}" for s in SPLITS)
    three = set(np.unique(splits["train"][1])) >= set(SICK)
    return Bunch(**splits, three_class=three, source=f"{source}: {counts} images")


def load_test_split(path):
    """``(X, y)`` of the test split of another source (a Kermany folder or an .npz)."""
    if Path(path).is_dir():
        return _kermany_split(Path(path), "test")
    return _medmnist_split(path, "test")


def binary(y):
    """Sick vs healthy: bacterial and viral pneumonia become ``"pneumonia"``."""
    y = np.asarray(y, dtype=object)
    return np.where(np.isin(y, SICK), "pneumonia", y).astype(str)


def pooled(data):
    """All images of ``data``'s three splits as one ``(X, y)``, for studies that make
    their own split."""
    X = [data[s][0] for s in SPLITS]
    X = np.concatenate(X) if isinstance(X[0], np.ndarray) else sum(map(list, X), [])
    return X, np.concatenate([data[s][1] for s in SPLITS])


def take(X, index):
    """Rows ``index`` of an image array or a list of paths."""
    return X[index] if isinstance(X, np.ndarray) else [X[i] for i in index]


def not_met(card, here):
    """The one printed line for a card line that cannot be met as written here."""
    print(f"not met here: {card} -> {here}")


def summary(study, values):
    """The last printed line: the numbers docs/studies.md quotes (rounded to 3 places)."""
    rounded = {k: round(float(v), 3) if isinstance(v, (float, np.floating)) else v
               for k, v in values.items()}
    print(f"summary {study}: {json.dumps(rounded)}")


def _medmnist_split(path, split):
    data = load_medmnist(path, split)
    return data.images, np.asarray(data.target_names)[data.target]


def _kermany_split(root, split):
    if not (root / split).is_dir():
        raise FileNotFoundError(f"--data {root}: expected a Kermany chest_xray folder with "
                                f"train/, val/ and test/; {root / split} is missing")
    data = load_image_folder(root / split, label_from="kermany")
    return list(data.filenames), np.asarray(data.target)


def _bundled_sample(seed):
    data = load_sample()
    X, y = np.asarray(data.filenames), np.asarray(data.target)
    X_train, X_rest, y_train, y_rest = train_test_split(
        X, y, test_size=0.4, stratify=y, random_state=seed)
    X_val, X_test, y_val, y_test = train_test_split(
        X_rest, y_rest, test_size=0.5, stratify=y_rest, random_state=seed)
    return {"train": (list(X_train), y_train), "val": (list(X_val), y_val),
            "test": (list(X_test), y_test)}


def _subsample(X, y, n, seed):
    if n >= len(y):
        return X, y
    index = np.arange(len(y))
    keep, _ = train_test_split(index, train_size=n, stratify=y, random_state=seed)
    keep = np.sort(keep)
    return take(X, keep), y[keep]
