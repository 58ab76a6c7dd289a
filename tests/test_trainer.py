"""The trainer: patch sampling rules, class maps, the exported bundle and train-and-export's errors."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from click.testing import CliRunner

from brainrt.errors import BrainrtError
from brainrt.model.manifest import SCHEMA_VERSION
from brainrt.model.seal import hash_tree, sha256_file, verify_bundle
from brainrt_train.data import PRESETS, SPLITS, ClassMap, load_slice, sample_patches
from conftest import TINY_PATCH, TINY_TRAIN, listing, write_tiff

P = TINY_PATCH


# --------------------------------------------------------------------------- sampling
@pytest.fixture(scope="module")
def loaded_slice(training_data):
    cmap = ClassMap.resolve(str(training_data["class_map"]))
    return load_slice(training_data["image"], training_data["mask"], cmap), cmap


def _sample(sl, cmap, *, seed=0, gap=None, n=(150, 60, 60), slices=None):
    return sample_patches(slices or [sl], n_classes=len(cmap.names), patch_size=P, seed=seed, gap=gap,
                          n_per_class=dict(zip(SPLITS, n)))


def _tops(ps):
    return ps.centres - P // 2  # footprint top-left corners (rows cy - P//2 .. cy - P//2 + P - 1)


@pytest.mark.parametrize("gap", [None, 16])
def test_training_patches_lie_strictly_inside_one_class(loaded_slice, synthetic_slice, gap):
    sl, cmap = loaded_slice
    sets, _ = _sample(sl, cmap, gap=gap)
    mask = synthetic_slice.mask
    h, w = mask.shape
    train = sets["train"]
    assert len(train) > 0
    for (y0, x0), c in zip(_tops(train), train.labels):
        assert 0 <= y0 and y0 + P <= h and 0 <= x0 and x0 + P <= w
        footprint = mask[y0 : y0 + P, x0 : x0 + P]
        assert footprint.shape == (P, P)
        assert np.isin(footprint, cmap.codes[c]).all(), f"training patch at {(y0, x0)} leaves class {cmap.names[c]}"


@pytest.mark.parametrize("gap", [None, 16])
def test_eval_centres_inside_their_class_and_footprints_inside_image(loaded_slice, synthetic_slice, gap):
    sl, cmap = loaded_slice
    sets, _ = _sample(sl, cmap, gap=gap)
    mask = synthetic_slice.mask
    h, w = mask.shape
    for split in ("val", "test"):
        ps = sets[split]
        assert len(ps) > 0
        for (cy, cx), c in zip(ps.centres, ps.labels):
            assert mask[cy, cx] in cmap.codes[c]
        tops = _tops(ps)
        assert (tops >= 0).all() and (tops[:, 0] + P <= h).all() and (tops[:, 1] + P <= w).all()


@pytest.mark.parametrize("gap", [None, 16, 40])
def test_train_footprints_keep_gap_from_eval_footprints(loaded_slice, gap):
    sl, cmap = loaded_slice
    sets, report = _sample(sl, cmap, gap=gap)
    g = P if gap is None else gap
    assert report["gap"] == g
    train = _tops(sets["train"])
    for split in ("val", "test"):
        other = _tops(sets[split])
        d = np.abs(train[:, None, :] - other[None, :, :])  # (n_train, n_other, 2)
        pixels_between = d.max(axis=-1) - P  # empty rows/cols between the two squares (Chebyshev)
        assert pixels_between.min() >= g, f"a {split} footprint is {pixels_between.min()} px from a training one"


def test_same_seed_same_patches_and_other_seed_differs(loaded_slice):
    sl, cmap = loaded_slice
    a, ra = _sample(sl, cmap, seed=3)
    b, rb = _sample(sl, cmap, seed=3)
    c, _ = _sample(sl, cmap, seed=4)
    for s in SPLITS:
        np.testing.assert_array_equal(a[s].centres, b[s].centres)
        np.testing.assert_array_equal(a[s].labels, b[s].labels)
        np.testing.assert_array_equal(a[s].slice_idx, b[s].slice_idx)
    assert ra == rb
    assert any(not np.array_equal(a[s].centres, c[s].centres) for s in SPLITS)


def test_report_counts_match_the_patch_sets(loaded_slice):
    sl, cmap = loaded_slice
    n = (150, 60, 60)
    sets, report = _sample(sl, cmap, n=n)
    assert report["mode"] == "by spatial bands per class"
    for s, want in zip(SPLITS, n):
        per = report["per_split"][s]
        assert sorted(per) == list(range(len(cmap.names)))
        for c, rec in per.items():
            assert rec["asked"] == want
            assert rec["taken"] == min(want, rec["eligible_positions"])
            assert int((sets[s].labels == c).sum()) == rec["taken"]
        assert len(sets[s]) == sum(r["taken"] for r in per.values())
        # no centre is drawn twice within a split
        keys = {tuple(k) for k in np.column_stack([sets[s].slice_idx, sets[s].centres])}
        assert len(keys) == len(sets[s])


def test_three_slices_split_by_slice(tmp_path, class_map_dict):
    from brainrt.synth import make_slice

    cmap = ClassMap.from_dict(class_map_dict)
    slices = []
    for k in range(3):
        s = make_slice((256, 384), seed=10 + k)
        img = write_tiff(tmp_path / f"s{k}.tif", s.image)
        msk = write_tiff(tmp_path / f"s{k}_areas.tif", s.mask)
        slices.append(load_slice(img, msk, cmap))
    sets, report = _sample(None, cmap, n=(40, 20, 20), slices=slices)
    assert report["mode"] == "by slice"
    assert set(sets["train"].slice_idx.tolist()) == {0}
    assert set(sets["val"].slice_idx.tolist()) == {1}
    assert set(sets["test"].slice_idx.tolist()) == {2}


def test_patch_larger_than_image_names_the_file(loaded_slice):
    sl, cmap = loaded_slice
    with pytest.raises(BrainrtError, match=str(sl.image_path.name)):
        sample_patches([sl], n_classes=len(cmap.names), patch_size=448,
                       n_per_class={"train": 1, "val": 1, "test": 1})


# --------------------------------------------------------------------------- class maps
def test_preset_prasad2020_codes():
    cmap = ClassMap.resolve("prasad2020")
    assert cmap.names == ("Ctx", "Str", "VP", "ZI", "HypoTh", "WM")
    assert cmap.codes == ((1,), (2,), (4,), (5,), (7,), (6, 8))
    assert cmap.ignore == (3,) and cmap.unlabeled == (0,)
    mask = np.arange(9, dtype=np.uint8).reshape(3, 3)
    idx = cmap.class_index(mask)
    np.testing.assert_array_equal(idx.ravel(), [-1, 0, 1, -1, 2, 3, 5, 4, 5])
    assert cmap.to_dict() == {**PRESETS["prasad2020"]}


def test_unknown_codes_in_mask_name_the_file(tmp_path, synthetic_slice, class_map_dict):
    mask = synthetic_slice.mask.copy()
    mask[100:110, 100:110] = 9
    img = write_tiff(tmp_path / "img.tif", synthetic_slice.image)
    msk = write_tiff(tmp_path / "bad_areas.tif", mask)
    with pytest.raises(BrainrtError, match=r"bad_areas\.tif.*\[9\]"):
        load_slice(img, msk, ClassMap.from_dict(class_map_dict))


def test_mask_without_any_class_pixel(tmp_path, synthetic_slice, class_map_dict):
    img = write_tiff(tmp_path / "img.tif", synthetic_slice.image)
    msk = write_tiff(tmp_path / "empty_areas.tif", np.zeros_like(synthetic_slice.mask))
    with pytest.raises(BrainrtError, match=r"empty_areas\.tif: holds no pixel of any class"):
        load_slice(img, msk, ClassMap.from_dict(class_map_dict))


def test_non_integer_float_mask(tmp_path, synthetic_slice, class_map_dict):
    img = write_tiff(tmp_path / "img.tif", synthetic_slice.image)
    msk = write_tiff(tmp_path / "float_areas.tif", synthetic_slice.mask.astype(np.float32) + 0.5)
    with pytest.raises(BrainrtError, match=r"float_areas\.tif: label mask holds non-integer values"):
        load_slice(img, msk, ClassMap.from_dict(class_map_dict))


@pytest.mark.parametrize(("spec", "match"), [
    ({"classes": {"a": [1]}}, "at least 2 classes"),
    ({"classes": {"a": [1], "b": [1]}}, "more than once"),
    ({"classes": {"a": [1], "b": [2]}, "unlabeled": [2]}, "more than once"),
    ({"classes": ["a", "b"]}, "expected"),
    ({"klasses": {}}, "expected"),
    ({"classes": {"a": ["x"], "b": [2]}}, "expected"),
])
def test_bad_class_map_dicts(spec, match):
    with pytest.raises(BrainrtError, match=match):
        ClassMap.from_dict(spec, source="cm.json")


def test_class_map_files(tmp_path):
    bad = tmp_path / "broken.json"
    bad.write_text("{not json")
    with pytest.raises(BrainrtError, match=r"broken\.json: not valid JSON"):
        ClassMap.resolve(str(bad))
    with pytest.raises(BrainrtError, match=r"nosuch\.json: no such class-map file"):
        ClassMap.resolve(str(tmp_path / "nosuch.json"))


# --------------------------------------------------------------------------- the bundle
def test_manifest_fields(tiny_bundle_path, training_data, class_map_dict):
    m = json.loads((tiny_bundle_path / "manifest.json").read_text())
    assert m["schema_version"] == SCHEMA_VERSION == 2
    assert [c["name"] for c in m["classes"]] == list(class_map_dict["classes"])
    assert [c["codes"] for c in m["classes"]] == list(class_map_dict["classes"].values())
    assert m["class_map"]["unlabeled"] == [0]
    assert m["patch_size"] == P
    assert m["net_stride"] == 16
    assert m["window"] == {**m["window"], "size": 54, "offset": 5}
    norm = m["normalization"]
    assert norm["scale"] == pytest.approx(1 / 255)
    assert 0 < norm["mean"] < 1 and norm["std"] > 0
    assert norm["trained_dtype"] == "uint8" and "formula" in norm
    assert m["n_features"] == 64
    assert m["onnx"]["file"] == "features.onnx"
    assert m["onnx"]["input"] == "patches" and m["onnx"]["output"] == "features"
    assert m["onnx"]["opset"] == 17
    assert m["onnx"]["input_shape"] == ["batch", 1, P, P]
    assert m["dense_onnx"]["strides"] == [1, 2, 4, 8, 16]
    assert max(m["dense_onnx"]["max_abs_diff_vs_patch"].values()) <= 1e-4
    for pkg in ("python", "torch", "onnx", "numpy", "scikit-learn", "brainrt"):
        assert pkg in m["versions"], pkg
    assert "onnxruntime" in m["versions"] or "onnxruntime-gpu" in m["versions"]
    data = m["training"]["data"]
    assert len(data) == 1
    assert data[0]["image"] == training_data["image"].name and data[0]["mask"] == training_data["mask"].name
    assert data[0]["image_sha256"] == sha256_file(training_data["image"])
    assert data[0]["mask_sha256"] == sha256_file(training_data["mask"])
    assert data[0]["shape"] == [384, 576]
    assert m["training"]["epochs_run"] == 1 and m["training"]["seed"] == 0
    assert set(m["training"]["counts"]) == set(SPLITS)
    assert 0.0 <= m["metrics"]["cnn_test_accuracy"] <= 1.0
    assert 0.0 <= m["metrics"]["logreg_test_accuracy"] <= 1.0
    assert set(m["metrics"]["cnn_per_class_f1"]) == set(class_map_dict["classes"])
    assert set(m["heads"]) >= {"logreg", "linsvm", "rbfsvm", "gmm", "area_density", "cnn"} and "pca_kmeans" not in m["heads"]
    assert m["default_head"] == "logreg"
    assert m["files"] == hash_tree(tiny_bundle_path)
    assert all(len(d) == 64 for d in m["files"].values())
    assert verify_bundle(tiny_bundle_path).to_dict() == m


def test_metrics_json_records_onnx_parity(tiny_bundle_path):
    metrics = json.loads((tiny_bundle_path / "metrics.json").read_text())
    parity = metrics["onnx_parity"]
    assert parity["max_abs_diff_onnx_vs_torch"] <= 1e-4
    assert parity["max_abs_diff_folded_vs_trained"] <= 1e-4
    assert len(metrics["history"]) == 1


def test_bundle_files_get_the_usual_modes(tiny_bundle_path):
    """atomic_path used to leave the bundle folder 0700 and metrics.json/confusion.png 0600."""
    import stat

    from brainrt.io import current_umask as _umask

    umask = _umask()
    for p in [tiny_bundle_path, *tiny_bundle_path.rglob("*")]:
        want = (0o777 if p.is_dir() else 0o666) & ~umask
        assert stat.S_IMODE(p.stat().st_mode) == want, f"{p} has mode {oct(stat.S_IMODE(p.stat().st_mode))}"


@pytest.mark.parametrize("n", [1, 7, 128])
def test_features_onnx_in_plain_onnxruntime(tiny_bundle_path, n):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(tiny_bundle_path / "features.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["patches"]
    assert [o.name for o in sess.get_outputs()] == ["features"]
    x = np.random.default_rng(n).standard_normal((n, 1, P, P)).astype(np.float32)
    (y,) = sess.run(None, {"patches": x})
    assert y.shape == (n, 64) and y.dtype == np.float32
    assert np.isfinite(y).all() and (y >= 0).all()  # ReLU features
    (y0,) = sess.run(None, {"patches": x[:1]})
    np.testing.assert_allclose(y[:1], y0, atol=1e-5)  # a patch's features do not depend on its batch


def test_shipped_bundle_features(shipped_bundle_path):
    import onnxruntime as ort

    m = verify_bundle(shipped_bundle_path)
    assert m.patch_size == 128 and m.n_features == 64
    sess = ort.InferenceSession(str(shipped_bundle_path / m.onnx.file), providers=["CPUExecutionProvider"])
    fp = m.footprint  # 512 with the context branch
    x = np.random.default_rng(0).standard_normal((4, 1, fp, fp)).astype(np.float32)
    (y,) = sess.run(None, {m.onnx.input: x})
    assert y.shape == (4, 64) and np.isfinite(y).all()


# --------------------------------------------------------------------------- train-and-export errors
def _case(tmp_path, name, synthetic_slice, class_map_json):
    """(extra CLI args, path the message must name, out folder) for one bad input."""
    img, mask = synthetic_slice.image, synthetic_slice.mask
    good_img = write_tiff(tmp_path / "img.tif", img)
    good_mask = write_tiff(tmp_path / "img_areas.tif", mask)
    out = tmp_path / "bundle"
    cm = str(class_map_json)
    if name == "shape mismatch":
        bad = write_tiff(tmp_path / "cropped_areas.tif", mask[:, :500])
        return ["--image", good_img, "--mask", bad, "--class-map", cm], bad, out
    if name == "no usable class":
        bad = write_tiff(tmp_path / "unlabeled_areas.tif", np.zeros_like(mask))
        return ["--image", good_img, "--mask", bad, "--class-map", cm], bad, out
    if name == "codes missing from class map":
        m = mask.copy()
        m[200:220, 300:320] = 9
        bad = write_tiff(tmp_path / "code9_areas.tif", m)
        return ["--image", good_img, "--mask", bad, "--class-map", cm], bad, out
    if name == "preset codes do not fit":  # synthetic codes 1..4 under prasad2020: 3 is ignored, fine; add 9
        m = mask.copy()
        m[0:5, 0:5] = 9
        bad = write_tiff(tmp_path / "code9_areas.tif", m)
        return ["--image", good_img, "--mask", bad], bad, out
    if name == "patch larger than image":
        return ["--image", good_img, "--mask", good_mask, "--class-map", cm, "--patch-size", "448"], good_img, out
    if name == "patch size too small":
        return ["--image", good_img, "--mask", good_mask, "--class-map", cm, "--patch-size", "40"], "patch_size", out
    if name == "unreadable TIFF":
        bad = tmp_path / "text.tif"
        bad.write_text("this is not a TIFF\n")
        return ["--image", bad, "--mask", good_mask, "--class-map", cm], bad, out
    if name == "zero-byte mask":
        bad = tmp_path / "zero_areas.tif"
        bad.write_bytes(b"")
        return ["--image", good_img, "--mask", bad, "--class-map", cm], bad, out
    if name == "missing image":
        return ["--image", tmp_path / "nosuch.tif", "--mask", good_mask, "--class-map", cm], tmp_path / "nosuch.tif", out
    if name == "broken class map":
        bad = tmp_path / "classes.json"
        bad.write_text("{")
        return ["--image", good_img, "--mask", good_mask, "--class-map", bad], bad, out
    if name == "unknown preset":
        return ["--image", good_img, "--mask", good_mask, "--class-map", "prasad2021"], "prasad2021", out
    if name == "existing output":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
        return ["--image", good_img, "--mask", good_mask, "--class-map", cm], out, out
    if name == "one image two masks":
        return ["--image", good_img, "--mask", good_mask, "--mask", good_mask, "--class-map", cm], "--mask", out
    if name == "zero epochs":
        return ["--image", good_img, "--mask", good_mask, "--class-map", cm, "--patch-size", "64",
                "--epochs", "0"], "epochs", out
    raise AssertionError(name)


TRAIN_CASES = ["shape mismatch", "no usable class", "codes missing from class map", "preset codes do not fit",
               "patch larger than image", "patch size too small", "unreadable TIFF", "zero-byte mask",
               "missing image", "broken class map", "unknown preset", "existing output", "one image two masks",
               "zero epochs"]


@pytest.mark.parametrize("case", TRAIN_CASES)
def test_train_and_export_bad_inputs(tmp_path, case, synthetic_slice, class_map_json):
    from brainrt.cli import main

    args, named, out = _case(tmp_path, case, synthetic_slice, class_map_json)
    before = listing(tmp_path)
    result = CliRunner().invoke(main, ["train-and-export", *map(str, args), "-o", str(out),
                                       "--n-train", "8", "--n-val", "4", "--n-test", "4"])
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert str(named) in lines[0], lines[0]
    assert "Traceback" not in result.output
    assert listing(tmp_path) == before  # no bundle, no hidden temp folder
    assert not any(p.startswith(f".{out.name}") for p in listing(tmp_path))


# --------------------------------------------------------------------------- real data (skips without it)
@pytest.mark.realdata
def test_slice309_with_the_paper_class_map(shared_data):
    cmap = ClassMap.resolve("prasad2020")
    sl = load_slice(shared_data / "slice309.tif", shared_data / "slice309_areas.tif", cmap)
    assert sl.image.shape == (1420, 5805) and sl.image.dtype == np.uint8
    counts = np.bincount(sl.labels[sl.labels >= 0].ravel(), minlength=6)
    # annotation revision 2, the dataset README's pixel counts: Ctx=1, Str=2, VP=4, ZI=5, HypoTh=7, WM=6+8
    assert counts.tolist() == [1099835, 718043, 813386, 616436, 127265, 399371 + 72563]
    # revision 2 has no unlabeled pixel inside the labeled rectangle (x 905..5655, y 344..1199)
    from brainrt.sources import read_image as read_tiff
    mask, _ = read_tiff(shared_data / "slice309_areas.tif")
    assert int((mask[344:1200, 905:5656] == 0).sum()) == 0 and int((mask > 0).sum()) == 4066856
    # ... and the README's counts of 128 px patches wholly inside the striatum and the cortex
    from brainrt_train.data import box_all
    assert int(box_all(sl.labels == 1, 128).sum()) == 453200
    assert int(box_all(sl.labels == 0, 128).sum()) == 839147
    sets, report = sample_patches([sl], n_classes=6, patch_size=128, seed=0,
                                  n_per_class={"train": 20, "val": 10, "test": 10})
    assert all(report["per_split"]["train"][c]["taken"] > 0 for c in range(6))
    for (cy, cx), c in zip(sets["train"].centres, sets["train"].labels):
        assert (sl.labels[cy - 64 : cy + 64, cx - 64 : cx + 64] == c).all()


@pytest.mark.realdata
def test_shipped_bundle_on_slice309(shared_data, shipped_bundle_path):
    import brainrt

    bundle = brainrt.Bundle.load(shipped_bundle_path)
    image, _ = brainrt.read_tiff(shared_data / "slice309.tif")
    crop = image[344:856, 2000:2512]
    grid = brainrt.featurize(crop, bundle, stride=32)
    assert grid.features.shape == (16, 16, 64)
    labels = brainrt.classify(grid, bundle).labels
    assert labels.min() >= -1 and labels.max() < len(bundle.class_names)


# --------------------------------------------------------------------------- context branch
@pytest.fixture(scope="module")
def context_bundle_path(tmp_path_factory, training_data):
    """A tiny bundle with the context branch (4x field): 64 px patches, 256 px footprints."""
    from brainrt_train.pipeline import train_and_export

    out = tmp_path_factory.mktemp("bundles") / "tiny-context"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train_and_export([(training_data["image"], training_data["mask"])], out,
                         class_map=str(training_data["class_map"]),
                         **{**TINY_TRAIN, "n_train": 30, "n_val": 20, "n_test": 20}, context=4, smooth_choice=False)
    return out


def test_context_bundle_records_its_footprint_and_intensity(context_bundle_path):
    import brainrt

    m = brainrt.Bundle.load(context_bundle_path).manifest
    assert m.context.factor == 4 and m.footprint == 4 * TINY_PATCH
    assert tuple(m.onnx.input_shape[2:]) == (4 * TINY_PATCH, 4 * TINY_PATCH)
    assert m.dense_onnx.window == 4 * 54 and m.dense_onnx.offset == 4 * 5  # 4x the 54 px window of a 64 px patch
    assert len(m.intensity.quantiles) == 1001 and list(m.intensity.quantiles) == sorted(m.intensity.quantiles)


@pytest.mark.parametrize("stride", [1, 2, 4, 8, 16, 32])
def test_context_dense_path_equals_per_patch_path(context_bundle_path, synthetic_slice, stride):
    """Dense graphs of a context model give the per-patch features at every stride (edges included)."""
    import brainrt

    bundle = brainrt.Bundle.load(context_bundle_path)
    image = synthetic_slice.image[: 96 + stride * 3, : 160 + stride * 2]  # crops smaller than the footprint
    dense = brainrt.featurize(image, bundle, stride=stride, method="dense", tissue="all")
    patch = brainrt.featurize(image, bundle, stride=stride, method="patch", tissue="all")
    assert dense.features.shape == patch.features.shape
    np.testing.assert_allclose(dense.features, patch.features, atol=1e-4)


def test_context_model_matches_the_trained_network(context_bundle_path, training_data):
    """The exported graph (raw footprint in) equals the trained network on (patch, pooled context)."""
    import onnxruntime as ort
    import torch

    from brainrt_train.model import PaperCNN, PlainCNN

    torch.manual_seed(0)
    model = PaperCNN(4, patch_size=64, context=4).eval()
    plain = PlainCNN(model)
    x = torch.randn(3, 1, 256, 256)
    patch = x[:, :, 96:160, 96:160]
    ctx = x.reshape(3, 1, 64, 4, 64, 4).mean((3, 5))
    with torch.no_grad():
        np.testing.assert_allclose(plain(x).numpy(), model.features(torch.cat([patch, ctx], 1)).numpy(), atol=1e-5)


@pytest.mark.parametrize("factor", [4, 16])
def test_context_patches_are_cut_like_the_runtime_cuts_them(synthetic_slice, factor):
    """Training's pooled context (reflected at the edges) equals pooling the runtime's gathered footprint.

    At factor 16 the 1024 px field is wider than the 384 x 576 px slice: it is reflected
    more than once, as a 2048 px field always is on slice309's 1420 rows."""
    from brainrt.engine.tiling import PAD_REFLECT, patches_kernel

    from brainrt_train.data import PatchSet, extract_context, Slice

    img = synthetic_slice.image
    sl = Slice(None, None, img, np.zeros(img.shape, np.int8))
    centres = np.array([[5, 7], [200, 300], [img.shape[0] - 3, img.shape[1] - 1]])
    ps = PatchSet(np.zeros(3, np.int64), centres, np.zeros(3, np.int64))
    got = extract_context([sl], ps, 64, factor)
    fp = 64 * factor
    buf = np.empty((3, 1, fp, fp), np.float32)
    patches_kernel(img, centres, buf, PAD_REFLECT, 1.0, 0.0, 1.0, 0.0)
    ref = buf[:, 0].reshape(3, 64, factor, 64, factor).mean((2, 4))
    np.testing.assert_allclose(got, ref, rtol=1e-6)


