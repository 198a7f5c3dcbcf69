"""
Study D: a custom CNN against frozen VGG16, ResNet50V2 and MobileNetV2
======================================================================

The card (``../shared/STUDIES.md``, D): Keras' ImageDataGenerator augmentation (rotation
40°, shift 0.2, shear 0.2, zoom 0.3, horizontal flip) on 1/255-rescaled 224×224 RGB
images; a 6-conv-layer CNN with L2 0.001 and Flatten → Dropout 0.5 → Dense 512, against
three ImageNet models whose *conv base* is frozen under Flatten → Dense 256; RMSprop
lr 5e-4 (Keras' rho 0.9, eps 1e-7), batch 32, a fixed 30 epochs without early stopping
but with validation loss and accuracy every epoch. Reported: training time, time per
epoch and test time per model, confusion matrices, sensitivity and specificity; binary
and 3-class; each model then tested on the *other* dataset, where accuracy collapses.

In ``CXRClassifier`` terms: ``augment={"rotation": 40, "shift": 0.2, "shear": 0.2,
"zoom": 0.3, "horizontal_flip": True}``; ``weight_decay=0.002,
weight_decay_scope=["trunk.features.[1-5].0.weight"]`` for L2 0.001 on five of the six
conv layers; ``input_dropout=0.5`` for the dropout between Flatten and the dense layer;
``backbone="resnet50v2"``: Keras' ResNet50V2 layer for layer (its ImageNet weights are
not converted: give a torch checkpoint of it with ``--resnet50v2-weights``); ``pooling="flatten"`` on a frozen VGG16 takes its conv base
only (not its fc6/fc7); ``optimizer="rmsprop", optimizer_kwargs={"alpha": 0.9, "eps":
1e-7}``; ``early_stopping=None`` with ``fit(X_val=, y_val=)`` for the per-epoch
validation curves in ``history_``.

Run from the repository root::

    python examples/studies/d_custom_cnn_vs_frozen.py --quick               # CPU, seconds
    python examples/studies/d_custom_cnn_vs_frozen.py --data chest_xray/ --other covid.npz
    python examples/studies/d_custom_cnn_vs_frozen.py --data chest_xray/ \
        --resnet50v2-weights resnet50v2.pth  # a torch state_dict of ResNet50V2

``--quick`` uses 72-px images, 64 training images, 2 epochs and random weights: its
numbers only show that the protocol runs.
"""

import argparse
import sys
import time

import numpy as np
import sklearn
from sklearn.pipeline import Pipeline

from cxr_estimators import CXRClassifier, ImageLoader
from cxr_estimators.evaluation import external_validate
from cxr_estimators.metrics import clinical_report

from _shared import binary, load_splits, load_test_split, not_met, parse_args, summary

sklearn.set_config(enable_metadata_routing=True)  # lets X_val travel through the Pipeline
# a torch checkpoint for resnet50v2 (Keras' ImageNet weights are not converted here)
v2_option = argparse.ArgumentParser(add_help=False)
v2_option.add_argument("--resnet50v2-weights", default=None)
v2_args, sys.argv[1:] = v2_option.parse_known_args()
V2_WEIGHTS = v2_args.resnet50v2_weights
args = parse_args(__doc__, other=True)
# 72 px: the smallest size at which six pooling blocks still leave a 2x2 map to flatten
SIZE, EPOCHS = (72, 2) if args.quick else (224, 30)

data = load_splits(args, quick_sizes=(64, 32, 64))
print(data.source)
if args.weights is None:
    not_met("ImageNet weights for VGG16 / ResNet50V2 / MobileNetV2",
            "weights=None, random init: pretrained weights need a download (full size "
            "uses --weights DEFAULT)")
if V2_WEIGHTS is None:
    not_met("ImageNet weights for ResNet50V2", "backbone='resnet50v2' is Keras' "
            "architecture layer for layer, but Keras' ImageNet weights are not converted: "
            "random init (--resnet50v2-weights FILE.pth gives a torch checkpoint of it)")
if args.other is None:
    not_met("each model tested on the other dataset", "needs a second dataset: "
            "--other DIR_OR_NPZ")

