"""Same tissue, same map: a crop is mapped like the same tissue in the whole slice, whatever areas it holds
and whether background is in view (issue 28, item 2)."""

from __future__ import annotations

import numpy as np
import pytest

import brainrt
from brainrt.geometry import upsample


def _random_crop(rng, shape, stride=16, low=160):
    """A stride-aligned crop (y0, y1, x0, x1) at least ``low`` px a side."""
    H, W = shape
    h = stride * int(rng.integers(low // stride, H // stride + 1))
    w = stride * int(rng.integers(low // stride, W // stride + 1))
    y0 = stride * int(rng.integers(0, (H - h) // stride + 1))
    x0 = stride * int(rng.integers(0, (W - w) // stride + 1))
    return y0, y0 + h, x0, x0 + w


def _interior_agreement(whole, part, box, margin):
    """Share of the whole map's tissue pixels farther than ``margin`` px from the crop's border that the crop's
    map labels the same."""
    y0, y1, x0, x1 = box
    ref = whole[y0 + margin: y1 - margin, x0 + margin: x1 - margin]
    got = part[margin: part.shape[0] - margin, margin: part.shape[1] - margin]
    tissue = ref >= 0
    return float((got[tissue] == ref[tissue]).mean()) if tissue.any() else 1.0


@pytest.mark.parametrize("seed", range(12))
def test_the_network_sees_a_crop_as_it_sees_the_whole_slice(tiny_bundle, synthetic_slice, seed):
    """Property over seeded random crops (some all tissue, some one or two areas, some with background): the
    pixels the network reads for a crop are the whole slice's, and its tissue cells away from the border are."""
    img = synthetic_slice.image
    box = _random_crop(np.random.default_rng(seed), img.shape)
    y0, y1, x0, x1 = box
    whole = brainrt.make_plan(img, tiny_bundle, stride=16, tissue="otsu")
    crop = brainrt.make_plan(np.ascontiguousarray(img[y0:y1, x0:x1]), tiny_bundle, stride=16)
    np.testing.assert_array_equal(crop.image, whole.image[y0:y1, x0:x1])
    assert crop.scale == whole.scale
    m = tiny_bundle.patch_size // 2 // 16  # cells whose patch lies inside the crop
    ref = whole.valid[y0 // 16 + m: y1 // 16 - m, x0 // 16 + m: x1 // 16 - m]
    got = crop.valid[m: crop.valid.shape[0] - m, m: crop.valid.shape[1] - m]
    assert (got == ref).mean() >= 0.95, (box, (got == ref).mean())


@pytest.mark.parametrize("seed", [0, 3])
def test_a_crop_is_classified_like_the_whole_slice(tiny_bundle, synthetic_slice, seed):
    img = synthetic_slice.image
    box = _random_crop(np.random.default_rng(seed), img.shape, low=256)
    y0, y1, x0, x1 = box
    whole = brainrt.classify_image(img, tiny_bundle, stride=16, smooth=0)
    part = brainrt.classify_image(np.ascontiguousarray(img[y0:y1, x0:x1]), tiny_bundle, stride=16, smooth=0)
    a = upsample(whole.labels, 16, img.shape)
    b = upsample(part.labels, 16, (y1 - y0, x1 - x0))
    assert _interior_agreement(a, b, box, tiny_bundle.patch_size // 2) >= 0.98


def test_a_bright_crop_is_not_stretched(tiny_bundle, synthetic_slice, caplog):
    """The brightest area alone in view: standardization by the crop's own histogram would stretch it onto the
    whole training tissue (the issue's cortex crop called HypoTh); the default leaves a full-range slice alone."""
    img, mask = synthetic_slice.image, synthetic_slice.mask
    means = {c: img[mask == c].mean() for c in np.unique(mask) if c}
    bright = max(means, key=means.get)
    ys, xs = np.nonzero(mask == bright)
    y, x = int(np.median(ys)), int(np.median(xs))
    crop = img[max(y - 80, 0): y + 80, max(x - 80, 0): x + 80]
    plan = brainrt.make_plan(np.ascontiguousarray(crop), tiny_bundle, stride=16)
    assert not plan.standardized
    np.testing.assert_array_equal(plan.image, crop)
    match = brainrt.make_plan(np.ascontiguousarray(crop), tiny_bundle, stride=16, standardize="match")
    assert match.standardized  # still there when asked for (a whole slice of another instrument)


def test_slice309_crops_are_mapped_like_the_whole_slice(shared_data, shipped_bundle_path):
    """The issue's cortex crop (rows 400-1100, x 4000-5400, no background in view) inside a larger crop with
    background: the same pixels reach the network, their raw maps agree away from the border, and the cortex
    crop's smoothed map is mostly right (0.253 with the crop's own standardization)."""
    import tifffile

    bundle = brainrt.Bundle.load(shipped_bundle_path)
    image = tifffile.imread(shared_data / "slice309.tif")
    mask = tifffile.imread(shared_data / "slice309_areas.tif")
    inner, outer = (400, 1100, 4000, 5400), (144, 1356, 3744, 5648)
    crops = {b: np.ascontiguousarray(image[b[0]:b[1], b[2]:b[3]]) for b in (inner, outer)}
    for b, c in crops.items():
        np.testing.assert_array_equal(brainrt.make_plan(c, bundle, stride=16).image, c)
    raw = {b: upsample(brainrt.classify_image(c, bundle, stride=16, smooth=0).labels, 16, c.shape)
           for b, c in crops.items()}
    box = (inner[0] - outer[0], inner[1] - outer[0], inner[2] - outer[2], inner[3] - outer[2])
    assert _interior_agreement(raw[outer], raw[inner], box, 128) >= 0.98
    smoothed = brainrt.classify_image(crops[inner], bundle, stride=16)
    labels = upsample(smoothed.labels, 16, crops[inner].shape)
    ctx = mask[inner[0]:inner[1], inner[2]:inner[3]] == 1
    assert (labels[ctx] == bundle.class_names.index("Ctx")).mean() >= 0.8
