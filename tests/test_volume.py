"""Volumes on a real 2-process local Dask cluster: exact equality with the serial path, TIFF-folder
and zarr inputs, resume after a client kill, a worker killed mid-run, OME-Zarr metadata."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from brainrt.errors import BrainrtError
import conftest
from conftest import listing, one_cli_error, run_cli, valid_ngff, write_tiff

SHAPE = (4, 192, 256)
STRIDE = 16
BAND = 4  # grid rows per task: 12 x 16 grid -> 3 bands per slice, 12 blocks
SMOOTH = 30.0  # um: about 1.6 grid cells, so a band's smoothing needs its neighbours' rows


@pytest.fixture(scope="module")
def volume():
    from brainrt.synth import make_volume

    return make_volume(SHAPE, seed=3)


@pytest.fixture(scope="module")
def stack_tif(tmp_path_factory, volume):
    return write_tiff(tmp_path_factory.mktemp("vol") / "stack.tif", volume.image, photometric="minisblack")


@pytest.fixture(scope="module")
def client():
    from dask.distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                      silence_logs=40) as cluster, Client(cluster) as c:
        yield c


def _plan(source, bundle, **kw):
    from brainrt.volumes import make_volume_plan

    return make_volume_plan(source, bundle, **{"stride": STRIDE, "band_rows": BAND, "smooth": SMOOTH, **kw})


def _arrays(path):
    import zarr

    root = zarr.open_group(str(path), mode="r")
    return {k: np.asarray(root[k]) for k in ("0", "1", "labels/areas/0", "labels/areas/1")}


@pytest.fixture(scope="module")
def serial_out(tmp_path_factory, stack_tif, tiny_bundle):
    from brainrt.volumes import run_volume

    out = tmp_path_factory.mktemp("serial") / "serial.ome.zarr"
    run_volume(_plan(stack_tif, tiny_bundle), out, bundle=tiny_bundle)
    return out


def zarr_level(path, name):
    import zarr

    return np.asarray(zarr.open_group(str(path), mode="r")[name])


def _same(a, b):
    x, y = _arrays(a), _arrays(b)
    for k in x:
        np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_make_volume_drifts(volume):
    assert volume.image.shape == SHAPE and volume.image.dtype == np.uint8
    changed = [(volume.mask[z] != volume.mask[z + 1]).mean() for z in range(SHAPE[0] - 1)]
    assert all(0 < c < 0.2 for c in changed)  # areas move, smoothly


def test_serial_equals_2d_path(serial_out, volume, tiny_bundle):
    import brainrt
    from brainrt.geometry import upsample

    arr = _arrays(serial_out)
    for z in (0, 3):
        res = brainrt.classify_image(volume.image[z], tiny_bundle, stride=STRIDE, smooth=SMOOTH)
        got = np.moveaxis(arr["0"][:, z], 0, -1)  # the probabilities, then their margin and entropy
        np.testing.assert_allclose(got[..., :-2], res.probabilities, atol=1e-6)
        np.testing.assert_allclose(got[..., -2:], res.uncertainty(), atol=1e-5)
        full = upsample(res.cell_codes(), STRIDE, SHAPE[1:])
        assert (arr["labels/areas/0"][z] == full).mean() > 0.999
        np.testing.assert_array_equal(arr["labels/areas/1"][z], arr["labels/areas/0"][z][::2, ::2])


def test_task_graph_is_data_in_serial_order(stack_tif, tiny_bundle):
    """The executors only schedule this graph: every task after the tasks it waits for, one record name each;
    one read task per slice whose plan its blocks use."""
    from brainrt.volumes import task_graph

    tasks = task_graph(_plan(stack_tif, tiny_bundle, smooth_z=1.17))
    names = [t.name for t in tasks]
    assert len(set(names)) == len(names) == 4 + 4 * 3 + 4 + 4  # reads, blocks, finishes, z passes
    seen = set()
    for t in tasks:
        assert set(t.deps) | set(t.uses) <= seen, t
        seen.add(t.name)
    assert sum(t.block for t in tasks) == 12 and tasks[4].name == "f0" and tasks[4].deps == ("b0-0", "b0-4", "b0-8")
    assert [t.name for t in tasks if t.data] == ["p0", "p1", "p2", "p3"]
    assert {t.uses for t in tasks if t.block and t.name.startswith("b1-")} == {("p1",)}


def _reads(client=None):
    from brainrt.sources import bytes_read

    if client is None:
        return bytes_read()
    got = client.run(bytes_read).values()
    return {k: sum(g[k] for g in got) for k in ("bytes", "slices")}


def test_each_slice_read_once(client, serial_out, stack_tif, tiny_bundle, tmp_path):
    """3 bands per slice, 2 workers: every slice is read once (its blocks share its plan), the measured bytes
    are those of the slices, and a resumed run reads only the slices with blocks left to do."""
    from brainrt.volumes import run_volume
    from brainrt.sources import open_volume

    nbytes = SHAPE[1] * SHAPE[2]
    client.run(open_volume(stack_tif).read, 0)  # a fresh worker's first read imports tifffile's zarr view
    for c in (None, client):
        out = tmp_path / f"once-{c is None}.ome.zarr"
        before = _reads(c)
        run_volume(_plan(stack_tif, tiny_bundle), out, client=c, bundle=tiny_bundle if c is None else None)
        after = _reads(c)
        assert after["slices"] - before["slices"] == SHAPE[0]
        assert SHAPE[0] * nbytes <= after["bytes"] - before["bytes"] < 1.25 * SHAPE[0] * nbytes  # + TIFF header
        _same(out, serial_out)

    def stop(n):
        if n >= 5:  # slice 0 done (3 blocks, its finish), slice 1 begun
            raise KeyboardInterrupt

    out = tmp_path / "part.ome.zarr"
    with pytest.raises(KeyboardInterrupt):
        run_volume(_plan(stack_tif, tiny_bundle), out, bundle=tiny_bundle, on_task=stop)
    before = _reads()
    run_volume(_plan(stack_tif, tiny_bundle), out, bundle=tiny_bundle)
    assert _reads()["slices"] - before["slices"] == SHAPE[0] - 1
    _same(out, serial_out)


def test_parse_z():
    from brainrt.errors import BrainrtError
    from brainrt.volumes import parse_z

    assert parse_z("all", 5) == (0, 1, 2, 3, 4) and parse_z("1:3", 5) == (1, 2) and parse_z(4, 5) == (4,)
    assert parse_z(":2", 5) == (0, 1) and parse_z("0:5", 5) == tuple(range(5))
    for bad in ("x", "3:1"):
        with pytest.raises(BrainrtError, match="'z' parameter"):
            parse_z(bad, 5)
    for bad in ("9", 5, "3:100", "-1:", "6:"):  # past the stack: refused, not clipped
        with pytest.raises(BrainrtError, match=r"^stack.tif: --z \S+ is outside the stack's 5 slices \(z 0..4\)$"):
            parse_z(bad, 5, name="stack.tif")


def test_dask_equals_serial_and_ome_metadata(client, serial_out, stack_tif, tiny_bundle, tmp_path):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Multiscales, Reader

    from brainrt.volumes import run_volume

    out = tmp_path / "dask.ome.zarr"
    stats = run_volume(_plan(stack_tif, tiny_bundle), out, client=client)
    assert stats["computed_blocks"] == 12
    _same(out, serial_out)
    assert sorted(os.listdir(tmp_path)) == ["dask.ome.zarr"]  # no partial left
    nodes = list(Reader(parse_url(str(out)))())
    image = next(n for n in nodes if n.load(Multiscales) and not n.load(Label))
    assert [a["name"] for a in image.metadata["axes"]] == ["c", "z", "y", "x"]
    label = next(n for n in nodes if n.load(Label))
    scales = [t[0]["scale"] for t in label.metadata["coordinateTransformations"]]
    assert scales[0] == pytest.approx([1.17, 1.17, 1.17]) and scales[1] == pytest.approx([1.17, 2.34, 2.34])
    names = {v["name"] for v in label.metadata["properties"].values()}
    assert set(tiny_bundle.class_names) <= names and set(label.metadata["color"]) >= set(tiny_bundle.class_codes)


def test_volume_is_valid_ngff_0_5(serial_out):
    """ome-zarr-models accepts the image and its label image; the half-cell offset is each level's translation
    after its scale; each probability level keeps every 2**l-th cell of level 0 (the same centres)."""
    import zarr

    image = valid_ngff(serial_out)
    ms = image.ome_attributes.multiscales[0]
    for d in ms.datasets:
        (scale, shift) = d.coordinateTransformations
        assert scale.type == "scale" and shift.type == "translation"
        assert list(shift.translation) == pytest.approx([0, 0, 7.5 * 1.17, 7.5 * 1.17])
    assert [d.coordinateTransformations[0].scale[2] for d in ms.datasets] == pytest.approx(
        [1.17 * STRIDE * 2**i for i in range(len(ms.datasets))])
    root = zarr.open_group(str(serial_out), mode="r")
    assert len(ms.datasets) == len(root["labels/areas"].attrs["ome"]["multiscales"][0]["datasets"]) == 2
    assert root["0"].metadata.dimension_names == ("c", "z", "y", "x")
    assert root["labels/areas/0"].metadata.dimension_names == ("z", "y", "x")
    np.testing.assert_array_equal(root["1"][:], root["0"][:, :, ::2, ::2])
    names = [c["label"] for c in root.attrs["ome"]["omero"]["channels"]]
    assert names[-2:] == ["margin", "entropy"] and len(names) == root["0"].shape[0]


def test_folder_zarr_and_hdf5_inputs(client, serial_out, volume, tiny_bundle, tmp_path):
    import zarr

    from brainrt.volumes import run_volume
    from brainrt.sources import open_volume

    folder = tmp_path / "slices"
    folder.mkdir()
    for z in range(SHAPE[0]):  # natural order: s2 before s10
        write_tiff(folder / f"s{[0, 2, 10, 11][z]}.tif", volume.image[z])
    zpath = tmp_path / "stack.zarr"
    zarr.create_array(str(zpath), shape=SHAPE, chunks=(1, 64, 64), dtype="uint8")[:] = volume.image
    for src in (folder, zpath, _hdf5(tmp_path / "tomo.h5", volume.image)):
        assert open_volume(src).shape == SHAPE
        out = tmp_path / f"{Path(str(src).split(':')[0]).stem}.ome.zarr"
        run_volume(_plan(src, tiny_bundle), out, client=client)
        _same(out, serial_out)


def test_client_kill_resume_and_refusal(client, serial_out, stack_tif, tiny_bundle, tmp_path):
    from brainrt.errors import BrainrtError
    from brainrt.volumes import run_volume
    from brainrt.volumes import make_volume_plan

    out = tmp_path / "resumed.ome.zarr"

    def die(n):
        if n >= 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_volume(_plan(stack_tif, tiny_bundle), out, client=client, on_task=die)
    assert not out.exists()
    with pytest.raises(BrainrtError, match="other arguments.*stride 16 vs 32"):
        run_volume(make_volume_plan(stack_tif, tiny_bundle, stride=32, band_rows=BAND, smooth=SMOOTH), out,
                   client=client)
    stats = run_volume(_plan(stack_tif, tiny_bundle), out, client=client)
    assert stats["skipped_records"] >= 5 and stats["computed_blocks"] < 12
    _same(out, serial_out)


def test_worker_killed_mid_run(client, serial_out, stack_tif, tiny_bundle, tmp_path):
    from brainrt.volumes import run_volume

    victim = sorted(client.scheduler_info()["workers"])[0]
    pid = client.run(os.getpid, workers=[victim])[victim]
    killed = []

    def kill(n):  # after two tasks, SIGKILL one worker process (its nanny starts a new one)
        if n >= 2 and not killed:
            killed.append(pid)
            os.kill(pid, signal.SIGKILL)

    out = tmp_path / "killed.ome.zarr"
    run_volume(_plan(stack_tif, tiny_bundle), out, client=client, on_task=kill)
    assert killed
    _same(out, serial_out)
    client.wait_for_workers(2, timeout=60)


def _hdf5(path, image):
    """``image`` as the chunked dataset ``/exchange/data`` of an HDF5 file (a tomography layout); its spec."""
    h5py = pytest.importorskip("h5py")
    with h5py.File(path, "w") as f:
        f.create_dataset("/exchange/data", data=image, chunks=(1, 64, 64))
    return f"{path}:/exchange/data"


@pytest.mark.parametrize("kind", ["tiff", "hdf5"])
def test_featurize_volume_matches_2d(client, stack_tif, volume, tiny_bundle, tmp_path, kind):
    import zarr

    import brainrt
    from brainrt.volumes import run_volume
    from brainrt.volumes import make_volume_plan

    out = tmp_path / "f.zarr"
    source = stack_tif if kind == "tiff" else _hdf5(tmp_path / "v.h5", volume.image)
    run_volume(make_volume_plan(source, tiny_bundle, task="featurize", z="1:3", stride=STRIDE, band_rows=BAND),
               out, client=client)
    root = zarr.open_group(str(out), mode="r")
    assert root["0"].shape == (tiny_bundle.n_features, 2, 12, 16)  # an OME-NGFF image (c, z, y, x)
    assert root["0"].chunks[:3] == (tiny_bundle.n_features, 1, BAND)
    grid = brainrt.featurize(volume.image[2], tiny_bundle, stride=STRIDE)
    np.testing.assert_allclose(np.moveaxis(root["0"][:, 1], 0, -1), grid.features, atol=1e-5)
    np.testing.assert_array_equal(root["labels/tissue/0"][1], grid.valid)
    image = valid_ngff(out)
    assert [a.name for a in image.ome_attributes.multiscales[0].axes] == ["c", "z", "y", "x"]
    got = brainrt.load_features(out, z=2, bundle=tiny_bundle)
    np.testing.assert_array_equal(np.asarray(got.features), np.moveaxis(root["0"][:, 1], 0, -1))


def test_cli_volume(stack_tif, tiny_bundle_path, tmp_path):
    from click.testing import CliRunner

    from brainrt.cli import main

    out = tmp_path / "cli.ome.zarr"
    args = ["classify", str(stack_tif), "--z", "0:2", "--stride", "32", "-o", str(out), "--workers", "1",
            "--model", str(tiny_bundle_path)]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "2 slices" in res.output and out.is_dir()
    res = CliRunner().invoke(main, ["cluster", str(stack_tif), "--z", "all", "--model", str(tiny_bundle_path)])
    assert res.exit_code == 2 and "only featurize and classify" in res.output


def test_z_smoothing(client, serial_out, stack_tif, tiny_bundle, tmp_path):
    """Dask == serial with z-regularization, and both == a naive Gaussian across the in-plane smoothed slices."""
    from brainrt.volumes import run_volume

    plan = _plan(stack_tif, tiny_bundle, smooth_z=1.17)  # sigma: one slice (z spacing = pixel size here)
    assert plan.z_sigma == pytest.approx(1.0)
    a, b = tmp_path / "zs.ome.zarr", tmp_path / "zd.ome.zarr"
    run_volume(plan, a, bundle=tiny_bundle)
    run_volume(plan, b, client=client)
    _same(a, b)
    K = len(tiny_bundle.class_names)
    planar, got = _arrays(serial_out)["0"][:K].astype(np.float64), _arrays(a)["0"][:K]
    valid = planar.sum(0) > 0
    d = np.arange(SHAPE[0])
    w = np.exp(-0.5 * (d[:, None] - d[None, :]) ** 2)  # radius 4 reaches every slice of 4
    scores = np.where(valid, np.log(np.maximum(planar, 1e-6)) if plan.space == "log" else planar, 0)
    with np.errstate(invalid="ignore"):
        s = np.einsum("zk,ckyx->czyx", w, scores) / np.einsum("zk,kyx->zyx", w, valid)
    e = np.exp(s - s.max(0)) if plan.space == "log" else s
    want = np.where(valid, e / e.sum(0), 0)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert not np.array_equal(got, planar.astype(np.float32))
    valid_ngff(a)
    np.testing.assert_array_equal(zarr_level(a, "1")[:K], got[:, :, ::2, ::2])


def test_dask_imported_only_for_volumes(tiny_bundle_path):
    import subprocess
    import sys

    code = ("import sys, brainrt; from brainrt import cli, volumes; from brainrt.synth import make_slice; "
            f"b = brainrt.Bundle.load({str(tiny_bundle_path)!r}); "
            "brainrt.classify_image(make_slice((256, 256)).image, b, stride=32); "
            "print(sorted({'dask', 'distributed', 'ome_zarr'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_blank_slice_is_off_tissue(volume, tiny_bundle, tmp_path):
    import zarr

    from brainrt.volumes import run_volume
    from brainrt.volumes import make_volume_plan

    stack = volume.image[:2].copy()
    stack[1] = 0  # past the tissue's end
    path = write_tiff(tmp_path / "blank.tif", stack, photometric="minisblack")
    out = tmp_path / "blank.ome.zarr"
    run_volume(make_volume_plan(path, tiny_bundle, stride=32), out, bundle=tiny_bundle)
    labels = np.asarray(zarr.open_group(str(out), mode="r")["labels/areas/0"])
    assert (labels[1] == 255).all() and (labels[0] != 255).any()


def test_int8_volume_matches_2d(volume, stack_tif, tiny_bundle, tmp_path):
    import zarr

    import brainrt
    from brainrt.volumes import run_volume
    from brainrt.volumes import make_volume_plan

    if "int8" not in tiny_bundle.manifest.precisions:
        pytest.skip("the tiny bundle has no int8 graphs")
    out = tmp_path / "int8.ome.zarr"
    run_volume(make_volume_plan(stack_tif, tiny_bundle, stride=32, z="2", precision="int8"), out, bundle=tiny_bundle)
    got = np.asarray(zarr.open_group(str(out), mode="r")["0"][: len(tiny_bundle.class_names), 0])
    want = brainrt.classify_image(volume.image[2], tiny_bundle, stride=32, precision="int8").probabilities
    np.testing.assert_allclose(np.moveaxis(got, 0, -1), want, atol=1e-6)


# --------------------------------------------------------------------------- finished volumes, bad inputs (issue 19)
def _mtimes(folder):
    return {p: (folder / p).stat().st_mtime_ns for p in listing(folder)}


def test_finished_volume_rule(stack_tif, tiny_bundle, tmp_path):
    """A finished volume rerun with the same arguments: nothing to do; other arguments, or featurize into it:
    refused unless overwrite. One rule: the run record of brainrt.outputs.finished, kept inside the store."""
    from brainrt.errors import BrainrtError
    from brainrt.outputs.finished import read_record
    from brainrt.volumes import make_volume_plan, run_volume

    def plan(**kw):
        return make_volume_plan(stack_tif, tiny_bundle, **{"z": "0:2", "stride": 32, **kw})

    out = tmp_path / "v.ome.zarr"
    assert not run_volume(plan(), out, bundle=tiny_bundle)["complete"]
    rec = read_record(out, is_dir=True)
    assert rec["command"] == "classify" and rec["arguments"]["--stride"] == 32 and rec["arguments"]["--z"] == "0:2"
    assert not any("done" in p for p in listing(out))
    before = _mtimes(out)
    st = run_volume(plan(), out, bundle=tiny_bundle)
    assert st["complete"] and st["computed_blocks"] == 0 and _mtimes(out) == before
    for other, words in ((dict(stride=16), "--stride 32 vs 16"), (dict(z="0:1"), '--z "0:2" vs "0:1"'),
                         (dict(task="featurize"), "written by classify, not featurize")):
        with pytest.raises(BrainrtError, match=f"^{re.escape(str(out))}: already holds the output of other arguments "
                                               f".*{re.escape(words)}.*; pass --overwrite to replace it$"):
            run_volume(plan(**other), out, bundle=tiny_bundle)
        assert _mtimes(out) == before
    st = run_volume(plan(stride=16), out, bundle=tiny_bundle, overwrite=True)
    assert st["computed_blocks"] == st["blocks"] and read_record(out, is_dir=True)["arguments"]["--stride"] == 16


def _serial(monkeypatch):
    """CLI volume runs in this process (the serial executor), as tools/bad_inputs.py runs them."""
    import contextlib

    from brainrt.volumes import executors

    monkeypatch.setattr(executors, "dask_client", contextlib.contextmanager(lambda **_: (yield None)))


def test_cli_finished_volume(stack_tif, tiny_bundle_path, tmp_path, monkeypatch):
    _serial(monkeypatch)
    out = tmp_path / "v.ome.zarr"

    def cli(*args, task="classify", z="0:2", stride=32):
        return run_cli([task, stack_tif, "--z", z, "--stride", stride, "-m", tiny_bundle_path, "-o", out, *args])

    assert cli().exit_code == 0
    before = _mtimes(out)
    r = cli()
    assert r.exit_code == 0 and r.stdout.strip() == f"{out} is complete (written by the same command and arguments); " \
                                                    "nothing to do (--overwrite recomputes it)", r.output
    for kw, words in ((dict(stride=16), "--stride 32 vs 16"), (dict(z="0:3"), '--z "0:2" vs "0:3"'),
                      (dict(task="featurize"), "written by classify, not featurize")):
        assert words in one_cli_error(cli(**kw)) and _mtimes(out) == before
    assert cli("--overwrite", stride=16).exit_code == 0 and _mtimes(out) != before


def test_resume_refusal_names_options(stack_tif, tiny_bundle, tmp_path):
    """An interrupted run's refusal names the options as typed (--smooth, not sigma_cells); --overwrite restarts."""
    from brainrt.errors import BrainrtError
    from brainrt.outputs import partial_path
    from brainrt.volumes import run_volume

    out = tmp_path / "r.ome.zarr"

    def die(n):
        if n >= 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_volume(_plan(stack_tif, tiny_bundle, z="0:2"), out, bundle=tiny_bundle, on_task=die)
    assert partial_path(out).is_dir() and not out.exists()
    other = _plan(stack_tif, tiny_bundle, z="0:2", smooth=50.0)
    with pytest.raises(BrainrtError, match=r"other arguments .*\(--smooth 30.0 vs 50.0\)") as err:
        run_volume(other, out, bundle=tiny_bundle)
    assert "sigma" not in str(err.value)
    st = run_volume(_plan(stack_tif, tiny_bundle, z="0:2"), out, bundle=tiny_bundle)
    assert st["skipped_records"] >= 2 and out.is_dir() and not partial_path(out).exists()
    with pytest.raises(KeyboardInterrupt):
        run_volume(other, tmp_path / "s.ome.zarr", bundle=tiny_bundle, on_task=die)
    st = run_volume(_plan(stack_tif, tiny_bundle, z="0:2"), tmp_path / "s.ome.zarr", bundle=tiny_bundle,
                    overwrite=True)
    assert st["skipped_records"] == 0 and st["computed_blocks"] == st["blocks"]


