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


def shift_audit_section(r, provenance):
    """The docs/benchmarks.md section (``provenance``: make_table's provenance line)."""
    def cell(a):
        low, high = a["auc_ci"]
        return f"{a['auc']:.3f} [{low:.3f}, {high:.3f}], p = {a['p_value']:.3g}"

    names = r["labels"]
    rows = [f"| {pair} | {cell(a)} | " + " | ".join(cell(a["per_class"][k]) for k in names)
            + " |" for pair, a in r["audits"].items()]
    model = r["benchmark_model"]
    return "\n".join([
        "## Shift audit: PneumoniaMNIST's splits\n",
        "Out-of-fold ROC AUC of a domain classifier telling the new images from the "
        "reference ones (0.5: indistinguishable), 95 % bootstrap CI and permutation "
        f"p-value ({r['n_permutations']} permutations); docs/honest_evaluation.md §4.\n",
        "| reference vs new | all images | " + " | ".join(names.values()) + " |",
        "|---|---|" + "---|" * len(names), *rows, "",
        f"The benchmark model on val / test: specificity {model['val']['specificity']:.3f}"
        f" / {model['test']['specificity']:.3f}, sensitivity "
        f"{model['val']['sensitivity']:.3f} / {model['test']['sensitivity']:.3f}, ROC AUC "
        f"{model['val']['roc_auc']:.3f} / {model['test']['roc_auc']:.3f}.\n",
        provenance(r)])


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
