"""Shift audit on PneumoniaMNIST: which official splits can a domain classifier tell apart?

``python -m benchmarks.shift_audit`` runs :func:`cxr_estimators.audit.shift_audit` (pixel
representation, 5-fold ridge domain classifier, 1000 permutations, 1000 bootstrap
resamples, ``random_state=0``) on: two random halves of the train split, train vs val,
val vs test and train vs test, each overall and per class, and writes
``benchmarks/results/shift_audit.json`` with the benchmark model's val and test figures
(``benchmarks/results/pneumoniamnist.json``), which the audit should anticipate.
No training: beyond float rounding the numbers do not depend on the CPU
(docs/honest_evaluation.md quotes them to three decimals). ``--quick``: 99 permutations
and resamples.
"""

from __future__ import annotations

import json
import time

import numpy as np

from benchmarks import _common
from cxr_estimators.audit import shift_audit


def _pairs(split, seed):
    order = np.random.default_rng(seed).permutation(len(split["train"][0]))
    half = len(order) // 2
    halves = [tuple(a[idx] for a in split["train"]) for idx in (order[:half], order[half:])]
    return {"train half A vs train half B": halves,
            "train vs val": (split["train"], split["val"]),
            "val vs test": (split["val"], split["test"]),
            "train vs test": (split["train"], split["test"])}


def main():
    args = _common.parser(__doc__.splitlines()[0]).parse_args()
    n = 99 if args.quick else 1000
    audits = {}
    for name, ((X_ref, y_ref), (X_new, y_new)) in _pairs(_common.load_pneumoniamnist(),
                                                         args.seed).items():
        start = time.perf_counter()
        audit = shift_audit(X_ref, X_new, y_ref=y_ref, y_new=y_new, n_permutations=n,
                            n_bootstraps=n, random_state=args.seed)
        print(f"{name}\n{audit}\n")
        audits[name] = {**audit.to_dict(), "seconds": time.perf_counter() - start}
    bench = json.loads((_common.RESULTS_DIR / "pneumoniamnist.json").read_text())
    _common.write_result("shift_audit", {
        "labels": {"0": "normal", "1": "pneumonia"}, "n_permutations": n, "audits": audits,
        "benchmark_model": {k: bench[k] for k in ("val", "test", "threshold")}}, args)


if __name__ == "__main__":
    main()