def test_z_past_the_stack_is_refused(stack_tif, tiny_bundle_path, tmp_path):
    r = run_cli(["classify", stack_tif, "--z", "3:100", "-m", tiny_bundle_path, "-o", tmp_path / "z.ome.zarr"])
    assert one_cli_error(r) == f"Error: {stack_tif}: --z 3:100 is outside the stack's 4 slices (z 0..3)"
    assert listing(tmp_path) == []


def test_one_slice_of_a_zarr_stack_is_a_slice(volume, stack_tif, tiny_bundle_path, tmp_path):
    """--z 1 of a zarr stack writes the 2D outputs, as --z 1 of a TIFF stack does (the same map)."""
    import tifffile
    import zarr

    src = tmp_path / "stack.zarr"
    zarr.open_array(str(src), mode="w", shape=SHAPE, chunks=(1, *SHAPE[1:]), dtype="uint8")[:] = volume.image
    for source, name in ((src, "a"), (stack_tif, "b")):
        r = run_cli(["classify", source, "--z", 1, "--stride", 32, "-m", tiny_bundle_path,
                     "-o", tmp_path / f"{name}.ome.tif"])
        assert r.exit_code == 0, r.output
    assert (tmp_path / "a.ome.tif").is_file() and (tmp_path / "a.probabilities.ome.tif").is_file()
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "a.ome.tif"), tifffile.imread(tmp_path / "b.ome.tif"))


