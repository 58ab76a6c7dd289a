"""Fast patch and tile gathering (the private kernels and the public wrapper) against their naive twins, and the grid helpers."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from brainrt.errors import BrainrtError
from brainrt.geometry import grid_shape
from brainrt.engine.tiling import PAD_CODES, patches_kernel, tile_kernel, batches, gather_patches, grid_centres
from naive import gather_patches_naive, gather_tile_naive, grid_centres_naive

NORM = dict(scale=1.0 / 255.0, mean=0.45, std=0.225)


def make_image(shape, dtype, order, rng):
    """Random image of ``dtype`` in C or Fortran order."""
    if np.dtype(dtype).kind == "u":
        image = rng.integers(0, np.iinfo(dtype).max, size=shape, endpoint=True).astype(dtype)
    else:
        image = rng.normal(100.0, 40.0, size=shape).astype(dtype)
    return np.asfortranarray(image) if order == "F" else np.ascontiguousarray(image)


def edge_centres(shape, patch_size, rng, n=24):
    """Centres near, on and well outside every edge and corner, plus random ones."""
    h, w = shape
    ys = np.array([-patch_size, -1, 0, 1, h // 2, h - 2, h - 1, h, h + patch_size // 2, 3 * h + 5])
    xs = np.array([-2 * patch_size, -1, 0, 2, w // 2, w - 1, w, w + 1, w + patch_size])
    grid = np.stack(np.meshgrid(ys, xs, indexing="ij"), axis=-1).reshape(-1, 2)
    rand = np.stack([rng.integers(-h, 2 * h, n), rng.integers(-w, 2 * w, n)], axis=1)
    return np.concatenate([grid, rand]).astype(np.int64)


def compare(image, centres, patch_size, pad, cval=0.0, norm=NORM):
    n = len(centres)
    out = np.full((n + 3, 1, patch_size, patch_size), np.nan, dtype=np.float32)
    got = gather_patches(image, centres, patch_size, out, pad=pad, cval=cval, **norm)
    want = gather_patches_naive(
        image, centres, patch_size, np.empty_like(out), pad=pad, cval=cval, **norm
    )
    assert got.shape == (n, 1, patch_size, patch_size)
    assert n == 0 or np.shares_memory(got, out)
    np.testing.assert_array_equal(got, want)
    assert np.isnan(out[n:]).all()  # rows past n are left alone


@pytest.mark.parametrize("pad", ["reflect", "constant"])
@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize(
    ("shape", "patch_size"), [((37, 53), 16), ((130, 129), 33), ((1, 200), 16), ((37, 53), 128)]
)
def test_gather_matches_naive_at_edges(shape, patch_size, dtype, order, pad):
    rng = np.random.default_rng(0)
    image = make_image(shape, dtype, order, rng)
    compare(image, edge_centres(shape, patch_size, rng), patch_size, pad, cval=7.5)


@pytest.mark.parametrize("stride", [7, 16, 50])
def test_gather_grid_with_non_dividing_stride(stride):
    rng = np.random.default_rng(0)
    image = make_image((130, 129), np.uint8, "C", rng)
    centres, _ = grid_centres(grid_shape(image.shape, stride), stride)
    compare(image, centres, 33, "reflect")


def test_gather_float64_and_strided_views():
    rng = np.random.default_rng(0)
    base = make_image((80, 90), np.float64, "C", rng)
    centres = edge_centres((40, 30), 16, rng)
    compare(base, centres, 16, "reflect")
    compare(base[::2, ::3], centres, 16, "reflect")  # non-contiguous view, not copied
    compare(base[::2, ::3], centres, 16, "constant", cval=-3.0)


def test_gather_single_pixel_image():
    rng = np.random.default_rng(0)
    image = np.array([[200]], dtype=np.uint8)
    centres = np.array([[0, 0], [-5, 9], [3, -2]], dtype=np.int64)
    compare(image, centres, 16, "reflect")
    out = np.empty((3, 1, 16, 16), np.float32)
    got = gather_patches(image, centres, 16, out, scale=1.0, mean=0.0, std=1.0)
    assert (got == 200).all()
    assert rng is not None


def test_gather_values_and_empty():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (20, 20)).astype(np.uint8)
    out = np.zeros((1, 1, 4, 4), np.float32)
    got = gather_patches(image, np.array([[10, 10]]), 4, out, scale=2.0, mean=1.0, std=4.0)
    want = ((image[8:12, 8:12].astype(np.float64) * 2.0 - 1.0) / 4.0).astype(np.float32)
    np.testing.assert_array_equal(got[0, 0], want)
    empty = gather_patches(image, np.zeros((0, 2), np.int64), 4, out, **NORM)
    assert empty.shape == (0, 1, 4, 4)


@settings(max_examples=50, deadline=None)
@given(
    h=st.integers(1, 70),
    w=st.integers(1, 70),
    stride=st.integers(1, 40),
    patch_size=st.integers(1, 48),
    pad=st.sampled_from(["reflect", "constant"]),
    order=st.sampled_from(["C", "F"]),
    seed=st.integers(0, 2**16),
)
def test_grid_gather_property(h, w, stride, patch_size, pad, order, seed):
    rng = np.random.default_rng(seed)
    image = make_image((h, w), np.uint8, order, rng)
    gshape = grid_shape((h, w), stride)
    valid = rng.random(gshape) < 0.7
    centres, cells = grid_centres(gshape, stride, valid)
    want_centres, want_cells = grid_centres_naive(gshape, stride, valid)
    np.testing.assert_array_equal(centres, want_centres)
    np.testing.assert_array_equal(cells, want_cells)
    compare(image, centres, patch_size, pad, cval=1.0)


def test_grid_centres_all_cells():
    centres, cells = grid_centres((3, 4), 10)
    want_centres, want_cells = grid_centres_naive((3, 4), 10)
    assert centres.dtype == cells.dtype == np.int64
    np.testing.assert_array_equal(centres, want_centres)
    np.testing.assert_array_equal(cells, want_cells)
    assert tuple(centres[5]) == (15, 15)
    for shape in [(0, 4), (3, 0)]:
        c, k = grid_centres(shape, 10)
        assert c.shape == k.shape == (0, 2)


def test_batches():
    assert list(batches(10, 4)) == [(0, 4), (4, 8), (8, 10)]
    assert list(batches(8, 4)) == [(0, 4), (4, 8)]
    assert list(batches(0, 4)) == []
    with pytest.raises(BrainrtError):
        batches(10, 0)
    with pytest.raises(BrainrtError):
        batches(-1, 3)


def _call(image=None, centres=None, patch_size=8, out=None, **kw):
    image = np.zeros((10, 10), np.uint8) if image is None else image
    centres = np.zeros((2, 2), np.int64) if centres is None else centres
    out = np.zeros((2, 1, 8, 8), np.float32) if out is None else out
    kw = {**NORM, **kw}
    return gather_patches(image, centres, patch_size, out, **kw)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(image=np.zeros((4, 4, 3), np.uint8)),
        dict(image=np.zeros((4, 4), np.uint32)),  # signed types are read (issue 28); uint32 is not
        dict(image=np.zeros((0, 4), np.uint8)),
        dict(centres=np.zeros((2, 3), np.int64)),
        dict(centres=np.zeros((2, 2), np.float64)),
        dict(patch_size=0),
        dict(out=np.zeros((1, 1, 8, 8), np.float32)),
        dict(out=np.zeros((2, 1, 8, 8), np.float64)),
        dict(out=np.zeros((2, 1, 8, 9), np.float32)),
        dict(out=np.zeros((2, 1, 8, 8), np.float32, order="F")),
        dict(pad="edge"),
        dict(std=0.0),
        dict(scale=float("nan")),
    ],
)
def test_gather_errors(kwargs):
    with pytest.raises(BrainrtError) as info:
        _call(**kwargs)
    assert "\n" not in str(info.value)


def test_grid_centres_errors():
    with pytest.raises(BrainrtError):
        grid_centres((3, 4), 0)
    with pytest.raises(BrainrtError):
        grid_centres((3, 4), 2, valid=np.ones((4, 3), bool))
    with pytest.raises(BrainrtError):
        grid_centres((-1, 4), 2)


# --------------------------------------------------------------------------- the private kernels
def tile_origins(shape, tile, rng, n=4):
    """Top-left corners putting the tile inside, across every edge and corner, and far outside."""
    h, w = shape
    th, tw = tile
    ys = np.array([-2 * th, -1, 0, h // 2, h - th, h - 1, 2 * h + 3])
    xs = np.array([-tw - 5, -1, 0, w - tw, w - 2, w + tw])
    grid = np.stack(np.meshgrid(ys, xs, indexing="ij"), axis=-1).reshape(-1, 2)
    rand = np.stack([rng.integers(-2 * th, h + th, n), rng.integers(-2 * tw, w + tw, n)], axis=1)
    return [(int(y), int(x)) for y, x in np.concatenate([grid, rand])]


@pytest.mark.parametrize(("dtype", "order", "pad"), [(np.uint8, "C", "reflect"), (np.uint8, "C", "constant"),
                                                     (np.uint8, "F", "reflect"), (np.uint16, "C", "constant"),
                                                     (np.float32, "C", "reflect"), (np.float64, "C", "reflect")])
@pytest.mark.parametrize(("shape", "tile"), [((37, 53), (16, 16)), ((130, 129), (33, 70)), ((1, 200), (5, 9)),
                                             ((37, 53), (128, 118)), ((3, 2), (11, 13))])
def test_gather_tile_kernel_matches_naive(shape, tile, dtype, order, pad):
    """The dense path's kernel, called as the engine calls it: into a view of a larger buffer."""
    rng = np.random.default_rng(0)
    image = make_image(shape, dtype, order, rng)
    buf = np.full((tile[0] + 3, tile[1] + 5), np.nan, np.float32)
    out = buf[: tile[0], : tile[1]]
    for y0, x0 in tile_origins(shape, tile, rng):
        out[:] = np.nan
        tile_kernel(image, y0, x0, out, PAD_CODES[pad], NORM["scale"], NORM["mean"], NORM["std"], 7.5)
        want = gather_tile_naive(image, y0, x0, np.empty(tile, np.float32), pad=pad, cval=7.5, **NORM)
        np.testing.assert_array_equal(out, want, err_msg=f"origin {(y0, x0)}")
    assert np.isnan(buf[tile[0] :]).all() and np.isnan(buf[:, tile[1] :]).all()  # nothing outside the view


