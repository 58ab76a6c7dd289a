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

from brainrt.errors import BrainrtError, file_error
from brainrt.model.seal import sha256_file
from brainrt.sources import integer_codes, read_image as read_tiff
from brainrt.split import (LAYOUTS, SPLITS, box_all, footprints, slice_regions, split_regions,  # noqa: F401  (the trainer's names)
                           window_sum)


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
        mask = integer_codes(mask, mask_path)
    labels = class_map.class_index(mask, source=mask_path)
    return Slice(Path(image_path), Path(mask_path), image, labels,
                 {"image": sha256_file(image_path), "mask": sha256_file(mask_path)})


@dataclass
class PatchSet:
    """Patches of one split: slice index, centre (cy, cx) and class index per patch."""

    slice_idx: np.ndarray
    centres: np.ndarray
    labels: np.ndarray

    def __len__(self):
        return int(self.labels.size)


def eligible_positions(slices, *, n_classes, patch_size, gap, fractions, seed, layout="rows"):
    """Eligible centres per split and class: ``{split: [array (n, 3) of (slice, cy, cx)]}``.

    With three or more slices each slice goes whole to one split (the last to test, the
    one before to validation). Otherwise see :func:`brainrt.split.split_regions`.
    """
    P = patch_size
    out = {s: [[] for _ in range(n_classes)] for s in SPLITS}
    info = []
    for k, sl in enumerate(slices):
        h, w = sl.labels.shape
        if P > h or P > w:
            raise file_error(sl.image_path, f"patch size {P} is larger than the image ({h} x {w})")
        region, report = slice_regions(sl.labels, k, len(slices), n_classes=n_classes, patch_size=P, gap=gap,
                                       fractions=fractions, seed=seed, layout=layout)
        info.append(report)
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
    image edge are mirrored exactly as the runtime mirrors them. The block sums come
    from a summed-area table of the mirrored slice (exact integer sums, so a 2048 px
    field costs no more than a 512 px one).
    """
    P = patch_size
    a = factor * P // 2
    out = np.empty((len(patches), P, P), np.float32)
    tables = {}
    steps = np.arange(P + 1) * factor
    for i, (k, (cy, cx)) in enumerate(zip(patches.slice_idx, patches.centres)):
        if k not in tables:
            padded = reflect_pad(slices[k].image, a).astype(np.float64)
            sat = np.zeros((padded.shape[0] + 1, padded.shape[1] + 1))
            np.cumsum(np.cumsum(padded, 0), 1, out=sat[1:, 1:])
            tables[k] = sat
        sat = tables[k]
        r, c = cy + steps, cx + steps  # (cy - a) + a
        s = sat[np.ix_(r, c)]
        out[i] = (s[1:, 1:] - s[:-1, 1:] - s[1:, :-1] + s[:-1, :-1]) / (factor * factor)
    return out
