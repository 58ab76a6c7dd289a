"""Scoring a classification against an annotation: the label mask read and checked at the edge, pixel metrics.

A label mask holds mask codes (the class map's); a pixel counts when its code belongs
to a class. Prediction and truth are compared at full resolution (each grid cell covers
its stride x stride pixels).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..geometry import upsample
from ..heads import OFF_TISSUE
from ..sources import read_mask
from .truth import check_held_out, check_truth, scored_pixels


def read_truth(path, shape, bundle, *, z=None, held_out=False):
    """The label mask TIFF ``path`` to score against, checked before any work: the slice's ``shape``, and
    codes of the bundle's class map (:func:`brainrt.bundle.truth.check_truth`); ``held_out``: that the bundle
    has a held-out split left (:func:`brainrt.bundle.truth.check_held_out`)."""
    if held_out:
        check_held_out(bundle.manifest, str(path))
    truth = read_mask(path, shape, z=z, what="label mask")
    check_truth(truth, bundle.manifest, str(path))
    return truth


def score(result, truth, bundle, *, z=None, held_out=False, source=None, name=None):
    """:func:`pixel_metrics` of a classification against a label mask (array or TIFF; an array read from the
    file ``name``, which says whether it is a bundle's training mask) at full resolution.

    The metrics also record the model, stride, head and smoothing, the confusion matrix's
    axes, the codes the class map does not know, and whether the data are the bundle's
    training slice (``source``: the classified file). ``held_out`` scores only the test
    footprints of the bundle's recorded split (:mod:`brainrt.bundle.truth`).
    """
    grid = result.grid
    name = str(truth) if isinstance(truth, (str, Path)) else str(name or "truth")
    if isinstance(truth, (str, Path)):
        truth = read_truth(truth, grid.image_shape, bundle, z=z)
    where, record = scored_pixels(bundle.manifest, truth, name, held_out=held_out, source=source)
    full = upsample(result.cell_codes(), grid.stride, grid.image_shape)
    pred = np.where(full == OFF_TISSUE, -1, full.astype(np.int16))
    m = pixel_metrics(pred, truth, names=result.names, codes_per_class=bundle.manifest.codes_per_class, where=where)
    return {"model_id": grid.model_id, "stride": grid.stride, "head": result.head, "smooth_um": result.smooth_um,
            **record, **m, "confusion_matrix_rows": [f"truth {n}" for n in result.names],
            "confusion_matrix_columns": [f"predicted {n}" for n in result.names]}


def pixel_metrics(pred_codes, truth, *, names, codes_per_class, where=None):
    """Accuracy, confusion matrix and per-class F1 over labeled pixels.

    ``truth`` holds mask codes; a pixel counts when its code belongs to a class (and
    ``where`` is True, if given). Pixels off tissue (prediction -1) count as wrong.
    """
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    t, p = _code_indices(truth, pred_codes, codes_per_class)
    sel = t >= 0
    if where is not None:
        sel &= where
    tt, pp = t[sel], p[sel]
    labels = list(range(len(names)))
    cm = confusion_matrix(tt, pp, labels=labels)
    pr, rc, f1, sup = precision_recall_fscore_support(tt, pp, labels=labels, zero_division=0)
    return {"pixel_accuracy": float((tt == pp).mean()) if tt.size else float("nan"), "n_pixels": int(tt.size),
            "unclassified_pixels": int((pp < 0).sum()), "confusion_matrix": cm.tolist(),
            "per_class": {n: {"precision": float(pr[i]), "recall": float(rc[i]), "f1": float(f1[i]),
                              "support": int(sup[i])} for i, n in enumerate(names)}}


def _code_indices(truth, pred_codes, codes_per_class):
    """Class indices (-1: none) of the truth's codes (any of a class's) and of the predicted codes (its first)."""
    lut = np.full(max(int(truth.max()), max(max(c) for c in codes_per_class)) + 1, -1, np.int16)
    for i, cs in enumerate(codes_per_class):
        lut[list(cs)] = i
    code_to_idx = {cs[0]: i for i, cs in enumerate(codes_per_class)}
    plut = np.full(max(code_to_idx) + 2, -1, np.int16)
    for c, i in code_to_idx.items():
        plut[c] = i
    return lut[truth], np.where(pred_codes >= 0, plut[np.clip(pred_codes, 0, plut.size - 1)], -1)


def score_lines(metrics, truth, held_out=False):
    """What a user reads after a score: per-class precision/recall/F1, and what the score covers
    (unknown codes in the ``truth`` mask, the bundle's own training slice)."""
    lines = [f"{'area':<12} {'precision':>9} {'recall':>7} {'F1':>6} {'pixels':>9}"]
    for name, s in metrics["per_class"].items():
        lines.append(f"{name:<12} {s['precision']:>9.3f} {s['recall']:>7.3f} {s['f1']:>6.3f} {s['support']:>9d}")
    unknown = metrics["unknown_codes"]
    if unknown:
        lines.append(f"note: {truth}: {sum(unknown.values())} pixels hold codes the class map does not know "
                     f"({', '.join(unknown)}); they are not scored")
    seen = metrics["training_slice"]
    if seen and not held_out:
        lines.append(f"note: this is the bundle's training slice {seen['index']} ({seen['image']}, sha256 "
                     f"{seen['image_sha256'][:12]}...): the score includes the pixels it was trained on; "
                     + ("its heads saw every label (training.final): no part of it is held out" if seen.get("final_fit")
                        else "--held-out scores its test split only"))
    return lines
