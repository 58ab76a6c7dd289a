"""ONNX export of the feature network, with parity checks against PyTorch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .model import PlainCNN

INPUT_NAME, OUTPUT_NAME = "patches", "features"
OPSET = 17


def export_features(model, path, *, patch_size, n_check=256, seed=0):
    """Export the network truncated at the last hidden layer; check it and return a report.

    The graph takes ``(N, 1, F, F)`` float32 normalized footprints (dynamic N; F = P, or
    the context field for a model with a context branch) and returns ``(N, 64)`` features. ``onnx.checker`` must pass and onnxruntime must match PyTorch
    to 1e-4 on ``n_check`` random patches.
    """
    import onnx
    import onnxruntime as ort

    plain = PlainCNN(model).eval()
    fp = plain.footprint
    n_check = max(8, min(n_check, n_check * 512**2 // fp**2))  # a 2048 px footprint is 16 MB
    dummy = torch.zeros(2, 1, fp, fp)
    torch.onnx.export(plain, dummy, str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                      dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                      opset_version=OPSET, dynamo=False)
    onnx.checker.check_model(onnx.load(str(path)))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_check, 1, fp, fp)).astype(np.float32)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = np.concatenate([sess.run(None, {INPUT_NAME: x[i : i + 8]})[0] for i in range(0, n_check, 8)])
    with torch.no_grad():
        ref_plain = plain(torch.from_numpy(x)).numpy()
        patch, pooled = plain.split(torch.from_numpy(x))
        ref_trained = model.eval().features(torch.cat([patch, *pooled], 1)).numpy()
    diff = float(np.abs(got - ref_plain).max())
    fold = float(np.abs(ref_plain - ref_trained).max())
    if diff > 1e-4 or fold > 1e-4:
        raise RuntimeError(f"ONNX parity failed: onnxruntime vs torch {diff:.2e}, folded vs trained {fold:.2e}")
    return {"max_abs_diff_onnx_vs_torch": diff, "max_abs_diff_folded_vs_trained": fold, "n_checked": n_check,
            "opset": OPSET, "input": INPUT_NAME, "output": OUTPUT_NAME}, plain


DENSE_STRIDES = (1, 2, 4, 8, 16)


def dense_strides(context=0):
    """The dense strides exported for a network with ``context`` scales: those at least a quarter of the widest factor.

    A context field of factor ``k`` pooled at a stride ``s < k`` is evaluated "a trous" at
    ``k / s`` times the dense grid's density over its whole field: for the 2048 px field
    (k = 16) at strides 1 and 2 one onnxruntime convolution's im2col buffer alone would
    exceed 1.4 GB whatever the tile. Those strides take the per-patch path (same features).
    One scale of 4 (the shipped context branch) keeps every stride.
    """
    from .model import context_scales

    scales = context_scales(context)
    kmax = scales[-1] if scales else 1
    return tuple(s for s in DENSE_STRIDES if 4 * s >= kmax)
WEIGHTS_FILE = "weights.bin"
DENSE_INPUT, DENSE_OUTPUT = "tile", "features"


def share_weights(paths, folder, location=WEIGHTS_FILE):
    """Rewrite ONNX files so that equal initializers live once, in one external file.

    Every graph of a bundle carries the same ~13 MB first fully connected layer; storing
    it once keeps the bundle small. onnxruntime resolves the external data relative to
    each model file, so the graphs still load with a plain ``InferenceSession(path)``.
    """
    import onnx
    from onnx import numpy_helper

    models = [onnx.load(str(p)) for p in paths]  # external data read before rewriting it
    table = {}
    with open(folder / location, "wb") as blob:
        for path, model in zip(paths, models):
            for t in model.graph.initializer:
                arr = numpy_helper.to_array(t)
                if arr.size >= 1024:  # small tensors stay inline
                    _externalize(t, np.ascontiguousarray(arr).tobytes(), blob, table, location)
            onnx.save_model(model, str(path))
        offset = blob.tell()
    for path in paths:
        onnx.checker.check_model(str(path))
    return offset


def _externalize(t, raw, blob, table, location):
    """Point the initializer ``t`` (bytes ``raw``) at its copy in ``blob``, written once per distinct
    content (``table``: (sha256, dtype) -> (offset, length)), 64-byte aligned."""
    import hashlib

    import onnx
    from onnx.external_data_helper import set_external_data

    key = (hashlib.sha256(raw).hexdigest(), t.data_type)  # bytes, not shape: FC1 is (1024, 3200) per patch and (1024, 128, 5, 5) dense
    if key not in table:
        blob.write(b"\0" * ((-blob.tell()) % 64))
        table[key] = (blob.tell(), len(raw))
        blob.write(raw)
    off, length = table[key]
    t.ClearField("float_data")
    t.raw_data = raw
    set_external_data(t, location=location, offset=off, length=length)
    t.data_location = onnx.TensorProto.EXTERNAL
    t.ClearField("raw_data")


def _dense_error(sess, plain, x, s, win, off):
    """Max abs difference between the dense graph ``sess`` of stride ``s`` on the tile ``x`` and the per-patch
    network ``plain`` on a 5 x 5 spread of its output positions."""
    fp, tile = plain.footprint, x.shape[-1]
    # footprint pixels outside the dense window are never read: zeros around the tile stand for them
    xp = torch.nn.functional.pad(x, (fp, fp, fp, fp))
    got = sess.run(None, {DENSE_INPUT: x.numpy()})[0][0]  # (F, R, C)
    rows = (tile - win) // s + 1
    if got.shape[1:] != (rows, rows):
        raise RuntimeError(f"dense stride {s}: output {got.shape[1:]} != expected {(rows, rows)}")
    # a 5 x 5 spread of output positions whose whole patch lies inside the tile
    ii = np.unique(np.linspace(0, rows - 1, 5).astype(int))
    sel = [(i, j) for i in ii for j in ii]
    patches = torch.stack([xp[0, :, fp + i * s - off : fp + i * s - off + fp, fp + j * s - off : fp + j * s - off + fp]
                           for i, j in sel])
    with torch.no_grad():
        ref = plain(patches).numpy()
    return max(float(np.abs(got[:, i, j] - ref[k]).max()) for k, (i, j) in enumerate(sel))


def export_dense(plain, folder, *, patch_size, tile=None, seed=0):
    """Export the fully convolutional graphs (one per dense stride) and check exactness.

    For each stride, features at every output position must equal the per-patch graph's
    features of the same window to 1e-4 on a random tile. Returns the manifest entry.
    """
    import onnxruntime as ort

    from .model import DenseCNN, dense_geometry

    folder = Path(folder)
    win, off = dense_geometry(plain.patch_size, plain.context)
    tile = tile or win + 138
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.standard_normal((1, 1, tile, tile)).astype(np.float32))
    files, checks = {}, {}
    strides = dense_strides(plain.context)
    for s in strides:
        dense = DenseCNN(plain, stride=s).eval()
        name = f"features_dense_s{s}.onnx"
        torch.onnx.export(dense, torch.zeros(1, 1, win + 2 * s, win + 2 * s), str(folder / name),
                          input_names=[DENSE_INPUT], output_names=[DENSE_OUTPUT],
                          dynamic_axes={DENSE_INPUT: {2: "height", 3: "width"}, DENSE_OUTPUT: {2: "rows", 3: "cols"}},
                          opset_version=OPSET, dynamo=False)
        files[str(s)] = name
        diff = _dense_error(ort.InferenceSession(str(folder / name), providers=["CPUExecutionProvider"]), plain,
                            x, s, win, off)
        if diff > 1e-4:
            raise RuntimeError(f"dense stride {s}: max abs difference {diff:.2e} > 1e-4 against per-patch features")
        checks[str(s)] = diff
    return {"files": files, "input": DENSE_INPUT, "output": DENSE_OUTPUT, "strides": list(strides),
            "window": win, "offset": off, "footprint": plain.footprint, "max_abs_diff_vs_patch": checks,
            "geometry": "output[:, :, i, j] = features of the footprint whose dense window (rows offset .. offset+window-1 "
                        "of the footprint) has its top-left at tile pixel (i*s, j*s)"}
