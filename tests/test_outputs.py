"""Outputs (issue 19, items 3, 5, 7 and the one-line errors): finished work is never silently
replaced, the files of one output are one set, options do what their names say.

Each test failed before its fix.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner

import brainrt
from brainrt.cli import main
from conftest import error_line, listing, one_cli_error, run_cli, small_slice, write_tiff


def _run(args, **kw):
    return CliRunner().invoke(main, ["-q", *[str(a) for a in args]], **kw)


def _one_error(result):
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


def _ok(result):
    assert result.exit_code == 0, (result.exit_code, result.output, result.exception)
    return result.stdout


@pytest.fixture
def small(tmp_path, synthetic_slice):
    """A small slice and its truth as TIFFs, and an output folder."""
    src = write_tiff(tmp_path / "s.tif", synthetic_slice.image[:192, :256])
    truth = write_tiff(tmp_path / "t.tif", synthetic_slice.mask[:192, :256])
    (tmp_path / "out").mkdir()
    return src, truth, tmp_path / "out"


def _state(folder):
    """Name -> (mtime, bytes) of every file below ``folder``."""
    return {p: ((folder / p).stat().st_mtime_ns, (folder / p).read_bytes() if (folder / p).is_file() else b"")
            for p in listing(folder)}


COMMANDS = {"featurize": ("x.zarr", []), "classify": ("x.ome.tif", []), "cluster": ("x.ome.tif", []),
            "subdivide": ("x.ome.tif", ["--area", "dense-small", "-k", "2", "--whole"])}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_finished_output_same_arguments_do_nothing_others_refused(command, small, tiny_bundle_path):
    src, _, out = small
    name, extra = COMMANDS[command]
    args = [command, src, "-m", tiny_bundle_path, "-o", out / name, *extra]
    _ok(_run(args))
    first = _state(out)
    assert "complete" in _ok(_run(args))  # same arguments: said, nothing recomputed or rewritten
    assert _state(out) == first
    line = _one_error(_run([*args, "--stride", "8"]))
    assert "other arguments" in line and "--stride 16 vs 8" in line and "--overwrite" in line, line
    assert _state(out) == first
    _ok(_run([*args, "--stride", "8", "--overwrite"]))
    assert _state(out) != first
    assert "complete" in _ok(_run([*args, "--stride", "8"]))


def test_output_without_a_record_is_refused_unless_overwrite(small, tiny_bundle_path):
    src, _, out = small
    (out / "x.ome.tif").write_bytes(b"someone's map")
    args = ["classify", src, "-m", tiny_bundle_path, "-o", out / "x.ome.tif"]
    assert "no brainrt run record" in _one_error(_run(args))
    assert (out / "x.ome.tif").read_bytes() == b"someone's map"
    _ok(_run([*args, "--overwrite"]))
    assert tifffile.imread(out / "x.ome.tif").shape == (192, 256)


def test_changed_input_is_other_arguments(small, tiny_bundle_path, synthetic_slice):
    src, _, out = small
    args = ["classify", src, "-m", tiny_bundle_path, "-o", out / "x.ome.tif"]
    _ok(_run(args))
    write_tiff(src, synthetic_slice.image[192:384, :256])  # another slice under the same name
    assert "SOURCE s.tif changed since" in _one_error(_run(args))


def test_incomplete_set_is_refused(small, tiny_bundle_path):
    src, _, out = small
    args = ["classify", src, "-m", tiny_bundle_path, "-o", out / "x.ome.tif"]
    _ok(_run(args))
    (out / "x.probabilities.ome.tif").unlink()
    assert "incomplete" in _one_error(_run(args))


def test_rerun_without_truth_removes_the_old_metrics(small, tiny_bundle_path):
    src, truth, out = small
    base = ["classify", src, "-m", tiny_bundle_path, "-o", out / "x.ome.tif"]
    _ok(_run([*base, "--truth", truth]))
    assert {"x.metrics.json", "x.confusion.png"} <= set(listing(out))
    _ok(_run([*base, "--overwrite"]))
    assert sorted(listing(out)) == ["x.ome.tif", "x.overlay.png", "x.probabilities.ome.tif", "x.run.json",
                                    "x.uncertainty.ome.tif"]


def test_classify_from_features_removes_an_older_overlay(small, tiny_bundle_path):
    src, _, out = small
    _ok(_run(["classify", src, "-m", tiny_bundle_path, "-o", out / "x.ome.tif"]))
    _ok(_run(["featurize", src, "-m", tiny_bundle_path, "-o", out / "f.zarr"]))
    _ok(_run(["classify", out / "f.zarr", "-m", tiny_bundle_path, "-o", out / "x.ome.tif", "--overwrite"]))
    assert not (out / "x.overlay.png").exists()
    rec = json.loads((out / "x.run.json").read_text())
    assert sorted(rec["files"]) == ["x.ome.tif", "x.probabilities.ome.tif", "x.uncertainty.ome.tif"]


@pytest.mark.parametrize("where", ["layout", "band"])
def test_disk_full_leaves_the_old_set_and_no_label_map_alone(where, small, tiny_bundle_path, monkeypatch):
    """A write that fails (ENOSPC) on the probabilities, streamed into their file band by band while they
    are computed (laying the file out, or writing a band): one line, exit 2; neither a new label map
    without its probabilities nor a temporary file is left, and an older set stays whole."""
    import os

    src, _, out = small
    real_imwrite, real_pwrite = tifffile.imwrite, os.pwrite

    def full(path, data=None, *a, **kw):
        if ".probabilities." in str(path) or (data is not None and np.ndim(data) == 3):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_imwrite(path, data, *a, **kw)

    def full_band(fd, data, offset):
        raise OSError(errno.ENOSPC, "No space left on device")

    def fill(on):
        if where == "layout":
            monkeypatch.setattr(tifffile, "imwrite", full if on else real_imwrite)
        else:
            monkeypatch.setattr(os, "pwrite", full_band if on else real_pwrite)

    args = ["classify", src, "-m", tiny_bundle_path, "-o", out / "x.ome.tif"]
    fill(True)
    line = _one_error(_run(args))
    assert "x.ome.tif" in line and "no space left" in line, line
    assert listing(out) == []
    fill(False)
    _ok(_run(args))
    before = _state(out)
    fill(True)
    _one_error(_run([*args, "--stride", "8", "--overwrite"]))
    assert _state(out) == before


@pytest.mark.parametrize(("command", "name"), [("classify", "a.png"), ("featurize", "a.tif"), ("cluster", "a.zarr"),
                                               ("subdivide", "a.json")])
def test_output_name_of_another_format_is_refused(command, name, small, tiny_bundle_path):
    src, _, out = small
    line = _one_error(_run([command, src, "-m", tiny_bundle_path, "-o", out / name, *COMMANDS[command][1]]))
    assert name in line and "name the output like" in line, line
    assert listing(out) == []


@pytest.mark.parametrize("args", [["--threads", "0"], ["--workers", "0", "--z", "all"], ["--batch-size", "0"],
                                  ["--stride", "-1"], ["--nosuch"]])
def test_bad_option_values_are_one_line(args, small, tiny_bundle_path):
    src, _, out = small
    line = _one_error(_run(["classify", src, "-m", tiny_bundle_path, "-o", out / "x.ome.tif", *args]))
    assert args[0] in line and "--help" in line, line
    assert listing(out) == []


def test_subdivide_k_0_is_one_line(small, tiny_bundle_path):
    src, _, out = small
    line = _one_error(_run(["subdivide", src, "-m", tiny_bundle_path, "--area", "dense-small", "-k", "0", "-o", out / "x.tif"]))
    assert "'-k' / '--clusters'" in line, line


def test_errors_name_the_command_run(small, tiny_bundle_path):
    src, _, out = small
    for command in ("classify", "cluster"):
        line = _one_error(_run([command, src, "-m", tiny_bundle_path, "--pixel-size", "-1", "-o", out / "x.ome.tif"]))
        assert f"parameter of {command} " in line, line


def test_area_help_lists_the_bundles_areas(shipped_bundle_path):
    from brainrt.bundle.load import Bundle

    out = CliRunner().invoke(main, ["subdivide", "--help"]).output
    names = Bundle.load(shipped_bundle_path, heads=False).class_names
    assert all(n in " ".join(out.split()) for n in names), out


# overlays ---------------------------------------------------------------------------------------------
def test_overlay_has_a_scale_bar_and_truth_contours(tmp_path, synthetic_slice):
    from brainrt.plots import contours, overlay_png, scale_bar_um

    img, mask = synthetic_slice.image, synthetic_slice.mask
    labels = np.where(mask > 0, mask.astype(np.int16) - 1, -1)
    pngs = {}
    for name, kw in {"plain": {}, "bar": dict(pixel_size_um=1.17), "truth": dict(truth=mask)}.items():
        overlay_png(tmp_path / f"{name}.png", img, labels, ["a", "b", "c", "d"], **kw)
        pngs[name] = _png(tmp_path / f"{name}.png")
    assert not np.array_equal(pngs["plain"], pngs["bar"]) and not np.array_equal(pngs["plain"], pngs["truth"])
    assert scale_bar_um(576, 1.17) == 100 and scale_bar_um(5805, 1.17) == 1000
    edge = contours(np.array([[1, 1, 2], [1, 1, 2], [3, 3, 3]]))
    assert edge.tolist() == [[False, True, False], [True, True, True], [False, False, False]]


def test_overlay_layout_width_and_atlas_colours(tmp_path, synthetic_slice):
    """Issue 30 item 5: the preview is PREVIEW_WIDTH wide by default (half resolution for slice309's 5805 px),
    full resolution on request; the scale bar and legend sit below the image (its pixels are the same with and
    without them); truth borders only where two labeled areas meet."""
    from brainrt.plots import ATLAS_COLORS, PREVIEW_WIDTH, area_colors, contours, overlay_png

    img = np.tile(synthetic_slice.image[:64], (1, 11))[:, :5805]  # slice309's width
    labels = np.zeros(img.shape, np.int16)
    overlay_png(tmp_path / "d.png", img, labels, ["Ctx"])
    assert _png(tmp_path / "d.png").shape[1] == -(-5805 // -(-5805 // PREVIEW_WIDTH)) >= 2500
    overlay_png(tmp_path / "f.png", img[:, :1000], labels[:, :1000], ["Ctx"], width=1000)
    assert _png(tmp_path / "f.png").shape[1] == 1000
    small, lab = synthetic_slice.image[:192, :256], np.zeros((192, 256), np.int16)
    overlay_png(tmp_path / "a.png", small, lab, ["Ctx", "Str"])
    overlay_png(tmp_path / "b.png", small, lab, ["Ctx", "Str"], pixel_size_um=1.17)
    a, b = _png(tmp_path / "a.png"), _png(tmp_path / "b.png")
    assert b.shape[0] > a.shape[0] and np.array_equal(a[4 : 4 + 192], b[4 : 4 + 192])  # the bar is off the image
    truth = np.zeros((6, 6), np.uint8)
    truth[1:5, 1:3], truth[1:5, 3:5] = 1, 2  # two areas inside an unlabeled frame
    edge = contours(truth, unlabeled=0)
    assert edge[1:5, 2].all() and edge.sum() == 4  # only the 1 | 2 border, not the frame
    rgb = area_colors(["Ctx", "striatum", "VP", "ZI", "HypoTh", "WM", "mine"])
    want = [ATLAS_COLORS[k] for k in ("ctx", "striatum", "vp", "zi", "hypoth", "wm")]
    assert [("#%02X%02X%02X" % tuple(int(round(255 * v)) for v in c)) for c in rgb[:6]] == want
    assert area_colors(["Ctx"], ["#123456"])[0].tolist() == pytest.approx([0x12 / 255, 0x34 / 255, 0x56 / 255])


def _png(path):
    import matplotlib.image

    return matplotlib.image.imread(path)


def test_readme_volume_example_files_are_ignored_by_git():
    """Issue 19: running the README's volume example in the clone left stack.tif and out.ome.zarr as untracked files."""
    import re
    import shutil
    import subprocess

    from conftest import ROOT

    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    text = (ROOT / "README.md").read_text()
    block = text[text.index("### Whole volumes"):]
    block = block[block.index("```bash") : block.index("```", block.index("```bash") + 3)]
    names = re.findall(r"imwrite\('([^']+)'", block) + re.findall(r"-o (\S+)", block)
    assert sorted(names) == ["out.ome.zarr", "stack.tif"], names
    for name in [*names, f".{names[-1]}.partial"]:
        done = subprocess.run(["git", "check-ignore", "-q", name], cwd=ROOT)
        assert done.returncode == 0, f"{name} is not ignored by git"


@pytest.mark.parametrize("command, extra", [("classify", []), ("cluster", []), ("subdivide", ["--area", "A"]),
                                            ("featurize", [])])
def test_output_that_is_the_input_is_refused(command, extra, tmp_path, tiny_bundle_path, synthetic_slice):
    src = write_tiff(tmp_path / "slice.tif", synthetic_slice.image[:192, :256])
    before = src.read_bytes()
    r = run_cli([command, src, "-m", tiny_bundle_path, "-o", tmp_path / "." / "slice.tif", *extra])
    line = one_cli_error(r)
    assert "slice.tif" in line and ("input" in line or "file" in line), line
    assert src.read_bytes() == before


def test_output_that_is_the_truth_or_a_sibling_is_refused(tmp_path, tiny_bundle_path, synthetic_slice):
    src = write_tiff(tmp_path / "slice.tif", synthetic_slice.image[:192, :256])
    truth = write_tiff(tmp_path / "truth.tif", synthetic_slice.mask[:192, :256])
    r = run_cli(["classify", src, "-m", tiny_bundle_path, "--truth", truth, "-o", truth])
    assert "is an input" in one_cli_error(r)
    # the probabilities written beside labels.ome.tif would replace the input
    img = write_tiff(tmp_path / "x.probabilities.ome.tif", synthetic_slice.image[:192, :256])
    r = run_cli(["classify", img, "-m", tiny_bundle_path, "-o", tmp_path / "x.ome.tif"])
    assert "is an input" in one_cli_error(r)


@pytest.mark.parametrize("command", ["featurize", "classify"])
def test_output_in_missing_folder(command, io_dirs, tiny_bundle_path, slice_tif):
    src, out = io_dirs
    target = out / "missing" / ("x.zarr" if command == "featurize" else "x.labels.ome.tif")
    result = run_cli([command, slice_tif, "-m", tiny_bundle_path, "-o", target])
    line = error_line(result)
    assert result.exit_code == 2
    assert str(target) in line and "does not exist" in line
    assert listing(out) == []


@pytest.mark.parametrize("command", ["featurize", "classify"])
def test_output_in_read_only_folder(command, io_dirs, tiny_bundle_path, slice_tif):
    src, out = io_dirs
    out.chmod(0o555)
    try:
        if os.access(out, os.W_OK):
            pytest.skip("running as root: a read-only folder is still writable")
        _refused_as_not_writable(command, out, tiny_bundle_path, slice_tif)
    finally:
        out.chmod(0o755)


@pytest.mark.parametrize("command", ["featurize", "classify"])
def test_output_in_unwritable_folder_simulated(command, io_dirs, tiny_bundle_path, slice_tif, monkeypatch):
    """The same check where chmod cannot bite (root): os.access says the folder is read-only."""
    src, out = io_dirs
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if (Path(p) == out and mode & os.W_OK)
                        else real_access(p, mode, **kw))
    _refused_as_not_writable(command, out, tiny_bundle_path, slice_tif)


