"""Heads fitted on re-imagings of the slice (issue 31): ``heads.renderings`` of a final fit's choices.

A head fitted on one slice's features leans on whatever separates its areas there, including feature directions
that a change of instrument or reconstruction moves (blur, binning, gamma). Fitting it also on the features of a
few random re-imagings of the same slice (:func:`brainrt_train.evaluate.random_rendering`) teaches it which
directions hold. These tests pin the mechanism on small synthetic grids; the figures on slice309 are in
``docs/accuracy/final-fit``.
"""

from __future__ import annotations

import numpy as np
import pytest


def test_random_renderings_are_reproducible_8_bit_and_differ_from_each_other_and_from_the_cv_changes():
    from brainrt_train.evaluate import random_rendering
    from brainrt_train.netcv import imaging_changes

    rng = np.random.default_rng(0)
    image = (np.round(rng.uniform(3, 17, (96, 128))) * 14).astype(np.uint8)  # 19 gray levels
    a = [random_rendering(image, s) for s in range(4)]
    assert all(x.dtype == np.uint8 and x.shape == image.shape for x in a)
    assert np.array_equal(a[0], random_rendering(image, 0))
    assert len({x.tobytes() for x in a}) == 4 and not any(np.array_equal(x, image) for x in a)
    assert not any(np.array_equal(x, y) for x in a for y in imaging_changes(image).values())


def test_the_slices_own_rows_weigh_as_much_as_all_its_reimagings():
    from brainrt_train.cv import training_rows

    own = np.arange(2 * 3 * 1, dtype=float).reshape(2, 3, 1)
    y = np.array([[0, 1, -1], [1, 0, 1]])
    train = y >= 0
    X, t, w = training_rows([own], y, train)
    assert np.array_equal(X[:, 0], own[train][:, 0]) and np.array_equal(t, y[train]) and (w == 1).all()
    X, t, w = training_rows([own, own + 100, own + 200, own + 300], y, train)
    assert len(X) == 4 * train.sum() and np.array_equal(t, np.tile(y[train], 4)) and len(w) == len(X)
    assert w[X[:, 0] < 100].sum() == pytest.approx(w[X[:, 0] >= 100].sum()) == pytest.approx(train.sum() / 2)


