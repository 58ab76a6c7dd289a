"""The uncertainty map (issue 30): margin between the two likeliest areas and normalized entropy of the
smoothed probabilities, in the API, streamed beside the probabilities by classify, hatched on the overlay."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

import brainrt
from brainrt.maps.uncertainty import margin_entropy
from conftest import run_cli, write_tiff


def test_margin_and_entropy_of_known_cells():
    p = np.array([[[0.5, 0.5, 0.0], [1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3], [0.6, 0.1, 0.3], [0.2, 0.3, 0.5]]],
                 np.float32)
    valid = np.array([[True, True, True, True, False]])
    u = margin_entropy(p, valid)
    assert u.shape == (1, 5, 2) and u.dtype == np.float32
    np.testing.assert_allclose(u[0, :4, 0], [0.0, 1.0, 0.0, 0.3], atol=1e-6)
    h = -(0.6 * np.log(0.6) + 0.1 * np.log(0.1) + 0.3 * np.log(0.3)) / np.log(3)
    np.testing.assert_allclose(u[0, :4, 1], [np.log(2) / np.log(3), 0.0, 1.0, h], atol=1e-6)
    assert np.isnan(u[0, 4]).all()


def test_result_uncertainty_is_of_the_smoothed_probabilities(grid16, tiny_bundle):
    res = brainrt.classify(grid16, tiny_bundle, smooth=30.0)
    raw = brainrt.classify(grid16, tiny_bundle, smooth=0)
    u = res.uncertainty()
    p = np.sort(res.probabilities[grid16.valid], -1)
    np.testing.assert_allclose(u[grid16.valid][:, 0], p[:, -1] - p[:, -2], atol=1e-6)
    assert np.isnan(u[~grid16.valid]).all()
    assert not np.allclose(u[grid16.valid], raw.uncertainty()[grid16.valid])  # after the regularization


def test_classify_streams_the_uncertainty_beside_the_probabilities(tmp_path, tiny_bundle, tiny_bundle_path,
                                                                    synthetic_slice):
    src = write_tiff(tmp_path / "s.tif", synthetic_slice.image)
    r = run_cli(["classify", src, "-m", tiny_bundle_path, "--stride", 16, "--smooth", 30, "-o", tmp_path / "x.ome.tif"])
    assert r.exit_code == 0, r.output
    with tifffile.TiffFile(tmp_path / "x.uncertainty.ome.tif") as tif:
        got = tif.asarray()
        assert "margin" in tif.ome_metadata and "entropy" in tif.ome_metadata
    want = brainrt.classify_image(synthetic_slice.image, tiny_bundle, stride=16, smooth=30.0).uncertainty()
    np.testing.assert_allclose(np.moveaxis(got, 0, -1), want, atol=1e-6)
    assert "x.uncertainty.ome.tif" in r.output


def test_uncertain_below_hatches_only_the_uncertain_cells(tmp_path, tiny_bundle_path, synthetic_slice):
    """T = 0 hatches nothing (the same picture as without the option); T = 1 hatches (a different one)."""
    src = write_tiff(tmp_path / "s.tif", synthetic_slice.image[:192, :256])
    pngs = {}
    for t in (None, 0.0, 1.0):
        out = tmp_path / f"x{t}.ome.tif"
        extra = [] if t is None else ["--uncertain-below", t]
        r = run_cli(["classify", src, "-m", tiny_bundle_path, "--stride", 16, "-o", out, *extra])
        assert r.exit_code == 0, r.output
        pngs[t] = (tmp_path / f"x{t}.overlay.png").read_bytes()
    assert pngs[0.0] == pngs[None] and pngs[1.0] != pngs[None]


def test_hatch_marks_only_the_mask(tmp_path):
    from brainrt.plots import overlay_png

    img = np.full((64, 64), 128, np.uint8)
    labels = np.zeros((64, 64), np.int16)
    mask = np.zeros((64, 64), bool)
    mask[:, 32:] = True
    import brainrt.plots as plots

    rgb = np.full((64, 64, 3), 0.5)
    plots._hatch(rgb, mask)
    assert (rgb[:, :32] == 0.5).all() and (rgb[:, 32:] < 0.2).any()
    overlay_png(tmp_path / "o.png", img, labels, ["a"], hatch=mask, hatch_label="margin < 0.2")
    assert (tmp_path / "o.png").stat().st_size > 0


@pytest.mark.parametrize("bad", ["-0.1", "1.5"])
def test_uncertain_below_out_of_range_is_one_line(bad, tmp_path, tiny_bundle_path, synthetic_slice):
    src = write_tiff(tmp_path / "s.tif", synthetic_slice.image[:192, :256])
    r = run_cli(["classify", src, "-m", tiny_bundle_path, "--uncertain-below", bad, "-o", tmp_path / "x.ome.tif"])
    assert r.exit_code == 2 and "--uncertain-below" in r.output


def test_threshold_table_counts_pixels_below_and_above():
    """tools/uncertainty_threshold.py's table: error rates of the pixels below and above T, weighted by pixels."""
    from tools.uncertainty_threshold import table

    margin = np.array([0.05, 0.05, 0.5, 0.9])
    wrong, pixels = np.array([3, 1, 1, 0]), np.array([4, 4, 10, 10])
    (row,), err, n = table([(margin, wrong, pixels)], thresholds=(0.1,))
    thr, share, below, above, ratio = row
    assert (thr, n) == (0.1, 28) and share == pytest.approx(8 / 28) and err == pytest.approx(5 / 28)
    assert below == pytest.approx(4 / 8) and above == pytest.approx(1 / 20) and ratio == pytest.approx(10)
