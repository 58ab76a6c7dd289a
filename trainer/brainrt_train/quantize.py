"""Int8 copies of a bundle's feature graphs, and how closely they agree with fp32.

onnxruntime's own static quantization (``onnxruntime.quantization``: its pre-processing,
calibrators and ``quantize_static``), QDQ format: per-channel signed 8-bit weights,
unsigned 8-bit activations (the VNNI-friendly choice on x86, without ``reduce_range``).
Activation ranges come from one calibration of the **per-patch** graph on normalized
training footprints; every dense graph whose layers line up with the per-patch graph's
(the plain network: conv / relu / pool, then FC1 as a dilated 5x5 convolution) gets the
*same* ranges for its corresponding tensors, so a dense int8 graph rounds every
activation exactly as the per-patch int8 graph does, and their features are equal. A
dense graph whose layers do not line up (the context branch splits FC1 in two) is
calibrated on its own, on the same footprints cropped to its dense window.

The calibration method (MinMax, Entropy, Percentile) is chosen by measured agreement
with fp32 on held-out footprints: label agreement through the bundle's default head
first, then the 1st percentile of the feature cosine similarity.

int8 weights are a quarter of the fp32 ones; they live once, in their own shared
``weights_int8.bin`` (FC1 quantized per output channel has the same bytes in the
per-patch and the dense graphs), so the int8 copies add about 3.5 MB to a bundle.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np

log = logging.getLogger("brainrt.train")

#: Calibration methods tried, by name (onnxruntime's ``CalibrationMethod`` members).
METHODS = ("minmax", "entropy", "percentile")
INT8_WEIGHTS = "weights_int8.bin"
#: Node types that carry no arithmetic of their own (skipped when lining graphs up).
_PLUMBING = {"Constant", "Slice", "Flatten", "Reshape", "Shape", "Gather", "Unsqueeze", "Squeeze", "Identity",
             "Concat"}
_LINEAR = {"Conv", "Gemm", "MatMul"}


def int8_name(name: str) -> str:
    """File name of the int8 copy of a graph: ``features_dense_s1.onnx`` -> ``features_dense_s1.int8.onnx``."""
    stem = name[: -len(".onnx")] if name.endswith(".onnx") else name
    return f"{stem}.int8.onnx"


def _method(name):
    from onnxruntime.quantization import CalibrationMethod

    return {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile}[name]


def _reader(input_name, x, batch):
    """A ``CalibrationDataReader`` over ``x`` in batches (batch 1 for the dense graphs' fixed batch axis)."""
    from onnxruntime.quantization import CalibrationDataReader

    class _Batches(CalibrationDataReader):
        def __init__(self):
            self._it = iter(range(0, len(x), batch))

        def get_next(self):
            i = next(self._it, None)
            return None if i is None else {input_name: np.ascontiguousarray(x[i : i + batch])}

    return _Batches()


def calibrate(path, x, *, method="minmax", batch=32):
    """Activation ranges of the graph at ``path`` over inputs ``x``: ``{tensor: (lo, hi)}`` float32.

    The histogram methods (which keep every activation of what they are fed, and need
    equal shapes within one feed) get one batch per feed; their histograms merge
    across feeds. onnxruntime's calibrators print their progress; it is silenced.
    """
    import onnxruntime as ort
    from onnxruntime.quantization import create_calibrator

    name = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_inputs()[0].name
    with tempfile.TemporaryDirectory(prefix="brainrt-calib-") as tmp, contextlib.redirect_stdout(io.StringIO()):
        cal = create_calibrator(Path(path), augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                                calibrate_method=_method(method), extra_options={"symmetric": False})
        if method == "minmax":
            cal.collect_data(_reader(name, x, batch))
        else:
            for i in range(0, len(x), batch):
                cal.collect_data(_reader(name, x[i : i + batch], batch))
        ranges = cal.compute_data()
        del cal
    return {k: (np.float32(v.range_value[0]), np.float32(v.range_value[1])) for k, v in ranges.items()}


def _layers(model):
    """``(input of the first arithmetic node, [(kind, output), ...])`` in graph order."""
    nodes = [n for n in model.graph.node if n.op_type not in _PLUMBING]
    seq = [("linear" if n.op_type in _LINEAR else n.op_type, n.output[0]) for n in nodes]
    return (nodes[0].input[0] if nodes else None), seq


def transfer_ranges(ranges, src_model, dst_model):
    """The per-patch graph's ``ranges`` renamed onto ``dst_model``'s tensors, or None if the layers differ.

    Two graphs line up when their arithmetic nodes (plumbing such as Slice and Flatten
    skipped, Gemm counted as a convolution) have the same kinds in the same order; then
    the k-th node's output has the same values (at the positions both compute), and so
    gets the same range. The dense graph's input takes the range of what the per-patch
    graph's first convolution reads.
    """
    src_in, src = _layers(src_model)
    dst_in, dst = _layers(dst_model)
    if [k for k, _ in src] != [k for k, _ in dst]:
        return None
    names = {dst_in: src_in, **{d: s for (_, s), (_, d) in zip(src, dst)}}
    names[dst_model.graph.input[0].name] = src_in
    if any(s not in ranges for s in names.values()):
        return None
    return {d: ranges[s] for d, s in names.items()}


def preprocess(src, dst):
    """onnxruntime's pre-processing for quantization (shape inference, graph optimizations) of ``src`` into ``dst``.

    Among the optimizations, a convolution followed by the addition of a constant bias
    becomes one convolution with that bias (the dense graphs add FC1's bias
    separately), so the dense graphs' layers line up with the per-patch graph's.
    """
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(onnx.load(str(src)), str(dst), skip_symbolic_shape=True)
    return Path(dst)


def quantize_graph(src, dst, ranges, *, method="minmax"):
    """Write the int8 QDQ copy of the (pre-processed) graph at ``src`` to ``dst`` with activation ``ranges``.

    Per-channel s8 weights, u8 activations, no ``reduce_range`` (VNNI accumulates 8-bit
    products without saturation). Calibration itself is skipped: the ranges are handed
    to ``quantize_static`` as its calibration cache.
    """
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import TensorData, TensorsData, save_tensors_data

    model = onnx.load(str(src))  # with its external weights
    with tempfile.TemporaryDirectory(prefix="brainrt-quant-") as tmp:
        cache = Path(tmp) / "ranges.json"
        data = {k: TensorData(lowest=np.float32(lo), highest=np.float32(hi)) for k, (lo, hi) in ranges.items()}
        save_tensors_data(TensorsData(_method(method), data), cache)
        quantize_static(model, str(dst), calibration_data_reader=None, quant_format=QuantFormat.QDQ,
                        per_channel=True, reduce_range=False, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=_method(method), calibration_cache_path=cache)


def _dense_inputs(x, window, offset):
    """Footprints cropped to the dense window: inputs on which a dense graph has one output."""
    return np.ascontiguousarray(x[:, :, offset : offset + window, offset : offset + window])


def quantize_graphs(folder, out, x_calib, *, method="minmax", patch_file="features.onnx", dense=None, ranges=None):
    """int8 copies of a bundle's graphs, written to ``out``; returns ``{fp32 name: int8 name}`` and how each was calibrated.

    ``folder`` holds the fp32 graphs (and their ``weights.bin``); ``x_calib`` are
    normalized footprints ``(N, 1, F, F)``; ``dense`` is the manifest's dense entry
    (``files``, ``window``, ``offset``) or None; ``ranges`` the (pre-processed)
    per-patch graph's calibration with ``method`` on ``x_calib`` if already made. The
    int8 weights are shared in ``out / weights_int8.bin``.
    """
    import onnx

    from .export import share_weights

    folder, out = Path(folder), Path(out)
    files, how = {patch_file: int8_name(patch_file)}, {patch_file: "calibrated"}
    with tempfile.TemporaryDirectory(prefix="brainrt-pre-") as tmp:
        src = preprocess(folder / patch_file, Path(tmp) / patch_file)
        if ranges is None:
            ranges = calibrate(src, x_calib, method=method)
        src_model = onnx.load(str(src), load_external_data=False)
        quantize_graph(src, out / files[patch_file], ranges, method=method)
        for name in (dense or {}).get("files", {}).values():
            pre = preprocess(folder / name, Path(tmp) / name)
            own = transfer_ranges(ranges, src_model, onnx.load(str(pre), load_external_data=False))
            if own is None:  # layers differ (context branch): calibrate this graph on the same footprints
                own = calibrate(pre, _dense_inputs(x_calib, dense["window"], dense.get("offset", 0)),
                                method=method, batch=1)
                how[name] = "calibrated"
            else:
                how[name] = f"ranges of {patch_file}"
            files[name] = int8_name(name)
            quantize_graph(pre, out / files[name], own, method=method)
    for f in files.values():
        _raw_initializers(out / f)
    share_weights([out / f for f in files.values()], out, location=INT8_WEIGHTS)
    return files, how


def _raw_initializers(path):
    """Re-encode every initializer as ``raw_data`` (int8 zero points come as ``int32_data``)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    for t in model.graph.initializer:
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t), t.name))
    onnx.save_model(model, str(path))


def run_graph(path, x, *, batch=64, threads=0):
    """Outputs of a per-patch graph on ``x`` (N, 1, F, F), batched."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i : i + batch]})[0] for i in range(0, len(x), batch)])


def cosine_rows(a, b):
    """Cosine similarity of matching rows (1 where both rows are zero, 0 where only one is)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    na, nb = np.linalg.norm(a, axis=-1), np.linalg.norm(b, axis=-1)
    dot = (a * b).sum(-1)
    both0 = (na == 0) & (nb == 0)
    return np.where(both0, 1.0, dot / np.maximum(na * nb, 1e-30))


def agreement(f32, f8, *, head=None):
    """How closely int8 features ``f8`` follow fp32 features ``f32`` (rows = positions).

    Returns ``cosine_median``, ``cosine_p1`` (1st percentile), ``max_abs_diff`` and,
    given a ``head`` with ``predict``, ``label_agreement`` (fraction of equal labels).
    """
    f32, f8 = np.asarray(f32).reshape(-1, np.shape(f32)[-1]), np.asarray(f8).reshape(-1, np.shape(f8)[-1])
    cos = cosine_rows(f32, f8)
    out = {"n": int(len(cos)), "cosine_median": float(np.median(cos)), "cosine_p1": float(np.percentile(cos, 1)),
           "max_abs_diff": float(np.abs(f32 - f8).max())}
    if head is not None:
        out["label_agreement"] = float((head.predict(f32) == head.predict(f8)).mean())
    return out


def _score(a):
    return (a.get("label_agreement", 1.0), a["cosine_p1"], a["cosine_median"])


def choose_method(folder, x_calib, x_check, *, head=None, methods=METHODS, patch_file="features.onnx"):
    """Calibrate the per-patch graph with each of ``methods``; return ``(best, {method: agreement}, {method: ranges})``.

    Agreement is measured on held-out footprints ``x_check``: label agreement through
    ``head`` first, then the 1st-percentile cosine similarity, then the median.
    """
    folder = Path(folder)
    f32 = run_graph(folder / patch_file, x_check)
    report, ranges = {}, {}
    with tempfile.TemporaryDirectory(prefix="brainrt-choose-") as tmp:
        src = preprocess(folder / patch_file, Path(tmp) / patch_file)
        for m in methods:
            ranges[m] = calibrate(src, x_calib, method=m)
            dst = Path(tmp) / f"{m}.onnx"
            quantize_graph(src, dst, ranges[m], method=m)
            report[m] = agreement(f32, run_graph(dst, x_check), head=head)
            log.info("int8 calibration %s: %s", m, report[m])
    best = max(report, key=lambda m: _score(report[m]))
    return best, report, ranges


def quantize_bundle_graphs(folder, x_calib, x_check, *, head=None, dense=None, methods=METHODS,
                           patch_file="features.onnx", calibration_set="training footprints"):
    """Choose the method, write the int8 graphs into ``folder`` and return the manifest entry.

    ``folder`` is a bundle folder being built (its fp32 graphs and ``weights.bin`` in
    place); the int8 graphs and ``weights_int8.bin`` are added to it. The entry records
    the files, the quantization scheme, the calibration set and method, and the
    agreement with fp32 of the per-patch graph on ``x_check`` for every method tried.
    """
    import onnxruntime as ort

    folder = Path(folder)
    best, report, ranges = choose_method(folder, x_calib, x_check, head=head, methods=methods, patch_file=patch_file)
    with tempfile.TemporaryDirectory(prefix="brainrt-int8-", dir=folder.parent) as tmp:
        files, how = quantize_graphs(folder, Path(tmp), x_calib, method=best, patch_file=patch_file, dense=dense,
                                     ranges=ranges[best])
        for f in list(files.values()) + [INT8_WEIGHTS]:
            shutil.move(str(Path(tmp) / f), str(folder / f))
    dense_files = {s: files[n] for s, n in (dense or {}).get("files", {}).items()}
    return {
        "file": files[patch_file], "dense_files": dense_files, "weights": INT8_WEIGHTS,
        "format": "QDQ", "weights_type": "int8, symmetric, per output channel", "activations_type": "uint8, per tensor",
        "reduce_range": False, "tool": f"onnxruntime.quantization.quantize_static (onnxruntime {ort.__version__})",
        "calibration": {"set": calibration_set, "n": int(len(x_calib)), "method": best,
                        "ranges": how, "check_set_n": int(len(x_check))},
        "agreement": report[best], "agreement_by_method": report,
    }


def sample_footprints(image, *, footprint, n, normalization, seed=0, mask=None, min_fraction=0.9):
    """``n`` normalized footprints ``(n, 1, F, F)`` float32 of tissue (or of ``mask`` > 0) at random centres.

    Tissue is a pixel above the image's Otsu threshold; a centre is taken when at least
    ``min_fraction`` of the central 32 x 32 px is tissue. Centres keep the whole
    footprint inside the image. ``normalization`` is the manifest's entry
    (``(pixel * scale - mean) / std``).
    """
    image = np.asarray(image)
    H, W = image.shape
    a = footprint // 2
    if H < footprint or W < footprint:
        raise ValueError(f"image of {H} x {W} px is smaller than one {footprint} px footprint")
    if mask is None:
        hist = np.bincount(image.ravel().astype(np.int64) if image.dtype.kind == "u" else
                           np.clip(image.ravel() * 255, 0, 255).astype(np.int64), minlength=256).astype(np.float64)
        w = np.cumsum(hist)
        mu = np.cumsum(hist * np.arange(len(hist)))
        between = (mu[-1] * w - mu * w[-1]) ** 2 / np.maximum(w * (w[-1] - w), 1)
        t = int(np.argmax(between))
        mask = (image if image.dtype.kind == "u" else image * 255) > t
    mask = np.asarray(mask) > 0
    rng = np.random.default_rng(seed)
    cys = rng.integers(a, H - footprint + a + 1, size=50 * n)
    cxs = rng.integers(a, W - footprint + a + 1, size=50 * n)
    keep = [(cy, cx) for cy, cx in zip(cys, cxs) if mask[cy - 16 : cy + 16, cx - 16 : cx + 16].mean() >= min_fraction]
    if len(keep) < n:
        raise ValueError(f"found only {len(keep)} tissue positions for {n} calibration footprints")
    out = np.empty((n, 1, footprint, footprint), np.float32)
    s, m, sd = normalization["scale"], normalization["mean"], normalization["std"]
    for i, (cy, cx) in enumerate(keep[:n]):
        out[i, 0] = (image[cy - a : cy - a + footprint, cx - a : cx - a + footprint] * s - m) / sd
    return out


def training_footprints(slices, patches, *, footprint, normalization, n, seed=0):
    """Normalized footprints ``(m, 1, F, F)`` float32 of up to ``n`` of ``patches`` (a PatchSet), drawn at random.

    Same centres as the training patches; footprint pixels past the image edge are
    mirrored as the runtime mirrors them (a context footprint is wider than the patch).
    """
    from .data import reflect_pad

    rng = np.random.default_rng(seed)
    take = np.sort(rng.choice(len(patches), size=min(n, len(patches)), replace=False))
    a = footprint // 2
    padded, out = {}, np.empty((len(take), 1, footprint, footprint), np.float32)
    s, m, sd = normalization["scale"], normalization["mean"], normalization["std"]
    for i, t in enumerate(take):
        k, (cy, cx) = int(patches.slice_idx[t]), patches.centres[t]
        if k not in padded:
            padded[k] = reflect_pad(slices[k].image, a)
        out[i, 0] = (padded[k][cy : cy + footprint, cx : cx + footprint] * s - m) / sd  # rows (cy - a) + a ..
    return out
