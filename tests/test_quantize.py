"""int8 copies of the feature graphs: they load, follow fp32, and dense int8 equals per-patch int8.

Tolerances (stated once): on synthetic footprints the int8 features keep a cosine
similarity with fp32 of at least 0.999 at the median and 0.99 at the 1st percentile
(measured on the tiny 1-epoch bundle: 0.99996 and 0.9999; on the shipped slice309 bundle
0.99994 and 0.9995), and labels through the default head agree on at least 95% of them
(measured: 99%; slice309: 99.8%). A dense int8 graph shares the per-patch int8
graph's activation ranges, so both run the same integer arithmetic on the same
window: their features are compared for exact equality.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime.quantization")

from brainrt_train.quantize import (  # noqa: E402
                                    INT8_WEIGHTS, agreement, cosine_rows, int8_name, preprocess, quantize_graphs, run_graph, sample_footprints,
                                    transfer_ranges)

ROOT = Path(__file__).resolve().parents[1]
COS_MEDIAN, COS_P1, LABELS = 0.999, 0.99, 0.95


def _footprints(image, manifest, n, seed):
    fp = (manifest.get("context") or {}).get("footprint") or manifest["patch_size"]
    return sample_footprints(image, footprint=fp, n=n, normalization=manifest["normalization"], seed=seed)


@pytest.fixture(scope="module")
def int8_bundle(tiny_bundle_path):
    """The tiny bundle (its export adds the int8 graphs, all three calibration methods tried)."""
    import joblib

    folder = Path(tiny_bundle_path)
    manifest = json.loads((folder / "manifest.json").read_text())
    head = joblib.load(folder / manifest["heads"][manifest["default_head"]])
    return folder, manifest, manifest["int8"], head


def test_int8_graphs_load_and_are_recorded(int8_bundle):
    folder, manifest, entry, _ = int8_bundle
    names = [entry["file"], *entry["dense_files"].values()]
    assert set(entry["dense_files"]) == set(manifest["dense_onnx"]["files"])
    assert set(entry["agreement_by_method"]) == {"minmax", "entropy", "percentile"}
    assert entry["agreement"] == entry["agreement_by_method"][entry["calibration"]["method"]]
    for name in names:
        onnx.checker.check_model(str(folder / name))
        sess = ort.InferenceSession(str(folder / name), providers=["CPUExecutionProvider"])
        ops = {n.op_type for n in onnx.load(str(folder / name), load_external_data=False).graph.node}
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops, name
        assert sess.get_outputs()[0].name == "features"
    # the int8 weights live once, in their own file: a quarter of the fp32 ones (plus biases and scales)
    fp32, int8 = (folder / "weights.bin").stat().st_size, (folder / INT8_WEIGHTS).stat().st_size
    assert int8 < 0.3 * fp32
    assert all((folder / n).stat().st_size < 64_000 for n in names)


def test_int8_features_close_to_fp32(int8_bundle, synthetic_slice):
    folder, manifest, entry, head = int8_bundle
    x = _footprints(synthetic_slice.image, manifest, 200, seed=7)  # not the calibration draw
    f32 = run_graph(folder / manifest["onnx"]["file"], x)
    f8 = run_graph(folder / entry["file"], x)
    a = agreement(f32, f8, head=head)
    assert a["cosine_median"] >= COS_MEDIAN and a["cosine_p1"] >= COS_P1, a
    assert a["label_agreement"] >= LABELS, a
    assert entry["agreement"]["cosine_p1"] >= COS_P1


@pytest.mark.parametrize("stride", [1, 2, 4, 8, 16])
def test_int8_dense_equals_int8_per_patch(int8_bundle, synthetic_slice, stride):
    """Same activation ranges, same integer arithmetic: the dense map is the per-patch map, exactly."""
    folder, manifest, entry, _ = int8_bundle
    nz, P = manifest["normalization"], manifest["patch_size"]
    win, off = manifest["dense_onnx"]["window"], manifest["window"]["offset"]
    rows = 9
    side = (rows - 1) * stride + win
    y0, x0 = 100, 150
    tile = ((synthetic_slice.image[y0 : y0 + side, x0 : x0 + side] * nz["scale"] - nz["mean"]) / nz["std"])
    tile = tile.astype(np.float32)[None, None]
    sess = ort.InferenceSession(str(folder / entry["dense_files"][str(stride)]), providers=["CPUExecutionProvider"])
    dense = sess.run(None, {"tile": tile})[0][0]
    assert dense.shape[1:] == (rows, rows)
    # the footprint around each window; its pixels outside the window are never read
    patches = np.stack([np.pad(tile[0, :, i * stride : i * stride + win, j * stride : j * stride + win],
                               ((0, 0), (off, P - win - off), (off, P - win - off)))
                        for i in range(rows) for j in range(rows)])
    per_patch = run_graph(folder / entry["file"], patches)
    np.testing.assert_array_equal(dense.reshape(dense.shape[0], -1).T, per_patch)
    # and the fp32 graphs agree to float rounding (the reference both int8 graphs follow)
    f32 = ort.InferenceSession(str(folder / manifest["dense_onnx"]["files"][str(stride)]),
                               providers=["CPUExecutionProvider"]).run(None, {"tile": tile})[0][0]
    assert cosine_rows(f32.reshape(f32.shape[0], -1).T, per_patch).min() > COS_P1


def test_tool_adds_int8_graphs_to_a_verified_copy(tiny_bundle_path, slice_tif, tmp_path):
    sys.path.insert(0, str(ROOT / "tools"))
    from quantize_bundle import quantize_bundle

    from brainrt.model.seal import verify_bundle

    out = tmp_path / "copy"
    entry = quantize_bundle(tiny_bundle_path, out, calib_image=slice_tif, n_calib=64, n_check=64, methods=("minmax",))
    verify_bundle(out)  # every file hashed, int8 ones included
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["int8"] == entry
    assert entry["calibration"]["method"] == "minmax" and entry["calibration"]["n"] == 64
    assert INT8_WEIGHTS in manifest["files"] and int8_name("features.onnx") in manifest["files"]
    assert not list(tmp_path.glob(".quantize-*"))  # no work folder left behind
    with pytest.raises(SystemExit, match="already exists"):
        quantize_bundle(tiny_bundle_path, out, calib_image=slice_tif)


def test_context_graphs_are_calibrated_on_their_own(tmp_path, synthetic_slice):
    """The context branch's dense graphs do not line up with the per-patch graph (FC1 is split in two):
    they get their own calibration, on the same footprints cropped to their dense window."""
    import torch

    from brainrt_train.export import export_dense, export_features, share_weights
    from brainrt_train.model import PaperCNN

    torch.manual_seed(0)
    model = PaperCNN(4, patch_size=64, context=4).eval()
    _, plain = export_features(model, tmp_path / "features.onnx", patch_size=64, n_check=8)
    dense = export_dense(plain, tmp_path, patch_size=64)
    dense = {**dense, "files": {"1": dense["files"]["1"], "4": dense["files"]["4"]}}
    share_weights([tmp_path / "features.onnx"] + [tmp_path / f for f in dense["files"].values()], tmp_path)
    nz = {"scale": 1 / 255, "mean": 0.5, "std": 0.2}
    x = sample_footprints(synthetic_slice.image, footprint=plain.footprint, n=40, normalization=nz, seed=0)
    out = tmp_path / "int8"
    out.mkdir()
    files, how = quantize_graphs(tmp_path, out, x[:24], method="minmax", dense=dense)
    assert how == {"features.onnx": "calibrated", "features_dense_s1.onnx": "calibrated",
                   "features_dense_s4.onnx": "calibrated"}
    f32 = run_graph(tmp_path / "features.onnx", x[24:])
    f8 = run_graph(out / files["features.onnx"], x[24:])
    a = agreement(f32, f8)
    assert a["cosine_median"] >= COS_MEDIAN and a["cosine_p1"] >= COS_P1, a
    win, off = dense["window"], dense["offset"]
    for name in dense["files"].values():
        sess = ort.InferenceSession(str(out / files[name]), providers=["CPUExecutionProvider"])
        d8 = np.stack([sess.run(None, {"tile": xi[None, :, off : off + win, off : off + win]})[0][0, :, 0, 0]
                       for xi in x[24:]])
        assert agreement(f32, d8)["cosine_p1"] >= COS_P1, name


def test_transfer_ranges_needs_matching_layers(tiny_bundle_path, tmp_path):
    folder = Path(tiny_bundle_path)
    raw_dense = onnx.load(str(folder / "features_dense_s1.onnx"), load_external_data=False)
    assert "Add" in {n.op_type for n in raw_dense.graph.node}  # FC1's bias, fused by the pre-processing
    patch, dense = (onnx.load(str(preprocess(folder / f, tmp_path / f)), load_external_data=False)
                    for f in ("features.onnx", "features_dense_s1.onnx"))
    names = [o for n in patch.graph.node if n.op_type not in ("Constant",) for o in n.output] + ["patches"]
    ranges = {n: (np.float32(-k), np.float32(k + 1)) for k, n in enumerate(names)}
    moved = transfer_ranges(ranges, patch, dense)
    assert moved is not None and moved["features"] == ranges["features"]
    assert moved["tile"] == ranges[[n for n in patch.graph.node if n.op_type == "Conv"][0].input[0]]
    assert transfer_ranges({k: v for k, v in ranges.items() if k != "features"}, patch, dense) is None
    del dense.graph.node[-1]  # one layer fewer
    assert transfer_ranges(ranges, patch, dense) is None


def test_cosine_and_agreement_edge_cases():
    a = np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0], [2.0, 2.0]])
    b = np.array([[2.0, 0.0], [0.0, 0.0], [1.0, 0.0], [-2.0, -2.0]])
    np.testing.assert_allclose(cosine_rows(a, b), [1.0, 1.0, 0.0, -1.0])
    out = agreement(a, a)
    assert out["cosine_median"] == 1.0 and out["max_abs_diff"] == 0.0 and "label_agreement" not in out


def test_training_footprints_are_the_normalized_training_patches(training_data):
    from brainrt_train.data import ClassMap, extract, load_slice, reflect_pad, sample_patches
    from brainrt_train.quantize import training_footprints

    cmap = ClassMap.resolve(str(training_data["class_map"]))
    sl = load_slice(training_data["image"], training_data["mask"], cmap)
    sets, _ = sample_patches([sl], n_classes=len(cmap.names), patch_size=64, seed=0,
                             n_per_class={"train": 20, "val": 5, "test": 5})
    nz = {"scale": 1 / 255, "mean": 0.4, "std": 0.2}
    x = training_footprints([sl], sets["train"], footprint=64, normalization=nz, n=len(sets["train"]), seed=0)
    ref = (extract([sl], sets["train"], 64).astype(np.float32) * nz["scale"] - nz["mean"]) / nz["std"]
    np.testing.assert_allclose(x[:, 0], ref, atol=1e-5)  # all taken, in order
    wide = training_footprints([sl], sets["train"], footprint=256, normalization=nz, n=7, seed=1)
    assert wide.shape == (7, 1, 256, 256)
    pad = reflect_pad(sl.image, 128)
    centres = {tuple(c) for c in sets["train"].centres}
    assert any(np.allclose(wide[0, 0], (pad[cy : cy + 256, cx : cx + 256] / 255 - 0.4) / 0.2, atol=1e-5)
               for cy, cx in centres)


# --------------------------------------------------------------------------- runtime: precision="int8"
@pytest.fixture
def fp32_only_bundle(tiny_bundle_copy):
    """A copy of the tiny bundle without its int8 graphs (as bundles exported before them)."""
    import dataclasses

    from brainrt.model.seal import MANIFEST, hash_tree, verify_bundle

    m = verify_bundle(tiny_bundle_copy)
    for f in [m.int8.file, *m.int8.dense_files.values(), m.int8.weights]:
        (tiny_bundle_copy / f).unlink()
    m = dataclasses.replace(m, int8=None, files=hash_tree(tiny_bundle_copy))
    (tiny_bundle_copy / MANIFEST).write_text(m.to_json())
    return tiny_bundle_copy


def test_runtime_int8_dense_map_equals_int8_per_patch_map(tiny_bundle, synthetic_slice):
    import brainrt

    image = synthetic_slice.image[:300, :420]
    dense = brainrt.featurize(image, tiny_bundle, stride=4, method="dense", precision="int8")
    patch = brainrt.featurize(image, tiny_bundle, stride=4, method="patch", precision="int8")
    assert dense.stats["precision"] == patch.stats["precision"] == "int8"
    np.testing.assert_array_equal(dense.valid, patch.valid)
    np.testing.assert_array_equal(dense.features, patch.features)  # same windows, same integer arithmetic
    fp32 = brainrt.featurize(image, tiny_bundle, stride=4, method="dense")
    v = fp32.valid
    a = agreement(fp32.features[v], dense.features[v], head=tiny_bundle.head(tiny_bundle.manifest.default_head))
    assert a["cosine_median"] >= COS_MEDIAN and a["cosine_p1"] >= COS_P1 and a["label_agreement"] >= LABELS, a
    labels = brainrt.classify_image(image, tiny_bundle, stride=4, precision="int8").labels
    np.testing.assert_array_equal(labels, brainrt.classify(dense, tiny_bundle).labels)


def test_precision_errors_are_one_line(tiny_bundle, fp32_only_bundle, synthetic_slice):
    import brainrt
    from brainrt.errors import BrainrtError

    with pytest.raises(BrainrtError, match=r"^The 'precision' parameter of featurize must be one of \('auto', "
                                           r"'fp32', 'int8'\)\. Got 'int4' instead\.$"):
        brainrt.featurize(synthetic_slice.image, tiny_bundle, precision="int4")
    old = brainrt.Bundle.load(fp32_only_bundle)
    assert old.manifest.precisions == ("fp32",)
    with pytest.raises(BrainrtError, match=rf"^{re.escape(str(fp32_only_bundle))}: bundle has no int8 graphs; "
                                           r"use precision fp32, or add them with tools/quantize_bundle\.py"):
        brainrt.classify_image(synthetic_slice.image, old, precision="int8")
    with pytest.raises(BrainrtError, match="no int8 graphs"):
        old.predictor("dense", stride=4, precision="int8")


def test_cli_precision(tiny_bundle_path, fp32_only_bundle, slice_tif, tmp_path):
    import zarr
    from click.testing import CliRunner

    from brainrt.cli import main

    out = tmp_path / "f.zarr"
    res = CliRunner().invoke(main, ["featurize", str(slice_tif), "-m", str(tiny_bundle_path), "--stride", "8",
                                    "--precision", "int8", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert zarr.open_group(str(out), mode="r").attrs["brainrt"]["precision"] == "int8"
    res = CliRunner().invoke(main, ["classify", str(slice_tif), "-m", str(fp32_only_bundle), "--precision", "int8",
                                    "-o", str(tmp_path / "l.ome.tif")])
    assert res.exit_code == 2
    assert res.output.strip().splitlines()[-1].endswith("bundle has no int8 graphs; use precision fp32, or add them "
                                                        "with tools/quantize_bundle.py (bundles exported by this "
                                                        "brainrt have them)")
    assert not (tmp_path / "l.ome.tif").exists()
