"""Spatial regularization of class maps: Gaussian smoothing of class scores on the grid.

An area is large; a patch classifier's errors are small and scattered. Smoothing the
class scores of neighbouring cells before the argmax removes most of them. Scores are
smoothed as a normalized convolution over tissue cells only, ``G * (s * valid) / G *
valid``, so background never bleeds into the tissue and the tissue edge is not darkened.
``space="log"`` smooths log-probabilities (a product of neighbouring likelihoods),
``"prob"`` the probabilities themselves.

:class:`RowSmoother` does the same on a stream of row blocks (the streaming classify
path at stride 1 never holds the whole grid): each block waits until ``radius`` rows
after it have arrived. Separable filtering with zero padding makes every output value
the same sum of the same inputs, so the stream equals smoothing the whole grid at once,
bit for bit (tests check it).
"""

from __future__ import annotations

import numpy as np

#: Kernel half-width in sigmas.
TRUNCATE = 4.0
#: Floor of probabilities before the log.
EPS = 1e-6


def radius(sigma: float) -> int:
    """Half-width in cells of the Gaussian kernel of ``sigma`` cells."""
    return int(TRUNCATE * float(sigma) + 0.5) if sigma > 0 else 0


def _kernel(sigma):
    r = radius(sigma)
    x = np.arange(-r, r + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).astype(np.float32)


def _filter_rows(a, k, r, top, out_rows):
    """Filter along axis 0: output rows ``top .. top + out_rows`` of ``a`` (rows already padded by ``r``)."""
    out = np.zeros((out_rows,) + a.shape[1:], np.float32)
    for t, w in enumerate(k):  # same order of terms for every row: block == whole grid
        out += w * a[top + t : top + t + out_rows]
    return out


def _filter_cols(a, k, r):
    padded = np.zeros((a.shape[0], a.shape[1] + 2 * r) + a.shape[2:], np.float32)
    padded[:, r : r + a.shape[1]] = a
    out = np.zeros_like(a, dtype=np.float32)
    for t, w in enumerate(k):
        out += w * padded[:, t : t + a.shape[1]]
    return out


def _to_scores(prob, valid, space):
    s = np.log(np.maximum(prob, EPS)) if space == "log" else prob.astype(np.float32)
    return np.where(valid[..., None], s, 0).astype(np.float32), valid.astype(np.float32)[..., None]


def _from_scores(num, den, valid, space):
    with np.errstate(invalid="ignore", divide="ignore"):
        s = num / den
    if space == "log":
        s = np.exp(s - s.max(axis=-1, keepdims=True))
    s = s / s.sum(axis=-1, keepdims=True)
    return np.where(valid[..., None], s, 0).astype(np.float32)


def smooth_probabilities(prob, valid, sigma, *, space="log"):
    """Smoothed class probabilities ``(rows, cols, K)`` of tissue cells; ``sigma`` in cells.

    ``sigma <= 0`` returns the probabilities unchanged (off-tissue cells zeroed).
    """
    prob, valid = np.asarray(prob, np.float32), np.asarray(valid, bool)
    if sigma <= 0:
        return np.where(valid[..., None], prob, 0).astype(np.float32)
    sm = RowSmoother(sigma, space=space)
    blocks = list(sm.push(prob, valid)) + list(sm.flush())
    return np.concatenate([b for b in blocks], axis=0) if blocks else prob[:0]


class RowSmoother:
    """Smooth a grid given as consecutive row blocks; yields smoothed blocks in order.

    ``push(prob_block, valid_block)`` yields the rows that can be finished; ``flush()``
    yields the rest at the end of the grid.
    """

    def __init__(self, sigma, *, space="log"):
        if space not in ("log", "prob"):
            raise ValueError(f"space must be 'log' or 'prob', got {space!r}")
        self.k, self.r, self.space = _kernel(sigma), radius(sigma), space
        self._num = self._den = self._valid = None  # column-filtered rows not yet emitted, plus r rows before
        self._done = 0  # rows emitted
        self._first = 0  # grid row of the first buffered row

    def push(self, prob, valid):
        num, den = _to_scores(np.asarray(prob, np.float32), np.asarray(valid, bool), self.space)
        num, den = _filter_cols(num, self.k, self.r), _filter_cols(den, self.k, self.r)
        self._append(num, den, np.asarray(valid, bool))
        yield from self._emit(final=False)

    def flush(self):
        yield from self._emit(final=True)

    def _append(self, num, den, valid):
        if self._num is None:
            self._num, self._den, self._valid = num, den, valid
        else:
            self._num = np.concatenate([self._num, num])
            self._den = np.concatenate([self._den, den])
            self._valid = np.concatenate([self._valid, valid])

    def _emit(self, *, final):
        if self._num is None:
            return
        r, total = self.r, self._first + len(self._num)  # grid rows received so far
        stop = total if final else total - r  # rows whose whole kernel has arrived
        if stop <= self._done:
            return
        lo = self._first  # zero-pad: above row 0, and below the last row at the end
        pad_top = r - (self._done - lo) if self._done - lo < r else 0
        a0 = self._done - r + pad_top - lo  # first buffered row the kernel needs
        span = slice(a0, stop + r - lo)
        pad_bot = max(0, (stop + r) - total)
        def padded(x):
            z = lambda n: np.zeros((n,) + x.shape[1:], x.dtype)
            return np.concatenate([z(pad_top), x[span], z(pad_bot)])
        n = stop - self._done
        num = _filter_rows(padded(self._num), self.k, r, 0, n)
        den = _filter_rows(padded(self._den), self.k, r, 0, n)
        valid = self._valid[self._done - lo : stop - lo]
        yield _from_scores(num, den, valid, self.space)
        self._done = stop
        keep = max(self._done - r, lo) - lo  # keep r rows of history
        self._num, self._den, self._valid = self._num[keep:], self._den[keep:], self._valid[keep:]
        self._first = lo + keep
