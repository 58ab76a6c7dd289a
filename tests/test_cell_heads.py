"""tools/cell_heads.py: small-class biases served by the runtime, and the final fit written into a bundle."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from conftest import ROOT
from tools.cell_heads import fit_logreg, with_bias, write_final

DEMO = ROOT / "models" / "synthetic-demo"


def _data(n_classes=4, n=400, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    X = (rng.standard_normal((n, 64)) + y[:, None] * 0.3).astype(np.float32)
    return X, y


def test_bias_raises_one_class_log_probability_through_the_runtime_path():
    from brainrt.heads import float32_proba

    X, y = _data()
    names = ["a", "b", "c", "d"]
    model = fit_logreg(X, y, C=1.0, balanced=True)
    biased = with_bias(model, names, {"c": 2.0, "d": 0.5})
    p0, p1 = float32_proba(model)(X), float32_proba(biased)(X)  # the runtime's float32 logistic regression
    shift = np.log(p1) - np.log(p0)
    shift -= shift[:, :1]  # relative to class a (the softmax's normalization cancels)
    np.testing.assert_allclose(shift, np.broadcast_to([0.0, 0.0, 2.0, 0.5], shift.shape), atol=1e-4)
    np.testing.assert_allclose(biased.predict_proba(X), p1, atol=1e-5)
    assert model.steps[-1][1].intercept_[2] == pytest.approx(biased.steps[-1][1].intercept_[2] - 2.0)


def test_final_fit_is_written_into_the_bundle_and_verified(tmp_path):
    import brainrt

    bundle_dir = tmp_path / "bundle"
    shutil.copytree(DEMO, bundle_dir)
    before = brainrt.Bundle.load(bundle_dir)
    graphs = {rel: (bundle_dir / rel).read_bytes() for rel in before.manifest.files if not rel.startswith("heads/")}
    X, y = _data()
    model = with_bias(fit_logreg(X, y, C=0.1, balanced=True), list(before.class_names), {"fibrous": 1.0})
    recipe = {"C": 0.1, "balanced": True, "bias": {"fibrous": 1.0}, "sigma_um": 150.0, "space": "prob", "seed": 0}
    table = [{"sigma_um": 150.0, "space": "prob", "macro_f1": 0.5}]
    write_final(before, model, recipe, {"heads": "every label", "smoothing_table": table})

    after = brainrt.Bundle.load(bundle_dir)  # verifies every file's hash
    m = after.manifest
    assert m.training.extra["final"]["heads"] == "every label"
    assert m.smoothing.sigma_um == 150.0 and m.smoothing.space == "prob" and m.smoothing.extra["table"] == table
    assert m.metrics == before.manifest.metrics and after.model_id == before.model_id
    np.testing.assert_allclose(after.head("logreg").predict_proba(X), model.predict_proba(X))
    assert {rel: (bundle_dir / rel).read_bytes() for rel in graphs} == graphs  # graphs and other files as they were
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]  # no temporary folder left
