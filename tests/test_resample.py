"""Pixel size honoured: a slice at another pixel size is resampled to the bundle's for the network, its grid and
outputs stay on the input's pixels; unknown sizes are logged, implausible ones refused (issue 28, item 3)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import tifffile

import brainrt
from brainrt.errors import BrainrtError
from brainrt.engine.resample import resample, resampling_of
from brainrt.sources.tiff import tiff_pixel_size
from conftest import one_cli_error, run_cli


def _binned(image):
    """2 x 2 mean binning (uint8)."""
    h, w = (image.shape[0] // 2) * 2, (image.shape[1] // 2) * 2
    x = image[:h, :w].astype(np.float64).reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
    return np.rint(x).astype(np.uint8)


def _imagej(path, image, px):
    tifffile.imwrite(path, image, imagej=True, resolution=(1 / px, 1 / px), metadata={"unit": "um"})
    return path


@pytest.mark.parametrize(("shape", "stride", "px"), [((200, 300), 16, 2.34), ((333, 171), 16, 0.65),
                                                      ((150, 400), 4, 1.8), ((129, 129), 16, 3.0)])
def test_cells_land_on_their_input_pixels(shape, stride, px):
    r = resampling_of(shape, stride, px, 1.17, "image")
    rows, cols = (-(-n // stride) for n in shape)
    assert (-(-r.net_shape[0] // r.net_stride), -(-r.net_shape[1] // r.net_stride)) == (rows, cols)
    centres = np.arange(rows) * r.net_stride + r.net_stride // 2
    want = np.arange(rows) * stride + stride // 2
    np.testing.assert_allclose(r.input_coords(int(centres.max()) + 1)[centres], want)
    assert abs(r.net_pixel_size_um / 1.17 - 1) <= 0.05


def test_resample_a_ramp_is_exact():
    """Bilinear resampling of a linear ramp gives the ramp at the mapped positions (float, no rounding)."""
    r = resampling_of((64, 96), 16, 2.34, 1.17, "image")
    ramp = np.add.outer(np.arange(64.0), 0.5 * np.arange(96.0)).astype(np.float32)
    out = resample(ramp, r)
    ys, xs = r.input_coords(r.net_shape[0]), r.input_coords(r.net_shape[1])
    inside = np.add.outer((ys >= 0) & (ys <= 63), (xs >= 0) & (xs <= 95)) == 2
    np.testing.assert_allclose(out[inside], np.add.outer(ys, 0.5 * xs)[inside], atol=1e-4)


def test_a_binned_slice_with_its_pixel_size_is_seen_at_the_bundles(tiny_bundle, synthetic_slice, tmp_path, caplog):
    """The synthetic slice binned 2 x 2 and saved with 2.34 um pixels, classified at stride 8: the network sees
    it resampled x2 (the map is the one of that resampled image at stride 16, cell for cell, smoothing included:
    the same physical grid), and the grid, its pixel size and the outputs are the binned image's."""
    small = _binned(synthetic_slice.image)
    path = _imagej(tmp_path / "binned.tif", small, 2.34)
    with caplog.at_level(logging.INFO, logger="brainrt"):
        got = brainrt.classify_image(path, tiny_bundle, stride=8)
    assert "resampled x2" in caplog.text and "pixel grid" in caplog.text
    assert got.grid.stride == 8 and got.grid.image_shape == small.shape and got.grid.pixel_size_um == 2.34
    r = resampling_of(small.shape, 8, 2.34, 1.17, "image")
    by_hand = brainrt.classify_image(resample(small, r), tiny_bundle, stride=16)
    np.testing.assert_array_equal(got.labels, by_hand.labels)
    np.testing.assert_allclose(got.probabilities, by_hand.probabilities, rtol=1e-6, atol=1e-7)
    as_given = brainrt.classify_image(path, tiny_bundle, stride=8, pixel_size_um=1.17)  # the old reading
    assert not np.array_equal(as_given.labels, got.labels)


def test_cli_outputs_stay_on_the_input_pixels(tiny_bundle_path, synthetic_slice, tmp_path):
    path = _imagej(tmp_path / "binned.tif", _binned(synthetic_slice.image), 2.34)
    out = tmp_path / "binned.labels.ome.tif"
    res = run_cli(["classify", path, "--stride", 8, "-m", tiny_bundle_path, "-o", out])
    assert res.exit_code == 0, (res.output, res.exception)
    with tifffile.TiffFile(out) as tif:
        assert tif.series[0].shape == _binned(synthetic_slice.image).shape
        assert tiff_pixel_size(tif) == pytest.approx(2.34, rel=1e-4)


@pytest.mark.parametrize("px", [1000.0, 0.01, 60.0, 10.0, 0.1])
def test_implausible_pixel_size_is_refused(tiny_bundle_path, synthetic_slice, tmp_path, px):
    src = tmp_path / "s.tif"
    tifffile.imwrite(src, synthetic_slice.image)
    line = one_cli_error(run_cli(["classify", src, "--pixel-size", px, "-m", tiny_bundle_path,
                                  "-o", tmp_path / "s.labels.ome.tif"]))
    assert "pixel_size_um" in line and "1.17" in line
    meta = _imagej(tmp_path / "m.tif", synthetic_slice.image, px)
    with pytest.raises(BrainrtError, match=r"m.tif: its pixel size .* um is"):
        brainrt.make_plan(meta, brainrt.Bundle.load(tiny_bundle_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.tif", "s.tif"]


def test_unknown_pixel_size_says_what_it_assumed(tiny_bundle, synthetic_slice, tmp_path, caplog):
    src = tmp_path / "plain.tif"
    tifffile.imwrite(src, synthetic_slice.image)
    with caplog.at_level(logging.INFO, logger="brainrt"):
        plan = brainrt.make_plan(src, tiny_bundle)
    assert "pixel size unknown" in caplog.text and "assumed the bundle's 1.17 um" in caplog.text
    assert plan.resampling is None and plan.pixel_size_um == 1.17


def test_a_stride_too_small_for_the_factor_is_refused(tiny_bundle, synthetic_slice):
    with pytest.raises(BrainrtError, match="use a stride of at least"):
        brainrt.make_plan(synthetic_slice.image, tiny_bundle, stride=1, pixel_size_um=0.65)


def test_volume_slices_are_resampled(tiny_bundle, tmp_path):
    """A stack at 2.34 um: each slice resampled like the 2D path, the volume's outputs on its own pixels."""
    import zarr

    from brainrt.synth import make_volume
    from brainrt.volumes import make_volume_plan, run_volume

    vol = np.stack([_binned(s) for s in make_volume((2, 384, 512), seed=3).image])
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, vol, imagej=True, resolution=(1 / 2.34, 1 / 2.34), metadata={"unit": "um", "axes": "ZYX"})
    plan = make_volume_plan(stack, tiny_bundle, stride=8, smooth=0)
    assert plan.pixel_size_um == pytest.approx(2.34)
    out = tmp_path / "out.ome.zarr"
    run_volume(plan, out, bundle=tiny_bundle)
    labels = np.asarray(zarr.open_group(str(out), mode="r")["labels/areas/0"])
    assert labels.shape == vol.shape
    two_d = brainrt.classify_image(vol[1], tiny_bundle, stride=8, smooth=0, pixel_size_um=2.34)
    np.testing.assert_array_equal(labels[1], brainrt.upsample(two_d.cell_codes(), 8, vol.shape[1:]))
