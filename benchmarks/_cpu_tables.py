"""The CPU sections of ``docs/benchmarks.md`` (``cpu_speed``, ``cpu_layout``,
``cpu_threads``, ``cpu_malloc``), rendered by :mod:`benchmarks.make_table`."""

from __future__ import annotations


def _helpers():
    from benchmarks import make_table

    return make_table._table, make_table._f, make_table._provenance


def _kfaults(faults):
    """Median page faults, in thousands."""
    from benchmarks import _common

    return f"{_common.median(faults) / 1000:.0f}k" if faults else "—"


def cpu_speed_section(r, title="## CPU speed: the estimator before, now, and the best "
                                "plain torch loop\n"):
    _table, _f, _provenance = _helpers()
    c = r["config"]
    from benchmarks.cpu_speed import ratio_ci

    ratio, speedup = r["ratio_to_best_loop"], r["speedup_vs_before"]
    # recomputed from the per-repetition seconds (files written before the key existed)
    ci = {f"{key}/{mode}": ratio_ci(r["seconds"][key], mode)
          for key in r["rows"] for mode in ("fit", "predict")}
    body = []
    for key, row in r["rows"].items():
        rate = row["images_per_s"]
        for mode in ("fit", "predict"):
            k = f"{key}/{mode}"
            body.append([key, mode, _f(rate.get(f"before/{mode}"), 1),
                         _f(rate[f"now/{mode}"], 1), _f(rate[f"loop/{mode}"], 1),
                         _f(rate.get(f"loop_folded/{mode}"), 1),
                         _f(ratio[k], 3) + (f" [{ci[k][0]:.2f}, {ci[k][1]:.2f}]"
                                            if ci[k] else ""),
                         _f(speedup.get(k), 2),
                         " / ".join(_kfaults(row.get("page_faults", {}).get(f"{impl}/{mode}"))
                                    for impl in ("now", "loop"))])
    worst = min(ratio.values())
    goal_rows = [k for k in ("simple_cnn@64/predict", "deep_cnn@64/predict") if k in speedup]
    goal2 = " and ".join(f"{k} {speedup[k]:.2f}×" for k in goal_rows)
    verdict2 = ("not measured in this run" if not goal_rows else
                "met" if all(speedup[k] >= 1.5 for k in goal_rows) else "**not met**")
    layout = "channels_last" + (", bf16 autocast" if any(
        row.get("amp") for row in r["rows"].values()) else ", float32")
    pbs = sorted({row.get("predict_batch_size") or 32 for row in r["rows"].values()})
    return "\n".join([
        title,
        f"One epoch (fit, model construction included) and one `predict_proba` on synthetic "
        f"1-channel images, batch {c['batch_size']}, Adam; `before` = `CXRClassifier` of "
        f"commit {c['before_ref']} (contiguous float32, skorch's prediction loop), `now` = "
        f"this version with its defaults ({layout} here, predict batch "
        f"{'/'.join(map(str, pbs))}" + (" by row" if len(pbs) > 1 else "") + "), `loop` = a "
        "hand-written loop on the same model with the same layout, precision and batch "
        "sizes (`inference_mode` for prediction), `loop folded` = that loop predicting "
        "on a copy with BatchNorm folded into the convolutions (torch.fx `fuse`, the fold "
        "timed; only for models with BatchNorm), as the estimator does at the first "
        f"prediction after a fit. Medians of {c['reps']} alternating repetitions in "
        f"worker processes with {c['torch_threads']} torch threads; the ratios are "
        "medians of the per-repetition ratios to the best loop (for prediction, whichever "
        "of `loop` and `loop folded` has the higher median), in brackets a "
        "distribution-free 95 % interval of that median (order statistics of the "
        "per-repetition ratios; none below 6 repetitions).\n",
        _table(["backbone@size", "mode", "before img/s", "now img/s", "loop img/s",
                "loop folded img/s", "now ÷ best loop [95 % CI]", "now ÷ before",
                "page faults now / loop"], body),
        "Page faults: minor page faults of one timed run (median over the repetitions; "
        "glibc malloc returning freed memory to the kernel and faulting it back in, see "
        "docs/design.md). glibc malloc settings of the workers: "
        + (", ".join(f"`{k}={v}`" for k, v in c["malloc_env"].items() if v) or "the defaults")
        + ".\n",
        f"Goals: now ÷ best loop ≥ 0.95 on every row — lowest {worst:.2f}, "
        + ("**not met**" if worst < 0.95 else "met on the rows measured"
           if _rows_note(r) else "met")
        + _ci_note(ratio, ci)
        + "; predict ≥ 1.5× before for simple_cnn and deep_cnn at 64 px — "
        + (f"{goal2}, " if goal2 else "") + verdict2 + "."
        + _rows_note(r) + "\n",
        *_fold_lines(r),
        *_compiled_lines(r),
        _provenance(r)])


def _ci_note(ratio, ci):
    """Which rows below the goal could be at it, as far as the repetitions can tell."""
    low = [k for k, v in ratio.items() if v < 0.95]
    if not low or any(ci[k] is None for k in low):
        return ""
    within = [k for k in low if ci[k][1] >= 0.95]
    if len(within) == len(low):
        return (" (the 95 % interval of every row below 0.95 reaches above it: this "
                "run cannot tell those rows from the goal)")
    return (" (" + ", ".join(k for k in low if k not in within)
            + ": below 0.95 beyond the 95 % interval)")


def _fold_lines(r):
    folds = [f"{key} {row['fold_s']:.3f} s" for key, row in r["rows"].items()
             if row.get("folds")]
    if not folds:
        return []
    return ["The BatchNorm fold alone (made once, by the first prediction after a fit or "
            "a load; median of 3): " + ", ".join(folds) + ".\n"]


