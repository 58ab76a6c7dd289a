"""Map regularization (streamed smoothing == whole-grid smoothing) and intensity standardization."""

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter1d

from brainrt.intensity import N_QUANTILES, fit_map, tissue_quantiles
from brainrt.smooth import RowSmoother, smooth_probabilities


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


def _slice(rng, levels=19, shape=(300, 400)):
    img = np.zeros(shape, np.uint8)
    tissue = rng.normal(140, 25, size=(shape[0], shape[1] - 100))
    img[:, 100:] = np.clip(tissue, 60, 255)
    img[:, :100] = rng.integers(0, 20, size=(shape[0], 100))
    step = 256 // levels
    return (img // step * step).astype(np.uint8)


def test_a_slice_mapped_onto_its_own_quantiles_is_unchanged():
    img = _slice(np.random.default_rng(0))
    q = tissue_quantiles([(img, 40)])
    assert q.shape == (N_QUANTILES,) and q[0] >= 40 and np.all(np.diff(q) >= 0)
    out = fit_map(img, 40, q).apply(img)
    assert out.dtype == np.uint8
    # levels holding less than 1/1000 of the tissue fall between stored quantiles and may move
    assert (out == img).mean() > 0.995 and np.abs(out.astype(int) - img).mean() < 0.1


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_standardization_undoes_a_monotone_change_of_the_gray_levels(dtype):
    rng = np.random.default_rng(2)
    img = _slice(rng, levels=256)
    q = tissue_quantiles([(img, 40)])
    unit = img.astype(np.float64) / 255
    changed = (unit**0.7) * 0.8 + 0.1  # gamma, contrast and offset: another instrument
    if dtype == np.uint16:
        changed = np.round(1000 + changed * 100).astype(np.uint16)  # a tiny dynamic range
        threshold = 1000 + 0.1 * 100 + (40 / 255) ** 0.7 * 80
    elif dtype == np.uint8:
        changed = np.round(changed * 255).astype(np.uint8)
        threshold = (0.1 + (40 / 255) ** 0.7 * 0.8) * 255
    else:
        changed = changed.astype(np.float32)
        threshold = 0.1 + (40 / 255) ** 0.7 * 0.8
    back = fit_map(changed, threshold, q).apply(changed)
    tissue = img > 40
    before = np.abs(changed.astype(np.float64) - img)[tissue].mean() if dtype == np.uint8 else np.inf
    err = np.abs(back.astype(np.float64) - img)[tissue]
    assert err.mean() < (3.0 if dtype != np.uint16 else 4.0), err.mean()  # in 0..255 levels
    assert err.mean() < before
    assert back[~tissue].max() <= back[tissue].min()  # background stays below the tissue


def test_tissue_quantiles_refuse_mixed_types_and_empty_tissue():
    img = _slice(np.random.default_rng(0))
    with pytest.raises(ValueError, match="pixel type"):
        tissue_quantiles([(img, 40), (img.astype(np.uint16), 40)])
    with pytest.raises(ValueError, match="no tissue"):
        tissue_quantiles([(img, 255)])
