"""The README's first example is the user guide's, and it runs as printed.

The documentation site itself is built by ``make docs`` (warnings as errors, so a broken
reference or a docstring Sphinx cannot read fails it); the docstrings' Examples run as
doctests in the default suite (``--doctest-modules`` in pyproject.toml).
"""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def first_python_block(path):
    match = re.search(r"```python\n(.*?)```", path.read_text(), re.S)
    assert match, f"{path} has no ```python block"
    return match.group(1)


def test_readme_first_example_is_the_guides():
    assert first_python_block(ROOT / "README.md") == first_python_block(
        ROOT / "docs" / "first_model.md")


def test_readme_first_example_runs():
    code = first_python_block(ROOT / "README.md")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "positive class 'pneumonia'" in out.stdout
    assert re.search(r"overall\s+sensitivity\s+\d\.\d{3}\s+\[", out.stdout), out.stdout
    assert "confusion matrix" in out.stdout


def test_every_public_module_has_an_api_page_line():
    """docs/conf.py fails the build on the same condition; this says it without Sphinx."""
    import cxr_estimators

    listed = (ROOT / "docs" / "api" / "index.rst").read_text()
    modules = [name for name in cxr_estimators.__all__
               if type(getattr(cxr_estimators, name)).__name__ == "module"]
    missing = [m for m in modules if f"cxr_estimators.{m}\n" not in listed]
    assert not missing, f"add to docs/api/index.rst: {missing}"
