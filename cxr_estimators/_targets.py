"""What ``y`` is: single-label classes, or a multilabel indicator of findings.

A 2-D ``Y`` of shape (n, k) with k >= 2 (array or DataFrame) is k findings of one image
each, as real chest X-ray datasets are labelled (ChestX-ray14, CheXpert, MIMIC-CXR): 1
present, 0 absent, NaN not labelled, -1 uncertain (CheXpert). Here: telling the two kinds
of ``y`` apart, the finding names, the checks of the values, the uncertain-label policy
(``uncertain=``), the per-finding positive weights (``class_weight="balanced"``), the
masked binary cross-entropy, the validation AUC averaged over findings that early
stopping can watch, and the patient-grouped split stratified on findings.

Written by hand because none of the libraries does it: torch's
``BCEWithLogitsLoss`` has no notion of a missing label; skorch's classifier expects
1-D targets (and gives ``predict_proba`` of shape (n, 2, k) for this case); sklearn's
``roc_auc_score`` and ``StratifiedGroupKFold`` refuse NaN and multilabel targets.
torchxrayvision masks missing labels the same way, without an sklearn API.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold
from skorch.callbacks import EpochScoring
from torch import nn

from ._validation import did_you_mean

__all__ = ["FindingsAUC", "MaskedBCEWithLogitsLoss", "StratifiedFindingGroupKFold",
           "check_thresholds", "finding_names", "is_multilabel", "multilabel_targets",
           "positive_weights"]

#: What ``uncertain=`` (or each value of its dict) may be.
UNCERTAIN_POLICIES = ("ignore", "zeros", "ones")
_POLICY_VALUE = {"ignore": np.nan, "zeros": 0.0, "ones": 1.0}


def is_multilabel(y):
    """True for a 2-D ``y`` with at least two columns (array, list of rows, DataFrame);
    a single column stays a 1-D label vector, as sklearn's ``column_or_1d`` has it."""
    if y is None:
        return False
    shape = getattr(y, "shape", None)
    if shape is None:
        try:  # asarray, not np.shape: sklearn's _NotAnArray refuses array functions
            shape = np.asarray(y).shape
        except (TypeError, ValueError):  # ragged rows: not an indicator matrix
            return False
    return len(shape) == 2 and shape[1] >= 2


def finding_names(Y):
    """The finding names of ``Y``: a DataFrame's columns as str, else 0 .. k-1."""
    columns = getattr(Y, "columns", None)
    if columns is not None:
        return np.array([str(c) for c in columns], dtype=object)
    return np.arange(np.shape(Y)[1])


def _as_float(Y, names, name):
    """``Y`` as float64 (n, k); a column of text names its finding."""
    values = Y.to_numpy() if hasattr(Y, "to_numpy") else np.asarray(Y, dtype=object)
    out = np.empty(values.shape, dtype=np.float64)
    for j, finding in enumerate(names):
        try:
            out[:, j] = np.asarray(values[:, j], dtype=np.float64)
        except (TypeError, ValueError):
            bad = next(v for v in values[:, j].tolist() if not _is_number(v))
            raise ValueError(
                f"{name} column {finding!r} has a value {bad!r} that is not a number; "
                "multilabel targets are 1 (present), 0 (absent), NaN (not labelled) or "
                "-1 (uncertain)") from None
    return out


def _is_number(value):
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return value is not None


def _same_findings(Y, names, findings, name, against):
    """The ``findings`` fitted on, once ``Y`` has as many columns and, for a DataFrame,
    the same names in the same order."""
    given = [str(f) for f in names]
    known = [str(f) for f in np.asarray(findings).tolist()]
    named = hasattr(Y, "columns")
    if len(given) != len(known) or (named and given != known):
        shown = given if named else f"{len(given)} columns"
        raise ValueError(f"{name} has findings {shown} but {against} has {known}; give "
                         f"{name} the same columns in the same order")
    return np.asarray(findings)


