"""The report's checks of the evaluation itself: shift audit, shortcut test, Grad-CAM
gallery, and the study-team section a library cannot fill."""

from __future__ import annotations

import numpy as np

from ._sections import Section, figure_html
from ._template import escape, number_cell, table

#: CLAIM (Mongan et al. 2020) / STARD 2015 items only the study team can state.
STUDY_TEAM_ITEMS = (
    ("Intended use and clinical role", "CLAIM 3, STARD 27", "screening, triage, second read? "
     "who acts on a positive?"),
    ("Target population and setting", "CLAIM 7-9, STARD 5-6", "age, site, inpatients or "
     "outpatients, prevalence expected there"),
    ("Eligibility and selection of images", "CLAIM 8, STARD 6-9", "consecutive or "
     "convenience? which images were excluded and why?"),
    ("Reference standard", "CLAIM 14-16, STARD 11-13", "how each label was established, "
     "by whom, blinded to what"),
    ("Data sources and dates", "CLAIM 7, STARD 8", "hospitals, scanners, years; how the "
     "test set was kept apart from model development"),
    ("Sample size", "CLAIM 19, STARD 18", "why this many test images; precision expected "
     "for the key metric"),
    ("Indeterminate and missing results", "STARD 15-16", "how unreadable images or labels "
     "were handled"),
    ("Failure analysis", "CLAIM 37", "what the false negatives have in common (see the "
     "gallery) and what it means for patients"),
    ("Ethics and data governance", "CLAIM 40", "approval, consent, de-identification"),
)


def shift_section(ctx):
    from .._shift import shift_audit

    if ctx.X_train is None:
        return Section("shift", "Dataset shift: test vs training images",
                       "<p>Not run: pass <code>X_train=</code> to compare the test images "
                       "with the training images.</p>", {"run": False})
    y_ref = ctx.y_train if ctx.y_train is not None else None
    audit = shift_audit(ctx.X_train, ctx.X_test, y_ref=y_ref,
                        y_new=ctx.y_test if y_ref is not None else None, model=ctx.model,
                        groups_ref=ctx.patients_train, groups_new=ctx.patients,
                        random_state=ctx.random_state)
    data = {"run": True, **audit.to_dict()}
    rows = [["all images", *_shift_cells(data, "shift")]]
    for label, row in data["per_class"].items():
        rows.append([f"class {label}", *_shift_cells(row, f"shift.per_class.{label}")])
    verdict = ('<p class="warn">The test images are distinguishable from the training '
               "images: figures measured on data like the training set (validation, "
               "cross-validation) are likely optimistic for this test set.</p>"
               if audit.shifted else '<p class="ok">No shift detected between the '
               "training and test images.</p>")
    html = (f"<p>A domain classifier on the {audit.representation}, cross-validated, "
            "tries to tell test images from training images; ROC AUC 0.5 means it cannot. "
            f"p-value: {audit.n_permutations} label permutations.</p>"
            + table(["images", "domain AUC", "95% CI low", "95% CI high", "p-value",
                     "train", "test"], rows) + verdict
            + f"<p>Most atypical test images (indices): {escape(audit.atypical)}</p>")
    return Section("shift", "Dataset shift: test vs training images", html, data)


def _shift_cells(row, key):
    return [number_cell(row["auc"], f"{key}.auc"), number_cell(row["auc_ci"][0],
                                                               f"{key}.auc_ci.0"),
            number_cell(row["auc_ci"][1], f"{key}.auc_ci.1"),
            number_cell(row["p_value"], f"{key}.p_value", 4),
            number_cell(row["n_ref"], f"{key}.n_ref"), number_cell(row["n_new"], f"{key}.n_new")]


