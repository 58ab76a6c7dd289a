"""onnxruntime sessions: their options and how a graph file is opened.

:class:`~brainrt.bundle.load.Bundle` opens every graph through :func:`open_session` (with the
execution providers :func:`brainrt.bundle.load.providers` chose for its device) and keeps one
session per graph file.
"""

from __future__ import annotations

import functools
import re

from ..errors import file_error


def session_options(threads=None):
    """Session options: ``threads`` intra-op threads (None: onnxruntime's default, all cores), quiet logs,
    and no memory pattern: with it, onnxruntime plans one block for all of a run's intermediate tensors
    on top of its arena, which doubled the memory a dense tile takes (measured on a stride-1 tile of
    the shipped bundle: arena growth 800 -> 432 MB fp32, 214 -> 125 MB int8, same speed; the arena
    itself stays on, without it a tile ran 10-20% slower)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = int(threads)
    opts.log_severity_level = 3
    opts.enable_mem_pattern = False
    return opts


def open_session(path, opts, chosen, *, owner=None):
    """The inference session of the graph file ``path``; a graph that cannot be loaded is the one-line
    error naming ``owner`` (the bundle folder)."""
    import onnxruntime as ort

    try:
        return ort.InferenceSession(str(path), opts, providers=list(chosen))
    except Exception as exc:
        raise file_error(owner or path, f"cannot load the ONNX graph ({type(exc).__name__})") from None


@functools.lru_cache(maxsize=1)
def cpu_has_vnni() -> bool:
    """Whether this CPU has the int8 dot-product instructions (x86 AVX-512 VNNI or AVX-VNNI) with which
    onnxruntime's int8 kernels cannot saturate (Linux: /proc/cpuinfo; elsewhere False)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return bool(re.search(r"\b(avx512_vnni|avx_vnni)\b", flags))
