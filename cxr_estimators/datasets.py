"""Loaders that turn image folders, CSV files and MedMNIST archives into a ``Bunch``.

Every loader is deterministic (sorted file lists), checks every file cheaply from its
header (:func:`cxr_estimators.io.check_image_file`; ``check_images=True`` decodes it),
never drops a file silently (files skipped with ``on_error="skip"`` are listed in
``Bunch.skipped`` and announced by a warning with their count), and returns patient ids
as ``groups`` where it can, so that cross-validation can keep each patient on one side
of a split (:class:`sklearn.model_selection.StratifiedGroupKFold`).
"""

from __future__ import annotations

import contextlib
import os
import re
import warnings
import zipfile

import numpy as np
from sklearn.utils import Bunch

from ._chest_datasets import (
    checked_csv, label_matrix, load_chestxray14, load_chexpert, make_findings,
)
from .io import ImageReadError, check_image_file, read_image

__all__ = [
    "IMAGE_EXTENSIONS",
    "load_image_folder",
    "load_image_csv",
    "load_chestxray14",
    "load_chexpert",
    "make_findings",
    "load_medmnist",
    "parse_kermany_filename",
    "sample_data_dir",
    "load_sample",
]

#: File suffixes :func:`load_image_folder` treats as images (compared case-insensitively).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".bmp", ".tif", ".tiff")

_KERMANY_PNEUMONIA = re.compile(r"^(person\d+)_(bacteria|virus)_\d+$", re.IGNORECASE)
_KERMANY_NORMAL = re.compile(r"^((?:NORMAL2-)?IM-\d+)(?:-\d+)+$", re.IGNORECASE)
_KERMANY_CLASS = {"bacteria": "bacterial", "virus": "viral"}


def parse_kermany_filename(name):
    """Class and patient id from a Kermany et al. (2018) chest X-ray file name.

    Parameters
    ----------
    name : str or os.PathLike
        File name or path; only the base name without its suffix is parsed.

    Returns
    -------
    label : {"normal", "bacterial", "viral"}
    patient : str
        ``personN`` for pneumonia images, ``IM-NNNN`` or ``NORMAL2-IM-NNNN`` for normal
        ones (the trailing ``-NNNN`` image counter is dropped).

    Raises
    ------
    ValueError
        The name matches neither pattern; the message names the file.

    Examples
    --------
    >>> parse_kermany_filename("person12_bacteria_45.jpeg")
    ('bacterial', 'person12')
    >>> parse_kermany_filename("NORMAL2-IM-0041-0001.jpeg")
    ('normal', 'NORMAL2-IM-0041')
    """
    stem = os.path.splitext(os.path.basename(os.fspath(name)))[0]
    match = _KERMANY_PNEUMONIA.match(stem)
    if match:
        return _KERMANY_CLASS[match.group(2).lower()], match.group(1)
    match = _KERMANY_NORMAL.match(stem)
    if match:
        return "normal", match.group(1)
    raise ValueError(
        f"file name {os.fspath(name)!r} is not a Kermany-style name "
        "(expected 'personN_bacteria_M', 'personN_virus_M', 'IM-NNNN-NNNN' or "
        "'NORMAL2-IM-NNNN-NNNN')"
    )


def _check_on_error(on_error):
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")


def _bad_file(on_error, skipped, path, reason, exc_type=ValueError):
    """Raise (on_error='raise') or record a file that cannot be used."""
    if on_error == "raise":
        raise exc_type(f"{path!r}: {reason}")
    skipped.append((path, reason))


def _warn_skipped(skipped, where):
    if skipped:
        shown = "; ".join(f"{p!r} ({r})" for p, r in skipped[:5])
        more = f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
        warnings.warn(
            f"{len(skipped)} file(s) skipped in {where}: {shown}{more}; see Bunch.skipped",
            UserWarning,
            stacklevel=3,
        )


def _usable(path, on_error, skipped, check_images, where=None):
    """True if the file can be used; otherwise raise or record it per on_error.

    Every file gets the cheap header check (:func:`~cxr_estimators.io.check_image_file`);
    ``check_images`` decodes it fully. A raised error keeps its type (an
    ``ImageNotFoundError`` is still a ``FileNotFoundError``) and is prefixed by ``where``.
    """
    try:
        (read_image if check_images else check_image_file)(path)
    except ImageReadError as exc:  # also covers missing files and permission errors
        reason = f"{where}: {exc}" if where else str(exc)
        if on_error == "raise":
            raise type(exc)(reason) from None
        skipped.append((path, reason))
        return False
    return True


