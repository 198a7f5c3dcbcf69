"""What ``cxr_estimators.tune_cpu_malloc()`` changes: the estimator's CPU fit and predict
with glibc malloc's defaults against the same in a process that called it first.

Two worker processes of ``benchmarks/_cpu_speed_worker.py`` with today's tree, one
started with ``CPU_SPEED_TUNE_MALLOC=1`` (it calls :func:`cxr_estimators.tune_cpu_malloc`
before anything else), take turns (the order alternates every repetition) on the rows
of ``benchmarks/cpu_speed.py`` (one epoch, then ``predict_proba``, with the estimator's
defaults), after one warm-up run each. Reported per ``"<backbone>@<size>/<mode>"``:
median images/s of each, ``speedup_tuned`` (median of the per-repetition ratios tuned ÷
default) and the minor page faults of every timed run.
"""

from __future__ import annotations

from benchmarks import _common
from benchmarks.cpu_speed import ROWS, QUICK_ROWS, Worker

MODES = ("default", "tuned")


def measure(workers, rows, reps, seed):
    rates, speedup, faults, seconds = {}, {}, {}, {}
    for backbone, size, n_fit, n_predict in rows:
        base = dict(backbone=backbone, size=size, batch_size=32, seed=seed,
                    predict_batch_size=None, impl="estimator")
        times = {(m, mode): [] for m in MODES for mode in ("fit", "predict")}
        flt = {key: [] for key in times}
        for rep in range(reps + 1):  # rep 0: warm-up
            order = MODES if rep % 2 else MODES[::-1]
            for mode, n in (("fit", n_fit), ("predict", n_predict)):
                for m in order:
                    answer = workers[m].run(mode=mode, n=32 if rep == 0 else n, **base)
                    if rep:
                        times[m, mode].append(answer["seconds"])
                        flt[m, mode].append(answer["minflt"])
        for mode, n in (("fit", n_fit), ("predict", n_predict)):
            k = f"{backbone}@{size}/{mode}"
            rates[k] = {m: n / _common.median(times[m, mode]) for m in MODES}
            speedup[k] = _common.median([d / t for d, t in zip(times["default", mode],
                                                               times["tuned", mode])])
            faults[k] = {m: flt[m, mode] for m in MODES}
            seconds[k] = {m: times[m, mode] for m in MODES}
            print(f"{k:24s} default {rates[k]['default']:7.1f}  tuned "
                  f"{rates[k]['tuned']:7.1f} img/s  tuned/default {speedup[k]:.2f}  "
                  f"faults {_common.median(flt['default', mode]):.0f} / "
                  f"{_common.median(flt['tuned', mode]):.0f}", flush=True)
    return rates, speedup, faults, seconds


def main(argv=None):
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=None, help="timed repetitions (default 5)")
    args = p.parse_args(argv)
    rows = QUICK_ROWS if args.quick else ROWS[:5]
    reps = args.reps or (1 if args.quick else 5)
    workers = {"default": Worker(_common.ROOT),
               "tuned": Worker(_common.ROOT, {"CPU_SPEED_TUNE_MALLOC": "1"})}
    try:
        rates, speedup, faults, seconds = measure(workers, rows, reps, args.seed)
    finally:
        for w in workers.values():
            w.close()
    payload = {"config": {"rows": [list(r) for r in rows], "reps": reps, "batch_size": 32,
                          "epochs": 1, "torch_threads": workers["default"].info[
                              "torch_threads"]},
               "images_per_s": rates, "speedup_tuned": speedup, "page_faults": faults,
               "seconds": seconds}
    _common.write_result("cpu_malloc", payload, args)
    return payload


if __name__ == "__main__":
    main()