def _moving_grid(seed=0, n=40):
    """Two areas (left / right half) on an n x n grid; feature 0 separates them sharply on the slice, feature 1
    less sharply; a re-imaging moves feature 0 by an offset and leaves feature 1."""
    from brainrt_train.cv import Grid

    rng = np.random.default_rng(seed)
    y = np.zeros((n, n), int)
    y[:, n // 2:] = 1
    f = np.stack([y + rng.normal(0, 0.1, y.shape), y + rng.normal(0, 0.35, y.shape),
                  rng.normal(0, 1, y.shape), rng.normal(0, 1, y.shape)], -1).astype(np.float32)

    def moved(offset):
        g = f.copy()
        g[..., 0] += offset
        return g

    grid = Grid(f, np.ones((n, n), bool), np.repeat(np.repeat(y, 16, 0), 16, 1), ["A", "B"], 16, y_cells=y)
    return grid, moved


@pytest.mark.parametrize("head", [("logreg", (("C", 1.0), ("balanced", True))),
                                  ("ctx", (("C", 1.0), ("scales", "f75")))])
def test_a_head_fitted_on_reimagings_holds_when_a_change_moves_a_feature(head):
    """Fitted on the slice alone, the head reads the sharp feature and fails once it moves; fitted on the slice
    and four re-imagings that move it by other offsets, it reads the feature that holds."""
    import dataclasses

    from brainrt_train import cv

    grid, moved = _moving_grid()
    train = np.zeros(grid.valid.shape, bool)
    train[::2] = True  # fitted on half the rows
    test = dataclasses.replace(grid, features=moved(1.2))  # a new instrument: feature 0 moved by 1.2
    held = ~train

    def accuracy(g):
        model, _ = cv.fit_head(g, train, head)
        p = cv._grid_probabilities(test, model) if head[0] == "logreg" else _ctx_probabilities(test, model)
        return float(np.mean(p.argmax(-1)[held] == grid.y_cells[held]))

    plain = accuracy(grid)
    with_renderings = accuracy(dataclasses.replace(grid, renderings=tuple(moved(o) for o in (-2.0, -0.7, 0.6, 1.9))))
    assert plain < 0.7 and with_renderings > 0.85, (plain, with_renderings)


def _ctx_probabilities(grid, head):
    from brainrt_train.ctxhead import head_probabilities

    return head_probabilities(head, grid.features, grid.valid, pixel_size_um=grid.pixel_size_um, stride=grid.stride)


def test_the_heads_cross_validation_fits_each_folds_reimagings_too(monkeypatch):
    """``features_of`` may give ``(features, renderings)``: each fold's head is fitted on that fold's own."""
    from brainrt_train import cv

    grid, moved = _moving_grid()
    seen = []
    real = cv.HEAD_KINDS["logreg"]
    monkeypatch.setitem(cv.HEAD_KINDS, "logreg", lambda g, *a: seen.append(len(g.renderings)) or real(g, *a))
    g = cv.with_features(grid, (grid.features, (moved(1.0), moved(-1.0))))
    assert len(g.renderings) == 2 and g.features is grid.features
    assert cv.with_features(g, moved(0.5)).renderings == g.renderings  # an array alone keeps them
    model, _ = cv.fit_head(g, np.ones(grid.valid.shape, bool), ("logreg", (("C", 1.0),)))
    assert seen == [2] and model is not None


def test_fold_features_reads_the_reimagings_from_its_cache(tmp_path):
    """A cache holding a fold's features and its re-imagings' serves them without training (no setup needed)."""
    from brainrt_train.netcv import fold_features

    for name, v in (("fold1.npy", 0), ("fold1.r0.npy", 1), ("fold1.r1.npy", 2)):
        np.save(tmp_path / name, np.full((2, 2, 3), v, np.float32))
    feats, rend = fold_features(None, {}, {}, cache=tmp_path, renderings=2)(1)
    assert feats[0, 0, 0] == 0 and [r[0, 0, 0] for r in rend] == [1, 2]
    assert fold_features(None, {}, {}, cache=tmp_path)(1)[0, 0, 0] == 0  # without: the features alone


@pytest.mark.parametrize("bad", ["4", -1, True, 17])
def test_a_bad_renderings_count_is_one_line_naming_the_field(bad):
    from brainrt.errors import BrainrtError
    from brainrt_train.final_bundle import Choices

    d = {"network": "tiles", "recipe": {}, "budget": {"epochs": 1, "tile_batches_per_epoch": 1, "tile_batch": 1,
                                                      "tiles": 4, "threads": 1}, "seed": 0}
    assert Choices.from_dict({**d, "heads": {"chosen": _RECIPE, "renderings": 4}}).renderings == 4
    with pytest.raises(BrainrtError, match="c.json: heads: renderings must be an integer"):
        Choices.from_dict({**d, "heads": {"chosen": _RECIPE, "renderings": bad}}, source="c.json")


_RECIPE = {"head": "logreg", "C": 0.1, "balanced": True, "sigma_um": 100.0, "space": "log", "bias": {}}


def test_the_chosen_heads_keep_the_reimagings():
    from brainrt_train.final import recipe_of
    from brainrt_train.final_bundle import Choices, chosen_heads

    d = {"network": "tiles", "recipe": {}, "budget": {"epochs": 1, "tile_batches_per_epoch": 1, "tile_batch": 1,
                                                      "tiles": 4, "threads": 1}, "seed": 0}
    c = Choices.from_dict({**d, "heads": {"candidates": [["logreg", {"C": 0.1}]], "sigmas_um": [0.0],
                                          "renderings": 3}})
    assert chosen_heads(recipe_of(_RECIPE), c) == {"chosen": recipe_of(_RECIPE).to_dict(), "renderings": 3}
    assert "renderings" not in chosen_heads(recipe_of(_RECIPE), Choices.from_dict(d))


def test_the_renderings_report_gives_the_mean_over_the_images_and_the_largest_loss():
    """The two figures a choice between networks or re-imaging counts reads off a row: the macro F1 averaged over
    the clean slice and every imaging change, and the largest loss of pixel accuracy against the clean slice."""
    from tools.head_renderings_cv import report

    def image(acc, f1):
        return {"acc": acc, "macro_f1": f1, "worst": ["HypoTh", 0.4], "f1": {"Ctx": 0.9}}

    row = {"clean": {**image(0.92, 0.86), "guards_ok": 3.4}, "blur1": image(0.87, 0.80), "gain": image(0.90, 0.83)}
    text = report({"command": "c", "network": "mixup+swa", "summary": {"chosen x": {"4": row}}})
    assert "| chosen x | 4 | 0.920 (HypoTh 0.40) | 0.870 (HypoTh 0.40) | 0.900 (HypoTh 0.40) | 0.860 | 0.830 | 0.050 | 3.4 |" in text