def _refused_as_not_writable(command, out, bundle_path, slice_tif):
    """``command`` with its output in the folder ``out`` exits 2 with one line naming it, writing nothing."""
    target = out / ("x.zarr" if command == "featurize" else "x.labels.ome.tif")
    result = run_cli([command, slice_tif, "-m", bundle_path, "-o", target])
    assert result.exit_code == 2
    line = error_line(result)
    assert str(target) in line and "not writable" in line
    assert listing(out) == []


def test_featurize_does_not_replace_a_file_by_a_folder(io_dirs, tiny_bundle_path, synthetic_slice):
    """`brainrt featurize slice.tif -o slice.tif` must not delete the slice to put a zarr folder there."""
    src, _ = io_dirs
    path = write_tiff(src / "slice.tif", small_slice(synthetic_slice))
    data = path.read_bytes()
    result = run_cli(["featurize", path, "-m", tiny_bundle_path, "-o", path])
    assert result.exit_code == 2, (result.output, result.exception)
    assert str(path) in error_line(result)
    assert path.read_bytes() == data
    assert listing(src) == ["slice.tif"]


def test_classify_does_not_replace_a_folder_by_a_file(io_dirs, tiny_bundle_path, slice_tif):
    src, out = io_dirs
    target = out / "x.labels.ome.tif"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    result = run_cli(["classify", slice_tif, "-m", tiny_bundle_path, "-o", target])
    assert result.exit_code == 2, (result.output, result.exception)
    assert str(target) in error_line(result)
    assert listing(out) == ["x.labels.ome.tif", "x.labels.ome.tif/keep.txt"]


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_outputs_get_umask_modes(umask, tmp_path, tiny_bundle, synthetic_slice):
    """Atomic writes go through mkstemp/mkdtemp (0600/0700); the final files must not keep those modes."""
    import stat

    from brainrt.io import write_json

    old = os.umask(umask)
    try:
        write_json(tmp_path / "m.json", {"a": 1})
        brainrt.featurize(small_slice(synthetic_slice), tiny_bundle, out=tmp_path / "f.zarr")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "m.json").stat().st_mode) == 0o666 & ~umask
    assert stat.S_IMODE((tmp_path / "f.zarr").stat().st_mode) == 0o777 & ~umask


