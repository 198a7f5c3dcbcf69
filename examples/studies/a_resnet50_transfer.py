"""
Study A: frozen ResNet50, grid search on a fixed validation set, retrain on train+val
=====================================================================================

The card (``../shared/STUDIES.md``, A): a frozen pretrained ResNet50 with a
Flatten → Dense → Dropout head, eight configurations (lr × neurons × dropout), each
early-stopped on *its own validation set*; the configuration with the best validation
accuracy and AUC (ties: sensitivity) is retrained on train + validation for as many
epochs as it needed, and tested once. Binary (sick vs healthy) and 3-class.

What carries the protocol:

* ``fit(X, y, X_val=, y_val=)``: early stopping watches exactly that set, and the whole of
  ``X`` is trained on. In the ``Pipeline`` the validation images go through the same
  ``ImageLoader`` (``transform_input=["X_val"]``, scikit-learn's metadata routing);
* ``GridSearchCV`` with a ``PredefinedSplit``: every candidate trains on the training
  part and is scored on the validation set it early-stopped on, as in the study;
* ``best_epoch_`` (collected per candidate by ``best_epoch_scorer``): the epoch whose
  weights early stopping kept, so that ``evaluation.retrain_on_all`` retrains the
  chosen candidate (``metric=pick``, the card's ranking) on train + validation for that
  many epochs;
* ``clinical_scorers(per_class=True)``: validation accuracy, AUC and sensitivity, per
  class for the 3-class tie-break.

Run from the repository root::

    python examples/studies/a_resnet50_transfer.py --quick        # CPU, seconds
    python examples/studies/a_resnet50_transfer.py --data chest_xray/   # full size, GPU

``--quick`` uses 48-px images, 200 images, a 2-point grid, 2 epochs and random weights:
its numbers only show that the protocol runs.
"""

import numpy as np
import sklearn
from sklearn.model_selection import GridSearchCV, PredefinedSplit, train_test_split
from sklearn.pipeline import Pipeline

from cxr_estimators import CXRClassifier, ImageLoader
from cxr_estimators.evaluation import best_epoch_scorer, retrain_on_all
from cxr_estimators.explain import attention_outside, grad_cam, save_overlays
from cxr_estimators.metrics import clinical_report, clinical_scorers

from _shared import binary, load_splits, not_met, parse_args, pooled, summary, take

sklearn.set_config(enable_metadata_routing=True)  # lets X_val travel through the Pipeline
args = parse_args(__doc__)
SIZE, EPOCHS = (48, 2) if args.quick else (224, 50)
GRID = {"clf__lr": [1e-4, 1e-3], "clf__neurons": [128, 256], "clf__dropout": [0.3, 0.5]}
if args.quick:
    GRID = {"clf__lr": [1e-3], "clf__neurons": [128], "clf__dropout": [0.3, 0.5]}

# %%
# Data: binary = sick vs healthy, and 3-class where the labels say bacterial / viral
# ---------------------------------------------------------------------------------
data = load_splits(args, quick_sizes=(100, 30, 70))
print(data.source)
X_all, y_all = pooled(data)  # the study makes its own splits
not_met("COVID-19 / bacterial pneumonia / normal images",
        "PneumoniaMNIST or Kermany images (no COVID-19 class in the data here)")
if args.weights is None:
    not_met("ResNet50 pretrained (chest X-ray or ImageNet weights)",
            "weights=None, random init: pretrained weights need a download "
            "(full size uses --weights DEFAULT, or give a local checkpoint path)")
not_met("only the minority class augmented, offline, 6 new images per original",
        "sampling='balanced' redraws minority images every epoch under fresh online "
        "augmentation, which the majority class gets too")

# %%
# The model: frozen ResNet50, Flatten -> Dense(neurons, ReLU) -> Dropout -> output
# --------------------------------------------------------------------------------
pipe = Pipeline([
    # 224x224 RGB (any PIL mode converted), ResNet50's ImageNet normalisation
    ("load", ImageLoader(size=SIZE, channels=3, normalize="imagenet")),
    ("clf", CXRClassifier(
        backbone="resnet50", weights=args.weights, freeze=True,  # top removed, base frozen
        pooling="flatten",  # Flatten -> Dense(neurons, ReLU) -> Dropout -> softmax
        optimizer="adam", max_epochs=EPOCHS,  # Adam; 50 epochs
        early_stopping=5,  # patience 5 on the validation set, best weights restored
        sampling="balanced",  # classes drawn equally each epoch (the minority recurs)
        augment={"rotation": 15, "shift": 0.05, "zoom": 0.1, "horizontal_flip": True,
                 "brightness": (0.8, 1.2), "fill": "nearest"},  # train batches only
        random_state=0, precision=args.precision,  # float32 in quick runs
    ).set_fit_request(X_val=True, y_val=True)),
], transform_input=["X_val"])


