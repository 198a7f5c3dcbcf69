"""Peak memory (RSS) of ``predict_proba`` on many images at 224 px, per input path, and
of a whole ``Pipeline.fit`` with float32 or uint8 images.

* ``eager``: ``ImageLoader().transform`` → one float32 array of all images → predict;
* ``lazy``: ``ImageLoader(lazy=True).transform`` → an ``ImageDataset`` that skorch's
  DataLoader decodes batch by batch;
* ``chunked``: :func:`benchmarks._common.predict_proba_in_chunks` (eager loader on chunks
  of 256 images);
* ``lazy_skorch``: as ``lazy``, but through skorch's own ``NeuralNet.predict_proba``
  (which keeps a list of per-batch arrays) instead of ``CXRClassifier.predict_proba``
  (which fills one array allocated up front): the reason the latter exists.

Each (path, N) runs in a fresh subprocess. The peak of the predict phase alone is read from
VmHWM after resetting it once the model is fitted (Linux ``/proc/self/clear_refs``; where
that is impossible, ``ru_maxrss`` of the whole child is used); ``ru_maxrss`` of the child
is recorded too. The source is
N synthetic 28×28 uint8 images (N × 784 bytes, e.g. 7.8 MB at N = 10,000), upsampled to
224 px by the loader; the model is ``simple_cnn`` (1 channel), fitted for one epoch on 16
images. Reported per run: peak RSS during predict, RSS before predict and their difference.

Fit modes ``fit_float32`` and ``fit_uint8``: ``Pipeline(ImageLoader(size=224, channels=3,
dtype=...), CXRClassifier(...)).fit`` on N synthetic 256x256 gray uint8 source images
(one epoch, ``validation_fraction=0.1``, ``--fit-backbone``, batch 16, CPU), each in a
fresh process; reported: the process's peak RSS (``ru_maxrss``), its RSS before the fit,
the uint8 size of the images the loader outputs (N x 3 x 224 x 224 bytes) and what the
loader actually stores, the model's parameter and buffer bytes, and whether what the fit
adds to the process (peak minus the RSS before it) stays within uint8 size + model +
1 GiB (the goal of issue #12; ``goal_met_absolute`` compares the whole peak, which also
holds the interpreter, torch and the source images).
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from benchmarks import _common

MODES = ("eager", "lazy", "chunked", "lazy_skorch")
FIT_MODES = ("fit_float32", "fit_uint8")
CHUNK = 256
FIT_SOURCE = 256


def fit_child(mode, n, size, seed, backbone):
    """Peak RSS of one ``Pipeline(ImageLoader, CXRClassifier).fit`` (see the docstring)."""
    from sklearn.pipeline import Pipeline

    from cxr_estimators import CXRClassifier, ImageLoader

    dtype = mode.split("_", 1)[1]
    rng = np.random.default_rng(seed)
    source = rng.integers(0, 256, (n, FIT_SOURCE, FIT_SOURCE), dtype=np.uint8)
    baseline = _common.current_rss_mb()
    pipe = Pipeline([
        ("load", ImageLoader(size=size, channels=3, dtype=dtype)),
        ("clf", CXRClassifier(backbone=backbone, max_epochs=1, batch_size=16,
                              early_stopping=None, device="cpu", random_state=seed)),
    ])
    with _common.Timer() as t:
        pipe.fit(source, np.arange(n) % 2)
    module = pipe[-1].module_
    model_mb = sum(v.numel() * v.element_size() for v in module.state_dict().values()) / 2**20
    stored = pipe[0].transform(source[:1])
    uint8_mb = n * 3 * size * size / 2**20
    peak = _common.peak_rss_mb()
    goal_mb = uint8_mb + model_mb + 1024
    return {"mode": mode, "n": n, "size": size, "channels": 3, "backbone": backbone,
            "peak_rss_mb": peak, "rss_before_fit_mb": baseline,
            "fit_rss_increase_mb": peak - baseline, "uint8_data_mb": uint8_mb,
            "stored_data_mb": n * stored[0].nbytes / 2**20,
            "source_mb": source.nbytes / 2**20, "model_mb": model_mb,
            # the goal counts what the fit adds: the interpreter with torch and the
            # package already hold ~0.8 GiB here before any image is loaded
            "goal_mb": goal_mb, "goal_met": peak - baseline <= goal_mb,
            "goal_met_absolute": peak <= goal_mb,
            "seconds": t.seconds, "images_per_s": n / t.seconds}


def child(mode, n, size, seed):
    import gc

    from cxr_estimators import CXRClassifier, ImageLoader

    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    loader = ImageLoader(size=size, channels=1, normalize="minus_one_one")
    X_fit = loader.fit_transform(raw[:16])
    clf = CXRClassifier(backbone="simple_cnn", max_epochs=1, batch_size=16,
                        validation_fraction=0, early_stopping=None, device="cpu",
                        random_state=seed).fit(X_fit, np.arange(16) % 2)
    del X_fit
    gc.collect()
    baseline = _common.current_rss_mb()
    reset = _common.reset_peak_rss()
    with _common.Timer() as t:
        if mode == "eager":
            proba = clf.predict_proba(loader.transform(raw))
        elif mode == "lazy":
            proba = clf.predict_proba(ImageLoader(**{**loader.get_params(), "lazy": True})
                                      .fit_transform(raw))
        elif mode == "chunked":
            proba = _common.predict_proba_in_chunks(clf, raw, loader, CHUNK)
        else:
            from cxr_estimators._training import _Labelled

            proba = clf.net_.predict_proba(_Labelled(
                ImageLoader(**{**loader.get_params(), "lazy": True}).fit_transform(raw)))
    assert proba.shape == (n, 2)
    peak = _common.current_peak_rss_mb() if reset else _common.peak_rss_mb()
    return {"mode": mode, "n": n, "size": size, "predict_peak_rss_mb": peak,
            "process_peak_rss_mb": _common.peak_rss_mb(), "rss_before_predict_mb": baseline,
            "predict_rss_increase_mb": peak - baseline,
            "peak_source": "VmHWM reset after fit" if reset else "ru_maxrss",
            "seconds": t.seconds, "images_per_s": n / t.seconds,
            "input_array_mb": n * size * size * 4 / 2**20}


def main(argv=None):
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--n", nargs="+", type=int, default=None,
                   help="numbers of images (default 500 2000; quick 16 64)")
    p.add_argument("--size", type=int, default=None)
    p.add_argument("--modes", nargs="+", choices=MODES + FIT_MODES, default=None)
    p.add_argument("--fit-n", type=int, default=None,
                   help="images of the fit modes (default 2000; quick 64)")
    p.add_argument("--fit-backbone", default="simple_cnn")
    p.add_argument("--child", nargs=2, metavar=("MODE", "N"), help=argparse_hidden())
    args = p.parse_args(argv)
    size = args.size or (64 if args.quick else 224)
    if args.child:
        mode, n = args.child[0], int(args.child[1])
        row = (fit_child(mode, n, size, args.seed, args.fit_backbone) if mode in FIT_MODES
               else child(mode, n, size, args.seed))
        print(json.dumps(row))
        return None
    ns = args.n or ([16, 64] if args.quick else [500, 2000])
    modes = args.modes or (["lazy", "fit_uint8"] if args.quick
                           else ["eager", "lazy", "chunked", *FIT_MODES])
    fit_n = args.fit_n or (64 if args.quick else 2000)
    rows, fit_rows = [], []
    for mode in modes:
        for n in [fit_n] if mode in FIT_MODES else ns:
            cmd = [sys.executable, "-m", "benchmarks.memory", "--child", mode, str(n),
                   "--size", str(size), "--seed", str(args.seed),
                   "--fit-backbone", args.fit_backbone]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True,
                                 cwd=_common.ROOT).stdout
            row = json.loads(out.strip().splitlines()[-1])
            if mode in FIT_MODES:
                fit_rows.append(row)
                print(f"{mode:11s} N={n:6d}: peak {row['peak_rss_mb']:.0f} MiB "
                      f"(+{row['fit_rss_increase_mb']:.0f} for the fit); uint8 data "
                      f"{row['uint8_data_mb']:.0f} MiB, model {row['model_mb']:.0f} MiB, "
                      f"goal <= {row['goal_mb']:.0f} MiB: "
                      f"{'met' if row['goal_met'] else 'NOT met'}", flush=True)
                continue
            rows.append(row)
            print(f"{mode:8s} N={n:6d}: peak {row['predict_peak_rss_mb']:.0f} MiB "
                  f"(+{row['predict_rss_increase_mb']:.0f} over fit), "
                  f"{row['images_per_s']:.1f} img/s", flush=True)
    modes = [m for m in modes if m not in FIT_MODES]
    growth = {}
    for mode in modes:
        inc = [r["predict_rss_increase_mb"] for r in rows if r["mode"] == mode]
        growth[mode] = {"n": ns, "predict_rss_increase_mb": inc,
                        "mb_per_1000_images": (inc[-1] - inc[0]) / (ns[-1] - ns[0]) * 1000
                        if len(ns) > 1 else None}
    payload = {"config": {"size": size, "channels": 1, "backbone": "simple_cnn",
                          "batch_size": 16, "chunk": CHUNK, "n": ns, "modes": modes,
                          "source": "synthetic uint8 28x28, resized by ImageLoader"},
               "rows": rows, "growth": growth}
    if fit_rows:
        payload["fit"] = {"config": {"n": fit_n, "size": size, "channels": 3,
                                     "backbone": args.fit_backbone, "batch_size": 16,
                                     "epochs": 1, "validation_fraction": 0.1,
                                     "source": f"synthetic uint8 {FIT_SOURCE}x{FIT_SOURCE} "
                                               "gray"},
                          "rows": fit_rows}
    _common.write_result("memory", payload, args)
    return payload


def argparse_hidden():
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
