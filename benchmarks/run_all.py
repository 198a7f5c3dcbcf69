"""Run every benchmark (each in its own process), then regenerate docs/benchmarks.md.

``python -m benchmarks.run_all --quick --out-dir /tmp/bench`` is the smoke run (about a
minute on a 2-core CPU); without ``--quick`` it produces the committed results (tens of
minutes on a 2-core CPU). ``--no-table`` skips the docs page.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

from benchmarks import _common

BENCHMARKS = ("overhead", "grid_cache", "pneumoniamnist", "throughput", "memory",
              "scale_out", "robustness", "input_pipeline", "cpu_speed", "cpu_layout",
              "cpu_predict_batch", "cpu_threads", "cpu_malloc")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out-dir", default=str(_common.RESULTS_DIR))
    p.add_argument("--only", nargs="+", choices=BENCHMARKS, default=None)
    p.add_argument("--no-table", action="store_true")
    args = p.parse_args(argv)
    for name in args.only or BENCHMARKS:
        cmd = [sys.executable, "-m", f"benchmarks.{name}", "--out-dir", args.out_dir]
        if args.quick:
            cmd.append("--quick")
        print(f"== {name}", flush=True)
        with _common.Timer() as t:
            subprocess.run(cmd, check=True, cwd=_common.ROOT)
        print(f"== {name}: {t.seconds:.1f} s", flush=True)
    if not args.no_table:
        from benchmarks import make_table

        make_table.main(["--results", args.out_dir]
                        + ([] if args.out_dir == str(_common.RESULTS_DIR)
                           else ["--out", f"{args.out_dir}/benchmarks.md"]))


if __name__ == "__main__":
    main()
