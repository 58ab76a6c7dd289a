"""Where a map should not be trusted: the margin between the two likeliest areas and the entropy of a cell's
(regularized) class probabilities, at grid resolution.

- **margin** ``p1 - p2`` (the two largest probabilities): 0 where two areas are tied, 1 where one area
  holds all the probability;
- **entropy** ``-sum p log p / log K`` (K areas): 0 for a certain cell, 1 for a uniform one.

Both are computed from the probabilities the label map is the argmax of (after the smoothing), so they
describe that map. Off tissue both are NaN. :class:`UncertaintyBands` streams them beside streamed
probabilities (a stride-1 slice never holds either whole); :class:`Tee` feeds one band to several writers.
"""

from __future__ import annotations

import numpy as np

#: The channels of an uncertainty map, in order.
CHANNELS = ("margin", "entropy")


def margin_entropy(p, valid):
    """(..., 2) float32 margin and normalized entropy of probabilities ``p`` (..., K); NaN where not ``valid``."""
    p = np.asarray(p, np.float32)
    k = p.shape[-1]
    out = np.full(p.shape[:-1] + (2,), np.nan, np.float32)
    v = np.asarray(valid, bool)
    q = p[v]
    if k < 2 or not len(q):
        if k < 2:
            out[v] = (1.0, 0.0)
        return out
    top = np.partition(q, k - 2, axis=-1)[:, -2:]
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(q > 0, q * np.log(q), 0.0).sum(-1) / np.log(k)
    out[v] = np.stack([top[:, 1] - top[:, 0], np.clip(h, 0, 1)], -1)
    return out


class UncertaintyBands:
    """A band writer (``write(y0, band)``, ``commit()``, ``abort()``) that writes the margin and entropy of each
    band of probabilities (rows, C, K) into ``writer`` (a 2-channel :class:`~brainrt.outputs.ome_tiff.OmeTiffBands`), the
    cells outside ``valid`` (R, C) NaN."""

    def __init__(self, writer, valid):
        self.writer, self.valid = writer, valid

    def write(self, y0, band):
        self.writer.write(y0, margin_entropy(band, self.valid[y0 : y0 + len(band)]))

    def commit(self):
        self.writer.commit()

    def abort(self):
        self.writer.abort()


class Tee:
    """One band writer that writes every band into each of ``writers`` (commit / abort: all of them)."""

    def __init__(self, *writers):
        self.writers = writers

    def write(self, y0, band):
        for w in self.writers:
            w.write(y0, band)

    def commit(self):
        for w in self.writers:
            w.commit()

    def abort(self):
        for w in self.writers:
            w.abort()