def test_folder_slice_shapes_checked_first(volume, tiny_bundle_path, tmp_path):
    """A TIFF folder with one slice of another shape: refused from the headers, before any work (no .partial)."""
    folder = tmp_path / "folder"
    folder.mkdir()
    for z in range(SHAPE[0]):
        write_tiff(folder / f"s{z}.tif", volume.image[z] if z != 2 else volume.image[z, :150])
    r = run_cli(["classify", folder, "--stride", 32, "-m", tiny_bundle_path, "-o", tmp_path / "f.ome.zarr"])
    assert one_cli_error(r) == (f"Error: {folder}: slice 2 (s2.tif) has shape (150, 256), not the stack's "
                                f"(192, 256) (that of s0.tif)")
    assert listing(tmp_path) == ["folder"] + [f"folder/s{z}.tif" for z in range(SHAPE[0])]


def _stderr_lines(proc, lines):
    for line in proc.stderr:
        lines.append(line.rstrip())


def test_ctrl_c_in_a_terminal(stack_tif, tiny_bundle_path, tmp_path):
    """Ctrl-C in a terminal (SIGINT to the whole process group: the Dask workers too), while the cluster starts
    and after the first blocks: the one "Interrupted" line, exit 130, no worker traceback."""
    from brainrt.outputs import partial_path

    for when in ("starting", "running"):
        out = tmp_path / f"{when}.ome.zarr"
        done = partial_path(out) / ".brainrt" / "done"
        # "running" at stride 1: each block takes 4x longer, so the interrupt lands before the last block is done
        # even on a loaded machine (at stride 2 a loaded CI finished the job between the first block and the signal)
        cmd = [sys.executable, "-m", "brainrt.cli", "classify", stack_tif, "--z", "all", "--stride",
               "2" if when == "starting" else "1", "-m", tiny_bundle_path, "--workers", "2", "-o", out]
        # Ctrl-C's default action in the child, as a shell gives its foreground jobs: a disposition inherited
        # from this process (earlier tests' libraries may leave SIGINT ignored at C level) must not decide it
        proc = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True, env={**os.environ, "PYTHONWARNINGS": "ignore"},
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        lines = []
        reader = threading.Thread(target=_stderr_lines, args=(proc, lines), daemon=True)
        reader.start()
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline and not (
                any("bundle" in ln for ln in lines) if when == "starting" else done.is_dir() and any(done.iterdir())):
            time.sleep(0.05)
        time.sleep(1.5 if when == "starting" else 0)  # into the cluster's start
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=120)
        reader.join(timeout=10)
        done = partial_path(out) / ".brainrt" / "done"  # what is left says what the one line must say
        kept = f"the finished blocks are kept in {partial_path(out)}: rerun the same command to resume"
        said = f"Interrupted; {kept if done.is_dir() and any(done.iterdir()) else 'no output was written'}"
        assert partial_path(out).is_dir() == (said != "Interrupted; no output was written"), (when, lines)
        assert proc.returncode == 130, (when, lines)
        assert conftest.said("\n".join(lines)) == [said], (when, lines)


