"""Write the bundled demo sample: PNGs from PneumoniaMNIST's official *train* split.

Usage: python tools/make_sample_data.py [--npz ../shared/data/pneumoniamnist.npz] [--per-class 200]

Writes cxr_estimators/data/pneumoniamnist_sample/<class>/<split>_<index>.png, a
deterministic class-balanced draw (seed 0) of the train split, and its attribution.
"""

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "cxr_estimators" / "data" / "pneumoniamnist_sample"
NAMES = {0: "normal", 1: "pneumonia"}
ATTRIBUTION = """# PneumoniaMNIST sample

{n} chest X-ray images (28x28, 8-bit grayscale PNG), {per} per class, drawn at random
(seed 0) from the official *train* split of PneumoniaMNIST (MedMNIST v2: Yang et al.,
"MedMNIST v2 - A large-scale lightweight benchmark for 2D and 3D biomedical image
classification", Scientific Data, 2023), which is derived from Kermany et al., "Identifying
Medical Diagnoses and Treatable Diseases by Image-Based Deep Learning", Cell, 2018.
The data are released under CC BY 4.0 (https://creativecommons.org/licenses/by/4.0/).
File names keep the index into the train split: `train_<index>.png`.

Regenerate with: python tools/make_sample_data.py
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--npz", default=str(ROOT.parent / "shared/data/pneumoniamnist.npz"))
    parser.add_argument("--per-class", type=int, default=200)
    args = parser.parse_args()
    data = np.load(args.npz)
    images, labels = data["train_images"], data["train_labels"].ravel()
    rng = np.random.default_rng(0)
    for label, name in NAMES.items():
        folder = OUT / name
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("*.png"):
            old.unlink()
        idx = np.sort(rng.choice(np.flatnonzero(labels == label), args.per_class, replace=False))
        for i in idx:
            Image.fromarray(images[i]).save(folder / f"train_{i:04d}.png", optimize=True)
    (OUT / "ATTRIBUTION.md").write_text(
        ATTRIBUTION.format(n=2 * args.per_class, per=args.per_class))


if __name__ == "__main__":
    main()
