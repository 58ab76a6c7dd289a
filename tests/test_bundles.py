"""Bundles: verified before loading (hashes, geometry, no unpickling of a bad bundle), info."""

from __future__ import annotations

import json
import pickle
import shutil

import pytest
from click.testing import CliRunner

import brainrt
from brainrt.cli import main
from brainrt.errors import BrainrtError
from conftest import error_line, listing, one_cli_error, run_cli, small_slice, write_tiff


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


def _run(args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _edit_manifest(folder, change):
    path = folder / "manifest.json"
    d = json.loads(path.read_text())
    change(d)
    path.write_text(json.dumps(d))


@pytest.mark.parametrize("key, value", [("patch_size", 32), ("n_features", 63)])
def test_manifest_disagreeing_with_the_graph_is_refused(key, value, tiny_bundle_copy, tmp_path, synthetic_slice):
    mpath = tiny_bundle_copy / "manifest.json"
    m = json.loads(mpath.read_text())
    m[key] = value  # the manifest is not among the hashed files: hashes still match
    mpath.write_text(json.dumps(m))
    with pytest.raises(brainrt.BrainrtError, match="manifest does not match"):
        brainrt.Bundle.load(tiny_bundle_copy)
    src = write_tiff(tmp_path / "slice.tif", synthetic_slice.image[:192, :256])
    r = run_cli(["classify", src, "-m", tiny_bundle_copy, "-o", tmp_path / "a.ome.tif"])
    assert "features.onnx" in one_cli_error(r)


def test_manifest_naming_another_input_is_refused(tiny_bundle_copy):
    mpath = tiny_bundle_copy / "manifest.json"
    m = json.loads(mpath.read_text())
    m["onnx"]["input"] = "pixels"
    mpath.write_text(json.dumps(m))
    with pytest.raises(brainrt.BrainrtError, match="input 'pixels'"):
        brainrt.Bundle.load(tiny_bundle_copy)


@pytest.mark.parametrize("command", ["featurize", "classify"])
@pytest.mark.parametrize("case", BAD_BUNDLES)
def test_cli_bad_bundle(case, command, tiny_bundle_copy, io_dirs, slice_tif, tmp_path):
    src, out = io_dirs
    bundle, named = make_bad_bundle(case, tiny_bundle_copy, tmp_path)
    target = out / ("x.zarr" if command == "featurize" else "x.labels.ome.tif")
    result = run_cli([command, slice_tif, "-m", bundle, "-o", target])
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
    result = run_cli(["featurize", slice_tif, "-o", tmp_path / "x.zarr"])
    assert result.exit_code == 2
    line = error_line(result)
    assert "slice309-paper6" in line and "--model" in line
    assert listing(tmp_path) == []


def test_classify_features_of_another_model(io_dirs, tiny_bundle_path, tiny_bundle, synthetic_slice):
    import zarr

    src, out = io_dirs
    feats = src / "x.features.zarr"
    brainrt.featurize(small_slice(synthetic_slice), tiny_bundle, out=feats)
    root = zarr.open_group(str(feats), mode="r+")
    root.attrs["brainrt"] = {**root.attrs["brainrt"], "model_id": "0123456789ab"}  # brainrt's attributes (NGFF layout)
    result = run_cli(["classify", feats, "-m", tiny_bundle_path, "-o", out / "x.labels.ome.tif"])
    assert result.exit_code == 2, (result.output, result.exception)
    line = error_line(result)
    assert str(feats) in line and "0123456789ab" in line
    assert listing(out) == []


def test_halved_patch_size_of_the_context_bundle_is_refused(shipped_bundle_path, tmp_path):
    dst = tmp_path / "ctx"
    shutil.copytree(shipped_bundle_path, dst)
    _edit_manifest(dst, lambda d: d.update(patch_size=d["patch_size"] // 2))
    with pytest.raises(BrainrtError) as info:
        brainrt.Bundle.load(dst)
    msg = str(info.value)
    assert str(dst) in msg and "patch_size" in msg and "\n" not in msg, msg


@pytest.mark.parametrize("change, named", [
    (lambda d: d["window"].update(size=d["window"]["size"] - 16), "window"),
    (lambda d: d.update(net_stride=8), "net_stride"),
    (lambda d: d["onnx"].update(input_shape=["batch", 1, 96, 96]), "input_shape"),
    (lambda d: d["dense_onnx"].update(strides=[1, 3]), "dense"),
])
def test_contradicting_geometry_is_refused(tiny_bundle_copy, change, named):
    _edit_manifest(tiny_bundle_copy, change)
    with pytest.raises(BrainrtError, match=named):
        brainrt.Bundle.load(tiny_bundle_copy)


def test_os_files_in_a_bundle_are_ignored(tiny_bundle_copy):
    for name in (".DS_Store", "Thumbs.db", "._manifest.json", "heads/.DS_Store", "desktop.ini"):
        (tiny_bundle_copy / name).write_bytes(b"\x00\x01")
    brainrt.Bundle.load(tiny_bundle_copy)
    (tiny_bundle_copy / "notes.txt").write_text("mine")
    with pytest.raises(BrainrtError, match="notes.txt"):
        brainrt.Bundle.load(tiny_bundle_copy)


def test_model_mismatch_names_the_bundle_folder(tiny_bundle_path, slice_tif, tmp_path):
    from brainrt.api import demo_model

    out = tmp_path / "f.features.zarr"
    assert _run(["featurize", slice_tif, "-m", tiny_bundle_path, "--stride", "32", "-o", out]).exit_code == 0
    demo = demo_model()
    r = _run(["classify", out, "-m", demo, "-o", tmp_path / "a.ome.tif"])
    assert r.exit_code == 2
    assert str(demo) in r.stderr and brainrt.Bundle.load(demo, heads=False).model_id in r.stderr, r.stderr


def test_info_lists_what_a_bundle_holds(tiny_bundle):
    r = _run(["info", tiny_bundle.path])
    assert r.exit_code == 0, (r.output, r.exception)
    m = tiny_bundle.manifest
    for c in m.classes:
        assert any(c.name in ln and str(list(c.codes)) in ln for ln in r.output.splitlines()), r.output
    for head in m.heads:
        assert head in r.output
    t = m.training.data[0]
    assert t.image in r.output and t.image_sha256[:12] in r.output
    assert "split" in r.output and "footprint" in r.output and "fp32" in r.output
    assert tiny_bundle.model_id in r.output and "test" in r.output


def test_info_of_a_folder_that_is_no_bundle_is_one_line(tmp_path):
    r = _run(["info", tmp_path])
    assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1


def test_version():
    r = _run(["--version"])
    assert r.exit_code == 0 and brainrt.__version__ in r.output