def test_interrupted_line_tells_what_is_left(tmp_path):
    """An interrupt says where finished blocks are kept, or that nothing was written: a partial store without a
    finished block (interrupted while it was being set up) is removed, so the line and the disk agree."""
    from brainrt.outputs import ZarrStack, partial_path

    out = tmp_path / "v.ome.zarr"
    (partial_path(out) / ".brainrt" / "done").mkdir(parents=True)
    assert ZarrStack(out).interrupted_line() == "Interrupted; no output was written"
    assert not partial_path(out).exists()
    (partial_path(out) / ".brainrt" / "done").mkdir(parents=True)
    (partial_path(out) / ".brainrt" / "done" / "b0-0").write_text("")
    assert ZarrStack(out).interrupted_line().startswith(f"Interrupted; the finished blocks are kept in {partial_path(out)}")


def test_volume_output_that_is_the_input_folder_is_refused(tmp_path, tiny_bundle_path, synthetic_slice):
    folder = tmp_path / "slices"
    folder.mkdir()
    for z in range(2):
        write_tiff(folder / f"s{z}.tif", synthetic_slice.image[:192, :256])
    before = sorted(p.name for p in folder.iterdir())
    r = run_cli(["classify", folder, "-m", tiny_bundle_path, "-o", folder])
    assert "is an input" in one_cli_error(r)
    assert sorted(p.name for p in folder.iterdir()) == before


