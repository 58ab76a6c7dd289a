"""Spatially disjoint train/val/test regions of annotated slices (numpy only).

The trainer draws its patches from these regions; the runtime
recomputes them from a bundle's recorded split (seed, gap, fractions, layout) to score a
map on the test split only (``classify --held-out``). One slice's regions depend only on
its class-index map, its index ``k`` among the ``n`` training slices, and those options.

Split rule. With three or more slices the split is by slice. Otherwise (one slice, or
the first of two) each class is cut into spatial bands (see :func:`split_regions`).
"""

from __future__ import annotations

import numpy as np

SPLITS = ("train", "val", "test")


def window_sum(mask, before, after):
    """For each pixel p, the sum of ``mask`` over rows and cols ``p - before .. p + after`` (clipped)."""
    h, w = mask.shape
    s = np.zeros((h + 1, w + 1), np.int64)
    np.cumsum(np.cumsum(mask, axis=0, dtype=np.int64), axis=1, out=s[1:, 1:])
    y0 = np.clip(np.arange(h) - before, 0, h)
    y1 = np.clip(np.arange(h) + after + 1, 0, h)
    x0 = np.clip(np.arange(w) - before, 0, w)
    x1 = np.clip(np.arange(w) + after + 1, 0, w)
    return s[y1][:, x1] - s[y0][:, x1] - s[y1][:, x0] + s[y0][:, x0]