def test_tissue_edge_cuts_only_the_context_ring():
    import torch

    from brainrt_train.train import tissue_edge

    s = 128
    ctx = torch.full((400, 1, s, s), 0.5)
    out = tissue_edge(ctx, torch.Generator().manual_seed(0), p=1.0)
    lo, hi = s * 3 // 8, s * 5 // 8  # the patch inside the pooled context
    assert torch.equal(out[:, :, lo:hi, lo:hi], ctx[:, :, lo:hi, lo:hi])
    cut = (out != 0.5).flatten(1)
    assert bool(cut.any(1).all())  # p=1: every sample has a border somewhere
    assert float(out[out != 0.5].max()) <= 0.08
    # the cut is one straight side: a half-plane, so the background touches the frame
    frame = torch.ones(s, s, dtype=torch.bool)
    frame[1:-1, 1:-1] = False
    assert bool((cut.view(-1, s, s) & frame).flatten(1).any(1).all())
    kept = tissue_edge(ctx, torch.Generator().manual_seed(0), p=0.0)
    assert torch.equal(kept, ctx)


def test_tissue_edge_cuts_every_scale_along_one_line():
    """Two context scales (the second field 4x wider): the patch stays untouched in both, a
    border seen in the near field is seen in the far one too (at a quarter of the distance),
    and some borders lie beyond the near field, in the far one only."""
    import torch

    from brainrt_train.train import tissue_edge

    s = 128
    ctx = torch.full((400, 2, s, s), 0.5)
    out = tissue_edge(ctx, torch.Generator().manual_seed(0), p=1.0, ratios=(1, 4))
    lo, hi = s * 3 // 8, s * 5 // 8
    assert torch.equal(out[:, 0, lo:hi, lo:hi], ctx[:, 0, lo:hi, lo:hi])
    flo, fhi = s * 15 // 32, s * 17 // 32  # the patch inside the 4x wider field
    assert torch.equal(out[:, 1, flo:fhi, flo:fhi], ctx[:, 1, flo:fhi, flo:fhi])
    near, far = (out[:, 0] != 0.5).flatten(1).any(1), (out[:, 1] != 0.5).flatten(1).any(1)
    assert bool(far.all()) and bool(near.any())
    # far-only borders: the far scale is picked half the time, and its line lies beyond the near
    # field for about half of those (distance ~ u**2 over the far ring): about a quarter in all
    assert 0.15 < float((~near).float().mean()) < 0.4
    # where the near field is cut, the far field's central quarter (the same ground, pooled 4x more) is cut alike
    q = out[:, 1, s * 3 // 8 : s * 5 // 8, s * 3 // 8 : s * 5 // 8] != 0.5
    coarse = (out[:, 0] != 0.5).float().reshape(400, 32, 4, 32, 4).mean((2, 4))
    sure = (coarse == 1) | (coarse == 0)  # blocks wholly on one side of the line
    assert float((q[sure] == (coarse[sure] == 1)).float().mean()) > 0.99


def test_augment_leaves_single_scale_patches_without_a_border():
    import torch

    from brainrt_train.train import augment

    x = torch.full((64, 1, 32, 32), 0.5)
    y = augment(x, torch.Generator().manual_seed(1), border_p=1.0)
    assert y.shape == x.shape and float(y.min()) > -0.5  # no constant-background cut in channel 0


def test_rotate_scale_keeps_channels_registered_and_identity_is_exact():
    import torch

    from brainrt_train.train import rotate_scale

    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 1, 64, 64, generator=g)
    both = rotate_scale(torch.cat([x, x], 1), torch.Generator().manual_seed(5))
    assert torch.equal(both[:, 0], both[:, 1])  # one transform for patch and context
    same = rotate_scale(x, torch.Generator().manual_seed(5), max_deg=0.0, max_scale=0.0)
    assert torch.allclose(same, x, atol=1e-5)
    turned = rotate_scale(x, torch.Generator().manual_seed(5))
    assert not torch.allclose(turned, x, atol=1e-2)
    # a disc centred in the sample stays centred when turned and rescaled
    r = torch.arange(64) - 31.5
    disc = ((r[:, None] ** 2 + r[None, :] ** 2) < 15**2).float()[None, None].repeat(8, 1, 1, 1)
    out = rotate_scale(disc, torch.Generator().manual_seed(7))
    w = out[:, 0]
    cy = (w.sum(2) * r).sum(1) / w.sum((1, 2))
    cx = (w.sum(1) * r).sum(1) / w.sum((1, 2))
    assert float(cy.abs().max()) < 0.5 and float(cx.abs().max()) < 0.5


