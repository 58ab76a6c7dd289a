"""Map-level evaluation on the split regions: pixel accuracy, per-class F1, slice changes.

Patch accuracy scores single patches; a lab looks at maps. These functions score a
full-resolution label map on the pixels that a split owns: the union of the footprints
of every eligible centre of that split (the same bands and gaps the patches were drawn
from), so test pixels are never near training pixels.
"""

from __future__ import annotations

import numpy as np

from .data import SPLITS, eligible_positions, footprints


def split_footprints(slices, *, n_classes, patch_size, gap, fractions, seed, layout="rows"):
    """``{split: bool mask per slice}``: pixels covered by the footprint of an eligible centre."""
    cand, _ = eligible_positions(slices, n_classes=n_classes, patch_size=patch_size, gap=gap,
                                 fractions=fractions, seed=seed, layout=layout)
    out = {}
    for s in SPLITS:
        masks = []
        for k, sl in enumerate(slices):
            centres = np.zeros(sl.labels.shape, bool)
            for per_class in cand[s]:
                for arr in per_class:
                    arr = arr[arr[:, 0] == k]
                    centres[arr[:, 1], arr[:, 2]] = True
            masks.append(footprints(centres, patch_size))
        out[s] = masks
    return out


def pixel_scores(pred, truth, region, names):
    """Accuracy and per-class precision/recall/F1 of a class-index map on ``region``.

    ``pred`` and ``truth`` hold class indices (-1 = none); pixels without a true class
    are skipped, predictions of -1 (off tissue) count as wrong.
    """
    from sklearn.metrics import precision_recall_fscore_support

    m = region & (truth >= 0)
    t, p = truth[m].astype(np.int64), pred[m].astype(np.int64)
    labels = list(range(len(names)))
    pr, rc, f1, sup = precision_recall_fscore_support(t, p, labels=labels, zero_division=0)
    return {"pixel_accuracy": float(np.mean(t == p)) if t.size else float("nan"), "n_pixels": int(t.size),
            "macro_f1": float(np.mean(f1[sup > 0])) if (sup > 0).any() else float("nan"),
            "per_class": {n: {"precision": float(pr[i]), "recall": float(rc[i]), "f1": float(f1[i]),
                              "support": int(sup[i])} for i, n in enumerate(names)}}


def simulate_slice_change(image, *, seed=0, gamma=0.8, contrast=1.15, offset=0.04, blur=0.8, levels_in=None):
    """Re-render a slice as another slice of the volume might look: a uint8 image.

    Dithers the gray levels to full depth (each of the ``levels_in`` levels spread over
    its step with uniform noise), then gamma, contrast about the tissue mean, an offset
    and a Gaussian blur of ``blur`` px, and re-quantizes to 256 levels.
    """
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    x = image.astype(np.float32) / 255.0
    n_levels = levels_in or np.unique(image).size
    step = 1.0 / max(n_levels - 1, 1)
    x = x + rng.uniform(-step / 2, step / 2, size=x.shape).astype(np.float32)
    x = np.clip(x, 0, 1) ** gamma
    mean = float(x[x > 0.3].mean()) if (x > 0.3).any() else float(x.mean())
    x = (x - mean) * contrast + mean + offset
    if blur > 0:
        x = gaussian_filter(x, blur)
    return np.clip(np.rint(x * 255), 0, 255).astype(np.uint8)


