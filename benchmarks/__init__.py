"""Benchmark scripts for cxr_estimators; each writes JSON under ``benchmarks/results/``.

Run one with ``python -m benchmarks.<name> [--quick] [--out-dir DIR]``, all with
``python -m benchmarks.run_all [--quick]``; ``python -m benchmarks.make_table`` turns the
JSON files into ``docs/benchmarks.md``.
"""
