"""
Several findings per image: from a ChestX-ray14-style CSV to Grad-CAM per finding
=================================================================================

Real chest X-ray datasets label several findings per image. This example writes a small
dataset in NIH ChestX-ray14's published format (``Data_Entry_2017.csv`` with "Finding
Labels" such as ``Atelectasis|Effusion`` and "Patient ID", PNGs in ``images_001/images/``)
into a temporary folder, its findings being faint squares planted at four places
(:func:`cxr_estimators.datasets.make_findings`; not real X-rays), then:

1. loads it with :func:`cxr_estimators.datasets.load_chestxray14`;
2. searches the learning rate of one network with four sigmoid outputs, patients kept
   on one side of every fold (``grouped_cv`` stratifies on findings);
3. reports each finding with bootstrap CIs that resample patients;
4. tunes each finding's threshold for 90 % sensitivity on held-out patients;
5. draws Grad-CAM for each finding, saved as ``multilabel_grad_cam.png`` in the folder
   given (default: a new temporary folder; the docs' figure is
   ``python examples/plot_multilabel.py docs/_static``).

Run from the repository root (well under two minutes on a laptop CPU)::

    python examples/plot_multilabel.py [output folder]
"""

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from sklearn.model_selection import GridSearchCV, GroupShuffleSplit
from sklearn.pipeline import Pipeline

from cxr_estimators import CXRClassifier, ImageLoader
from cxr_estimators.datasets import load_chestxray14, make_findings
from cxr_estimators.evaluation import grouped_cv
from cxr_estimators.explain import grad_cam, overlay
from cxr_estimators.metrics import clinical_report, clinical_scorers
from cxr_estimators.thresholds import tune_thresholds

OUT = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="cxr_ml_"))
OUTPUT = OUT / "multilabel_grad_cam.png"
FINDINGS = ["Atelectasis", "Cardiomegaly", "Effusion", "Pneumothorax"]

torch.set_num_threads(min(4, torch.get_num_threads()))
start = time.perf_counter()
folder = Path(tempfile.mkdtemp(prefix="cxr_multilabel_"))

# %%
# A ChestX-ray14-style folder: 320 images of 130 patients, four findings
made = make_findings(320, 4, image_size=32, missing=(0, 0), prevalence=(0.15, 0.35),
                     patients=130, random_state=0)
rows = []
for i, (image, labels, patient) in enumerate(zip(made.images, made.target_full,
                                                 made.groups)):
    name = f"{int(patient):08d}_{i:03d}.png"
    pixels = np.clip(image[0] * 40 + 110, 0, 255).astype(np.uint8)
    path = folder / "images_001" / "images" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    found = "|".join(f for f, present in zip(FINDINGS, labels) if present) or "No Finding"
    rows.append((name, found, 0, f"{int(patient):08d}", 50, "F", "PA", 32, 32, 0.1, 0.1))
pd.DataFrame(rows, columns=["Image Index", "Finding Labels", "Follow-up #", "Patient ID",
                            "Patient Age", "Patient Gender", "View Position",
                            "OriginalImage[Width", "Height]",
                            "OriginalImagePixelSpacing[x", "y]"]).to_csv(
    folder / "Data_Entry_2017.csv", index=False)

# %%
# Load it; keep the four findings this study is about (ChestX-ray14 has 14)
data = load_chestxray14(folder / "Data_Entry_2017.csv", folder)
Y = pd.DataFrame(data.target, columns=data.target_names)[FINDINGS]
print(f"{len(Y)} images of {len(set(data.groups))} patients; prevalence:",
      {f: round(float(Y[f].mean()), 2) for f in FINDINGS})

# train (search), tuning (thresholds) and test patients, disjoint
outer = GroupShuffleSplit(1, test_size=0.4, random_state=0)
train, rest = next(outer.split(data.filenames, groups=data.groups))
tune, test = (rest[i] for i in next(GroupShuffleSplit(1, test_size=0.5, random_state=0)
                                    .split(rest, groups=data.groups[rest])))
files, groups = data.filenames, data.groups

# %%
# One network, four sigmoid outputs; the learning rate chosen by a grouped search on
# the mean per-finding ROC AUC
model = Pipeline([
    ("load", ImageLoader(size=32, channels=1)),
    ("clf", CXRClassifier(backbone="simple_cnn", backbone_kwargs={"widths": (8, 16, 32)},
                          max_epochs=10, batch_size=32, early_stopping=None,
                          validation_fraction=0, random_state=0, device="cpu")),
])
search = GridSearchCV(model, {"clf__lr": [3e-3, 1e-2]}, cv=grouped_cv(2, random_state=0),
                      scoring=clinical_scorers(), refit="roc_auc")
search.fit(files[train], Y.iloc[train], groups=groups[train])
print("best:", search.best_params_, "mean CV ROC AUC (macro over findings):",
      round(search.best_score_, 3))
best = search.best_estimator_

# %%
# Per-finding report on the test patients, CIs from resampling patients
report = clinical_report(Y.iloc[test], best.predict_proba(files[test]), groups=groups[test],
                         n_bootstraps=500, random_state=0)
print(report)

# %%
# Thresholds for 90 % sensitivity per finding, from the tuning patients
thresholds = tune_thresholds(best, files[tune], Y.iloc[tune], sensitivity=0.9)
best.set_params(clf__thresholds=thresholds)
print("thresholds:", {f: round(t, 3) for f, t in thresholds.items()})
tuned = clinical_report(Y.iloc[test], best.predict_proba(files[test]), threshold=thresholds,
                        groups=groups[test], n_bootstraps=0)
print("test sensitivity at the tuned thresholds:",
      {f: round(tuned.per_finding[f]["sensitivity"].value, 2) for f in FINDINGS})

# %%
# Grad-CAM per finding: for each, a test image with that finding (alone if one is),
# its logit explained
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

fig, axes = plt.subplots(1, 4, figsize=(8, 2.6))
for ax, finding in zip(axes, FINDINGS):
    labels = Y.iloc[test].to_numpy()
    with_it = np.flatnonzero(labels[:, FINDINGS.index(finding)] == 1)
    i = test[with_it[np.argmin(labels[with_it].sum(axis=1))]]  # fewest other findings
    heatmap = grad_cam(best, files[i:i + 1], target=finding)[0]
    j = FINDINGS.index(finding)  # make_findings plants finding j in quadrant j (2 x 2)
    quadrant = heatmap[16 * (j // 2):16 * (j // 2) + 16, 16 * (j % 2):16 * (j % 2) + 16]
    print(f"Grad-CAM {finding}: " + (f"{quadrant.sum() / heatmap.sum():.0%} of the map in "
                                     "its quadrant (a flat map: 25%)" if heatmap.any() else
                                     "an empty map (no positive evidence in this image)"))
    image = best[:-1].transform(files[i:i + 1])[0]
    ax.imshow(overlay(image, heatmap), interpolation="bilinear")
    others = ", ".join(f[:5] + "." for f in FINDINGS if Y.iloc[i][f] == 1 and f != finding)
    ax.set_title(f"{finding}" + (f"\n(also {others})" if others else "\n(alone)"),
                 fontsize=7)
    ax.axis("off")
fig.suptitle("One multilabel network, each finding's logit explained (planted squares)",
             fontsize=8)
fig.tight_layout()
OUTPUT.parent.mkdir(parents=True, exist_ok=True)
fig.savefig(OUTPUT, dpi=90)
print(f"wrote {OUTPUT} in {time.perf_counter() - start:.0f} s")
