"""Inputs: every bad slice one line naming the file; the slice and stack formats users have."""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest
import tifffile

import brainrt
from brainrt.errors import BrainrtError
from conftest import error_line, listing, one_cli_error, run_cli, small_slice, write_tiff
from conftest import one_cli_error as _one_error
from conftest import run_cli as _run


def _two_series(path, synthetic_slice):
    a, b = synthetic_slice.image[:192, :256], synthetic_slice.image[:160, :224]
    with tifffile.TiffWriter(path, ome=True) as tw:
        tw.write(a, metadata={"axes": "YX"})
        tw.write(b, metadata={"axes": "YX"})
    return path


def make_bad_slice(case, folder, synthetic_slice):
    """Write the bad input ``case`` into ``folder``; return (path, extra CLI args)."""
    img = small_slice(synthetic_slice)
    p = folder / f"{case.replace(' ', '_')}.tif"
    if case == "truncated TIFF":
        write_tiff(p, img)
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    elif case == "truncated compressed TIFF":
        write_tiff(p, img, compression="zlib")
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    elif case == "zero-byte file":
        p.write_bytes(b"")
    elif case == "text file named .tif":
        p.write_text("slice 309, see the lab notebook\n")
    elif case == "RGB TIFF":
        write_tiff(p, np.stack([img] * 3, axis=-1), photometric="rgb")
    elif case == "3D stack without --z":
        write_tiff(p, np.stack([img] * 3), photometric="minisblack")
    elif case == "3D stack, --z out of range":
        write_tiff(p, np.stack([img] * 3), photometric="minisblack")
        return p, ["--z", "3"]
    elif case == "2D image with --z 1":
        write_tiff(p, img)
        return p, ["--z", "1"]
    elif case in ("NaN float TIFF", "inf float TIFF"):
        f = (img / 255).astype(np.float32)
        f[10, 20] = np.nan if case.startswith("NaN") else np.inf
        write_tiff(p, f)
    elif case == "uint32 TIFF":
        write_tiff(p, img.astype(np.uint32))  # signed types read (issue 28); uint32 does not
    elif case == "slice smaller than a patch":
        write_tiff(p, img[:40, :50])
    elif case == "no tissue (all zero)":
        write_tiff(p, np.zeros_like(img))
    elif case == "missing file":
        pass
    else:
        raise AssertionError(case)
    return p, []


BAD_SLICES = ["truncated TIFF", "truncated compressed TIFF", "zero-byte file", "text file named .tif", "RGB TIFF",
              "3D stack without --z", "3D stack, --z out of range", "2D image with --z 1", "NaN float TIFF",
              "inf float TIFF", "uint32 TIFF", "slice smaller than a patch", "no tissue (all zero)", "missing file"]


@pytest.fixture(scope="module")
def stack3(synthetic_slice):
    """Three 192 x 256 slices of the synthetic slice (shifted), uint8."""
    img = synthetic_slice.image
    return np.stack([img[10 * k : 10 * k + 192, :256] for k in range(3)])


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


@pytest.mark.parametrize("command", ["featurize", "classify", "cluster"])
def test_directory_as_input_says_so(command, tmp_path, tiny_bundle_path):
    """Before: "no such file"."""
    (tmp_path / "slices").mkdir()
    r = run_cli([command, tmp_path / "slices", "-m", tiny_bundle_path])  # default -o: the output name is not the point
    line = one_cli_error(r)  # featurize and classify read a folder of TIFFs as a volume; an empty one is named
    assert "is a directory" in line or "is a folder with no .tif/.tiff files" in line, line


def test_multi_series_needs_series(tmp_path, tiny_bundle_path, synthetic_slice):
    src = _two_series(tmp_path / "two.ome.tif", synthetic_slice)
    line = one_cli_error(run_cli(["classify", src, "-m", tiny_bundle_path, "-o", tmp_path / "a.ome.tif"]))
    assert "holds 2 series" in line and "(192, 256)" in line and "(160, 224)" in line and "--series" in line
    r = run_cli(["classify", src, "-m", tiny_bundle_path, "--series", "1", "-o", tmp_path / "a.ome.tif"])
    assert r.exit_code == 0, r.output
    assert tifffile.imread(tmp_path / "a.ome.tif").shape == (160, 224)
    line = one_cli_error(run_cli(["classify", src, "-m", tiny_bundle_path, "--series", "2", "-o", tmp_path / "b.ome.tif"]))
    assert "--series 2 is outside" in line


def test_api_reads_a_chosen_series(tmp_path, synthetic_slice):
    src = _two_series(tmp_path / "two.ome.tif", synthetic_slice)
    image, _ = brainrt.read_tiff(src, series=1)
    assert image.shape == (160, 224)


@pytest.mark.parametrize("command", ["featurize", "classify"])
@pytest.mark.parametrize("case", BAD_SLICES)
def test_cli_bad_slice(case, command, io_dirs, tiny_bundle_path, synthetic_slice):
    src, out = io_dirs
    path, extra = make_bad_slice(case, src, synthetic_slice)
    target = out / ("x.zarr" if command == "featurize" else "x.labels.ome.tif")
    before = listing(src), listing(out)
    result = run_cli([command, path, "-m", tiny_bundle_path, "-o", target, *extra])
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert str(path) in error_line(result)
    assert (listing(src), listing(out)) == before  # no output, no temp file, nothing beside the input