@pytest.mark.parametrize("name", ["border_p", "rotate_p"])
def test_augmentation_shares_are_checked(tmp_path, synthetic_slice, class_map_json, name):
    from brainrt_train.pipeline import train_and_export

    img = write_tiff(tmp_path / "img.tif", synthetic_slice.image)
    mask = write_tiff(tmp_path / "img_areas.tif", synthetic_slice.mask)
    before = listing(tmp_path)
    with pytest.raises(BrainrtError, match=name):
        train_and_export([(img, mask)], tmp_path / "b", class_map=class_map_json, **{name: 1.5})
    assert listing(tmp_path) == before


# --------------------------------------------------------------------------- two context scales
@pytest.fixture(scope="module")
def far_bundle_path(tmp_path_factory, training_data):
    """A tiny bundle with two context scales (4x and 16x): 64 px patches, 1024 px footprints
    (wider than the 384 x 576 px slice, so every field is reflected at the edges)."""
    from brainrt_train.pipeline import train_and_export

    out = tmp_path_factory.mktemp("bundles") / "tiny-far"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train_and_export([(training_data["image"], training_data["mask"])], out,
                         class_map=str(training_data["class_map"]),
                         **{**TINY_TRAIN, "n_train": 20, "n_val": 10, "n_test": 10}, context=(4, 16),
                         smooth_choice=False, int8=False, final=True)
    return out


