"""The one-page HTML evaluation report and its JSON twin.

:func:`report` (public as :func:`cxr_estimators.evaluation.report`) checks everything it
can before computing anything, builds the sections of :mod:`._sections` and
:mod:`._checks`, fills the one template of :mod:`._template` and writes the page and
``<name>.json`` atomically (:func:`cxr_estimators._safefile.atomic_write`).
"""

from __future__ import annotations

import datetime
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.pipeline import Pipeline
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from .._safefile import atomic_write
from . import _checks, _multilabel, _sections
from ._template import GENERATOR, PAGE, escape

#: Test images the report needs: the shift audit's minimum and enough for CIs.
MIN_TEST_IMAGES = 10


@dataclass
class _Context:
    model: object
    clf: object
    X_test: object
    y_test: np.ndarray
    X_train: object
    y_train: object
    groups: object
    patients: object
    patients_train: object
    n_bootstraps: int
    n_gradcam: int
    random_state: int
    rng: np.random.RandomState


def _check_path(path):
    """Refuse, before any work, a path the report may not write."""
    path = Path(path)
    twin = path.with_suffix(".json")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise FileNotFoundError(f"cannot write the report {str(path)!r}: folder "
                                f"{str(folder)!r} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write the report {str(path)!r}: folder "
                              f"{str(folder)!r} is not writable")
    for target in (path, twin):
        if target.exists() and not _written_by_us(target):
            raise FileExistsError(
                f"{str(target)!r} exists and is not a report written by cxr_estimators; "
                "it is left untouched: choose another path")
    return path, twin


def _written_by_us(target):
    if not target.is_file():
        return False
    with open(target, "rb") as fh:
        head = fh.read(4096).decode("utf-8", "replace")
    return (f'<meta name="generator" content="{GENERATOR}">' in head
            or f'"generator": "{GENERATOR}"' in head)


def _classifier(model):
    from ..classifier import CXRClassifier

    clf = model[-1] if isinstance(model, Pipeline) else model
    if not isinstance(clf, CXRClassifier):
        raise TypeError(f"report needs a CXRClassifier or a Pipeline ending in one; got "
                        f"{type(clf).__name__}")
    check_is_fitted(clf, "net_")
    classes = np.asarray(clf.classes_)
    if clf._findings() is None and (classes.ndim != 1 or len(classes) != 2):
        raise NotImplementedError(
            f"report covers binary models and multi-label models; this one has classes "
            f"{classes.tolist()}. One section per class is not implemented yet: use "
            "metrics.clinical_report for it")
    return clf


def _check_data(X_test, y_test, X_train, y_train, groups, patients, patients_train,
                multilabel=False):
    if np.ndim(y_test) == 2 and not multilabel:
        raise NotImplementedError(
            f"y_test is 2-D {np.shape(y_test)} but the model is binary: a multi-label report "
            "(one section per finding) needs a model fitted on multi-label targets (n, k)")
    if len(X_test) < MIN_TEST_IMAGES:
        raise ValueError(f"report needs at least {MIN_TEST_IMAGES} test images; X_test has "
                         f"{len(X_test)}")
    if len(y_test) != len(X_test):
        raise ValueError(f"y_test has {len(y_test)} labels but X_test has {len(X_test)} images")
    if y_train is not None and X_train is None:
        raise ValueError("y_train is given without X_train")
    if y_train is not None and len(y_train) != len(X_train):
        raise ValueError(f"y_train has {len(y_train)} labels but X_train has "
                         f"{len(X_train)} images")
    if groups is not None and len(groups) != len(X_test):
        raise ValueError(f"groups has {len(groups)} entries but X_test has {len(X_test)} "
                         "images (one group, e.g. a site, per test image)")
    if patients is not None and len(patients) != len(X_test):
        raise ValueError(f"patients has {len(patients)} entries but X_test has "
                         f"{len(X_test)} images")
    if patients_train is not None and (X_train is None or len(patients_train) != len(X_train)):
        raise ValueError(f"patients_train has {len(patients_train)} entries but X_train has "
                         f"{0 if X_train is None else len(X_train)} images")


def _finding(clf, proba, y_test, pos_label, threshold):
    from .._validation import is_finite_number
    from ._clinical import _implicit_pos_label

    classes = list(clf.classes_)
    pos_label = _implicit_pos_label(classes, "report") if pos_label is None else pos_label
    if pos_label not in classes:
        raise ValueError(f"pos_label={pos_label!r} is not one of the model's classes {classes}")
    unknown = sorted(set(np.unique(y_test).tolist()) - set(classes), key=str)
    if unknown:
        raise ValueError(f"y_test has label(s) {unknown} the model does not know; its "
                         f"classes are {classes}")
    threshold = 0.5 if threshold is None else threshold
    if not is_finite_number(threshold) or not 0 <= threshold <= 1:
        raise ValueError(f"threshold must be a probability in [0, 1]; got {threshold!r}")
    k = classes.index(pos_label)
    return _sections.Finding(name=str(pos_label), positive=pos_label,
                             negative=classes[1 - k], y_true=np.asarray(y_test) == pos_label,
                             score=proba[:, k], threshold=float(threshold))


def _nest(sections):
    """The JSON twin: each section's data under its dotted key."""
    out = {}
    for section in sections:
        *parents, last = section.key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = section.data
    return out


