"""``train-and-export --cv K`` and ``--final --choices FILE`` (issue 31, item 3) on a small synthetic slice.

The real recipe (context 4, 128 px patches, 512 px footprints, 8 x 40 x 8 tiles) is far too slow for a
test: :data:`brainrt_train.netcv.BASE` is shrunk to 64 px patches without context, the budget to
1 epoch x 2 batches of 2 tiles of 4 x 4 positions, 1 thread, and the heads' grid to two logistic
regressions and three smoothings (the code paths are the real ones).
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import listing, write_tiff

TINY_BASE = {"context": 0, "patch_size": 64, "lr": 1e-3, "schedule": "onecycle", "border_p": 0.0, "rotate_p": 0.0}
TINY_HEADS = {"candidates": [["logreg", {"C": 0.1, "balanced": True}], ["logreg", {"C": 1.0, "balanced": True}]],
              "sigmas_um": [0.0, 40.0, 100.0], "spaces": ["log"]}
CV_ARGS = ["--cv", "3", "--candidates", "tiles,wd+ls", "--budget", "1x2x2x4", "--threads", "1"]


def run(*args):
    from brainrt.cli import main

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return CliRunner().invoke(main, ["train-and-export", *map(str, args)])


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from brainrt.synth import make_slice, synthetic_class_map

    d = tmp_path_factory.mktemp("final")
    s = make_slice((384, 768), seed=2)
    (d / "classes.json").write_text(json.dumps({"classes": synthetic_class_map(), "unlabeled": [0]}))
    return {"image": write_tiff(d / "t.tif", s.image), "mask": write_tiff(d / "t_areas.tif", s.mask),
            "class_map": d / "classes.json", "dir": d}


@pytest.fixture(scope="module")
def tiny_base():
    from brainrt_train import final_bundle, netcv

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(netcv, "BASE", TINY_BASE)
        mp.setattr(final_bundle, "default_heads", lambda: TINY_HEADS)
        yield


@pytest.fixture(scope="module")
def cv_bundle(files, tiny_base):
    """``--cv 3`` over two candidates, then the final fit of its choices."""
    out = files["dir"] / "b"
    r = run("--image", files["image"], "--mask", files["mask"], "--class-map", files["class_map"], "-o", out, *CV_ARGS)
    assert r.exit_code == 0, (r.output, r.exception)
    return out, r


@pytest.fixture(scope="module")
def refit(files, cv_bundle, tiny_base):
    """The bundle refitted from its own record (``--choices BUNDLE``)."""
    out = files["dir"] / "b-refit"
    r = run("--image", files["image"], "--mask", files["mask"], "-o", out, "--final", "--choices", cv_bundle[0])
    assert r.exit_code == 0, (r.output, r.exception)
    return out


def final_of(path):
    import brainrt

    m = brainrt.Bundle.load(path).manifest  # hash-verified
    return m, m.training.extra["final"]


def test_cv_writes_choices_report_and_a_verified_bundle(cv_bundle):
    from brainrt_train import netcv

    out, r = cv_bundle
    folder = out.parent / f"{out.name}.cv"
    assert {"choices.json", "REPORT.md", "results.json", "folds.png", "heads.json"} <= set(listing(folder))
    res = json.loads((folder / "results.json").read_text())
    assert sorted(res["candidates"]) == ["tiles", "wd+ls"]
    assert all(sorted(e["folds"]) == ["0", "1", "2"] for e in res["candidates"].values())
    means = {c: np.mean([f["clean"]["smoothed"]["pixel_accuracy"] for f in e["folds"].values()])
             for c, e in res["candidates"].items()}
    choices = json.loads((folder / "choices.json").read_text())
    assert choices["network"] == max(means, key=means.get)
    assert choices["recipe"] == {**TINY_BASE, **netcv.CANDIDATES[choices["network"]]}
    m, final = final_of(out)
    assert final["choices"] == choices and choices["cv"]["heads"]["grid"] == TINY_HEADS
    # each fold network is kept beside its features (what a later scoring of more images reads instead of training)
    assert sorted(listing(folder / "features" / choices["network"])) == [f"fold{f}.{x}" for f in range(3)
                                                                          for x in ("npy", "pt")]
    assert m.training.seed == choices["seed"] == 0 and m.training.epochs == 1
    assert final["folds"]["k"] == 3 and m.int8 is not None and m.dense_onnx is not None
    assert final["logreg"]["what"].startswith("the best logistic regression") and final["logreg"]["recipe"]
    assert f"network {choices['network']}" in r.output


@pytest.fixture(scope="module")
def own_grid(files, cv_bundle):
    """The bundle's own stride-16 features of the slice (the runtime's, fp32) as a cross-validation grid."""
    import brainrt
    from brainrt_train import cv
    from brainrt_train.data import ClassMap, load_slice

    m, _ = final_of(cv_bundle[0])
    sl = load_slice(files["image"], files["mask"], ClassMap.from_dict(m.class_map))
    g = brainrt.featurize(sl.image, brainrt.Bundle.load(cv_bundle[0]), stride=16, precision="fp32")
    return g, cv.grid_from(g, sl.labels, list(m.class_names))


def test_the_default_head_and_smoothing_are_chosen_on_the_fold_networks(files, cv_bundle, own_grid, tiny_base):
    """The heads' cross-validation redone here, each fold's head on the features the network CV kept of that
    fold's network, chooses the recipe the bundle ships as its default head and smoothing; the bundle's own
    features score it (the manifest's figures), and choosing on them would be a different run."""
    from brainrt_train import cv, netcv
    from brainrt_train.data import ClassMap
    from brainrt_train.final import choose_heads

    m, final = final_of(cv_bundle[0])
    setup = netcv.Setup(files["image"], files["mask"], k=3, class_map=ClassMap.from_dict(m.class_map), changes=False)
    assert setup.folds.record() == final["folds"]
    kept = cv_bundle[0].parent / f"{cv_bundle[0].name}.cv" / "features" / final["choices"]["network"]
    fold_feats = [np.load(kept / f"fold{f}.npy") for f in range(3)]
    assert not np.array_equal(fold_feats[0], fold_feats[1])  # three networks, not one
    chosen, _, _ = choose_heads(setup.grid, setup.cf, [(k, tuple(p.items())) for k, p in TINY_HEADS["candidates"]],
                                sigmas=TINY_HEADS["sigmas_um"], spaces=TINY_HEADS["spaces"],
                                features_of=lambda f: fold_feats[f])
    assert final["choices"]["heads"] == {"chosen": chosen.to_dict()}
    assert chosen.to_dict() == {k: v for k, v in final["recipe"].items() if k != "seed"}
    assert m.default_head == ("ctx" if chosen.head[0] == "ctx" else "logreg")
    assert (m.smoothing.sigma_um, m.smoothing.space) == (chosen.sigma_um, chosen.space)
    grid = own_grid[1]
    cf = cv.cell_folds(setup.folds, grid.labels, 16, grid.valid.shape, len(grid.names))
    own, _ = cv.evaluate_heads(grid, cf, [chosen.head], [chosen.sigma_um], (chosen.space,))
    assert final["cv"]["macro_f1"]["mean"] == pytest.approx(cv.criterion(own[chosen]), abs=1e-6)
    assert set(m.heads) >= {"cnn", "logreg", "linsvm", "gmm", "area_density"}


def test_a_chosen_context_head_is_written_as_the_default(tmp_path, cv_bundle, own_grid):
    """The heads' spec may name one recipe (scored, not searched); a context head is written as the default head,
    its first stage as ``logreg``, the bundle re-sealed in place and served by the runtime."""
    import shutil

    import brainrt
    from brainrt_train import cv
    from brainrt_train.final import final_fit, recipe_of, write_final
    from brainrt_train.final_bundle import Choices, choose_default_head

    m, final = final_of(cv_bundle[0])
    features, grid = own_grid
    recipe = {"head": "ctx", "C": 1.0, "scales": "p150", "sigma_um": 40.0, "space": "prob", "bias": {}}
    choices = Choices.from_dict({**final["choices"], "heads": {"chosen": recipe}})
    folds = cv.spatial_folds(grid.labels, k=3, n_classes=len(grid.names))
    chosen, summary, record = choose_default_head(grid, folds, choices)
    assert chosen == recipe_of(recipe) and list(record["grid"]) == [chosen.label()]
    assert 0 < summary["smoothed"]["macro_f1"]["mean"] <= 1
    b = tmp_path / "b"
    shutil.copytree(cv_bundle[0], b)
    model, _ = final_fit(grid, chosen, 0)
    written = write_final(b, model, chosen, {"what": "test"}, chosen_by="test")
    from brainrt_train.final_bundle import logreg_record  # what the final fit records of the logreg it writes

    assert logreg_record(None, "ctx", model, None)["what"].startswith("the default context head's first stage")
    bundle = brainrt.Bundle.load(b)
    assert written == bundle.manifest and bundle.manifest.default_head == "ctx"
    assert bundle.manifest.smoothing.sigma_um == 40.0 and bundle.manifest.training.extra["final"] == {"what": "test"}
    res = brainrt.classify(features, bundle)
    lab = grid.valid & (grid.y_cells >= 0)
    assert res.head == "ctx" and (res.labels[grid.valid] >= 0).all()
    assert np.mean(res.labels[lab] == grid.y_cells[lab]) > 0.6  # in-sample: the areas come out


def test_a_refit_from_the_bundles_record_makes_the_same_choices_and_weights(cv_bundle, refit):
    m1, f1 = final_of(cv_bundle[0])
    m2, f2 = final_of(refit)
    assert f2["choices"] == f1["choices"] and f2["recipe"] == f1["recipe"] and f2["folds"] == f1["folds"]
    assert (m2.default_head, m2.smoothing.sigma_um) == (m1.default_head, m1.smoothing.sigma_um)
    # torch at 1 thread, same seed: the same network, bit for bit
    assert m2.files["weights.bin"] == m1.files["weights.bin"]
    assert m2.training.extra["history"] == [{**h, "seconds": h2["seconds"]} for h, h2 in
                                            zip(m1.training.extra["history"], m2.training.extra["history"])]


def test_a_rerun_with_the_same_arguments_is_nothing_to_do(files, cv_bundle, refit):
    before = (refit / "manifest.json").read_bytes()
    r = run("--image", files["image"], "--mask", files["mask"], "-o", refit, "--final", "--choices", cv_bundle[0])
    assert r.exit_code == 0 and "nothing to do" in r.output, r.output
    assert (refit / "manifest.json").read_bytes() == before


def _bad_choices(d, case, tiny_bundle_path):
    good = {"network": "tiles", "recipe": {}, "budget": {"epochs": 1, "tile_batches_per_epoch": 1, "tile_batch": 1,
                                                          "tiles": 2}, "seed": 0}
    edits = {"not json": "{", "missing budget": {k: v for k, v in good.items() if k != "budget"},
             "zero epochs": {**good, "budget": {**good["budget"], "epochs": 0}},
             "unknown recipe key": {**good, "recipe": {"dropout": 0.5}},
             "per patch": {**good, "recipe": {"per_patch": True}},
             "bad heads": {**good, "heads": {"candidates": [["svm", {}]], "sigmas_um": [0]}},
             "two folds": {**good, "folds": {"k": 2}}}
    if case == "bundle without choices":
        return tiny_bundle_path
    if case == "missing file":
        return d / "nowhere.json"
    path = d / "choices.json"
    path.write_text(edits[case] if isinstance(edits[case], str) else json.dumps(edits[case]))
    return path


@pytest.mark.parametrize("case", ["not json", "missing budget", "zero epochs", "unknown recipe key", "per patch",
                                  "bad heads", "two folds", "bundle without choices", "missing file"])
def test_a_bad_choices_file_is_one_line_naming_it(tmp_path, files, case, tiny_bundle_path):
    choices = _bad_choices(tmp_path, case, tiny_bundle_path)
    before = listing(tmp_path)
    r = run("--image", files["image"], "--mask", files["mask"], "-o", tmp_path / "out", "--final", "--choices", choices)
    assert r.exit_code == 2, (r.output, r.exception)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and str(choices) in lines[0], r.stderr
    assert listing(tmp_path) == before


@pytest.mark.parametrize(("extra", "named"), [(["--epochs", "3"], "--epochs"), (["--budget", "1x1x1x2"], "--budget"),
                                              (["--cv", "3"], "--cv")])
def test_options_that_do_not_apply_to_the_final_fit(tmp_path, files, extra, named):
    (tmp_path / "c.json").write_text("{}")
    r = run("--image", files["image"], "--mask", files["mask"], "-o", tmp_path / "out", "--final", "--choices",
            tmp_path / "c.json", *extra)
    assert r.exit_code == 2 and named in r.stderr, r.output
    assert listing(tmp_path) == ["c.json"]


def test_the_imaging_changes_include_a_rerendered_slice():
    """The network CV scores every candidate under blur, binning and a re-rendering to 256 levels (what a slice of
    another session brings); a 19-level slice comes back with many more gray levels, same shape and type."""
    from brainrt_train.netcv import imaging_changes

    rng = np.random.default_rng(0)
    image = (np.round(rng.uniform(0, 18, (96, 128))) * 14).astype(np.uint8)  # 19 gray levels
    changes = imaging_changes(image)
    assert sorted(changes) == ["bin2", "blur1", "rerendered"]
    assert all(v.shape == image.shape and v.dtype == np.uint8 for v in changes.values())
    assert np.unique(changes["rerendered"]).size > 40 and not np.array_equal(changes["rerendered"], image)
    assert sorted(imaging_changes(image.astype(np.uint16))) == ["bin2", "blur1"]


def test_the_report_names_the_area_that_collapses_under_the_rerendering():
    """A small mean loss can hide one area lost: the worst class's mean F1 under the re-rendering is reported;
    a fold holding a class out too little (nan) does not count for it."""
    from brainrt_train.netcv import worst_under

    def fold(f1_rer):
        return {"clean": {}, "rerendered": {"smoothed": {"f1": f1_rer}}}

    folds = [fold({"Ctx": 0.97, "ZI": 0.86, "WM": 0.5}), fold({"Ctx": 0.95, "ZI": 0.23, "WM": float("nan")}),
             fold({"Ctx": 0.94, "ZI": 0.29, "WM": 0.8})]
    assert worst_under(folds, "rerendered", ["Ctx", "ZI", "WM"]) == "ZI 0.46"
    assert worst_under(folds, "blur1", ["Ctx", "ZI", "WM"]) == "-"


def test_a_report_of_a_folder_without_results_is_one_line(tmp_path):
    from brainrt_train.netcv import merged

    with pytest.raises(SystemExit, match="no scored fold"):
        merged(tmp_path)
