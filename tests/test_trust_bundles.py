"""Bundles that contradict themselves are refused, OS litter is ignored, errors name the
folder (issue 19: inputs users have), and ``brainrt info`` / ``brainrt --version``."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

import brainrt
from brainrt.cli import main
from brainrt.errors import BrainrtError


def _run(args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _edit_manifest(folder, change):
    path = folder / "manifest.json"
    d = json.loads(path.read_text())
    change(d)
    path.write_text(json.dumps(d))


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
