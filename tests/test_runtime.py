"""The runtime on the tiny bundle: dense = per patch, heads, zarr round trip, README example, no torch, threads."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import brainrt
from brainrt.errors import BrainrtError
from brainrt.geometry import grid_shape
from conftest import ROOT

TOL = 1e-4


def _pair(image, bundle, stride, **kw):
    """Features of ``image`` by the per-patch and the dense path."""
    a = brainrt.featurize(image, bundle, stride=stride, method="patch", **kw)
    b = brainrt.featurize(image, bundle, stride=stride, method="dense", **kw)
    assert a.stats["method"] == "patch" and b.stats["method"] == "dense"
    return a, b


def _assert_same_grid(a, b, tol=TOL):
    assert a.features.shape == b.features.shape
    np.testing.assert_array_equal(a.valid, b.valid)
    assert np.abs(np.asarray(a.features) - np.asarray(b.features)).max() <= tol
    assert a.valid.any()
    assert not np.asarray(a.features)[~a.valid].any()  # zeros off tissue


# Small strides evaluate many patches on the per-patch path (about 2,000/s on 2 cores), so
# they run on crops of the slice; the crops start at row 0 to keep some background.
DENSE_CASES = [
    (1, (slice(0, 64), slice(200, 272)), "all"),
    (2, (slice(0, 96), slice(100, 260)), None),
    (4, (slice(0, 192), slice(0, 288)), None),
    (8, (slice(None), slice(None)), None),
    (16, (slice(None), slice(None)), None),
    (32, (slice(None), slice(None)), None),
    # strides no dense graph has: the graph of the largest dense stride dividing them, subsampled
    (3, (slice(0, 96), slice(0, 480)), None),  # stride 1, every 3rd position; 4 tiles across
    (5, (slice(0, 160), slice(100, 460)), None),  # stride 1, every 5th; 3 tiles across
    (6, (slice(0, 96), slice(None)), None),  # stride 2, every 3rd; 2 tiles across
    (12, (slice(None), slice(None)), None),  # stride 4
    (24, (slice(None), slice(None)), None),  # stride 8
    (48, (slice(None), slice(None)), None),  # stride 16
]


@pytest.mark.parametrize(("stride", "crop", "tissue"), DENSE_CASES, ids=[f"stride{c[0]}" for c in DENSE_CASES])
def test_dense_equals_per_patch(tiny_bundle, synthetic_slice, stride, crop, tissue):
    image = synthetic_slice.image[crop]
    a, b = _pair(image, tiny_bundle, stride, tissue=tissue)
    assert a.features.shape == (*grid_shape(image.shape, stride), 64)
    _assert_same_grid(a, b)


@pytest.mark.parametrize("stride", [4, 8, 16])
def test_dense_equals_per_patch_on_odd_sizes(tiny_bundle, synthetic_slice, stride):
    image = synthetic_slice.image[40:341, 70:507]  # 301 x 437
    assert image.shape == (301, 437)
    if stride == 4:
        image = image[:101, :137]
    a, b = _pair(image, tiny_bundle, stride)
    assert a.features.shape[:2] == (-(-image.shape[0] // stride), -(-image.shape[1] // stride))
    _assert_same_grid(a, b)


def _as_dtype(image, dtype):
    if dtype == "uint16":
        return image.astype(np.uint16) * np.uint16(257)  # the same intensities on 16 bits
    return (image / np.float32(255)).astype(np.float32)


@pytest.mark.parametrize("dtype", ["uint16", "float32"])
def test_other_dtypes_give_the_uint8_features(tiny_bundle, synthetic_slice, dtype):
    image8 = synthetic_slice.image[40:341, 70:507]
    image = _as_dtype(image8, dtype)
    # pixel-type scaling alone (standardization of float images bins their histogram: tested elsewhere)
    ref = brainrt.featurize(image8, tiny_bundle, stride=16, method="dense", standardize=False)
    a, b = _pair(image, tiny_bundle, 16, standardize=False)
    _assert_same_grid(a, b)
    np.testing.assert_array_equal(ref.valid, a.valid)
    assert np.abs(ref.features - a.features).max() <= TOL


def test_auto_picks_dense_where_subsampling_is_cheaper(tiny_bundle, synthetic_slice):
    from brainrt.geometry import DENSE_MAX_SUBSAMPLE

    image = synthetic_slice.image[:160, :200]
    for s in (1, 3, 5, 6, 8, 12, 16, 32, 48, 80):
        assert brainrt.featurize(image, tiny_bundle, stride=s).stats["method"] == "dense", s
    slow = 7  # every 7th stride-1 position: 49 positions per cell
    assert slow > DENSE_MAX_SUBSAMPLE
    auto = brainrt.featurize(image, tiny_bundle, stride=slow)
    assert auto.stats["method"] == "patch"
    patch = brainrt.featurize(image, tiny_bundle, stride=slow, method="patch")
    np.testing.assert_array_equal(auto.features, patch.features)
    forced = brainrt.featurize(image, tiny_bundle, stride=slow, method="dense")  # allowed, exact, slower
    _assert_same_grid(patch, forced)


def test_dense_needs_dense_graphs(tiny_bundle, synthetic_slice):
    from brainrt.plan import resolve_method

    assert resolve_method("auto", 3, (), "featurize") == "patch"
    with pytest.raises(BrainrtError, match="no dense graphs"):
        resolve_method("dense", 3, (), "featurize")
    assert resolve_method("patch", 4, (1, 2, 4), "featurize") == "patch"


@pytest.mark.parametrize(("kw", "match"), [
    (dict(stride=0), "'stride' parameter"),
    (dict(stride=-3), "'stride' parameter"),
    (dict(stride=2.5), "'stride' parameter"),
    (dict(method="fast"), "'method' parameter"),
    (dict(tissue="most"), "'tissue' parameter"),
])
def test_bad_parameters(tiny_bundle, synthetic_slice, kw, match):
    with pytest.raises(BrainrtError, match=match):
        brainrt.featurize(synthetic_slice.image, tiny_bundle, **kw)


# --------------------------------------------------------------------------- heads
@pytest.fixture(scope="module")
def grid16(tiny_bundle, synthetic_slice):
    return brainrt.featurize(synthetic_slice.image, tiny_bundle, stride=16)


def test_grid_geometry(grid16, tiny_bundle, synthetic_slice):
    assert grid16.shape == (24, 36)
    assert grid16.features.shape == (24, 36, 64) and grid16.features.dtype == np.float32
    assert grid16.image_shape == synthetic_slice.image.shape
    assert grid16.stride == 16 and grid16.patch_size == 64
    assert grid16.model_id == tiny_bundle.model_id and len(grid16.model_id) == 12
    assert 0.5 < grid16.valid.mean() < 1.0  # the background on top and right is left out


@pytest.mark.parametrize("head", [None, "logreg", "rbfsvm", "cnn", "linsvm"])
def test_classify(grid16, tiny_bundle, head):
    res = brainrt.classify(grid16, tiny_bundle, head=head)
    K = len(tiny_bundle.class_names)
    assert res.labels.shape == grid16.shape and res.labels.dtype == np.int16
    assert (res.labels[~grid16.valid] == -1).all()
    assert ((res.labels[grid16.valid] >= 0) & (res.labels[grid16.valid] < K)).all()
    assert res.names == tiny_bundle.class_names and res.codes == [1, 2, 3, 4]
    if head == "linsvm":
        assert res.probabilities is None
    else:
        p = res.probabilities
        assert p.shape == (*grid16.shape, K) and p.dtype == np.float32
        assert ((p >= 0) & (p <= 1)).all()
        np.testing.assert_allclose(p[grid16.valid].sum(-1), 1.0, atol=1e-5)
        assert not p[~grid16.valid].any()
        np.testing.assert_array_equal(p[grid16.valid].argmax(-1), res.labels[grid16.valid])


@pytest.mark.parametrize(("head", "match"), [("gmm", "not a classifier"), ("nosuch", "no head 'nosuch'")])
def test_classify_bad_head(grid16, tiny_bundle, head, match):
    with pytest.raises(BrainrtError, match=match):
        brainrt.classify(grid16, tiny_bundle, head=head)


def test_classify_refuses_features_of_another_model(grid16, tiny_bundle):
    import dataclasses

    other = dataclasses.replace(grid16, model_id="0123456789ab")
    with pytest.raises(BrainrtError, match="0123456789ab"):
        brainrt.classify(other, tiny_bundle)


def test_cluster(grid16, tiny_bundle):
    clusters, loglik = brainrt.cluster(grid16, tiny_bundle)
    K = len(tiny_bundle.class_names)
    n_comp = tiny_bundle.head("gmm")[-1].n_components
    assert clusters.shape == grid16.shape and clusters.dtype == np.int16
    assert (clusters[~grid16.valid] == -1).all()
    assert ((clusters[grid16.valid] >= 0) & (clusters[grid16.valid] < n_comp)).all()
    assert loglik.shape == (*grid16.shape, K) and loglik.dtype == np.float32
    assert np.isnan(loglik[~grid16.valid]).all()
    trained = tiny_bundle.head("area_density").classes_  # areas with training patches
    assert np.isfinite(loglik[grid16.valid][:, trained]).all()
    untrained = np.setdiff1d(np.arange(K), trained)  # classes without training patches, if any
    assert np.isnan(loglik[..., untrained]).all()


def test_heads_cover_classes_without_training_patches(grid16, tiny_bundle):
    """A class with no training patch (too narrow for strict patches) has no column in a
    scikit-learn head; classify gives it probability 0 and cluster a NaN log-likelihood."""
    import dataclasses

    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from brainrt.densities import AreaDensity

    f = grid16.features[grid16.valid]
    y = np.where(np.arange(len(f)) % 2 == 0, 0, 2)  # only classes 0 and 2 of 4
    heads = {**tiny_bundle.heads, "logreg": make_pipeline(StandardScaler(), LogisticRegression()).fit(f, y),
             "area_density": AreaDensity().fit(f, y)}
    partial = dataclasses.replace(tiny_bundle, heads=heads)
    res = brainrt.classify(grid16, partial)
    assert res.probabilities.shape == (*grid16.shape, 4)
    assert not res.probabilities[..., [1, 3]].any()
    np.testing.assert_allclose(res.probabilities[grid16.valid].sum(-1), 1.0, atol=1e-5)
    assert set(np.unique(res.labels[grid16.valid]).tolist()) <= {0, 2}
    _, loglik = brainrt.cluster(grid16, partial)
    assert np.isnan(loglik[..., [1, 3]]).all()
    assert np.isfinite(loglik[grid16.valid][:, [0, 2]]).all()


def test_subdivide(grid16, tiny_bundle):
    labels = brainrt.classify(grid16, tiny_bundle).labels
    area = np.bincount(labels[labels >= 0]).argmax()
    region = labels == area
    sub = brainrt.subdivide(grid16, region=region, k=3)
    assert sub.shape == grid16.shape and sub.dtype == np.int16
    assert (sub[~region] == -1).all()
    assert sorted(np.unique(sub[region]).tolist()) == [0, 1, 2]
    np.testing.assert_array_equal(brainrt.subdivide(grid16, region=region, k=3), sub)  # seeded, stable
    with pytest.raises(BrainrtError, match="fewer than k=3"):
        brainrt.subdivide(grid16, region=np.zeros(grid16.shape, bool), k=3)


def test_upsample_convention(grid16):
    labels = np.arange(np.prod(grid16.shape)).reshape(grid16.shape)
    full = brainrt.upsample(labels, 16, grid16.image_shape)
    assert full.shape == grid16.image_shape
    assert full[37, 101] == labels[37 // 16, 101 // 16]


# --------------------------------------------------------------------------- zarr
def test_zarr_roundtrip_equals_in_memory(tiny_bundle, synthetic_slice, tmp_path, grid16):
    out = tmp_path / "slice.features.zarr"
    written = brainrt.featurize(synthetic_slice.image, tiny_bundle, stride=16, out=out)
    assert out.is_dir()
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temp folder left behind
    loaded = brainrt.load_features(out)
    for g in (written, loaded):
        np.testing.assert_array_equal(np.asarray(g.features[:]), grid16.features)
        np.testing.assert_array_equal(g.valid, grid16.valid)
    assert (loaded.stride, loaded.patch_size, loaded.image_shape, loaded.model_id) == (
        16, 64, grid16.image_shape, tiny_bundle.model_id)
    a = brainrt.classify(loaded, tiny_bundle)
    b = brainrt.classify(grid16, tiny_bundle)
    np.testing.assert_array_equal(a.labels, b.labels)
    # overwriting in place works and leaves no temp folder either
    brainrt.featurize(synthetic_slice.image, tiny_bundle, stride=32, out=out)
    assert brainrt.load_features(out).stride == 32
    assert [p.name for p in tmp_path.iterdir()] == [out.name]


def test_load_features_refuses_other_folders(tmp_path):
    (tmp_path / "x.zarr").mkdir()
    with pytest.raises(BrainrtError, match=r"x\.zarr: cannot open as a brainrt feature grid"):
        brainrt.load_features(tmp_path / "x.zarr")
    with pytest.raises(BrainrtError, match="nosuch"):
        brainrt.load_features(tmp_path / "nosuch.zarr")


# --------------------------------------------------------------------------- README example
#: The README's Python example, verbatim; one test swaps in the tiny bundle, one runs it as it is from the clone.
def _readme_python_block():
    """The README's embedding example: its first ```python block."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start = text.index("```python\n") + len("```python\n")
    return text[start : text.index("```", start)]


