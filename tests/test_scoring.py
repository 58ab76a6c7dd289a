"""Scoring a map against an annotation: training slice named, held-out split, metrics."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import one_cli_error as _one_error
from conftest import run_cli as _run
from conftest import write_tiff


@pytest.fixture(scope="module")
def scored(tmp_path_factory, tiny_bundle_path, slice_tif, mask_tif):
    """classify --truth on the tiny bundle's own training slice, whole and held out."""
    out = tmp_path_factory.mktemp("scored")
    whole = _run(["classify", slice_tif, "-m", tiny_bundle_path, "--stride", "16", "--truth", mask_tif,
                  "-o", out / "whole.ome.tif"])
    held = _run(["classify", slice_tif, "-m", tiny_bundle_path, "--stride", "16", "--truth", mask_tif, "--held-out",
                 "-o", out / "held.ome.tif"])
    return out, whole, held


def test_training_slice_is_named_when_scored(scored):
    _, whole, _ = scored
    assert whole.exit_code == 0, whole.output
    lines = [ln for ln in whole.output.splitlines() if "training" in ln and "--held-out" in ln]
    assert len(lines) == 1, whole.output


def test_held_out_scores_the_recorded_test_split_only(scored, tiny_bundle, mask_tif, slice_tif):
    from brainrt_train.data import ClassMap, load_slice
    from brainrt_train.evaluate import split_footprints

    out, whole, held = scored
    assert held.exit_code == 0, held.output
    mw = json.loads((out / "whole.metrics.json").read_text())
    mh = json.loads((out / "held.metrics.json").read_text())
    m, t = tiny_bundle.manifest, tiny_bundle.manifest.training
    sl = load_slice(slice_tif, mask_tif, ClassMap.from_dict(m.class_map))
    region = split_footprints([sl], n_classes=len(m.class_names), patch_size=m.patch_size, gap=t.gap,
                              fractions=t.fractions, seed=t.seed)["test"][0]
    assert mh["n_pixels"] == int((region & (sl.labels >= 0)).sum()) < mw["n_pixels"]
    assert mh["scored_on"].startswith("test split") and mw["scored_on"].startswith("whole slice")


def test_metrics_record_model_stride_head_smoothing_and_axes(scored, tiny_bundle):
    out, whole, _ = scored
    mw = json.loads((out / "whole.metrics.json").read_text())
    assert mw["model_id"] == tiny_bundle.model_id and mw["stride"] == 16
    assert mw["head"] == tiny_bundle.manifest.default_head and "smooth_um" in mw
    assert mw["confusion_matrix_rows"] == [f"truth {n}" for n in tiny_bundle.class_names]
    assert mw["confusion_matrix_columns"] == [f"predicted {n}" for n in tiny_bundle.class_names]
    assert mw["training_slice"] is not None


def test_per_class_scores_are_printed(scored, tiny_bundle):
    _, whole, _ = scored
    for name in tiny_bundle.class_names:
        row = [ln for ln in whole.output.splitlines() if ln.split()[:1] == [name]]
        assert len(row) == 1 and len(row[0].split()) >= 5, whole.output
    assert "precision" in whole.output and "recall" in whole.output and "F1" in whole.output


def test_held_out_of_a_mask_the_bundle_was_not_trained_on_is_refused(tmp_path, tiny_bundle_path, synthetic_slice,
                                                                      slice_tif):
    other = synthetic_slice.mask.copy()
    other[0, 0] = 1 if other[0, 0] != 1 else 2  # another file, another sha256
    truth = write_tiff(tmp_path / "other_areas.tif", other)
    r = _run(["classify", slice_tif, "-m", tiny_bundle_path, "--truth", truth, "--held-out", "-o", tmp_path / "a.ome.tif"])
    line = _one_error(r)
    assert "other_areas.tif" in line and "training" in line


def test_unknown_codes_are_reported(tmp_path, tiny_bundle_path, synthetic_slice, slice_tif):
    mask = synthetic_slice.mask.copy()
    mask[:20, :50], mask[-20:, -50:] = 42, 200
    truth = write_tiff(tmp_path / "codes.tif", mask)
    r = _run(["classify", slice_tif, "-m", tiny_bundle_path, "--truth", truth, "-o", tmp_path / "a.ome.tif"])
    assert r.exit_code == 0, r.output
    assert "2000 pixels" in r.output and "42" in r.output and "200" in r.output, r.output
    m = json.loads((tmp_path / "a.metrics.json").read_text())
    assert m["unknown_codes"] == {"42": 1000, "200": 1000}


def test_an_image_passed_as_truth_is_refused(tmp_path, tiny_bundle_path, slice_tif):
    r = _run(["classify", slice_tif, "-m", tiny_bundle_path, "--truth", slice_tif, "-o", tmp_path / "a.ome.tif"])
    line = _one_error(r)
    assert "slice.tif" in line and "label mask" in line
    assert not (tmp_path / "a.ome.tif").exists()


def test_a_truth_without_any_class_is_one_line(tmp_path, tiny_bundle_path, synthetic_slice, slice_tif):
    truth = write_tiff(tmp_path / "zeros.tif", np.zeros_like(synthetic_slice.mask))
    r = _run(["classify", slice_tif, "-m", tiny_bundle_path, "--truth", truth, "-o", tmp_path / "a.ome.tif"])
    line = _one_error(r)
    assert "zeros.tif" in line and "no pixel" in line


def test_held_out_of_a_final_fit_is_refused_before_any_work(tiny_bundle_copy, mask_tif, slice_tif, tmp_path,
                                                            monkeypatch):
    """A bundle whose heads were refitted on every label (training.final) has no held-out split left: --held-out
    would report an in-sample score as held out (the shipped bundle's default head scored 0.745 there against its
    honest estimate of 0.722). Refused in one line naming the mask, before the slice is featurized."""
    import brainrt.engine.loop

    path = tiny_bundle_copy / "manifest.json"
    d = json.loads(path.read_text())
    d["training"]["final"] = {"heads": "refitted on every labeled cell"}
    path.write_text(json.dumps(d))
    monkeypatch.setattr(brainrt.engine.loop, "blocks", lambda *a, **k: pytest.fail("featurized before the check"))
    r = _run(["classify", slice_tif, "-m", tiny_bundle_copy, "--truth", mask_tif, "--held-out",
              "-o", tmp_path / "h.labels.ome.tif"])
    line = _one_error(r)
    assert str(mask_tif) in line and "training.final" in line and "held out" in line
    assert not list(tmp_path.glob("h.*"))