@pytest.mark.parametrize("case", BAD_SLICES)
def test_api_bad_slice(case, tmp_path, tiny_bundle, synthetic_slice):
    path, extra = make_bad_slice(case, tmp_path, synthetic_slice)
    z = int(extra[1]) if extra else None
    before = listing(tmp_path)
    with pytest.raises(BrainrtError) as info:
        image, _ = brainrt.read_tiff(path, z=z)
        brainrt.featurize(image, tiny_bundle, stride=16, out=tmp_path / "x.zarr")
    msg = str(info.value)
    assert "\n" not in msg
    if case not in ("slice smaller than a patch", "no tissue (all zero)"):  # raised on the array, not the file
        assert msg.startswith(f"{path}: "), msg
    assert listing(tmp_path) == before


def test_api_rejects_bad_arrays(tiny_bundle, synthetic_slice):
    img = small_slice(synthetic_slice)
    f = (img / 255).astype(np.float32)
    f[3, 4] = np.nan
    bad = {"NaN": f, "inf": np.where(f != f, np.inf, f).astype(np.float32), "3D": np.stack([img] * 2),
           "uint32": img.astype(np.uint32), "bool": img > 100, "small": img[:63, :200]}
    for name, arr in bad.items():
        with pytest.raises(BrainrtError, match="^image: "):
            brainrt.featurize(arr, tiny_bundle)


@pytest.mark.parametrize("case", ["3D stack with --z", "uint16", "float32", "float64"])
@pytest.mark.parametrize("command", ["featurize", "classify"])
def test_cli_good_variants(case, command, io_dirs, tiny_bundle_path, tiny_bundle, synthetic_slice):
    src, out = io_dirs
    img = small_slice(synthetic_slice)
    extra = []
    if case == "3D stack with --z":
        stack = np.stack([np.zeros_like(img), img, np.zeros_like(img)])
        path, extra = write_tiff(src / "stack.tif", stack, photometric="minisblack"), ["--z", "1"]
    elif case == "uint16":
        path = write_tiff(src / "u16.tif", img.astype(np.uint16) * np.uint16(257))
    else:
        path = write_tiff(src / f"{case}.tif", (img / 255).astype(case))
    target = out / ("x.zarr" if command == "featurize" else "x.labels.ome.tif")
    std = case not in ("float32", "float64")  # float histograms are binned: compare pixel-type scaling alone
    extra += [] if std else ["--no-standardize"]
    result = run_cli([command, path, "-m", tiny_bundle_path, "-o", target, *extra])
    assert result.exit_code == 0, (result.output, result.exception)
    assert target.exists()
    assert not [p for p in listing(out) if p.startswith(".")]  # no temp left
    ref = brainrt.featurize(img, tiny_bundle, stride=16, standardize="auto" if std else "off")  # the CLI's default
    if command == "featurize":
        got = brainrt.load_features(target)
        np.testing.assert_array_equal(got.valid, ref.valid)
        assert np.abs(np.asarray(got.features[:]) - ref.features).max() <= 1e-4
    else:
        import tifffile

        labels = tifffile.imread(target)
        assert labels.shape == img.shape and labels.dtype == np.uint8
        assert set(np.unique(labels).tolist()) <= {1, 2, 3, 4, 255}
        assert sorted(listing(out)) == ["x.labels.ome.tif", "x.labels.overlay.png", "x.labels.probabilities.ome.tif",
                                        "x.labels.run.json", "x.labels.uncertainty.ome.tif"]


def test_planar_three_slice_stack_reads_as_the_stack(tmp_path, stack3, tiny_bundle_path):
    path = tmp_path / "stack.tif"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tifffile.imwrite(path, stack3)  # no photometric: stored as 3 planar samples
    with tifffile.TiffFile(path) as tif:
        assert tif.series[0].axes == "SYX"  # the case of the issue
    from brainrt.sources import open_volume

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
    from brainrt.sources import is_volume_input

    assert not is_volume_input(path)
    got = brainrt.featurize(path, tiny_bundle, stride=32)
    want = brainrt.featurize(img, tiny_bundle, stride=32,  # an OME-Zarr's scale is honoured (resampled)
                             pixel_size_um=0.5 if kind == "ome" else None)
    np.testing.assert_array_equal(got.valid, want.valid)
    np.testing.assert_allclose(got.features, want.features, atol=1e-5)
    r = _run(["classify", path, "-m", tiny_bundle.path, "--stride", "32", "-o", tmp_path / "a.ome.tif"])
    assert r.exit_code == 0, (r.output, r.exception)


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
    chunks = sorted((p for p in (dst / "0").rglob("*") if p.is_file() and p.name != "zarr.json"),
                    key=lambda p: -p.stat().st_size)
    chunks[0].unlink()
    r = _run(["classify", dst, "--z", "1", "-m", tiny_bundle.path, "-o", tmp_path / "m.ome.tif"])
    line = _one_error(r)
    assert "copy.features.zarr" in line and "damaged" in line
    chunks[1].write_bytes(chunks[1].read_bytes()[:10])
    with pytest.raises(BrainrtError, match="damaged"):
        brainrt.load_features(dst, bundle=tiny_bundle, z=0)
