"""CPU prediction batch size: ``predict_proba`` of a fitted estimator at several
``predict_batch_size`` values, and where the default (``predict_batch_size=None``) lands.

The measurements behind ``cxr_estimators._runtime.cpu_predict_batch_size``
(docs/design.md, "Prediction batch size"). Each backbone@size row runs in a fresh
process (so that one row's allocations do not shape the next row's allocator), as a user
would: ``CXRClassifier`` with its defaults is fitted for one epoch on synthetic
single-channel images, then ``predict_proba`` of ``n`` images is timed at each batch
size and at the default, in an order that rotates every repetition, after one warm-up
repetition. Reported per row: median images/s of each batch size, ``relative_to_best``
(median images/s ÷ the fastest median), the median minor page faults of one
``predict_proba`` (memory that glibc returned to the kernel and that is faulted back
in), the default batch size and ``default_relative_to_best``; and
``previous_rule_relative_to_best``: the same for the rule before this benchmark, 32
images per torch thread for every backbone. The last three rows were added after the
byte budget for the torchvision families was chosen from the rows before them, as
checks of it on models and sizes it was not chosen on.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing

import numpy as np
import torch

from benchmarks import _common
from benchmarks._cpu_speed_worker import _Clock
from cxr_estimators import _runtime

BATCH_SIZES = (4, 8, 16, 32, 64, 128)
#: (backbone, size, images to predict): about 0.3-1 s per predict_proba on 2 cores.
ROWS = (("simple_cnn", 28, 4096), ("simple_cnn", 64, 2048), ("simple_cnn", 128, 512),
        ("simple_cnn", 224, 192), ("deep_cnn", 28, 4096), ("deep_cnn", 64, 1024),
        ("deep_cnn", 128, 256), ("resnet18", 64, 512), ("resnet18", 128, 256),
        ("resnet18", 224, 96), ("densenet121", 128, 128), ("efficientnet_b0", 128, 128),
        # not used to set the 64 MiB budget of the torchvision rule: checks of it
        ("resnet50", 224, 64), ("densenet121", 224, 64), ("efficientnet_b0", 224, 64))
QUICK_ROWS = (("simple_cnn", 32, 64),)
QUICK_BATCH_SIZES = (8, 32)


def measure_row(backbone, size, n, batch_sizes, reps, seed):
    """One row, in the calling process: fit, then time ``predict_proba`` per batch size."""
    from cxr_estimators import CXRClassifier

    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 1, size, size), dtype=np.float32)
    n_fit = min(n, 64)
    clf = CXRClassifier(backbone=backbone, max_epochs=1, batch_size=32, device="cpu",
                        validation_fraction=0, early_stopping=None, random_state=seed)
    clf.fit(X[:n_fit], np.arange(n_fit) % 2)
    default = clf._predict_batch_size()
    previous = _runtime.cpu_predict_batch_size()  # no model: 32 per thread, the old rule
    sizes = tuple(dict.fromkeys((*batch_sizes, default, previous)))
    times = {bs: [] for bs in sizes}
    faults = {bs: [] for bs in sizes}
    for rep in range(reps + 1):  # rep 0: warm-up
        shift = rep % len(sizes)
        for bs in sizes[shift:] + sizes[:shift]:
            clf.set_params(predict_batch_size=bs)
            clock = _Clock()
            clf.predict_proba(X)
            timing = clock.stop()
            if rep:
                times[bs].append(timing["seconds"])
                faults[bs].append(timing["minflt"])
    rate = {bs: n / _common.median(t) for bs, t in times.items()}
    best = max(rate.values())
    return {"backbone": backbone, "size": size, "n": n, "amp": bool(clf.net_.amp),
            "channels_last": bool(clf.net_.channels_last),
            "torch_threads": torch.get_num_threads(),
            "images_per_s": {str(bs): rate[bs] for bs in sizes},
            "relative_to_best": {str(bs): rate[bs] / best for bs in sizes},
            "page_faults": {str(bs): _common.median(faults[bs]) for bs in sizes},
            "default_batch_size": default, "previous_rule_batch_size": previous,
            "default_relative_to_best": rate[default] / best,
            "previous_rule_relative_to_best": rate[previous] / best}


def _in_fresh_process(*args):
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        return pool.submit(measure_row, *args).result()


def main(argv=None):
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=None)
    p.add_argument("--backbones", nargs="+", default=None,
                   help="backbone@size@n entries (default: ROWS)")
    args = p.parse_args(argv)
    quick = args.quick
    rows = (QUICK_ROWS if quick else
            [(b.split("@")[0], int(b.split("@")[1]), int(b.split("@")[2]))
             for b in args.backbones] if args.backbones else ROWS)
    reps = args.reps or (1 if quick else 5)
    batch_sizes = QUICK_BATCH_SIZES if quick else BATCH_SIZES
    results = []
    for backbone, size, n in rows:
        row = _in_fresh_process(backbone, size, n, batch_sizes, reps, args.seed)
        results.append(row)
        print(f"{backbone:16s} {size:4d} default {row['default_batch_size']:3d} "
              f"({row['default_relative_to_best']:.2f} of best), 32/thread "
              f"{row['previous_rule_batch_size']:3d} "
              f"({row['previous_rule_relative_to_best']:.2f}); "
              + " ".join(f"{bs}:{v:.2f}" for bs, v in row["relative_to_best"].items()),
              flush=True)
    key = "{backbone}@{size}".format
    payload = {"config": {"rows": [list(r) for r in rows], "batch_sizes": list(batch_sizes),
                          "reps": reps, "fit": "1 epoch, 64 images, batch 32",
                          "torch_threads": torch.get_num_threads(),
                          "images": "synthetic N(0, 1), 1 channel"},
               "rows": results,
               "default_relative_to_best": {key(**r): r["default_relative_to_best"]
                                            for r in results},
               "previous_rule_relative_to_best": {
                   key(**r): r["previous_rule_relative_to_best"] for r in results}}
    _common.write_result("cpu_predict_batch", payload, args)
    return payload


if __name__ == "__main__":
    main()
