"""Spatial cross-validation (brainrt_train.cv): folds, gaps, exact scoring, guards, the choice rules, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from brainrt_train import cv

NAMES = ["Ctx", "Str", "VP", "ZI", "HypoTh", "WM"]


def slab(shape=(700, 2400), seed=0):
    """A slab like slice309's: areas along x inside a labeled rectangle, a thin WM band and a small corner area."""
    H, W = shape
    lab = np.full(shape, -1, np.int64)
    y0, y1, x0, x1 = 100, 620, 150, 2300
    edges = np.linspace(x0, x1, 5).astype(int)
    for c, (a, b) in enumerate(zip(edges[:-1], edges[1:])):
        lab[y0:y1, a:b] = c
    lab[y0:y1, edges[2] - 30 : edges[2] + 30] = 5  # a thin band (WM)
    lab[y0:380, x0:x0 + 260] = 4  # a small corner area (HypoTh)
    return lab


def features_of(lab, stride=16, noise=1.0, seed=0):
    """A grid whose features are the class prototype of each cell's centre plus noise (no network)."""
    rng = np.random.default_rng(seed)
    R, C = lab.shape[0] // stride, lab.shape[1] // stride
    ys, xs = np.arange(R) * stride + stride // 2, np.arange(C) * stride + stride // 2
    y = lab[np.ix_(ys, xs)]
    proto = rng.normal(size=(len(NAMES) + 1, 8)) * 2
    f = proto[np.where(y >= 0, y, len(NAMES))] + rng.normal(size=(R, C, 8)) * noise
    valid = np.ones((R, C), bool)
    valid[:, :4] = False  # background
    grid = cv.Grid(f.astype(np.float32), valid, lab, list(NAMES), stride)
    grid.y_cells = np.where(valid, y, -1)
    return grid


@pytest.fixture(scope="module")
def setup():
    lab = slab()
    folds = cv.spatial_folds(lab, k=5, n_classes=len(NAMES))
    grid = features_of(lab)
    return lab, folds, grid, cv.cell_folds(folds, lab, 16, grid.valid.shape, len(NAMES))


def test_no_training_pixel_within_the_gap_of_a_held_out_pixel(setup):
    from scipy.ndimage import distance_transform_cdt

    lab, folds, _, cf = setup
    for f in range(folds.k):
        held, train = folds.held_out(f), folds.train(f)
        assert held.any() and train.any() and not (held & train).any()
        d = distance_transform_cdt(~held, metric="chessboard")  # distance of every pixel to the nearest held-out pixel
        assert d[train].min() > folds.gap_px
        # cells: the centre of every training cell is a training pixel
        r, c = np.nonzero(cf.train[f])
        assert train[r * 16 + 8, c * 16 + 8].all()
        # and the gap really removes some labeled pixels of other folds
        assert ((lab >= 0) & ~held & ~train).any()


def test_every_class_is_held_out_in_at_least_three_folds_and_folds_cover_the_labels(setup):
    lab, folds, _, _ = setup
    counts = cv.held_out_counts(folds, lab, len(NAMES))
    assert (cv.present(counts).sum(0) >= 3).all(), counts
    assert counts.sum() == (lab >= 0).sum()  # each labeled pixel in exactly one fold
    # no two blocks of one fold touch (the Latin layout)
    fm = folds.fold_map
    same_right = (fm[:, 1:] == fm[:, :-1]) & (fm[:, 1:] >= 0)
    b = (np.arange(fm.shape[1] - 1) - folds.origin[1] + 1) % folds.col_px == 0  # column boundaries
    assert not same_right[:, b].any()


def test_a_class_that_cannot_be_held_out_three_times_is_refused():
    lab = slab()
    lab[lab == 4] = 0
    lab[100:150, 150:200] = 4  # a tiny area: one band, one fold
    with pytest.raises(ValueError, match=r"held out in only"):
        cv.spatial_folds(lab, k=5, n_classes=len(NAMES))


def test_cell_scoring_equals_pixel_scoring_of_the_upsampled_map(setup):
    from brainrt.geometry import upsample
    from brainrt_train.evaluate import pixel_scores

    lab, folds, grid, cf = setup
    rng = np.random.default_rng(3)
    pred = np.where(grid.valid, rng.integers(0, len(NAMES), grid.valid.shape), -1)
    pred[grid.y_cells >= 0] = np.where(rng.random((grid.y_cells >= 0).sum()) < 0.7, grid.y_cells[grid.y_cells >= 0],
                                       pred[grid.y_cells >= 0])
    full = upsample(pred, 16, lab.shape)
    full = np.pad(full, ((0, lab.shape[0] - full.shape[0]), (0, lab.shape[1] - full.shape[1])), constant_values=-1)
    for f in range(folds.k):
        got = cv.scores_of(*cv.confusion(pred, cf.counts[f]), NAMES)
        want = pixel_scores(full, lab, folds.held_out(f), NAMES)
        assert got["pixel_accuracy"] == pytest.approx(want["pixel_accuracy"], abs=1e-12)
        for n in NAMES:
            if want["per_class"][n]["support"]:
                assert got["f1"][n] == pytest.approx(want["per_class"][n]["f1"], abs=1e-12)


