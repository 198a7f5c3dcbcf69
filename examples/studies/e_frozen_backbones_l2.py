"""
Study E: four frozen ImageNet backbones, with and without L2 on the dense layer
===============================================================================

The card (``../shared/STUDIES.md``, E): InceptionV3, VGG19, EfficientNetB4 and ResNet50,
each with its own preprocessing and frozen, under GlobalAveragePooling → Dense (with L2
on that layer only) → BatchNorm → Dense(2, softmax); an "-L2" variant of each; class
weights for the imbalance; Adam, cross-entropy, checkpoint and early stopping on the
validation loss. Reported: validation 98 % against test 90.8 % (the validation set was
optimistic); best ResNet50-L2 test ACC 0.915, sensitivity 0.92, specificity 0.906,
AUC 0.971.

In ``CXRClassifier`` terms: each backbone's preprocessing is the one its torchvision
weights declare (``backbones.loader_params``, from ``weights.transforms()``: input size,
centre crop, mean and std, and the resize filter: bicubic for EfficientNet-B4) given to
``ImageLoader``; ``pooling="avg", head_batch_norm=True, head_order="bn_act"`` (Dense →
BatchNorm → activation); ``weight_decay=..., weight_decay_scope=["head.0.weight"]`` (the
dense layer only, not the output layer) for the L2 variant; ``class_weight="balanced"``,
with the validation loss that early stopping and the checkpoint watch left unweighted
(``valid_class_weight=False``, the default: Keras' ``val_loss``); and ``cache=True``, so
the frozen trunk's features are computed once and shared by both variants of a
backbone.

Run from the repository root::

    python examples/studies/e_frozen_backbones_l2.py --quick             # CPU, seconds
    python examples/studies/e_frozen_backbones_l2.py --data chest_xray/  # full size, GPU
    torchrun --standalone --nproc_per_node 2 \
        examples/studies/e_frozen_backbones_l2.py --data chest_xray/     # two GPUs

Under ``torchrun`` every fit trains data-parallel (torch DDP through
:mod:`cxr_estimators.distributed`), one process per GPU; rank 0 prints.

``--quick`` shrinks every input size by 224/64 (inception to its 75-px minimum), uses
192 images, 3 epochs and random weights: its numbers only show that the protocol
runs — and, with random weights, why a frozen random trunk is refused.
"""

import contextlib
import os
import sys

import sklearn
from sklearn.pipeline import Pipeline

from cxr_estimators import CXRClassifier, ImageLoader, distributed
from cxr_estimators.backbones import loader_params
from cxr_estimators.metrics import clinical_report

from _shared import binary, load_splits, not_met, parse_args, summary

sklearn.set_config(enable_metadata_routing=True)  # lets X_val travel through the Pipeline
args = parse_args(__doc__)
# two GPUs: launched by torchrun, each fit trains data-parallel, one process per GPU
LAUNCHED = "RANK" in os.environ
if os.environ.get("RANK", "0") != "0":
    sys.stdout = open(os.devnull, "w")  # rank 0 tells the story
EPOCHS = 3 if args.quick else 50
BACKBONES = ("inception_v3", "vgg19", "efficientnet_b4", "resnet50")
# Keras' L2(0.01) (its default factor; the card gives none) adds 0.01 * sum(w^2) to the
# loss, whose gradient torch's weight_decay=0.02 adds
VARIANTS = {"": 0.0, "-L2": 0.02}
MIN_SIZE = {"inception_v3": 75}  # torchvision's inception refuses smaller images

data = load_splits(args, quick_sizes=(96, 32, 64))
print(data.source)
(X_train, y_train), (X_val, y_val), (X_test, y_test) = (
    (X, binary(y)) for X, y in (data.train, data.val, data.test))
if args.weights is None:
    not_met("frozen ImageNet backbones", "weights=None, random init: pretrained weights "
            "need a download (full size uses --weights DEFAULT); a frozen random trunk "
            "only warns, or is refused where its features are constant")
if not LAUNCHED:
    not_met("two T4 GPUs", "one process, one device (the GPU if there is one); "
            "'torchrun --standalone --nproc_per_node 2 <this script>' trains each fit "
            "data-parallel on two")


def preprocessing(backbone):
    """The ImageLoader of a backbone's own preprocessing (what its DEFAULT torchvision
    weights declare: metadata only, nothing is downloaded)."""
    params = loader_params(backbone)  # size, normalize, interpolation, center_crop
    params["size"] = params["size"][0]  # square crops
    if args.quick:
        params["size"] = max(MIN_SIZE.get(backbone, 32), round(params["size"] * 64 / 224))
    return ImageLoader(**params)


def make_model(backbone, l2, name):
    return Pipeline([
        ("load", preprocessing(backbone)),  # each with its own preprocessing
        ("clf", CXRClassifier(
            backbone=backbone, weights=args.weights, freeze=True,  # frozen
            pooling="avg",  # GlobalAveragePooling
            neurons=256, head_batch_norm=True, head_order="bn_act",  # Dense -> BatchNorm
            dropout=0.0,  # -> Dense(2, softmax); no dropout in the card
            weight_decay=l2, weight_decay_scope=["head.0.weight"],  # L2 on that Dense only
            class_weight="balanced",  # class weights (valid_loss unweighted, as Keras')
            optimizer="adam", max_epochs=EPOCHS,  # Adam, cross-entropy
            precision=args.precision,  # float32 in quick runs: the same on every CPU
            early_stopping=5,  # on the validation loss, best weights restored
            checkpoint_dir=str(args.out / name),  # checkpoint on the validation loss
            cache=True,  # frozen features computed once, shared by both variants
            random_state=0,
        ).set_fit_request(X_val=True, y_val=True)),
    ], transform_input=["X_val"])


# %%
# Eight models: four backbones x {no L2, L2 on the dense layer}
# -------------------------------------------------------------
def train_all():
    print(f"\n{'model':<22}{'size':>5}{'epoch':>6}{'val acc':>8}{'test acc':>9}"
          f"{'sens':>6}{'spec':>6}{'AUC':>6}")
    results = {}
    for backbone in BACKBONES:
        for suffix, l2 in VARIANTS.items():
            name = f"{backbone}{suffix}"
            model = make_model(backbone, l2, name)
            try:
                model.fit(X_train, y_train, X_val=X_val, y_val=y_val)
            except ValueError as exc:  # e.g. constant features of a frozen random trunk
                print(f"{backbone:<22}refused: {exc}")
                break  # the other variant has the same frozen trunk
            clf = model[-1]
            val_acc = clf.history_[clf.best_epoch_ - 1, "valid_acc"]
            o = clinical_report(y_test, model.predict_proba(X_test), labels=clf.classes_,
                                pos_label="pneumonia", n_bootstraps=0).overall
            print(f"{name:<22}{model[0].size:>5}{clf.best_epoch_:>6}{val_acc:>8.3f}"
                  f"{o['accuracy'].value:>9.3f}{o['sensitivity'].value:>6.2f}"
                  f"{o['specificity'].value:>6.2f}{o['roc_auc'].value:>6.3f}")
            results[f"{name}_val_accuracy"] = val_acc
            results[f"{name}_test_accuracy"] = o["accuracy"].value
    return results


# under torchrun, the process group of its processes (one per GPU)
with distributed.process_group() if LAUNCHED else contextlib.nullcontext():
    results = train_all()
print("validation accuracy is that of the epoch kept: chosen on the validation set, it "
      "is optimistic, as the card found (98 % vs 90.8 %)")
summary("E", results)
