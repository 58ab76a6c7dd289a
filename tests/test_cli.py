"""The command line: one-line errors, options checked before any work, progress, interrupts."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import brainrt
from brainrt.cli import main
from conftest import error_line, listing, run_cli, write_tiff


def tifffile_shape(path):
    import tifffile

    return tifffile.imread(path).shape


def test_no_progress_bar_off_a_terminal(tmp_path, tiny_bundle_path, synthetic_slice):
    src = write_tiff(tmp_path / "slice.tif", synthetic_slice.image[:192, :256])
    r = run_cli(["classify", src, "-m", tiny_bundle_path, "-o", tmp_path / "a.ome.tif"])
    assert r.exit_code == 0 and "patch/s" not in r.stderr and "%|" not in r.stderr, r.stderr
    r = run_cli(["--progress", "classify", src, "-m", tiny_bundle_path, "-o", tmp_path / "b.ome.tif"])
    assert r.exit_code == 0 and "%|" in r.stderr, r.stderr


def test_interrupt_exits_130(tmp_path, tiny_bundle_path, synthetic_slice, monkeypatch):
    import brainrt.api

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(brainrt.api, "classify_plan", interrupted)
    src = write_tiff(tmp_path / "slice.tif", synthetic_slice.image[:192, :256])
    r = run_cli(["classify", src, "-m", tiny_bundle_path, "-o", tmp_path / "a.ome.tif"])
    assert r.exit_code == 130 and "Interrupted" in r.stderr
    assert not (tmp_path / "a.ome.tif").exists()


def test_interrupt_says_no_patch_count(tiny_bundle, synthetic_slice, caplog):
    """Interrupted: the "featurized N patches" line is not logged (it came before "Interrupted; ...")."""
    plan = brainrt.make_plan(synthetic_slice.image[:192, :256], tiny_bundle, stride=32)

    def stop(*_):
        raise KeyboardInterrupt

    with caplog.at_level(logging.INFO, logger="brainrt"):
        for call in (brainrt.api.featurize_plan, brainrt.api.classify_plan):
            with pytest.raises(KeyboardInterrupt):
                call(plan, tiny_bundle, on_block=stop)
        assert not [r.getMessage() for r in caplog.records if "patches" in r.getMessage()]
        brainrt.api.featurize_plan(plan, tiny_bundle)
        assert [r.getMessage() for r in caplog.records if "featurized" in r.getMessage()]


@pytest.mark.parametrize(("args", "named"), [
    (["--stride", "0"], "'--stride'"),
    (["--tissue-mask", "MASK"], "MASK"),
    (["--head", "nosuch"], "nosuch"),
    (["--truth", "TRUTH"], "TRUTH"),
])
def test_cli_bad_options(args, named, io_dirs, tiny_bundle_path, slice_tif, synthetic_slice):
    src, out = io_dirs
    small = write_tiff(src / "small_mask.tif", np.ones((100, 100), np.uint8))
    args = [str(small) if a in ("MASK", "TRUTH") else a for a in args]
    named = str(small) if named in ("MASK", "TRUTH") else named
    result = run_cli(["classify", slice_tif, "-m", tiny_bundle_path, "-o", out / "x.labels.ome.tif", *args])
    assert result.exit_code == 2, (result.output, result.exception)
    assert named in error_line(result)
    assert listing(out) == []


def test_real_process_prints_one_error_line(tmp_path, tiny_bundle_path):
    """The true stderr of `brainrt`: with -q exactly the error line; without, info lines but no traceback."""
    bad = tmp_path / "broken.tif"
    bad.write_text("not a tiff")
    cmd = [sys.executable, "-m", "brainrt.cli"]
    args = ["featurize", str(bad), "-m", str(tiny_bundle_path), "-o", str(tmp_path / "x.zarr")]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    quiet = subprocess.run(cmd + ["-q"] + args, capture_output=True, text=True, timeout=120, env=env)
    assert quiet.returncode == 2
    lines = quiet.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: {bad}: cannot read as TIFF"), quiet.stderr
    assert quiet.stdout == ""
    loud = subprocess.run(cmd + args, capture_output=True, text=True, timeout=120, env=env)
    assert loud.returncode == 2
    assert "Traceback" not in loud.stderr
    assert loud.stderr.strip().splitlines()[-1].startswith(f"Error: {bad}: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.tif"]


@pytest.mark.parametrize("command", ["featurize", "classify"])
def test_real_process_checks_the_output_path_first(command, tmp_path, tiny_bundle_path, slice_tif):
    """An unwritable -o fails at once, before a progress bar (the error used to follow the bar on its line)."""
    target = tmp_path / "missing" / ("x.zarr" if command == "featurize" else "x.labels.ome.tif")
    proc = subprocess.run([sys.executable, "-m", "brainrt.cli", command, str(slice_tif), "-m", str(tiny_bundle_path),
                           "-o", str(target)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [f"Error: {target}: output folder {target.parent} does not exist"]
    assert proc.stdout == "" and listing(tmp_path) == []


@pytest.mark.parametrize("case", ["truth shape", "truth codes", "roi shape", "workers on a slice",
                                  "scheduler on a slice", "z on a 2D image", "unknown area", "bad head"])
def test_cli_inputs_are_checked_before_any_work(case, tmp_path, slice_tif, tiny_bundle_path, monkeypatch):
    """Each bad input is one line and exit 2, and the engine never ran (its loop is replaced by a tripwire)."""
    import brainrt.api

    def tripwire(*args, **kwargs):
        raise AssertionError("the engine ran before the input was checked")

    monkeypatch.setattr(brainrt.api, "run", tripwire)
    small = write_tiff(tmp_path / "small.tif", np.ones((10, 10), np.uint8))
    no_codes = write_tiff(tmp_path / "nocodes.tif", np.full(tifffile_shape(slice_tif), 200, np.uint8))
    out = tmp_path / "o.ome.tif"
    args, message = {
        "truth shape": (["classify", slice_tif, "--truth", small], f"{small}: label mask shape (10, 10) differs"),
        "truth codes": (["classify", slice_tif, "--truth", no_codes], f"{no_codes}: does not look like a label mask"),
        "roi shape": (["subdivide", slice_tif, "--roi", small], f"{small}: ROI mask shape (10, 10) differs"),
        "workers on a slice": (["classify", slice_tif, "--workers", 2], "--workers runs a volume on Dask"),
        "scheduler on a slice": (["featurize", slice_tif, "--scheduler", "tcp://127.0.0.1:1"],
                                 "--scheduler runs a volume on Dask"),
        "z on a 2D image": (["classify", slice_tif, "--z", 0], "is a 2D image; --z 0 does not apply"),
        "unknown area": (["subdivide", slice_tif, "--area", "Nowhere"], "unknown area 'Nowhere'"),
        "bad head": (["subdivide", slice_tif, "--area", "dense-small", "--head", "gmm"], "is not a classifier"),
    }[case]
    result = CliRunner().invoke(main, [str(a) for a in [*args, "-m", tiny_bundle_path, "-o", out]])
    assert result.exit_code == 2, (result.output, result.exception)
    lines = [ln for ln in result.output.splitlines() if ln.startswith("Error: ")]
    assert len(lines) == 1 and message in lines[0], result.output
    assert listing(tmp_path) == sorted(["small.tif", "nocodes.tif"])


def test_a_saved_grid_classifies_down_the_slices_path(tiny_bundle, tiny_bundle_path, slice_tif, tmp_path):
    """A saved feature grid is classified by the slice's one path (the head a band of rows at a time, the map
    smoothed as the rows arrive, its probabilities and their uncertainty streamed to their OME-TIFFs): the same
    maps as the slice classified in one pass, to the float rounding of the head's batches."""
    import tifffile

    from brainrt.outputs import probabilities_path, uncertainty_path

    feats = tmp_path / "s.features.zarr"
    assert run_cli(["featurize", slice_tif, "-m", tiny_bundle_path, "--stride", "16", "-o", feats]).exit_code == 0
    outs = {"slice": tmp_path / "slice.labels.ome.tif", "grid": tmp_path / "grid.labels.ome.tif"}
    for src, extra in (("slice", ["--stride", "16"]), ("grid", [])):
        r = run_cli(["classify", slice_tif if src == "slice" else feats, "-m", tiny_bundle_path, "--smooth", "60",
                     *extra, "-o", outs[src]])
        assert r.exit_code == 0, r.output
    read = {k: [tifffile.imread(f(o)) for f in (str, probabilities_path, uncertainty_path)] for k, o in outs.items()}
    np.testing.assert_array_equal(read["grid"][0], read["slice"][0])
    assert read["grid"][1].shape[0] == len(tiny_bundle.class_names) and (read["grid"][1].sum(0) > 0.99).mean() > 0.2  # tissue cells sum to 1
    for a, b in zip(read["grid"][1:], read["slice"][1:]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_a_head_without_probabilities_writes_no_probability_files(tiny_bundle, tiny_bundle_path, slice_tif, tmp_path):
    """A head that gives labels only (linsvm) writes the label map and its overlay, and no probability or
    uncertainty OME-TIFF: the set asked for none (a slice's and a saved grid's classify alike)."""
    from brainrt.heads import Classifier
    from brainrt.outputs import probabilities_path, uncertainty_path

    assert not Classifier.of(tiny_bundle, "linsvm").proba
    feats = tmp_path / "s.features.zarr"
    assert run_cli(["featurize", slice_tif, "-m", tiny_bundle_path, "--stride", "32", "-o", feats]).exit_code == 0
    for src, extra in ((slice_tif, ["--stride", "32"]), (feats, [])):
        out = tmp_path / f"{Path(str(src)).stem.split('.')[0]}-{len(extra)}.labels.ome.tif"
        r = run_cli(["classify", src, "-m", tiny_bundle_path, "--head", "linsvm", *extra, "-o", out])
        assert r.exit_code == 0, r.output
        assert out.is_file() and not probabilities_path(out).exists() and not uncertainty_path(out).exists()
        assert "probabilities" not in r.output
