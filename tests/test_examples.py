"""The README's main job and the clinical-evaluation example still run end to end."""

import ast
import json
import os
import re
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
    assert "reloaded probabilities: largest difference 0.0e+00 (identical: True)" in out.stdout
    assert out.stdout.count("[CV] END") == 2 * 3  # a line per fit as the search goes
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


#: What docs/clinical_evaluation.md allows between a quoted and a printed number (it
#: says so): rates, probabilities and scores; counts.
TOLERANCE, COUNT_TOLERANCE = 0.02, 5
_ROWS = {"sensitivity": "sensitivity", "specificity": "specificity", "PPV": "ppv",
         "NPV": "npv", "F1": "f1", "ROC AUC": "roc_auc", "accuracy": "accuracy"}
_NUM = r"(\d+(?:\.\d+)?)"


def quoted_clinical_numbers(docs):
    """Every number the worked example of docs/clinical_evaluation.md quotes, shaped as
    the script's ``quoted numbers:`` line."""
    section = " ".join(docs[docs.index("## Worked example"):].split())
    tables = re.findall(r"\| metric \| value \| 95% CI \|\|---\|---\|---\|(.*?)(?: [A-Z][a-z]|$)",
                        section.replace("| |", "||"))
    assert len(tables) == 2, "expected two metric tables in the worked example"
    reports = []
    for table in tables:
        rows = dict((name, [float(v) for v in values]) for name, *values in re.findall(
            rf"\|\s*([A-Za-z][A-Za-z0-9 ]*?)\s*\|\s*{_NUM}\s*\|\s*\[{_NUM}, {_NUM}\]\s*\|", table))
        assert set(rows) == set(_ROWS), rows
        reports.append({"metrics": {_ROWS[k]: v for k, v in rows.items()}})
    matrices = re.findall(rf"normal {_NUM} / {_NUM}, pneumonia {_NUM} / {_NUM}", section)
    assert len(matrices) == 2, matrices
    for report, m in zip(reports, matrices):
        a, b, c, d = (int(v) for v in m)
        report["confusion_matrix"] = [[a, b], [c, d]]
    fell = re.search(rf"fall from {_NUM} to {_NUM}, at the price of {_NUM} more false "
                     rf"alarms \({_NUM} to {_NUM}\)", section)
    brier = re.search(rf"raw {_NUM}, calibrated {_NUM}", section)
    scorers = re.search(rf"values: accuracy {_NUM}, sensitivity {_NUM}, specificity {_NUM}, "
                        rf"F1 {_NUM}, ROC AUC {_NUM}", section)
    threshold = re.search(rf"half is {_NUM}\.", section)
    assert fell and brier and scorers and threshold
    return {"default": reports[0], "tuned": reports[1],
            "brier": {"raw": float(brier[1]), "calibrated": float(brier[2])},
            "threshold": float(threshold[1]),
            "scorers": dict(zip(("accuracy", "sensitivity", "specificity", "f1", "roc_auc"),
                                (float(v) for v in scorers.groups()))),
            "fell": [int(v) for v in fell.groups()]}


def assert_close(quoted, printed, where=""):
    """Nested dicts/lists of numbers equal within the doc's tolerances (ints: counts)."""
    if isinstance(printed, dict):
        assert set(quoted) == set(printed), where
        for key in printed:
            assert_close(quoted[key], printed[key], f"{where}/{key}")
    elif isinstance(printed, list):
        assert len(quoted) == len(printed), where
        for i, (q, v) in enumerate(zip(quoted, printed)):
            assert_close(q, v, f"{where}[{i}]")
    else:
        tol = COUNT_TOLERANCE if isinstance(printed, int) else TOLERANCE
        assert abs(quoted - printed) <= tol, f"{where}: docs {quoted}, run {printed}"


@pytest.mark.skipif(not SHARED_NPZ.is_file(), reason="../shared/data/pneumoniamnist.npz is absent")
def test_clinical_evaluation_example_reproduces_its_docs(tmp_path):
    """docs/clinical_evaluation.md quotes this script's output, every number of it; the
    script itself asserts that the deployed FixedThresholdClassifier applies the tuned
    threshold."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "plot_clinical_evaluation.py"),
         str(SHARED_NPZ), str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    printed = json.loads(out.stdout.split("quoted numbers: ")[1].splitlines()[0])
    quoted = quoted_clinical_numbers((ROOT / "docs" / "clinical_evaluation.md").read_text())
    (fn0, fn1, more, fp0, fp1) = quoted.pop("fell")
    assert_close(quoted, printed)
    # the sentence's counts are the two matrices' (each within the count tolerance)
    default, tuned = (printed[k]["confusion_matrix"] for k in ("default", "tuned"))
    assert_close([fn0, fp0, fn1, fp1, more],
                 [default[1][0], default[0][1], tuned[1][0], tuned[0][1],
                  tuned[0][1] - default[0][1]], "the sentence's counts")
    for png in ("training_curves.png", "roc.png", "confusion_matrix.png"):
        assert (tmp_path / png).stat().st_size > 0


def test_the_clinical_doc_check_catches_a_changed_number():
    """The parser reads every quoted number, and one changed beyond the tolerance fails."""
    docs = (ROOT / "docs" / "clinical_evaluation.md").read_text()
    quoted = quoted_clinical_numbers(docs)
    assert len(quoted["default"]["metrics"]) == len(quoted["tuned"]["metrics"]) == 7
    threshold = f"half is {quoted['threshold']:.3f}."
    changed = quoted_clinical_numbers(docs.replace(
        threshold, f"half is {quoted['threshold'] + 0.1:.3f}."))
    changed.pop("fell")
    quoted.pop("fell")
    with pytest.raises(AssertionError, match="threshold"):
        assert_close(changed, quoted)
    assert_close(quoted, quoted)


def test_plot_grad_cam_writes_only_where_it_is_told():
    """Running the example must not rewrite the docs' tracked figure unless asked."""
    source = (ROOT / "examples" / "plot_grad_cam.py").read_text()
    assert "docs/_static" not in source.split('"""', 2)[2]  # only the docstring names it




@pytest.mark.slow
def test_plot_multilabel_runs(tmp_path):
    """The multilabel example runs end to end (about 1.5 min on 2 shared cores) and its
    tuned thresholds reach the sensitivity asked for on most findings."""
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "plot_multilabel.py"),
                          str(tmp_path)], capture_output=True, text=True, timeout=600,
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr[-3000:]
    line = out.stdout.split("test sensitivity at the tuned thresholds: ")[1].splitlines()[0]
    sensitivities = ast.literal_eval(line)
    assert len(sensitivities) == 4 and sorted(sensitivities.values())[1] >= 0.8
    assert (tmp_path / "multilabel_grad_cam.png").stat().st_size > 0
    source = (ROOT / "examples" / "plot_multilabel.py").read_text()
    assert "docs/_static" not in source.split('"""', 2)[2]
