"""Same data, same map: one slice in five pixel types gives one map (issue 19, item 1).

The default intensity standardization maps a slice's tissue onto the training tissue's
quantiles; its background must stay below the tissue whatever the pixel type and offset
(float images have no bins below their tissue; an offset slice 1000.. has no black at 0),
and float images holding 0..255 are read as 0..255, not as [0, 1].
"""

from __future__ import annotations

import numpy as np
import pytest


def pixel_types(u8):
    """The same uint8 slice as uint16 (x257, and offset into 1000..), float32 (/255 and 0..255) and float64."""
    f = u8.astype(np.float64)
    return {"uint16 x257": u8.astype(np.uint16) * 257, "uint16 1000+v": (1000 + u8.astype(np.uint16)),
            "float32 /255": (f / 255).astype(np.float32), "float32 0..255": f.astype(np.float32), "float64 /255": f / 255}


@pytest.fixture(scope="module")
def slice_u8(synthetic_slice):
    return synthetic_slice.image


def test_standardized_pixels_agree_across_pixel_types(slice_u8, tiny_bundle):
    """The network's input (the standardized image) is the uint8 run's, pixel for pixel, to one gray level."""
    from brainrt.plan import make_plan

    ref = make_plan(slice_u8, tiny_bundle, stride=16)
    assert ref.standardized
    ref_img = ref.image.astype(np.int16)
    for name, img in pixel_types(slice_u8).items():
        plan = make_plan(img, tiny_bundle, stride=16)
        got = plan.image.astype(np.float64) / plan.scale * ref.scale  # in the uint8 run's units
        close = np.abs(got - ref_img) <= 1.0
        assert close.mean() >= 0.995, (name, close.mean())
        np.testing.assert_array_equal(plan.valid, ref.valid, err_msg=name)


def test_background_stays_below_tissue(slice_u8, tiny_bundle):
    """Background (at or below the tissue threshold) is never mapped onto the training tissue's gray."""
    from brainrt.plan import make_plan
    from brainrt.tissue import auto_threshold

    darkest = tiny_bundle.manifest.intensity.quantiles[0]
    for name, img in {"uint8": slice_u8, **pixel_types(slice_u8)}.items():
        bg = img <= auto_threshold(img, quiet=True)
        assert bg.mean() > 0.05, name  # the synthetic slice has a background band
        plan = make_plan(img, tiny_bundle, stride=16)
        vals = plan.image[bg].astype(np.float64) / plan.scale * (1 / 255)
        assert vals.max() < darkest, (name, vals.max(), darkest)


def test_same_map_in_five_pixel_types(slice_u8, tiny_bundle):
    """>= 99.5% of the uint8 run's tissue labels are the same; no background cell becomes tissue."""
    import brainrt

    ref = brainrt.classify_image(slice_u8, tiny_bundle, stride=16).labels
    tissue = ref >= 0
    for name, img in pixel_types(slice_u8).items():
        lab = brainrt.classify_image(img, tiny_bundle, stride=16).labels
        assert (lab[tissue] == ref[tissue]).mean() >= 0.995, (name, (lab[tissue] == ref[tissue]).mean())
        assert not (lab[~tissue] >= 0).any(), name


def test_float_0_255_read_as_0_255_without_standardization(slice_u8, tiny_bundle):
    """A float image holding 0..255 is scaled like uint8 (not taken as [0, 1]) when nothing maps it."""
    from brainrt.plan import make_plan

    u8 = make_plan(slice_u8, tiny_bundle, stride=16, standardize=False)
    f = make_plan(slice_u8.astype(np.float32), tiny_bundle, stride=16, standardize=False)
    unit = make_plan(slice_u8.astype(np.float32) / 255, tiny_bundle, stride=16, standardize=False)
    assert f.scale == pytest.approx(u8.scale)
    assert unit.scale == 1.0
