"""Heads on features: classify, cluster, subdivide."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

import brainrt
from brainrt.errors import BrainrtError
from conftest import run_cli, write_tiff


def _border_distance_ok(sub, region, r):
    """Every sub-divided cell lies at least ``r`` cells inside ``region`` (image edges aside)."""
    from scipy.ndimage import binary_erosion

    inner = binary_erosion(region, np.ones((2 * r + 1, 2 * r + 1), bool), border_value=1)
    return bool(np.all(inner[sub >= 0]))


def test_subdivide_interior_excludes_border_patches(tiny_bundle, synthetic_slice):
    grid = brainrt.featurize(synthetic_slice.image, tiny_bundle, stride=8)
    region = brainrt.classify(grid, tiny_bundle, smooth=0).labels == 0
    r = -(-(grid.patch_size // 2) // grid.stride)
    whole = brainrt.subdivide(grid, region=region, k=3)
    inner = brainrt.subdivide(grid, region=region, k=3, interior=True)
    assert not _border_distance_ok(whole, region, r)
    assert _border_distance_ok(inner, region, r) and (inner >= 0).sum() >= 3


def test_cli_subdivide_interior_by_default(tmp_path, tiny_bundle_path, synthetic_slice):
    src = write_tiff(tmp_path / "slice.tif", synthetic_slice.image)
    names = brainrt.Bundle.load(tiny_bundle_path).class_names
    counts = {}
    for flag in ("--interior", "--whole"):
        out = tmp_path / f"sub{flag}.ome.tif"
        r = run_cli(["subdivide", src, "-m", tiny_bundle_path, "--area", names[0], "-k", "3", "--stride", "8",
                  flag, "-o", out])
        assert r.exit_code == 0, r.output
        counts[flag] = int((tifffile.imread(out) != 255).sum())
    assert 0 < counts["--interior"] < counts["--whole"]


def test_cli_subdivide_roi_overlay_is_titled_by_the_roi_file(tmp_path, tiny_bundle_path, synthetic_slice, monkeypatch):
    """``--roi MASK``: the overlay's title names the mask file given, not the mask array read from it."""
    import brainrt.outputs.writers as writers

    image = synthetic_slice.image[:256, :384]
    src = write_tiff(tmp_path / "slice.tif", image)
    mask = np.zeros(image.shape, np.uint8)
    mask[32:224, 48:336] = 1
    roi = write_tiff(tmp_path / "roi.tif", mask)
    titles = []

    def overlay_png(*a, title="", **k):
        titles.append(title)
        return real(*a, title=title, **k)

    real = writers.overlay_png
    monkeypatch.setattr(writers, "overlay_png", overlay_png)
    r = run_cli(["subdivide", src, "-m", tiny_bundle_path, "--roi", roi, "-k", "3", "--stride", "16",
                 "-o", tmp_path / "sub.ome.tif"])
    assert r.exit_code == 0, r.output
    assert titles == [f"{roi}: k=3"]


@pytest.mark.parametrize("head", [None, "logreg", "rbfsvm", "cnn", "linsvm"])
def test_classify(grid16, tiny_bundle, head):
    res = brainrt.classify(grid16, tiny_bundle, head=head)
    K = len(tiny_bundle.class_names)
    assert res.labels.shape == grid16.shape and res.labels.dtype == np.int16
    assert (res.labels[~grid16.valid] == -1).all()
    assert ((res.labels[grid16.valid] >= 0) & (res.labels[grid16.valid] < K)).all()
    assert res.names == tiny_bundle.class_names and res.codes == [1, 2, 3, 4]
    if head == "linsvm":
        assert res.probabilities is None
    else:
        p = res.probabilities
        assert p.shape == (*grid16.shape, K) and p.dtype == np.float32
        assert ((p >= 0) & (p <= 1)).all()
        np.testing.assert_allclose(p[grid16.valid].sum(-1), 1.0, atol=1e-5)
        assert not p[~grid16.valid].any()
        np.testing.assert_array_equal(p[grid16.valid].argmax(-1), res.labels[grid16.valid])


@pytest.mark.parametrize(("head", "match"), [("gmm", "not a classifier"), ("nosuch", "no head 'nosuch'")])
def test_classify_bad_head(grid16, tiny_bundle, head, match):
    with pytest.raises(BrainrtError, match=match):
        brainrt.classify(grid16, tiny_bundle, head=head)


