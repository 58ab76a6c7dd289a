"""Inputs users have (issue 19, "Inputs users have"): planar stacks, 2D zarr, feature volumes.

- a stack written by ``tifffile.imwrite(stack)`` without ``photometric`` is stored as
  planar samples (axes SYX) when it has 3 or 4 slices: ``--z all`` reads it as the stack;
- a 2D zarr array or OME-Zarr image is a slice;
- the feature volume of ``featurize --z all`` feeds classify, cluster, subdivide and
  ``brainrt.load_features`` one slice at a time (``--z``), and is checked like a 2D grid.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner

import brainrt
from brainrt.cli import main
from brainrt.errors import BrainrtError
from conftest import one_cli_error as _one_error, run_cli as _run


@pytest.fixture(scope="module")
def stack3(synthetic_slice):
    """Three 192 x 256 slices of the synthetic slice (shifted), uint8."""
    img = synthetic_slice.image
    return np.stack([img[10 * k : 10 * k + 192, :256] for k in range(3)])


def test_planar_three_slice_stack_reads_as_the_stack(tmp_path, stack3, tiny_bundle_path):
    path = tmp_path / "stack.tif"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tifffile.imwrite(path, stack3)  # no photometric: stored as 3 planar samples
    with tifffile.TiffFile(path) as tif:
        assert tif.series[0].axes == "SYX"  # the case of the issue
    from brainrt.volume import open_volume

    src = open_volume(path)
    assert src.shape == stack3.shape
    np.testing.assert_array_equal(src.read(2), stack3[2])
    r = _run(["featurize", path, "--z", "all", "-m", tiny_bundle_path, "--stride", "32", "-o", tmp_path / "f.zarr",
              "--workers", "1"])
    assert r.exit_code == 0, (r.output, r.exception)


@pytest.mark.parametrize("kind", ["array", "ome"])
def test_2d_zarr_is_read_as_a_slice(tmp_path, synthetic_slice, tiny_bundle, kind):
    import zarr

    img = synthetic_slice.image[:192, :256]
    path = tmp_path / "slice.zarr"
    if kind == "array":
        zarr.create_array(str(path), shape=img.shape, chunks=(64, 64), dtype="uint8")[:] = img
    else:
        root = zarr.open_group(str(path), mode="w")
        root.create_array("0", shape=img.shape, chunks=(64, 64), dtype="uint8")[:] = img
        root.attrs["ome"] = {"version": "0.5", "multiscales": [{"axes": [{"name": "y", "type": "space"},
                                                                          {"name": "x", "type": "space"}],
                                                                 "datasets": [{"path": "0", "coordinateTransformations": [
                                                                     {"type": "scale", "scale": [0.5, 0.5]}]}]}]}
    from brainrt.volume import is_volume_input

    assert not is_volume_input(path)
    got = brainrt.featurize(path, tiny_bundle, stride=32)
    want = brainrt.featurize(img, tiny_bundle, stride=32)
    np.testing.assert_array_equal(got.valid, want.valid)
    np.testing.assert_allclose(got.features, want.features, atol=1e-5)
    r = _run(["classify", path, "-m", tiny_bundle.path, "--stride", "32", "-o", tmp_path / "a.ome.tif"])
    assert r.exit_code == 0, (r.output, r.exception)


@pytest.fixture(scope="module")
def feature_volume(tmp_path_factory, synthetic_slice, tiny_bundle_path):
    from brainrt.synth import make_volume

    folder = tmp_path_factory.mktemp("fvol")
    vol = make_volume((3, 192, 256), seed=2)
    src = folder / "stack.tif"
    tifffile.imwrite(src, vol.image, photometric="minisblack")
    out = folder / "stack.features.zarr"
    r = _run(["featurize", src, "--z", "all", "-m", tiny_bundle_path, "--stride", "16", "-o", out, "--workers", "1"])
    assert r.exit_code == 0, (r.output, r.exception)
    return src, out, vol


def test_feature_volume_loads_per_z(feature_volume, tiny_bundle):
    src, out, vol = feature_volume
    grid = brainrt.load_features(out, bundle=tiny_bundle, z=1)
    want = brainrt.featurize(vol.image[1], tiny_bundle, stride=16)
    assert grid.shape == want.shape and grid.image_shape == want.image_shape
    np.testing.assert_array_equal(grid.valid, want.valid)
    np.testing.assert_allclose(np.asarray(grid.features[:]), want.features, atol=1e-4)
    with pytest.raises(BrainrtError, match="z"):
        brainrt.load_features(out, bundle=tiny_bundle)


@pytest.mark.parametrize("command, extra", [("classify", []), ("cluster", []), ("subdivide", ["--area", "A"])])
def test_feature_volume_feeds_every_command(feature_volume, tmp_path, tiny_bundle, command, extra):
    _, out, _ = feature_volume
    if command == "subdivide":
        extra = ["--area", tiny_bundle.class_names[0], "--whole", "-k", "2"]
    r = _run([command, out, "--z", "1", "-m", tiny_bundle.path, "-o", tmp_path / "m.ome.tif", *extra])
    assert r.exit_code == 0, (r.output, r.exception)
    assert (tmp_path / "m.ome.tif").exists()


def test_damaged_feature_volume_is_refused(feature_volume, tmp_path, tiny_bundle):
    _, out, _ = feature_volume
    dst = tmp_path / "copy.features.zarr"
    shutil.copytree(out, dst)
    chunks = sorted((p for p in (dst / "features").rglob("*") if p.is_file() and p.name != "zarr.json"),
                    key=lambda p: -p.stat().st_size)
    chunks[0].unlink()
    r = _run(["classify", dst, "--z", "1", "-m", tiny_bundle.path, "-o", tmp_path / "m.ome.tif"])
    line = _one_error(r)
    assert "copy.features.zarr" in line and "damaged" in line
    chunks[1].write_bytes(chunks[1].read_bytes()[:10])
    with pytest.raises(BrainrtError, match="damaged"):
        brainrt.load_features(dst, bundle=tiny_bundle, z=0)
