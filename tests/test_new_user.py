"""Issue 28, item 5: the tracebacks and wrong messages a new user hit, each one line now (or fixed).

Synthetic data and the shipped synthetic-demo bundle (no training); each test reproduces one row
of the issue's table and failed before its fix.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from brainrt.synth import draw_strokes, make_slice, make_volume
from conftest import ROOT, listing, write_tiff
from conftest import one_cli_error, run_cli, said

DEMO = ROOT / "models" / "synthetic-demo"


@pytest.fixture(scope="module")
def sl():
    return make_slice((256, 384), seed=3)


@pytest.fixture
def img(tmp_path, sl):
    return write_tiff(tmp_path / "s.tif", sl.image)


# --------------------------------------------------------------------------- outputs
@pytest.mark.parametrize("width", [192, 256])  # 3 and 4 grid cells at stride 64
def test_cluster_on_a_grid_three_or_four_cells_wide(tmp_path, sl, width):
    """The log-likelihood OME-TIFF (C, Y, X) with X = 3 or 4 was written without photometric and read
    back as RGB samples (``axes do not match stored shape``)."""
    src = write_tiff(tmp_path / "n.tif", sl.image[:, :width])
    r = run_cli(["cluster", src, "-m", DEMO, "--stride", 64, "-o", tmp_path / "n.ome.tif"])
    assert r.exit_code == 0, (r.output, r.exception)
    ll = tmp_path / "n.loglik.ome.tif"
    with tifffile.TiffFile(ll) as tif:
        assert tif.series[0].axes == "CYX" and tif.series[0].shape[0] == 4 and tif.series[0].shape[2] in (3, 4)


def test_truth_of_float_pixels_is_read_when_integral_refused_otherwise(tmp_path, sl, img):
    """A float32 truth mask ran the whole job and ended in an IndexError."""
    f = write_tiff(tmp_path / "t_f32.tif", sl.mask.astype(np.float32))
    r = run_cli(["classify", img, "-m", DEMO, "--stride", 32, "--truth", f, "-o", tmp_path / "a.ome.tif"])
    assert r.exit_code == 0, (r.output, r.exception)
    assert "pixel accuracy" in r.stdout
    half = write_tiff(tmp_path / "t_half.tif", sl.mask.astype(np.float32) + 0.5)
    line = one_cli_error(run_cli(["classify", img, "-m", DEMO, "--truth", half, "-o", tmp_path / "b.ome.tif"]))
    assert "t_half.tif" in line and "integer" in line, line
    assert not (tmp_path / "b.ome.tif").exists()


# --------------------------------------------------------------------------- fit
def test_class_colours_for_any_number_of_classes():
    """21 classes ran past the 20-colour palette (``generator raised StopIteration``)."""
    from brainrt.bundle.derive import _colors
    from brainrt.plots import class_colors

    names = [f"a{i}" for i in range(45)]
    cols = _colors(names, {"a3": "#123456"}, None, "map.json")
    assert len(cols) == 45 and len(set(cols)) == 45 and cols[3] == "#123456"
    rgb = class_colors(45)
    assert rgb.shape == (45, 3) and len({tuple(c) for c in rgb.round(4)}) == 45
    assert np.allclose(class_colors(20), class_colors(45)[:20])  # the first 20 unchanged


def test_fit_with_21_classes(tmp_path, sl, img):
    strokes = np.zeros(sl.mask.shape, np.uint8)
    for k in range(21):  # 21 strokes of 21 new areas, 4 cells each, one per grid row (the palette is tested)
        y, x = 16 * (k % 14) + 8, 32 + 160 * (k // 14)
        strokes[y, x:x + 64] = k + 1
    cmap = tmp_path / "map.json"
    cmap.write_text(json.dumps({"classes": {f"area{k}": [k + 1] for k in range(21)}}))
    r = run_cli(["fit", img, "--labels", write_tiff(tmp_path / "st.tif", strokes), "-m", DEMO, "--class-map", cmap,
                 "--all-cells", "--stride", 16, "-o", tmp_path / "b21"])
    assert r.exit_code == 0, (r.output, r.exception)
    m = json.loads((tmp_path / "b21" / "manifest.json").read_text())
    assert len(m["classes"]) == 21


def _clicks(mask):
    """One pixel of each area: a click per class."""
    s = np.zeros_like(mask)
    for c in np.unique(mask)[1:]:
        ys, xs = np.nonzero(mask == c)
        s[ys[len(ys) // 2], xs[len(ys) // 2]] = c
    return s


def test_fit_with_one_cell_per_class_is_one_line(tmp_path, sl, img):
    """One-pixel clicks (one cell per class) ended in GaussianMixture's traceback (it needs 2 samples)."""
    st = write_tiff(tmp_path / "clicks.tif", _clicks(sl.mask))
    line = one_cli_error(run_cli(["fit", img, "--labels", st, "-m", DEMO, "-o", tmp_path / "b"]))
    assert "1 cell" in line and "at least 2" in line, line
    assert not (tmp_path / "b").exists()


