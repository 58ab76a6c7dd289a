"""The demo: the whole chain on the built-in synthetic slice."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
import tifffile

from conftest import ROOT


def test_demo_output_is_ignored_by_git():
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    r = subprocess.run(["git", "check-ignore", "-q", "brainrt-demo/areas.ome.tif"], cwd=ROOT)
    assert r.returncode == 0


def test_demo_subdivides_the_interior(tmp_path):
    from brainrt.demo import run_demo

    lines = list(run_demo(tmp_path / "demo"))
    assert any(ln.startswith("subdivide") for ln in lines)
    sub = tifffile.imread(tmp_path / "demo" / "subdivide.ome.tif")
    areas = tifffile.imread(tmp_path / "demo" / "areas.ome.tif")
    inside = sub != 255
    # no sub-divided pixel within half a patch (32 px of the 64 px demo patches... or more) of another area
    from scipy.ndimage import binary_dilation

    other = areas != areas[inside][0]
    near_border = binary_dilation(other, np.ones((33, 33), bool))
    assert inside.any() and not (inside & near_border).any()
