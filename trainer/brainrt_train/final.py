"""The heads of a final fit: chosen by the spatial cross-validation on a network's features, refitted on every
labeled cell, written into a bundle (issue 27's protocol; ``tools/cv_heads.py`` and ``train-and-export --final``).

:func:`choose_heads` runs every candidate head (:func:`head_candidates`: class-balanced and plain logistic
regression over a C grid, the context heads of :mod:`brainrt_train.ctxhead`, optionally an RBF SVM) x every
map regularizer (:data:`SIGMAS_UM` x :data:`SPACES`) under the folds of :mod:`brainrt_train.cv` and chooses
by the mean macro F1 of the regularized map, the grids widened until the choice is interior
(:func:`brainrt_train.cv.choose_interior`). :func:`final_fit` refits the chosen recipe on every labeled cell;
:func:`write_final` writes it into a bundle as its default head and smoothing with ``training.final``
(:func:`final_record`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

C_GRID = (0.01, 0.1, 1.0)
#: Plain (not class-balanced) logistic regression: one C, to show what the balance buys.
PLAIN_C = (0.1,)
SIGMAS_UM = (0.0, 20.0, 40.0, 60.0, 100.0, 150.0, 300.0)
SPACES = ("log", "prob")
CTX = ("f150", "p150", "f75+p150")
#: Who chose a recipe written by :func:`write_final` (the manifest's ``chosen_on``).
CHOSEN_BY = "tools/cv_heads.py"


def logreg(C, balanced=True):
    return ("logreg", (("C", float(C)), ("balanced", bool(balanced))))


def head_candidates(ctx=True, svm=False):
    """The candidate heads ``(kind, params)``: logistic regression (balanced over :data:`C_GRID`, plain at
    :data:`PLAIN_C`), with ``ctx`` the context heads (:data:`CTX`), with ``svm`` an RBF SVM."""
    heads = [logreg(C, True) for C in C_GRID] + [logreg(C, False) for C in PLAIN_C]
    if ctx:
        heads += [("ctx", (("C", 1.0), ("scales", s))) for s in CTX]
    if svm:
        heads += [("rbfsvm", (("C", 1.0),))]
    return heads


def choose_heads(grid, cf, heads, *, seed=0, sigmas=SIGMAS_UM, spaces=SPACES, cache=None, features_of=None, jobs=1,
                 log=None):
    """Every head x regularizer under the folds ``cf`` (``cache``: ``{Recipe: summary}`` already scored, kept up
    to date), grids widened until the choice is interior; ``features_of``: per-fold features
    (:func:`brainrt_train.cv.evaluate_heads`). Returns ``(chosen, results, record)``: ``record`` holds
    the chosen recipe, the widening, every recipe's summary, the best regularizer per head (best first) and the
    chosen head's regularizers."""
    from brainrt_train import cv

    cache = {} if cache is None else cache

    def evaluate(hs, ss):
        todo = [h for h in hs if not all(cv.Recipe(h, float(s), sp) in cache for s in ss for sp in spaces
                                         if s > 0 or sp == spaces[0])]
        got = (cv.evaluate_heads(grid, cf, todo, ss, spaces, seed=seed, features_of=features_of, log=log, jobs=jobs)[0]
               if todo else {})
        cache.update(got)
        return {r: s for r, s in cache.items() if r.head in hs and r.sigma_um in ss}

    chosen, results, widened = cv.choose_interior(evaluate, list(heads), list(sigmas), log=log)
    best = {}
    for r, s in results.items():
        if r.head not in best or cv.criterion(s) > cv.criterion(results[best[r.head]]):
            best[r.head] = r
    record = dict(chosen=chosen.label(), chosen_recipe=chosen.to_dict(), widened=widened, grid=cv.as_jsonable(results),
                  best_per_head=sorted(((r.label(), results[r]) for r in best.values()), key=lambda x: -cv.criterion(x[1])),
                  chosen_head_grid=[(r.label(), s) for r, s in sorted(results.items(), key=lambda x: (x[0].space, x[0].sigma_um))
                                    if r.head == chosen.head])
    if log:
        log(f"chosen: {chosen.label()} ({cv.criterion(results[chosen]):.3f})")
    return chosen, results, record


def final_fit(grid, recipe, seed):
    """The recipe fitted on every labeled cell of ``grid``: ``(model, probabilities)``."""
    from brainrt_train import cv

    every = grid.valid & (grid.y_cells >= 0)
    return cv.fit_head(grid, every, recipe.head, seed)


def logreg_written(kind, model, logreg):
    """What :func:`write_final` writes as the bundle's ``logreg`` head for a default head of ``kind``:
    ``(head, which)``, ``which`` "default" (the default head is a logistic regression), "stage1" (a context head
    pooling probabilities: its own first stage), "given" (``logreg``), or ``(None, None)`` (the bundle's stays)."""
    if kind == "logreg":
        return model, "default"
    if getattr(model, "stage1", None) is not None:
        return model.stage1, "stage1"
    return (logreg, "given") if logreg is not None else (None, None)