def test_fit_with_rgb_strokes_names_the_strokes_file(tmp_path, sl, img):
    st = write_tiff(tmp_path / "rgb.tif", np.stack([sl.mask] * 3, -1))
    line = one_cli_error(run_cli(["fit", img, "--labels", st, "-m", DEMO, "-o", tmp_path / "b"]))
    assert "rgb.tif" in line and "RGB" in line and "s.tif" not in line, line


def test_fit_threads_0_is_refused_as_classify_does(tmp_path, img, sl):
    st = write_tiff(tmp_path / "st.tif", draw_strokes(sl.mask, 2, length=60, margin=24, seed=0))
    lines = []
    for cmd in (["fit", img, "--labels", st], ["classify", img]):
        line = one_cli_error(run_cli([*cmd, "-m", DEMO, "--threads", 0, "-o", tmp_path / "o"]))
        lines.append(line.split(" (see")[0].split(": ", 1)[1])
    assert lines[0] == lines[1] and "--threads" in lines[0], lines


# --------------------------------------------------------------------------- volumes
@pytest.mark.parametrize("address", ["127.0.0.1", "not an address", "tcp://host:port"])
def test_a_scheduler_address_without_a_port_is_one_line(tmp_path, address):
    v = write_tiff(tmp_path / "v.tif", make_volume((2, 256, 256), seed=1).image, photometric="minisblack")
    line = one_cli_error(run_cli(["classify", v, "--z", "all", "-m", DEMO, "--scheduler", address,
                                  "-o", tmp_path / "v.ome.zarr"]))
    assert "--scheduler" in line and "HOST:PORT" in line, line
    assert listing(tmp_path) == ["v.tif"]


# --------------------------------------------------------------------------- inputs
def _stack_folder(tmp_path, n=3):
    v = make_volume((n, 256, 256), seed=1).image
    folder = tmp_path / "folder"
    folder.mkdir()
    for z in range(n):
        write_tiff(folder / f"s{z}.tif", v[z])
    return folder


