"""``brainrt export --format bioimageio``: the package validates (offline), bioimageio.core runs its own test
tensors, and its probabilities equal ``brainrt classify --smooth 0``'s on a crop (the demo slice, a derived
bundle, slice309 where ../shared/data has it)."""

from __future__ import annotations

import socket
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from conftest import ROOT, error_line, run_cli, write_tiff

pytest.importorskip("bioimageio.core")
pytest.importorskip("onnx")

DEMO = ROOT / "models" / "synthetic-demo"
SHIPPED = ROOT / "models" / "slice309-paper6"
TOL = 1e-4


@pytest.fixture
def offline(monkeypatch):
    """Any attempt to open a network connection fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access at test time: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(scope="module")
def demo_slice(tmp_path_factory):
    from brainrt.synth import make_slice

    return write_tiff(tmp_path_factory.mktemp("export") / "demo.tif", make_slice((384, 576), seed=1).image)


@pytest.fixture(scope="module")
def demo_zip(demo_slice, tmp_path_factory):
    out = tmp_path_factory.mktemp("pkg") / "demo.zip"
    r = run_cli(["export", DEMO, "--format", "bioimageio", "--image", demo_slice, "-o", out])
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith(f"wrote {out}: bioimageio package, classes (head logreg), stride 16"), r.stdout
    return out


def _core(zip_path, image):
    """bioimageio.core's prediction of the package on ``image`` (H, W): (C, rows, cols)."""
    from bioimageio.core import predict

    sample = predict(model=str(zip_path), inputs=image[None, None])
    (tensor,) = sample.members.values()
    return np.asarray(tensor.data)[0]


def _classify(tmp_path, bundle, image, head):
    """``brainrt classify --smooth 0`` of ``image`` (a crop as its own TIFF): probabilities (K, rows, cols)
    and the cells it computed (tissue)."""
    tif = write_tiff(tmp_path / "crop.tif", image)
    out = tmp_path / "crop.labels.ome.tif"
    r = run_cli(["classify", tif, "--model", bundle, "--head", head, "--smooth", "0", "--stride", "16",
                 "--precision", "fp32", "-o", out])
    assert r.exit_code == 0, r.output
    prob = tifffile.imread(tmp_path / "crop.labels.probabilities.ome.tif")
    return prob, prob.sum(axis=0) > 0


def _agree(zip_path, bundle, image, head, tmp_path):
    ours = _core(zip_path, image)
    theirs, tissue = _classify(tmp_path, bundle, image, head)
    assert ours.shape == theirs.shape
    assert tissue.mean() > 0.5  # the comparison covers most of the crop
    diff = np.abs(ours - theirs)[:, tissue].max()
    assert diff <= TOL, diff
    return diff


def test_package_validates_offline(demo_zip, offline):
    from bioimageio.spec import ValidationContext, load_description
    from bioimageio.spec.model.v0_5 import ModelDescr

    with ValidationContext(perform_io_checks=True):
        descr = load_description(demo_zip)
    assert isinstance(descr, ModelDescr), descr.validation_summary.display() if hasattr(descr, "validation_summary") else descr
    out = descr.outputs[0]
    assert [a.id for a in out.axes] == ["batch", "channel", "y", "x"]
    assert [a.halo for a in out.axes[2:]] == [4, 4] and [a.scale for a in out.axes[2:]] == [16, 16]
    assert [str(c) for c in out.axes[1].channel_names] == ["dense_small", "sparse_large", "fibrous", "medium"]
    assert [p.id for p in descr.inputs[0].preprocessing] == ["ensure_dtype", "scale_linear", "ensure_dtype"]
    assert {str(c.doi) for c in descr.cite} == {"10.1109/IEEECONF44664.2019.9048805", "10.1038/s41597-020-00692-y"}
    assert str(descr.license) == "CC-BY-4.0" and descr.covers and descr.documentation


def test_bioimageio_core_runs_the_package_test_tensors(demo_zip, offline):
    from bioimageio.core import test_model

    summary = test_model(demo_zip)
    failed = [(d.name, [e.msg for e in d.errors]) for d in summary.details if d.status != "passed"]
    assert summary.status == "passed", failed


def test_probabilities_equal_brainrt_classify_on_a_demo_crop(demo_zip, tmp_path):
    from brainrt.synth import make_slice

    image = make_slice((384, 576), seed=5).image[32:320, 48:496]  # another slice: not the package's test crop
    _agree(demo_zip, DEMO, image, "logreg", tmp_path)


def test_features_export_equals_brainrt_features(demo_slice, tmp_path):
    import brainrt
    from brainrt.synth import make_slice

    out = tmp_path / "features.zip"
    r = run_cli(["export", DEMO, "--what", "features", "--stride", "8", "--image", demo_slice, "-o", out])
    assert r.exit_code == 0, r.output
    image = make_slice((384, 576), seed=5).image[:256, :320]
    ours = _core(out, image)
    bundle = brainrt.Bundle.load(DEMO)
    grid = brainrt.featurize(image, bundle, stride=8, tissue="all", method="dense", standardize="off", precision="fp32")
    assert ours.shape == (64, 32, 40)
    np.testing.assert_allclose(ours, np.moveaxis(grid.features, -1, 0), atol=TOL, rtol=0)