def multilabel_targets(Y, uncertain=None, name="y", findings=None, against="y"):
    """``(findings, Y as float32 (n, k))`` with the uncertain policy applied: NaN marks
    a label left out of the loss and of every metric.

    ``findings``: the names ``against`` (y, the model) has; ``Y`` must then have as
    many columns, with those names if it is a DataFrame. Values other than 0 / 1 / NaN / -1, and -1 without a policy,
    are errors naming the finding."""
    names = finding_names(Y)
    if findings is not None:
        names = _same_findings(Y, names, findings, name, against)
    values = _as_float(Y, names, name)
    if len(values) < (2 if findings is None else 1):
        raise ValueError(f"n_samples={len(values)}: need at least 2 labelled images to fit")
    for j, finding in enumerate(names):
        column = values[:, j]
        bad = ~(np.isnan(column) | np.isin(column, (0.0, 1.0, -1.0)))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"{name} column {finding!r} has the value {float(column[i])!r} at row {i}; "
                "multilabel targets are 1 (present), 0 (absent), NaN (not labelled) or "
                "-1 (uncertain)")
    policies = _policies(uncertain, names, values, name)
    for j, policy in enumerate(policies):
        if policy is not None:
            values[values[:, j] == -1, j] = _POLICY_VALUE[policy]
    return names, values.astype(np.float32)


def _policies(uncertain, names, values, name):
    """The policy of each finding (None where it has no -1 and none was given)."""
    listed = [str(f) for f in names]
    if isinstance(uncertain, dict):
        for key, policy in uncertain.items():
            if key == "default" and "default" not in listed:
                _check_policy(policy, "uncertain['default']")
                continue
            if str(key) not in listed:
                raise ValueError(f"uncertain names a finding {key!r} that y does not have; "
                                 f"findings: {listed}{did_you_mean(key, listed)}")
            _check_policy(policy, f"uncertain[{key!r}]")
        given = {str(k): v for k, v in uncertain.items()}
        policies = [given.get(f, uncertain.get("default")) for f in listed]
    else:
        if uncertain is not None:
            _check_policy(uncertain, "uncertain")
        policies = [uncertain] * len(listed)
    for j, finding in enumerate(listed):
        n_uncertain = int((values[:, j] == -1).sum())
        if n_uncertain and policies[j] is None:
            raise ValueError(
                f"{name} column {finding!r} has {n_uncertain} uncertain labels (-1) and no "
                f"policy for them: set uncertain= to one of {list(UNCERTAIN_POLICIES)} "
                "('ignore': left out of the loss and metrics, 'zeros': absent, 'ones': "
                f"present) or a dict per finding such as {{{finding!r}: 'ones'}}")
    return policies


def _check_policy(policy, where):
    if not isinstance(policy, str) or policy not in UNCERTAIN_POLICIES:
        raise ValueError(f"{where}={policy!r} is not one of {list(UNCERTAIN_POLICIES)}"
                         f"{did_you_mean(policy, UNCERTAIN_POLICIES)}")


def check_training_findings(names, Y):
    """A finding with no label in the training set is an error, one without positives
    (or negatives) a warning: the network's output for it learns nothing useful."""
    labelled = ~np.isnan(Y)
    for j, finding in enumerate(names):
        if not labelled[:, j].any():
            raise ValueError(f"y column {finding!r} has no labels (all NaN) in the training "
                             "set; drop the finding or label some of its images")
        column = Y[labelled[:, j], j]
        for value, what in ((1, "positive"), (0, "negative")):
            if not (column == value).any():
                warnings.warn(f"y column {finding!r} has no {what} label in the training set "
                              f"({len(column)} labelled): its output cannot learn the "
                              "finding", UserWarning, stacklevel=4)


def positive_weights(class_weight, names, Y):
    """Per-finding ``pos_weight`` of the BCE (float32 tensor) or None.

    ``"balanced"``: negatives / positives among each finding's labelled images (the
    ratio of sklearn's balanced class weights); a dict maps findings to weights."""
    if class_weight is None:
        return None
    listed = [str(f) for f in names]
    if isinstance(class_weight, dict):
        for key in class_weight:
            if str(key) not in listed:
                raise ValueError(f"class_weight names a finding {key!r} that y does not "
                                 f"have; findings: {listed}{did_you_mean(key, listed)}")
        given = {str(k): v for k, v in class_weight.items()}
        weights = np.array([float(given.get(f, 1.0)) for f in listed])
    else:
        positives = np.nansum(Y == 1, axis=0)
        negatives = np.nansum(Y == 0, axis=0)
        weights = negatives / np.maximum(positives, 1)
        weights[positives == 0] = 1.0
    if not np.all(np.isfinite(weights) & (weights > 0)):
        raise ValueError(f"class_weight gives positive weights {weights.tolist()} for "
                         f"findings {listed}; they must be finite and > 0")
    return torch.as_tensor(weights, dtype=torch.float32)