def binned_back(image):
    """``image`` binned 2 x 2 (mean) and resampled back to its own grid (bilinear: pixel y sits at (y - 0.5) / 2
    in the binned image), rounded to its integer type: another instrument's or reconstruction's resolution."""
    from scipy import ndimage

    f = image.astype(np.float32)
    h, w = (image.shape[0] // 2) * 2, (image.shape[1] // 2) * 2
    binned = f[:h, :w].reshape(h // 2, 2, w // 2, 2).mean((1, 3))
    yy = np.clip((np.arange(image.shape[0]) - 0.5) / 2, 0, h // 2 - 1)
    xx = np.clip((np.arange(image.shape[1]) - 0.5) / 2, 0, w // 2 - 1)
    back = ndimage.map_coordinates(binned, np.meshgrid(yy, xx, indexing="ij"), order=1, mode="nearest")
    return np.clip(np.rint(back), 0, np.iinfo(image.dtype).max if image.dtype.kind in "ui" else None).astype(image.dtype)


def random_rendering(image, seed):
    """A random re-imaging of an 8-bit slice (:func:`simulate_slice_change` with drawn parameters: gamma
    exp(U(-0.35, 0.35)), contrast exp(U(-0.25, 0.25)), offset U(-0.08, 0.08), blur U(0, 1.6) px; 2 x 2 binning
    resampled back with probability 0.3), from ``seed``. The heads of a final fit can be fitted on the features of
    a few of these besides the slice's own (``heads.renderings`` of a choices file), so that a map does not lean
    on feature directions that a change of instrument or reconstruction moves. None of the imaging changes that
    score a candidate (:func:`brainrt_train.netcv.imaging_changes`) is drawn here: they use fixed parameters and
    other seeds."""
    rng = np.random.default_rng([seed, 7])
    out = simulate_slice_change(image, seed=seed + 1000, gamma=float(np.exp(rng.uniform(-0.35, 0.35))),
                                contrast=float(np.exp(rng.uniform(-0.25, 0.25))), offset=float(rng.uniform(-0.08, 0.08)),
                                blur=float(rng.uniform(0.0, 1.6)))
    return binned_back(out) if rng.uniform() < 0.3 else out


#: Smoothing sigmas (micrometres) tried on the validation split.
SIGMAS_UM = (0.0, 20.0, 40.0, 80.0, 150.0, 300.0)


def class_probabilities(bundle, image, *, stride, standardize=True):
    """``(probabilities (R, C, K), valid (R, C))`` of the bundle's default head, unsmoothed."""
    import brainrt

    res = brainrt.classify_image(image, bundle, stride=stride, smooth=0, standardize=standardize)
    return res.probabilities, res.grid.valid


def labels_of(prob, valid, *, stride, shape, sigma_cells=0.0, space="log"):
    """Full-resolution class-index map (-1 off tissue) of grid probabilities, optionally smoothed."""
    from brainrt.geometry import upsample
    from brainrt.maps.smooth import smooth_probabilities

    if sigma_cells > 0:
        prob = smooth_probabilities(prob, valid, sigma_cells, space=space)
    cells = np.where(valid, prob.argmax(-1), -1).astype(np.int16)
    return upsample(cells, stride, shape)


def choose_smoothing(bundle, slices, regions, names, *, stride=16, pixel_size_um=1.17, split="val"):
    """Smoothing (sigma in um and space) with the best macro F1 on ``split``'s pixels, and the table,
    for the bundle's default head (see :func:`choose_smoothing_of`)."""
    grids = [class_probabilities(bundle, sl.image, stride=stride) for sl in slices]
    return choose_smoothing_of(grids, slices, regions[split], names, stride=stride, pixel_size_um=pixel_size_um)


def choose_smoothing_of(grids, slices, region, names, *, stride=16, pixel_size_um=1.17):
    """Smoothing with the best macro F1 on ``region`` (a pixel mask per slice) of the grids
    ``(probabilities, valid)`` (one per slice), and the table of every sigma and space tried.

    Macro F1 rather than accuracy: a sigma that wipes out a small area loses a sixth of it.
    """
    table = []
    truth = np.concatenate([sl.labels.ravel() for sl in slices])
    region = np.concatenate([r.ravel() for r in region])
    for space in ("log", "prob"):
        for sigma in SIGMAS_UM:
            if sigma == 0 and space == "prob":
                continue
            preds = [labels_of(p, v, stride=stride, shape=sl.labels.shape, sigma_cells=sigma / (pixel_size_um * stride),
                               space=space) for (p, v), sl in zip(grids, slices)]
            pred = np.concatenate([x.ravel() for x in preds])
            sc = pixel_scores(pred, truth, region, names)
            table.append({"sigma_um": sigma, "space": space, "pixel_accuracy": sc["pixel_accuracy"],
                          "macro_f1": sc["macro_f1"],
                          "recall": {n: v["recall"] for n, v in sc["per_class"].items()}})
    best = max(table, key=lambda r: (round(r["macro_f1"], 4), -r["sigma_um"]))
    return best, table
