"""The design §8 quality bars, measured against same-run baselines: `python -m tests.benchmarks`.

Not part of the pytest run (modules are named ``bench_*``); `tests/test_benchmarks_smoke.py`
runs the cheap ones with ``--quick`` so the runner cannot rot. See docs/benchmarks.md.
"""
