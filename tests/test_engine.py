"""The engine on the tiny bundle: dense == per patch at every stride, pixel types, method choice."""

from __future__ import annotations

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


def _as_dtype(image, dtype):
    if dtype == "uint16":
        return image.astype(np.uint16) * np.uint16(257)  # the same intensities on 16 bits
    return (image / np.float32(255)).astype(np.float32)


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
    from brainrt.engine.plan import resolve_method

    assert resolve_method("auto", 3, (), "featurize") == "patch"
    with pytest.raises(BrainrtError, match="no dense graphs"):
        resolve_method("dense", 3, (), "featurize")
    assert resolve_method("patch", 4, (1, 2, 4), "featurize") == "patch"


def test_grid_geometry(grid16, tiny_bundle, synthetic_slice):
    assert grid16.shape == (24, 36)
    assert grid16.features.shape == (24, 36, 64) and grid16.features.dtype == np.float32
    assert grid16.image_shape == synthetic_slice.image.shape
    assert grid16.stride == 16 and grid16.patch_size == 64
    assert grid16.model_id == tiny_bundle.model_id and len(grid16.model_id) == 12
    assert 0.5 < grid16.valid.mean() < 1.0  # the background on top and right is left out


def test_upsample_convention(grid16):
    labels = np.arange(np.prod(grid16.shape)).reshape(grid16.shape)
    full = brainrt.upsample(labels, 16, grid16.image_shape)
    assert full.shape == grid16.image_shape
    assert full[37, 101] == labels[37 // 16, 101 // 16]


def test_auto_precision_is_int8_where_the_cpu_has_vnni(tiny_bundle, synthetic_slice, monkeypatch, caplog):
    import logging

    import brainrt.model.sessions
    from brainrt.engine.plan import make_plan

    assert "int8" in tiny_bundle.manifest.precisions
    image = synthetic_slice.image[:160, :200]
    with caplog.at_level(logging.INFO, logger="brainrt"):
        assert make_plan(image, tiny_bundle, stride=16).precision == "fp32"  # conftest: a CPU without VNNI
        assert "precision fp32 (this CPU has no VNNI)" in caplog.text
        monkeypatch.setattr(brainrt.model.sessions, "cpu_has_vnni", lambda: True)
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
    from brainrt.engine.plan import make_plan
    from brainrt.outputs.ome_tiff import OmeTiffBands

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


def test_a_classification_that_fails_before_its_first_block_leaves_no_file(tiny_bundle, synthetic_slice, tmp_path,
                                                                            monkeypatch):
    """The streamed probabilities and uncertainty are laid out before the map's sink exists: a failure in
    between (here the sink's construction) removes both temporary files, as a failure in the loop does."""
    from brainrt import api
    from brainrt.engine.plan import make_plan

    plan = make_plan(synthetic_slice.image, tiny_bundle, stride=16)

    def no_sink(*args, **kwargs):
        raise MemoryError("no room for the map")

    monkeypatch.setattr(api, "ClassifySink", no_sink)
    try:
        api.classify_plan(plan, tiny_bundle, probabilities=tmp_path / "p.ome.tif", uncertainty=tmp_path / "u.ome.tif")
    except MemoryError:  # removed by the time the caller sees the error (not when the traceback is collected)
        assert list(tmp_path.iterdir()) == []
    else:
        pytest.fail("the sink's failure was swallowed")


def test_tile_columns_are_even_and_cover_the_grid():
    """No narrow last tile (a tile's halo costs the same whatever its width): 1024 cells in tiles of at
    most 160 were 6 x 160 + 64, now 7 tiles of 147 or fewer."""
    from brainrt.engine.loop import _tile_columns

    for cols, most in ((1024, 160), (5805, 320), (160, 160), (1, 160), (161, 160), (333, 7)):
        cuts = _tile_columns(cols, most)
        widths = [b - a for a, b in cuts]
        assert cuts[0][0] == 0 and cuts[-1][1] == cols and all(b == c for (_, b), (c, _) in zip(cuts, cuts[1:]))
        assert max(widths) <= most and len(cuts) == -(-cols // most)
        assert max(widths) - min(widths) <= len(cuts), (cols, most, widths)  # at most a few cells apart
    assert [b - a for a, b in _tile_columns(1024, 160)] == [147] * 6 + [142]


class _Shapes:
    """A predictor that notes the output shape of every tile it maps."""

    def __init__(self, inner):
        self.inner, self.shapes = inner, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __call__(self, tile):
        out = self.inner(tile)
        self.shapes.append(out.shape[1:])
        return out


def test_int8_tiles_are_wider_than_high_and_give_the_per_patch_features(tiny_bundle, synthetic_slice, monkeypatch):
    """int8 tiles are up to DENSE_WIDTH_FACTOR["int8"] (2) times as wide as high (im2col bytes are a quarter
    of fp32's; wider tiles share the convolutions' halo): the features are still those of the per-patch
    int8 graph, exactly; fp32 tiles stay square."""
    from brainrt.engine import loop
    from brainrt.engine.plan import make_plan
    from brainrt.outputs.sinks import ArraySink

    monkeypatch.setattr(loop, "DENSE_MAX_OUT", 12)  # many small tiles on a small crop
    image = synthetic_slice.image[:96, :220]
    for precision, factor in (("int8", 2), ("fp32", 1)):
        plan = make_plan(image, tiny_bundle, stride=2, method="dense", precision=precision, tissue="all")
        pred = _Shapes(tiny_bundle.predictor_for(plan))
        grid = loop.run(plan, pred, ArraySink.features(plan.shape, tiny_bundle.manifest.n_features))
        _, rows = loop.dense_geometry(plan.stride, pred)
        widths = {b - a for a, b in loop._tile_columns(plan.shape[1], factor * rows)}
        assert {s[0] for s in pred.shapes} == {rows} and {s[1] for s in pred.shapes} == widths, pred.shapes
        assert max(widths) > rows if factor > 1 else max(widths) <= rows
        if precision == "int8":
            patch = brainrt.featurize(image, tiny_bundle, stride=2, method="patch", precision="int8", tissue="all")
            np.testing.assert_array_equal(grid, patch.features)


def test_blocks_and_tiles_are_cut_evenly(tiny_bundle, synthetic_slice, monkeypatch):
    """Blocks of rows and tiles across are as even as whole cells allow (they were tile-sized with a narrow
    remainder, whose halo costs as much as a full tile's); the features do not depend on the cuts."""
    from brainrt.engine import loop
    from brainrt.engine.plan import make_plan
    from brainrt.outputs.sinks import ArraySink

    image = synthetic_slice.image[:100, :220]
    plan = make_plan(image, tiny_bundle, stride=2, method="dense", tissue="all")
    whole = brainrt.featurize(image, tiny_bundle, stride=2, method="dense", tissue="all").features
    monkeypatch.setattr(loop, "DENSE_MAX_OUT", 12)  # grid 50 x 110: blocks of 10 rows, tiles of 11 cells
    spans, sink = [], ArraySink.features(plan.shape, tiny_bundle.manifest.n_features)
    grid = loop.run(plan, tiny_bundle.predictor_for(plan), sink, on_block=lambda b, m: spans.append((b.r0, b.r1)))
    assert [b - a for a, b in spans] == [10] * 5, spans
    np.testing.assert_allclose(grid, whole, atol=TOL)
