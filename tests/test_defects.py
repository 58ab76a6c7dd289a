"""The eight defects a new user hit with the CLI (issue 12), one test (or a few) each.

Each test failed before its fix.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner

import brainrt
from brainrt.cli import main
from conftest import ROOT, write_tiff


def _run(args, **kw):
    return CliRunner().invoke(main, [str(a) for a in args], **kw)


def _one_error(result):
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


# 1. an output that is an input ------------------------------------------------------------
@pytest.mark.parametrize("command, extra", [("classify", []), ("cluster", []), ("subdivide", ["--area", "A"]),
                                            ("featurize", [])])
def test_output_that_is_the_input_is_refused(command, extra, tmp_path, tiny_bundle_path, synthetic_slice):
    src = write_tiff(tmp_path / "slice.tif", synthetic_slice.image[:192, :256])
    before = src.read_bytes()
    r = _run([command, src, "-m", tiny_bundle_path, "-o", tmp_path / "." / "slice.tif", *extra])
    line = _one_error(r)
    assert "slice.tif" in line and ("input" in line or "file" in line), line
    assert src.read_bytes() == before


def test_output_that_is_the_truth_or_a_sibling_is_refused(tmp_path, tiny_bundle_path, synthetic_slice):
    src = write_tiff(tmp_path / "slice.tif", synthetic_slice.image[:192, :256])
    truth = write_tiff(tmp_path / "truth.tif", synthetic_slice.mask[:192, :256])
    r = _run(["classify", src, "-m", tiny_bundle_path, "--truth", truth, "-o", truth])
    assert "is an input" in _one_error(r)
    # the probabilities written beside labels.ome.tif would replace the input
    img = write_tiff(tmp_path / "x.probabilities.ome.tif", synthetic_slice.image[:192, :256])
    r = _run(["classify", img, "-m", tiny_bundle_path, "-o", tmp_path / "x.ome.tif"])
    assert "is an input" in _one_error(r)


# 2. a manifest that disagrees with its graph -------------------------------------------------
@pytest.mark.parametrize("key, value", [("patch_size", 32), ("n_features", 63)])
def test_manifest_disagreeing_with_the_graph_is_refused(key, value, tiny_bundle_copy, tmp_path, synthetic_slice):
    mpath = tiny_bundle_copy / "manifest.json"
    m = json.loads(mpath.read_text())
    m[key] = value  # the manifest is not among the hashed files: hashes still match
    mpath.write_text(json.dumps(m))
    with pytest.raises(brainrt.BrainrtError, match="manifest does not match"):
        brainrt.Bundle.load(tiny_bundle_copy)
    src = write_tiff(tmp_path / "slice.tif", synthetic_slice.image[:192, :256])
    r = _run(["classify", src, "-m", tiny_bundle_copy, "-o", tmp_path / "a.ome.tif"])
    assert "features.onnx" in _one_error(r)


def test_manifest_naming_another_input_is_refused(tiny_bundle_copy):
    mpath = tiny_bundle_copy / "manifest.json"
    m = json.loads(mpath.read_text())
    m["onnx"]["input"] = "pixels"
    mpath.write_text(json.dumps(m))
    with pytest.raises(brainrt.BrainrtError, match="input 'pixels'"):
        brainrt.Bundle.load(tiny_bundle_copy)


# 3. a tiny dynamic range -------------------------------------------------------------------
def _narrow_uint16(image):
    return (1000 + np.round(image.astype(np.float64) * 100 / 255)).astype(np.uint16)


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


# 4. a directory as the slice ---------------------------------------------------------------
@pytest.mark.parametrize("command", ["featurize", "classify", "cluster"])
def test_directory_as_input_says_so(command, tmp_path, tiny_bundle_path):
    """Before: "no such file"."""
    (tmp_path / "slices").mkdir()
    r = _run([command, tmp_path / "slices", "-m", tiny_bundle_path])  # default -o: the output name is not the point
    line = _one_error(r)  # featurize and classify read a folder of TIFFs as a volume; an empty one is named
    assert "is a directory" in line or "is a folder with no .tif/.tiff files" in line, line


# 5. multi-series TIFFs ----------------------------------------------------------------------
def _two_series(path, synthetic_slice):
    a, b = synthetic_slice.image[:192, :256], synthetic_slice.image[:160, :224]
    with tifffile.TiffWriter(path, ome=True) as tw:
        tw.write(a, metadata={"axes": "YX"})
        tw.write(b, metadata={"axes": "YX"})
    return path


def test_multi_series_needs_series(tmp_path, tiny_bundle_path, synthetic_slice):
    src = _two_series(tmp_path / "two.ome.tif", synthetic_slice)
    line = _one_error(_run(["classify", src, "-m", tiny_bundle_path, "-o", tmp_path / "a.ome.tif"]))
    assert "holds 2 series" in line and "(192, 256)" in line and "(160, 224)" in line and "--series" in line
    r = _run(["classify", src, "-m", tiny_bundle_path, "--series", "1", "-o", tmp_path / "a.ome.tif"])
    assert r.exit_code == 0, r.output
    assert tifffile.imread(tmp_path / "a.ome.tif").shape == (160, 224)
    line = _one_error(_run(["classify", src, "-m", tiny_bundle_path, "--series", "2", "-o", tmp_path / "b.ome.tif"]))
    assert "--series 2 is outside" in line


def test_api_reads_a_chosen_series(tmp_path, synthetic_slice):
    src = _two_series(tmp_path / "two.ome.tif", synthetic_slice)
    image, _ = brainrt.read_tiff(src, series=1)
    assert image.shape == (160, 224)


# 6. a crop that is all tissue ----------------------------------------------------------------
def test_all_tissue_crop_keeps_every_cell(tiny_bundle, synthetic_slice, caplog):
    crop = synthetic_slice.image[40:170, 340:470]
    assert (synthetic_slice.mask[40:170, 340:470] > 0).all()
    with caplog.at_level(logging.INFO, logger="brainrt"):
        plan = brainrt.make_plan(crop, tiny_bundle, stride=16)
    assert plan.valid.all()
    assert "no background" in caplog.text


def test_slices_with_background_still_use_otsu(tiny_bundle, synthetic_slice, caplog):
    with caplog.at_level(logging.INFO, logger="brainrt"):
        plan = brainrt.make_plan(synthetic_slice.image, tiny_bundle, stride=16)
    assert not plan.valid.all() and "no background" not in caplog.text


@pytest.mark.realdata
def test_all_tissue_crop_of_slice309(shared_data, shipped_bundle_path):
    image, _ = brainrt.read_tiff(shared_data / "slice309.tif")
    plan = brainrt.make_plan(image[700:830, 1500:1630], brainrt.Bundle.load(shipped_bundle_path), stride=16)
    assert plan.valid.shape == (9, 9) and plan.valid.all()


# 7. progress bars, SIGINT, the demo's folder ---------------------------------------------------
def test_no_progress_bar_off_a_terminal(tmp_path, tiny_bundle_path, synthetic_slice):
    src = write_tiff(tmp_path / "slice.tif", synthetic_slice.image[:192, :256])
    r = _run(["classify", src, "-m", tiny_bundle_path, "-o", tmp_path / "a.ome.tif"])
    assert r.exit_code == 0 and "patch/s" not in r.stderr and "%|" not in r.stderr, r.stderr
    r = _run(["--progress", "classify", src, "-m", tiny_bundle_path, "-o", tmp_path / "b.ome.tif"])
    assert r.exit_code == 0 and "%|" in r.stderr, r.stderr


def test_interrupt_exits_130(tmp_path, tiny_bundle_path, synthetic_slice, monkeypatch):
    import brainrt.api

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(brainrt.api, "classify_plan", interrupted)
    src = write_tiff(tmp_path / "slice.tif", synthetic_slice.image[:192, :256])
    r = _run(["classify", src, "-m", tiny_bundle_path, "-o", tmp_path / "a.ome.tif"])
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


def test_demo_output_is_ignored_by_git():
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    r = subprocess.run(["git", "check-ignore", "-q", "brainrt-demo/areas.ome.tif"], cwd=ROOT)
    assert r.returncode == 0


# 8. sub-division inside an area, not along its border ------------------------------------------
def _border_distance_ok(sub, region, r):
    """Every sub-divided cell lies at least ``r`` cells inside ``region`` (image edges aside)."""
    from scipy.ndimage import binary_erosion

    inner = binary_erosion(region, np.ones((2 * r + 1, 2 * r + 1), bool), border_value=1)
    return bool(np.all(inner[sub >= 0]))


def test_subdivide_interior_excludes_border_patches(tiny_bundle, synthetic_slice):
    grid = brainrt.featurize(synthetic_slice.image, tiny_bundle, stride=8)
    region = brainrt.classify(grid, tiny_bundle, smooth=0).labels == 0
    r = -(-(grid.patch_size // 2) // grid.stride)
    whole = brainrt.subdivide(grid, region=region, k=3)
    inner = brainrt.subdivide(grid, region=region, k=3, interior=True)
    assert not _border_distance_ok(whole, region, r)
    assert _border_distance_ok(inner, region, r) and (inner >= 0).sum() >= 3


def test_cli_subdivide_interior_by_default(tmp_path, tiny_bundle_path, synthetic_slice):
    src = write_tiff(tmp_path / "slice.tif", synthetic_slice.image)
    names = brainrt.Bundle.load(tiny_bundle_path).class_names
    counts = {}
    for flag in ("--interior", "--whole"):
        out = tmp_path / f"sub{flag}.ome.tif"
        r = _run(["subdivide", src, "-m", tiny_bundle_path, "--area", names[0], "-k", "3", "--stride", "8",
                  flag, "-o", out])
        assert r.exit_code == 0, r.output
        counts[flag] = int((tifffile.imread(out) != 255).sum())
    assert 0 < counts["--interior"] < counts["--whole"]


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


def test_volume_output_that_is_the_input_folder_is_refused(tmp_path, tiny_bundle_path, synthetic_slice):
    folder = tmp_path / "slices"
    folder.mkdir()
    for z in range(2):
        write_tiff(folder / f"s{z}.tif", synthetic_slice.image[:192, :256])
    before = sorted(p.name for p in folder.iterdir())
    r = _run(["classify", folder, "-m", tiny_bundle_path, "-o", folder])
    assert "is an input" in _one_error(r)
    assert sorted(p.name for p in folder.iterdir()) == before
