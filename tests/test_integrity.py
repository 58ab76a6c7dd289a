"""Feature grids on disk: zarr round trip, damaged stores refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import brainrt
from brainrt.errors import BrainrtError
from conftest import one_cli_error as _one_error
from conftest import run_cli as _run


def feature_chunks(store):
    """The stored chunk files of the feature image (``0``), largest first (the ones holding tissue)."""
    files = [p for p in (Path(store) / "0").rglob("*") if p.is_file() and p.name != "zarr.json"]
    return sorted(files, key=lambda p: -p.stat().st_size)


@pytest.fixture(scope="module")
def features_2d(tmp_path_factory, tiny_bundle_path, slice_tif):
    out = tmp_path_factory.mktemp("feat") / "slice.features.zarr"
    r = _run(["featurize", slice_tif, "-m", tiny_bundle_path, "--stride", "8", "-o", out])
    assert r.exit_code == 0, r.output
    assert len(feature_chunks(out)) >= 2
    return out


def _damaged_copy(store, tmp_path, how):
    import shutil

    dst = tmp_path / "copy.features.zarr"
    shutil.copytree(store, dst)
    chunk = feature_chunks(dst)[0]
    data = chunk.read_bytes()
    if how == "deleted":
        chunk.unlink()
    elif how == "truncated":
        chunk.write_bytes(data[: len(data) // 2])
    else:  # one byte altered in the middle, same size
        i = len(data) // 2
        chunk.write_bytes(data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :])
    return dst


@pytest.mark.parametrize("how", ["deleted", "truncated", "altered"])
def test_damaged_2d_feature_zarr_is_refused(features_2d, tmp_path, tiny_bundle_path, how):
    store = _damaged_copy(features_2d, tmp_path, how)
    r = _run(["classify", store, "-m", tiny_bundle_path, "-o", tmp_path / "a.ome.tif"])
    line = _one_error(r)
    assert "copy.features.zarr" in line and "damaged" in line, line
    assert not (tmp_path / "a.ome.tif").exists()


def test_whole_2d_feature_zarr_still_classifies(features_2d, tmp_path, tiny_bundle_path):
    r = _run(["classify", features_2d, "-m", tiny_bundle_path, "-o", tmp_path / "a.ome.tif"])
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("how", ["deleted", "truncated", "altered"])
def test_damaged_feature_zarr_refused_by_the_api(features_2d, tmp_path, tiny_bundle, how):
    store = _damaged_copy(features_2d, tmp_path, how)
    with pytest.raises(BrainrtError, match="damaged"):
        grid = brainrt.load_features(store, bundle=tiny_bundle)
        brainrt.classify(grid, tiny_bundle)


def test_zarr_roundtrip_equals_in_memory(tiny_bundle, synthetic_slice, tmp_path, grid16):
    out = tmp_path / "slice.features.zarr"
    written = brainrt.featurize(synthetic_slice.image, tiny_bundle, stride=16, out=out)
    assert out.is_dir()
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temp folder left behind
    loaded = brainrt.load_features(out)
    for g in (written, loaded):
        np.testing.assert_array_equal(np.asarray(g.features[:]), grid16.features)
        np.testing.assert_array_equal(g.valid, grid16.valid)
    assert (loaded.stride, loaded.patch_size, loaded.image_shape, loaded.model_id) == (
        16, 64, grid16.image_shape, tiny_bundle.model_id)
    a = brainrt.classify(loaded, tiny_bundle)
    b = brainrt.classify(grid16, tiny_bundle)
    np.testing.assert_array_equal(a.labels, b.labels)
    # overwriting in place works and leaves no temp folder either
    brainrt.featurize(synthetic_slice.image, tiny_bundle, stride=32, out=out)
    assert brainrt.load_features(out).stride == 32
    assert [p.name for p in tmp_path.iterdir()] == [out.name]


def test_load_features_refuses_other_folders(tmp_path):
    (tmp_path / "x.zarr").mkdir()
    with pytest.raises(BrainrtError, match=r"x\.zarr: cannot open as a brainrt feature grid"):
        brainrt.load_features(tmp_path / "x.zarr")
    with pytest.raises(BrainrtError, match="nosuch"):
        brainrt.load_features(tmp_path / "nosuch.zarr")


# --------------------------------------------------------------------------- the OME-NGFF layout (issue 30)
def test_feature_grid_is_an_ngff_image_at_the_slice_scale(features_2d, tiny_bundle):
    """64 named channels (c, y, x) at stride x pixel size with the half-cell translation, the tissue cells as
    the label image, brainrt's geometry and run record beside them; ome-zarr-models accepts it."""
    import zarr

    from conftest import valid_ngff

    image = valid_ngff(features_2d)
    ms = image.ome_attributes.multiscales[0]
    assert [a.name for a in ms.axes] == ["c", "y", "x"]
    px, s = 1.17, 8
    assert list(ms.datasets[0].coordinateTransformations[0].scale) == pytest.approx([1.0, px * s, px * s])
    assert list(ms.datasets[0].coordinateTransformations[1].translation) == pytest.approx([0, 3.5 * px, 3.5 * px])
    root = zarr.open_group(str(features_2d), mode="r")
    names = [c["label"] for c in root.attrs["ome"]["omero"]["channels"]]
    assert len(names) == root["0"].shape[0] == tiny_bundle.n_features and len(set(names)) == len(names)
    grid = brainrt.load_features(features_2d, bundle=tiny_bundle)
    np.testing.assert_array_equal(np.asarray(root["labels/tissue/0"]) == 1, grid.valid)
    np.testing.assert_array_equal(np.moveaxis(np.asarray(root["0"]), 0, -1), np.asarray(grid.features))
    assert (Path(features_2d) / ".brainrt" / "run.json").is_file() and (Path(features_2d) / "brainrt-chunks.json").is_file()