def test_final_fit_refits_the_heads_on_every_split(far_bundle_path):
    """``final=True``: the heads saw the train, validation and test patches; the manifest says so
    and keeps the split run's test metrics."""
    import brainrt

    bundle = brainrt.Bundle.load(far_bundle_path)
    t = bundle.manifest.training
    n_all = sum(sum(v["taken"] for v in t.counts[s].values()) for s in SPLITS)
    assert t.extra["final"]["n"] == {s: sum(v["taken"] for v in t.counts[s].values()) for s in SPLITS}
    assert bundle.head("logreg")[0].n_samples_seen_ == n_all
    assert bundle.manifest.test_accuracy("logreg") is not None


def test_far_bundle_records_its_scales(far_bundle_path):
    import brainrt

    m = brainrt.Bundle.load(far_bundle_path).manifest
    assert m.context.factors == (4, 16) and m.context.factor == 16 and m.footprint == 16 * TINY_PATCH
    assert tuple(m.onnx.input_shape[2:]) == (16 * TINY_PATCH, 16 * TINY_PATCH)
    assert m.dense_onnx.window == 16 * 54 and m.dense_onnx.offset == 16 * 5
    assert m.dense_strides == (4, 8, 16)  # strides 1, 2 take the per-patch path (see export.dense_strides)
    assert m.training.to_dict()["context"] == [4, 16]