def test_interrupted_featurize_leaves_no_output(tmp_path, tiny_bundle_path, tiny_bundle):
    from brainrt.synth import make_slice

    image = make_slice((192, 320), seed=2).image  # ~12,000 patches at stride 2 on the per-patch path: seconds
    big = write_tiff(tmp_path / "big.tif", image)
    out = tmp_path / "out.zarr"
    cmd = [sys.executable, "-m", "brainrt.cli", "-q", "featurize", str(big), "-m", str(tiny_bundle_path),
           "--stride", "2", "--method", "patch", "--precision", "fp32", "-o", str(out)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    log = open(tmp_path / "killed-run.log", "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    def first_block_written():  # the event: a chunk of the first block in the temp folder's features
        return any(p.is_file() for p in tmp_path.glob(".out.zarr.*/0/c/**/*"))

    try:
        deadline = time.monotonic() + 300
        while not first_block_written() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None, f"finished before it could be killed: {(tmp_path / 'killed-run.log').read_text()}"
        assert first_block_written(), "no block was written"
        proc.send_signal(signal.SIGKILL)  # mid-run: after the first of about a dozen blocks
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()  # temp folders may stay behind, the output may not
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert out.is_dir()
    got = brainrt.load_features(out)
    ref = brainrt.featurize(image, tiny_bundle, stride=2, method="patch")
    np.testing.assert_array_equal(got.valid, ref.valid)
    np.testing.assert_array_equal(np.asarray(got.features[:]), ref.features)