def _old_layout(grid, path):
    """A feature grid in the layout brainrt wrote before the OME-NGFF one (brainrt-features/1)."""
    import zarr

    from brainrt.engine.grid import ZARR_FORMAT

    root = zarr.open_group(str(path), mode="w")
    root.create_array("features", data=np.asarray(grid.features), chunks=(64, 64, grid.features.shape[-1]))
    root.create_array("valid", data=grid.valid)
    root.attrs.update({"format": ZARR_FORMAT, "stride": grid.stride, "patch_size": grid.patch_size,
                       "image_shape": list(grid.image_shape), "model_id": grid.model_id, "precision": "fp32",
                       "pixel_size_um": grid.pixel_size_um})
    return path


def test_old_layout_grids_still_classify(features_2d, tiny_bundle, tiny_bundle_path, tmp_path):
    new = brainrt.load_features(features_2d, bundle=tiny_bundle)
    old = _old_layout(new, tmp_path / "old.features.zarr")
    got = brainrt.load_features(old, bundle=tiny_bundle)
    np.testing.assert_array_equal(np.asarray(got.features), np.asarray(new.features))
    np.testing.assert_array_equal(got.valid, new.valid)
    for src, name in ((old, "old"), (features_2d, "new")):
        r = _run(["classify", src, "-m", tiny_bundle_path, "-o", tmp_path / f"{name}.ome.tif"])
        assert r.exit_code == 0, r.output
    import tifffile

    np.testing.assert_array_equal(tifffile.imread(tmp_path / "old.ome.tif"), tifffile.imread(tmp_path / "new.ome.tif"))


def test_napari_ome_zarr_opens_the_features_at_the_slice_scale(features_2d, tiny_bundle):
    """napari-ome-zarr's reader: one layer per feature channel and the tissue labels, at stride x pixel size
    (it reads only the first of the multiscale's transforms: the half-cell translation is not applied)."""
    reader = pytest.importorskip("napari_ome_zarr").napari_get_reader(str(features_2d))
    assert reader is not None
    layers = reader(str(features_2d))
    (data, kw, kind), = [x for x in layers if x[2] == "image"]
    assert kw["channel_axis"] == 0 and len(kw["name"]) == tiny_bundle.n_features
    assert data[0].shape[0] == tiny_bundle.n_features and kw["scale"] == pytest.approx([1.17 * 8, 1.17 * 8])
    (ldata, lkw, _), = [x for x in layers if x[2] == "labels"]
    assert lkw["scale"] == pytest.approx([1.17 * 8, 1.17 * 8]) and ldata[0].shape == data[0].shape[1:]


def test_channels_first_view_reads_as_rows_cols_features(tmp_path):
    """The (R, C, F) view of an (F, [Z,] R, C) feature image answers every index the way the array it stands for
    would (rows, rows and columns, a channel after an ellipsis, a volume's slice)."""
    import zarr

    from brainrt.integrity import Guarded

    a = np.random.default_rng(0).random((5, 4, 3)).astype(np.float32)
    z = zarr.open_array(str(tmp_path / "x.zarr"), mode="w", shape=(3, 2, 5, 4), dtype="float32")
    z[:, 1] = np.moveaxis(a, -1, 0)
    g = Guarded(z, tmp_path, prefix=(1,), channels_first=True)
    assert g.shape == (5, 4, 3) and len(g) == 5
    for k in [(...,), (slice(1, 3),), 2, (2, 1), (..., 1), (slice(None), slice(1, 3), 0), (1, ...)]:
        np.testing.assert_array_equal(g[k], a[k], err_msg=str(k))
    np.testing.assert_array_equal(np.asarray(g), a)