def test_volume_plan_carries_the_device(tiny_bundle, tmp_path, synthetic_slice):
    import numpy as np
    import tifffile

    from brainrt.volumes import make_volume_plan

    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, np.stack([synthetic_slice.image[:192, :256]] * 2), photometric="minisblack")
    assert make_volume_plan(path, tiny_bundle, device="cpu").device == "cpu"
    with pytest.raises(BrainrtError, match="'device'"):
        make_volume_plan(path, tiny_bundle, device="tpu")


def test_a_ctrl_c_that_a_library_swallows_still_stops_the_run(stack_tif, tiny_bundle, tmp_path):
    """Ctrl-C raises where it lands; code that catches it there (distributed's gc callback prints it and goes on)
    must not lose it: the run stops after its next task, and the finished blocks are kept for a resume."""
    import signal as sig

    from brainrt.outputs import partial_path
    from brainrt.volumes import run_volume

    def swallow(n):
        if n == 2:
            try:
                os.kill(os.getpid(), sig.SIGINT)
                time.sleep(0.5)  # the handler runs here
            except KeyboardInterrupt:
                pass  # swallowed, as a library's callback would

    out, before = tmp_path / "s.ome.zarr", sig.getsignal(sig.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        run_volume(_plan(stack_tif, tiny_bundle), out, bundle=tiny_bundle, on_task=swallow)
    assert partial_path(out).is_dir() and not out.exists()
    assert sig.getsignal(sig.SIGINT) == before  # the run's handler is gone


def test_each_slice_of_a_volume_is_checked_as_a_slice_is(client, volume, tiny_bundle, tmp_path, caplog):
    """A volume's slices get a slice's input check (brainrt.familiar): the same scores as the slice run alone
    (gray values and texture; the feature deficit is not computed for a volume's slices),
    a warning naming the stack and z of a slice that looks unlike the training tissue (here inverted) as soon as
    its first block is done, the scores in the finished output's run record, serially and on Dask alike."""
    import json
    import logging

    import brainrt
    from brainrt.familiar import input_check
    from brainrt.volumes import run_volume

    image = volume.image.copy()
    image[2] = 255 - image[2]
    src = write_tiff(tmp_path / "mixed.tif", image, photometric="minisblack")
    records = []
    for c in (None, client):
        out = tmp_path / f"mixed-{c is None}.ome.zarr"
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="brainrt"):
            st = run_volume(_plan(src, tiny_bundle), out, client=c, bundle=tiny_bundle if c is None else None)
        assert st["unlike"] == [2]
        warned = [r.getMessage() for r in caplog.records if "unlike the training tissue" in r.getMessage()]
        assert len(warned) == 1 and warned[0].startswith(f"{src} z=2 looks unlike"), warned
        records.append(json.loads((out / ".brainrt" / "run.json").read_text())["input_check"])
        assert sorted(p.name for p in (out / ".brainrt").iterdir()) == ["run.json"]  # the notes are folded in
    assert records[0] == records[1] and records[0]["unlike"] == [2] and sorted(records[0]["slices"]) == list("0123")
    for z in range(SHAPE[0]):  # the scores of the slice run on its own (featurize, classify: the same plan)
        alone, _ = input_check(brainrt.make_plan(image[z], tiny_bundle, stride=STRIDE), tiny_bundle, features=False)
        assert records[0]["slices"][str(z)] == pytest.approx(alone), z
    again = run_cli(["classify", src, "-m", str(tiny_bundle.path), "--z", "all", "--stride", str(STRIDE),
                     "-o", tmp_path / "cli.ome.zarr"])
    assert again.exit_code == 0, again.output
    assert "1 of 4 slices look unlike the training tissue (z 2)" in again.output + again.stderr


