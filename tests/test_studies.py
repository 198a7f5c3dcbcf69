"""Every study script of examples/studies/ runs in --quick mode, and docs/studies.md quotes
the numbers these runs print."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STUDIES = sorted((ROOT / "examples" / "studies").glob("[a-e]_*.py"))
SHARED_NPZ = ROOT.parent / "shared" / "data" / "pneumoniamnist.npz"
DOCS = ROOT / "docs" / "studies.md"

# one "not met here:" line each study must print in --quick mode (random init, binary data)
EXPECTED_GAPS = {
    "a": "ResNet50 pretrained",
    "b": "three classes normal / viral / bacterial",
    "c": "DenseNet-169 and ResNet-18 tried first",
    "d": "ImageNet weights for ResNet50V2",
    "e": "two T4 GPUs",
}


def test_one_script_per_card():
    assert [p.name[0] for p in STUDIES] == list("abcde")


def _summary(stdout, letter):
    lines = [line for line in stdout.splitlines() if line.startswith(f"summary {letter}: ")]
    assert len(lines) == 1, stdout[-3000:]
    return json.loads(lines[0].split(": ", 1)[1])


def _quoted(letter):
    """The summary docs/studies.md quotes for study ``letter`` (its ```text block)."""
    match = re.search(rf"^summary {letter.upper()}: (\{{.*\}})$", DOCS.read_text(), re.M)
    assert match, f"docs/studies.md quotes no 'summary {letter.upper()}:' line"
    return json.loads(match.group(1))


@pytest.mark.parametrize("script", STUDIES, ids=lambda p: p.stem)
def test_study_runs_quick_and_docs_quote_it(script, tmp_path):
    out = subprocess.run([sys.executable, str(script), "--quick", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    letter = script.name[0]
    assert f"not met here: {EXPECTED_GAPS[letter]}" in out.stdout
    printed = _summary(out.stdout, letter.upper())
    assert printed, "the summary holds no number"
    if not SHARED_NPZ.is_file():
        pytest.skip("docs/studies.md quotes runs on ../shared PneumoniaMNIST, absent here")
    quoted = _quoted(letter)
    assert set(quoted) == set(printed)
    for key, value in printed.items():
        # float noise across CPUs and thread counts; fabricated numbers are further off
        assert quoted[key] == pytest.approx(value, abs=TOLERANCE), key
    for line in _quoted_block(letter).splitlines():
        _assert_printed(line, out.stdout)


#: What docs/studies.md allows between a quoted and a printed number (it says so).
TOLERANCE = 0.05
_NUMBER = re.compile(r"(?<![\w.])[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?(?![\w.])|…")


def _quoted_block(letter):
    """The ```text block of study ``letter``'s section of docs/studies.md: every line in
    it is a line the quick run prints."""
    section = re.search(rf"^## {letter.upper()}\. .*?(?=^## |\Z)", DOCS.read_text(),
                        re.M | re.S)
    assert section, f"docs/studies.md has no section '## {letter.upper()}.'"
    block = re.search(r"^```text\n(.*?)^```", section.group(0), re.M | re.S)
    assert block, f"study {letter.upper()}'s section quotes no ```text block"
    return block.group(1)


def _skeleton(line):
    """The line with its numbers (and a quoted '…', an elided number) as '#', blanks
    collapsed; and its numbers, None for '…'."""
    numbers = [None if m == "…" else float(m) for m in _NUMBER.findall(line)]
    return " ".join(_NUMBER.sub("#", line).split()), numbers


def _assert_printed(quoted_line, stdout):
    """``quoted_line`` is a printed line, every number within TOLERANCE."""
    shape, quoted = _skeleton(quoted_line)
    candidates = [_skeleton(line)[1] for line in stdout.splitlines()
                  if _skeleton(line)[0] == shape]
    assert candidates, f"docs/studies.md quotes a line the run did not print:\n{quoted_line}"
    for printed in candidates:
        if all(q is None or abs(q - p) <= TOLERANCE for q, p in zip(quoted, printed)):
            return
    raise AssertionError(f"docs/studies.md quotes\n{quoted_line}\nbut the run printed "
                         f"numbers {candidates} (tolerance {TOLERANCE})")


def test_the_doc_check_catches_a_changed_number():
    """_assert_printed is no rubber stamp: one number off by more than the tolerance, or
    a line never printed, fails it; an elided number ('…') matches any."""
    printed = "  lr 0.001, neurons 128: best epoch 2, validation accuracy 0.688\ntook 3.2 s"
    _assert_printed("lr 0.001, neurons 128: best epoch 2, validation accuracy 0.700", printed)
    _assert_printed("took … s", printed)
    with pytest.raises(AssertionError, match="but the run printed"):
        _assert_printed("lr 0.001, neurons 128: best epoch 2, validation accuracy 0.312",
                        printed)
    with pytest.raises(AssertionError, match="did not print"):
        _assert_printed("lr 0.001, neurons 256: chosen", printed)


def _fake_kermany(root, n_per_split=(60, 24, 36), seed=0):
    """A chest_xray/ tree of bundled-sample images under Kermany-style file names. Which
    pneumonia image is called bacterial or viral is drawn at random: the tree exercises the
    3-class code paths, its labels mean nothing."""
    import numpy as np
    import shutil

    from cxr_estimators.datasets import load_sample

    data = load_sample()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(data.target))
    start = 0
    for split, n in zip(("train", "val", "test"), n_per_split):
        for k, i in enumerate(order[start:start + n]):
            if data.target[i] == "normal":
                folder, name = "NORMAL", f"IM-{1000 + start + k:04d}-0001.png"
            else:
                kind = "bacteria" if rng.random() < 0.6 else "virus"
                folder, name = "PNEUMONIA", f"person{start + k}_{kind}_1.png"
            (root / split / folder).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(data.filenames[i], root / split / folder / name)
        start += n
    return root


@pytest.mark.slow
@pytest.mark.parametrize("letter", ["a", "b", "d"])
def test_three_class_studies_run_on_kermany_folders(letter, tmp_path):
    data = _fake_kermany(tmp_path / "chest_xray")
    script = next(p for p in STUDIES if p.name.startswith(letter))
    out = subprocess.run([sys.executable, str(script), "--quick", "--data", str(data),
                          "--out", str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Kermany folders" in out.stdout
    assert "not met here: 3-class" not in out.stdout
    assert "not met here: three classes" not in out.stdout
    printed = _summary(out.stdout, letter.upper())
    if letter != "b":
        assert any(key.startswith("3class_") for key in printed), printed


@pytest.mark.slow
def test_study_e_trains_data_parallel_under_torchrun(tmp_path):
    """The card's two GPUs: torchrun's processes train each fit data-parallel (here two
    CPU processes over gloo); rank 0 alone prints."""
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.is_file():
        pytest.skip("torchrun is not installed beside this Python")
    script = next(p for p in STUDIES if p.name.startswith("e"))
    out = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2",
                          str(script), "--quick", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    printed = _summary(out.stdout, "E")  # exactly one summary line: rank 0's
    assert "resnet50_test_accuracy" in printed
    assert "not met here: two T4 GPUs" not in out.stdout