def box_all(mask, size):
    """Centres whose footprint (rows ``cy - size//2 ..``, ``size`` long) is all True and inside the image."""
    return window_sum(mask, size // 2, size - 1 - size // 2) == size * size


def footprints(centres, size):
    """Pixels covered by the footprint of any True centre."""
    return window_sum(centres, size - 1 - size // 2, size // 2) > 0


def _layout(fractions, P, G, interior):
    """Segments along a class's long axis, their shares, and the gap before each next one.

    Interior: train | G | val | P | test | G | train (training at both ends, so validation
    and test sit inside the class and span its cross-section); plain: train | G | val | P | test.
    Splits with no share are dropped with their gaps.
    """
    order = ("train", "val", "test", "train") if interior else ("train", "val", "test")
    share = [fractions[SPLITS.index(n)] / (2 if interior and n == "train" else 1) for n in order]
    segs = [(n, f) for n, f in zip(order, share) if f > 0]
    gaps = [G if "train" in (a[0], b[0]) else P for a, b in zip(segs, segs[1:])]
    return segs, gaps


def _extent(m, axis=None):
    """``(axis, lo, hi)`` of the True pixels of ``m`` along ``axis`` (None: the longer extent)."""
    ext = [np.flatnonzero(m.any(axis=1 - ax)) for ax in (0, 1)]
    ax = int(np.argmax([(e[-1] - e[0]) if e.size else -1 for e in ext])) if axis is None else axis
    return (ax, ext[ax][0], ext[ax][-1] + 1) if ext[ax].size else (ax, 0, 0)


def _class_bands(sm, cm, f, *, P, G, flip, min_band, layout):
    """Boolean band per split (broadcastable to the image) for one class.

    The interior layout runs along the longer extent of the training-eligible centres
    ``sm``, so both training ends hold some; where it does not fit, the plain layout runs
    along the extent of all the class's centres ``cm``.
    """
    for interior, m in ((True, sm), (False, cm)):
        if layout == "rows" and interior:
            continue
        ax, lo, hi = _extent(m, axis=None if layout == "interior" else 0)
        segs, gaps = _layout(f, P, G, interior)
        usable = hi - lo - sum(gaps)
        if not interior or min(sh for _, sh in segs) * usable >= min_band:
            break
    n = m.shape[ax]
    bands = {s: np.zeros(n, bool) for s in SPLITS}
    a = lo
    for k, (name, sh) in enumerate(segs):
        b = hi if k == len(segs) - 1 else a + int(round(sh * max(usable, 0)))
        if b > a:
            bands[name][(hi + lo - b if flip else a) : (hi + lo - a if flip else b)] = True
        a = b + (gaps[k] if k < len(gaps) else 0)
    shape = (n, 1) if ax == 0 else (1, n)
    return {s: v.reshape(shape) for s, v in bands.items()}, ("rows", "cols")[ax], interior


LAYOUTS = ("rows", "interior")


def split_regions(strict, centre, *, patch_size, gap, fractions, rng, report=None, layout="rows"):
    """Allowed centres per split and class, ``{split: [mask per class]}``, for one slice.

    ``layout="rows"``: each class's rows are cut into bands train | gap | val | test (one
    seeded coin toss for all classes picks the direction), so training spans every
    class's whole width, boundaries and interior alike. ``"interior"``: bands along the
    class's longer extent, train | gap | val | test | gap | train where it is long enough
    (validation and test inside the class, spanning its cross-section), else as "rows"
    along that extent. (Measured on slice309 with the context branch: "interior" trains
    on each class's ends only, next to other areas, and validation fell from 0.65 to 0.59
    while training accuracy reached 0.99.) Training centres of the other classes keep clear of a
    small class's validation and test bands. Then, globally, every validation and test footprint
    keeps at least ``gap`` pixels from every training footprint of any class, so test
    pixels never come near training pixels; validation and test bands are a patch apart.
    """
    P = patch_size
    f = np.asarray(fractions, float) / np.sum(fractions)
    flip = rng.random() < 0.5
    bands, small = [], []
    for c, (sm, cm) in enumerate(zip(strict, centre)):
        b, axis, interior = _class_bands(sm, cm, f, P=P, G=P + gap, flip=flip, min_band=P // 2, layout=layout)
        bands.append(b)
        if not interior:
            small.append(c)
        if report is not None:
            report.append({"axis": axis, "layout": "train|val|test|train" if interior else "train|val|test"})
    train = [m & b["train"] for m, b in zip(strict, bands)]
    if small:  # small classes keep their validation and test: other classes train away from them
        kept = np.logical_or.reduce([centre[c] & (bands[c]["val"] | bands[c]["test"]) for c in small])
        near = window_sum(footprints(kept, P), gap, gap) > 0
        away = window_sum(near, P // 2, P - 1 - P // 2) == 0
        train = [t if c in small else t & away for c, t in enumerate(train)]
    excluded = window_sum(footprints(np.logical_or.reduce(train), P), gap, gap) > 0
    clear = window_sum(excluded, P // 2, P - 1 - P // 2) == 0
    return {"train": train,
            "val": [m & b["val"] & clear for m, b in zip(centre, bands)],
            "test": [m & b["test"] & clear for m, b in zip(centre, bands)]}


def _slice_fractions(n, k, fractions):
    """Split shares for slice k of n when splitting by bands (n = 1 or 2: the second slice is all test)."""
    if n == 1:
        return tuple(fractions)
    if k == 0:
        t, v = fractions[0], fractions[1]
        return (t / (t + v), v / (t + v), 0.0)
    return (0.0, 0.0, 1.0)


def slice_regions(labels, k, n, *, n_classes, patch_size, gap, fractions, seed, layout="rows"):
    """(``{split: [centre mask or None per class]}``, report) of slice ``k`` of ``n``.

    ``labels`` holds class indices (-1: none). A training centre's footprint lies wholly
    inside its class; a validation or test centre only needs its centre in the class.
    """
    P = patch_size
    h, w = labels.shape
    inside_img = box_all(np.ones((h, w), bool), P)
    strict = [box_all(labels == c, P) for c in range(n_classes)]
    centre = [(labels == c) & inside_img for c in range(n_classes)]
    if n >= 3:
        owner = "test" if k == n - 1 else "val" if k == n - 2 else "train"
        region = {s: [(strict if s == "train" else centre)[c] if s == owner else None
                      for c in range(n_classes)] for s in SPLITS}
        return region, {"slice": k, "split": owner}
    fr = _slice_fractions(n, k, fractions)
    per_class = []
    region = split_regions(strict, centre, patch_size=P, gap=gap, fractions=fr, rng=np.random.default_rng([seed, k]),
                           report=per_class, layout=layout)
    return region, {"slice": k, "layout": f"{layout} bands per class", "fractions": list(fr), "per_class": per_class}


def split_footprint(labels, k, n, split="test", **options):
    """Pixels of slice ``k`` covered by the footprint of an eligible centre of ``split``
    (``options`` as :func:`slice_regions`): the pixels that split owns."""
    region, _ = slice_regions(labels, k, n, **options)
    masks = [m for m in region[split] if m is not None]
    centres = np.logical_or.reduce(masks) if masks else np.zeros(labels.shape, bool)
    return footprints(centres, options["patch_size"])
