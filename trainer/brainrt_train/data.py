"""Annotated slices, class maps, spatially disjoint splits and balanced patch sampling.

Split rule. With three or more slices the split is by slice. Otherwise (one slice, or
the first of two) each class is cut into spatial bands along its longer extent, train |
gap | val | test | gap | train where it fits (else train | gap | val | test), and every validation or test footprint keeps at least ``gap`` pixels (default one
patch) from every training footprint (see :func:`split_regions`).

Patch rule. A training patch lies strictly inside one class: every pixel of its
``P x P`` footprint carries one of that class's codes. A validation or test patch only
needs its centre in the class and may cross area boundaries. All footprints lie inside
the image. Centres follow the runtime's convention: footprint rows ``cy - P//2 ..``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from brainrt.bundle import sha256_file
from brainrt.errors import BrainrtError, file_error
from brainrt.io import read_tiff

SPLITS = ("train", "val", "test")

#: The shared dataset's codes as the paper used them (Prasad et al. 2020, slice309).
PRESETS = {
    "prasad2020": {
        "classes": {"Ctx": [1], "Str": [2], "VP": [4], "ZI": [5], "HypoTh": [7], "WM": [6, 8]},
        "ignore": [3],
        "unlabeled": [0],
    },
}


@dataclass(frozen=True)
class ClassMap:
    """Which mask codes form which class; ``ignore`` and ``unlabeled`` codes are skipped."""

    names: tuple
    codes: tuple  # tuple of tuples, one per class
    ignore: tuple = ()
    unlabeled: tuple = (0,)

    @classmethod
    def from_dict(cls, d, *, source="class map"):
        try:
            classes = d["classes"]
            names = tuple(str(k) for k in classes)
            codes = tuple(tuple(int(c) for c in v) for v in classes.values())
            ignore = tuple(int(c) for c in d.get("ignore", ()))
            unlabeled = tuple(int(c) for c in d.get("unlabeled", (0,)))
        except (KeyError, TypeError, ValueError, AttributeError):
            raise file_error(source, 'expected {"classes": {"name": [codes...]}, "ignore": [...], "unlabeled": [...]}') from None
        if len(names) < 2:
            raise file_error(source, f"needs at least 2 classes, got {len(names)}")
        flat = [c for cs in codes for c in cs] + list(ignore) + list(unlabeled)
        if len(flat) != len(set(flat)):
            raise file_error(source, "a mask code is listed more than once")
        return cls(names=names, codes=codes, ignore=ignore, unlabeled=unlabeled)

    @classmethod
    def resolve(cls, spec):
        """A preset name or the path of a JSON class-map file."""
        if spec in PRESETS:
            return cls.from_dict(PRESETS[spec], source=spec)
        path = Path(spec)
        if not path.is_file():
            raise file_error(spec, f"no such class-map file, and not a preset ({', '.join(PRESETS)})")
        try:
            d = json.loads(path.read_text())
        except ValueError as exc:
            raise file_error(path, f"not valid JSON ({exc})") from None
        return cls.from_dict(d, source=path)

    def to_dict(self):
        return {"classes": {n: list(c) for n, c in zip(self.names, self.codes)},
                "ignore": list(self.ignore), "unlabeled": list(self.unlabeled)}

    def class_index(self, mask, *, source="label mask"):
        """Map mask codes to class indices (int8, -1 = ignored/unlabeled); check every code."""
        lut = np.full(int(mask.max()) + 1, -2, np.int16)
        for c in self.ignore + self.unlabeled:
            if c < lut.size:
                lut[c] = -1
        for i, cs in enumerate(self.codes):
            for c in cs:
                if c < lut.size:
                    lut[c] = i
        if mask.min() < 0:
            raise file_error(source, "holds negative codes")
        out = lut[mask]
        unknown = np.unique(mask[out == -2])
        if unknown.size:
            raise file_error(source, f"holds codes {unknown.tolist()} that the class map neither uses nor ignores")
        if not (out >= 0).any():
            raise file_error(source, "holds no pixel of any class in the class map")
        return out.astype(np.int8)


@dataclass
class Slice:
    """One annotated slice: image, class-index map and provenance."""

    image_path: Path
    mask_path: Path
    image: np.ndarray
    labels: np.ndarray  # int8 class indices, -1 = none
    sha256: dict = field(default_factory=dict)


def load_slice(image_path, mask_path, class_map: ClassMap, *, z=None) -> Slice:
    image, _ = read_tiff(image_path, z=z, what="image")
    mask, _ = read_tiff(mask_path, z=z, what="label mask")
    if image.shape != mask.shape:
        raise file_error(mask_path, f"label mask shape {mask.shape} differs from image {Path(image_path).name} shape {image.shape}")
    if mask.dtype.kind == "f":
        if not np.array_equal(mask, np.round(mask)):
            raise file_error(mask_path, "label mask holds non-integer values")
        mask = mask.astype(np.int64)
    labels = class_map.class_index(mask, source=mask_path)
    return Slice(Path(image_path), Path(mask_path), image, labels,
                 {"image": sha256_file(image_path), "mask": sha256_file(mask_path)})


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


@dataclass
class PatchSet:
    """Patches of one split: slice index, centre (cy, cx) and class index per patch."""

    slice_idx: np.ndarray
    centres: np.ndarray
    labels: np.ndarray

    def __len__(self):
        return int(self.labels.size)


def _slice_fractions(n, k, fractions):
    """Split shares for slice k of n when splitting by bands (n = 1 or 2: the second slice is all test)."""
    if n == 1:
        return tuple(fractions)
    if k == 0:
        t, v = fractions[0], fractions[1]
        return (t / (t + v), v / (t + v), 0.0)
    return (0.0, 0.0, 1.0)


def eligible_positions(slices, *, n_classes, patch_size, gap, fractions, seed, layout="rows"):
    """Eligible centres per split and class: ``{split: [array (n, 3) of (slice, cy, cx)]}``.

    With three or more slices each slice goes whole to one split (the last to test, the
    one before to validation). Otherwise see :func:`split_regions`.
    """
    P = patch_size
    n = len(slices)
    out = {s: [[] for _ in range(n_classes)] for s in SPLITS}
    info = []
    for k, sl in enumerate(slices):
        h, w = sl.labels.shape
        if P > h or P > w:
            raise file_error(sl.image_path, f"patch size {P} is larger than the image ({h} x {w})")
        inside_img = box_all(np.ones((h, w), bool), P)
        strict = [box_all(sl.labels == c, P) for c in range(n_classes)]
        centre = [(sl.labels == c) & inside_img for c in range(n_classes)]
        if n >= 3:
            owner = "test" if k == n - 1 else "val" if k == n - 2 else "train"
            region = {s: [(strict if s == "train" else centre)[c] if s == owner else None
                          for c in range(n_classes)] for s in SPLITS}
            info.append({"slice": k, "split": owner})
        else:
            fr = _slice_fractions(n, k, fractions)
            rng = np.random.default_rng([seed, k])
            per_class = []
            region = split_regions(strict, centre, patch_size=P, gap=gap, fractions=fr, rng=rng, report=per_class,
                                   layout=layout)
            info.append({"slice": k, "layout": f"{layout} bands per class", "fractions": list(fr),
                         "per_class": per_class})
        for s in SPLITS:
            for c in range(n_classes):
                if region[s][c] is not None:
                    ys, xs = np.nonzero(region[s][c])
                    out[s][c].append(np.stack([np.full(ys.size, k), ys, xs], axis=1))
    return out, info


def draw_balanced(pools, n_per_class, rng):
    """A balanced :class:`PatchSet`: up to ``n_per_class`` distinct positions from each class's
    pool of eligible ``(slice, cy, cx)``, shuffled (the first draw of every split, and each
    epoch's fresh training set)."""
    chosen = []
    for c, pool in enumerate(pools):
        take = min(n_per_class, len(pool))
        idx = rng.choice(len(pool), size=take, replace=False) if take else np.zeros(0, np.int64)
        chosen.append(np.concatenate([pool[idx], np.full((take, 1), c)], axis=1))
    arr = np.concatenate(chosen).astype(np.int64)
    arr = arr[rng.permutation(len(arr))]
    return PatchSet(arr[:, 0], arr[:, 1:3], arr[:, 3])


def sample_patches(slices, *, n_classes, patch_size, n_per_class, gap=None,
                   fractions=(0.6, 0.2, 0.2), seed=0, layout="rows", pools=None):
    """Sample balanced train/val/test patches; return ``{split: PatchSet}`` and a report.

    The report holds the split layout and, per split and class, how many patches were
    asked for, how many distinct positions were eligible and how many were taken. A
    list passed as ``pools`` receives the training pools (one array of eligible
    ``(slice, cy, cx)`` per class), for :func:`draw_balanced` to redraw training patches.
    """
    gap = patch_size if gap is None else gap
    rng = np.random.default_rng(seed)
    cand, layout = eligible_positions(slices, n_classes=n_classes, patch_size=patch_size,
                                      gap=gap, fractions=fractions, seed=seed, layout=layout)
    mode = "by slice" if len(slices) >= 3 else "by spatial bands per class"
    sets, report = {}, {"mode": mode, "gap": gap, "layout": layout, "per_split": {}}
    for s in SPLITS:
        want = n_per_class[s]
        split_pools = [np.concatenate(cand[s][c]) if cand[s][c] else np.zeros((0, 3), np.int64)
                       for c in range(n_classes)]
        sets[s] = draw_balanced(split_pools, want, rng)
        report["per_split"][s] = {c: {"asked": int(want), "eligible_positions": int(len(pool)),
                                      "taken": int(min(want, len(pool)))} for c, pool in enumerate(split_pools)}
        if s == "train" and pools is not None:
            pools.extend(split_pools)
    for s in SPLITS:
        if len(sets[s]) == 0:
            raise BrainrtError(f"no {s} patch could be placed; the annotated areas are too small for "
                               f"{patch_size} px patches with a {gap} px gap (try --patch-size or --gap)")
    trained = [c for c in range(n_classes) if report["per_split"]["train"][c]["taken"] > 0]
    if len(trained) < 2:
        raise BrainrtError(
            f"training patches of {patch_size} px fit strictly inside fewer than 2 classes; "
            "use a smaller --patch-size or larger areas")
    return sets, report


def extract(slices, patches: PatchSet, patch_size):
    """Cut the patches out as a uint8/uint16/float array ``(N, P, P)``."""
    P, a = patch_size, patch_size // 2
    dtype = slices[0].image.dtype
    out = np.empty((len(patches), P, P), dtype)
    for i, (k, (cy, cx)) in enumerate(zip(patches.slice_idx, patches.centres)):
        out[i] = slices[k].image[cy - a : cy - a + P, cx - a : cx - a + P]
    return out


def reflect_pad(image, pad):
    """``image`` mirrored by ``pad`` pixels on every side, as the runtime's tiling reads it.

    numpy.pad's ``reflect`` (the edge pixel is not repeated), folded as often as needed,
    so a pad wider than the image still matches the runtime.
    """
    def idx(n):
        i = np.abs(np.arange(-pad, n + pad)) % max(2 * (n - 1), 1)
        return np.where(i >= n, 2 * (n - 1) - i, i)

    return image[np.ix_(idx(image.shape[0]), idx(image.shape[1]))]


def extract_context(slices, patches: PatchSet, patch_size, factor):
    """The ``factor * P`` footprint around each patch, averaged ``factor`` x ``factor``: float32 ``(N, P, P)``.

    Same centre as the patch (footprint rows ``cy - factor*P//2 ..``); pixels past the
    image edge are mirrored exactly as the runtime mirrors them.
    """
    P = patch_size
    Fp, a = factor * P, factor * P // 2
    out = np.empty((len(patches), P, P), np.float32)
    padded = {}
    for i, (k, (cy, cx)) in enumerate(zip(patches.slice_idx, patches.centres)):
        if k not in padded:
            padded[k] = reflect_pad(slices[k].image, a)
        win = padded[k][cy : cy + Fp, cx : cx + Fp].astype(np.float32)  # (cy - a) + a
        out[i] = win.reshape(P, factor, P, factor).mean(axis=(1, 3))
    return out
