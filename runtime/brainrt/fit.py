"""Heads fitted on a bundle's frozen features from a few painted strokes (a lab's own areas, no retraining).

The strokes (a sparse label image of a slice in the codes of a class map: the parent bundle's, or a
JSON's with new areas, see :mod:`brainrt.bundle.derive`) label grid cells as :mod:`brainrt.bundle.strokes` says; only those cells are
featurized (the plan's valid cells become the stroke cells, so the dense path runs only
the tiles that hold strokes), or they are read from features computed once (the napari
widget). Several images, or z-slices of a stack, train one head.

The classifier is a class-balanced logistic regression on standardized features (the
method's simple classifier); its regularization ``C`` is chosen by cross-validation
grouped by stroke (the cells of one stroke are neighbours, not independent samples, so
they never sit on both sides of a fold). Per-area Gaussian densities give the outlier
maps of ``brainrt cluster``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass

import numpy as np

from .api import featurize_plan, make_plan
from .bundle.derive import ClassTable, read_pair, stroke_record
from .bundle.strokes import Samples, cell_labels, samples_of_grid
from .densities import AreaDensity
from .errors import BrainrtError, file_error
from .heads import apply_rows, per_class
from .maps.smooth import smooth_probabilities

log = logging.getLogger("brainrt")

#: Regularization strengths tried by the grouped cross-validation (inverse, as scikit-learn's ``C``).
C_GRID = (0.01, 0.1, 1.0, 10.0)
#: ``C`` when there are too few strokes per class to cross-validate.
DEFAULT_C = 1.0
MAX_FOLDS = 5
#: Cells a class needs: its density (a Gaussian on standardized features) is not defined by one cell.
MIN_CELLS = 2
#: Covariance regularization of the per-area densities (standardized features; few cells per area).
DENSITY_REG = 0.1

__all__ = ["Fitted", "fit_heads", "fit_samples", "fitted_of", "predict_grid", "stroke_samples", "uncertainty"]


def stroke_samples(image, strokes, bundle, table, *, stride=16, first_id=0, source="strokes", **plan_kw):
    """Featurize only the stroke cells of one slice and return their :class:`Samples`.

    ``plan_kw`` go to :func:`brainrt.make_plan` (tissue, threshold, pixel_size_um, standardize, ...).
    """
    strokes = np.asarray(strokes)
    plan = make_plan(image, bundle, stride=stride, owner="fit_heads", **plan_kw)
    if strokes.shape != plan.image_shape:
        raise file_error(source, f"stroke labels of shape {strokes.shape} differ from the image's "
                                 f"{plan.image_shape}")
    cells = cell_labels(strokes, table, stride, plan.shape, source=source, first_id=first_id)
    if not cells.mask.any():
        raise file_error(source, "holds no stroke (every pixel is 0, unlabeled)")
    sub = dataclasses.replace(plan, valid=plan.valid & cells.mask)
    if not sub.valid.any():
        return samples_of_grid(np.zeros(plan.shape + (bundle.n_features,), np.float32), sub.valid, cells,
                               source=source)
    grid = featurize_plan(sub, bundle)
    return samples_of_grid(grid.features, plan.valid, cells, source=source)


def _check_classes(samples, names):
    """At least two classes with strokes; name the classes without any."""
    present = np.unique(samples.y)
    if present.size < 2:
        only = names[int(present[0])] if present.size else "none"
        raise BrainrtError(f"the strokes hold only one class ({only}); paint strokes of at least two areas")
    cells = np.bincount(samples.y, minlength=len(names))
    lone = [names[i] for i in present if cells[i] < MIN_CELLS]
    if lone:
        raise BrainrtError(f"the strokes of {', '.join(lone)} cover only 1 cell of the grid; each area's density needs "
                           f"at least {MIN_CELLS} cells: paint strokes across 2 or more cells (longer than the "
                           "stride) or click twice")
    missing = [n for i, n in enumerate(names) if i not in present]
    if missing:
        log.warning("no strokes of %s: the new heads never predict %s", ", ".join(missing),
                    "it" if len(missing) == 1 else "them")


def _logreg(C, seed):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=C, class_weight="balanced", max_iter=3000,
                                                              random_state=seed))


def choose_c(X, y, groups, *, seed=0, grid=C_GRID):
    """(C, cross-validation report): balanced accuracy and macro F1 of out-of-fold predictions, folds grouped
    by stroke and stratified by class. Fewer than two strokes of some class: no CV, :data:`DEFAULT_C`."""
    from sklearn.metrics import balanced_accuracy_score, f1_score
    from sklearn.model_selection import StratifiedGroupKFold

    per_class = min(np.unique(groups[y == k]).size for k in np.unique(y))
    if per_class < 2:
        return DEFAULT_C, {"folds": 0, "C": DEFAULT_C, "note": "fewer than 2 strokes of some class: no "
                                                               "cross-validation, C left at its default"}
    folds = min(MAX_FOLDS, per_class)
    splits = list(StratifiedGroupKFold(folds, shuffle=True, random_state=seed).split(X, y, groups))
    scores = {}
    for C in grid:
        pred = np.empty_like(y)
        for tr, te in splits:
            pred[te] = _logreg(C, seed).fit(X[tr], y[tr]).predict(X[te])
        scores[C] = (balanced_accuracy_score(y, pred), f1_score(y, pred, average="macro"))
    best = max(grid, key=lambda c: (round(scores[c][0], 6), -c))  # ties: the stronger regularization
    return best, {"folds": folds, "grouped_by": "stroke", "C": best,
                  "balanced_accuracy": {str(c): round(s[0], 4) for c, s in scores.items()},
                  "macro_f1": {str(c): round(s[1], 4) for c, s in scores.items()}}


def fit_samples(samples, names, *, seed=0, cv=True):
    """Heads fitted on stroke samples: ``{"logreg", "area_density"}`` and the cross-validation report.

    BLAS runs on one thread here: on these small matrices (hundreds of cells x 64 features)
    its threads only wait for each other (12x slower on 2 busy cores)."""
    from threadpoolctl import threadpool_limits

    _check_classes(samples, names)
    with threadpool_limits(1):
        return _fit(samples, seed, cv)


def _fit(samples, seed, cv):
    t = time.perf_counter()
    C, report = choose_c(samples.X, samples.y, samples.groups, seed=seed) if cv else (DEFAULT_C, {"folds": 0})
    t_cv = time.perf_counter() - t
    heads = {"logreg": _logreg(C, seed).fit(samples.X, samples.y),
             "area_density": AreaDensity(n_components=1, reg_covar=DENSITY_REG, random_state=seed)
             .fit(samples.X, samples.y)}
    report.update(cv_seconds=round(t_cv, 3), fit_seconds=round(time.perf_counter() - t - t_cv, 3))
    return heads, report


@dataclass
class Fitted:
    """What :func:`fit_heads` made: the heads, the class table, the samples and the record of the fit."""

    heads: dict
    table: object
    samples: Samples
    record: dict

    def summary(self):
        """One line on the fit: stroke cells per class, the grouped CV score, the time taken."""
        rec = self.record
        counts = ", ".join(f"{n} {c['strokes']}/{c['cells']}" for n, c in rec["counts"].items())
        cv = rec["cv"]
        score = (f"grouped CV ({cv['folds']} folds by stroke) balanced accuracy "
                 f"{cv['balanced_accuracy'][str(cv['C'])]:.3f} at C={cv['C']}" if cv["folds"]
                 else "no CV (fewer than 2 strokes of some class)")
        return (f"{len(self.samples.y)} stroke cells (strokes/cells: {counts}); {score}; features "
                f"{rec['seconds']['features']:.1f} s, fit {rec['seconds']['fit'] + rec['seconds']['cv']:.1f} s")


def _pairs(images, strokes):
    images = list(images) if isinstance(images, (list, tuple)) else [images]
    strokes = list(strokes) if isinstance(strokes, (list, tuple)) else [strokes]
    if len(images) != len(strokes):
        raise BrainrtError(f"{len(images)} image(s) but {len(strokes)} stroke image(s); give one stroke image "
                           "per image, in the same order")
    return list(zip(images, strokes))


def fitted_of(samples, table, records, *, stride=16, seed=0, cv=True, feature_seconds=0.0):
    """Fit the heads on ``samples`` and return the :class:`Fitted` with its record (``records``: one
    :func:`brainrt.bundle.derive.stroke_record` per image / strokes pair)."""
    heads, report = fit_samples(samples, table.names, seed=seed, cv=cv)
    record = {"stride": stride, "seed": seed, "strokes": records, "counts": samples.counts(table.names),
              "cells_off_tissue": samples.dropped, "cv": report,
              "seconds": {"features": round(feature_seconds, 3), "fit": report["fit_seconds"],
                          "cv": report["cv_seconds"]}}
    return Fitted(heads, table, samples, record)


def fit_heads(images, strokes, bundle, *, class_map=None, stride=16, seed=0, cv=True, **plan_kw):
    """Fit new heads on ``bundle``'s frozen features from painted strokes.

    Parameters
    ----------
    images, strokes : one or a list of arrays (H, W) / (Z, H, W) or TIFF paths, paired in order
        A stack's slices that hold strokes are used (a stroke stack matches its image stack).
    bundle : Bundle
        The parent: its graphs make the features, its class map is the default.
    class_map : None, dict or JSON path
        Names, codes and colours of the classes (see :class:`brainrt.bundle.derive.ClassTable`).
    stride : int
        Grid step of the stroke cells (the features of one cell: the patch around its centre).
    cv : bool
        Choose the regularization by cross-validation grouped by stroke (else ``C`` = 1).
    plan_kw
        Options of :func:`brainrt.make_plan` (tissue, threshold, pixel_size_um, standardize, ...).

    Returns a :class:`Fitted`; :func:`brainrt.save_bundle` writes it as a bundle.
    """
    table = ClassTable.resolve(class_map, bundle)
    t0, parts = time.perf_counter(), []
    pairs = _pairs(images, strokes)
    for image, stroke in pairs:
        for img, lab, name in read_pair(image, stroke):
            first = sum(int(np.unique(p.groups).size) for p in parts)
            parts.append(stroke_samples(img, lab, bundle, table, stride=stride, first_id=first, source=name,
                                        **plan_kw))
    return fitted_of(Samples.concat(parts), table, [stroke_record(i, s) for i, s in pairs], stride=stride, seed=seed,
                     cv=cv, feature_seconds=time.perf_counter() - t0)


def predict_grid(fitted, features, valid, *, sigma_cells=0.0, space="log"):
    """(labels (R, C) class indices, -1 off ``valid``; probabilities (R, C, K)) of a feature grid by the fitted
    classifier, smoothed with a Gaussian of ``sigma_cells`` grid cells as ``classify`` does."""
    K, clf = len(fitted.table.names), fitted.heads["logreg"]
    probs = apply_rows(features, valid, per_class(clf, clf.predict_proba, K, 0.0),
                       np.zeros(valid.shape + (K,), np.float32))
    if sigma_cells > 0:
        probs = smooth_probabilities(probs, valid, sigma_cells, space=space)
    return np.where(valid, probs.argmax(-1), -1).astype(np.int16), probs


def uncertainty(probabilities, valid):
    """Where a stroke would help most: 1 - (top probability - runner-up) per cell (NaN off ``valid``)."""
    top2 = np.sort(probabilities, axis=-1)[..., -2:]
    return np.where(valid, 1.0 - (top2[..., 1] - top2[..., 0]), np.nan).astype(np.float32)
