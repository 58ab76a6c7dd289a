"""Painted strokes on a stride grid: which cells they label, and the samples they give (a lab's own areas).

A stroke image is a sparse label image of a slice: 0 = unlabeled, other values = mask codes of a
class map (a :class:`~brainrt.bundle.derive.ClassTable`). One stroke is a connected component of one code. A
grid cell takes the stroke that covers most of its stride x stride pixels (:func:`cell_labels`); the
features of those cells, with their class and stroke, are the :class:`Samples` that
:mod:`brainrt.fit` fits heads on (:func:`samples_of_grid`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from ..errors import file_error

log = logging.getLogger("brainrt")


@dataclass(frozen=True)
class CellLabels:
    """Strokes on a stride grid: ``classes`` (R, C) class index (-1: no stroke), ``strokes`` (R, C) stroke id
    (-1: none, ids unique over everything fitted together), ``n_strokes`` and ``pixels`` per class."""

    classes: np.ndarray
    strokes: np.ndarray
    n_strokes: int
    pixels: np.ndarray

    @property
    def mask(self):
        return self.classes >= 0


def _stroke_pixels(strokes, table, source):
    """(rows, cols, class index, stroke number from 1) of every stroke pixel; one stroke is a connected
    component (8-neighbours) of one class. Works on the strokes' bounding box only."""
    from scipy.ndimage import label

    strokes = np.asarray(strokes)
    rows, cols = np.flatnonzero(strokes.any(axis=1)), np.flatnonzero(strokes.any(axis=0))
    if not rows.size:
        table.class_index(strokes[:1, :1], source=source)  # the pixel type is checked all the same
        return (np.zeros(0, np.int64),) * 4
    r0, c0 = rows[0], cols[0]
    idx = table.class_index(strokes[r0 : rows[-1] + 1, c0 : cols[-1] + 1], source=source)
    lab, _ = label(idx >= 0, structure=np.ones((3, 3), bool))
    ys, xs = np.nonzero(lab)
    k = idx[ys, xs].astype(np.int64)
    _, comp = np.unique(lab[ys, xs] * len(table.names) + k, return_inverse=True)  # touching classes split
    return ys + r0, xs + c0, k, comp.ravel() + 1


def cell_labels(strokes, table, stride, grid_shape, *, source="strokes", first_id=0):
    """:class:`CellLabels` of a stroke image (codes of ``table``, a :class:`~brainrt.bundle.derive.ClassTable`)."""
    ys, xs, k, comp = _stroke_pixels(strokes, table, source)
    R, C = grid_shape
    n = int(comp.max()) if comp.size else 0
    pixels = np.bincount(k, minlength=len(table.names))
    if n == 0:
        return CellLabels(np.full((R, C), -1, np.int16), np.full((R, C), -1, np.int64), 0, pixels)
    cell = (ys // stride) * C + xs // stride
    keys, counts = np.unique(cell * (n + 1) + comp, return_counts=True)
    cells, comps = keys // (n + 1), keys % (n + 1)
    order = np.lexsort((-counts, cells))  # per cell, the stroke covering most of it first
    first = order[np.r_[True, cells[order][1:] != cells[order][:-1]]]
    stroke_of = np.full(R * C, -1, np.int64)
    stroke_of[cells[first]] = comps[first]
    class_of_comp = np.full(n + 1, -1, np.int64)
    class_of_comp[comp] = k
    classes = np.where(stroke_of > 0, class_of_comp[np.maximum(stroke_of, 0)], -1).reshape(R, C)
    ids = np.where(stroke_of > 0, stroke_of - 1 + first_id, -1).reshape(R, C)
    return CellLabels(classes.astype(np.int16), ids, n, pixels)


@dataclass
class Samples:
    """Stroke cells' features ``X`` (N, F) float32, class indices ``y``, stroke ids ``groups``, and per class
    the strokes, cells and pixels they came from (``dropped``: stroke cells off the tissue)."""

    X: np.ndarray
    y: np.ndarray
    groups: np.ndarray
    pixels: np.ndarray
    dropped: int = 0
    sources: list = field(default_factory=list)

    @classmethod
    def concat(cls, parts):
        return cls(np.concatenate([p.X for p in parts]), np.concatenate([p.y for p in parts]),
                   np.concatenate([p.groups for p in parts]), sum(p.pixels for p in parts),
                   sum(p.dropped for p in parts), [s for p in parts for s in p.sources])

    def counts(self, names):
        """Per class name: strokes, cells and stroke pixels."""
        return {n: {"strokes": int(np.unique(self.groups[self.y == i]).size), "cells": int((self.y == i).sum()),
                    "pixels": int(self.pixels[i])} for i, n in enumerate(names)}


def samples_of_grid(features, valid, cells, *, source="strokes"):
    """:class:`Samples` of the stroke cells of a feature grid (``features`` (R, C, F), ``valid`` (R, C)).

    A stroke none of whose cells is featurized (valid) lies outside the tissue: an error."""
    on = cells.mask & np.asarray(valid, bool)
    lost = np.setdiff1d(np.unique(cells.strokes[cells.mask]), np.unique(cells.strokes[on]))
    if lost.size:
        r, c = np.argwhere(cells.strokes == lost[0])[0]
        raise file_error(source, f"{lost.size} stroke(s) lie outside the tissue (no featurized cell under them; the "
                                 f"first near grid cell ({r}, {c})); paint on tissue or give a tissue mask")
    dropped = int((cells.mask & ~on).sum())
    if dropped:
        log.info("%s: %d stroke cells off the tissue were left out", source, dropped)
    X = np.asarray(features[on] if isinstance(features, np.ndarray) else np.asarray(features)[on], np.float32)
    return Samples(X, cells.classes[on].astype(np.int64), cells.strokes[on], cells.pixels, dropped, [source])