README_EXAMPLE = _readme_python_block()


def readme_example(bundle_path):
    """README_EXAMPLE with its bundle path replaced."""
    assert README_EXAMPLE.count('"models/slice309-paper6"') == 1
    return README_EXAMPLE.replace('"models/slice309-paper6"', repr(str(bundle_path)))


def test_readme_example(tiny_bundle_path, capsys):
    namespace = {}
    exec(compile(readme_example(tiny_bundle_path), "README.md", "exec"), namespace)
    grid, xy, embedding = namespace["grid"], namespace["xy"], namespace["embedding"]
    n = int(grid.valid.sum())
    assert embedding.shape == (n, 64) and xy.shape == (n, 2)
    assert namespace["areas"].labels.shape == grid.shape
    assert "(24, 36, 64)" in capsys.readouterr().out


def test_readme_example_runs_as_it_is_from_the_clone(shipped_bundle_path):
    """Issue 19: it read slice309.tif from the root, which a clone does not have."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": os.pathsep.join(
        [str(root / "runtime"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", README_EXAMPLE], cwd=root, capture_output=True, text=True,
                          timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "(24, 36, 64)" in proc.stdout


# --------------------------------------------------------------------------- no torch
def test_runtime_does_not_import_torch(tiny_bundle_path, slice_tif, tmp_path):
    """Nor the trainer: a session of the API and of the runtime CLI leaves torch, onnx and brainrt_train unimported."""
    code = textwrap.dedent(f"""
        import sys
        import brainrt, brainrt.api, brainrt.cli, brainrt.outputs
        from brainrt.synth import make_slice
        from click.testing import CliRunner
        bundle = brainrt.Bundle.load({str(tiny_bundle_path)!r})
        image = make_slice((192, 256), seed=3).image
        grid = brainrt.featurize(image, bundle, stride=16)
        dense_grid = brainrt.featurize(image, bundle, stride=8, method="dense")
        res = brainrt.classify(grid, bundle)
        brainrt.cluster(grid, bundle)
        assert res.labels.shape == grid.shape
        cli = CliRunner().invoke(brainrt.cli.main, ["-q", "classify", {str(slice_tif)!r}, "-m", {str(tiny_bundle_path)!r},
                                                    "-o", {str(tmp_path / "x.labels.ome.tif")!r}])
        assert cli.exit_code == 0, cli.output
        leaked = sorted(m for m in ("torch", "onnx", "brainrt_train") if m in sys.modules)
        assert not leaked, leaked
        print("ok")
    """)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("ok")


# --------------------------------------------------------------------------- threads
@pytest.mark.parametrize("method", ["patch", "dense"])
def test_threads_share_one_bundle(tiny_bundle_path, synthetic_slice, method):
    bundle = brainrt.Bundle.load(tiny_bundle_path)  # fresh: the dense session is created under contention
    image = synthetic_slice.image[:, :288]
    stride = 8
    ref = brainrt.featurize(image, brainrt.Bundle.load(tiny_bundle_path), stride=stride, method=method)

    def run(_):
        g = brainrt.featurize(image, bundle, stride=stride, method=method)
        return g.features, brainrt.classify(g, bundle).labels

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(run, range(4)))
    ref_labels = brainrt.classify(ref, bundle).labels
    for feats, labels in results:
        np.testing.assert_array_equal(feats, ref.features)
        np.testing.assert_array_equal(labels, ref_labels)


def test_logistic_heads_run_as_one_float32_affine_map(tiny_bundle, synthetic_slice):
    """The logreg head (StandardScaler + multinomial LogisticRegression) folded into float32 weights gives
    scikit-learn's probabilities; other heads keep their own predict_proba."""
    from brainrt.heads import float32_proba

    grid = brainrt.featurize(synthetic_slice.image, tiny_bundle, stride=16)
    x = grid.features[grid.valid]
    model = tiny_bundle.head("logreg")
    fast = float32_proba(model)
    want = model.predict_proba(x)
    got = fast(x)
    assert got.dtype == np.float32 and got.shape == want.shape == (len(x), len(model.classes_))
    assert np.abs(got - want).max() <= 1e-5
    assert (got.argmax(1) == want.argmax(1)).all()
    assert float32_proba(tiny_bundle.head("rbfsvm")) is None