def _label_key(label):
    return label.strip().casefold()


def _first_few(items, k=5):
    return ", ".join(map(str, items[:k])) + (", ..." if len(items) > k else "")


def _check_label_case(labels, locations, source, unit):
    """Raise if two labels differ only by case or surrounding whitespace.

    ``locations[i]`` says where ``labels[i]`` comes from (a line number, a folder), so the
    error can name them; ``unit`` is what they are ("line", "folder").
    """
    by_key = {}
    for label, where in zip(labels, locations):
        by_key.setdefault(_label_key(label), {}).setdefault(label, []).append(where)
    clashes = [variants for variants in by_key.values() if len(variants) > 1]
    if not clashes:
        return
    places = "; ".join(f"{label!r} at {unit} {_first_few(where)}"
                       for variants in clashes for label, where in sorted(variants.items()))
    raise ValueError(
        f"{source} has labels differing only by case or surrounding whitespace: "
        f"{[sorted(v) for v in clashes]} ({places}); labels are case-sensitive, "
        "fix the spelling so that each class has one name")


def _class_folders(root):
    """Sorted names of root's sub-folders (hidden ones left out)."""
    class_dirs = sorted(e for e in os.listdir(root)
                        if not e.startswith(".") and os.path.isdir(os.path.join(root, e)))
    if not class_dirs:
        raise ValueError(f"root {root!r} has no class sub-folders (expected root/<class>/<image>)")
    return class_dirs


def load_image_folder(root, *, extensions=IMAGE_EXTENSIONS, label_from="folder",
                      return_groups=True, on_error="raise", check_images=False):
    """Load file paths and labels from a ``root/<class>/<image>`` folder tree.

    Parameters
    ----------
    root : str or os.PathLike
        Folder with one sub-folder per class (e.g. ``NORMAL/``, ``PNEUMONIA/``).
    extensions : sequence of str, default=IMAGE_EXTENSIONS
        Suffixes (case-insensitive) of files to load; other files and hidden files
        (``.DS_Store``) are ignored.
    label_from : {"folder", "kermany"}, default="folder"
        ``"folder"``: the class is the sub-folder name. ``"kermany"``: the class and the
        patient are parsed from the file name with :func:`parse_kermany_filename`, so
        ``NORMAL/``, ``PNEUMONIA/`` become ``normal``, ``bacterial``, ``viral``; an
        unparseable name is handled per ``on_error``.
    return_groups : bool, default=True
        Return patient ids in ``groups``. With ``label_from="folder"`` they come from
        Kermany-style names when every name parses, else ``groups`` is None.
    on_error : {"raise", "skip"}, default="raise"
        What to do with a bad entry (a directory named like an image; an unreadable,
        zero-byte or non-image file, or one above the decompression-bomb limit, found
        by the header check :func:`cxr_estimators.io.check_image_file` run on every
        file; an undecodable file when ``check_images``; an unparseable Kermany name):
        raise an error naming the file and the reason, or skip it, record
        ``(path, reason)`` in ``skipped`` and warn.
    check_images : bool, default=False
        Decode every file with :func:`cxr_estimators.io.read_image` (slow; fills the
        decode cache) to also catch truncated or corrupt pixel data now.

    Returns
    -------
    data : sklearn.utils.Bunch
        ``filenames`` (n,) str, sorted; ``target`` (n,) str; ``target_names`` sorted
        unique classes (a class folder without images is not included, and warned
        about); ``groups`` (n,) str or None; ``skipped`` list of (path, reason);
        ``DESCR`` str.

    Raises
    ------
    ValueError
        Class folders whose names differ only by case or surrounding whitespace
        (``NORMAL/`` and ``normal /``), naming both, with ``label_from="folder"``.

    Examples
    --------
    >>> data = load_image_folder("chest_xray/train", label_from="kermany")  # doctest: +SKIP
    >>> StratifiedGroupKFold(5).split(data.filenames, data.target, data.groups)  # doctest: +SKIP
    """
    _check_on_error(on_error)
    if label_from not in ("folder", "kermany"):
        raise ValueError(f"label_from must be 'folder' or 'kermany', got {label_from!r}")
    root = os.fsdecode(os.fspath(root))
    if not os.path.isdir(root):
        raise FileNotFoundError(f"root {root!r} is not a directory")
    exts = tuple(e.lower() for e in extensions)
    class_dirs = _class_folders(root)
    if label_from == "folder":  # NORMAL/ and "normal "/ would silently be two classes
        _check_label_case(class_dirs, [os.path.join(root, d) for d in class_dirs],
                          f"root {root!r}", "folder")
    paths, labels, skipped = [], [], []
    for cls in class_dirs:
        folder = os.path.join(root, cls)
        found = 0
        for entry in sorted(os.listdir(folder)):
            path = os.path.join(folder, entry)
            if entry.startswith(".") or not entry.lower().endswith(exts):
                continue
            if not _usable(path, on_error, skipped, check_images):
                continue
            found += 1
            paths.append(path)
            labels.append(cls)
        if found == 0:
            warnings.warn(f"class folder {folder!r} contains no images; class {cls!r} "
                          "is left out of target_names", UserWarning, stacklevel=2)
    groups = None
    if label_from == "kermany":
        keep, labels, groups = [], [], []
        for path in paths:
            try:
                label, patient = parse_kermany_filename(path)
            except ValueError as exc:
                _bad_file(on_error, skipped, path, str(exc))
                continue
            keep.append(path)
            labels.append(label)
            groups.append(patient)
        paths = keep
    elif return_groups:
        try:
            groups = [parse_kermany_filename(p)[1] for p in paths]
        except ValueError:
            groups = None
    _warn_skipped(skipped, f"root {root!r}")
    order = np.argsort(np.asarray(paths, dtype=str), kind="stable")
    filenames = np.asarray(paths, dtype=str)[order]
    target = np.asarray(labels, dtype=str)[order]
    if groups is not None and return_groups:
        groups = np.asarray(groups, dtype=str)[order]
    else:
        groups = None
    descr = (f"Image folder {root!r}: {len(filenames)} images, classes from "
             f"{label_from!r}, {len(skipped)} skipped.")
    return Bunch(filenames=filenames, target=target, target_names=np.unique(target),
                 groups=groups, skipped=skipped, DESCR=descr)


