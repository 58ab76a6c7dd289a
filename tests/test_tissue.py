"""Otsu threshold, per-cell tissue fraction and the tissue grid."""

from __future__ import annotations

import logging

import numpy as np
import pytest

import brainrt
from brainrt.errors import BrainrtError
from brainrt.geometry import grid_shape
from brainrt.engine.tissue import box_fraction, otsu_threshold, tissue_grid
from naive import box_fraction_naive


def bimodal(dtype, rng, shape=(60, 80)):
    """Dark background on the left, bright tissue on the right, with noise."""
    image = rng.normal(40.0, 8.0, shape)
    image[:, shape[1] // 2 :] = rng.normal(180.0, 10.0, (shape[0], shape[1] - shape[1] // 2))
    if np.dtype(dtype).kind == "u":
        scale = 1 if dtype == np.uint8 else 200
        image = np.clip(image * scale, 0, np.iinfo(dtype).max)
    return image.astype(dtype)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32, np.float64])
def test_otsu_separates_bimodal(dtype):
    rng = np.random.default_rng(0)
    image = bimodal(dtype, rng)
    t = otsu_threshold(image)
    tissue = image > t
    assert not tissue[:, :40].any()
    assert tissue[:, 40:].all()


def test_otsu_ignores_nan_and_constant():
    rng = np.random.default_rng(0)
    image = bimodal(np.float32, rng)
    t = otsu_threshold(image)
    image[::7, ::5] = np.nan
    assert otsu_threshold(image) == t
    flat = np.full((5, 6), 3, np.uint8)
    assert otsu_threshold(flat) == 3.0
    assert not (flat > otsu_threshold(flat)).any()
    assert otsu_threshold(np.asfortranarray(bimodal(np.uint8, rng))) > 60


def test_otsu_errors():
    with pytest.raises(BrainrtError):
        otsu_threshold(np.full((3, 3), np.nan))
    with pytest.raises(BrainrtError):
        otsu_threshold(np.zeros((3,), np.uint8))
    with pytest.raises(BrainrtError):
        otsu_threshold(np.zeros((3, 3), np.int64))


@pytest.mark.parametrize("shape", [(1, 1), (5, 9), (17, 23), (40, 31)])
@pytest.mark.parametrize(("patch_size", "stride"), [(1, 1), (4, 3), (8, 5), (16, 16), (9, 20), (33, 7)])
def test_box_fraction_matches_naive(shape, patch_size, stride):
    rng = np.random.default_rng(0)
    mask = rng.random(shape) < 0.6
    got = box_fraction(mask, patch_size, stride)
    assert got.dtype == np.float32
    assert got.shape == grid_shape(shape, stride)
    np.testing.assert_array_equal(got, box_fraction_naive(mask, patch_size, stride))


def test_box_fraction_full_and_int_mask():
    rng = np.random.default_rng(0)
    mask = np.ones((32, 32), np.uint8)
    frac = box_fraction(mask, 8, 8)
    assert (frac == 1.0).all()  # every 8 px footprint lies inside a 32 px image
    frac = box_fraction(mask, 16, 8)
    assert frac[0, 0] == pytest.approx(12 * 12 / 256)  # corner: 4 px hang over two edges
    assert frac[1, 1] == 1.0
    assert rng is not None


def test_tissue_grid_otsu_and_threshold():
    rng = np.random.default_rng(0)
    image = bimodal(np.uint8, rng, shape=(64, 96))
    grid = tissue_grid(image, 16, 8)
    assert grid.shape == (8, 12)
    assert not grid[:, :5].any()
    assert grid[:, 7:11].all()
    # the half-covered column straddles the border; fraction 0.5 counts as tissue
    assert grid[1:-1, 6].all() and not grid[:, 5].any()
    assert not tissue_grid(image, 16, 8, threshold=250).any()
    assert tissue_grid(image, 16, 8, threshold=-1, min_fraction=0.0).all()


def test_tissue_grid_user_mask():
    rng = np.random.default_rng(0)
    image = rng.random((40, 40)).astype(np.float32)
    mask = np.zeros((40, 40), np.int32)
    mask[:20] = 5
    grid = tissue_grid(image, 10, 10, mask=mask, min_fraction=0.9)
    np.testing.assert_array_equal(grid, np.repeat([[True], [True], [False], [False]], 4, axis=1))
    np.testing.assert_array_equal(grid, box_fraction_naive(mask != 0, 10, 10) >= 0.9)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(mask=np.ones((10, 11), bool)),
        dict(mask=np.ones((10, 10), np.float32)),
        dict(min_fraction=1.5),
        dict(min_fraction="half"),
        dict(threshold="x"),
        dict(patch_size=0),
        dict(stride=-3),
        dict(image=np.zeros((10, 10), np.uint32)),  # int16 is read (issue 28); uint32 is not
        dict(image=np.zeros((10, 10, 3), np.uint8)),
    ],
)
def test_tissue_grid_errors(kwargs):
    args = dict(image=np.zeros((10, 10), np.uint8), patch_size=4, stride=2)
    args.update(kwargs)
    image, patch_size, stride = args.pop("image"), args.pop("patch_size"), args.pop("stride")
    with pytest.raises(BrainrtError) as info:
        tissue_grid(image, patch_size, stride, **args)
    assert "\n" not in str(info.value)


def test_box_fraction_errors():
    with pytest.raises(BrainrtError):
        box_fraction(np.ones((3, 3, 3), bool), 4, 2)
    with pytest.raises(BrainrtError):
        box_fraction(np.ones((3, 3), bool), 4, 0)


def test_all_tissue_crop_keeps_every_cell(tiny_bundle, synthetic_slice, caplog):
    crop = synthetic_slice.image[40:170, 340:470]
    assert (synthetic_slice.mask[40:170, 340:470] > 0).all()
    with caplog.at_level(logging.INFO, logger="brainrt"):
        plan = brainrt.make_plan(crop, tiny_bundle, stride=16)
    assert plan.valid.all()
    assert "no background" in caplog.text


def test_slices_with_background_still_use_otsu(tiny_bundle, synthetic_slice, caplog):
    with caplog.at_level(logging.INFO, logger="brainrt"):
        plan = brainrt.make_plan(synthetic_slice.image, tiny_bundle, stride=16)
    assert not plan.valid.all() and "no background" not in caplog.text


@pytest.mark.realdata
def test_all_tissue_crop_of_slice309(shared_data, shipped_bundle_path):
    image, _ = brainrt.read_tiff(shared_data / "slice309.tif")
    plan = brainrt.make_plan(image[700:830, 1500:1630], brainrt.Bundle.load(shipped_bundle_path), stride=16)
    assert plan.valid.shape == (9, 9) and plan.valid.all()
