"""tools/peak.py: the reference peak of the dense benchmark (small matrices here: the mechanism, not the speed)."""

from __future__ import annotations

import os

import pytest

pytest.importorskip("onnx")
pytest.importorskip("threadpoolctl")

from tools import peak  # noqa: E402


def test_the_child_loses_only_the_openblas_handicaps():
    env = {"OPENBLAS_CORETYPE": "Haswell", "OPENBLAS_L2_SIZE": "1048576", "OPENBLAS_NUM_THREADS": "2", "PATH": "/bin"}
    assert peak.child_env(env) == {"OPENBLAS_NUM_THREADS": "2", "PATH": "/bin"}


def test_peaks_take_the_best_candidate_and_say_what_ran_it():
    before = {k: os.environ.get(k) for k in peak.OPENBLAS_HANDICAPS}
    res = peak.peaks(threads=1, n=128, repeats=1)
    assert {k: os.environ.get(k) for k in peak.OPENBLAS_HANDICAPS} == before  # this process keeps its environment
    fp32, int8 = res["fp32"], res["int8"]
    assert [c["how"].split()[0] for c in fp32["candidates"]] == ["onnxruntime", "numpy"]
    assert "MatMul (float32)" in fp32["candidates"][0]["how"] and "kernel" in fp32["candidates"][1]["how"]
    assert fp32["peak"] == max(c["rate"] for c in fp32["candidates"]) > 0
    assert "MatMulInteger" in int8["how"] and int8["peak"] > 0


def test_median_peaks_take_each_candidates_median_then_the_best():
    def run(a, b, c):
        return {"fp32": {"candidates": [{"rate": a, "how": "ort"}, {"rate": b, "how": "numpy"}]},
                "int8": {"candidates": [{"rate": c, "how": "ort int8"}]}}

    got = peak.median_peaks([run(1.0, 5.0, 7.0), run(3.0, 1.0, 9.0), run(9.0, 2.0, 8.0)])
    assert [c["rate"] for c in got["fp32"]["candidates"]] == [3.0, 2.0]
    assert (got["fp32"]["peak"], got["fp32"]["how"]) == (3.0, "ort") and got["int8"]["peak"] == 8.0


def test_the_whole_slice_child_reports_its_own_peak_rss_not_its_parents(monkeypatch):
    """tools/bench_dense.py --whole-slice measures ``brainrt classify`` in a child process. Its peak RSS was
    ``ru_maxrss``, which Linux carries over from the parent across fork and exec: with the benchmark holding
    1.8 GB by then, a 1.02 GB run printed 1.81 GB. VmHWM is the child's own."""
    import subprocess
    import sys
    from pathlib import Path

    import numpy as np

    if not Path("/proc/self/status").exists():
        pytest.skip("VmHWM is Linux's")
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "tools"))  # as the script runs
    import bench_dense

    held = np.ones(400 * 2**20, np.uint8)  # this process: 400 MB resident
    inherited = "__import__('resource').getrusage(__import__('resource').RUSAGE_SELF).ru_maxrss * 1024"
    child = {}
    for name, expr in (("own", bench_dense.OWN_PEAK_RSS), ("inherited", inherited)):
        out = subprocess.run([sys.executable, "-c", f"print({expr})"], check=True, capture_output=True, text=True)
        child[name] = int(out.stdout)
    assert held.sum() == held.size
    assert child["inherited"] > 400 * 2**20  # what the benchmark printed: the parent's size
    assert child["own"] < 100 * 2**20, child  # a bare interpreter


def test_process_scaling_runs_the_children_together_and_takes_the_median(monkeypatch):
    """The ceiling of a 1 -> 2 worker speed-up: the children of a round start from one common time (so
    they overlap) and the ratio is the median round's aggregate rate over one process alone."""
    import json
    import time

    starts, rates = [], iter([10.0, 9.0, 9.0, 10.0, 8.0, 8.0, 10.0, 10.0, 10.0])  # rounds: 1.8, 1.6, 2.0

    class Child:
        def __init__(self, argv, **_):
            starts.append(float(argv[4]))
            assert float(argv[4]) > time.time()  # a start still to come

        def communicate(self):
            return json.dumps(next(rates)) + "\n", None

    monkeypatch.setattr(peak.subprocess, "Popen", Child)
    got = peak.process_scaling(procs=2, rounds=3)
    assert got["rounds"] == pytest.approx([1.8, 1.6, 2.0]) and got["ratio"] == pytest.approx(1.8)
    assert len(starts) == 9 and len(set(starts[1:3])) == 1  # the 2 children of a round share their start


def test_process_scaling_measures_for_real():
    got = peak.process_scaling(procs=2, n=128, repeats=2, rounds=1)
    assert len(got["rounds"]) == 1 and got["ratio"] > 0