def test_a_tissue_mask_stack_gives_each_slice_its_mask(volume, tiny_bundle, tmp_path):
    """--tissue-mask for a volume: a mask stack of the source's shape (any volume input; here a TIFF stack and an
    HDF5 dataset), read per slice; each slice's map is the slice's with its own mask, a slice whose mask is empty is
    off tissue, the mask is an input of the run record, and a mask of another shape or of floats is refused in one
    line naming it."""
    import zarr

    import brainrt
    from brainrt.volumes import make_volume_plan, run_volume

    h5py = pytest.importorskip("h5py")
    image = volume.image[:3]
    mask = np.zeros(image.shape, np.uint8)
    mask[0, :, : SHAPE[2] // 2] = 1  # slice 0: the left half; slice 1: none; slice 2: all but a corner
    mask[2] = 1
    mask[2, :96, :128] = 0
    src = write_tiff(tmp_path / "s.tif", image, photometric="minisblack")
    tif_mask = write_tiff(tmp_path / "m.tif", mask, photometric="minisblack")
    with h5py.File(tmp_path / "m.h5", "w") as f:
        f["mask"] = mask
    labels = []
    for m in (tif_mask, f"{tmp_path / 'm.h5'}:/mask"):
        out = tmp_path / f"out-{len(labels)}.ome.zarr"
        run_volume(make_volume_plan(src, tiny_bundle, stride=STRIDE, tissue=m), out, bundle=tiny_bundle)
        labels.append(np.asarray(zarr.open_group(str(out), mode="r")["labels/areas/0"]))
        assert (out / ".brainrt" / "run.json").read_text().count(Path(str(m).split(":")[0]).name) == 1
    np.testing.assert_array_equal(labels[0], labels[1])
    assert (labels[0][1] == 255).all()
    for z in (0, 2):
        alone = brainrt.classify_image(image[z], tiny_bundle, stride=STRIDE, tissue=mask[z])
        from brainrt.geometry import upsample

        np.testing.assert_array_equal(labels[0][z], upsample(alone.cell_codes(), STRIDE, SHAPE[1:]))
    assert (labels[0][0][:, SHAPE[2] // 2 + STRIDE:] == 255).all() and (labels[0][0][:, :64] != 255).any()
    bad = write_tiff(tmp_path / "short.tif", mask[:2], photometric="minisblack")
    with pytest.raises(BrainrtError, match=r"^\S*short.tif: a tissue mask of shape \(2, 192, 256\) for a stack"):
        make_volume_plan(src, tiny_bundle, stride=STRIDE, tissue=bad)
    floats = write_tiff(tmp_path / "f.tif", mask.astype(np.float32), photometric="minisblack")
    with pytest.raises(BrainrtError, match=r"f.tif: a tissue mask holds integers"):
        make_volume_plan(src, tiny_bundle, stride=STRIDE, tissue=floats)


def test_a_multi_series_tiff_volume_needs_its_series(volume, tiny_bundle_path, tmp_path):
    """A TIFF of several stacks is a volume only with --series N, as a slice of it is: without it the run is
    refused in one line listing the series (it read the first, without a word); with it, that series' stack is
    mapped as a file of it alone is, and the series is in the run record."""
    import json

    import tifffile
    import zarr

    a, b = volume.image[:2], volume.image[2:4, :160, :224]
    two = tmp_path / "two.ome.tif"
    with tifffile.TiffWriter(two, ome=True) as tw:
        tw.write(a, metadata={"axes": "ZYX"})
        tw.write(b, metadata={"axes": "ZYX"})
    line = one_cli_error(run_cli(["classify", two, "--z", "all", "-m", tiny_bundle_path, "-o", tmp_path / "x.ome.zarr"]))
    assert "holds 2 series" in line and "(2, 160, 224)" in line and "--series" in line, line
    alone = write_tiff(tmp_path / "b.tif", b, photometric="minisblack")
    outs = []
    for src, extra in ((two, ["--series", "1"]), (alone, [])):
        out = tmp_path / f"{Path(src).stem.split('.')[0]}.ome.zarr"
        r = run_cli(["classify", src, "--z", "all", "-m", tiny_bundle_path, "--stride", str(STRIDE), *extra, "-o", out])
        assert r.exit_code == 0, r.output
        outs.append(np.asarray(zarr.open_group(str(out), mode="r")["labels/areas/0"]))
    np.testing.assert_array_equal(outs[0], outs[1])
    assert json.loads((tmp_path / "two.ome.zarr" / ".brainrt" / "run.json").read_text())["arguments"]["--series"] == 1
    line = one_cli_error(run_cli(["classify", two, "--z", "all", "--series", "2", "-m", tiny_bundle_path,
                                  "-o", tmp_path / "y.ome.zarr"]))
    assert "--series 2 is outside the file's 2 series" in line


def test_a_head_without_probabilities_maps_a_volume_as_a_slice(client, volume, stack_tif, tiny_bundle, tmp_path, caplog):
    """linsvm gives labels only: a volume takes it as a slice does (no smoothing, in the plane or across slices, said
    in the log): the label pyramid of each slice is the slice's own label map, serially and on 2 Dask workers; the
    image holds the area codes at grid resolution (one channel), a valid NGFF image with its label image."""
    import logging

    import zarr

    import brainrt
    from brainrt.geometry import upsample
    from brainrt.volumes import run_volume

    with caplog.at_level(logging.WARNING, logger="brainrt"):
        plan = _plan(stack_tif, tiny_bundle, head="linsvm", smooth_z=2.0)
    assert plan.labels_only and plan.sigma_cells == 0 and plan.z_sigma == 0
    assert [r.getMessage() for r in caplog.records] == [  # both asked for (_plan's SMOOTH, smooth_z), neither done
        "--smooth 30: no smoothing: this head gives no class probabilities",
        "--smooth-z: no smoothing across slices: this head gives no class probabilities"]
    outs = [tmp_path / "serial.ome.zarr", tmp_path / "dask.ome.zarr"]
    run_volume(plan, outs[0], bundle=tiny_bundle)
    run_volume(plan, outs[1], client=client)
    _same(*outs)
    root = zarr.open_group(str(outs[0]), mode="r")
    assert "scratch" not in root and root.attrs["ome"]["multiscales"][0]["name"] == "areas"
    assert root.attrs["ome"]["omero"]["channels"][0]["label"].startswith("areas: ")
    for z in range(SHAPE[0]):
        res = brainrt.classify_image(volume.image[z], tiny_bundle, stride=STRIDE, head="linsvm")
        assert res.probabilities is None
        np.testing.assert_array_equal(root["0"][0, z], res.cell_codes())
        np.testing.assert_array_equal(root["labels/areas/0"][z], upsample(res.cell_codes(), STRIDE, SHAPE[1:]))
    valid_ngff(outs[0])
