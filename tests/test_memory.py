"""Memory of the streaming whole-slice path (issue 21, item 3: a stride-1 slice in <= 1 GB).

Each test failed before its fix. Memory is checked by what is alive (weak references) and by
what NumPy allocates (tracemalloc), never by timing or by the process's RSS.
"""

from __future__ import annotations

import tracemalloc
import weakref

import numpy as np

from brainrt.engine.loop import run
from brainrt.engine.plan import make_plan
from brainrt.model.sessions import session_options
from brainrt.maps.pooling import radius
from brainrt.maps.smooth import RowSmoother, smooth_probabilities
from brainrt.outputs.sinks import Sink


class _Watch:
    """A predictor that notes, at every call, which blocks already handed to the sink are still alive."""

    def __init__(self, inner, handed):
        self.inner, self.handed, self.alive_at_calls = inner, handed, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __call__(self, *args):
        self.alive_at_calls.append(sum(ref() is not None for ref in self.handed))
        return self.inner(*args)


class _Forget(Sink):
    def __init__(self, handed):
        self.handed, self.n = handed, 0

    def put(self, block):
        self.handed.append(weakref.ref(block.features))
        self.n += 1


def test_the_loop_holds_no_block_while_the_next_is_computed(tiny_bundle, synthetic_slice):
    """A block is the sink's once handed over: the loop kept it while it computed the next one, so a
    stride-1 slice held two 238 MB feature blocks at a time."""
    for method, stride in (("dense", 1), ("patch", 8)):
        plan = make_plan(synthetic_slice.image, tiny_bundle, stride=stride, method=method, tissue="all",
                         batch_size=16)
        handed = []
        watch, sink = _Watch(tiny_bundle.predictor_for(plan), handed), _Forget(handed)
        run(plan, watch, sink)
        assert sink.n >= 3, (method, sink.n)
        assert max(watch.alive_at_calls) == 0, (method, watch.alive_at_calls)


def test_row_smoother_reuses_its_buffers(tiny_bundle):
    """Pushing a block into a running smoother allocates, besides the rows it emits, less than a quarter of
    the block's probabilities: the buffered rows are not copied into a new array per block, and the last
    steps work 32 rows at a time (it allocated about 6 blocks' worth per block)."""
    rng = np.random.default_rng(0)
    sigma, n, C, K = 5.0, 200, 500, 6
    sm = RowSmoother(sigma)
    blocks = [rng.dirichlet(np.ones(K), size=(n, C)).astype(np.float32) for _ in range(4)]
    valid = rng.random((n, C)) > 0.2
    out = [b for p in blocks[:2] for b in sm.push(p, valid)]  # warm: the buffers hold 2 r rows + a block
    tracemalloc.start()
    try:
        for p in blocks[2:]:
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
            new = list(sm.push(p, valid))
            extra = tracemalloc.get_traced_memory()[1] - base - sum(b.nbytes for b in new)  # besides its output
            assert extra < p.nbytes / 4, (extra, p.nbytes)
            out += new
    finally:
        tracemalloc.stop()
    out += list(sm.flush())
    assert radius(sigma) < n and max(len(b) for b in out) <= 32
    whole = smooth_probabilities(np.concatenate(blocks), np.concatenate([valid] * 4), sigma)
    assert np.concatenate(out).tobytes() == whole.tobytes()  # bit for bit


def test_a_smoother_that_knows_the_grid_height_holds_no_more_rows_than_the_grid():
    """At stride 1 the default 300 um kernel reaches past a slice's height (radius 1026 cells, slice309 is
    1420 rows): the buffers were sized 2 radius + a block, 2084 rows of a slice's width (338 MB where the
    grid's scores are 231 MB). Given the grid's ``rows`` they hold at most the grid; the same bits."""
    rng = np.random.default_rng(1)
    sigma, R, C, K, n = 40.0, 120, 50, 4, 16  # radius 160 > R
    prob = rng.dirichlet(np.ones(K), size=(R, C)).astype(np.float32)
    valid = rng.random((R, C)) > 0.1
    for rows, most in ((None, 2 * radius(sigma) + n), (R, R)):
        sm, out = RowSmoother(sigma, rows=rows), []
        for a in range(0, R, n):
            out += sm.push(prob[a : a + n], valid[a : a + n])
        assert len(sm.pooler._num) == most, (rows, len(sm.pooler._num))
        out += sm.flush()
        assert np.concatenate(out).tobytes() == smooth_probabilities(prob, valid, sigma).tobytes()


