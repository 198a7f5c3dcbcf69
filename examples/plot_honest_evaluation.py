"""
Honest evaluation on PneumoniaMNIST: audit, grouped CV, external validation
===========================================================================

Three habits that keep a chest X-ray result from being too good to be true:

1. **Audit** the data before training: duplicates inside a split, identical images shared
   between splits (leakage), odd images.
2. **Group** cross-validation so that copies of one image (or images of one patient)
   never sit on both sides of a fold.
3. **Validate externally**: select the model on train only, then score it once on data
   it never influenced (here the official val and test splits).

The classifier is a logistic regression on the 28x28 pixels so that the script runs in
well under two minutes on a CPU; :class:`cxr_estimators.CXRClassifier` is a drop-in
replacement for it. Run from the repository root::

    python examples/plot_honest_evaluation.py [path/to/pneumoniamnist.npz]

The data file defaults to ``../shared/data/pneumoniamnist.npz`` beside the repository.
"""

import sys
import time
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedGroupKFold, StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from cxr_estimators.audit import audit_dataset, find_duplicates
from cxr_estimators.datasets import load_medmnist
from cxr_estimators.evaluation import external_validate

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared/data/pneumoniamnist.npz"
start = time.perf_counter()

# %%
# 1. Audit
# --------
# Duplicates inside train, identical images shared with val and test, odd images.
train, val, test = (load_medmnist(DATA, split) for split in ("train", "val", "test"))
names = np.asarray(train.target_names)
report = audit_dataset(train.images, names[train.target], X_other=val.images)
print(report)
for name, other in (("val", val), ("test", test)):
    print(f"identical train/{name} pairs: {len(find_duplicates(train.images, other.images))}")
print(f"duplicate pairs inside test: {len(find_duplicates(test.images))}")
near = find_duplicates(train.images, test.images, method="phash", max_distance=2)
print(f"near-identical train/test pairs (phash, Hamming <= 2): {len(near)}")

# %%
# Leakage is removed from the training side (the held-out splits stay as published),
# and each group of identical training images gets one group id: PneumoniaMNIST has no
# patient ids, and an identical copy is the surest sign of "same patient".
leaked = {i for i, _ in find_duplicates(train.images, val.images)}
keep = np.array([i for i in range(len(train.target)) if i not in leaked])
X, y = train.images[keep], train.target[keep]
groups = np.arange(len(y))
for i, j in find_duplicates(X):
    groups[j] = groups[i]
print(f"training on {len(y)} images ({len(leaked)} leaked into val removed), "
      f"{len(np.unique(groups))} groups")


def straddling(splits):
    """Folds x duplicate groups with a copy in train and a copy in test."""
    return sum(len(set(groups[tr]) & set(groups[te])) for tr, te in splits)


plain = StratifiedKFold(5, shuffle=True, random_state=0).split(X, y)
grouped = StratifiedGroupKFold(5, shuffle=True, random_state=0).split(X, y, groups)
print(f"(fold, duplicate group) pairs straddling train/test: StratifiedKFold "
      f"{straddling(plain)}, StratifiedGroupKFold {straddling(grouped)}")

# %%
# 2. Model selection with grouped cross-validation on train only
# --------------------------------------------------------------
model = make_pipeline(
    FunctionTransformer(lambda images: images.reshape(len(images), -1) / 255.0),
    LogisticRegression(max_iter=300),
)
search = GridSearchCV(model, {"logisticregression__C": [0.1, 1.0, 10.0]}, scoring="roc_auc",
                      cv=StratifiedGroupKFold(3, shuffle=True, random_state=0))
search.fit(X, y, groups=groups)
print(f"best C = {search.best_params_['logisticregression__C']}, "
      f"grouped-CV ROC AUC = {search.best_score_:.3f}")

# %%
# 3. External validation: touch val and test once, with the selected model
# --------------------------------------------------------------------------
held_out = {"val": (val.images, val.target), "test": (test.images, test.target)}
reports = external_validate(search.best_estimator_, held_out, n_bootstraps=1000,
                            random_state=0)
for name, report in reports.items():
    auc, acc = report.overall["roc_auc"], report.overall["accuracy"]
    print(f"{name}: ROC AUC {auc.value:.3f} [{auc.ci_low:.3f}, {auc.ci_high:.3f}], "
          f"accuracy {acc.value:.3f} [{acc.ci_low:.3f}, {acc.ci_high:.3f}] (n={report.n_samples})")
print(reports["test"])
print(f"done in {time.perf_counter() - start:.0f} s")
