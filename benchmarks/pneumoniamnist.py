"""PneumoniaMNIST (MedMNIST v2) end to end: select on train/val, evaluate once on test.

Model selection uses the official train and val splits only: each candidate configuration
is fitted on train (its early stopping and LR schedule watch an internal 10 % of train),
scored by ROC AUC on val, and the best one's decision threshold is chosen on val (maximal
Youden's J = sensitivity + specificity − 1). Then the official test split is predicted
exactly once, and ACC, ROC AUC, sensitivity (recall of pneumonia, label 1) and specificity
are reported with percentile-bootstrap 95 % CIs, next to the published MedMNIST v2 numbers
for the same split. All models are trained from scratch (``weights=None``: no downloads).
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, recall_score, roc_auc_score, roc_curve

from benchmarks import _common
from cxr_estimators import CXRClassifier
from cxr_estimators.metrics import clinical_report

#: MedMNIST v2 (Yang et al., Scientific Data 2023), PneumoniaMNIST test split.
PUBLISHED = {
    "ResNet-18 (28)": {"accuracy": 0.854, "roc_auc": 0.944},
    "ResNet-18 (224)": {"accuracy": 0.864, "roc_auc": 0.956},
    "ResNet-50 (224)": {"accuracy": 0.884, "roc_auc": 0.962},
    "auto-sklearn": {"accuracy": 0.855, "roc_auc": 0.942},
    "AutoKeras": {"accuracy": 0.878, "roc_auc": 0.947},
    "Google AutoML Vision": {"accuracy": 0.946, "roc_auc": 0.991},
}

FULL_CANDIDATES = [
    dict(backbone="deep_cnn", size=28, lr=1e-3, augment=None, class_weight=None),
    dict(backbone="deep_cnn", size=28, lr=1e-3, augment=True, class_weight=None),
    dict(backbone="deep_cnn", size=28, lr=1e-3, augment=True, class_weight="balanced"),
]
QUICK_CANDIDATES = [dict(backbone="simple_cnn", size=28, lr=3e-3, augment=None,
                         class_weight="balanced")]


def clinical_metrics(y, score, threshold):
    pred = (score >= threshold).astype(int)
    return {
        "accuracy": accuracy_score(y, pred),
        "roc_auc": roc_auc_score(y, score),
        "sensitivity": recall_score(y, pred, pos_label=1),
        "specificity": recall_score(y, pred, pos_label=0),
    }


def bootstrap_ci(y, score, threshold, n_boot=1000, seed=0):
    """Percentile 95 % CIs of :func:`clinical_metrics`, from the package's own
    :func:`~cxr_estimators.metrics.clinical_report` (resamples of the test images)."""
    report = clinical_report(y, score, labels=[0, 1], pos_label=1, threshold=threshold,
                             n_bootstraps=n_boot, random_state=seed)
    return {k: [report.overall[k].ci_low, report.overall[k].ci_high]
            for k in ("accuracy", "roc_auc", "sensitivity", "specificity")}


def youden_threshold(y, score):
    fpr, tpr, thresholds = roc_curve(y, score)
    best = int(np.argmax(tpr - fpr))
    return float(min(thresholds[best], 1.0))


def make_classifier(cand, cfg, seed):
    return CXRClassifier(
        backbone=cand["backbone"], lr=cand["lr"], augment=cand["augment"],
        class_weight=cand["class_weight"], batch_size=cfg["batch_size"],
        max_epochs=cfg["epochs"], early_stopping=cfg["patience"], lr_schedule="plateau",
        validation_fraction=0.1, device="cpu", random_state=seed)


def main(argv=None):
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--n-boot", type=int, default=None)
    args = p.parse_args(argv)
    cfg = dict(epochs=3, patience=2, batch_size=64, n_train=800, n_boot=200) if args.quick \
        else dict(epochs=20, patience=5, batch_size=64, n_train=None, n_boot=1000)
    if args.epochs is not None:
        cfg["epochs"] = args.epochs
    if args.n_boot is not None:
        cfg["n_boot"] = args.n_boot
    candidates = QUICK_CANDIDATES if args.quick else FULL_CANDIDATES

    with _common.Timer() as total:
        data = _common.load_pneumoniamnist()
        train_images, y_train = data["train"]
        if cfg["n_train"]:
            train_images, y_train = _common.stratified_subset(
                train_images, y_train, cfg["n_train"], seed=args.seed)
        val_images, y_val = data["val"]

        selection = []
        best = None
        for cand in candidates:
            with _common.Timer() as t:
                clf = make_classifier(cand, cfg, args.seed).fit(
                    _common.to_inputs(train_images, cand["size"]), y_train)
            val_score = clf.predict_proba(_common.to_inputs(val_images, cand["size"]))[:, 1]
            val_auc = roc_auc_score(y_val, val_score)
            row = {**cand, "val_roc_auc": val_auc, "fit_s": t.seconds,
                   "epochs_run": len(clf.history_)}
            selection.append(row)
            print(f"{cand}: val AUC {val_auc:.4f}, {t.seconds:.0f} s, "
                  f"{row['epochs_run']} epochs", flush=True)
            if best is None or val_auc > best[0]:
                best = (val_auc, cand, clf, val_score)
        _, cand, clf, val_score = best
        threshold = youden_threshold(y_val, val_score)
        val_metrics = clinical_metrics(y_val, val_score, threshold)

        # The one and only look at the test split.
        test_images, y_test = data["test"]
        test_score = clf.predict_proba(_common.to_inputs(test_images, cand["size"]))[:, 1]
        test = clinical_metrics(y_test, test_score, threshold)
        ci = bootstrap_ci(y_test, test_score, threshold, cfg["n_boot"], seed=args.seed)

    payload = {
        "config": {**cfg, "train_images": len(y_train), "val_images": len(y_val),
                   "test_images": len(y_test), "weights": None, "lr_schedule": "plateau",
                   "selection": "max val ROC AUC; threshold = max Youden J on val",
                   "ci": f"percentile bootstrap, {cfg['n_boot']} resamples of test"},
        "candidates": selection,
        "selected": cand,
        "threshold": threshold,
        "val": val_metrics,
        "test": test,
        "test_ci95": ci,
        "test_evaluations": 1,
        "wall_time_s": total.seconds,
        "peak_rss_mb": _common.peak_rss_mb(),
        "published_medmnist_v2": PUBLISHED,
        "goal": {"accuracy": 0.95, "roc_auc": 0.99},
    }
    _common.write_result("pneumoniamnist", payload, args)
    print({k: round(v, 4) for k, v in test.items()}, ci)
    return payload


if __name__ == "__main__":
    main()