def test_a_derived_bundle_with_two_of_four_classes_exports_the_same_way(tmp_path, demo_slice):
    """Strokes of two classes: a binary logistic regression, its two classes placed among the four (the
    others 0), as brainrt gives them."""
    import brainrt
    from brainrt.synth import draw_strokes, make_slice

    s = make_slice((384, 576), seed=7)
    strokes = draw_strokes(s.mask, 3, codes=[1, 3], length=120, margin=48, seed=0)
    fitted = brainrt.fit_heads([s.image], [strokes], brainrt.Bundle.load(DEMO), cv=False)
    derived = tmp_path / "derived"
    brainrt.save_bundle(fitted, brainrt.Bundle.load(DEMO), derived)
    out = tmp_path / "derived.zip"
    r = run_cli(["export", derived, "--image", demo_slice, "-o", out])
    assert r.exit_code == 0, r.output
    diff = _agree(out, derived, make_slice((384, 576), seed=5).image[:256, :320], "logreg", tmp_path)
    assert diff < TOL


def test_slice309_crop_equals_brainrt(shared_data, tmp_path):
    image = tifffile.imread(shared_data / "slice309.tif")
    out = tmp_path / "s309.zip"
    r = run_cli(["export", SHIPPED, "--head", "logreg", "--image", shared_data / "slice309.tif", "-o", out])
    assert r.exit_code == 0, r.output
    _agree(out, SHIPPED, image[480:992, 2560:3072], "logreg", tmp_path)  # striatum and its borders


def test_the_context_head_is_refused_in_one_line(tmp_path, demo_slice):
    out = tmp_path / "ctx.zip"
    r = run_cli(["export", SHIPPED, "--image", demo_slice, "-o", out])
    line = error_line(r)
    assert "head 'ctx' pools" in line and "pass --head logreg" in line, line
    assert list(tmp_path.iterdir()) == []  # nothing written, no temporary left


def test_a_stride_whose_smallest_tile_needs_gigabytes_is_refused(tmp_path, demo_slice):
    """slice309-paper6 sees 472 px around a cell: at stride 2 its smallest tile with the halo is 946 px, 224k dense
    positions (about 3 GB in onnxruntime); stride 4 fits (the 512 px crop at 246 x 246 positions)."""
    r = run_cli(["export", SHIPPED, "--head", "logreg", "--stride", "2", "--image", demo_slice, "-o", tmp_path / "x.zip"])
    assert "at stride 2 the smallest tile (474 px, 946 px with its halo)" in error_line(r)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("args", "says"), [
    (["-o", "{tmp}/x.tar"], "x.tar: a bioimage.io package is a .zip"),
    (["-o", "{tmp}/missing/x.zip"], "does not exist"),
    (["--stride", "256", "-o", "{tmp}/x.zip"], "wider than the network's window"),
    (["--head", "gmm", "-o", "{tmp}/x.zip"], "head 'gmm' is not one affine map"),
    (["--what", "features", "--head", "logreg", "-o", "{tmp}/x.zip"], "does not apply to --what features"),
    (["--crop", "300", "0", "-o", "{tmp}/x.zip"], "does not fit"),
])
def test_bad_export_arguments_are_one_line(tmp_path, demo_slice, args, says):
    r = run_cli(["export", DEMO, "--image", demo_slice, *[a.format(tmp=tmp_path) for a in args]])
    assert says in error_line(r)
    assert list(tmp_path.iterdir()) == []


def test_an_existing_package_is_kept_unless_overwrite(tmp_path, demo_slice):
    out = tmp_path / "x.zip"
    out.write_bytes(b"mine")
    r = run_cli(["export", DEMO, "--image", demo_slice, "-o", out])
    assert "already exists; pass --overwrite" in error_line(r) and out.read_bytes() == b"mine"
    r = run_cli(["export", DEMO, "--image", demo_slice, "-o", out, "--overwrite"])
    assert r.exit_code == 0, r.output
    assert out.read_bytes()[:2] == b"PK" and sorted(p.name for p in tmp_path.iterdir()) == ["x.zip"]


def test_a_16_bit_image_is_refused_naming_it(tmp_path):
    from brainrt.synth import make_slice

    tif = write_tiff(tmp_path / "deep.tif", make_slice((256, 256), seed=1).image.astype(np.uint16) * 257)
    r = run_cli(["export", DEMO, "--image", tif, "-o", tmp_path / "x.zip"])
    assert error_line(r).startswith(f"Error: {tif}: pixel type uint16")


def test_without_the_extra_export_says_which_extra(monkeypatch, tmp_path, demo_slice):
    monkeypatch.setitem(sys.modules, "bioimageio.spec", None)  # import fails as if not installed
    r = run_cli(["export", DEMO, "--image", demo_slice, "-o", tmp_path / "x.zip"])
    assert "pip install 'brainrt[bioimageio]'" in error_line(r)


def test_import_brainrt_imports_neither_onnx_nor_bioimageio():
    code = ("import sys, brainrt, brainrt.cli, brainrt.zoo; "
            "bad = [m for m in sys.modules if m == 'onnx' or m.startswith(('onnx.', 'bioimageio'))]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out
