"""Finishing a slice's map, in 2D and in volumes alike: the head's probability rows in, in order; the map
regularized in the plane as they arrive (:class:`~brainrt.maps.smooth.RowSmoother`), its labels taken (the
argmax, -1 off tissue) and its probabilities handed on, a band of rows at a time.

:class:`SliceMap` is the one place this happens: the streaming classify of a slice feeds it the rows of
each block of the engine (:class:`brainrt.outputs.sinks.ClassifySink`), a volume's finish task the rows of each
band of its stack (:func:`brainrt.volumes.finish.finish_slice`). Where the finished probabilities go is the
caller's ``writer`` (``write(y0, band)``: a slice's OME-TIFF bands and their uncertainty, a volume's
levels), or memory.
"""

from __future__ import annotations

import numpy as np

from .smooth import RowSmoother


class SliceMap:
    """The map of one slice of ``valid`` (R, C) tissue cells, from its probability rows (rows, C, K) pushed
    in order (:meth:`push`); regularized with a Gaussian of ``sigma`` grid cells in ``space`` when ``sigma``
    > 0. Finished bands of probabilities (0 off tissue) go to ``writer.write(y0, band)``, or, without a
    writer, into :attr:`probs` (R, C, K) float32. :meth:`close` gives ``(labels, probs)``: labels (R, C) int16
    class indices, -1 off tissue (always in memory: small); probs None with a writer (a stride-1 slice then
    never holds them whole)."""

    def __init__(self, valid, n_classes, *, sigma=0.0, space="log", writer=None):
        self.valid, self.writer = valid, writer
        self.labels = np.full(valid.shape, -1, np.int16)
        self.probs = np.zeros(valid.shape + (n_classes,), np.float32) if writer is None else None
        self.smoother = RowSmoother(sigma, space=space, rows=len(valid)) if sigma > 0 else None
        self.pushed = self.done = 0  # grid rows pushed / finished (regularized, labelled, handed on)

    def push(self, rows):
        """The next probability rows of the head (in order from row 0)."""
        a = self.pushed
        self.pushed += len(rows)
        for band in [rows] if self.smoother is None else self.smoother.push(rows, self.valid[a : self.pushed]):
            self._finish(band)

    def close(self):
        """The rows the smoother still holds, finished; returns ``(labels, probs)``."""
        if self.smoother is not None:
            for band in self.smoother.flush():
                self._finish(band)
        return self.labels, self.probs

    def _finish(self, band):
        """Labels of the next rows from their (regularized) probabilities; the probabilities to their place."""
        rows = slice(self.done, self.done + len(band))
        v = self.valid[rows]
        band = np.where(v[..., None], band, 0).astype(np.float32)
        self.labels[rows] = np.where(v, band.argmax(-1), -1)
        if self.writer is not None:
            self.writer.write(self.done, band)
        else:
            self.probs[rows] = band
        self.done += len(band)
