"""Fitting context heads (:mod:`brainrt.heads.context`) on a bundle's feature grids, chosen on validation.

A reusable step: it needs a bundle (any network), its training slices and the split its
manifest records, and nothing of how the network was trained. Cells of the stride grid
(16 by default) are the samples: a cell belongs to a split when its centre pixel lies in
that split's region (:func:`brainrt_train.evaluate.split_footprints`) and carries a class.
Candidates (scales x regularization) are fitted on the training cells and scored by
the pixel macro F1 of their map on the validation region; the test region is only
reported. :func:`add_context_head` writes the chosen head into a copy of the bundle
(re-hashed, verified) or into the bundle itself.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

log = logging.getLogger("brainrt_train")

#: Candidate neighbourhoods: name -> scales as (source, sigma_um). Above 300 um not tried:
#: a 600 um field learned slice309's layout and lost VP on an unseen slice (FACTS.md).
CANDIDATES = {
    "plain": (),
    "f75": (("features", 75.0),),
    "f150": (("features", 150.0),),
    "f300": (("features", 300.0),),
    "p150": (("probabilities", 150.0),),
    "f75+p150": (("features", 75.0), ("probabilities", 150.0)),
    "f75+f300": (("features", 75.0), ("features", 300.0)),
}
CS = (0.01, 0.1, 1.0)
#: Candidates whose validation macro F1 is within this of the best count as tied; the smallest field wins.
TIE = 0.005


def scales_of(spec):
    from brainrt.model.manifest import PoolScale

    return tuple(PoolScale(source=s, sigma_um=float(u)) for s, u in spec)


def pooled_inputs(features, valid, scales, stage1, *, pixel_size_um, stride, n_classes=None):
    """(R, C, D) head inputs: the features, then each scale's pooled features / stage-1 probabilities."""
    from brainrt.heads import apply_rows, per_class
    from brainrt.maps.pooling import pool_grid

    features = np.asarray(features, np.float32)
    parts, prob = [features], None
    for sc in scales:
        if sc.source == "probabilities" and prob is None:
            K = n_classes or len(stage1.classes_)
            prob = apply_rows(features, valid, per_class(stage1, stage1.predict_proba, K, 0.0),
                              np.zeros(valid.shape + (K,), np.float32))
        src = prob if sc.source == "probabilities" else features
        parts.append(pool_grid(src, valid, sc.sigma_um / (pixel_size_um * stride)).mean())
    return np.concatenate(parts, axis=-1)


def split_cells(labels, valid, regions, *, stride):
    """``{split: (rows, cols, classes)}`` of the labeled grid cells whose centre lies in the split's region."""
    from brainrt.geometry import cell_centre

    R, C = valid.shape
    ys = np.minimum(cell_centre(np.arange(R), stride), labels.shape[0] - 1)
    xs = np.minimum(cell_centre(np.arange(C), stride), labels.shape[1] - 1)
    lab = labels[np.ix_(ys, xs)]
    out = {}
    for split, masks in regions.items():
        sel = valid & masks[0][np.ix_(ys, xs)] & (lab >= 0)
        r, c = np.nonzero(sel)
        out[split] = (r, c, lab[r, c].astype(np.int64))
    return out


def interior_train_cells(bundle, sl, valid, *, stride):
    """(rows, cols, classes) of the grid cells centred on an eligible *training* centre (patch strictly
    inside its class, in the training band): where the bundle's own heads drew their patches."""
    from brainrt.geometry import cell_centre

    from .data import eligible_positions

    t = bundle.manifest.training
    cand, _ = eligible_positions([sl], n_classes=len(bundle.class_names), patch_size=bundle.patch_size, gap=t.gap,
                                 fractions=t.fractions, seed=t.seed, layout=t.extra.get("layout", "rows"))
    lab = np.full(sl.labels.shape, -1, np.int64)
    for c, arrs in enumerate(cand["train"]):
        for a in arrs:
            lab[a[:, 1], a[:, 2]] = c
    R, C = valid.shape
    ys = np.minimum(cell_centre(np.arange(R), stride), lab.shape[0] - 1)
    lab = lab[np.ix_(ys, np.minimum(cell_centre(np.arange(C), stride), lab.shape[1] - 1))]
    r, c = np.nonzero(valid & (lab >= 0))
    return r, c, lab[r, c]


def fit_pipeline(x, y, *, C, seed=0, balanced=True, sample_weight=None):
    """Standardized multinomial logistic regression, class-balanced by default (HypoTh and WM are small);
    ``sample_weight``: each row's weight, in the scaling and the fit (None: all 1)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    pipe = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=3000, class_weight="balanced" if balanced else None,
                                                              random_state=seed))
    if sample_weight is None:
        return pipe.fit(x, y)
    return pipe.fit(x, y, standardscaler__sample_weight=sample_weight, logisticregression__sample_weight=sample_weight)


def fold(pipe, scales, *, n_features, n_classes, stage1=None):
    """The fitted pipeline as a :class:`~brainrt.heads.context.ContextHead` (scaler folded into the weights)."""
    from brainrt.heads.context import ContextHead

    scaler, lr = pipe[0], pipe[-1]
    w = lr.coef_ / scaler.scale_
    b = lr.intercept_ - w @ scaler.mean_
    if w.shape[0] == 1:  # binary: softmax([-z/2, z/2]) = sigmoid(z)
        w, b = np.vstack([-w / 2, w / 2]), np.array([-b[0] / 2, b[0] / 2])
    W, B = np.zeros((n_classes, w.shape[1])), np.full(n_classes, -1e4)  # a class never seen: probability 0
    W[lr.classes_], B[lr.classes_] = w, b
    sizes = [n_features] + [n_classes if s.source == "probabilities" else n_features for s in scales]
    blocks = np.split(W, np.cumsum(sizes)[:-1], axis=1)
    return ContextHead(blocks[0], B, blocks[1:], scales, stage1)


def head_probabilities(head, features, valid, *, pixel_size_um, stride):
    """The runtime's whole-grid class probabilities of a context head (terms, pooled, softmax)."""
    from brainrt.heads import apply_rows
    from brainrt.heads.context import context_probabilities

    terms = apply_rows(features, valid, head.terms, np.zeros(valid.shape + (head.n_terms,), np.float32))
    return context_probabilities(head, terms, valid, head.sigmas_cells(pixel_size_um, stride))


