"""How unlike the training tissue a slice is: two scores, logged, recorded, and a warning above a threshold.

- **intensity**: the share of the slice's tissue pixels (as the network reads them, in the training
  images' units) outside the central 99% of the training tissue's gray values (the bundle's
  recorded quantiles). A crop holding only some areas stays inside that range; inverted contrast
  (background read as tissue) or another instrument's gray levels do not.
- **texture**: the correlation of neighbouring tissue pixels; an image of tissue is smooth at the
  pixel scale, noise is not.
- **features**: how far the network's features of a sample of tissue cells lie from the bundle's
  per-area feature densities (the ``area_density`` head): per cell, the best area's log-likelihood
  below that area's typical one (the median over samples drawn from its own density), per
  feature dimension; the median over cells. About 0 for tissue like the training's whatever
  areas are in view (each cell is scored against its likeliest area), large for noise, inverted
  contrast or another kind of image.

All are composition-free: they do not change when a crop holds other areas. Thresholds were
chosen on slice309, its crops and its simulated changes (``python tools/unlike_inputs.py`` prints them).
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from .api import featurize_plan
from .engine.plan import Plan
from .engine.tissue import auto_threshold

log = logging.getLogger("brainrt")

#: Central share of the training tissue's gray values that counts as "inside".
CENTRAL = 0.99
#: Warn when more than this share of the tissue lies outside it.
INTENSITY_WARN = 0.25
#: Warn when the correlation of horizontally neighbouring tissue pixels is below this (noise, not an image
#: of tissue: slice309 and its crops 0.9 or more).
CORRELATION_WARN = 0.3
#: Tissue cells whose features are computed for the feature score (seeded sample).
N_CELLS = 128


def intensity_outside(plan, bundle, t):
    """Share of the plan's tissue pixels (above the threshold ``t``) outside the training tissue's central
    :data:`CENTRAL` (None: the bundle records no training intensities)."""
    inten = bundle.manifest.intensity
    if inten is None:
        return None
    q = np.asarray(inten.quantiles, np.float64)
    lo, hi = np.quantile(q, [(1 - CENTRAL) / 2, (1 + CENTRAL) / 2])
    image = plan.image
    units = plan.scale / bundle.manifest.normalization.scale  # network's reading -> training units
    out = n = 0
    for y in range(0, image.shape[0], 512):
        b = image[y: y + 512]
        v = b[b > t].astype(np.float64) * units
        n += v.size
        out += int(np.count_nonzero((v < lo) | (v > hi)))
    return out / n if n else None


def neighbour_correlation(plan, t):
    """Correlation of horizontally neighbouring tissue pixels (both above the threshold ``t``), band by band."""
    image = plan.image
    sums = np.zeros(6)  # n, sum a, sum c, sum a^2, sum c^2, sum ac
    for y in range(0, image.shape[0], 512):
        b = image[y: y + 512].astype(np.float64)
        a, c = b[:, :-1], b[:, 1:]
        both = (a > t) & (c > t)
        a, c = a[both], c[both]
        sums += [a.size, a.sum(), c.sum(), (a * a).sum(), (c * c).sum(), (a * c).sum()]
    n, sa, sc, saa, scc, sac = sums
    if n < 2:
        return None
    va, vc = saa / n - (sa / n) ** 2, scc / n - (sc / n) ** 2
    return float((sac / n - sa * sc / n**2) / np.sqrt(va * vc)) if va > 0 and vc > 0 else None


def _typical(bundle):
    """Per area: the median log-likelihood of samples drawn from the area's own density (cached on the head)."""
    dens = bundle.heads["area_density"]
    ref = getattr(dens, "_brainrt_typical", None)
    if ref is None:
        ref = []
        for m in dens.models_:
            z, _ = m.sample(1000)
            ref.append(float(np.median(m.score_samples(z))))
        ref = np.asarray(ref)
        dens._brainrt_typical = ref
    return ref


