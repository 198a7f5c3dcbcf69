"""Peak memory (RSS) of ``predict_proba`` on many images at 224 px, for three input paths.

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
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from benchmarks import _common

MODES = ("eager", "lazy", "chunked", "lazy_skorch")
CHUNK = 256


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
    p.add_argument("--modes", nargs="+", choices=MODES, default=None)
    p.add_argument("--child", nargs=2, metavar=("MODE", "N"), help=argparse_hidden())
    args = p.parse_args(argv)
    size = args.size or (64 if args.quick else 224)
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), size, args.seed)))
        return None
    ns = args.n or ([16, 64] if args.quick else [500, 2000])
    modes = args.modes or (["lazy"] if args.quick else ["eager", "lazy", "chunked"])
    rows = []
    for mode in modes:
        for n in ns:
            cmd = [sys.executable, "-m", "benchmarks.memory", "--child", mode, str(n),
                   "--size", str(size), "--seed", str(args.seed)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True,
                                 cwd=_common.ROOT).stdout
            row = json.loads(out.strip().splitlines()[-1])
            rows.append(row)
            print(f"{mode:8s} N={n:6d}: peak {row['predict_peak_rss_mb']:.0f} MiB "
                  f"(+{row['predict_rss_increase_mb']:.0f} over fit), "
                  f"{row['images_per_s']:.1f} img/s", flush=True)
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
    _common.write_result("memory", payload, args)
    return payload


def argparse_hidden():
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
