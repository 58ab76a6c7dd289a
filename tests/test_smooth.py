"""Smoothing of class maps: the naive twin, streamed == whole grid."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter1d

from brainrt.maps.smooth import RowSmoother, smooth_probabilities


def naive_smooth(prob, valid, sigma, space):
    """Normalized Gaussian convolution over tissue cells with scipy, in float64."""
    s = np.log(np.maximum(prob, 1e-6)) if space == "log" else prob.astype(np.float64)
    s = np.where(valid[..., None], s, 0)

    def g(a):
        a = gaussian_filter1d(a, sigma, axis=0, mode="constant", truncate=4.0)
        return gaussian_filter1d(a, sigma, axis=1, mode="constant", truncate=4.0)

    with np.errstate(invalid="ignore", divide="ignore"):
        out = g(s) / g(valid.astype(np.float64))[..., None]
        if space == "log":
            out = np.exp(out - out.max(-1, keepdims=True))
        out = out / out.sum(-1, keepdims=True)
    return np.where(valid[..., None], out, 0)


GRIDS = [((37, 23, 5), 1.7), ((5, 40, 3), 2.0), ((60, 7, 4), 0.6), ((3, 3, 2), 3.0), ((19, 31, 6), 4.0),
         ((24, 400, 6), 5.0)]  # the last: rows longer than one column chunk of the row filter


@pytest.mark.parametrize("shape, sigma", GRIDS)
@pytest.mark.parametrize("space", ["log", "prob"])
def test_smoothing_matches_the_naive_twin(shape, sigma, space):
    rng = np.random.default_rng(0)
    prob = rng.dirichlet(np.ones(shape[2]), size=shape[:2]).astype(np.float32)
    valid = rng.random(shape[:2]) > 0.2
    got = smooth_probabilities(prob, valid, sigma, space=space)
    ref = naive_smooth(prob, valid, sigma, space)
    np.testing.assert_allclose(got[valid], ref[valid], atol=1e-5)
    assert (got[~valid] == 0).all()
    np.testing.assert_allclose(got[valid].sum(-1), 1, atol=1e-5)


@pytest.mark.parametrize("shape, sigma", GRIDS)
@pytest.mark.parametrize("block", [1, 2, 5, 11, 1000])
def test_streamed_smoothing_equals_whole_grid_smoothing(shape, sigma, block):
    rng = np.random.default_rng(1)
    prob = rng.dirichlet(np.ones(shape[2]), size=shape[:2]).astype(np.float32)
    valid = rng.random(shape[:2]) > 0.3
    whole = smooth_probabilities(prob, valid, sigma)
    sm, out = RowSmoother(sigma), []
    for y in range(0, shape[0], block):
        out += list(sm.push(prob[y : y + block], valid[y : y + block]))
    out += list(sm.flush())
    streamed = np.concatenate(out)
    assert streamed.shape == whole.shape
    assert np.array_equal(streamed, whole)  # bit for bit


def test_smoothing_removes_isolated_errors_and_keeps_off_tissue_at_zero():
    prob = np.zeros((20, 20, 2), np.float32)
    prob[..., 0] = 0.9
    prob[..., 1] = 0.1
    prob[10, 10] = (0.2, 0.8)  # one wrong cell
    valid = np.ones((20, 20), bool)
    valid[:, 15:] = False
    out = smooth_probabilities(prob, valid, 2.0)
    assert out[10, 10].argmax() == 0
    assert (out[:, 15:] == 0).all()
    assert smooth_probabilities(prob, valid, 0)[10, 10].argmax() == 1  # sigma 0: unchanged


class _Bands:
    """A band writer that keeps what it is given, where it is given."""

    def __init__(self, shape):
        self.out, self.rows = np.full(shape, np.nan, np.float32), []

    def write(self, y0, band):
        self.rows.append((y0, len(band)))
        self.out[y0 : y0 + len(band)] = band


@pytest.mark.parametrize("sigma", [0.0, 2.0])
@pytest.mark.parametrize("block", [1, 7, 1000])
def test_a_slice_map_is_the_whole_grid_map_however_its_rows_arrive(sigma, block):
    """SliceMap (the one finishing path of 2D and volumes): rows pushed in any blocks give the whole grid's
    regularized probabilities (0 off tissue) and their argmax labels (-1 off tissue), in memory or handed to a
    writer band after band, each row once and in order."""
    from brainrt.maps.slicemap import SliceMap

    rng = np.random.default_rng(2)
    prob = rng.dirichlet(np.ones(4), size=(33, 21)).astype(np.float32)
    valid = rng.random((33, 21)) > 0.3
    prob[~valid] = 0
    want = smooth_probabilities(prob, valid, sigma)
    kept, writer = SliceMap(valid, 4, sigma=sigma), _Bands(prob.shape)
    written = SliceMap(valid, 4, sigma=sigma, writer=writer)
    for y in range(0, 33, block):
        kept.push(prob[y : y + block])
        written.push(prob[y : y + block])
    labels, probs = kept.close()
    assert np.array_equal(probs, want)  # bit for bit
    assert np.array_equal(labels, np.where(valid, want.argmax(-1), -1)) and labels.dtype == np.int16
    labels_w, none = written.close()
    assert none is None and np.array_equal(labels_w, labels) and np.array_equal(writer.out, want)
    starts = [y for y, _ in writer.rows]
    assert starts == sorted(starts) and sum(n for _, n in writer.rows) == 33 and starts[0] == 0


def test_smoothing_asked_of_a_head_without_probabilities_is_warned_about(tiny_bundle, synthetic_slice, caplog):
    """``--smooth`` with a labels-only head (linsvm) cannot be done: a warning naming the option when it was asked
    for, only a log line when it is the bundle's default; the map is the head's labels either way."""
    import logging

    import brainrt

    runs = {}
    for smooth in (30.0, None):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="brainrt"):
            runs[smooth] = brainrt.classify_image(synthetic_slice.image, tiny_bundle, stride=32, head="linsvm",
                                                  smooth=smooth)
        warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert warned == (["--smooth 30: no smoothing: this head gives no class probabilities"] if smooth else [])
    np.testing.assert_array_equal(runs[30.0].labels, runs[None].labels)