def run(task, y_all, pos_label):
    # stratified 80/20 train/test, then train 80/20 into train/validation
    X_dev, X_test, y_dev, y_test = train_test_split(
        X_all, y_all, test_size=0.2, stratify=y_all, random_state=0)
    _, val = train_test_split(np.arange(len(y_dev)), test_size=0.2, stratify=y_dev,
                              random_state=0)
    X_val, y_val = take(X_dev, val), y_dev[val]
    fold = np.full(len(y_dev), -1)  # PredefinedSplit: train on the -1 rows, score on 0
    fold[val] = 0
    print(f"\n{task}: train {len(y_dev) - len(val)}, validation {len(val)}, "
          f"test {len(y_test)}")

    clinical = clinical_scorers(pos_label=pos_label, per_class=True)

    def scoring(model, X, y):
        """Validation accuracy, AUC, sensitivity (per class too), and the epoch kept."""
        return {**clinical(model, X, y), "best_epoch": best_epoch_scorer(model, X, y)}

    # 8 models, lr x neurons x dropout, each trained on train and early-stopped on the
    # validation set, which also scores it; refit=False: the retrain is done below
    search = GridSearchCV(pipe, GRID, cv=PredefinedSplit(fold), scoring=scoring,
                          refit=False, error_score="raise")
    search.fit(X_dev, y_dev, X_val=X_val, y_val=y_val)
    res = search.cv_results_
    classes = np.unique(y_dev)

    def rank(results, i):
        """Validation accuracy, then AUC; ties broken by sensitivity (3-class: that of
        the worst-recognised class, the minority's in the card)."""
        tie_break = (results["mean_test_sensitivity"][i] if len(classes) == 2 else
                     min(results[f"mean_test_sensitivity_{c}"][i] for c in classes))
        return (round(results["mean_test_accuracy"][i], 3),
                round(results["mean_test_roc_auc"][i], 3), tie_break)

    def pick(results):
        """The card's choice, as sklearn's refit=callable: cv_results_ -> index."""
        return max(range(len(results["params"])), key=lambda i: rank(results, i))

    for i, params in enumerate(res["params"]):
        print(f"  lr {params['clf__lr']:g}, neurons {params['clf__neurons']}, dropout "
              f"{params['clf__dropout']}: best epoch {res['mean_test_best_epoch'][i]:.0f}, "
              f"validation accuracy {res['mean_test_accuracy'][i]:.3f}, AUC "
              f"{res['mean_test_roc_auc'][i]:.3f}, sensitivity "
              f"{res['mean_test_sensitivity'][i]:.3f}")
    # the chosen configuration, retrained on train + validation for its best epoch count
    final = retrain_on_all(search, X_dev, y_dev, metric=pick)
    best, epochs = pick(res), final[-1].max_epochs
    report = clinical_report(y_test, final.predict_proba(X_test), labels=final.classes_,
                             pos_label=pos_label, n_bootstraps=1000, random_state=0)
    o = report.overall
    print(f"chosen {res['params'][best]}, retrained {epochs} epochs on {len(y_dev)} "
          f"images; test (once): ACC {o['accuracy'].value:.3f}, sensitivity "
          f"{o['sensitivity'].value:.3f}, specificity {o['specificity'].value:.3f}, "
          f"AUC {o['roc_auc'].value:.3f}")
    if pos_label is None:
        print("  per-class sensitivity: " + ", ".join(
            f"{c} {report.per_class[c]['sensitivity'].value:.3f}" for c in report.labels))

    # Grad-CAM on test images
    shown = take(X_test, range(8))
    heatmaps = grad_cam(final, shown)
    save_overlays(final[:-1].transform(shown), heatmaps, args.out / f"gradcam_{task}")
    print(f"  Grad-CAM of 8 test images in {args.out / f'gradcam_{task}'}; mean attention "
          f"outside the central box {np.nanmean(attention_outside(heatmaps)):.2f}")
    return {f"{task}_test_{m}": o[m].value
            for m in ("accuracy", "sensitivity", "specificity", "roc_auc")}


results = run("binary", binary(y_all), pos_label="pneumonia")
if data.three_class:
    results |= run("3class", y_all, pos_label=None)
else:
    not_met("3-class run", "the labels here are normal / pneumonia only; the 3-class run "
            "needs Kermany folders (--data chest_xray/), whose file names say "
            "bacterial / viral")
summary("A", results)
