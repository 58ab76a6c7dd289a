"""Hardening: every bad input gives one line naming the file, exit status 2 and no output.

Covers `brainrt featurize` / `brainrt classify` (through click's CliRunner and, for the
exact stderr, a real subprocess) and the Python API; untrusted bundles (a pickle that
would run code must never be unpickled); and an interrupted run (SIGKILL) that must
leave no output behind and not disturb the next run.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import brainrt
from brainrt.cli import main
from brainrt.errors import BrainrtError
from conftest import listing, write_tiff


# --------------------------------------------------------------------------- bad slices
def _slice_image(synthetic_slice):
    return synthetic_slice.image[:192, :256]


def make_bad_slice(case, folder, synthetic_slice):
    """Write the bad input ``case`` into ``folder``; return (path, extra CLI args)."""
    img = _slice_image(synthetic_slice)
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
    elif case == "int32 TIFF":
        write_tiff(p, img.astype(np.int32))
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
              "inf float TIFF", "int32 TIFF", "slice smaller than a patch", "no tissue (all zero)", "missing file"]


def error_line(result_or_text):
    """The one line of a failed command's stderr (progress bars aside); fails on anything else."""
    text = result_or_text if isinstance(result_or_text, str) else result_or_text.stderr
    assert "Traceback" not in text, text
    lines = [ln for ln in text.replace("\r", "\n").splitlines() if ln.strip() and not ln.startswith("featurize:")]
    assert len(lines) == 1, text
    assert lines[0].startswith("Error: "), text
    if not isinstance(result_or_text, str):
        assert result_or_text.stdout == "", result_or_text.stdout  # nothing claims success
    return lines[0]


