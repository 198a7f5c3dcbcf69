"""
Study B: a small Keras-style CNN, three classes, everything monitored on the val folder
======================================================================================

The card (``../shared/STUDIES.md``, B): three Conv-ReLU-MaxPool blocks (32/64/128
filters; one run doubles them) → Flatten → Dense → Dropout → softmax, trained from
scratch with Adam at 1e-4; EarlyStopping (patience 5, best weights restored),
ReduceLROnPlateau and ModelCheckpoint all watch the loss on the dataset's own ``val/``
folder. Reported: test accuracy (about 0.80), confusion matrix, classification report and
training curves.

In ``CXRClassifier`` terms: ``backbone="simple_cnn"`` with ``backbone_kwargs={"widths":
...}``, ``pooling="flatten"``; ``early_stopping=5``, ``lr_schedule="plateau"`` and
``checkpoint_dir=`` all follow the validation loss, and ``fit(X_val=, y_val=)`` makes the
val folder that validation set (the training folder is trained on in full). The variants
of the card (doubled filters, batch 16, a 70/15/15 split after undersampling) are one
``set_params`` or one split away.

Run from the repository root::

    python examples/studies/b_small_keras_cnn.py --quick             # CPU, seconds
    python examples/studies/b_small_keras_cnn.py --data chest_xray/  # full size

``--quick`` uses 48-px images, a few hundred images and 3 epochs: its numbers only show
that the protocol runs.
"""

import numpy as np
import sklearn
from sklearn.base import clone
from sklearn.metrics import classification_report
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.utils import resample

from cxr_estimators import CXRClassifier, ImageLoader
from cxr_estimators.metrics import clinical_report

from _shared import binary, load_splits, not_met, parse_args, pooled, summary, take

sklearn.set_config(enable_metadata_routing=True)  # lets X_val travel through the Pipeline
args = parse_args(__doc__)
SIZE, EPOCHS = (48, 3) if args.quick else (224, 100)

# %%
# Data: the Kermany train/ val/ test/ folders (PneumoniaMNIST's official splits here)
# ----------------------------------------------------------------------------------
data = load_splits(args, quick_sizes=(160, 48, 96))
print(data.source)
if data.three_class:
    task = "3-class (normal / bacterial / viral)"
    y_of = np.asarray
else:
    task = "binary (normal / pneumonia)"
    y_of = binary
    not_met("three classes normal / viral / bacterial",
            "two classes: PneumoniaMNIST labels normal / pneumonia only; the Kermany "
            "folders (--data chest_xray/) give all three from their file names")
(X_train, y_train), (X_val, y_val), (X_test, y_test) = (
    (X, y_of(y)) for X, y in (data.train, data.val, data.test))

# %%
# The model and its training, as the card has them
# -------------------------------------------------
pipe = Pipeline([
    ("load", ImageLoader(size=SIZE, channels=3, normalize="unit")),  # 224x224 RGB, [0, 1]
    ("clf", CXRClassifier(
        backbone="simple_cnn", backbone_kwargs={"widths": (32, 64, 128)},  # 3 conv blocks
        pooling="flatten", neurons=128, dropout=0.5,  # Flatten -> Dense -> Dropout -> out
        optimizer="adam", lr=1e-4, batch_size=32, max_epochs=EPOCHS,  # cross-entropy
        early_stopping=5,  # EarlyStopping(patience 5, restore best) on the val loss
        lr_schedule="plateau",  # ReduceLROnPlateau on the val loss
        checkpoint_dir=str(args.out / "checkpoint"),  # ModelCheckpoint on the val loss
        augment={"horizontal_flip": True, "rotation": 10, "zoom": 0.1,
                 "contrast": 0.1},  # train only; keys left out are off
        random_state=0, precision=args.precision,  # float32 in quick runs
    ).set_fit_request(X_val=True, y_val=True)),
], transform_input=["X_val"])


def run(name, model, train, val, test):
    folder = name.split(",")[0].replace(" ", "_").replace("/", "-")
    model.set_params(clf__checkpoint_dir=str(args.out / "checkpoint" / folder))  # per run
    model.fit(*train, X_val=val[0], y_val=val[1])  # all callbacks watch the val folder
    clf = model[-1]
    y_pred = model.predict(test[0])
    accuracy = float(np.mean(y_pred == test[1]))
    print(f"\n{name}: stopped after {len(clf.history_)} epochs, weights of epoch "
          f"{clf.best_epoch_} kept (lr at the end {clf.history_[-1, 'event_lr']:g}); "
          f"test accuracy {accuracy:.3f}")
    return model, y_pred, accuracy


model, y_pred, accuracy = run("32/64/128 filters, batch 32", pipe,
                              (X_train, y_train), (X_val, y_val), (X_test, y_test))
print(classification_report(y_test, y_pred, zero_division=0))
try:
    from cxr_estimators.plotting import plot_confusion_matrix, plot_training_curves

    plot_training_curves(model[-1], path=args.out / "training_curves.png")
    plot_confusion_matrix(y_test, y_pred, labels=model.classes_,
                          path=args.out / "confusion_matrix.png")
    print(f"training curves and confusion matrix in {args.out}")
except ImportError as exc:  # matplotlib is the optional [plot] extra
    print(f"(no figures: {exc})")
report = clinical_report(y_test, model.predict_proba(X_test), labels=model.classes_,
                         pos_label=None if data.three_class else "pneumonia",
                         n_bootstraps=0)
print("confusion matrix (rows true, columns predicted):", report.confusion_matrix.tolist())

# %%
# The card's other runs: doubled filters; batch 16; a 70/15/15 split after
# undersampling every class to the smallest one
# -------------------------------------------------------------------------------
_, _, doubled = run("64/128/256 filters", clone(pipe).set_params(
    clf__backbone_kwargs={"widths": (64, 128, 256)}),
    (X_train, y_train), (X_val, y_val), (X_test, y_test))
_, _, batch16 = run("batch 16", clone(pipe).set_params(clf__batch_size=16),
                    (X_train, y_train), (X_val, y_val), (X_test, y_test))
X_all, y_all = pooled(data)
y_all = y_of(y_all)
smallest = min(np.sum(y_all == c) for c in np.unique(y_all))
keep = np.concatenate([resample(np.flatnonzero(y_all == c), n_samples=smallest,
                                replace=False, random_state=0) for c in np.unique(y_all)])
X_bal, y_bal = take(X_all, keep), y_all[keep]
X_tr, X_rest, y_tr, y_rest = train_test_split(X_bal, y_bal, test_size=0.3, stratify=y_bal,
                                              random_state=0)
X_va, X_te, y_va, y_te = train_test_split(X_rest, y_rest, test_size=0.5, stratify=y_rest,
                                          random_state=0)
_, _, balanced = run(f"undersampled to {smallest} per class, 70/15/15", clone(pipe),
                     (X_tr, y_tr), (X_va, y_va), (X_te, y_te))
summary("B", {"test_accuracy": accuracy, "test_accuracy_doubled": doubled,
              "test_accuracy_batch16": batch16, "test_accuracy_undersampled": balanced})