class MaskedBCEWithLogitsLoss(nn.Module):
    """Binary cross-entropy over k logits, NaN targets left out.

    The loss is the mean over the labelled (image, finding) pairs, each weighted by its
    image's ``sample_weight`` when given: ``sum(w_i m_ij l_ij) / sum(w_i m_ij)``.
    ``pos_weight`` (k,) weighs positive labels, as torch's ``BCEWithLogitsLoss``;
    ``label_smoothing`` moves targets towards 0.5. ``reduction`` is accepted for skorch
    and ignored: weighting happens here."""

    masks_missing = True  # read by _training._Net.get_loss

    def __init__(self, pos_weight=None, label_smoothing=0.0, reduction="mean"):
        super().__init__()
        self.register_buffer("pos_weight", pos_weight)
        self.label_smoothing = float(label_smoothing)

    def forward(self, logits, target, sample_weight=None):
        target = target.to(logits.dtype)
        labelled = ~torch.isnan(target)
        target = torch.where(labelled, target, torch.zeros_like(target))
        if self.label_smoothing:
            target = target * (1 - self.label_smoothing) + 0.5 * self.label_smoothing
        loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none",
                                                  pos_weight=self.pos_weight)
        weight = labelled.to(loss.dtype)
        if sample_weight is not None:
            weight = weight * torch.as_tensor(sample_weight, device=loss.device,
                                              dtype=loss.dtype)[:, None]
        return (loss * weight).sum() / weight.sum().clamp_min(torch.finfo(loss.dtype).tiny)


def per_finding_auc(Y, proba):
    """``(ROC AUC per finding, NaN where a finding lacks a class), skipped indices)`` over
    each finding's labelled images."""
    Y, proba = np.asarray(Y, dtype=np.float64), np.asarray(proba, dtype=np.float64)
    aucs = np.full(Y.shape[1], np.nan)
    for j in range(Y.shape[1]):
        labelled = ~np.isnan(Y[:, j])
        y = Y[labelled, j]
        if (y == 1).any() and (y == 0).any():
            aucs[j] = roc_auc_score(y, proba[labelled, j])
    return aucs, np.flatnonzero(np.isnan(aucs)).tolist()


class FindingsAUC:
    """skorch scoring: ROC AUC of one named finding, or the mean over the findings with
    both classes among the labelled images (the skipped ones kept in ``skipped_``)."""

    def __init__(self, findings, finding=None):
        self.findings = list(findings)
        self.finding = finding
        self.skipped_ = []

    def __call__(self, net, X, y):
        proba = torch.sigmoid(torch.as_tensor(net.forward(X)).detach().float()).cpu().numpy()
        aucs, skipped = per_finding_auc(y, proba)
        self.skipped_ = [self.findings[j] for j in skipped]
        if self.finding is not None:
            return float(aucs[[str(f) for f in self.findings].index(str(self.finding))])
        return float(np.nanmean(aucs)) if len(skipped) < len(aucs) else float("nan")


class FindingsAUCScoring(EpochScoring):
    """skorch's EpochScoring of :class:`FindingsAUC`, which also records the findings it
    skipped (one class only among the labelled images) as ``<name>_skipped``."""

    def on_epoch_end(self, net, **kwargs):
        super().on_epoch_end(net, **kwargs)
        if net.history[-1].get(self.name_) is not None:
            net.history.record(f"{self.name_}_skipped", list(map(str,
                                                                 self.scoring.skipped_)))


def check_monitor(spec, findings):
    """Early stopping on multilabel targets watches the loss or ROC AUC (mean over
    findings, or ``"finding"``'s); ``spec`` from ``_callbacks.early_stopping_spec``,
    ``findings`` None for a 1-D y (which takes no ``"finding"``)."""
    if spec is None:
        return
    if findings is None:
        if spec.get("finding") is not None:
            raise ValueError(f"early_stopping finding={spec['finding']!r} is for multilabel "
                             "y (one column per finding); y is 1-D")
        return
    if spec["monitor"] not in ("loss", "roc_auc"):
        raise ValueError(f"early_stopping monitor={spec['monitor']!r} is for single-label y; "
                         "with multilabel y monitor 'loss' or 'roc_auc' (the mean over "
                         "findings, or one named with 'finding')")
    finding = spec.get("finding")
    listed = [str(f) for f in findings]
    if finding is not None and str(finding) not in listed:
        raise ValueError(f"early_stopping finding={finding!r} is not one of y's findings "
                         f"{listed}{did_you_mean(finding, listed)}")
    if finding is not None and spec["monitor"] != "roc_auc":
        raise ValueError("early_stopping 'finding' needs monitor='roc_auc'")