# %%
# The four models; what they share comes from the card's training lines
# ---------------------------------------------------------------------
SHARED = dict(
    optimizer="rmsprop", lr=5e-4, optimizer_kwargs={"alpha": 0.9, "eps": 1e-7},  # Keras
    batch_size=32, max_epochs=EPOCHS, early_stopping=None,  # fixed epochs, no stopping
    augment={"rotation": 40, "shift": 0.2, "shear": 0.2, "zoom": 0.3,
             "horizontal_flip": True},  # ImageDataGenerator's, train batches only
    random_state=0, precision=args.precision,  # float32 in quick runs
)
TRANSFER = dict(weights=args.weights, freeze=True,  # conv base frozen
                pooling="flatten", neurons=256, dropout=0.0)  # Flatten -> Dense 256 -> out
MODELS = {
    "custom CNN": dict(backbone="simple_cnn",  # 6 conv layers (each conv-ReLU-pool)
                       backbone_kwargs={"widths": (32, 32, 64, 64, 128, 128)},
                       # Keras' L2 0.001 (gradient 0.002 w) on five of the six conv
                       # layers: all but the first (the card does not say which)
                       weight_decay=0.002,
                       weight_decay_scope=["trunk.features.[1-5].0.weight"],
                       pooling="flatten", input_dropout=0.5,  # Flatten -> Dropout 0.5
                       neurons=512, dropout=0.0),  # -> Dense 512 -> output
    "VGG16": dict(backbone="vgg16", **TRANSFER),
    "ResNet50V2": dict(TRANSFER, backbone="resnet50v2",  # Keras' ResNet50V2
                       weights=V2_WEIGHTS if args.weights is not None else None),
    "MobileNetV2": dict(backbone="mobilenet_v2", **TRANSFER),
}


def run(task, y_of, pos_label):
    (X_train, y_train), (X_val, y_val), (X_test, y_test) = (
        (X, y_of(y)) for X, y in (data.train, data.val, data.test))
    print(f"\n{task}: train {len(y_train)}, validation {len(y_val)}, test {len(y_test)}")
    print(f"{'model':<18}{'train s':>8}{'s/epoch':>8}{'test s':>7}{'val acc':>8}"
          f"{'test acc':>9}{'sens':>6}{'spec':>6}")
    results = {}
    for name, params in MODELS.items():
        model = Pipeline([
            ("load", ImageLoader(size=SIZE, channels=3, normalize="unit")),  # 1/255
            ("clf", CXRClassifier(**SHARED, **params).set_fit_request(X_val=True,
                                                                       y_val=True)),
        ], transform_input=["X_val"])
        start = time.perf_counter()
        try:
            model.fit(X_train, y_train, X_val=X_val, y_val=y_val)
        except ValueError as exc:  # e.g. constant features of a frozen random trunk
            print(f"{name:<18}refused: {exc}")
            continue
        train_seconds, start = time.perf_counter() - start, time.perf_counter()
        proba = model.predict_proba(X_test)
        test_seconds = time.perf_counter() - start
        history = model[-1].history_  # valid_loss and valid_acc of every epoch
        report = clinical_report(y_test, proba, labels=model.classes_,
                                 pos_label=pos_label, n_bootstraps=0)
        o = report.overall
        print(f"{name:<18}{train_seconds:>8.1f}{train_seconds / len(history):>8.2f}"
              f"{test_seconds:>7.2f}{history[-1, 'valid_acc']:>8.3f}"
              f"{o['accuracy'].value:>9.3f}{o['sensitivity'].value:>6.2f}"
              f"{o['specificity'].value:>6.2f}")
        print(f"{'':<18}confusion matrix {report.confusion_matrix.tolist()}; "
              f"valid_loss per epoch "
              f"{', '.join(f'{v:.3f}' for v in history[:, 'valid_loss'])}")
        key = name.split()[0].lower()
        results[f"{task}_{key}_test_accuracy"] = o["accuracy"].value
        if args.other is not None:  # the other dataset: where accuracy collapses
            X_other, y_other = load_test_split(args.other)
            other = external_validate(model, {"other": (X_other, y_of(y_other))},
                                      pos_label=pos_label, n_bootstraps=0)["other"]
            print(f"{'':<18}on {args.other}: accuracy "
                  f"{other.overall['accuracy'].value:.3f}")
    return results


results = run("binary", binary, "pneumonia")
if data.three_class:
    results |= run("3class", np.asarray, None)
else:
    not_met("binary and 3-class", "binary only: the labels here are normal / pneumonia "
            "(the Kermany folders, --data chest_xray/, give bacterial / viral)")
summary("D", results)