def test_a_truncated_slice_of_a_tiff_folder_is_named(tmp_path):
    folder = _stack_folder(tmp_path)
    data = (folder / "s1.tif").read_bytes()
    (folder / "s1.tif").write_bytes(data[: len(data) // 2])
    line = one_cli_error(run_cli(["classify", folder, "-m", DEMO, "--stride", 64, "-o", tmp_path / "v.ome.zarr"]))
    assert "s1.tif" in line and "cut short" in line, line
    assert listing(tmp_path) == ["folder", "folder/s0.tif", "folder/s1.tif", "folder/s2.tif"]


def test_a_slice_that_fails_to_read_names_its_file(tmp_path):
    """Read errors past the header (a file changed or cut after the run was planned) name the file, not a worker."""
    from brainrt.errors import BrainrtError
    from brainrt.sources import open_volume

    folder = _stack_folder(tmp_path)
    src = open_volume(folder)
    data = (folder / "s2.tif").read_bytes()
    (folder / "s2.tif").write_bytes(data[: len(data) // 2])
    with pytest.raises(BrainrtError, match=r"s2\.tif: cannot read slice 2"):
        src.read(2)


@pytest.mark.parametrize("compression", ["lzw", "zstd", "jpeg"])
def test_compressed_tiffs_read(tmp_path, sl, compression):
    """LZW, zstd and JPEG TIFFs need imagecodecs (a base dependency now)."""
    from brainrt.sources import read_image as read_tiff

    path = tmp_path / f"{compression}.tif"
    tifffile.imwrite(path, sl.image, compression=compression)
    image, _ = read_tiff(path)
    if compression == "jpeg":
        assert np.abs(image.astype(int) - sl.image).mean() < 4
    else:
        assert np.array_equal(image, sl.image)


@pytest.mark.parametrize("dtype", ["int8", "int16", "int32"])
def test_signed_pixel_types_read_shifted_by_the_types_minimum(tmp_path, sl, dtype):
    """Signed types (int16 is common for microCT) were refused; they read shifted by the type's minimum
    (order and spacing kept), and a signed slice maps as its unsigned twin does."""
    from brainrt.sources import read_image as read_tiff

    info = np.iinfo(dtype)
    signed = (sl.image.astype(np.int64) + info.min).astype(dtype)  # the uint8 levels at the bottom of the range
    image, _ = read_tiff(write_tiff(tmp_path / "s.tif", signed))
    if dtype == "int32":
        assert image.dtype == np.float64 and np.array_equal(image * (2**32 - 1), sl.image.astype(np.float64))
    else:
        assert image.dtype == np.dtype(f"u{np.dtype(dtype).itemsize}")
        assert np.array_equal(image.astype(np.int64), sl.image.astype(np.int64))
    if dtype == "int8":  # int8 reads as the very uint8 slice: the same map
        a = run_cli(["classify", tmp_path / "s.tif", "-m", DEMO, "--stride", 32, "-o", tmp_path / "a.ome.tif"])
        b = run_cli(["classify", write_tiff(tmp_path / "u.tif", sl.image), "-m", DEMO, "--stride", 32,
                     "-o", tmp_path / "b.ome.tif"])
        assert a.exit_code == 0 and b.exit_code == 0, (a.output, b.output)
        assert np.array_equal(tifffile.imread(tmp_path / "a.ome.tif"), tifffile.imread(tmp_path / "b.ome.tif"))


@pytest.mark.parametrize("header", [b"II*\x00\x00\x00\x00\x00",  # no first page
                                    b"II*\x00\x08\x00\x00\x00\x00\x00" + bytes(8)])  # a first page of 0 tags
@pytest.mark.parametrize("z", [None, "all"])
def test_a_tiff_header_without_pages_is_one_line(tmp_path, z, header, caplog):
    path = tmp_path / "np.tif"
    path.write_bytes(header)
    line = one_cli_error(run_cli(["classify", path, "-m", DEMO, *(["--z", z] if z else []),
                                  "-o", tmp_path / ("o.ome.zarr" if z else "o.ome.tif")]))
    assert "np.tif" in line and "no image" in line, line
    assert not [r for r in caplog.records if r.name.startswith("tifffile")]


@pytest.mark.parametrize("z", [None, "all"])
def test_channels_are_not_called_slices(tmp_path, sl, z):
    path = tmp_path / "cyx.ome.tif"
    tifffile.imwrite(path, np.stack([sl.image, 255 - sl.image]), ome=True, metadata={"axes": "CYX"},
                     photometric="minisblack")
    line = one_cli_error(run_cli(["classify", path, "-m", DEMO, *(["--z", z] if z else []),
                                  "-o", tmp_path / ("o.ome.zarr" if z else "o.ome.tif")]))
    assert "holds 2 channels" in line and "--z" not in line, line


@pytest.mark.parametrize("cmd", ["classify", "featurize", "cluster"])
def test_a_bundle_folder_given_as_the_image_says_so(tmp_path, cmd):
    line = one_cli_error(run_cli([cmd, DEMO, "-m", DEMO, "-o", tmp_path / "o.ome.tif"]))
    assert "is a model bundle folder" in line, line


def test_nan_in_a_stack_is_one_line_without_dask_dumps(tmp_path):
    """A real run on a local Dask cluster (1 worker): the workers' "Compute Failed" dumps came first."""
    import os
    import subprocess
    import sys

    import zarr

    v = make_volume((2, 256, 256), seed=1).image.astype(np.float32) / 255
    v[1, 100:110, 100:110] = np.nan
    zarr.open_array(str(tmp_path / "nan.zarr"), mode="w", shape=v.shape, chunks=(1, 256, 256), dtype="float32")[:] = v
    r = subprocess.run([sys.executable, "-m", "brainrt.cli", "classify", "nan.zarr", "-m", str(DEMO), "--stride", "64",
                        "--workers", "1", "-o", "nan.ome.zarr"], cwd=tmp_path, capture_output=True, text=True,
                       env={**os.environ, "PYTHONWARNINGS": "ignore"}, timeout=300)
    lines = said(r.stderr)
    assert r.returncode == 2 and lines == ["Error: nan.zarr z=1: holds 100 NaN or infinite values"], r.stderr
    assert listing(tmp_path) == [p for p in listing(tmp_path) if p.startswith("nan.zarr")]  # no partial store left


def test_a_truncated_head_with_its_sha256_updated_is_named(tmp_path, img):
    """The manifest's sha256 is only as good as the file it was taken of: a cut head file unpickled into an
    EOF traceback."""
    import shutil

    from brainrt.model.seal import sha256_file

    b = tmp_path / "b"
    shutil.copytree(DEMO, b)
    m = json.loads((b / "manifest.json").read_text())
    for rel in ("heads/gmm.joblib", "heads/area_density.joblib"):
        data = (b / rel).read_bytes()
        (b / rel).write_bytes(data[: len(data) // 2])
        m["files"][rel] = sha256_file(b / rel)
    (b / "manifest.json").write_text(json.dumps(m, indent=1))
    line = one_cli_error(run_cli(["cluster", img, "-m", b, "--stride", 64, "-o", tmp_path / "c.ome.tif"]))
    assert "joblib" in line and "cannot be loaded" in line, line
    assert not (tmp_path / "c.ome.tif").exists()


def test_an_all_zero_tissue_mask_is_named(tmp_path, sl, img):
    """It blamed the image ("no tissue found ... give a tissue mask")."""
    zero = write_tiff(tmp_path / "zero.tif", np.zeros(sl.mask.shape, np.uint8))
    line = one_cli_error(run_cli(["classify", img, "-m", DEMO, "--tissue-mask", zero, "-o", tmp_path / "a.ome.tif"]))
    assert "zero.tif" in line and "all zero" in line, line
    speck = np.zeros(sl.mask.shape, np.uint8)
    speck[100:110, 100:110] = 1
    line = one_cli_error(run_cli(["classify", img, "-m", DEMO, "--tissue-mask", write_tiff(tmp_path / "speck.tif", speck),
                                  "-o", tmp_path / "a.ome.tif"]))
    assert "speck.tif" in line and "inside the tissue mask (100 tissue pixels)" in line, line


# --------------------------------------------------------------------------- train-and-export
def _train(tmp_path, sl, mask, *extra):
    from brainrt.synth import synthetic_class_map

    cm = tmp_path / "cm.json"
    cm.write_text(json.dumps({"classes": synthetic_class_map()}))
    return run_cli(["train-and-export", "--image", write_tiff(tmp_path / "i.tif", sl.image), "--mask",
                    write_tiff(tmp_path / "m.tif", mask), "--class-map", cm, "-o", tmp_path / "b", "--patch-size", 64,
                    "--n-train", 8, "--n-val", 4, "--n-test", 4, "--epochs", 1, *extra])


def test_train_and_export_refuses_a_class_without_pixels(tmp_path, sl):
    """A mask holding 2 of the class map's 4 classes made a bundle declaring 4 (CNN test accuracy 0.010)."""
    line = one_cli_error(_train(tmp_path, sl, np.where(sl.mask > 2, 0, sl.mask).astype(np.uint8)))
    assert "m.tif" in line and "fibrous (code 3), medium (code 4)" in line, line
    assert not (tmp_path / "b").exists() and not [p for p in listing(tmp_path) if p.startswith(".b")]


@pytest.mark.parametrize("option", ["--n-train", "--n-val", "--n-test"])
def test_train_and_export_refuses_zero_patches(tmp_path, sl, option):
    line = one_cli_error(_train(tmp_path, sl, sl.mask, option, 0))
    assert f"'{option[2:].replace('-', '_')}' parameter" in line and "positive int" in line, line


# --------------------------------------------------------------------------- signals and temporary files
def _start_classify(tmp_path, sl):
    """A real 2D classify (stride 4 on 768 x 1152: a few seconds of work), started in its own process."""
    import os
    import subprocess
    import sys
    import time

    write_tiff(tmp_path / "big.tif", make_slice((768, 1152), seed=5).image)
    proc = subprocess.Popen([sys.executable, "-m", "brainrt.cli", "classify", "big.tif", "-m", str(DEMO), "--stride",
                             "4", "--threads", "1", "-o", "x.ome.tif"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline and not _temporaries(tmp_path):
        time.sleep(0.05)
    time.sleep(0.5)  # into the work
    assert proc.poll() is None, proc.communicate()
    return proc


def _temporaries(folder):
    return [p.name for p in folder.iterdir() if ".partial-" in p.name]


def test_sigterm_during_a_2d_classify_is_one_line_and_exit_143(tmp_path, sl):
    import signal

    proc = _start_classify(tmp_path, sl)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    lines = said(err)
    assert proc.returncode == 143 and lines == ["Interrupted; no output was written"], (proc.returncode, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.tif"]


def test_temporary_files_of_a_killed_run_are_removed_by_the_next(tmp_path, sl):
    import signal
    import subprocess
    import sys

    from brainrt.runfiles import TEMP_NAME

    proc = _start_classify(tmp_path, sl)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    left = _temporaries(tmp_path)
    assert left and all(TEMP_NAME.match(n) for n in left), left  # recognisable: .NAME.partial-HOST-PID-...
    live = tmp_path / left[0].replace(f"-{proc.pid}-", f"-{__import__('os').getpid()}-")  # a live process's
    live.write_bytes(b"")
    other = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_dir = tmp_path / left[0].replace(f"-{proc.pid}-", f"-{int(other.stdout)}-").replace(".ome.tif", ".zarr")
    dead_dir.mkdir()  # a folder output's temporary (featurize) of another dead process
    r = run_cli(["classify", tmp_path / "big.tif", "-m", DEMO, "--stride", 64, "-o", tmp_path / "y.ome.tif"])
    assert r.exit_code == 0, r.output
    assert _temporaries(tmp_path) == [live.name]


def test_a_second_volume_run_into_the_same_output_is_refused(tmp_path):
    """Two identical volume runs at once wrote into each other's store (GroupNotFoundError, 7 worker tracebacks,
    a stray .partial). The output's lock refuses the second in one line, before a cluster starts."""
    import subprocess
    import sys

    import brainrt
    from brainrt.volumes.executors import run_volume
    from brainrt.volumes.plan import make_volume_plan

    v = write_tiff(tmp_path / "v.tif", make_volume((2, 256, 256), seed=1).image, photometric="minisblack")
    out = tmp_path / "v.ome.zarr"
    first = subprocess.Popen([sys.executable, "-c", "import sys, time; from brainrt.runfiles import output_lock\n"
                              "with output_lock(sys.argv[1]):\n print('held', flush=True); time.sleep(120)", str(out)],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert first.stdout.readline().strip() == "held"
        line = one_cli_error(run_cli(["classify", v, "--z", "all", "-m", DEMO, "--stride", 64, "-o", out]))
        assert "v.ome.zarr" in line and f"another brainrt run is writing it (process {first.pid} on" in line, line
        assert listing(tmp_path) == [".v.ome.zarr.lock", "v.tif"]
    finally:
        first.kill()
        first.wait()
    bundle = brainrt.Bundle.load(DEMO)  # the lock of a killed run is free; a run leaves no lock file behind
    run_volume(make_volume_plan(v, bundle, stride=64, z="all"), out, bundle=bundle)
    assert [p for p in listing(tmp_path) if not p.startswith("v.ome.zarr/")] == ["v.ome.zarr", "v.tif"]


# --------------------------------------------------------------------------- napari
def test_napari_area_map_holds_mask_codes_as_the_cli_does(tmp_path, sl, img):
    """The Labels layer held class indices + 1 (slice309's HypoTh = 5) where the CLI and the strokes layer hold mask
    codes (HypoTh = 7, 5 = ZI). A bundle whose codes are not index + 1: the layer's values are the CLI map's."""
    import shutil

    pytest.importorskip("napari")
    from brainrt.napari import _work

    b = tmp_path / "b"
    shutil.copytree(DEMO, b)
    m = json.loads((b / "manifest.json").read_text())
    m["classes"][3]["codes"] = m["class_map"]["classes"]["medium"] = [7]  # "medium" (index 3) is code 7 here
    (b / "manifest.json").write_text(json.dumps(m, indent=1))
    source = _work.Source(sl.image, (1.0, 1.0), (0.0, 0.0), "s")
    (data, kw, kind), *_ = _work.area_map_job(source, b, stride=32)
    r = run_cli(["classify", img, "-m", b, "--stride", 32, "-o", tmp_path / "a.ome.tif"])
    assert r.exit_code == 0, r.output
    cli = tifffile.imread(tmp_path / "a.ome.tif")
    on = cli != 255
    assert np.array_equal(data[on], cli[on]) and set(np.unique(data)) <= {0, 1, 2, 3, 7}
    assert 7 in np.unique(data)
    assert list(kw["features"]["index"]) == [0, 1, 2, 3, 7] and kw["features"]["name"][4] == "medium"
    assert _work.area_value(kw["metadata"], "medium") == 7


def test_napari_sample_slice_suggests_the_synthetic_demo_bundle():
    pytest.importorskip("napari")
    from brainrt.bundle.load import default_model, demo_model
    from brainrt.napari import _work
    from brainrt.napari._sample import demo_slice

    (image, kw, kind), _ = demo_slice()
    default = str(default_model())
    assert _work.suggested_bundle(kw["metadata"], default, default) == str(demo_model())
    assert _work.suggested_bundle(kw["metadata"], "/my/bundle", default) == "/my/bundle"  # the user's choice stays
    assert _work.suggested_bundle({}, default, default) == default