def feature_deficit(plan, bundle, *, n=N_CELLS, seed=0):
    """Median over a sample of tissue cells of ``max(0, typical - best area's log-likelihood) / F`` (None: no
    ``area_density`` head, or no tissue cell)."""
    if "area_density" not in bundle.heads or not plan.valid.any():
        return None
    cells = np.flatnonzero(plan.valid)
    pick = np.random.default_rng(seed).choice(cells, size=min(n, cells.size), replace=False)
    valid = np.zeros(plan.valid.size, bool)
    valid[pick] = True
    sub = dataclasses.replace(plan, valid=valid.reshape(plan.valid.shape), method="patch")
    level = logging.getLogger("brainrt").level
    logging.getLogger("brainrt").setLevel(logging.WARNING)  # its own "featurized ..." line is noise here
    try:
        grid = featurize_plan(sub, bundle)
    finally:
        logging.getLogger("brainrt").setLevel(level)
    f = np.asarray(grid.features)[sub.valid]
    dens = bundle.heads["area_density"]
    gap = dens.score_samples(f) - _typical(bundle)[None, :]
    return float(np.median(np.maximum(0.0, -gap.max(axis=1)))) / f.shape[1]


def input_check(plan, bundle, *, features=True):
    """``(scores, why)`` of a plan, nothing logged: the scores ``{"intensity_outside", "neighbour_correlation",
    "feature_deficit", "unlike"}`` (None where unavailable) and why it looks unlike the training tissue (its gray
    values or its texture, :data:`INTENSITY_WARN`, :data:`CORRELATION_WARN`; empty when it does not). The feature
    deficit is returned, not warned on: its scale depends on how well the bundle's densities generalize (a bundle
    fitted on few cells scores its own kind of slice high)."""
    t = auto_threshold(plan.image, quiet=True)  # one Otsu pass over the slice serves both scores
    inten, corr = intensity_outside(plan, bundle, t), neighbour_correlation(plan, t)
    feat = feature_deficit(plan, bundle) if features else None
    why = ([f"{inten:.0%} of its tissue outside the training tissue's gray values (warn above "
            f"{INTENSITY_WARN:.0%})"] if inten is not None and inten > INTENSITY_WARN else [])
    why += ([f"neighbouring pixels correlate {corr:.2f} (noise? warn below {CORRELATION_WARN:g})"]
            if corr is not None and corr < CORRELATION_WARN else [])
    return {"intensity_outside": inten, "neighbour_correlation": corr, "feature_deficit": feat, "unlike": bool(why)}, why


def warn_unlike(name, why):
    """The warning of a slice (``name``) that looks unlike the training tissue, for the reasons ``why``."""
    log.warning("%s looks unlike the training tissue: %s; the map may be wrong (inverted contrast, another kind "
                "of image?)", name, "; ".join(why))


def familiarity(plan, bundle, *, features=True) -> dict:
    """The :func:`input_check` scores of a plan, logged, with a warning naming the slice when it looks unlike the
    training tissue."""
    scores, why = input_check(plan, bundle, features=features)
    inten, corr, feat = (scores[k] for k in ("intensity_outside", "neighbour_correlation", "feature_deficit"))
    shown = ", ".join(x for x in (None if inten is None else f"{inten:.1%} of the tissue outside the training "
                                  "tissue's gray values", None if corr is None else f"neighbour correlation {corr:.2f}",
                                  None if feat is None else f"feature deficit {feat:.2f} nats/feature") if x)
    if why:
        warn_unlike(plan.source, why)
    log.info("%s: input check: %s", plan.source, shown or "nothing to compare (no training intensities)")
    return scores


def checked(job, bundle, record=None):
    """``job``; a slice's :class:`~brainrt.engine.plan.Plan` scored by :func:`familiarity` first, the scores kept in the
    run record ``record`` (``input_check``); a saved feature grid as it is. Called once every input is checked:
    the feature score runs the network on a few cells."""
    if isinstance(job, Plan):
        scores = familiarity(job, bundle)
        if record is not None:
            record["input_check"] = scores
    return job