def check_thresholds(thresholds, findings):
    """Per-finding decision thresholds (k,) from ``thresholds``: None (0.5), one number,
    a sequence of k numbers or a dict {finding: threshold} (others 0.5)."""
    listed = [str(f) for f in findings]
    if thresholds is None:
        out = np.full(len(listed), 0.5)
    elif isinstance(thresholds, dict):
        out = np.full(len(listed), 0.5)
        for key, value in thresholds.items():
            if str(key) not in listed:
                raise ValueError(f"thresholds names a finding {key!r} the model does not "
                                 f"know; findings_: {listed}{did_you_mean(key, listed)}")
            out[listed.index(str(key))] = value
    else:
        out = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), (len(listed),)) \
            if np.ndim(thresholds) == 0 else np.asarray(thresholds, dtype=np.float64)
        if out.shape != (len(listed),):
            raise ValueError(f"thresholds has shape {out.shape}; expected one number, "
                             f"{len(listed)} numbers (one per finding) or a dict")
    if not np.all((out >= 0) & (out <= 1)):
        raise ValueError(f"thresholds must be in [0, 1]; got {out.tolist()}")
    return np.asarray(out, dtype=np.float64)


def stratification_key(Y):
    """One label per image for stratifying a multilabel ``Y``: its rarest positive
    finding, or k for an image with none (a cheap stand-in for iterative stratification,
    Sechidis et al. 2011, without a dependency such as scikit-multilearn). Keys too rare
    to stratify (under 2 images) join the "none" key."""
    Y = np.asarray(Y, dtype=np.float64)
    positive = Y == 1
    prevalence = positive.sum(axis=0)
    order = np.where(positive, prevalence[None, :], np.inf)
    key = np.where(positive.any(axis=1), order.argmin(axis=1), Y.shape[1])
    counts = np.bincount(key, minlength=Y.shape[1] + 1)
    key[counts[key] < 2] = Y.shape[1]
    return key


class StratifiedFindingGroupKFold(StratifiedGroupKFold):
    """sklearn's ``StratifiedGroupKFold``; a 2-D multilabel ``y`` (NaN allowed) is
    stratified on each image's rarest positive finding (:func:`stratification_key`).

    sklearn's ``check_cv`` refuses NaN in ``y`` when ``cv`` is an int: pass this (or
    ``GroupKFold``) as ``cv=`` object, with ``groups=`` patient ids."""

    def split(self, X, y=None, groups=None):
        if is_multilabel(y):
            y = stratification_key(np.asarray(y, dtype=np.float64))
        return super().split(X, y, groups)


class FindingsValidSplit:
    """skorch ``train_split`` for multilabel targets: the first fold of
    :class:`StratifiedFindingGroupKFold` with ``round(1 / fraction)`` folds, grouped by
    patient when ``groups`` is given (each image its own group otherwise)."""

    def __init__(self, fraction, groups, random_state):
        self.fraction = fraction
        self.groups = groups
        self.random_state = random_state

    def __call__(self, dataset, y, **fit_params):
        y = np.asarray(y)
        groups = np.arange(len(y)) if self.groups is None else np.asarray(self.groups)
        cv = StratifiedFindingGroupKFold(max(2, round(1 / self.fraction)), shuffle=True,
                                         random_state=self.random_state)
        with warnings.catch_warnings():  # "least populated class": rare findings
            warnings.simplefilter("ignore", UserWarning)
            train, valid = next(cv.split(np.zeros(len(y)), y, groups))
        return (torch.utils.data.Subset(dataset, train),
                torch.utils.data.Subset(dataset, valid))


def check_warm_start(fitted, findings):
    """``warm_start=True`` continues a model only on the findings it was fitted on
    (``fitted``: its ``findings_``, None for a single-label model; ``findings``: those of
    the new ``y``, None for a 1-D one)."""
    def words(names):
        return "one label per image" if names is None else f"findings {list(names)}"
    same = (fitted is not None and findings is not None
            and [str(f) for f in fitted] == [str(f) for f in findings])
    if not same:
        raise ValueError(f"warm_start=True: y has {words(findings)} but the fitted model "
                         f"has {words(fitted)}; fit a new model (warm_start=False) to "
                         "change them")