def test_guards_are_the_pixel_shares_of_the_upsampled_map(setup):
    from brainrt.geometry import upsample

    lab, _, grid, _ = setup
    rng = np.random.default_rng(4)
    pred = np.where(grid.valid, rng.integers(0, len(NAMES), grid.valid.shape), -1)
    g = cv.guards(pred, 16, NAMES, lab.shape, lab)
    full = upsample(pred, 16, lab.shape)
    part = full[:, 1300:2400]  # hypoth_in_middle: x in [1300, 4450) clipped to the image
    want = (part == NAMES.index("HypoTh")).sum() / (part >= 0).sum()
    assert g["hypoth_in_middle"]["share"] == pytest.approx(want, abs=1e-12)
    assert g["hypoth_in_middle"]["ok"] == (want <= 0.02)


def test_the_runner_is_deterministic_for_a_seed_and_finds_the_areas(setup):
    _, _, grid, cf = setup
    heads = [("logreg", (("C", 1.0), ("balanced", True)))]
    a, per_a = cv.evaluate_heads(grid, cf, heads, (0.0, 40.0), seed=0)
    b, per_b = cv.evaluate_heads(grid, cf, heads, (0.0, 40.0), seed=0)
    assert repr(per_a) == repr(per_b)  # NaN (a class a fold does not hold out) compares unequal to itself
    best = cv.choose(a)
    assert a[best]["smoothed"]["pixel_accuracy"]["mean"] > 0.9  # separable prototypes: the folds can be learned
    assert len(a[best]["smoothed"]["pixel_accuracy"]["folds"]) == 5


def test_each_fold_is_scored_on_its_own_features(setup):
    """``features_of(f)`` replaces the grid's features in fold ``f`` only: the grid's own features per fold give the
    same scores; noise in one fold's features changes that fold's score and no other."""
    _, _, grid, cf = setup
    heads = [("logreg", (("C", 1.0), ("balanced", True)))]
    base, per = cv.evaluate_heads(grid, cf, heads, (0.0, 40.0), seed=0)
    same, per_same = cv.evaluate_heads(grid, cf, heads, (0.0, 40.0), seed=0, features_of=lambda f: grid.features)
    assert repr(per_same) == repr(per)
    noisy = features_of(grid.labels, noise=6.0, seed=1).features
    _, per_noisy = cv.evaluate_heads(grid, cf, heads, (0.0,), seed=0,
                                     features_of=lambda f: noisy if f == 2 else grid.features)
    acc = lambda p: [x["raw"]["pixel_accuracy"] for x in next(iter(p.values()))]  # noqa: E731
    a, b = acc(per), acc(per_noisy)
    assert b[2] < a[2] - 0.05
    assert [b[f] for f in (0, 1, 3, 4)] == [a[f] for f in (0, 1, 3, 4)]


def test_choose_interior_widens_a_grid_whose_choice_is_at_its_edge():
    seen = []

    def evaluate(heads, sigmas):
        out = {}
        for h in heads:
            C = dict(h[1])["C"]
            for s in sigmas:
                seen.append((C, s))
                score = -abs(np.log10(C) - np.log10(0.001)) - abs(s - 40) / 100  # best at C = 0.001, sigma 40
                summ = {"smoothed": {"macro_f1": {"mean": score}}}
                out[cv.Recipe(h, float(s))] = summ
        return out

    heads = [("logreg", (("C", c), ("balanced", True))) for c in (0.1, 1.0, 10.0)]
    chosen, results, widened = cv.choose_interior(evaluate, heads, [0.0, 20.0, 40.0, 80.0])
    assert dict(chosen.head[1])["C"] == pytest.approx(0.001) and chosen.sigma_um == 40.0
    assert any(w.startswith("C low") for w in widened)
    assert cv.at_edge(results, chosen, "C") is None  # interior after widening


def _fold(f1):
    return {"smoothed": {"f1": dict(f1), "macro_f1": float(np.mean(list(f1.values())))}}


def test_the_bias_rule():
    base = [_fold({"A": 0.5, "B": 0.8}) for _ in range(5)]
    up4 = [_fold({"A": 0.6 if i < 4 else 0.4, "B": 0.79}) for i in range(5)]
    assert cv.bias_allowed(base, up4, "A", 5)[0]
    up3 = [_fold({"A": 0.6 if i < 3 else 0.4, "B": 0.8}) for i in range(5)]
    assert not cv.bias_allowed(base, up3, "A", 5)[0]
    hurts = [_fold({"A": 0.7, "B": 0.75}) for _ in range(5)]
    ok, why = cv.bias_allowed(base, hurts, "A", 5)
    assert not ok and "B" in why


def test_a_head_with_one_value_of_c_is_tried_on_both_sides():
    tried = set()

    def evaluate(heads, sigmas):
        out = {}
        for h in heads:
            C = dict(h[1])["C"]
            tried.add((h[0], C))
            for s in sigmas:
                score = (1.0 if h[0] == "ctx" else 0.5) - abs(np.log10(C) + 1) / 10 - abs(s - 40) / 100
                out[cv.Recipe(h, float(s))] = {"smoothed": {"macro_f1": {"mean": score}}}
        return out

    heads = [("logreg", (("C", c), ("balanced", True))) for c in (0.01, 0.1, 1.0)] + [("ctx", (("C", 0.1), ("scales", "f150")))]
    chosen, _, widened = cv.choose_interior(evaluate, heads, [0.0, 40.0, 80.0])
    assert {("ctx", 0.01), ("ctx", 1.0)} <= tried and chosen.head == heads[-1], widened
