"""The machine's real peak for the dense benchmark: fp32 and int8 matrix products of large
matrices, measured two ways that nothing in the environment can handicap.

- fp32: onnxruntime's own ``MatMul`` of two ``n x n`` float32 matrices at the benchmark's
  thread count, and numpy's sgemm in a child process started without ``OPENBLAS_CORETYPE``
  and ``OPENBLAS_L2_SIZE`` (so OpenBLAS picks its kernel for this CPU; the kernel
  threadpoolctl reports is printed). The higher of the two is the peak. The variables are
  removed from the child's environment only: this process, the tests and CI keep theirs.
- int8: onnxruntime's ``MatMulInteger`` (uint8 x int8 -> int32, the arithmetic of the
  bundle's int8 graphs) of two ``n x n`` matrices.

Rates are multiply-adds per second (``n**3`` per product), the median of ``repeats`` runs
after one warm-up. ``python tools/peak.py [--threads N]`` prints them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

#: Environment variables that pick (or size) OpenBLAS's kernels; unset in the peak's child process.
OPENBLAS_HANDICAPS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
N = 2048

_NUMPY_CHILD = """
import json, statistics, sys, time
import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits
n, threads, repeats = (int(v) for v in sys.argv[1:4])
with threadpool_limits(threads):
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    b = a.copy()
    a @ b
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    blas = [i for i in threadpool_info() if i.get("user_api") == "blas"]
print(json.dumps({"rate": n ** 3 / statistics.median(times), "blas": blas}))
"""


def _median_rate(fn, n, repeats):
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return n**3 / statistics.median(times)


def _session(model, threads):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _product_graph(op, n, a_type, b_init, out_type):
    """A one-node graph ``Y = op(A, B)`` with B a constant ``b_init`` (n x n)."""
    from onnx import TensorProto, helper, numpy_helper

    inputs = ["A", "B"] + (["a_zero", "b_zero"] if op == "MatMulInteger" else [])
    inits = [numpy_helper.from_array(b_init, "B")]
    if op == "MatMulInteger":
        inits += [numpy_helper.from_array(np.array(128, np.uint8), "a_zero"),
                  numpy_helper.from_array(np.array(0, np.int8), "b_zero")]
    graph = helper.make_graph([helper.make_node(op, inputs, ["Y"])], f"peak_{op}",
                              [helper.make_tensor_value_info("A", a_type, [n, n])],
                              [helper.make_tensor_value_info("Y", out_type, [n, n])], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def onnxruntime_peak(precision, threads, n=N, repeats=5):
    """Multiply-adds/s of onnxruntime's ``MatMul`` (fp32) or ``MatMulInteger`` (int8: u8 x s8) and what ran it."""
    import onnxruntime as ort
    from onnx import TensorProto

    rng = np.random.default_rng(0)
    if precision == "fp32":
        a = rng.standard_normal((n, n)).astype(np.float32)
        model = _product_graph("MatMul", n, TensorProto.FLOAT, a.copy(), TensorProto.FLOAT)
        op = "MatMul (float32)"
    else:
        a = rng.integers(0, 256, (n, n), dtype=np.uint8)
        model = _product_graph("MatMulInteger", n, TensorProto.UINT8, rng.integers(-127, 128, (n, n), dtype=np.int8),
                               TensorProto.INT32)
        op = "MatMulInteger (uint8 x int8 -> int32)"
    sess = _session(model, threads)
    rate = _median_rate(lambda: sess.run(None, {"A": a}), n, repeats)
    return {"rate": rate, "how": f"onnxruntime {ort.__version__} {op}, {sess.get_providers()[0]}, {threads} threads"}


def child_env(environ):
    """``environ`` without :data:`OPENBLAS_HANDICAPS` (the peak's child process gets this; ours is left alone)."""
    return {k: v for k, v in environ.items() if k not in OPENBLAS_HANDICAPS}


def numpy_peak(threads, n=N, repeats=5):
    """Multiply-adds/s of numpy's sgemm in a child process without :data:`OPENBLAS_HANDICAPS`, and its BLAS."""
    out = subprocess.run([sys.executable, "-c", _NUMPY_CHILD, str(n), str(threads), str(repeats)], env=child_env(os.environ),
                         check=True, capture_output=True, text=True)
    child = json.loads(out.stdout.strip().splitlines()[-1])
    blas = child["blas"][0] if child["blas"] else {}
    kernel = f"{blas.get('internal_api', '?')} {blas.get('version', '')} kernel {blas.get('architecture', '?')}"
    return {"rate": child["rate"], "how": f"numpy {np.__version__} sgemm ({kernel}), {threads} threads, child process "
                                          f"without {' / '.join(OPENBLAS_HANDICAPS)}"}


