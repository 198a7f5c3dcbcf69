"""CPU fit and predict speed: the estimator before this change, now, and the best plain loop.

For each backbone@size row, three implementations run in two worker processes
(``benchmarks/_cpu_speed_worker.py``), one command at a time, alternating
(before, now, loop; now, loop, before; loop, before, now; ...: the order rotates, so
that no implementation always runs first) for ``--reps`` repetitions:

* ``before``: ``CXRClassifier`` from commit ``--before-ref`` (default 18e5be8, the last
  commit before channels_last, bf16 autocast and the lean prediction loop on CPU),
  extracted with ``git archive`` into a temporary directory;
* ``now``: ``CXRClassifier`` from this tree, with its defaults;
* ``loop``: a best-practice plain torch loop on the same model with the same layout and
  precision as ``now`` (channels_last, bf16 autocast on a CPU with native bf16),
  ``inference_mode`` for prediction and the same batch sizes;
* ``loop_folded`` (prediction only, models with BatchNorm): ``loop`` on a copy of its
  model with BatchNorm folded into the convolutions (torch.fx's ``fuse``), the fold
  included in the time, as the estimator folds at the first prediction after a fit.

With ``--compile``, a fourth implementation, ``compiled`` (``now`` with ``compile=True``),
runs in the same worker as ``now``; its warm-up seconds (which include compiling, for the
warm-up batch sizes only) are stored as ``compile_warmup_s``.

Fit: one epoch of ``n`` synthetic single-channel images, batch 32, Adam, no validation
split or early stopping, model construction included. Predict: ``predict_proba`` (the
loop: softmax into a preallocated tensor) of ``n_predict`` images. Each worker warms up
on the row first. Images/s are medians over the repetitions; ``ratio_to_best_loop`` (now
÷ loop) and ``speedup_vs_before`` (now ÷ before), keyed ``"<backbone>@<size>/<mode>"``,
are medians of the per-repetition ratios: the runs of one repetition follow each other,
so a drift in the machine's load cancels in their ratio. ``fold_s`` (per row): median of
three timings of the fold alone, ``folds``: whether the model has BatchNorm to fold (else
``loop_folded`` is not run: it would be ``loop`` again). For prediction the best loop is
whichever of ``loop`` and ``loop_folded`` has the shorter median time;
``ratio_to_plain_loop`` keeps now ÷ ``loop`` alone; ``ratio_to_best_loop_ci95`` is a
distribution-free 95 % interval of each median ratio (order statistics; None below 6
repetitions). ``page_faults`` (per row and
implementation, per repetition): minor page faults of the timed part; ``--malloc tuned``
runs the workers with :data:`TUNED_MALLOC`.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from benchmarks import _common
from cxr_estimators import _runtime

WORKER = Path(__file__).with_name("_cpu_speed_worker.py")
BEFORE_REF = "18e5be8"
#: (backbone, size, n images to fit, n images to predict): about 2-4 s per "before" fit
#: on a quiet 2-core CPU.
ROWS = (
    ("simple_cnn", 64, 1024, 2048),
    ("simple_cnn", 128, 256, 512),
    ("deep_cnn", 64, 512, 1024),
    ("deep_cnn", 128, 128, 256),
    ("resnet18", 128, 96, 192),
    ("resnet18", 224, 32, 64),
)
QUICK_ROWS = (("simple_cnn", 32, 64, 64),)
GOALS = {"ratio_to_best_loop": ">= 0.95 on every row",
         "speedup_vs_before": ">= 1.5 for simple_cnn@64/predict and deep_cnn@64/predict"}


#: ``--malloc tuned``: glibc malloc keeps freed memory instead of returning it to the
#: kernel at every step (a fixed mmap threshold of 32 MiB, glibc's maximum, and a 1 GiB
#: trim threshold), as docs/design.md ("glibc malloc") recommends for CPU training.
TUNED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(_runtime.MMAP_THRESHOLD_MAX),
                "MALLOC_TRIM_THRESHOLD_": str(_runtime.TRIM_THRESHOLD)}


class Worker:
    """One worker process; :meth:`run` sends a command and returns the answer."""

    def __init__(self, pythonpath, env_extra=None):
        env = {**os.environ, "PYTHONPATH": str(pythonpath), **(env_extra or {})}
        self.proc = subprocess.Popen([sys.executable, str(WORKER)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env,
                                     cwd=str(pythonpath))
        self.info = json.loads(self.proc.stdout.readline())

    def run(self, **cmd):
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.info} died on {cmd}")
        return json.loads(line)

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def extract_before(ref, into):
    """The ``cxr_estimators`` package of commit ``ref`` under ``into``, or None."""
    archive = Path(into) / "before.tar"
    try:
        with open(archive, "wb") as f:
            subprocess.run(["git", "archive", ref, "cxr_estimators"], stdout=f, check=True,
                           cwd=_common.ROOT, stderr=subprocess.PIPE)
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"cannot extract {ref} ({exc}); 'before' is skipped", file=sys.stderr)
        return None
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return Path(into)


def _median_rate(times, n):
    return n / _common.median(times) if times else None


def measure_row(workers, backbone, size, n_fit, n_predict, reps, seed):
    """Median images/s per implementation and mode for one row."""
    base = dict(backbone=backbone, size=size, batch_size=32, seed=seed)
    impls = [(name, w, name if name in ("loop", "compiled") else "estimator")
             for name, w in workers.items()]
    info = {}
    if "loop" in workers:  # what the estimator's first prediction after a fit adds
        workers["loop"].run(impl="loop", mode="fit", n=32, **base)
        folds = [workers["loop"].run(impl="loop", mode="fold", n=32, **base)
                 for _ in range(3)]
        info["fold_s"] = _common.median([f["seconds"] for f in folds])
        info["folds"] = folds[0]["folds"]
        if info["folds"]:  # a model without BatchNorm: loop_folded would be loop again
            impls.append(("loop_folded", workers["loop"], "loop"))
    times = {(name, mode): [] for name, _, _ in impls for mode in ("fit", "predict")
             if (name, mode) != ("loop_folded", "fit")}
    faults = {key: [] for key in times}
    warmup = {}
    for rep in range(reps + 1):  # rep 0: warm-up, not timed
        # the order of the implementations rotates from one repetition to the next, so
        # that none always runs first (or right after the same one)
        order = impls[rep % len(impls):] + impls[:rep % len(impls)]
        for mode, n in (("fit", n_fit), ("predict", n_predict)):
            for name, worker, impl in order:
                if (name, mode) not in times:
                    continue
                n_run = 32 if rep == 0 else n
                answer = worker.run(impl=impl, mode=mode, n=n_run,
                                    predict_batch_size=info.get("predict_batch_size", 32),
                                    fold=name == "loop_folded", **base)
                if name == "now" and mode == "fit":
                    info.update({k: v for k, v in answer.items()
                                 if k not in ("seconds", "minflt", "sys_s")})
                if rep > 0:
                    times[name, mode].append(answer["seconds"])
                    faults[name, mode].append(answer["minflt"])
                elif name == "compiled":
                    warmup[mode] = answer["seconds"]
        if rep > 0:
            print(f"  rep {rep}: " + "  ".join(
                f"{name}/{mode} {(n_fit if mode == 'fit' else n_predict) / t[-1]:7.1f}"
                for (name, mode), t in times.items()), flush=True)
    rates = {f"{name}/{mode}": _median_rate(t, n_fit if mode == "fit" else n_predict)
             for (name, mode), t in times.items()}
    if warmup:
        info["compile_warmup_s"] = warmup
    info["page_faults"] = {f"{name}/{mode}": f for (name, mode), f in faults.items()}
    return rates, times, info


def _per_rep_ratios(seconds, num, den):
    """speed(num) / speed(den) = seconds(den) / seconds(num), repetition by repetition."""
    return [d / n for n, d in zip(seconds[num], seconds[den])]


def paired_ratio(seconds, num, den):
    """Median over repetitions of speed(num) / speed(den)."""
    return _common.median(_per_rep_ratios(seconds, num, den))


def median_ci(values, level=0.95):
    """A distribution-free confidence interval of the median: the order statistics
    ``(x_(k), x_(n+1-k))`` with the largest ``k`` whose binomial(n, 1/2) tail leaves at
    least ``level`` coverage; None for fewer than 6 values (no such k)."""
    x, n = sorted(values), len(values)
    k, tail = 0, 0.0
    while True:
        tail_next = tail + math.comb(n, k) / 2 ** n  # P(Binom(n, 1/2) <= k)
        if 1 - 2 * tail_next < level:
            break
        tail, k = tail_next, k + 1
    return None if k == 0 else (x[k - 1], x[n - k])


def ratio_ci(seconds, mode):
    """:func:`median_ci` of the per-repetition ratios now ÷ best loop."""
    return median_ci(_per_rep_ratios(seconds, f"now/{mode}", best_loop(seconds, mode)))


def best_loop(seconds, mode):
    """``"loop/<mode>"`` or ``"loop_folded/<mode>"``, whichever has the shorter median
    time (only prediction has a folded variant, and only for models with BatchNorm)."""
    names = [f"{v}/{mode}" for v in ("loop", "loop_folded") if f"{v}/{mode}" in seconds]
    return min(names, key=lambda name: _common.median(seconds[name]))


def derived_ratios(raw):
    """``ratio_to_best_loop``, ``ratio_to_plain_loop``, ``speedup_vs_before``,
    ``compiled_vs_now`` and ``ratio_to_best_loop_ci95`` from the per-repetition seconds
    ``{row: {"<impl>/<mode>": [s, ...]}}``."""
    ratio, plain, speedup, compiled, ci = {}, {}, {}, {}, {}
    for key, seconds in raw.items():
        for mode in ("fit", "predict"):
            k = f"{key}/{mode}"
            ratios = _per_rep_ratios(seconds, f"now/{mode}", best_loop(seconds, mode))
            ratio[k], ci[k] = _common.median(ratios), median_ci(ratios)
            plain[k] = paired_ratio(seconds, f"now/{mode}", f"loop/{mode}")
            if f"before/{mode}" in seconds:
                speedup[k] = paired_ratio(seconds, f"now/{mode}", f"before/{mode}")
            if f"compiled/{mode}" in seconds:
                compiled[k] = paired_ratio(seconds, f"compiled/{mode}", f"now/{mode}")
    return ratio, plain, speedup, compiled, ci


def main(argv=None):
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=None,
                   help="timed repetitions (default 11: enough for a 95 %% interval of "
                        "each median ratio that is not the whole range)")
    p.add_argument("--before-ref", default=BEFORE_REF,
                   help="git commit of the 'before' estimator (default %(default)s)")
    p.add_argument("--compile", action="store_true",
                   help="also time the estimator with compile=True")
    p.add_argument("--rows", nargs="+", default=None,
                   help="backbone@size rows to run (default: all)")
    p.add_argument("--malloc", choices=("default", "tuned"), default="default",
                   help="glibc malloc settings of the workers: as the environment has "
                        "them, or TUNED_MALLOC (default: %(default)s)")
    args = p.parse_args(argv)
    rows = QUICK_ROWS if args.quick else ROWS
    if args.rows:
        rows = [r for r in ROWS + QUICK_ROWS + (("resnet18", 32, 32, 32),)
                if f"{r[0]}@{r[1]}" in args.rows]
    reps = args.reps or (1 if args.quick else 11)

    malloc_env = TUNED_MALLOC if args.malloc == "tuned" else {}
    with tempfile.TemporaryDirectory() as tmp:
        workers = {}
        before = extract_before(args.before_ref, tmp)
        if before is not None:
            workers["before"] = Worker(before, malloc_env)
        workers["now"] = Worker(_common.ROOT, malloc_env)
        workers["loop"] = workers["now"]
        if args.compile:
            workers["compiled"] = workers["now"]
        try:
            results, raw = {}, {}
            for backbone, size, n_fit, n_predict in rows:
                print(f"{backbone}@{size}: fit n={n_fit}, predict n={n_predict}", flush=True)
                rates, times, info = measure_row(workers, backbone, size, n_fit, n_predict,
                                                 reps, args.seed)
                key = f"{backbone}@{size}"
                results[key] = {"n_fit": n_fit, "n_predict": n_predict, **info,
                                "images_per_s": rates}
                raw[key] = {f"{k[0]}/{k[1]}": v for k, v in times.items()}
        finally:
            for w in {id(w): w for w in workers.values()}.values():
                w.close()
        threads = workers["now"].info["torch_threads"]

    ratio, plain, speedup, compiled, ci = derived_ratios(raw)
    for key in ratio:
        print(f"{key:28s} now/loop {ratio[key]:.3f}  now/before "
              f"{speedup.get(key, float('nan')):.2f}")
    payload = {
        "config": {"rows": [list(r) for r in rows], "reps": reps, "batch_size": 32,
                   "epochs": 1, "optimizer": "adam", "images": "synthetic N(0, 1), 1 channel",
                   "before_ref": args.before_ref if "before" in workers else None,
                   "torch_threads": threads, "malloc": args.malloc,
                   "malloc_env": malloc_env or {k: os.environ.get(k) for k in TUNED_MALLOC}},
        "rows": results,
        "seconds": raw,
        "ratio_to_best_loop": ratio,
        "ratio_to_best_loop_ci95": ci,
        "ratio_to_plain_loop": plain,
        "speedup_vs_before": speedup,
        "goals": GOALS,
        **({"compiled_vs_now": compiled} if compiled else {}),
    }
    _common.write_result("cpu_speed", payload, args)
    return payload


if __name__ == "__main__":
    main()