def test_auto_precision_is_int8_where_the_cpu_has_vnni(tiny_bundle, synthetic_slice, monkeypatch, caplog):
    import logging

    import brainrt.sessions
    from brainrt.plan import make_plan

    assert "int8" in tiny_bundle.manifest.precisions
    image = synthetic_slice.image[:160, :200]
    with caplog.at_level(logging.INFO, logger="brainrt"):
        assert make_plan(image, tiny_bundle, stride=16).precision == "fp32"  # conftest: a CPU without VNNI
        assert "precision fp32 (this CPU has no VNNI)" in caplog.text
        monkeypatch.setattr(brainrt.sessions, "cpu_has_vnni", lambda: True)
        assert make_plan(image, tiny_bundle, stride=16).precision == "int8"
        assert "precision int8: the bundle has int8 graphs and this CPU has VNNI" in caplog.text
    assert make_plan(image, tiny_bundle, stride=16, precision="fp32").precision == "fp32"
    g = brainrt.featurize(image, tiny_bundle, stride=16)
    assert g.stats["precision"] == "int8"
    demo = brainrt.Bundle.load(ROOT / "models" / "synthetic-demo")  # exported before int8 existed
    assert "int8" not in demo.manifest.precisions
    assert make_plan(image, demo, stride=16).precision == "fp32"


