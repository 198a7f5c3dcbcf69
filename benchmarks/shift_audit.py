"""Shift audit on PneumoniaMNIST: which official splits can a domain classifier tell apart?

``python -m benchmarks.shift_audit [npz]`` runs :func:`cxr_estimators.audit.shift_audit`
(pixel representation, 5-fold ridge domain classifier, 1000 permutations, 1000
bootstrap resamples, ``random_state=0``) on: two random halves of the train split, train
vs val, val vs test and train vs test, each overall and per class, and writes
``benchmarks/results/shift_audit.json`` next to the benchmark model's val and test
figures (``benchmarks/results/pneumoniamnist.json``), which the audit should anticipate.
No training, no randomness beyond the seed: the numbers do not depend on the CPU beyond
float rounding (shown to three decimals in docs/honest_evaluation.md).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from cxr_estimators.audit import shift_audit

RESULTS = Path(__file__).parent / "results"
DEFAULT_NPZ = Path(__file__).resolve().parents[1].parent / "shared/data/pneumoniamnist.npz"


def main(npz=DEFAULT_NPZ):
    data = np.load(npz)
    split = {s: (data[f"{s}_images"], data[f"{s}_labels"].ravel())
             for s in ("train", "val", "test")}
    order = np.random.default_rng(0).permutation(len(split["train"][0]))
    half = len(order) // 2
    pairs = {
        "train half A vs train half B": (tuple(a[order[:half]] for a in split["train"]),
                                         tuple(a[order[half:]] for a in split["train"])),
        "train vs val": (split["train"], split["val"]),
        "val vs test": (split["val"], split["test"]),
        "train vs test": (split["train"], split["test"]),
    }
    out = {"benchmark": "shift_audit", "command": "python -m benchmarks.shift_audit",
           "labels": {"0": "normal", "1": "pneumonia"}, "audits": {}}
    for name, ((X_ref, y_ref), (X_new, y_new)) in pairs.items():
        start = time.perf_counter()
        audit = shift_audit(X_ref, X_new, y_ref=y_ref, y_new=y_new, random_state=0)
        print(f"{name}\n{audit}\n")
        out["audits"][name] = {**audit.to_dict(), "seconds": time.perf_counter() - start}
    bench = json.loads((RESULTS / "pneumoniamnist.json").read_text())
    out["benchmark_model"] = {"val": bench["val"], "test": bench["test"],
                              "threshold": bench["threshold"]}
    (RESULTS / "shift_audit.json").write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {RESULTS / 'shift_audit.json'}")


if __name__ == "__main__":
    main(*sys.argv[1:])