def _read_csv_rows(csv_path, required):
    with checked_csv(csv_path, required) as (reader, columns):
        rows = []
        for row in reader:
            if all(not (v or "").strip() for k, v in row.items() if k is not None):
                continue  # blank line
            # DictReader keeps fields beyond the header's under the key None
            rows.append((reader.line_num, {c: (row.get(c) or "").strip() for c in required},
                         len(row.get(None) or ())))
    return rows, columns


def _row_problem(row, n_extra, n_columns, path_column, label_column):
    """Why a CSV row cannot be used, or None (``label_column`` None: several label
    columns, whose blank cells are missing labels)."""
    if n_extra:
        return (f"{n_extra} field(s) more than the header's {n_columns} columns (an "
                "unquoted comma in a path or label?)")
    if not row[path_column] or (label_column is not None and not row[label_column]):
        return "empty path or label"
    return None


def load_image_csv(csv_path, *, image_dir=None, path_column="path", label_column="label",
                   group_column=None, on_error="raise", check_images=False):
    """Load file paths, labels and optional patient ids from a CSV file.

    Parameters
    ----------
    csv_path : str or os.PathLike
        CSV with a header row (read with the :mod:`csv` module, UTF-8, BOM tolerated).
        Extra columns are ignored; a row with more fields than the header is a bad row.
    image_dir : str or os.PathLike, optional
        Relative paths are resolved against it (default: the CSV's folder).
    path_column, label_column : str, default="path", "label"
        Column names of the image path and the class label. A list of label columns
        reads multilabel targets (one column per finding: 1, 0, -1 uncertain, blank
        missing): ``target`` is then float (n, k) with NaN for blank cells and
        ``target_names`` the columns, ready for ``CXRClassifier.fit``.
    group_column : str, optional
        Column with patient ids, returned as ``groups``.
    on_error : {"raise", "skip"}, default="raise"
        For a bad row (an empty path or label, more fields than the header has columns)
        or a bad file (missing, unreadable, a directory, zero bytes, not an image by its
        header, above the decompression-bomb limit; with ``check_images`` also truncated
        or undecodable): raise an error naming the CSV line, the path and the reason
        (``FileNotFoundError``/``PermissionError`` subclasses where they apply), or
        skip it, record ``(path, reason)`` in ``skipped`` and warn with the count.
    check_images : bool, default=False
        Decode every image with :func:`cxr_estimators.io.read_image` (slow; fills the
        decode cache). Without it each file gets the cheap header check
        :func:`cxr_estimators.io.check_image_file`.

    Returns
    -------
    data : sklearn.utils.Bunch
        ``filenames`` (n,) str sorted, ``target`` (n,) str, ``target_names``,
        ``groups`` (n,) str or None, ``skipped`` list of (path, reason), ``DESCR``.

    Raises
    ------
    ValueError
        Missing columns (naming them and the columns found); two rows for the same
        path with different labels or groups (naming their 1-based line numbers);
        labels that differ only by case (e.g. ``Normal`` and ``normal``; naming the
        lines of each spelling).

    Notes
    -----
    Labels and paths are stripped of surrounding whitespace. Labels keep their case,
    but two labels equal up to case are an error rather than two classes or a silent
    merge. Rows repeating a path with the same label (and group) are de-duplicated
    with a warning naming the lines.
    """
    _check_on_error(on_error)
    csv_path = os.fspath(csv_path)
    base = os.fspath(image_dir) if image_dir is not None else os.path.dirname(csv_path)
    findings = list(label_column) if isinstance(label_column, (list, tuple)) else None
    required = ([path_column] + (findings or [label_column])
                + ([group_column] if group_column else []))
    rows, columns = _read_csv_rows(csv_path, required)
    if not rows:
        raise ValueError(f"CSV {csv_path!r} has a header {columns} but no rows of images")
    seen, entries, skipped, dupes = {}, [], [], []
    for line, row, n_extra in rows:
        path = os.path.normpath(os.path.join(base, row[path_column]))
        where = f"CSV {csv_path!r} line {line}"
        problem = _row_problem(row, n_extra, len(columns), path_column,
                               None if findings else label_column)
        if problem:
            _bad_file(on_error, skipped, path, f"{where}: {problem}")
            continue
        record = (tuple(row[c] for c in findings) if findings else row[label_column],
                  row[group_column] if group_column else None)
        if path in seen:
            first_line, first_record = seen[path]
            if first_record != record:
                raise ValueError(f"CSV {csv_path!r}: path {row[path_column]!r} appears on "
                                 f"lines {first_line} and {line} with different "
                                 f"label/group {first_record} vs {record}")
            dupes.append((first_line, line))
            continue
        seen[path] = (line, record)
        if not os.path.exists(path):
            _bad_file(on_error, skipped, path, f"{where}: file does not exist",
                      FileNotFoundError)
        elif _usable(path, on_error, skipped, check_images, where):
            entries.append((path, *record, line))
    if dupes:
        warnings.warn(f"CSV {csv_path!r}: {len(dupes)} duplicate row(s) with agreeing labels "
                      f"removed (first line, repeat line): {dupes[:10]}", UserWarning,
                      stacklevel=2)
    if not findings:
        _check_label_case([e[1] for e in entries], [e[3] for e in entries],
                          f"CSV {csv_path!r}", "line")
    _warn_skipped(skipped, f"CSV {csv_path!r}")
    entries.sort(key=lambda e: e[0])
    filenames = np.asarray([e[0] for e in entries], dtype=str)
    if findings:
        target = label_matrix([e[1] for e in entries], [e[3] for e in entries], findings,
                              f"CSV {csv_path!r}")
        return Bunch(filenames=filenames, target=target, target_names=np.asarray(findings),
                     groups=(np.asarray([e[2] for e in entries], dtype=str)
                             if group_column else None), skipped=skipped,
                     DESCR=f"Image CSV {csv_path!r}: {len(filenames)} images, "
                           f"{len(findings)} findings, {len(skipped)} skipped.")
    target = np.asarray([e[1] for e in entries], dtype=str)
    groups = np.asarray([e[2] for e in entries], dtype=str) if group_column else None
    descr = (f"Image CSV {csv_path!r}: {len(filenames)} images, {len(dupes)} duplicate rows "
             f"removed, {len(skipped)} skipped.")
    return Bunch(filenames=filenames, target=target, target_names=np.unique(target),
                 groups=groups, skipped=skipped, DESCR=descr)