@pytest.mark.parametrize("stride", [4, 8, 16, 32])
def test_far_dense_path_equals_per_patch_path(far_bundle_path, synthetic_slice, stride):
    """Dense graphs with two context scales give the per-patch features at every stride they serve."""
    import brainrt

    bundle = brainrt.Bundle.load(far_bundle_path)
    image = synthetic_slice.image[: 96 + stride * 3, : 160 + stride * 2]
    dense = brainrt.featurize(image, bundle, stride=stride, method="dense", tissue="all")
    patch = brainrt.featurize(image, bundle, stride=stride, method="patch", tissue="all")
    assert dense.features.shape == patch.features.shape
    np.testing.assert_allclose(dense.features, patch.features, atol=1e-4)


def test_far_bundle_features_are_the_trained_networks(far_bundle_path, synthetic_slice):
    """The runtime's features of a two-scale bundle are the trained network's on the training
    inputs (patch plus both pooled fields, reflected at the slice's edges as training cuts them)."""
    import brainrt
    import torch

    from brainrt_train.data import PatchSet, Slice, extract, extract_context
    from brainrt_train.export import export_features
    from brainrt_train.model import PaperCNN

    torch.manual_seed(3)
    model = PaperCNN(4, patch_size=64, context=(4, 16)).eval()
    img = synthetic_slice.image
    sl = Slice(None, None, img, np.zeros(img.shape, np.int8))
    centres = np.array([[40, 40], [200, 300], [img.shape[0] - 40, img.shape[1] - 36]])  # patches inside, fields past the edges
    ps = PatchSet(np.zeros(3, np.int64), centres, np.zeros(3, np.int64))
    x = np.stack([extract([sl], ps, 64).astype(np.float32)] + [extract_context([sl], ps, 64, k) for k in (4, 16)], 1)
    with torch.no_grad():
        ref = model.features(torch.from_numpy(x)).numpy()
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        export_features(model, Path(tmp) / "f.onnx", patch_size=64, n_check=8)
        import onnxruntime as ort

        from brainrt.engine.tiling import PAD_REFLECT, patches_kernel

        buf = np.empty((3, 1, 1024, 1024), np.float32)
        patches_kernel(img, centres, buf, PAD_REFLECT, 1.0, 0.0, 1.0, 0.0)
        got = ort.InferenceSession(str(Path(tmp) / "f.onnx")).run(None, {"patches": buf})[0]
    np.testing.assert_allclose(got, ref, atol=1e-4)