def test_classify_refuses_features_of_another_model(grid16, tiny_bundle):
    import dataclasses

    other = dataclasses.replace(grid16, model_id="0123456789ab")
    with pytest.raises(BrainrtError, match="0123456789ab"):
        brainrt.classify(other, tiny_bundle)


def test_cluster(grid16, tiny_bundle):
    clusters, loglik = brainrt.cluster(grid16, tiny_bundle)
    K = len(tiny_bundle.class_names)
    n_comp = tiny_bundle.head("gmm")[-1].n_components
    assert clusters.shape == grid16.shape and clusters.dtype == np.int16
    assert (clusters[~grid16.valid] == -1).all()
    assert ((clusters[grid16.valid] >= 0) & (clusters[grid16.valid] < n_comp)).all()
    assert loglik.shape == (*grid16.shape, K) and loglik.dtype == np.float32
    assert np.isnan(loglik[~grid16.valid]).all()
    trained = tiny_bundle.head("area_density").classes_  # areas with training patches
    assert np.isfinite(loglik[grid16.valid][:, trained]).all()
    untrained = np.setdiff1d(np.arange(K), trained)  # classes without training patches, if any
    assert np.isnan(loglik[..., untrained]).all()


def test_heads_cover_classes_without_training_patches(grid16, tiny_bundle):
    """A class with no training patch (too narrow for strict patches) has no column in a
    scikit-learn head; classify gives it probability 0 and cluster a NaN log-likelihood."""
    import dataclasses

    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from brainrt.densities import AreaDensity

    f = grid16.features[grid16.valid]
    y = np.where(np.arange(len(f)) % 2 == 0, 0, 2)  # only classes 0 and 2 of 4
    heads = {**tiny_bundle.heads, "logreg": make_pipeline(StandardScaler(), LogisticRegression()).fit(f, y),
             "area_density": AreaDensity().fit(f, y)}
    partial = dataclasses.replace(tiny_bundle, heads=heads)
    res = brainrt.classify(grid16, partial)
    assert res.probabilities.shape == (*grid16.shape, 4)
    assert not res.probabilities[..., [1, 3]].any()
    np.testing.assert_allclose(res.probabilities[grid16.valid].sum(-1), 1.0, atol=1e-5)
    assert set(np.unique(res.labels[grid16.valid]).tolist()) <= {0, 2}
    _, loglik = brainrt.cluster(grid16, partial)
    assert np.isnan(loglik[..., [1, 3]]).all()
    assert np.isfinite(loglik[grid16.valid][:, [0, 2]]).all()


def test_subdivide(grid16, tiny_bundle):
    labels = brainrt.classify(grid16, tiny_bundle).labels
    area = np.bincount(labels[labels >= 0]).argmax()
    region = labels == area
    sub = brainrt.subdivide(grid16, region=region, k=3)
    assert sub.shape == grid16.shape and sub.dtype == np.int16
    assert (sub[~region] == -1).all()
    assert sorted(np.unique(sub[region]).tolist()) == [0, 1, 2]
    np.testing.assert_array_equal(brainrt.subdivide(grid16, region=region, k=3), sub)  # seeded, stable
    with pytest.raises(BrainrtError, match="fewer than k=3"):
        brainrt.subdivide(grid16, region=np.zeros(grid16.shape, bool), k=3)


def test_logistic_heads_run_as_one_float32_affine_map(tiny_bundle, synthetic_slice):
    """The logreg head (StandardScaler + multinomial LogisticRegression) folded into float32 weights gives
    scikit-learn's probabilities; other heads keep their own predict_proba."""
    from brainrt.heads import float32_proba

    grid = brainrt.featurize(synthetic_slice.image, tiny_bundle, stride=16)
    x = grid.features[grid.valid]
    model = tiny_bundle.head("logreg")
    fast = float32_proba(model)
    want = model.predict_proba(x)
    got = fast(x)
    assert got.dtype == np.float32 and got.shape == want.shape == (len(x), len(model.classes_))
    assert np.abs(got - want).max() <= 1e-5
    assert (got.argmax(1) == want.argmax(1)).all()
    assert float32_proba(tiny_bundle.head("rbfsvm")) is None