@pytest.fixture
def io_dirs(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    out.mkdir()
    return src, out


def _run(args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.mark.parametrize("command", ["featurize", "classify"])
@pytest.mark.parametrize("case", BAD_SLICES)
def test_cli_bad_slice(case, command, io_dirs, tiny_bundle_path, synthetic_slice):
    src, out = io_dirs
    path, extra = make_bad_slice(case, src, synthetic_slice)
    target = out / ("x.zarr" if command == "featurize" else "x.labels.ome.tif")
    before = listing(src), listing(out)
    result = _run([command, path, "-m", tiny_bundle_path, "-o", target, *extra])
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
    img = _slice_image(synthetic_slice)
    f = (img / 255).astype(np.float32)
    f[3, 4] = np.nan
    bad = {"NaN": f, "inf": np.where(f != f, np.inf, f).astype(np.float32), "3D": np.stack([img] * 2),
           "int32": img.astype(np.int32), "bool": img > 100, "small": img[:63, :200]}
    for name, arr in bad.items():
        with pytest.raises(BrainrtError, match="^image: "):
            brainrt.featurize(arr, tiny_bundle)


@pytest.mark.parametrize("case", ["3D stack with --z", "uint16", "float32", "float64"])
@pytest.mark.parametrize("command", ["featurize", "classify"])
def test_cli_good_variants(case, command, io_dirs, tiny_bundle_path, tiny_bundle, synthetic_slice):
    src, out = io_dirs
    img = _slice_image(synthetic_slice)
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
    result = _run([command, path, "-m", tiny_bundle_path, "-o", target, *extra])
    assert result.exit_code == 0, (result.output, result.exception)
    assert target.exists()
    assert not [p for p in listing(out) if p.startswith(".")]  # no temp left
    ref = brainrt.featurize(img, tiny_bundle, stride=16, standardize=std)
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
                                        "x.labels.run.json"]


# --------------------------------------------------------------------------- bad bundles
class Evil:
    """Unpickling this creates ``marker``: proof that untrusted code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def make_bad_bundle(case, bundle, tmp_path):
    """Damage the bundle copy ``bundle`` as ``case`` says; return (path to pass, text the error names)."""
    manifest = bundle / "manifest.json"
    if case == "missing head file":
        (bundle / "heads" / "logreg.joblib").unlink()
        return bundle, "heads/logreg.joblib"
    if case == "modified head file (hash mismatch)":
        with open(bundle / "heads" / "rbfsvm.joblib", "ab") as f:
            f.write(b"\0")
        return bundle, "heads/rbfsvm.joblib"
    if case == "modified ONNX graph":
        data = bytearray((bundle / "weights.bin").read_bytes())
        data[100] ^= 0xFF
        (bundle / "weights.bin").write_bytes(bytes(data))
        return bundle, "weights.bin"
    if case == "unknown schema_version":
        m = json.loads(manifest.read_text())
        m["schema_version"] = 99
        manifest.write_text(json.dumps(m))
        return bundle, "99"
    if case == "manifest not JSON":
        manifest.write_text("{")
        return bundle, "manifest.json"
    if case == "manifest missing":
        manifest.unlink()
        return bundle, "manifest.json"
    if case == "extra unlisted file":
        (bundle / "heads" / "extra.joblib").write_bytes(pickle.dumps(Evil(tmp_path / "MARKER")))
        return bundle, "heads/extra.joblib"
    if case == "evil pickle replaces a head":
        (bundle / "heads" / "logreg.joblib").write_bytes(pickle.dumps(Evil(tmp_path / "MARKER")))
        return bundle, "heads/logreg.joblib"
    if case == "bundle folder missing":
        return tmp_path / "nosuch-bundle", "nosuch-bundle"
    if case == "bundle is a file":
        f = tmp_path / "bundle.zip"
        f.write_bytes(b"PK")
        return f, "bundle.zip"
    raise AssertionError(case)


BAD_BUNDLES = ["missing head file", "modified head file (hash mismatch)", "modified ONNX graph",
               "unknown schema_version", "manifest not JSON", "manifest missing", "extra unlisted file",
               "evil pickle replaces a head", "bundle folder missing", "bundle is a file"]


@pytest.mark.parametrize("command", ["featurize", "classify"])
@pytest.mark.parametrize("case", BAD_BUNDLES)
def test_cli_bad_bundle(case, command, tiny_bundle_copy, io_dirs, slice_tif, tmp_path):
    src, out = io_dirs
    bundle, named = make_bad_bundle(case, tiny_bundle_copy, tmp_path)
    target = out / ("x.zarr" if command == "featurize" else "x.labels.ome.tif")
    result = _run([command, slice_tif, "-m", bundle, "-o", target])
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    line = error_line(result)
    assert str(bundle) in line and named in line, line
    assert listing(out) == []
    assert not (tmp_path / "MARKER").exists()


@pytest.mark.parametrize("case", BAD_BUNDLES)
def test_api_bad_bundle_never_unpickles(case, tiny_bundle_copy, tmp_path):
    bundle, named = make_bad_bundle(case, tiny_bundle_copy, tmp_path)
    with pytest.raises(BrainrtError) as info:
        brainrt.Bundle.load(bundle)
    assert str(bundle) in str(info.value) and named in str(info.value)
    assert not (tmp_path / "MARKER").exists()


def test_evil_pickle_would_run_code(tmp_path):
    """Control for the tests above: the payload does create its marker when unpickled."""
    import joblib

    marker = tmp_path / "MARKER"
    (tmp_path / "evil.joblib").write_bytes(pickle.dumps(Evil(marker)))
    joblib.load(tmp_path / "evil.joblib")
    assert marker.exists()


def test_no_default_bundle(tmp_path, slice_tif, monkeypatch):
    monkeypatch.setenv("BRAINRT_MODELS", str(tmp_path / "models"))
    result = _run(["featurize", slice_tif, "-o", tmp_path / "x.zarr"])
    assert result.exit_code == 2
    line = error_line(result)
    assert "slice309-paper6" in line and "--model" in line
    assert listing(tmp_path) == []


# --------------------------------------------------------------------------- bad outputs
@pytest.mark.parametrize("command", ["featurize", "classify"])
def test_output_in_missing_folder(command, io_dirs, tiny_bundle_path, slice_tif):
    src, out = io_dirs
    target = out / "missing" / ("x.zarr" if command == "featurize" else "x.labels.ome.tif")
    result = _run([command, slice_tif, "-m", tiny_bundle_path, "-o", target])
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
        target = out / ("x.zarr" if command == "featurize" else "x.labels.ome.tif")
        result = _run([command, slice_tif, "-m", tiny_bundle_path, "-o", target])
        assert result.exit_code == 2
        line = error_line(result)
        assert str(target) in line and "not writable" in line
        assert listing(out) == []
    finally:
        out.chmod(0o755)


@pytest.mark.parametrize("command", ["featurize", "classify"])
def test_output_in_unwritable_folder_simulated(command, io_dirs, tiny_bundle_path, slice_tif, monkeypatch):
    """The same check where chmod cannot bite (root): os.access says the folder is read-only."""
    src, out = io_dirs
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if (Path(p) == out and mode & os.W_OK)
                        else real_access(p, mode, **kw))
    target = out / ("x.zarr" if command == "featurize" else "x.labels.ome.tif")
    result = _run([command, slice_tif, "-m", tiny_bundle_path, "-o", target])
    assert result.exit_code == 2
    line = error_line(result)
    assert str(target) in line and "not writable" in line
    assert listing(out) == []


def test_featurize_does_not_replace_a_file_by_a_folder(io_dirs, tiny_bundle_path, synthetic_slice):
    """`brainrt featurize slice.tif -o slice.tif` must not delete the slice to put a zarr folder there."""
    src, _ = io_dirs
    path = write_tiff(src / "slice.tif", _slice_image(synthetic_slice))
    data = path.read_bytes()
    result = _run(["featurize", path, "-m", tiny_bundle_path, "-o", path])
    assert result.exit_code == 2, (result.output, result.exception)
    assert str(path) in error_line(result)
    assert path.read_bytes() == data
    assert listing(src) == ["slice.tif"]


def test_classify_does_not_replace_a_folder_by_a_file(io_dirs, tiny_bundle_path, slice_tif):
    src, out = io_dirs
    target = out / "x.labels.ome.tif"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    result = _run(["classify", slice_tif, "-m", tiny_bundle_path, "-o", target])
    assert result.exit_code == 2, (result.output, result.exception)
    assert str(target) in error_line(result)
    assert listing(out) == ["x.labels.ome.tif", "x.labels.ome.tif/keep.txt"]


def test_classify_features_of_another_model(io_dirs, tiny_bundle_path, tiny_bundle, synthetic_slice):
    import zarr

    src, out = io_dirs
    feats = src / "x.features.zarr"
    brainrt.featurize(_slice_image(synthetic_slice), tiny_bundle, out=feats)
    zarr.open_group(str(feats), mode="r+").attrs["model_id"] = "0123456789ab"
    result = _run(["classify", feats, "-m", tiny_bundle_path, "-o", out / "x.labels.ome.tif"])
    assert result.exit_code == 2, (result.output, result.exception)
    line = error_line(result)
    assert str(feats) in line and "0123456789ab" in line
    assert listing(out) == []


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
    result = _run(["classify", slice_tif, "-m", tiny_bundle_path, "-o", out / "x.labels.ome.tif", *args])
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


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_outputs_get_umask_modes(umask, tmp_path, tiny_bundle, synthetic_slice):
    """Atomic writes go through mkstemp/mkdtemp (0600/0700); the final files must not keep those modes."""
    import stat

    from brainrt.io import write_json

    old = os.umask(umask)
    try:
        write_json(tmp_path / "m.json", {"a": 1})
        brainrt.featurize(_slice_image(synthetic_slice), tiny_bundle, out=tmp_path / "f.zarr")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "m.json").stat().st_mode) == 0o666 & ~umask
    assert stat.S_IMODE((tmp_path / "f.zarr").stat().st_mode) == 0o777 & ~umask


# --------------------------------------------------------------------------- interrupted run
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
        return any(p.is_file() for p in tmp_path.glob(".out.zarr.*/features/c/**/*"))

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


# --------------------------------------------------------------------------- every input checked before any work
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


def tifffile_shape(path):
    import tifffile

    return tifffile.imread(path).shape
