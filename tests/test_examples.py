"""The README's main job and the clinical-evaluation example still run end to end."""

import ast
import subprocess
import sys
from pathlib import Path

import cxr_estimators
import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_demo_quick(tmp_path):
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "demo.py"), "--quick", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=900,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "reloaded predictions identical: True" in out.stdout
    for line in ("sensitivity", "specificity", "f1", "roc_auc"):
        assert line in out.stdout
    model = cxr_estimators.load(tmp_path / "model.safetensors")
    assert list(model.classes_) == ["normal", "pneumonia"]
    assert len(list((tmp_path / "gradcam").glob("*.png"))) == 4
    assert (tmp_path / "report.txt").stat().st_size > 0
    # make demo also writes the evaluation report and its JSON twin
    page = (tmp_path / "report.html").read_text()
    assert 'content="cxr_estimators evaluation report"' in page and "<img" in page
    import json
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["performance"]["pneumonia"]["n"] == 100 and data["shift"]["run"]


SHARED_NPZ = ROOT.parent / "shared" / "data" / "pneumoniamnist.npz"


@pytest.mark.skipif(not SHARED_NPZ.is_file(), reason="../shared/data/pneumoniamnist.npz is absent")
def test_clinical_evaluation_example_reproduces_its_docs(tmp_path):
    """docs/clinical_evaluation.md quotes this script's output; the script itself asserts
    that the deployed FixedThresholdClassifier applies the tuned threshold."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "plot_clinical_evaluation.py"),
         str(SHARED_NPZ), str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    docs = (ROOT / "docs" / "clinical_evaluation.md").read_text()
    threshold = out.stdout.split("tuning half: ")[1].split()[0]
    assert f"tuning\nhalf is {threshold}" in docs
    printed = out.stdout.split("clinical_scorers on test: ")[1].splitlines()[0]
    v = ast.literal_eval(printed)  # the dict the script prints
    quoted = (f"accuracy {v['accuracy']}, sensitivity {v['sensitivity']}, specificity "
              f"{v['specificity']}, F1 {v['f1']}, ROC AUC {v['roc_auc']}")
    assert quoted in " ".join(docs.split())
    for png in ("training_curves.png", "roc.png", "confusion_matrix.png"):
        assert (tmp_path / png).stat().st_size > 0