def fit_candidate(features, valid, train, scales, stage1, *, C, pixel_size_um, stride, n_classes, seed=0,
                  balanced=True):
    """Fit one candidate on the training cells ``train`` = (rows, cols, classes); return its folded head."""
    x = pooled_inputs(features, valid, scales, stage1, pixel_size_um=pixel_size_um, stride=stride, n_classes=n_classes)
    r, c, y = train
    pipe = fit_pipeline(x[r, c], y, C=C, seed=seed, balanced=balanced)
    return fold(pipe, scales, n_features=features.shape[-1], n_classes=n_classes, stage1=stage1)


def map_scores(prob, valid, sl, regions, names, *, stride, smooth_cells, space="log"):
    """Pixel scores on val and test of the raw and smoothed maps: ``{"raw_val": ..., "smoothed_test": ...}``."""
    from .evaluate import labels_of, pixel_scores

    out = {}
    for kind, sig in (("raw", 0.0), ("smoothed", smooth_cells)):
        pred = labels_of(prob, valid, stride=stride, shape=sl.labels.shape, sigma_cells=sig, space=space)
        for split in ("val", "test"):
            sc = pixel_scores(pred, sl.labels, regions[split][0], names)
            out[f"{kind}_{split}"] = {"pixel_accuracy": sc["pixel_accuracy"], "macro_f1": sc["macro_f1"],
                                      "f1": {n: v["f1"] for n, v in sc["per_class"].items()}}
        out[f"{kind}_end"] = end_share(pred, names)
    return out


#: The hypothalamic end of slice309: tissue left of the annotated rectangle.
END_X = 905


def end_share(pred, names, *, x_end=END_X):
    """Shares of the tissue pixels at x < ``x_end`` given each class (the hypothalamic end measure)."""
    part = pred[:, :x_end]
    tissue = part >= 0
    n = max(int(tissue.sum()), 1)
    shares = {nm: float((part == i).sum()) / n for i, nm in enumerate(names)}
    return {**shares, "Ctx+Str": shares.get("Ctx", 0.0) + shares.get("Str", 0.0)}


def choose(table):
    """The validation choice: best smoothed validation macro F1; within :data:`TIE`, the smallest field
    (then the fewest scales, then the strongest regularization)."""
    best = max(r["smoothed_val"]["macro_f1"] for r in table)
    tied = [r for r in table if r["smoothed_val"]["macro_f1"] >= best - TIE]
    return min(tied, key=lambda r: (max([u for _, u in r["scales"]], default=0.0), len(r["scales"]), r["C"]))


def check_head_target(bundle_dir, out, *, overwrite=False):
    """The one-line error :func:`add_context_head` would raise for ``out``, before any work: an existing
    folder is replaced only with ``overwrite`` or when it is the bundle itself (adding a head in place)."""
    from pathlib import Path

    from brainrt.io import check_target

    in_place = Path(out).resolve() == Path(bundle_dir).resolve()
    return check_target(out, overwrite=overwrite or in_place, is_dir=True), overwrite or in_place


def add_context_head(bundle_dir, out, spec, head, *, name="ctx", default=False, table=None, chosen_on="",
                     overwrite=False):
    """Write ``head`` (with its :class:`~brainrt.model.manifest.ContextHeadSpec` fields) into a copy of the bundle
    at ``out`` (``out == bundle_dir``: in place), re-hashed and verified; return the new manifest."""
    import shutil
    from pathlib import Path

    from brainrt.io import atomic_path
    from brainrt.model.manifest import ContextHeadSpec
    from brainrt.model.seal import seal_bundle, verify_bundle

    out, replace = check_head_target(bundle_dir, out, overwrite=overwrite)
    bundle_dir = Path(bundle_dir)
    manifest = verify_bundle(bundle_dir)
    with atomic_path(out, overwrite=replace, is_dir=True) as tmp:
        shutil.copytree(bundle_dir, tmp, dirs_exist_ok=True)
        head.save(tmp / "heads" / f"{name}.npz")
        ctx = {**(manifest.context_heads or {}),
               name: ContextHeadSpec(scales=head.scales, C=spec.get("C"),
                                     stage1=spec.get("stage1") if any(s.source == "probabilities" for s in head.scales) else None,
                                     chosen_on=chosen_on, extra={"table": table or []})}
        manifest = seal_bundle(tmp, dataclasses.replace(manifest, heads={**manifest.heads, name: f"heads/{name}.npz"},
                                                        context_heads=ctx,
                                                        default_head=name if default else manifest.default_head))
    return manifest
