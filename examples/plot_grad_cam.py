"""
Where does the model look? Grad-CAM on PneumoniaMNIST
=====================================================

Train a small CNN on 1,000 PneumoniaMNIST chest X-rays, compute Grad-CAM heatmaps for
test images, check how much of the attention falls outside the central chest region, and
save a grid of overlays to ``<out_dir>/grad_cam_pneumoniamnist.png``.

Run from the repository root (about a minute on a laptop CPU)::

    python examples/plot_grad_cam.py [path/to/pneumoniamnist.npz] [out_dir]

The data file defaults to ``../shared/data/pneumoniamnist.npz`` beside the repository;
the figure goes to ``out_dir`` (default: a new temporary folder). The figure in the docs
is this script's, written there on purpose with ``out_dir`` = ``docs/_static``.
"""

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.pipeline import Pipeline

from cxr_estimators import CXRClassifier, ImageLoader
from cxr_estimators.explain import attention_outside, grad_cam, overlay, shortcut_warning

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared/data/pneumoniamnist.npz"
OUT = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(tempfile.mkdtemp(prefix="cxr_gradcam_"))
OUTPUT = OUT / "grad_cam_pneumoniamnist.png"
CLASSES = np.array(["normal", "pneumonia"])

torch.set_num_threads(min(4, torch.get_num_threads()))
start = time.perf_counter()

# %%
# Data: 28x28 uint8 images, upsampled to 64 px by the pipeline's ImageLoader
data = np.load(DATA)
rng = np.random.default_rng(0)
subset = rng.choice(len(data["train_images"]), size=1000, replace=False)
X_train, y_train = data["train_images"][subset], CLASSES[data["train_labels"][subset, 0]]
X_test, y_test = data["test_images"], CLASSES[data["test_labels"][:, 0]]
print(f"training images: {len(y_train)}, {np.mean(y_train == 'pneumonia'):.0%} pneumonia")

# %%
# A small CNN trained from scratch; the pipeline takes raw uint8 arrays
model = Pipeline([
    ("load", ImageLoader(size=64, channels=1)),
    ("clf", CXRClassifier(backbone="simple_cnn", max_epochs=5, random_state=0, device="cpu",
                          precision="float32")),
])
model.fit(X_train, y_train)
y_pred = model.predict(X_test)
print(f"test accuracy: {(y_pred == y_test).mean():.3f}")

# %%
# Grad-CAM for every test image (explaining the predicted class); the pipeline's
# ImageLoader is applied first, so raw images go in
heatmaps = grad_cam(model, X_test)
outside = attention_outside(heatmaps)  # share of the mass in the outer 15 % band
print(f"mean attention outside the central box: {np.nanmean(outside):.3f} "
      f"(a flat map scores 0.51)")
flagged = shortcut_warning(heatmaps)  # warns if any image looks mostly outside the chest
print(f"images flagged by shortcut_warning: {len(flagged)} of {len(heatmaps)} "
      f"({(y_pred[flagged] == 'normal').sum()} of them predicted normal)")

# %%
# A grid of overlays: four normal and four pneumonia test images
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

shown = np.concatenate([np.flatnonzero(y_test == c)[:4] for c in CLASSES])
images = model[:-1].transform(X_test[shown])
fig, axes = plt.subplots(2, 4, figsize=(7.2, 4.6))
for ax, i, image, heatmap, pred in zip(axes.flat, shown, images, heatmaps[shown], y_pred[shown]):
    ax.imshow(overlay(image, heatmap), interpolation="bilinear")
    ax.set_title(f"true {y_test[i]}\npred {pred}, out {outside[i]:.2f}", fontsize=8)
    ax.axis("off")
fig.suptitle("Grad-CAM, simple_cnn on PneumoniaMNIST (64 px)", fontsize=10)
fig.tight_layout()
OUTPUT.parent.mkdir(parents=True, exist_ok=True)
fig.savefig(OUTPUT, dpi=80)
print(f"wrote {OUTPUT} ({OUTPUT.stat().st_size / 1024:.0f} KB) "
      f"in {time.perf_counter() - start:.0f} s")
