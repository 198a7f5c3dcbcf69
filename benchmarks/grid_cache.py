"""Frozen-backbone grid search with and without the feature cache (``cache=True``).

A seed-style ``GridSearchCV``: lr × neurons × dropout (2 × 2 × 2 = 8 points) × 3 folds,
plus the refit, over ``CXRClassifier(freeze=True)`` on PneumoniaMNIST images. Run once with
``cache=None`` (every fit recomputes the backbone in every epoch) and once with
``cache=True`` after ``_features.clear_cache()`` (so the first computation is counted).
Same data, folds and ``random_state``, at several image sizes (the larger, the more of the
uncached time is backbone work). Reported per size: both times, the speed-up and whether
the two searches pick the same ``best_params_``; the top-level ``speedup`` is the largest
size's, ``best_params_agree`` holds for all sizes.
"""

from __future__ import annotations

from sklearn.model_selection import GridSearchCV, StratifiedKFold

from benchmarks import _common
from cxr_estimators import CXRClassifier, _features

GRID = {"lr": [1e-3, 1e-2], "neurons": [32, 128], "dropout": [0.2, 0.5]}


def search(X, y, cache, cfg, seed):
    clf = CXRClassifier(backbone=cfg["backbone"], freeze=True, cache=cache,
                        max_epochs=cfg["epochs"], batch_size=32, early_stopping=None,
                        device="cpu", random_state=seed)
    cv = StratifiedKFold(3, shuffle=True, random_state=seed)
    gs = GridSearchCV(clf, GRID, cv=cv, scoring="roc_auc", n_jobs=1)
    with _common.Timer() as t:
        gs.fit(X, y)
    return gs, t.seconds


def measure(X, y, cfg, seed):
    """Both searches on the same data; one row of the result."""
    plain, t_plain = search(X, y, None, cfg, seed)
    print(f"{cfg['size']} px cache=None: {t_plain:.1f} s, best {plain.best_params_}",
          flush=True)
    _features.clear_cache()
    cached, t_cached = search(X, y, True, cfg, seed)
    info = _features.cache_info()
    print(f"{cfg['size']} px cache=True: {t_cached:.1f} s, best {cached.best_params_}, "
          f"cache {info}", flush=True)
    _features.clear_cache()
    return {
        "size": cfg["size"],
        "time_s": {"cache_none": t_plain, "cache_true": t_cached},
        "speedup": t_plain / t_cached,
        "best_params_agree": plain.best_params_ == cached.best_params_,
        "best_params": {"cache_none": plain.best_params_, "cache_true": cached.best_params_},
        "best_score": {"cache_none": plain.best_score_, "cache_true": cached.best_score_},
        "cache_info": info,
    }


def main(argv=None):
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--backbone", default=None)
    p.add_argument("--sizes", type=int, nargs="+", default=None,
                   help="image sizes; the headline speedup is the last one's")
    p.add_argument("--n", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None)
    args = p.parse_args(argv)
    cfg = dict(backbone="resnet18", sizes=[32], n=72, epochs=2) if args.quick else \
        dict(backbone="resnet18", sizes=[64, 128], n=300, epochs=5)
    cfg.update({k: getattr(args, k) for k in cfg if getattr(args, k) is not None})

    data = _common.load_pneumoniamnist()
    images, y = _common.stratified_subset(*data["train"], cfg["n"], seed=args.seed)
    rows = [measure(_common.to_inputs(images, size), y, {**cfg, "size": size}, args.seed)
            for size in cfg["sizes"]]
    headline = rows[-1]
    payload = {
        "config": {**cfg, "grid": GRID, "folds": 3, "n_fits": 8 * 3 + 1, "freeze": True,
                   "weights": None, "batch_size": 32, "early_stopping": None,
                   "validation_fraction": 0.1, "scoring": "roc_auc", "device": "cpu"},
        **{k: headline[k] for k in ("size", "time_s", "speedup", "best_params_agree",
                                    "best_params", "best_score", "cache_info")},
        "best_params_agree": all(r["best_params_agree"] for r in rows),
        "rows": rows,
        "goal": "speedup >= 10",
    }
    _common.write_result("grid_cache", payload, args)
    print(f"speedup {payload['speedup']:.1f}x at {headline['size']} px, "
          f"agree {payload['best_params_agree']}")
    return payload


if __name__ == "__main__":
    main()