@pytest.mark.parametrize(("dtype", "order"), [(np.uint8, "C"), (np.uint16, "F"), (np.float64, "C")])
@pytest.mark.parametrize(("shape", "patch_size"), [((37, 53), 16), ((130, 129), 33), ((1, 200), 16)])
def test_gather_patches_kernel_matches_naive(shape, patch_size, dtype, order):
    """The per-patch path's kernel, called as the engine calls it: a batch buffer longer than the batch."""
    rng = np.random.default_rng(0)
    image = make_image(shape, dtype, order, rng)
    centres = edge_centres(shape, patch_size, rng)
    n = len(centres)
    buf = np.full((n + 4, 1, patch_size, patch_size), np.nan, np.float32)
    patches_kernel(image, centres, buf, PAD_CODES["reflect"], NORM["scale"], NORM["mean"], NORM["std"], 0.0)
    want = gather_patches_naive(image, centres, patch_size, np.empty_like(buf), **NORM)
    np.testing.assert_array_equal(buf[:n], want)
    assert np.isnan(buf[n:]).all()


def test_gather_tile_equals_the_patches_it_covers():
    """A tile whose windows are cut at stride s holds, at offset (i*s, j*s), the patch there (the dense geometry)."""
    rng = np.random.default_rng(0)
    image = make_image((45, 61), np.uint8, "C", rng)
    P, s, y0, x0 = 16, 4, -9, 50
    tile = np.empty((P + 3 * s, P + 2 * s), np.float32)
    tile_kernel(image, y0, x0, tile, PAD_CODES["reflect"], 1.0, 0.0, 1.0, 0.0)
    centres = np.array([(y0 + i * s + P // 2, x0 + j * s + P // 2) for i in range(4) for j in range(3)], np.int64)
    patches = gather_patches_naive(image, centres, P, np.empty((12, 1, P, P), np.float32), scale=1.0, mean=0.0,
                                   std=1.0)
    for k, (i, j) in enumerate((i, j) for i in range(4) for j in range(3)):
        np.testing.assert_array_equal(tile[i * s : i * s + P, j * s : j * s + P], patches[k, 0])
