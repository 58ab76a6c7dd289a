"""Plans: checked options."""

from __future__ import annotations

import pytest

import brainrt
from brainrt.errors import BrainrtError


@pytest.mark.parametrize(("kw", "match"), [
    (dict(stride=0), "'stride' parameter"),
    (dict(stride=-3), "'stride' parameter"),
    (dict(stride=2.5), "'stride' parameter"),
    (dict(method="fast"), "'method' parameter"),
    (dict(tissue="most"), "'tissue' parameter"),
])
def test_bad_parameters(tiny_bundle, synthetic_slice, kw, match):
    with pytest.raises(BrainrtError, match=match):
        brainrt.featurize(synthetic_slice.image, tiny_bundle, **kw)


@pytest.mark.parametrize("stride", [193, 256, 4096])
def test_stride_larger_than_the_image_is_refused(tiny_bundle, synthetic_slice, stride):
    """A stride past the image's shorter side leaves a grid whose cells are centred outside the image
    (or painted from one patch centred outside it): refused at the plan, naming both."""
    image = synthetic_slice.image[:192, :320]
    with pytest.raises(BrainrtError, match=rf"stride {stride} .*192 x 320"):
        brainrt.make_plan(image, tiny_bundle, stride=stride)


def test_stride_up_to_the_shorter_side_is_planned(tiny_bundle, synthetic_slice):
    plan = brainrt.make_plan(synthetic_slice.image[:192, :320], tiny_bundle, stride=192, tissue="all")
    assert plan.shape == (1, 2)


def test_cli_stride_larger_than_the_image(tiny_bundle_path, synthetic_slice, tmp_path):
    from conftest import one_cli_error, run_cli, write_tiff

    src = write_tiff(tmp_path / "crop.tif", synthetic_slice.image[:192, :320])
    out = tmp_path / "crop.labels.ome.tif"
    line = one_cli_error(run_cli(["classify", src, "--stride", 2000, "--model", tiny_bundle_path, "-o", out]))
    assert "stride 2000" in line and "crop.tif" in line
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["crop.tif"]


def test_volume_stride_larger_than_the_slices(tiny_bundle, tmp_path):
    from brainrt.synth import make_volume
    from brainrt.volumes.plan import make_volume_plan
    from conftest import write_tiff

    stack = write_tiff(tmp_path / "stack.tif", make_volume((2, 192, 256), seed=3).image, photometric="minisblack")
    with pytest.raises(BrainrtError, match=r"stack.tif: stride 4096 .*192 x 256"):
        make_volume_plan(stack, tiny_bundle, stride=4096)