def shortcut_section(ctx, finding):
    from .._shortcut import shortcut_test

    key = f"shortcut.{finding.name}"
    result = shortcut_test(ctx.model, ctx.X_test, ctx.y_test, pos_label=finding.positive,
                           n_bootstraps=ctx.n_bootstraps, random_state=ctx.random_state)
    data = result.to_dict()
    rows = [["ROC AUC, images as they are", number_cell(data["auc"], f"{key}.auc")],
            [f"ROC AUC, {data['region']} blanked",
             number_cell(data["auc_masked"], f"{key}.auc_masked")],
            ["AUC drop", number_cell(data["auc_drop"], f"{key}.auc_drop")],
            ["AUC drop, 95% CI low", number_cell(data["auc_drop_ci"][0], f"{key}.auc_drop_ci.0")],
            ["AUC drop, 95% CI high", number_cell(data["auc_drop_ci"][1],
                                                  f"{key}.auc_drop_ci.1")],
            ["mean probability change", number_cell(data["mean_change"], f"{key}.mean_change")]]
    verdict = (f'<p class="{"warn" if result.fires else "ok"}">{escape(result)}</p>')
    return Section(key, "Shortcut test", table(["measure", "value"], rows) + verdict, data)


def _gallery_order(finding, n):
    """Most confident false negatives and false positives first, then the most
    confident true positives and negatives: (index, kind) pairs."""
    y, pred, s = finding.y_true, finding.y_pred, finding.score
    kinds = (("false negative", np.flatnonzero(y & ~pred), s),
             ("false positive", np.flatnonzero(~y & pred), -s),
             ("true positive", np.flatnonzero(y & pred), -s),
             ("true negative", np.flatnonzero(~y & ~pred), s))
    ranked = [[(int(i), kind) for i in idx[np.argsort(key[idx], kind="stable")]]
              for kind, idx, key in kinds]
    order = []
    quota = [max(1, n // 4)] * 4
    for group, q in zip(ranked, quota):
        order += group[:q]
    for group, q in zip(ranked, quota):  # fill with what is left, errors first
        order += group[q:q + n - len(order)] if len(order) < n else []
    return order[:n]


def gradcam_section(ctx, finding):
    from ..explain import grad_cam
    from ..plotting import plot_heatmap

    key = f"gradcam.{finding.name}"
    chosen = _gallery_order(finding, ctx.n_gradcam)
    if not chosen:
        return Section(key, "Grad-CAM gallery", "<p>No images.</p>", {"images": []})
    idx = [i for i, _ in chosen]
    X_sel = _take(ctx.X_test, idx)
    heatmaps = grad_cam(ctx.model, X_sel, target=finding.positive)
    images = ctx.model[:-1].transform(X_sel) if hasattr(ctx.model, "steps") and len(
        ctx.model) > 1 else np.asarray(X_sel)
    cells, data = [], []
    for (j, kind), image, heat in zip(chosen, images, heatmaps):
        i = j if finding.rows is None else int(finding.rows[j])
        truth = finding.positive if finding.y_true[j] else finding.negative
        pred = finding.positive if finding.y_pred[j] else finding.negative
        p = float(finding.score[j])
        fig = plot_heatmap(np.asarray(image), heat, true_label=truth, predicted_label=pred,
                           probability=p if finding.y_pred[j] else 1 - p)
        cells.append(f"<figure>{figure_html(fig, f'image {i}: {kind}', 'gallery')}"
                     f"<figcaption>image {i}: {escape(kind)}</figcaption></figure>")
        data.append({"index": i, "kind": kind, "true": str(truth), "predicted": str(pred),
                     f"probability_{finding.positive}": p})
    html = (f"<p>Grad-CAM of the evidence for <b>{escape(finding.positive)}</b>, led by the "
            "most confident errors. Colour marks where the model looked; the title gives "
            "the probability of the predicted class.</p>"
            f'<div class="figures gallery">{"".join(cells)}</div>')
    return Section(key, "Grad-CAM gallery", html, {"images": data})


def _take(X, idx):
    if isinstance(X, np.ndarray):
        return X[idx]
    return [X[i] for i in idx]


def study_team_section(ctx):
    rows = [[item, ref, f"<td class=\"todo\">to be completed ({escape(hint)})</td>"]
            for item, ref, hint in STUDY_TEAM_ITEMS]
    html = ("<p>Items of the CLAIM checklist and STARD 2015 that no library can fill. "
            "A report without them is not ready to share.</p>"
            + table(["item", "checklist", "statement"], rows))
    return Section("study_team", "To be completed by the study team", html,
                   {"items": [{"item": i, "checklist": r, "statement": None}
                              for i, r, _ in STUDY_TEAM_ITEMS]})
