"""
Normal vs pneumonia on the bundled sample, end to end
=====================================================

The main job of the README (``make demo``). On 400 real chest X-rays bundled with the
package (PneumoniaMNIST, CC BY 4.0; see ``cxr_estimators/data/pneumoniamnist_sample/
ATTRIBUTION.md``) it:

1. loads the images *by path* from a folder tree (``load_image_folder``);
2. holds out 25% as a test part (stratified);
3. runs ``GridSearchCV`` over lr × neurons × dropout (8 points × 3 folds) of a
   ``Pipeline(ImageLoader → CXRClassifier)``, scored with the clinical scorers and refit
   on ROC AUC;
4. prints sensitivity, specificity, F1 and ROC AUC (with bootstrap 95% CIs) on the
   held-out part;
5. saves the best pipeline with ``cxr_estimators.save`` (safe to load, unlike a joblib
   pickle), reloads it and checks the predictions agree;
6. writes training curves and Grad-CAM overlays next to the model;
7. writes the one-page evaluation report ``report.html`` (and its twin ``report.json``):
   performance with CIs, ROC, calibration, thresholds, the shift audit of the held-out
   part against the training part, the shortcut test and a Grad-CAM gallery.

PneumoniaMNIST has no patient ids, so the split cannot be grouped by patient; with real
Kermany file names use ``load_image_folder(..., label_from="kermany")`` and
``StratifiedGroupKFold`` (docs/honest_evaluation.md).

Run: ``python examples/demo.py [--out demo_output] [--quick]``
"""

import argparse
import time
from pathlib import Path

import cxr_estimators
import numpy as np
import torch
from sklearn.model_selection import GridSearchCV, StratifiedKFold, train_test_split
from sklearn.pipeline import Pipeline

from cxr_estimators import CXRClassifier, ImageLoader
from cxr_estimators.datasets import load_image_folder, sample_data_dir
from cxr_estimators.evaluation import report as write_report
from cxr_estimators.explain import grad_cam, save_overlays
from cxr_estimators.metrics import clinical_report, clinical_scorers


def main():
    parser = argparse.ArgumentParser(description="cxr_estimators demo on the bundled sample")
    parser.add_argument("--out", default="demo_output", help="folder for model and figures")
    parser.add_argument("--quick", action="store_true", help="2 grid points, 5 epochs")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    start = time.perf_counter()

    data = load_image_folder(sample_data_dir())
    print(f"Loaded {len(data.filenames)} images from {sample_data_dir()}: "
          + ", ".join(f"{c}={int(np.sum(data.target == c))}" for c in data.target_names))
    paths_train, paths_test, y_train, y_test = train_test_split(
        data.filenames, data.target, test_size=0.25, stratify=data.target, random_state=0)

    pipe = Pipeline([
        # 28 px is PneumoniaMNIST's native size; a pretrained backbone would take
        # ImageLoader(size=224) and CXRClassifier(backbone="resnet50", weights="DEFAULT").
        ("load", ImageLoader(size=28, channels=1, normalize="unit")),
        ("clf", CXRClassifier(backbone="simple_cnn", max_epochs=5 if args.quick else 15,
                              early_stopping=5, batch_size=32, random_state=0)),
    ])
    grid = {"clf__lr": [3e-3, 1e-3], "clf__neurons": [64, 128], "clf__dropout": [0.3, 0.5]}
    if args.quick:
        grid = {"clf__lr": [3e-3], "clf__neurons": [64], "clf__dropout": [0.3, 0.5]}
    search = GridSearchCV(pipe, grid, scoring=clinical_scorers(pos_label="pneumonia"),
                          refit="roc_auc", cv=StratifiedKFold(3, shuffle=True, random_state=0),
                          n_jobs=1, error_score="raise",  # a failing scorer stops the search
                          verbose=2)  # sklearn prints a line per fit as it goes
    t0 = time.perf_counter()
    search.fit(paths_train, y_train)
    n_fits = len(search.cv_results_["params"]) * search.n_splits_
    print(f"\nGrid search: {n_fits} fits + refit in {time.perf_counter() - t0:.0f} s")
    print(f"Best parameters: {search.best_params_}  (CV ROC AUC {search.best_score_:.3f})")

    model = search.best_estimator_
    proba = model.predict_proba(paths_test)
    pos = list(model.classes_).index("pneumonia")
    report = clinical_report(y_test, proba[:, pos], labels=list(model.classes_),
                             pos_label="pneumonia", n_bootstraps=1000, random_state=0)
    print(f"\nHeld-out part ({len(y_test)} images), pneumonia = positive:")
    print(report)
    (out / "report.txt").write_text(str(report) + "\n")

    model_path = out / "model.safetensors"
    cxr_estimators.save(model, model_path)  # no pickle: loading it cannot run code
    reloaded = cxr_estimators.load(model_path)
    # probabilities, not labels: a label survives small changes a probability shows
    diff = float(np.abs(reloaded.predict_proba(paths_test) - proba).max())
    print(f"\nSaved {model_path} ({model_path.stat().st_size / 1e6:.1f} MB); "
          f"reloaded probabilities: largest difference {diff:.1e} "
          f"(identical: {diff == 0.0})")

    figures = [out / "training_curves.png"]
    try:
        from cxr_estimators.plotting import plot_training_curves

        plot_training_curves(model, path=figures[0])
    except ImportError as exc:  # matplotlib is an optional extra
        print(f"(no training-curve plot: {exc})")
        figures = []
    test_pos = [p for p, t in zip(paths_test, y_test) if t == "pneumonia"][:4]
    heatmaps = grad_cam(model, test_pos)
    images = model[:-1].transform(test_pos)[:, 0]
    shown = model.predict_proba(test_pos)
    figures += save_overlays(images, heatmaps, out / "gradcam",
                             true_labels=["pneumonia"] * len(test_pos),
                             predicted_labels=model.classes_[shown.argmax(1)],
                             probabilities=shown.max(1))
    print("Wrote " + ", ".join(str(f) for f in figures))
    try:
        write_report(model, paths_test, y_test, out / "report.html", X_train=paths_train,
                     y_train=y_train, pos_label="pneumonia",
                     title="Normal vs pneumonia on the bundled sample (held-out part)")
        print(f"Wrote the evaluation report {out / 'report.html'} (+ report.json)")
    except ImportError as exc:  # matplotlib is an optional extra
        print(f"(no evaluation report: {exc})")
    print(f"\nTotal time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
