"""Per-finding clinical metrics of multilabel targets (n, k), NaN labels left out.

Imported by users from :mod:`cxr_estimators.metrics`: :func:`clinical_report` with a
2-D ``y_true`` returns the :class:`FindingsReport` made here, :func:`findings_scores`
serves ``clinical_scorers`` on multilabel targets, and :func:`log_loss_per_finding` /
:func:`brier_score_per_finding` score each finding on its own.

Written by hand: sklearn's metrics refuse NaN in ``y_true``, and its ``log_loss`` /
``brier_score_loss`` take a multilabel indicator for a multiclass one (a wrong number);
no library bootstraps a per-finding report resampling patients. The bootstrap weighs
each image by how often its patient was drawn, so all resamples are computed at once
(the same weighted ROC AUC as :func:`cxr_estimators.report._clinical._weighted_auc`); point
estimates are these formulas with unit weights, checked against sklearn in
``tests/test_multilabel_metrics.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.utils import check_random_state

from .._targets import check_thresholds, multilabel_targets
from ._clinical import (
    MetricEstimate, _estimate, _per_class_rates, _weighted_auc, bootstrap_weights,
)

__all__ = ["FindingsReport", "brier_score_per_finding", "findings_report",
           "findings_scores", "log_loss_per_finding"]

#: Metrics of each finding (and their macro / micro means).
FINDING_METRICS = ("sensitivity", "specificity", "ppv", "npv", "f1", "roc_auc", "pr_auc",
                   "log_loss", "brier", "prevalence")
#: Resamples x cells per bootstrap chunk.
_CHUNK_CELLS = 2 ** 21
_EPS = 1e-15


def _check_pair(y_true, y_score, uncertain=None):
    """``(names, Y float64 with NaN, scores float64)``, shapes matched."""
    names, Y = multilabel_targets(y_true, uncertain, "y_true")
    names = names.tolist()  # Python ints / str as dict keys
    scores = np.asarray(y_score, dtype=np.float64)
    if scores.shape != Y.shape:
        raise ValueError(f"y_score has shape {scores.shape} but y_true has {Y.shape}: one "
                         "probability per image and finding (estimator.predict_proba(X))")
    if not np.all(np.isfinite(scores)):
        raise ValueError("y_score has NaN or infinite values")
    return names, Y.astype(np.float64), scores


def _weighted_ap(score, positive, weights):
    """Average precision (sklearn's step form) per row of ``weights``; NaN without
    positives."""
    order = np.argsort(-score, kind="stable")
    s, pos, w = score[order], positive[order], weights[:, order]
    tp, fp = np.cumsum(w * pos, axis=1), np.cumsum(w * ~pos, axis=1)
    ends = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last of each tie group
    tp, fp = tp[:, ends], fp[:, ends]
    total = tp[:, -1:]
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        recall = tp / total
    gain = np.diff(recall, axis=1, prepend=0.0)
    ap = (gain * precision).sum(axis=1)
    ap[total[:, 0] == 0] = np.nan
    return ap


def _finding_metrics(y, p, cut, weights):
    """Metric arrays (one value per row of ``weights``) of one finding's labelled
    images: labels ``y`` (0/1), probabilities ``p``, threshold ``cut``."""
    pos, pred = y == 1, p >= cut
    tp, fn = weights @ (pos & pred), weights @ (pos & ~pred)
    fp, tn = weights @ (~pos & pred), weights @ (~pos & ~pred)
    out = _per_class_rates(tp, fn, fp, tn)
    total = weights.sum(axis=1)
    order = np.argsort(p, kind="stable")
    out["roc_auc"] = _weighted_auc(p, pos, weights, order)
    out["pr_auc"] = _weighted_ap(p, pos, weights)
    clipped = np.clip(p, _EPS, 1 - _EPS)
    with np.errstate(divide="ignore", invalid="ignore"):
        out["log_loss"] = weights @ -(y * np.log(clipped) + (1 - y) * np.log1p(-clipped)) \
            / total
        out["brier"] = weights @ (p - y) ** 2 / total
        out["prevalence"] = (tp + fn) / total
    return out, (tp, fn, fp, tn)


def _all_metrics(Y, P, cuts, weights):
    """``{(finding index | "macro" | "micro", metric): array over weight rows}``."""
    out, counts = {}, []
    for j in range(Y.shape[1]):
        labelled = ~np.isnan(Y[:, j])
        y, p, w = Y[labelled, j], P[labelled, j], weights[:, labelled]
        metrics, c = _finding_metrics(y, p, cuts[j], w)
        counts.append(c)
        out.update({(j, m): v for m, v in metrics.items()})
    for m in FINDING_METRICS:
        stacked = np.column_stack([out[(j, m)] for j in range(Y.shape[1])])
        defined = np.isfinite(stacked)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[("macro", m)] = np.where(defined, stacked, 0).sum(axis=1) / defined.sum(
                axis=1)
    tp, fn, fp, tn = (sum(c[i] for c in counts) for i in range(4))
    out.update({("micro", m): v for m, v in _per_class_rates(tp, fn, fp, tn).items()})
    return out


def _micro_scores(Y, P, weights):
    """Micro ROC AUC / PR AUC: every labelled (image, finding) pair pooled."""
    labelled = ~np.isnan(Y)
    cols = np.nonzero(labelled)
    y, p = Y[cols] == 1, P[cols]
    w = weights[:, cols[0]]
    return {("micro", "roc_auc"): _weighted_auc(p, y, w, np.argsort(p, kind="stable")),
            ("micro", "pr_auc"): _weighted_ap(p, y, w)}


def _resample_weights(groups, n, b, rng):
    """(b, n) multiplicity of each image: its patient's draw count (each image its own
    patient without groups)."""
    if groups is None:
        return bootstrap_weights(n, b, rng)
    _, codes = np.unique(np.asarray(groups), return_inverse=True)
    return bootstrap_weights(codes.max() + 1, b, rng)[:, codes]


def findings_report(y_true, y_score, *, threshold=None, groups=None, n_bootstraps=1000,
                    confidence=0.95, random_state=None, uncertain=None):
    """Per-finding report of multilabel targets; see :func:`cxr_estimators.metrics.
    clinical_report` (which calls this for a 2-D ``y_true``)."""
    names, Y, P = _check_pair(y_true, y_score, uncertain)
    if groups is not None and len(np.asarray(groups)) != len(Y):
        raise ValueError(f"groups has {len(np.asarray(groups))} entries but y_true has "
                         f"{len(Y)} rows")
    if (not isinstance(n_bootstraps, (int, np.integer)) or isinstance(n_bootstraps, bool)
            or n_bootstraps < 0):
        raise ValueError(f"n_bootstraps must be an int >= 0; got {n_bootstraps!r}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1); got {confidence!r}")
    cuts = check_thresholds(threshold, names)
    ones = np.ones((1, len(Y)))
    point = {k: float(v[0]) for k, v in {**_all_metrics(Y, P, cuts, ones),
                                         **_micro_scores(Y, P, ones)}.items()}
    rng = check_random_state(random_state)
    chunk = max(1, _CHUNK_CELLS // max(1, Y.size))
    parts = []
    for start in range(0, n_bootstraps, chunk):
        w = _resample_weights(groups, len(Y), min(chunk, n_bootstraps - start), rng)
        parts.append({**_all_metrics(Y, P, cuts, w), **_micro_scores(Y, P, w)})
    boot = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else {}
    alpha = (1 - confidence) / 2
    est = {k: _estimate(v, boot.get(k), alpha) for k, v in point.items()}
    per_finding = {names[j]: {m: est[(j, m)] for m in FINDING_METRICS}
                   for j in range(len(names))}
    n_labelled = {names[j]: int((~np.isnan(Y[:, j])).sum()) for j in range(len(names))}
    return FindingsReport(
        findings=list(names), thresholds=cuts.tolist(), n_samples=len(Y),
        n_labelled=n_labelled, confidence=confidence, n_bootstraps=n_bootstraps,
        patients=None if groups is None else len(np.unique(np.asarray(groups))),
        per_finding=per_finding,
        macro={m: est[("macro", m)] for m in FINDING_METRICS},
        micro={k[1]: v for k, v in est.items() if k[0] == "micro"})


@dataclass
class FindingsReport:
    """Result of :func:`~cxr_estimators.metrics.clinical_report` on multilabel targets.

    Attributes
    ----------
    findings : list
    thresholds : list of float
        Per finding: predicted present when its probability >= this.
    n_samples : int
    n_labelled : dict of finding -> int
        Images whose label of that finding was known (not NaN) and scored.
    patients : int or None
        Patients resampled by the bootstrap (None: images were resampled).
    per_finding : dict of finding -> dict of metric -> MetricEstimate
        ``FINDING_METRICS``: sensitivity, specificity, ppv, npv, f1, roc_auc, pr_auc
        (average precision), log_loss, brier, prevalence, over that finding's labelled
        images.
    macro : dict of metric -> MetricEstimate
        Mean over the findings where the metric is defined.
    micro : dict of metric -> MetricEstimate
        From all labelled (image, finding) pairs pooled: sensitivity, specificity, ppv,
        npv, f1, roc_auc, pr_auc.
    """

    findings: list
    thresholds: list
    n_samples: int
    n_labelled: dict
    confidence: float
    n_bootstraps: int
    patients: int | None
    per_finding: dict
    macro: dict
    micro: dict

    def _rows(self):
        for finding, metrics in self.per_finding.items():
            for metric, est in metrics.items():
                yield str(finding), metric, est
        for group in ("macro", "micro"):
            for metric, est in getattr(self, group).items():
                yield group, metric, est

    def __repr__(self):
        auc = self.macro["roc_auc"]
        return (f"FindingsReport(n_samples={self.n_samples}, findings={self.findings}, "
                f"macro roc_auc={auc.value:.3f} [{auc.ci_low:.3f}, {auc.ci_high:.3f}])")

    def __str__(self):
        unit = "images" if self.patients is None else f"{self.patients} patients"
        pct = f"{100 * self.confidence:g}%"
        lines = [f"Clinical report: n = {self.n_samples} images, {len(self.findings)} "
                 "findings (NaN labels left out per finding)",
                 f"{pct} CI: percentile bootstrap, {self.n_bootstraps} resamples of {unit}",
                 "", f"{'finding':<20}{'n':>6}{'thr':>6}  " + "".join(
                     f"{m:>19}" for m in ("sensitivity", "specificity", "roc_auc",
                                          "pr_auc"))]

        def cell(est):
            ci = f"[{est.ci_low:.2f},{est.ci_high:.2f}]" if est.n_resamples else ""
            return f"{est.value:>7.3f} {ci:<11}"

        for (finding, metrics), cut in zip(self.per_finding.items(), self.thresholds):
            lines.append(f"{str(finding)[:19]:<20}{self.n_labelled[finding]:>6}{cut:>6.2f}  "
                         + "".join(cell(metrics[m]) for m in
                                   ("sensitivity", "specificity", "roc_auc", "pr_auc")))
        for group in ("macro", "micro"):
            metrics = getattr(self, group)
            lines.append(f"{group:<20}{'':>6}{'':>6}  " + "".join(
                cell(metrics[m]) for m in ("sensitivity", "specificity", "roc_auc",
                                           "pr_auc")))
        return "\n".join(lines)

    def to_frame(self):
        """Long-format DataFrame: finding (or "macro" / "micro"), metric, value, ci_low,
        ci_high, n_resamples."""
        import pandas as pd

        return pd.DataFrame([(g, m, *e) for g, m, e in self._rows()],
                            columns=["finding", "metric", *MetricEstimate._fields])

    def to_dict(self):
        """Nested dicts of floats: "per_finding", "macro", "micro", plus the settings."""
        def plain(metrics):
            return {m: dict(zip(MetricEstimate._fields, map(float, e)))
                    for m, e in metrics.items()}
        return {"findings": [str(f) for f in self.findings], "thresholds": self.thresholds,
                "n_samples": self.n_samples, "n_labelled": {str(k): v for k, v in
                                                            self.n_labelled.items()},
                "confidence": self.confidence, "n_bootstraps": self.n_bootstraps,
                "patients": self.patients,
                "per_finding": {str(f): plain(m) for f, m in self.per_finding.items()},
                "macro": plain(self.macro), "micro": plain(self.micro)}


def findings_scores(y_true, y_score, *, threshold=None, sample_weight=None, names=None):
    """Point estimates ``{"<metric>": macro, "<metric>_<finding>": value}`` for the
    clinical scorers (sensitivity, specificity, f1, roc_auc, accuracy)."""
    found, Y, P = _check_pair(y_true, y_score)
    names = found if names is None else names
    w = np.ones((1, len(Y))) if sample_weight is None else \
        np.asarray(sample_weight, dtype=np.float64)[None, :]
    metrics = _all_metrics(Y, P, check_thresholds(threshold, names), w)
    out = {}
    for metric in ("sensitivity", "specificity", "f1", "roc_auc"):
        out[metric] = float(metrics[("macro", metric)][0])
        out.update({f"{metric}_{names[j]}": float(metrics[(j, metric)][0])
                    for j in range(len(names))})
    accuracy = [float(np.average((P[~np.isnan(Y[:, j]), j] >= 0.5)
                                 == Y[~np.isnan(Y[:, j]), j],
                                 weights=w[0, ~np.isnan(Y[:, j])]))
                for j in range(Y.shape[1])]
    out["accuracy"] = float(np.mean(accuracy))
    return out


def _per_finding(metric, y_true, y_prob, sample_weight):
    names, Y, P = _check_pair(y_true, y_prob)
    w = np.ones((1, len(Y))) if sample_weight is None else \
        np.asarray(sample_weight, dtype=np.float64)[None, :]
    metrics = _all_metrics(Y, P, np.full(len(names), 0.5), w)
    return {names[j]: float(metrics[(j, metric)][0]) for j in range(len(names))}


def log_loss_per_finding(y_true, y_prob, *, sample_weight=None):
    """Binary log loss of each finding over its labelled images (NaN left out).

    sklearn's ``log_loss`` takes a 2-D indicator for a multiclass problem (rows of
    ``y_prob`` renormalised to sum to 1), not k binary ones, and refuses NaN.

    Returns
    -------
    dict of finding -> float
        Finding names: a DataFrame's columns, else 0 .. k-1.

    Examples
    --------
    >>> import numpy as np
    >>> Y = np.array([[1, 0], [0, np.nan], [1, 1]])
    >>> P = np.array([[0.9, 0.2], [0.1, 0.7], [0.8, 0.6]])
    >>> {k: round(v, 3) for k, v in log_loss_per_finding(Y, P).items()}
    {0: 0.145, 1: 0.367}
    """
    return _per_finding("log_loss", y_true, y_prob, sample_weight)


def brier_score_per_finding(y_true, y_prob, *, sample_weight=None):
    """Brier score (mean squared error of the probability) of each finding over its
    labelled images (NaN left out); see :func:`log_loss_per_finding` for why.

    Returns
    -------
    dict of finding -> float
    """
    return _per_finding("brier", y_true, y_prob, sample_weight)

