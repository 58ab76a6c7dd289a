"""Inputs unlike the training tissue are flagged: scores logged and recorded, a warning naming the file for
inverted contrast and noise, none for the training kind of slice or its crops (issue 28, item 4)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

import brainrt
from brainrt.familiar import familiarity
from conftest import run_cli, write_tiff


def _cases(image):
    rng = np.random.default_rng(0)
    return {"normal": image, "crop": image[100:300, 200:500], "inverted": 255 - image,
            "noise": rng.integers(0, 256, image.shape, dtype=np.uint8)}


@pytest.mark.parametrize("case", ["normal", "crop", "inverted", "noise"])
def test_unlike_inputs_warn_and_like_ones_do_not(tiny_bundle, synthetic_slice, case, caplog):
    image = np.ascontiguousarray(_cases(synthetic_slice.image)[case])
    plan = brainrt.make_plan(image, tiny_bundle, stride=16, tissue="all" if case == "noise" else None)
    with caplog.at_level(logging.INFO, logger="brainrt"):
        scores = familiarity(plan, tiny_bundle)
    assert scores["unlike"] == (case in ("inverted", "noise")), scores
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert bool(warned) == scores["unlike"]
    assert "input check" in caplog.text and scores["feature_deficit"] is not None


def test_cli_names_the_file_and_records_the_scores(tiny_bundle_path, synthetic_slice, tmp_path, caplog):
    src = write_tiff(tmp_path / "inverted.tif", 255 - synthetic_slice.image)
    out = tmp_path / "inverted.labels.ome.tif"
    with caplog.at_level(logging.INFO, logger="brainrt"):
        res = run_cli(["classify", src, "-m", tiny_bundle_path, "-o", out])
    assert res.exit_code == 0, (res.output, res.exception)
    warning = [r for r in caplog.records if "unlike the training tissue" in r.getMessage()]
    assert len(warning) == 1 and "inverted.tif" in warning[0].getMessage() and warning[0].levelno == logging.WARNING
    rec = json.loads((tmp_path / "inverted.labels.run.json").read_text())
    assert rec["input_check"]["unlike"] is True and rec["input_check"]["intensity_outside"] > 0.25
    again = run_cli(["classify", src, "-m", tiny_bundle_path, "-o", out])  # the record's scores are not arguments
    assert again.exit_code == 0 and "complete" in again.output + again.stderr
