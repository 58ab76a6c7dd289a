"""Issue 20: heads fitted from painted strokes (`brainrt fit`, `brainrt.fit_heads`) and the derived bundle.

Synthetic data only: strokes are drawn inside the areas of brainrt.synth slices with
``brainrt.synth.draw_strokes``; the shipped synthetic-demo bundle is the parent where the
features must be good (known areas), the tiny bundle where any features do (bad input).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

import brainrt
from brainrt.cli import main
from brainrt.errors import BrainrtError
from brainrt.synth import draw_strokes, make_slice, make_volume
from conftest import ROOT, listing, write_tiff
from conftest import one_cli_error as _one_error, run_cli as _run

DEMO = ROOT / "models" / "synthetic-demo"
SHAPE = (512, 768)


@pytest.fixture(scope="module")
def demo_pair(tmp_path_factory):
    """A synthetic slice, its truth and 3 strokes per area (TIFF paths)."""
    folder = tmp_path_factory.mktemp("strokes")
    s = make_slice(SHAPE, seed=7)
    return {"image": write_tiff(folder / "img.tif", s.image), "mask": s.mask,
            "strokes": write_tiff(folder / "strokes.tif", draw_strokes(s.mask, 3, length=120, margin=48, seed=0))}


@pytest.fixture(scope="module")
def fitted_demo(demo_pair, tmp_path_factory):
    out = tmp_path_factory.mktemp("fitted") / "new"
    r = _run(["fit", demo_pair["image"], "--labels", demo_pair["strokes"], "-m", DEMO, "-o", out])
    assert r.exit_code == 0, r.output
    return out


# --------------------------------------------------------------------------- strokes -> cells
def test_a_cell_takes_the_stroke_covering_most_of_it(tiny_bundle):
    from brainrt.bundle.derive import ClassTable
    from brainrt.bundle.strokes import cell_labels

    table = ClassTable.resolve(None, tiny_bundle)
    codes = tiny_bundle.manifest.class_codes
    s = np.zeros((64, 64), np.uint8)
    s[2, 0:16] = codes[0]  # 16 px of class 0 in cell (0, 0) ...
    s[5:8, 0:10] = codes[1]  # ... 30 px of class 1: cell (0, 0) is class 1
    s[40, 40:60] = codes[0]  # a second stroke of class 0 over cells (2, 2) and (2, 3)
    cells = cell_labels(s, table, 16, (4, 4), first_id=10)
    assert cells.n_strokes == 3
    assert cells.classes[0, 0] == 1 and cells.classes[2, 2] == cells.classes[2, 3] == 0
    assert cells.mask.sum() == 3 and cells.strokes[2, 2] == cells.strokes[2, 3] != cells.strokes[0, 0]
    assert cells.strokes[cells.mask].min() >= 10  # ids offset for several images
    assert cells.pixels.tolist()[:2] == [36, 30]


def test_cross_validation_is_grouped_by_stroke():
    """Cells of one stroke are near-copies; classes are random per stroke. Folds by pixel would score ~1
    (each held-out cell has its stroke's twins in training); folds by stroke score near chance."""
    from brainrt.bundle.strokes import Samples
    from brainrt.fit import fit_samples

    rng = np.random.default_rng(0)
    n_strokes, per = 24, 20
    centres = rng.normal(0, 1, (n_strokes, 8))
    y_stroke = np.tile(np.arange(3), n_strokes // 3)
    X = np.repeat(centres, per, axis=0) + rng.normal(0, 0.01, (n_strokes * per, 8))
    s = Samples(X.astype(np.float32), np.repeat(y_stroke, per), np.repeat(np.arange(n_strokes), per), np.ones(3))
    _, report = fit_samples(s, ["a", "b", "c"])
    assert report["folds"] == 5 and report["grouped_by"] == "stroke"
    assert max(report["balanced_accuracy"].values()) < 0.75, report


# --------------------------------------------------------------------------- the derived bundle
def test_fitted_bundle_reproduces_known_areas(fitted_demo, tmp_path):
    """Fit on one synthetic slice's strokes, map another slice: the known areas come back."""
    other = make_slice(SHAPE, seed=8)
    bundle = brainrt.Bundle.load(fitted_demo)
    result = brainrt.classify_image(other.image, bundle, stride=16)
    metrics = brainrt.api.score(result, other.mask, bundle)
    assert metrics["pixel_accuracy"] >= 0.85, metrics["pixel_accuracy"]
    assert min(c["f1"] for c in metrics["per_class"].values()) >= 0.7, metrics["per_class"]


def test_derived_manifest_records_parent_strokes_counts_cv_versions(fitted_demo, demo_pair):
    from brainrt.model.seal import sha256_file

    parent = brainrt.Bundle.load(DEMO)
    m = brainrt.model.seal.verify_bundle(fitted_demo)
    assert m.model_id == parent.model_id  # the graphs are the parent's: its feature grids are accepted
    assert m.extra["parent"]["model_id"] == parent.model_id
    assert m.extra["parent"]["manifest_sha256"] == sha256_file(DEMO / "manifest.json")
    assert m.extra["parent"]["files"] == parent.manifest.files
    rec = m.extra["fit"]
    assert rec["strokes"][0]["labels_sha256"] == sha256_file(demo_pair["strokes"])
    assert rec["strokes"][0]["image_sha256"] == sha256_file(demo_pair["image"])
    assert {n: c["strokes"] for n, c in rec["counts"].items()} == dict.fromkeys(parent.class_names, 3)
    assert rec["cv"]["folds"] == 3 and rec["cv"]["grouped_by"] == "stroke"
    assert {"numpy", "scikit-learn"} <= set(m.versions) and {"onnxruntime", "onnxruntime-gpu"} & set(m.versions)
    assert set(m.heads) == {"logreg", "area_density", "gmm"} and m.default_head == "logreg"
    assert m.training is None and m.class_colors and len(m.class_colors) == 4
    assert "heads/cnn.npz" not in m.files and "confusion.png" not in m.files


def test_every_command_accepts_the_derived_bundle(fitted_demo, demo_pair, tmp_path):
    img = demo_pair["image"]
    feats = tmp_path / "img.features.zarr"
    assert _run(["featurize", img, "-m", DEMO, "-o", feats]).exit_code == 0  # features of the parent ...
    r = _run(["classify", feats, "-m", fitted_demo, "-o", tmp_path / "a.ome.tif"])  # ... classified by the child
    assert r.exit_code == 0, r.output
    r = _run(["cluster", feats, "-m", fitted_demo, "-o", tmp_path / "c.ome.tif"])
    assert r.exit_code == 0, r.output
    r = _run(["subdivide", feats, "-m", fitted_demo, "--area", "fibrous", "-k", "3", "-o", tmp_path / "s.ome.tif"])
    assert r.exit_code == 0, r.output


def test_a_tampered_derived_bundle_is_refused(fitted_demo, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(fitted_demo, copy)
    with open(copy / "heads" / "logreg.joblib", "ab") as f:
        f.write(b"\0")
    with pytest.raises(BrainrtError, match="logreg.joblib does not match its sha256"):
        brainrt.Bundle.load(copy)


def test_new_area_from_a_class_map_json(tiny_bundle, tiny_bundle_path, synthetic_slice, tmp_path):
    """Two of the synthetic areas merged into one new class with its own code and colour."""
    cmap = tmp_path / "classes.json"
    cmap.write_text(json.dumps({"classes": {"left": [1, 2], "fibrous": [3], "medium": [4]},
                                "colors": {"left": "#123456"}}))
    strokes = draw_strokes(synthetic_slice.mask, 2, length=80, margin=32, seed=1)
    fitted = brainrt.fit_heads(synthetic_slice.image, strokes, tiny_bundle, class_map=cmap)
    out = brainrt.save_bundle(fitted, tiny_bundle, tmp_path / "merged")
    b = brainrt.Bundle.load(out)
    assert b.class_names == ["left", "fibrous", "medium"] and b.manifest.codes_per_class == [[1, 2], [3], [4]]
    assert b.manifest.class_colors[0] == "#123456"
    assert fitted.record["counts"]["left"]["strokes"] == 4
    labels = brainrt.classify_image(synthetic_slice.image, b, stride=32).cell_codes()
    assert set(np.unique(labels)) <= {1, 3, 4, 255}


# --------------------------------------------------------------------------- bad input: one line, exit 2
@pytest.fixture
def bad(tmp_path, synthetic_slice):
    img = write_tiff(tmp_path / "img.tif", synthetic_slice.image)
    good = draw_strokes(synthetic_slice.mask, 2, length=80, margin=32, seed=0)

    def strokes(change):
        s = good.copy()
        s = change(s) if change else s
        return write_tiff(tmp_path / "s.tif", s)

    return img, strokes, tmp_path / "out"


def _outside(s):
    s[:20, 200:260] = 1  # the synthetic slice's background is the top (and right) edge
    return s


@pytest.mark.parametrize(("change", "message"), [
    (lambda s: np.where(s == 1, 1, 0).astype(np.uint8), "only one class (dense-small)"),
    (lambda s: np.zeros_like(s), "holds no stroke"),
    (lambda s: np.where(s == 1, 9, s).astype(np.uint8), "holds codes [9] that are not in the class map"),
    (_outside, "stroke(s) lie outside the tissue"),
    (lambda s: s[:, :-8], "differ from the image's (384, 576)"),
])
def test_bad_strokes_are_one_line(bad, tiny_bundle_path, change, message):
    img, strokes, out = bad
    path = strokes(change)
    line = _one_error(_run(["fit", img, "--labels", path, "-m", tiny_bundle_path, "-o", out]))
    assert message in line, line
    assert not out.exists() and listing(out.parent) == sorted(["img.tif", "s.tif"])


def test_a_parent_that_fails_verification_is_one_line(bad, tiny_bundle_copy):
    img, strokes, out = bad
    with open(tiny_bundle_copy / "heads" / "logreg.joblib", "ab") as f:
        f.write(b"\0")
    line = _one_error(_run(["fit", img, "--labels", strokes(None), "-m", tiny_bundle_copy, "-o", out]))
    assert "does not match its sha256" in line and not out.exists()


def test_paired_inputs_and_the_parent_as_output_are_refused(bad, tiny_bundle_path):
    img, strokes, out = bad
    s = strokes(None)
    assert "2 image(s) but 1 stroke image(s)" in _one_error(_run(["fit", img, img, "--labels", s, "-m",
                                                                  tiny_bundle_path, "-o", out]))
    assert "is the parent bundle" in _one_error(_run(["fit", img, "--labels", s, "-m", tiny_bundle_path,
                                                      "-o", tiny_bundle_path]))


def test_labels_takes_several_files_and_several_images_train_one_head(bad, tiny_bundle_path, synthetic_slice,
                                                                     tmp_path):
    img, strokes, out = bad
    a = strokes(None)
    b = write_tiff(tmp_path / "b.tif", draw_strokes(synthetic_slice.mask, 1, length=60, margin=32, seed=5))
    r = _run(["fit", img, img, "--labels", a, b, "-m", tiny_bundle_path, "-o", out])
    assert r.exit_code == 0, r.output
    rec = brainrt.model.seal.verify_bundle(out).extra["fit"]
    assert [s["labels"] for s in rec["strokes"]] == [str(a), str(b)]
    assert sum(c["strokes"] for c in rec["counts"].values()) == 12  # 2 + 1 per area, ids distinct per image


# --------------------------------------------------------------------------- volumes
def test_strokes_on_a_few_slices_then_classify_the_volume(tmp_path):
    import zarr
    from scipy.ndimage import label

    vol = make_volume((5, 256, 384), seed=3)
    strokes = np.zeros_like(vol.mask)
    for z in (0, 4):
        strokes[z] = draw_strokes(vol.mask[z], 2, length=80, margin=40, seed=z)
    stack = write_tiff(tmp_path / "stack.tif", vol.image, photometric="minisblack")
    labels = write_tiff(tmp_path / "strokes.tif", strokes, photometric="minisblack")
    new = tmp_path / "new"
    r = _run(["fit", stack, "--labels", labels, "-m", DEMO, "-o", new])
    assert r.exit_code == 0, r.output
    rec = brainrt.model.seal.verify_bundle(new).extra["fit"]
    want = {c: sum(label(strokes[z] == c, np.ones((3, 3)))[1] for z in (0, 4)) for c in range(1, 5)}
    assert [c["strokes"] for c in rec["counts"].values()] == list(want.values()) and min(want.values()) >= 2
    out = tmp_path / "out.ome.zarr"
    r = _run(["classify", stack, "--z", "all", "--workers", "1", "--stride", "32", "-m", new, "-o", out])
    assert r.exit_code == 0, r.output
    got = np.asarray(zarr.open_group(str(out), mode="r")["labels/areas/0"])
    inner = (vol.mask[1:4] > 0) & (got[1:4] != 255)  # slices without strokes
    assert np.mean(got[1:4][inner] == vol.mask[1:4][inner]) >= 0.8
