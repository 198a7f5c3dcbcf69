"""
Study C: a grayscale CNN from scratch, early stopping on F1, and a Grad-CAM audit
=================================================================================

The card (``../shared/STUDIES.md``, C): one-channel images, central 70 % crop, scaled to
[-1, 1]; rotation ±15° and a zoom *in* of 5–15 % (never less than 5 %), no flip; five
Conv3×3-BatchNorm-ReLU-MaxPool blocks (32-64-128-256-256) → Flatten → FC 512 →
Dropout 0.5 → 2 outputs; Adam 1e-3, batch 32, at most 30 epochs; an 80/20
train/validation split with early stopping on *validation F1* (patience 7, min_delta
0.001); training time and stopping epoch reported. Then the audit: Grad-CAM showed the
model reading arm position, text markers and lateral views, and an MRI slice had slipped
into the data — a near-perfect score can be shortcut learning.

In ``CXRClassifier`` terms: ``early_stopping={"monitor": "f1", "patience": 7,
"min_delta": 0.001, "pos_label": "pneumonia"}`` (the history gains ``valid_f1``),
``augment={"rotation": 15, "scale": (1.05, 1.15)}`` (keys left out, such as the flip, are
off), ``backbone_kwargs`` for the five blocks. The audit uses
:func:`cxr_estimators.audit.audit_dataset` (odd images, duplicates) and
:func:`cxr_estimators.explain.grad_cam` with :func:`~cxr_estimators.explain.shortcut_warning`.

Run from the repository root::

    python examples/studies/c_grayscale_f1_gradcam.py --quick             # CPU, seconds
    python examples/studies/c_grayscale_f1_gradcam.py --data chest_xray/  # full size

``--quick`` uses 48-px images, 240 training images and at most 4 epochs: its numbers only
show that the protocol runs.
"""

import time
import warnings

import numpy as np
from sklearn.pipeline import Pipeline

from cxr_estimators import CXRClassifier, ImageLoader
from cxr_estimators.audit import audit_dataset
from cxr_estimators.explain import attention_outside, grad_cam, save_overlays, shortcut_warning
from cxr_estimators.metrics import clinical_report

from _shared import binary, load_splits, not_met, parse_args, summary, take

args = parse_args(__doc__)
SIZE, EPOCHS = (48, 4) if args.quick else (224, 30)

# %%
# Data: the training images, split 80/20 into train/validation by the classifier
# -------------------------------------------------------------------------------
data = load_splits(args, quick_sizes=(240, 30, 120))
print(data.source)
X_train, y_train = data.train[0], binary(data.train[1])
X_test, y_test = data.test[0], binary(data.test[1])

# %%
# Audit first: odd images (blank, very dark, colour: the MRI slice of the card) and
# duplicates
print(audit_dataset(X_train, y_train))

# %%
# The model, line by line from the card
# -------------------------------------
model = Pipeline([
    # 1 channel, central 70 % crop, resize, scale to [-1, 1]
    ("load", ImageLoader(size=SIZE, channels=1, center_crop=0.7, normalize="minus_one_one")),
    ("clf", CXRClassifier(
        backbone="simple_cnn",  # 5 x (Conv3x3 pad 1 -> BatchNorm -> ReLU -> MaxPool)
        backbone_kwargs={"widths": (32, 64, 128, 256, 256), "batch_norm": True},
        pooling="flatten", neurons=512, dropout=0.5,  # Flatten -> FC 512 -> Dropout -> 2
        optimizer="adam", lr=1e-3, batch_size=32, max_epochs=EPOCHS,  # at most 30 epochs
        validation_fraction=0.2,  # an 80/20 train/validation split (stratified)
        early_stopping={"monitor": "f1", "patience": 7, "min_delta": 0.001,
                        "pos_label": "pneumonia"},  # on validation F1
        augment={"rotation": 15, "scale": (1.05, 1.15)},  # enlarge 5-15 %, no flip
        random_state=0, precision=args.precision,  # float32 in quick runs
    )),
])
start = time.perf_counter()
model.fit(X_train, y_train)
fit_seconds = time.perf_counter() - start
clf = model[-1]
f1 = clf.history_[:, "valid_f1"]
print(f"trained in {fit_seconds:.1f} s: stopped after {len(clf.history_)} epochs, "
      f"kept epoch {clf.best_epoch_} (validation F1 {f1[clf.best_epoch_ - 1]:.3f}; per "
      f"epoch {', '.join(f'{v:.3f}' for v in f1)})")
if args.quick:
    not_met("DenseNet-169 and ResNet-18 tried first",
            "full size only (backbone='densenet169' / 'resnet18' below)")
else:
    for backbone in ("densenet169", "resnet18"):  # what the study tried first
        other = CXRClassifier(backbone=backbone, weights=args.weights, max_epochs=EPOCHS,
                              validation_fraction=0.2, early_stopping=clf.early_stopping,
                              augment=clf.augment, random_state=0,
                              precision=args.precision)
        Pipeline([("load", model[0]), ("clf", other)]).fit(X_train, y_train)
        print(f"{backbone}: kept epoch {other.best_epoch_}, validation F1 "
              f"{other.history_[other.best_epoch_ - 1, 'valid_f1']:.3f}")

report = clinical_report(y_test, model.predict_proba(X_test), labels=clf.classes_,
                         pos_label="pneumonia", n_bootstraps=1000, random_state=0)
o = report.overall
print(f"test: F1 {o['f1'].value:.3f} [{o['f1'].ci_low:.3f}, {o['f1'].ci_high:.3f}], "
      f"accuracy {o['accuracy'].value:.3f}, sensitivity {o['sensitivity'].value:.3f}, "
      f"specificity {o['specificity'].value:.3f}")

# %%
# The Grad-CAM audit: where does the model look?
# ----------------------------------------------
heatmaps = grad_cam(model, X_test)
outside = attention_outside(heatmaps)  # share of the heatmap mass in the outer 15 % band
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    flagged = shortcut_warning(heatmaps)
print(f"mean attention outside the central box {np.nanmean(outside):.3f} (a flat map "
      f"scores 0.51); {len(flagged)} of {len(heatmaps)} test images flagged")
for w in caught:
    print(f"shortcut_warning: {str(w.message)[:160]}...")
worst = np.argsort(-np.nan_to_num(outside))[:8]
save_overlays(model[:-1].transform(take(X_test, worst)), heatmaps[worst],
              args.out / "gradcam_most_outside")
print(f"overlays of the 8 images looking most outside the chest in "
      f"{args.out / 'gradcam_most_outside'}")
summary("C", {"stopping_epoch": len(clf.history_),
              "best_epoch": clf.best_epoch_, "test_f1": o["f1"].value,
              "test_accuracy": o["accuracy"].value,
              "attention_outside": float(np.nanmean(outside))})