def write_final(path, model, recipe, record, logreg=None, *, chosen_by=CHOSEN_BY):  # long: both head kinds' files
    """Write ``model`` as the default head of the bundle at ``path`` (in place, re-sealed) with the recipe's
    smoothing and ``training.final`` = ``record``; ``logreg`` (the best logistic regression of the
    cross-validation, refitted the same way) replaces the ``logreg`` head when the default head does not need it
    as its first stage."""
    import dataclasses
    import shutil

    import joblib
    from brainrt.io import atomic_path
    from brainrt.model.manifest import Smoothing
    from brainrt.model.seal import seal_bundle, verify_bundle

    path = Path(path)
    kind = recipe.head[0]
    if kind not in ("logreg", "ctx"):
        raise SystemExit(f"--final writes logreg or ctx heads, not {kind}")
    if kind == "ctx":
        from brainrt_train.ctxhead import add_context_head

        add_context_head(path, path, {"C": dict(recipe.head[1])["C"], "stage1": "logreg"}, model, name="ctx",
                         default=True, chosen_on=f"spatial 5-fold cross-validation ({chosen_by})")
    m = verify_bundle(path)
    with atomic_path(path, overwrite=True, is_dir=True) as tmp:
        for rel in m.files:
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path / rel, tmp / rel)
        head, _ = logreg_written(kind, model, logreg)
        if head is not None:
            joblib.dump(head, tmp / m.heads["logreg"])
        sm = Smoothing(sigma_um=recipe.sigma_um, space=recipe.space, extra={},
                       chosen_on=f"spatial 5-fold cross-validation, mean macro F1 of the regularized map, stride 16 "
                                 f"({chosen_by})")
        training = dataclasses.replace(m.training, extra={**m.training.extra, "final": record})
        return seal_bundle(tmp, dataclasses.replace(m, smoothing=sm, training=training,
                                                    default_head="logreg" if kind == "logreg" else "ctx"))


def recipe_of(d):
    """The :class:`~brainrt_train.cv.Recipe` of a results.json ``chosen_recipe`` (:meth:`Recipe.to_dict`)."""
    from brainrt_train import cv

    d = dict(d)
    kind, sigma, space, bias = d.pop("head"), d.pop("sigma_um"), d.pop("space"), d.pop("bias", {})
    d.pop("seed", None)
    return cv.Recipe((kind, tuple(d.items())), float(sigma), space, tuple(bias.items()))


def final_record(chosen, folds_record, n_cells, summary, k, seed, command, *, chosen_by=CHOSEN_BY,
                 slice_name="slice309"):
    """``training.final`` of a bundle whose default head is ``chosen`` refitted on every labeled cell."""
    return {"heads": f"{chosen.head[0]} (the default head) refitted on every labeled stride-16 cell of {slice_name}; "
                     f"recipe chosen by spatial cross-validation ({chosen_by})",
            "recipe": {**chosen.to_dict(), "seed": seed}, "folds": folds_record, "n_cells": n_cells,
            "cv": shipped_json(summary, k), "command": command,
            "estimate": "nested spatial cross-validation (docs/accuracy/cv/shipped.json)",
            "other_heads": "linsvm, rbfsvm, cnn, gmm, area_density, pca_kmeans: the split run's; the network saw the "
                           "split run's training bands only"}


def best_logreg(grid_results):
    """The recipe of the best logistic regression among a run's candidates (``record["grid"]``)."""
    return max((v for v in grid_results.values() if v["recipe"]["head"] == "logreg"),
               key=lambda v: v["smoothed"]["macro_f1"]["mean"])["recipe"]


def shipped_json(summary, k):
    """A recipe's cross-validation figures in the layout scripts read."""
    ms = lambda d: {"mean": d["mean"], "sd": d["sd"]}  # noqa: E731
    return {"folds": k, "pixel_accuracy": ms(summary["smoothed"]["pixel_accuracy"]),
            "pixel_accuracy_raw": ms(summary["raw"]["pixel_accuracy"]),
            "macro_f1": ms(summary["smoothed"]["macro_f1"]),
            "f1": {c: ms(v) for c, v in summary["smoothed"]["f1"].items()},
            "f1_raw": {c: ms(v) for c, v in summary["raw"]["f1"].items()},
            "guards": {g: {"share": ms(v["share"]), "target": v["target"], "ok_folds": v["ok_folds"],
                           **({"annotation": v["annotation"]} if "annotation" in v else {})}
                       for g, v in summary.get("guards", {}).items()}}
