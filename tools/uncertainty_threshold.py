"""What an ``--uncertain-below`` threshold means on an annotated slice: the error rate of the map's pixels
whose margin (between the two likeliest areas, after the map regularization) is below it, against those
above it.

``--where cv`` (the honest figure): the spatial cross-validation of :mod:`brainrt_train.cv` (5 folds, 64 px
gap). In each fold the bundle's default head recipe (its manifest's ``training.final.recipe``: logistic
regression C, class balance, per-class biases, smoothing sigma and space; the shipped defaults when it
records none) is refitted on the fold's training cells of a stride-16 feature grid of the slice, its map
smoothed as the runtime smooths it, and the margin of every cell is set against the fold's held-out pixels
in that cell (exact pixel counts). ``--where all``: the bundle's own default head and smoothing on every
labeled pixel (in-sample when the bundle was fitted on this slice, as the shipped one was).

    python tools/uncertainty_threshold.py --model models/slice309-paper6 --image ../shared/data/slice309.tif \\
        --mask ../shared/data/slice309_areas.tif --where cv --features /tmp/slice309.s16.features.zarr
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

THRESHOLDS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5)


def recipe_of(bundle):
    """(head, bias, sigma um, space) of the bundle's default head recipe (its final fit's record): ``head`` as
    :func:`brainrt_train.cv.fit_head` takes it (a context head with its scales, else a logistic regression)."""
    final = bundle.manifest.training.extra.get("final") if bundle.manifest.training else None
    r = (final or {}).get("recipe") or {}
    sm = bundle.manifest.smoothing
    sigma, space = (sm.sigma_um, sm.space) if sm is not None else (0.0, "log")
    C = float(r.get("C", 0.1))
    head = (("ctx", (("C", C), ("scales", r["scales"]))) if r.get("head") == "ctx" else
            ("logreg", (("C", C), ("balanced", bool(r.get("balanced", True))))))
    return head, tuple((r.get("bias") or {}).items()), float(r.get("sigma_um", sigma)), r.get("space", space)


def cv_counts(bundle, image_path, mask_path, features, k=5):
    """Per fold: (margin (R, C), wrong held-out pixels (R, C), held-out pixels (R, C))."""
    import brainrt
    from brainrt.maps.smooth import smooth_probabilities
    from brainrt.maps.uncertainty import margin_entropy
    from brainrt_train import cv

    if not Path(features).exists():
        brainrt.featurize(image_path, bundle, stride=16, out=features)
    grid, sl = cv.grid_of(features, image_path, mask_path, bundle)
    head, bias, sigma_um, space = recipe_of(bundle)
    folds = cv.spatial_folds(sl.labels, k=k, n_classes=len(grid.names))
    cf = cv.cell_folds(folds, sl.labels, grid.stride, grid.valid.shape, len(grid.names))
    out = []
    for f in range(k):
        _, prob = cv.fit_head(grid, cf.train[f], head)
        prob = cv.with_bias(prob, grid.names, bias)
        if sigma_um > 0:
            prob = smooth_probabilities(prob, grid.valid, grid.sigma_cells(sigma_um), space=space)
        pred = np.where(grid.valid, prob.argmax(-1), -1)
        counts = cf.counts[f]
        held = counts.sum(-1)
        right = np.take_along_axis(counts, np.maximum(pred, 0)[..., None], -1)[..., 0] * (pred >= 0)
        margin = margin_entropy(prob, grid.valid)[..., 0]
        out.append((np.where(np.isfinite(margin), margin, 0.0), held - right, held))
    return out, (head, dict(bias), sigma_um, space)


def in_sample(bundle, image, truth, stride=16):
    """(margin, wrong, pixels) per cell-pixel of the bundle's default head on every labeled pixel."""
    import brainrt
    from brainrt.geometry import upsample

    res = brainrt.classify_image(image, bundle, stride=stride)
    t = np.full(truth.shape, -1, np.int16)
    for i, cs in enumerate(bundle.manifest.codes_per_class):
        t[np.isin(truth, cs)] = i
    sel = t >= 0
    margin = upsample(res.uncertainty()[..., 0], stride, image.shape)[sel]
    wrong = upsample(res.labels, stride, image.shape)[sel] != t[sel]
    return [(np.where(np.isfinite(margin), margin, 0.0), wrong.astype(np.int64), np.ones_like(wrong, np.int64))]


def table(parts, thresholds=THRESHOLDS):
    """Rows (T, share of scored pixels below T, error rate below, error rate above, ratio)."""
    m = np.concatenate([p[0].ravel() for p in parts])
    w = np.concatenate([p[1].ravel() for p in parts]).astype(float)
    n = np.concatenate([p[2].ravel() for p in parts]).astype(float)
    rows = []
    for thr in thresholds:
        lo = m < thr
        eb = w[lo].sum() / n[lo].sum() if n[lo].sum() else float("nan")
        ea = w[~lo].sum() / n[~lo].sum() if n[~lo].sum() else float("nan")
        rows.append((thr, n[lo].sum() / n.sum(), eb, ea, eb / ea if ea > 0 else float("inf")))
    return rows, w.sum() / n.sum(), int(n.sum())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--image", required=True)
    ap.add_argument("--mask", required=True)
    ap.add_argument("--where", choices=("cv", "all"), default="cv")
    ap.add_argument("--features", default="slice.s16.features.zarr", help="stride-16 feature grid (cv; made if absent)")
    a = ap.parse_args(argv)
    import tifffile

    import brainrt

    bundle = brainrt.Bundle.load(a.model)
    if a.where == "cv":
        parts, recipe = cv_counts(bundle, a.image, a.mask, a.features)
        what = f"5-fold spatial CV, held-out pixels; recipe head, bias, sigma um, space = {recipe}"
    else:
        parts = in_sample(bundle, tifffile.imread(a.image), tifffile.imread(a.mask))
        what = "the bundle's default head and smoothing, every labeled pixel (in-sample for its own slice)"
    rows, err, n = table(parts)
    print(f"{what}: {n} pixels, error rate {err:.3f}")
    print(f"{'T':>5} {'below':>7} {'err<T':>7} {'err>=T':>7} {'ratio':>6}")
    for thr, share, eb, ea, r in rows:
        print(f"{thr:>5.2f} {share:>7.3f} {eb:>7.3f} {ea:>7.3f} {r:>6.1f}")


if __name__ == "__main__":
    main()