def test_streamed_probabilities_equal_the_in_memory_ones(tiny_bundle, synthetic_slice, tmp_path):
    """classify_plan with ``probabilities=`` writes them band by band (never the whole grid in memory):
    the same labels, and the file holds the in-memory probabilities exactly; an aborted run leaves nothing."""
    import tifffile

    from brainrt.api import classify_plan
    from brainrt.io import OmeTiffBands
    from brainrt.plan import make_plan

    plan = make_plan(synthetic_slice.image, tiny_bundle, stride=2)  # 1.17 um x 2: smoothing spans bands
    mem = classify_plan(plan, tiny_bundle, smooth=30.0)
    out = tmp_path / "p.ome.tif"
    streamed = classify_plan(plan, tiny_bundle, smooth=30.0, probabilities=out)
    assert streamed.probabilities is None and streamed.grid.stats["probabilities"] == str(out)
    np.testing.assert_array_equal(streamed.labels, mem.labels)
    with tifffile.TiffFile(out) as tif:
        assert tif.series[0].axes == "CYX"
        np.testing.assert_array_equal(tif.asarray(), np.moveaxis(mem.probabilities, -1, 0))
    w = OmeTiffBands(tmp_path / "q.ome.tif", (2, 4, 5), np.float32, pixel_size_um=1.0)
    w.write(0, np.ones((2, 5, 2), np.float32))
    w.abort()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.ome.tif"]
