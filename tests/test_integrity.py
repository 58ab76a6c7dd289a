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
    """The stored chunk files of the ``features`` array, largest first (the ones holding tissue)."""
    files = [p for p in (Path(store) / "features").rglob("*") if p.is_file() and p.name != "zarr.json"]
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
