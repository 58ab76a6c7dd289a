"""Intensity: standardization onto the training tissue, the same map in every pixel type."""

from __future__ import annotations

import logging

import numpy as np
import pytest

import brainrt
from brainrt.engine.intensity import N_QUANTILES, fit_map, tissue_quantiles


def _narrow_uint16(image):
    return (1000 + np.round(image.astype(np.float64) * 100 / 255)).astype(np.uint16)


def pixel_types(u8):
    """The same uint8 slice as uint16 (x257, and offset into 1000..), float32 (/255 and 0..255) and float64."""
    f = u8.astype(np.float64)
    return {"uint16 x257": u8.astype(np.uint16) * 257, "uint16 1000+v": (1000 + u8.astype(np.uint16)),
            "float32 /255": (f / 255).astype(np.float32), "float32 0..255": f.astype(np.float32), "float64 /255": f / 255}


@pytest.fixture(scope="module")
def slice_u8(synthetic_slice):
    return synthetic_slice.image


def _slice(rng, levels=19, shape=(300, 400)):
    img = np.zeros(shape, np.uint8)
    tissue = rng.normal(140, 25, size=(shape[0], shape[1] - 100))
    img[:, 100:] = np.clip(tissue, 60, 255)
    img[:, :100] = rng.integers(0, 20, size=(shape[0], 100))
    step = 256 // levels
    return (img // step * step).astype(np.uint8)


def test_narrow_uint16_warns_and_is_standardized(tiny_bundle, synthetic_slice, caplog):
    assert tiny_bundle.manifest.intensity is not None  # the trainer records training quantiles
    img8 = synthetic_slice.image
    with caplog.at_level(logging.WARNING, logger="brainrt"):
        narrow = brainrt.make_plan(_narrow_uint16(img8), tiny_bundle, stride=16)
    assert "span only 1000..1100" in caplog.text and "standardization" in caplog.text
    ref = brainrt.make_plan(img8, tiny_bundle, stride=16)
    # standardization undoes the squeeze: the network sees (nearly) what it sees for the uint8 slice
    assert narrow.standardized and narrow.image.dtype == ref.image.dtype
    a, b = narrow.image.astype(np.float64), ref.image.astype(np.float64)
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.9
    assert np.abs(a - b).mean() < 0.4 * b.std()
    assert np.array_equal(narrow.valid, ref.valid)
    result = brainrt.classify_image(_narrow_uint16(img8), tiny_bundle, stride=16)
    assert len(np.unique(result.labels[result.grid.valid])) > 1  # not one confident class


def test_narrow_uint16_without_standardization_says_so(tiny_bundle, synthetic_slice, caplog):
    with caplog.at_level(logging.WARNING, logger="brainrt"):
        brainrt.make_plan(_narrow_uint16(synthetic_slice.image), tiny_bundle, standardize=False)
    assert "span only" in caplog.text and "rescale" in caplog.text


def test_full_range_images_do_not_warn(tiny_bundle, synthetic_slice, caplog):
    with caplog.at_level(logging.WARNING, logger="brainrt"):
        brainrt.make_plan(synthetic_slice.image, tiny_bundle)
    assert "span only" not in caplog.text


@pytest.mark.parametrize("standardize", ["auto", "match"])
def test_standardized_pixels_agree_across_pixel_types(slice_u8, tiny_bundle, standardize):
    """The network's input (the image times its scale) is the uint8 run's, pixel for pixel, to one gray level:
    "auto" scales a full-range slice by its type and maps only the narrow one; "match" maps every one."""
    from brainrt.engine.plan import make_plan

    ref = make_plan(slice_u8, tiny_bundle, stride=16, standardize=standardize)
    assert ref.standardized == (standardize == "match")
    ref_img = ref.image.astype(np.int16)
    for name, img in pixel_types(slice_u8).items():
        plan = make_plan(img, tiny_bundle, stride=16, standardize=standardize)
        assert plan.standardized == (standardize == "match" or name == "uint16 1000+v"), name
        got = plan.image.astype(np.float64) * plan.scale / ref.scale  # in the uint8 run's units
        close = np.abs(got - ref_img) <= 1.0
        assert close.mean() >= 0.995, (name, close.mean())
        np.testing.assert_array_equal(plan.valid, ref.valid, err_msg=name)


def test_background_stays_below_tissue(slice_u8, tiny_bundle):
    """Background (at or below the tissue threshold) is never mapped onto the training tissue's gray."""
    from brainrt.engine.plan import make_plan
    from brainrt.engine.tissue import auto_threshold

    darkest = tiny_bundle.manifest.intensity.quantiles[0]
    for name, img in {"uint8": slice_u8, **pixel_types(slice_u8)}.items():
        bg = img <= auto_threshold(img, quiet=True)
        assert bg.mean() > 0.05, name  # the synthetic slice has a background band
        plan = make_plan(img, tiny_bundle, stride=16, standardize="match")
        vals = plan.image[bg].astype(np.float64) * plan.scale * 255
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
    from brainrt.engine.plan import make_plan

    u8 = make_plan(slice_u8, tiny_bundle, stride=16, standardize=False)
    f = make_plan(slice_u8.astype(np.float32), tiny_bundle, stride=16, standardize=False)
    unit = make_plan(slice_u8.astype(np.float32) / 255, tiny_bundle, stride=16, standardize=False)
    assert f.scale == pytest.approx(u8.scale)
    assert unit.scale == 1.0


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