def report(model, X_test, y_test, path, *, X_train=None, y_train=None, groups=None,
           patients=None, patients_train=None, threshold=None, pos_label=None,
           title="Evaluation report", n_bootstraps=1000, n_gradcam=8, random_state=0):
    """Write a one-page HTML evaluation report, and its numbers as JSON beside it.

    The page is self-contained (figures inlined as base64 PNG, no script, no network)
    and holds: data counts and the audit of the test images (duplicates, leaks from
    training, odd images); the model card (backbone, weights' SHA-256, parameters,
    versions, training curves with ``best_epoch_``); performance at the threshold with
    95 % bootstrap CIs (sensitivity, specificity, PPV, NPV, F1, ROC AUC, PR AUC, Brier),
    the ROC curve with its operating point and CI band, the calibration curve and the
    confusion matrix; a table of other thresholds; subgroups (``groups``); the shift
    audit of the test images against the training images; the shortcut test; a Grad-CAM
    gallery led by the most confident errors; and the CLAIM / STARD items the study team
    must complete.

    A multi-label model (fitted on ``Y`` of shape (n, k), ``findings_``) gets the
    performance, threshold, subgroup and Grad-CAM sections once per finding, each on the
    test images labelled for that finding (NaN labels left out), keyed
    ``performance.<finding>``... as a binary report is keyed by its positive class; the
    data section counts labelled, positive and missing labels per finding, the shift
    audit runs without per-class labels, and the shortcut test is not run (the page says
    so).

    Parameters
    ----------
    model : fitted CXRClassifier or Pipeline ending in one (binary or multi-label)
    X_test, y_test : the test images (as ``model`` takes them) and labels
        For a multi-label model ``y_test`` is (n, k), an array or a DataFrame with the
        model's findings as columns: 1, 0 or NaN (not labelled).
    path : str or os.PathLike
        The HTML file; the JSON goes to the same name with ``.json``. An existing file
        there is replaced only if it is a report written by this function.
    X_train, y_train : optional
        The training images (as ``model`` takes them) and labels: leakage into the test
        set and the shift audit.
    groups : array-like of shape (n_test,), optional
        Site or subgroup of each test image: a subgroup table.
    patients, patients_train : array-like, optional
        Patient id of each test / training image: patients are counted, patients in
        both sets are reported as leaks, and the shift audit keeps each patient on one
        side of its folds.
    threshold : float in [0, 1], default=None (0.5)
        Predicted positive when the positive class's probability is at least this. For
        a multi-label model it applies to every finding; None: the model's own
        ``thresholds`` per finding, as ``predict`` applies them (0.5 when unset).
    pos_label : object, default=None
        Positive class; None only for classes {0, 1} or {-1, 1}. Must be None for a
        multi-label model (each finding's positive is label 1).
    title : str, default="Evaluation report"
    n_bootstraps : int, default=1000
    n_gradcam : int, default=8
        Images in the Grad-CAM gallery.
    random_state : int, default=0

    Returns
    -------
    data : dict
        What the JSON file holds.

    Raises
    ------
    FileExistsError
        ``path`` or its ``.json`` twin exists and is not such a report (left untouched).
    FileNotFoundError, PermissionError
        The folder of ``path`` does not exist or cannot be written.
    sklearn.exceptions.NotFittedError
        ``model`` is not fitted.
    NotImplementedError
        A (single-label) model with more than two classes; a 2-D ``y_test`` for a binary
        model.
    ValueError
        Fewer than ``MIN_TEST_IMAGES`` (10) test images, mismatched lengths, labels the
        model does not know, a threshold outside [0, 1]; for a multi-label model a 1-D
        ``y_test``, other findings (columns) than the model's, a label other than 1 / 0 /
        NaN, a ``pos_label``.
    """
    path, twin = _check_path(path)
    clf = _classifier(model)
    multilabel = clf._findings() is not None
    _check_data(X_test, y_test, X_train, y_train, groups, patients, patients_train,
                multilabel)
    if multilabel:
        names, y_test, y_train, cuts = _multilabel.targets(clf, y_test, y_train, threshold,
                                                           pos_label)
        findings = _multilabel.per_finding(model.predict_proba(X_test), y_test, names, cuts)
    else:
        y_test = np.asarray(y_test)
        finding = _finding(clf, model.predict_proba(X_test), y_test, pos_label, threshold)
    ctx = _Context(model=model, clf=clf, X_test=X_test, y_test=y_test, X_train=X_train,
                   y_train=None if y_train is None else np.asarray(y_train), groups=groups,
                   patients=patients, patients_train=patients_train,
                   n_bootstraps=int(n_bootstraps), n_gradcam=int(n_gradcam),
                   random_state=random_state, rng=check_random_state(random_state))
    if multilabel:
        sections = _multilabel.sections(ctx, findings)
    else:
        sections = [_sections.data_section(ctx), _sections.model_section(ctx),
                    _sections.performance_section(ctx, finding),
                    _sections.threshold_section(ctx, finding)]
        if groups is not None:
            sections.append(_sections.subgroup_section(ctx, finding))
        sections += [_checks.shift_section(ctx), _checks.shortcut_section(ctx, finding),
                     _checks.gradcam_section(ctx, finding), _checks.study_team_section(ctx)]
    data = {"generator": GENERATOR, "title": title,
            "written": datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="seconds"), **_nest(sections)}
    text = json.dumps(data, indent=1, default=_plain)
    atomic_write(twin, text.encode(), what="report")
    atomic_write(path, _page(data, sections, twin.name).encode("utf-8"), what="report")
    return json.loads(text)


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def _page(data, sections, json_name):
    from .. import __version__

    body = "".join(f'<section id="{escape(s.key)}"><h2>{escape(s.title)}</h2>{s.html}'
                   "</section>" for s in sections)
    shift = data.get("shift", {})
    summary = ('<p class="warn">Dataset shift: the test images differ from the training '
               "images (see below); validation figures are likely optimistic.</p>"
               if shift.get("shifted") else "")
    return PAGE.substitute(generator=GENERATOR, title=escape(data["title"]),
                           subtitle=f"written {escape(data['written'])}", summary=summary,
                           sections=body, version=escape(__version__),
                           json_name=escape(json_name))