def test_context_option_parses_scales():
    from brainrt_train.cli import _context_scales

    assert _context_scales("0") == 0 and _context_scales("4") == 4 and _context_scales("4,16") == (4, 16)
    for bad in ("3", "4,x", "0,4", ""):
        with pytest.raises(BrainrtError, match="--context"):
            _context_scales(bad)


def test_train_and_export_cli_offers_the_context_options():
    from brainrt.cli import main

    out = CliRunner().invoke(main, ["train-and-export", "--help"]).output
    for opt in ("--context", "--layout", "--redraw", "--border-p", "--rotate-p", "--checkpoint"):
        assert opt in out


def test_train_and_export_follows_the_finished_output_rule(tmp_path, synthetic_slice, class_map_json):
    """Issue 19 (3): the same arguments on the same files leave a trained bundle as it is (exit 0); other
    arguments are refused in the words of every other command."""
    from brainrt.cli import main

    img = write_tiff(tmp_path / "i.tif", synthetic_slice.image)
    msk = write_tiff(tmp_path / "m.tif", synthetic_slice.mask)
    out = tmp_path / "b"
    args = ["train-and-export", "--image", img, "--mask", msk, "--class-map", class_map_json, "-o", out,
            "--patch-size", "64", "--n-train", "20", "--n-val", "10", "--n-test", "10", "--epochs", "1"]
    run = lambda *extra: CliRunner().invoke(main, [str(a) for a in (*args, *extra)])  # noqa: E731
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = run()
    assert first.exit_code == 0, first.output
    # issue 28: stderr not a terminal (the runner's): no progress bar, no library FutureWarning
    assert "\r" not in first.stderr and "patch/s" not in first.stderr, first.stderr
    assert not [w for w in caught if issubclass(w.category, FutureWarning)], [str(w.message) for w in caught]
    before = (out / "manifest.json").read_bytes()
    again = run()
    assert again.exit_code == 0 and "complete" in again.stdout, again.output
    assert (out / "manifest.json").read_bytes() == before
    other = run("--seed", "1")
    assert other.exit_code == 2, other.output
    assert other.stderr.strip() == (f"Error: {out}: already holds the output of other arguments (--seed 0 vs 1); "
                                    "pass --overwrite to replace it")