def load_medmnist(npz_path, split="train"):
    """Load one split of a MedMNIST ``.npz`` archive (e.g. PneumoniaMNIST).

    Parameters
    ----------
    npz_path : str or os.PathLike
        Archive with ``<split>_images`` and ``<split>_labels`` arrays.
    split : str, default="train"
        Usually ``"train"``, ``"val"`` or ``"test"``; an unknown split raises a
        ValueError listing the available ones.

    Returns
    -------
    data : sklearn.utils.Bunch
        ``images`` uint8 (n, H, W) or (n, H, W, C); ``target`` (n,) int64;
        ``target_names`` (``["normal", "pneumonia"]`` when the file name contains
        "pneumonia", else the label values as strings); ``DESCR``.

    Examples
    --------
    >>> data = load_medmnist("../shared/data/pneumoniamnist.npz", "val")  # doctest: +SKIP
    >>> data.images.shape, data.target_names  # doctest: +SKIP
    ((524, 28, 28), ['normal', 'pneumonia'])
    """
    npz_path = os.fspath(npz_path)
    if not os.path.isfile(npz_path):
        raise FileNotFoundError(f"MedMNIST archive {npz_path!r} does not exist")
    try:
        archive = np.load(npz_path)  # allow_pickle=False: a pickle inside is refused
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(f"{npz_path!r} is not a MedMNIST .npz archive of arrays: "
                         f"{exc}") from None
    if not hasattr(archive, "files"):  # a single .npy array
        raise ValueError(f"{npz_path!r} is a single NumPy array, not a MedMNIST .npz "
                         "archive of <split>_images / <split>_labels")
    with archive, _named_errors(npz_path):
        splits = sorted(k[: -len("_images")] for k in archive.files if k.endswith("_images"))
        if split not in splits:
            raise ValueError(f"split {split!r} not in {npz_path!r}; available splits: {splits}")
        images = archive[f"{split}_images"]
        if f"{split}_labels" not in archive.files:
            raise ValueError(f"{npz_path!r} has {split}_images but no {split}_labels")
        target = archive[f"{split}_labels"]
        if len(target) != len(images):
            raise ValueError(f"{npz_path!r} split {split!r} has {len(images)} images but "
                             f"{len(target)} labels ({split}_labels of shape "
                             f"{target.shape}); the archive is inconsistent")
        target = target.reshape(len(images), -1)
        all_labels = np.unique(np.concatenate(
            [archive[f"{s}_labels"].ravel() for s in splits if f"{s}_labels" in archive.files]))
    if target.shape[1] != 1:
        raise ValueError(f"{npz_path!r} split {split!r} has multi-label targets of shape "
                         f"{target.shape}; only single-label archives are supported")
    target = target.ravel().astype(np.int64)
    if "pneumonia" in os.path.basename(npz_path).lower():
        target_names = ["normal", "pneumonia"]
    else:
        target_names = [str(int(v)) for v in all_labels]
    descr = (f"MedMNIST archive {os.path.basename(npz_path)!r}, split {split!r}: "
             f"{len(images)} images of shape {images.shape[1:]}, classes {target_names}.")
    return Bunch(images=images, target=target, target_names=target_names, DESCR=descr)


@contextlib.contextmanager
def _named_errors(npz_path):
    """An array of the archive NumPy refuses to read (object arrays need pickle) as an
    error naming the file."""
    try:
        yield
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        if str(npz_path) in str(exc):
            raise
        raise ValueError(f"{npz_path!r}: {exc}") from None


def sample_data_dir():
    """Folder of the bundled sample: 400 PneumoniaMNIST train images (200 normal,
    200 pneumonia) as 28×28 PNGs in ``<class>/`` subfolders. CC BY 4.0; see its
    ``ATTRIBUTION.md`` (MedMNIST v2, Yang et al. 2023; Kermany et al. 2018)."""
    from pathlib import Path

    return str(Path(__file__).resolve().parent / "data" / "pneumoniamnist_sample")


def load_sample():
    """The bundled sample as a Bunch, via :func:`load_image_folder` (no patient groups:
    PneumoniaMNIST does not publish patient ids).

    Examples
    --------
    >>> from cxr_estimators.datasets import load_sample
    >>> data = load_sample()
    >>> len(data.filenames), data.target_names.tolist()
    (400, ['normal', 'pneumonia'])
    """
    return load_image_folder(sample_data_dir())
