"""Bad inputs and faults: how many give a clear error, are handled, or go wrong.

Runs every case of the bad-input suite (``tests/test_errors.py``: files, arrays, labels,
parameters, faults, model files) and counts the outcomes — clear error, handled, silent,
obscure, memory — as defined in ``tests/bad_inputs.py``. A case also counts as "memory"
when the process's peak RSS grew by more than ``--memory-mb`` while it ran; the process
runs under an address-space limit (``--limit-gb`` above its size at start), so a blow-up
becomes a MemoryError here instead of swapping the machine.

Code execution: the cases that feed a pickle payload (an image file, a weights file, a
model file, a feature-cache file) each name a marker file the payload writes if its code
runs. ``code_executed`` counts the markers present after the run (goal: 0), and a control
shows the payload does run under ``joblib.load`` (what the README warns about).

``python -m benchmarks.robustness [--quick]``; ``--quick`` runs every third case and every
payload case.
"""

from __future__ import annotations

import collections
import importlib
import resource
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import _common

GOAL = {"silent": 0, "memory": 0, "obscure_max": 5, "code_executed": 0}


def _load_suite():
    tests = str(_common.ROOT / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    return importlib.import_module("test_errors"), importlib.import_module("bad_inputs")


def _is_payload(case):
    return "payload" in case.id.lower() or "pickle" in case.id.lower()


def _limit_address_space(extra_gb):
    """Cap the address space at its current size + ``extra_gb`` (Linux); the cap in GiB."""
    size_mb = _common._proc_status_mb("VmSize")
    if size_mb is None:
        return None
    cap = int((size_mb / 1024 + extra_gb) * 2**30)
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    return cap / 2**30


def _joblib_control(bad_inputs, root):
    """True if joblib.load of the payload runs its code (it should: that is the danger)."""
    import joblib

    marker = Path(root) / "markers" / "joblib_control"
    marker.parent.mkdir(parents=True, exist_ok=True)
    path = Path(root) / "control.joblib"
    joblib.dump(bad_inputs.Payload(marker), path)
    try:
        joblib.load(path)
    except Exception:  # the payload returns None; whatever follows does not matter
        pass
    return marker.exists()


def run(cases, suite_module, bad_inputs, root, memory_mb):
    ws = bad_inputs.Workspace(root)
    rows = []
    for case in cases:
        before = _common.peak_rss_mb()
        start = time.perf_counter()
        outcome, detail = bad_inputs.run_case(case, ws)
        grew = _common.peak_rss_mb() - before
        if grew > memory_mb and outcome != "memory":
            outcome, detail = "memory", f"peak RSS grew by {grew:.0f} MiB ({detail})"
        rows.append({"id": case.id, "category": case.category, "outcome": outcome,
                     "expected": case.expected_outcome, "detail": detail[:300],
                     "seconds": round(time.perf_counter() - start, 3),
                     "peak_rss_growth_mb": round(grew, 1)})
        if outcome not in ("clear error", "handled"):
            print(f"  {outcome:>11}  [{case.category}] {case.id}: {detail[:160]}", flush=True)
    return rows


def main(argv=None):
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--limit-gb", type=float, default=3.0,
                   help="address space allowed beyond the size at start (GiB)")
    p.add_argument("--memory-mb", type=float, default=1024,
                   help="peak RSS growth of one case that counts as a memory blow-up")
    args = p.parse_args(argv)
    suite, bad_inputs = _load_suite()
    cases = [c for k, c in enumerate(suite.ALL_CASES)
             if not args.quick or k % 3 == 0 or _is_payload(c)]
    with tempfile.TemporaryDirectory(prefix="robustness_") as root:
        cap = _limit_address_space(args.limit_gb)
        with _common.Timer() as t:
            rows = run(cases, suite, bad_inputs, root, args.memory_mb)
        markers = sorted(p.name for p in (Path(root) / "markers").glob("*")) \
            if (Path(root) / "markers").exists() else []
        control = _joblib_control(bad_inputs, root)
    counts = collections.Counter(r["outcome"] for r in rows)
    counts = {k: counts.get(k, 0) for k in bad_inputs.OUTCOMES}
    by_category = {c: dict(collections.Counter(r["outcome"] for r in rows
                                               if r["category"] == c))
                   for c in bad_inputs.CATEGORIES}
    payload_cases = [c.id for c in cases if _is_payload(c)]
    met = (counts["silent"] == 0 and counts["memory"] == 0 and counts["obscure"] <= 5
           and not markers)
    payload = {
        "n_cases": len(rows),
        "counts": counts,
        "by_category": by_category,
        "code_executed": len(markers),
        "code_executed_markers": markers,
        "payload_cases": payload_cases,
        "joblib_load_runs_payload": control,
        "address_space_limit_gb": cap,
        "memory_threshold_mb": args.memory_mb,
        "wall_time_s": t.seconds,
        "goal": "0 silent, 0 memory, <= 5 obscure, 0 code executed",
        "goal_met": met,
        "cases": rows,
    }
    _common.write_result("robustness", payload, args)
    print(f"{len(rows)} cases: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    for category, found in by_category.items():
        print(f"  {category:>11}: " + ", ".join(f"{k} {v}" for k, v in sorted(found.items())))
    print(f"code executed by cxr_estimators.load / the feature cache / read_image / weights: "
          f"{len(markers)} of {len(payload_cases)} payload cases; joblib.load runs the same "
          f"payload: {control}")
    print(f"goal ({payload['goal']}) met: {met}")
    return payload


if __name__ == "__main__":
    main()