def inherited_numpy_rate(n=N, repeats=3):
    """numpy's sgemm in this process, under the environment as it is (for reference only: not a peak)."""
    from threadpoolctl import threadpool_info

    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    rate = _median_rate(lambda: a @ a, n, repeats)
    blas = next((i for i in threadpool_info() if i.get("user_api") == "blas"), {})
    set_vars = ", ".join(f"{k}={os.environ[k]}" for k in OPENBLAS_HANDICAPS if k in os.environ) or "neither set"
    return {"rate": rate, "how": f"numpy sgemm in this process, kernel {blas.get('architecture', '?')} ({set_vars})"}


def peaks(threads, n=N, repeats=5):
    """``{"fp32": {...}, "int8": {...}}``: each precision's ``peak`` (multiply-adds/s), ``how`` it was
    reached, and every ``candidate`` measured."""
    fp32 = [onnxruntime_peak("fp32", threads, n, repeats), numpy_peak(threads, n, repeats)]
    int8 = [onnxruntime_peak("int8", threads, n, repeats)]
    out = {}
    for name, cands in (("fp32", fp32), ("int8", int8)):
        best = max(cands, key=lambda c: c["rate"])
        out[name] = {"peak": best["rate"], "how": best["how"], "candidates": cands}
    return out


def median_peaks(runs):
    """Several :func:`peaks` results (e.g. one per benchmark repeat, interleaved with the timed work so both see
    the same load) as one: each candidate's median rate, the peak the best of those medians."""
    out = {}
    for name in runs[0]:
        cands = [dict(c, rate=statistics.median(r[name]["candidates"][i]["rate"] for r in runs))
                 for i, c in enumerate(runs[0][name]["candidates"])]
        best = max(cands, key=lambda c: c["rate"])
        out[name] = {"peak": best["rate"], "how": best["how"], "candidates": cands}
    return out


#: A child of :func:`process_scaling`: one single-thread fp32 product rate, timed from a common start.
_SCALING_CHILD = (
    "import json, sys, time; sys.path.insert(0, sys.argv[1]); from peak import onnxruntime_peak; "
    "onnxruntime_peak('fp32', 1, 256, 1); t0 = float(sys.argv[2]); time.sleep(max(0.0, t0 - time.time())); "
    "print(json.dumps(onnxruntime_peak('fp32', 1, int(sys.argv[3]), int(sys.argv[4]))['rate']))")


def process_scaling(procs=2, n=1536, repeats=12, rounds=3):
    """How much faster ``procs`` processes run the same single-thread fp32 product at once than one alone:
    the ceiling of any ``procs``-worker speed-up on this machine (shared caches, memory, a busy host).

    ``rounds`` alternated rounds (one process, then ``procs`` started together, each timing ``repeats``
    products of ``n x n`` from a common start); returns ``{"ratio": median of the rounds' aggregate rate
    over the single rate, "rounds": [...]}``."""
    here, ratios = os.path.dirname(os.path.abspath(__file__)), []
    for _ in range(rounds):
        rates = {}
        for k in (1, procs):
            t0 = time.time() + 3.0  # every child has imported onnxruntime and warmed up by then
            children = [subprocess.Popen([sys.executable, "-c", _SCALING_CHILD, here, str(t0), str(n), str(repeats)],
                                         stdout=subprocess.PIPE, text=True) for _ in range(k)]
            rates[k] = sum(json.loads(c.communicate()[0].strip().splitlines()[-1]) for c in children)
        ratios.append(rates[procs] / rates[1])
    return {"ratio": statistics.median(ratios), "rounds": ratios}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("-n", type=int, default=N, help="Side of the square matrices.")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    res = peaks(args.threads, args.n, args.repeats)
    ref = inherited_numpy_rate(args.n)
    for name, p in res.items():
        for c in p["candidates"]:
            print(f"{name}: {c['rate'] / 1e9:7.1f} G multiply-adds/s  {c['how']}")
        print(f"{name} peak: {p['peak'] / 1e9:.1f} G multiply-adds/s")
    print(f"reference, not a peak: {ref['rate'] / 1e9:.1f} G multiply-adds/s  {ref['how']}")
    sc = process_scaling()
    print(f"2 processes at once: {sc['ratio']:.2f}x one alone (single-thread fp32 product; rounds "
          f"{', '.join(f'{r:.2f}' for r in sc['rounds'])}): the ceiling of a 1 -> 2 worker speed-up here")


if __name__ == "__main__":
    main()
