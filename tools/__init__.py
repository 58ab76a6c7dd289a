"""Benchmarks, the study reproduction and other tools; run from the repository root
(``python tools/bench_dense.py``, ``python -m tools.study``)."""
