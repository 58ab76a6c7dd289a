"""Damaged feature zarrs are refused in one line naming the store (issue 19, item 4 of the issue).

A deleted chunk used to read as zeros (labels silently wrong), a truncated one gave a
codec traceback. Feature stores now record their chunks when finished and carry a
checksum codec, so a missing, truncated or altered chunk is found.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import brainrt
from brainrt.cli import main
from brainrt.errors import BrainrtError
from conftest import write_tiff
from conftest import one_cli_error as _one_error, run_cli as _run


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