def test_sessions_run_without_the_memory_pattern():
    """onnxruntime's memory pattern planned a second block for a run's tensors on top of its arena: a
    stride-1 dense tile of the shipped bundle took 800 MB fp32 / 214 MB int8 with it, 432 / 125 MB
    without, at the same speed (measured; tools/bench_dense.py --whole-slice reports the peak RSS)."""
    opts = session_options(2)
    assert opts.enable_mem_pattern is False
    assert opts.enable_cpu_mem_arena is True  # without the arena a tile ran 10-20% slower


def test_a_classifier_sink_gets_blocks_of_head_values_not_features(tiny_bundle, synthetic_slice, monkeypatch):
    """The engine maps each tile through the sink's head as it stitches it (:class:`~brainrt.engine.loop.CellMap`):
    a classify block holds K probabilities per cell, not F features (at stride 1 a block of slice309 was
    238 MB of features beside the full smoothing buffer; its probabilities are 22 MB). The map is the one
    of the features' grid through the same head."""
    from brainrt.engine import loop
    from brainrt.heads import Classifier
    from brainrt.outputs.sinks import ArraySink, ClassifySink

    monkeypatch.setattr(loop, "DENSE_MAX_OUT", 24)  # several blocks and tiles
    plan = make_plan(synthetic_slice.image[:160, :300], tiny_bundle, stride=2, method="dense")
    pred, clf = tiny_bundle.predictor_for(plan), Classifier.of(tiny_bundle)
    shapes = []
    labels, probs = run(plan, pred, ClassifySink(clf, plan.valid), on_block=lambda b, m: shapes.append(b.features.shape))
    assert len(shapes) > 1 and {s[2:] for s in shapes} == {(clf.n_classes,)}, shapes
    features = run(plan, pred, ArraySink.features(plan.shape, tiny_bundle.manifest.n_features))
    want = clf.apply(features, plan.valid, pixel_size_um=1.17, stride=2)
    # float32 heads on tiles of other sizes than the whole grid's: onnxruntime / BLAS pick other kernels
    # (AVX-512 VNNI/BF16 EPYCs differ from others by up to 2.1e-6), so a few float32 ulps of the logits
    np.testing.assert_allclose(probs, want, rtol=1e-5, atol=1e-5)
    top2 = np.sort(want, axis=-1)[..., -2:]
    clear = plan.valid & (top2[..., 1] - top2[..., 0] > 1e-4)  # argmax is defined up to that noise
    assert clear.sum() > 0.9 * plan.valid.sum()
    assert np.array_equal(labels[clear], want.argmax(-1)[clear])
    assert np.all(labels[~plan.valid] == -1)
    head_labels = run(plan, pred, ArraySink(np.full(plan.shape, -1, np.int16), fn=lambda f: clf.fn(f).argmax(-1)))
    assert np.array_equal(head_labels, labels)  # an ArraySink of a head: its values where there is tissue




def test_a_saved_grid_streams_its_probabilities(tiny_bundle, tmp_path, monkeypatch):
    """A saved feature grid is classified by the slice's streaming path: with its probabilities going to their
    OME-TIFF, it never holds them whole (it held the grid's probabilities, their smoothing's whole-grid copies
    and their uncertainty), and the files hold what the in-memory classification gives."""
    import tifffile

    from brainrt import api
    from brainrt.engine.grid import FeatureGrid
    from brainrt.heads import apply as heads_apply

    monkeypatch.setattr(heads_apply, "HEAD_CHUNK", 2048)  # bands of 5 rows
    R, C, K = 600, 400, len(tiny_bundle.class_names)
    features = np.random.default_rng(0).standard_normal((R, C, tiny_bundle.n_features)).astype(np.float32)
    valid = np.ones((R, C), bool)
    valid[:, :40] = False
    grid = FeatureGrid(features, valid, 8, tiny_bundle.patch_size, (8 * R, 8 * C), tiny_bundle.model_id)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        streamed = api.classify_plan(grid, tiny_bundle, smooth=30, probabilities=tmp_path / "p.ome.tif",
                                     uncertainty=tmp_path / "u.ome.tif")
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert streamed.probabilities is None
    assert peak < R * C * K * 4 / 2, (peak, R * C * K * 4)  # less than half the grid's probabilities
    held = api.classify(grid, tiny_bundle, smooth=30)
    np.testing.assert_array_equal(streamed.labels, held.labels)
    np.testing.assert_array_equal(np.moveaxis(tifffile.imread(tmp_path / "p.ome.tif"), 0, -1), held.probabilities)
