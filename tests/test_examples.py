"""The README's main job still runs end to end (quick mode). Slow: run with -m slow."""

import subprocess
import sys
from pathlib import Path

import joblib
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_quick(tmp_path):
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "demo.py"), "--quick", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=900,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "reloaded predictions identical: True" in out.stdout
    for line in ("sensitivity", "specificity", "f1", "roc_auc"):
        assert line in out.stdout
    model = joblib.load(tmp_path / "model.joblib")
    assert list(model.classes_) == ["normal", "pneumonia"]
    assert len(list((tmp_path / "gradcam").glob("*.png"))) == 4
    assert (tmp_path / "report.txt").stat().st_size > 0
