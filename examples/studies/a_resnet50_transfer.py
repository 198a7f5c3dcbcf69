"""
Study A: frozen ResNet50, grid search on a fixed validation set, retrain on train+val
=====================================================================================

The card (``../shared/STUDIES.md``, A): a frozen pretrained ResNet50 with a
Flatten → Dense → Dropout head, eight configurations (lr × neurons × dropout), each
early-stopped on *its own validation set*; the configuration with the best validation
accuracy and AUC (ties: sensitivity) is retrained on train + validation for as many
epochs as it needed, and tested once. Binary (sick vs healthy) and 3-class.

Three things of the public API carry the protocol:

* ``fit(X, y, X_val=, y_val=)``: early stopping watches exactly that set, and the whole of
  ``X`` is trained on. In the ``Pipeline`` the validation images go through the same
  ``ImageLoader`` (``transform_input=["X_val"]``, scikit-learn's metadata routing);
* ``best_epoch_``: the epoch whose weights early stopping kept, so the retrain on
  train + validation is one ``set_params(max_epochs=best_epoch_, early_stopping=None,
  validation_fraction=0)``;
* ``clinical_scorers(per_class=True)``: validation accuracy, AUC and sensitivity, per
  class for the 3-class tie-break.

Run from the repository root::

    python examples/studies/a_resnet50_transfer.py --quick        # CPU, seconds
    python examples/studies/a_resnet50_transfer.py --data chest_xray/   # full size, GPU

``--quick`` uses 64-px images, 300 images, a 2-point grid, 3 epochs and random weights:
its numbers only show that the protocol runs.
"""

import numpy as np
import sklearn
from sklearn.base import clone
from sklearn.model_selection import ParameterGrid, train_test_split
from sklearn.pipeline import Pipeline

from cxr_estimators import CXRClassifier, ImageLoader
from cxr_estimators.explain import attention_outside, grad_cam, save_overlays
from cxr_estimators.metrics import clinical_report, clinical_scorers

from _shared import binary, load_splits, not_met, parse_args, pooled, summary, take

sklearn.set_config(enable_metadata_routing=True)  # lets X_val travel through the Pipeline
args = parse_args(__doc__)
SIZE, EPOCHS = (64, 3) if args.quick else (224, 50)
GRID = {"clf__lr": [1e-4, 1e-3], "clf__neurons": [128, 256], "clf__dropout": [0.3, 0.5]}
if args.quick:
    GRID = {"clf__lr": [1e-3], "clf__neurons": [128], "clf__dropout": [0.3, 0.5]}

# %%
# Data: binary = sick vs healthy, and 3-class where the labels say bacterial / viral
# ---------------------------------------------------------------------------------
data = load_splits(args, quick_sizes=(150, 50, 100))
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
        random_state=0,
    ).set_fit_request(X_val=True, y_val=True)),
], transform_input=["X_val"])


def rank(scores, classes):
    """Validation accuracy, then AUC; ties broken by sensitivity (3-class: that of the
    worst-recognised class, the minority's in the card)."""
    if len(classes) == 2:
        tie_break = scores["sensitivity"]
    else:
        tie_break = min(scores[f"sensitivity_{c}"] for c in classes)
    return round(scores["accuracy"], 3), round(scores["roc_auc"], 3), tie_break


def run(task, y_all, pos_label):
    # stratified 80/20 train/test, then train 80/20 into train/validation
    X_dev, X_test, y_dev, y_test = train_test_split(
        X_all, y_all, test_size=0.2, stratify=y_all, random_state=0)
    X_train, X_val, y_train, y_val = train_test_split(
        X_dev, y_dev, test_size=0.2, stratify=y_dev, random_state=0)
    print(f"\n{task}: train {len(y_train)}, validation {len(y_val)}, test {len(y_test)}")
    scorer = clinical_scorers(pos_label=pos_label, per_class=True)
    tried = []
    for params in ParameterGrid(GRID):  # 8 models: lr x neurons x dropout
        model = clone(pipe).set_params(**params)
        model.fit(X_train, y_train, X_val=X_val, y_val=y_val)
        scores = scorer(model, X_val, y_val)
        tried.append((rank(scores, model.classes_), params, model))
        print(f"  lr {params['clf__lr']:g}, neurons {params['clf__neurons']}, dropout "
              f"{params['clf__dropout']}: best epoch {model[-1].best_epoch_}, validation "
              f"accuracy {scores['accuracy']:.3f}, AUC {scores['roc_auc']:.3f}, "
              f"sensitivity {scores['sensitivity']:.3f}")
    _, best_params, best = max(tried, key=lambda t: t[0])

    # the chosen configuration, retrained on train + validation for best_epoch_ epochs
    final = clone(pipe).set_params(
        **best_params, clf__max_epochs=best[-1].best_epoch_, clf__early_stopping=None,
        clf__validation_fraction=0)
    final.fit(X_dev, y_dev)
    report = clinical_report(y_test, final.predict_proba(X_test), labels=final.classes_,
                             pos_label=pos_label, n_bootstraps=1000, random_state=0)
    o = report.overall
    print(f"chosen {best_params}, retrained {best[-1].best_epoch_} epochs on "
          f"{len(y_dev)} images; test (once): ACC {o['accuracy'].value:.3f}, sensitivity "
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
