"""The report of a multi-label model: one set of sections per finding.

A multi-label :class:`~cxr_estimators.CXRClassifier` (fitted on ``Y`` of shape (n, k),
``findings_``) answers k binary questions. Each finding becomes one
:class:`~._sections.Finding` over the test images labelled for it (NaN labels left out,
as in training and in :func:`~cxr_estimators.metrics.clinical_report`), and gets the
binary report's performance, threshold, subgroup and Grad-CAM sections, keyed by its
name (``performance.<finding>``...), so the JSON twin reads the same as a binary one.
The data section counts labelled, positive and missing labels per finding; the shift
audit runs without per-class labels; the shortcut test, a test of one binary score, is
not run (the page says so).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .. import _targets
from . import _checks, _sections
from ._template import number_cell, table


def targets(clf, y_test, y_train, threshold, pos_label):
    """Checked ``(findings, Y_test, Y_train, thresholds)`` of a multi-label model: Y as
    float (n, k) with NaN where not labelled, one threshold per finding."""
    from .._validation import is_finite_number

    if pos_label is not None:
        raise ValueError(f"pos_label={pos_label!r} applies to binary models; each finding "
                         "of a multi-label model has label 1 as its positive")
    findings = clf.findings_
    if not _targets.is_multilabel(y_test):
        raise ValueError(f"y_test has shape {np.shape(y_test)} but the model is multi-label "
                         f"with findings {[str(f) for f in findings]}: give y_test of shape "
                         f"(n, {len(findings)}), 1 / 0 / NaN (not labelled)")
    _, Y_test = _targets.multilabel_targets(y_test, name="y_test", findings=findings,
                                            against="the model")
    Y_train = None
    if y_train is not None:
        _, Y_train = _targets.multilabel_targets(y_train, clf.uncertain, name="y_train",
                                                 findings=findings, against="the model")
    if threshold is None:  # the model's own, as predict applies them (0.5 when unset)
        cut = _targets.check_thresholds(clf.thresholds, findings)
    elif not is_finite_number(threshold) or not 0 <= threshold <= 1:
        raise ValueError(f"threshold must be a probability in [0, 1]; got {threshold!r}")
    else:
        cut = np.full(len(findings), float(threshold))
    return findings, Y_test.astype(np.float64), Y_train, cut


def per_finding(proba, Y, findings, thresholds):
    """One :class:`~._sections.Finding` per finding, over its labelled test images."""
    out = []
    for j, finding in enumerate(findings):
        rows = np.flatnonzero(~np.isnan(Y[:, j]))
        out.append(_sections.Finding(
            name=str(finding), positive=finding, negative=f"no {finding}",
            y_true=Y[rows, j] == 1, score=proba[rows, j], threshold=float(thresholds[j]),
            rows=rows))
    return out


def _take(values, rows):
    return None if values is None else _checks._take(values, rows)


def sections(ctx, findings):
    """The page's sections for a multi-label model, in the binary page's order."""
    out = [data_section(ctx, findings), _sections.model_section(ctx)]
    for finding in findings:
        sub = dataclasses.replace(  # the images labelled for this finding
            ctx, X_test=_take(ctx.X_test, finding.rows), y_test=finding.y_true,
            groups=_take(ctx.groups, finding.rows), patients=_take(ctx.patients, finding.rows))
        out += [_sections.performance_section(sub, finding),
                _sections.threshold_section(sub, finding)]
        if ctx.groups is not None:
            out.append(_sections.subgroup_section(sub, finding))
        gallery = _checks.gradcam_section(sub, finding)
        gallery.title = f"{gallery.title}: {finding.positive}"
        out.append(gallery)
    shortcut = ("Not run for a multi-label model: the shortcut test "
                "(<code>explain.shortcut_test</code>) takes one binary score; run it per "
                "finding on a binary model.")
    out += [_checks.shift_section(dataclasses.replace(ctx, y_train=None)),
            _sections.Section("shortcut", "Shortcut test", f"<p>{shortcut}</p>",
                              {"run": False, "reason": "multi-label model"}),
            _checks.study_team_section(ctx)]
    return out


def data_section(ctx, findings):
    """Images and patients per split; labelled, positive and missing labels per finding;
    the audit of the test images (without label conflicts: labels are per finding)."""
    image_rows, count_rows, data = [], [], {"splits": {}}
    for split, X, Y, groups in (("train", ctx.X_train, ctx.y_train, ctx.patients_train),
                                ("test", ctx.X_test, ctx.y_test, ctx.patients)):
        if X is None:
            continue
        key = f"data.splits.{split}"
        entry = {"images": len(X), "findings": {},
                 "patients": None if groups is None else len(set(map(str, groups)))}
        for j, finding in enumerate([] if Y is None else findings):
            labelled = ~np.isnan(Y[:, j])
            counts = {"labelled": int(labelled.sum()), "positives": int((Y[:, j] == 1).sum()),
                      "missing": int((~labelled).sum())}
            entry["findings"][finding.name] = counts
            count_rows.append([split, finding.name] + [
                number_cell(v, f"{key}.findings.{finding.name}.{k}") for k, v in counts.items()])
        data["splits"][split] = entry
        image_rows.append([split, number_cell(len(X), f"{key}.images"),
                           "-" if groups is None else number_cell(entry["patients"],
                                                                  f"{key}.patients")])
    audit_html, data["audit"] = _sections.audit_of_test_images(ctx, None)
    html = (table(["split", "images", "patients"], image_rows)
            + "<h3>Labels per finding</h3><p>Missing labels (NaN) are left out of that "
            "finding's figures below.</p>"
            + table(["split", "finding", "labelled", "positives", "missing (NaN)"],
                    count_rows) + audit_html)
    return _sections.Section("data", "Data", html, data)