def _rows_note(r):
    from benchmarks.cpu_speed import ROWS

    run = {f"{b}@{s}" for b, s, *_ in r["config"]["rows"]}
    missing = [f"{b}@{s}" for b, s, *_ in ROWS if f"{b}@{s}" not in run]
    if not missing:
        return ""
    return (f" This run measured {len(run)} of the benchmark's {len(ROWS)} rows; not "
            f"measured: {', '.join(missing)} (the goals are for every row).")


def _compiled_lines(r):
    """``compile=True`` against the default estimator, when the run measured it."""
    if "compiled_vs_now" not in r:
        return []
    lines = ["`compile=True` (torch.compile, inductor) ÷ default estimator, steady state "
             "(each timed fit builds and compiles a new model; the first fit's seconds, "
             "compilation included, in parentheses):\n"]
    for k, v in r["compiled_vs_now"].items():
        key, mode = k.rsplit("/", 1)
        first = r["rows"][key].get("compile_warmup_s", {}).get(mode)
        lines.append(f"- {k}: {v:.2f}×" + (f" (first {mode}: {first:.1f} s)" if first else ""))
    return ["\n".join(lines) + "\n"]


def cpu_layout_section(r):
    _table, _f, _provenance = _helpers()
    c = r["config"]
    body = [[f"{x['backbone']}@{x['size']}", x["mode"], x["variant"],
             _f(x["images_per_s"], 1), _f(x["ratio_min"], 2), _f(x["ratio_median"], 2)]
            for x in r["rows"]]
    return "\n".join([
        "## CPU layout and precision per backbone family\n",
        f"One training step and one prediction batch of {c['batch_size']} images per "
        f"variant, alternating, {c['reps']} repetitions, {c['torch_threads']} torch threads; "
        "× = speed relative to contiguous float32 from the fastest step of each (and from "
        "the medians). What `cxr_estimators._runtime.CPU_POLICY` follows "
        "(docs/design.md).\n",
        _table(["backbone@size", "mode", "variant", "img/s (fastest)", "× fastest",
                "× median"], body),
        _provenance(r)])


def cpu_predict_batch_section(r):
    _table, _f, _provenance = _helpers()
    c = r["config"]
    sizes = [str(b) for b in c["batch_sizes"]]
    body = [[f"{x['backbone']}@{x['size']}", "bf16" if x["amp"] else "float32",
             *[_f(x["relative_to_best"][b], 2) + (f" ({x['page_faults'][b] / 1000:.0f}k)"
                                                   if x["page_faults"][b] >= 1000 else "")
               for b in sizes],
             f"{x['default_batch_size']}: {_f(x['default_relative_to_best'], 2)}",
             f"{x['previous_rule_batch_size']}: "
             f"{_f(x['previous_rule_relative_to_best'], 2)}"] for x in r["rows"]]
    return "\n".join([
        "## CPU prediction batch size\n",
        f"`predict_proba` of a fitted estimator at each `predict_batch_size`, medians of "
        f"{c['reps']} repetitions in rotating order, {c['torch_threads']} torch threads, "
        "each row in a fresh process; speed relative to the fastest batch size of the row, "
        "in parentheses the minor page faults of one call where there are 1,000 or more "
        "(memory glibc gave back to the kernel and faults in again). \"default\": what "
        "`predict_batch_size=None` picks now (`_runtime.cpu_predict_batch_size`); "
        "\"32/thread\": the rule before, for every backbone.\n",
        _table(["backbone@size", "precision", *sizes, "default", "32/thread"], body),
        _provenance(r)])


def cpu_threads_section(r):
    _table, _f, _provenance = _helpers()
    c = r["config"]
    body = [[k, _f(r["median_s"][k], 2), _f(r["speedup_vs_n_jobs_1"][k], 2),
             ", ".join(map(str, r["threads_inside"][k]))] for k in r["median_s"]]
    return "\n".join([
        "## Threads of fits in `GridSearchCV`\n",
        f"`GridSearchCV` over {c['candidates']} candidates × {c['folds']} folds + refit, "
        f"{c['backbone']} at {c['size']} px, {c['n']} images, {c['epochs']} epochs, on "
        f"{c['cpu_count']} cores; medians of {c['reps']} alternating runs. \"torch "
        "threads inside\": `torch.get_num_threads()` in two tasks running at once.\n",
        _table(["configuration", "median s", "× vs n_jobs=1", "torch threads inside"],
               body),
        _provenance(r)])


def cpu_malloc_section(r):
    _table, _f, _provenance = _helpers()
    c = r["config"]
    body = []
    for k, rates in r["images_per_s"].items():
        faults = r["page_faults"][k]
        body.append([k, _f(rates["default"], 1), _f(rates["tuned"], 1),
                     _f(r["speedup_tuned"][k], 2), _kfaults(faults["default"]),
                     _kfaults(faults["tuned"])])
    return "\n".join([
        "## CPU: glibc malloc's defaults vs `cxr_estimators.tune_cpu_malloc()`\n",
        "The estimator with its defaults (one epoch, then `predict_proba`) in two worker "
        "processes taking turns, one of which called `tune_cpu_malloc()` first; "
        f"{c['reps']} repetitions, {c['torch_threads']} torch threads, medians; tuned ÷ "
        "default is the median of the per-repetition ratios; page faults are the minor "
        "faults of one timed run (median).\n",
        _table(["row", "default img/s", "tuned img/s", "tuned ÷ default",
                "page faults default", "page faults tuned"], body),
        _provenance(r)])
