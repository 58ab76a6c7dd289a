"""What a truth mask holds and which of its pixels to score.

- :func:`check_truth`: a label mask in the bundle's codes, or the one-line error (an image
  passed as a mask, a mask without any pixel of a class); codes the class map does not
  know are counted (and reported by the caller), not silently dropped.
- :func:`training_slice`: the bundle's training slice that a file is (by sha256), so a
  score on the data the model was trained on says so.
- :func:`held_out_region`: the pixels of that slice that the bundle's recorded split
  kept for testing (:mod:`brainrt.split`, the trainer's own rule).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import file_error
from ..model.seal import sha256_file
from ..split import split_footprint

#: A "mask" with more distinct values than this is an image.
MAX_MASK_CODES = 256
#: ... and so is one whose pixels hold codes the class map does not know, for more than this share.
MAX_UNKNOWN_SHARE = 0.5


def check_truth(mask, manifest, name):
    """``{code: pixels}`` of the codes of ``mask`` that the class map does not know; the one-line
    error when the mask is plainly not a label mask of this bundle."""
    codes, counts = np.unique(np.asarray(mask), return_counts=True)
    known = manifest.known_codes
    unknown = {int(c): int(n) for c, n in zip(codes, counts) if int(c) not in known}
    n_unknown, total = sum(unknown.values()), int(counts.sum())
    if codes.size > MAX_MASK_CODES or n_unknown > MAX_UNKNOWN_SHARE * total:
        raise file_error(name, f"does not look like a label mask: {codes.size} distinct values, "
                               f"{100 * n_unknown / total:.0f}% of the pixels hold codes the class map does not know "
                               f"({_codes(unknown)}); pass the area annotation (codes {sorted(known)})")
    classes = {c for cs in manifest.codes_per_class for c in cs}
    if not any(int(c) in classes for c in codes):
        raise file_error(name, f"holds no pixel of any class of the bundle (codes {_codes(dict(zip(codes, counts)))}; "
                               f"the classes' codes are {sorted(classes)})")
    return unknown


def _codes(counts, most=8):
    items = sorted(counts, key=lambda c: -counts[c])[:most]
    more = f", ... ({len(counts)} codes)" if len(counts) > most else ""
    return ", ".join(str(int(c)) for c in items) + more


def training_slice(manifest, *paths):
    """``(index, TrainingSlice)`` of the bundle's training slice whose image or mask one of ``paths`` is
    (by sha256), or None."""
    data = manifest.training.data if manifest.training else ()
    files = [Path(p) for p in paths if p is not None and Path(p).is_file()]
    for p in files:
        digest = sha256_file(p)
        for k, ts in enumerate(data):
            if digest in (ts.image_sha256, ts.mask_sha256):
                return k, ts
    return None


def held_out_region(manifest, truth, k):
    """Pixels of training slice ``k`` (its mask ``truth``) in the footprints of the recorded split's test centres."""
    t = manifest.training
    labels = np.full(truth.shape, -1, np.int8)
    for i, cs in enumerate(manifest.codes_per_class):
        labels[np.isin(truth, cs)] = i
    return split_footprint(labels, k, len(t.data), "test", n_classes=len(manifest.classes),
                           patch_size=manifest.patch_size, gap=t.gap, fractions=t.fractions, seed=t.seed,
                           layout=t.layout)


def check_held_out(manifest, name):
    """Refuse ``--held-out`` for a bundle whose heads were refitted on every label of its training slices
    (``training.final``): its test split is no longer held out, and a score there would be in-sample."""
    final = manifest.training.extra.get("final") if manifest.training is not None else None
    if final:
        raise file_error(name, "nothing of it is held out: the bundle's heads were refitted on every labeled cell "
                               "of its training slices (its manifest's training.final); the honest estimate is the "
                               "split run's, in the model card and training.final.estimate")


def scored_pixels(manifest, truth, name, *, held_out=False, source=None):
    """(``where`` mask or None, record) of a score of ``truth`` (read from ``name``) on ``source``.

    The record says what was scored ("scored_on"), which training slice the data are
    ("training_slice", None if neither file is one) and the unknown codes. ``held_out``
    keeps only the test footprints of the bundle's split; ``truth`` must then be the
    bundle's own training mask.
    """
    unknown = check_truth(truth, manifest, name)
    seen = training_slice(manifest, name, source)
    final = bool(manifest.training.extra.get("final")) if manifest.training is not None else False
    record = {"training_slice": None if seen is None else {"index": seen[0], "image": seen[1].image,
                                                          "image_sha256": seen[1].image_sha256, "final_fit": final},
              "unknown_codes": {str(c): n for c, n in unknown.items()}, "scored_on": "whole slice"}
    if not held_out:
        return None, record
    check_held_out(manifest, name)
    own = training_slice(manifest, name)
    if own is None or own[1].shape and tuple(own[1].shape) != tuple(truth.shape):
        raise file_error(name, "is not a training mask of this bundle (no sha256 in its manifest matches); --held-out "
                               "scores the test split of the bundle's own training slices with their own masks")
    where = held_out_region(manifest, truth, own[0])
    if not where.any():
        raise file_error(name, "the bundle's recorded split keeps no test pixel on this slice")
    record["scored_on"] = f"test split of training slice {own[0]} ({own[1].image}): {int(where.sum())} pixels"
    return where, record
