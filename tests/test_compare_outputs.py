"""tools/compare_outputs.py: what it calls identical and what it calls different (the runs themselves are
the tool's job, not the suite's)."""

from __future__ import annotations

import json

import numpy as np
import tifffile

from tools.compare_outputs import compare_trees


def _side(folder, labels, record):
    folder.mkdir()
    tifffile.imwrite(folder / "a.ome.tif", labels, ome=True)  # OME-XML holds a fresh UUID: bytes differ
    (folder / "a.run.json").write_text(json.dumps(record))
    (folder / "chunk").write_bytes(b"\x01\x02")
    return [(str(folder), "<OUT>")]


def test_same_outputs_are_identical_whatever_their_folders_and_times(tmp_path):
    labels = np.arange(64, dtype=np.uint8).reshape(8, 8)
    ra = _side(tmp_path / "a", labels, {"out": str(tmp_path / "a" / "x"), "seconds": 1.5, "stride": 16})
    rb = _side(tmp_path / "b", labels, {"out": str(tmp_path / "b" / "x"), "seconds": 9.0, "stride": 16})
    same, diffs = compare_trees(tmp_path / "a", tmp_path / "b", ra, rb)
    assert diffs == [] and sum(same.values()) == 3 and same["json"] == 1


def test_one_pixel_one_value_or_one_file_is_a_difference(tmp_path):
    labels = np.arange(64, dtype=np.uint8).reshape(8, 8)
    other = labels.copy()
    other[3, 4] = 0
    ra = _side(tmp_path / "a", labels, {"stride": 16})
    rb = _side(tmp_path / "b", other, {"stride": 8})
    (tmp_path / "b" / "extra.png").write_bytes(b"")
    (tmp_path / "b" / "chunk").write_bytes(b"\x01\x03")
    _, diffs = compare_trees(tmp_path / "a", tmp_path / "b", ra, rb)
    assert diffs == ["extra.png: only in B", "a.ome.tif: page 0 pixels differ (1 of 64 values)",
                     "a.run.json: json differs: .stride: 16 vs 8", "chunk: bytes differ"]
