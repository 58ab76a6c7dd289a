"""Gaussian pooling over tissue cells, streamed by row blocks: the normalized convolution
``G * (x * valid)`` and ``G * valid`` of any channels, for the map regularization (:mod:`brainrt.maps.smooth`)
and the context heads (:mod:`brainrt.heads.context`).

:class:`RowPooler` takes consecutive row blocks of a grid and yields the :class:`Pooled` sums of the
rows whose kernel has fully arrived. Separable filtering with zero padding makes every output value
the same sum of the same inputs in the same order, so the stream equals pooling the whole grid at
once, bit for bit (tests check it). The two passes are numba kernels (no temporaries, both cores): at
stride 1 the bundle's 40 um sigma is a 275-tap kernel. :func:`combine_z` extends the pooling across
the slices of a volume (in-plane sums first, then z: the 3D normalized convolution, separable).
"""

from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np

#: Kernel half-width in sigmas.
TRUNCATE = 4.0
#: Values per column chunk of the row filter (its rows stay in cache while the kernel slides).
_CHUNK = 2048
#: Pooled rows computed at a time (the temporaries of the last steps are this many rows).
EMIT_ROWS = 32


def radius(sigma: float) -> int:
    """Half-width in cells of the Gaussian kernel of ``sigma`` cells."""
    return int(TRUNCATE * float(sigma) + 0.5) if sigma > 0 else 0


def gaussian_kernel(sigma):
    """The normalized Gaussian weights of ``sigma`` cells, ``2 * radius(sigma) + 1`` taps (float32)."""
    r = radius(sigma)
    x = np.arange(-r, r + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).astype(np.float32)


@numba.njit(cache=True)
def _taps(o, x, k, t0, t1, step, base):
    """o[j] += k[t] * x[base + t * step + j] for t = t0 .. t1 - 1, in that order, four taps per pass."""
    n = o.shape[0]
    t = t0
    while t + 4 <= t1:
        w0, w1, w2, w3 = k[t], k[t + 1], k[t + 2], k[t + 3]
        b = base + t * step
        x0, x1, x2, x3 = x[b : b + n], x[b + step : b + step + n], x[b + 2 * step : b + 2 * step + n], \
            x[b + 3 * step : b + 3 * step + n]
        for j in range(n):  # the same rounding, term by term, as adding one tap at a time
            o[j] = (((o[j] + w0 * x0[j]) + w1 * x1[j]) + w2 * x2[j]) + w3 * x3[j]
        t += 4
    while t < t1:
        w, b = k[t], base + t * step
        xs = x[b : b + n]
        for j in range(n):
            o[j] += w * xs[j]
        t += 1


@numba.njit(cache=True, parallel=True)
def _rows_kernel(a, k, lo, n_out, out):
    """out[i] = sum_t k[t] * a[lo + i + t - r] over the rows of ``a`` (zero outside), column chunks in parallel.

    a (n, M) and out (n_out, M) float32; the terms are added in the order of ``t`` for every
    value, so a block of rows gets the very sums the whole grid would.
    """
    n, m = a.shape
    r = (k.shape[0] - 1) // 2
    flat = a.reshape(n * m)
    for c in numba.prange((m + _CHUNK - 1) // _CHUNK):
        c0, c1 = c * _CHUNK, min(m, (c + 1) * _CHUNK)
        for i in range(n_out):
            o = out[i, c0:c1]
            o[:] = 0
            first = lo + i - r  # row of tap 0
            _taps(o, flat, k, max(0, -first), min(k.shape[0], n - first), m, first * m + c0)
    return out


@numba.njit(cache=True, parallel=True)
def _cols_kernel(a, k, out):
    """out[i, j] = sum_t k[t] * a[i, j + t - r] (zero outside) for a, out (n, C, K) float32, rows in parallel."""
    n, c, kk = a.shape
    r = (k.shape[0] - 1) // 2
    m = c * kk
    for i in numba.prange(n):
        padded = np.zeros(m + 2 * r * kk, np.float32)
        padded[r * kk : r * kk + m] = a[i].reshape(m)
        o = out[i].reshape(m)
        o[:] = 0
        _taps(o, padded, k, 0, k.shape[0], kk, 0)
    return out


class Pooled(NamedTuple):
    """Normalized Gaussian sums of a row block: ``num`` (r, C, ch) = G * (x * valid), ``den`` (r, C, 1) = G * valid."""

    num: np.ndarray
    den: np.ndarray
    valid: np.ndarray

    def mean(self):
        """The tissue-weighted neighbourhood mean ``num / den`` of every tissue cell (0 elsewhere)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.valid[..., None], self.num / self.den, 0).astype(np.float32)


class RowPooler:
    """Gaussian pooling over tissue cells of a grid given as consecutive row blocks.

    ``push(values_block, valid_block)`` yields :class:`Pooled` blocks of the rows whose
    kernel has fully arrived (``radius`` rows after them), :data:`EMIT_ROWS` rows at a time;
    ``flush()`` the rest at the end of the grid. Zero padding and one fixed order of terms
    make the stream equal to pooling the whole grid at once, bit for bit. The column-filtered
    rows not yet emitted, and ``radius`` rows before them, wait in buffers reused from block to
    block (no copy of the whole buffer per block: at stride 1 it is hundreds of MB). ``rows``: the
    grid's height, when known: the buffers never hold more (at stride 1 the default 300 um kernel
    reaches past a slice's height, and buffers of 2 radius rows were 1.5x the grid's scores).
    """

    def __init__(self, sigma, *, prepare=None, rows=None):
        self.k, self.r, self.prepare = gaussian_kernel(sigma), radius(sigma), prepare  # prepare(rows): in place, before pooling
        self.rows = rows
        self._num = self._den = self._valid = None  # buffers of rows (capacity, C, ch), (capacity, C, 1), (capacity, C)
        self._n = 0  # rows held in the buffers
        self._done = 0  # rows emitted
        self._first = 0  # grid row of the first buffered row

    def push(self, values, valid):
        valid = np.asarray(valid, bool)
        num, den, v = self._room(len(valid), np.shape(values)[1:])
        num[...] = values
        if self.prepare is not None:
            self.prepare(num)
        num[~valid] = 0
        den[..., 0] = valid
        v[...] = valid
        _cols_kernel(num, self.k, num)  # in place: the kernel reads each row from its own copy
        _cols_kernel(den, self.k, den)
        self._n += len(valid)
        yield from self._emit(final=False)

    def flush(self):
        yield from self._emit(final=True)

    def _room(self, n, cell_shape):
        """Views of the next ``n`` buffer rows (the buffers grown, keeping their rows, when full)."""
        if self._num is None or self._n + n > len(self._num):
            cap = max(self._n + n, 2 * self.r + n)
            if self.rows is not None:  # never more than the rows still to come, and those held
                cap = max(self._n + n, min(cap, self.rows - self._first))
            old = (self._num, self._den, self._valid)
            self._num = np.empty((cap,) + tuple(cell_shape), np.float32)
            self._den = np.empty((cap, cell_shape[0], 1), np.float32)
            self._valid = np.empty((cap, cell_shape[0]), bool)
            for new, buf in zip((self._num, self._den, self._valid), old):
                if buf is not None:
                    new[: self._n] = buf[: self._n]
        rows = slice(self._n, self._n + n)
        return self._num[rows], self._den[rows], self._valid[rows]

    def _emit(self, *, final):
        if self._num is None:
            return
        r, lo, n = self.r, self._first, self._n
        stop = lo + n if final else lo + n - r  # rows whose whole kernel has arrived
        for a in range(self._done, stop, EMIT_ROWS):
            m = min(stop, a + EMIT_ROWS) - a
            num, den = (_rows_kernel(x[:n].reshape(n, -1), self.k, a - lo, m, np.empty((m, x[0].size), np.float32))
                        .reshape((m,) + x.shape[1:]) for x in (self._num, self._den))
            yield Pooled(num, den, self._valid[a - lo : a - lo + m].copy())
        if stop > self._done:
            self._done = stop
            self._drop(max(self._done - r, lo) - lo)  # keep r rows of history

    def _drop(self, keep):
        """Drop the first ``keep`` buffered rows: the rest moves to the front in chunks of at most ``keep``
        rows, so a chunk's source and destination never overlap (no temporary copy)."""
        m = self._n - keep
        if keep > 0:
            for buf in (self._num, self._den, self._valid):
                for i in range(0, m, keep):
                    j = min(m, i + keep)
                    buf[i:j] = buf[keep + i : keep + j]
        self._n, self._first = m, self._first + keep


def pool_grid(values, valid, sigma):
    """:class:`Pooled` sums of a whole grid (one push of a :class:`RowPooler`)."""
    pooler = RowPooler(sigma, rows=len(valid))
    parts = list(pooler.push(values, valid)) + list(pooler.flush())
    return Pooled(*(np.concatenate([getattr(p, f) for p in parts]) for f in Pooled._fields))


def z_kernel(sigma_z):
    """Weights of slices ``z - r .. z + r`` (r = :func:`radius`) along z; ``[1]`` for ``sigma_z <= 0``."""
    return gaussian_kernel(sigma_z) if sigma_z > 0 else np.ones(1, np.float32)


def combine_z(parts, kz, valid):
    """Pooled sums across z: ``parts[t]`` are the in-plane :class:`Pooled` sums of slice ``z - r + t``
    (None beyond the volume: zero padding), weighted by ``kz``; ``valid`` is slice z's tissue.

    In-plane sums first, then z, over numerators and denominators alike: the 3D normalized
    convolution, separable, with one fixed order of terms (a z block == the whole volume).
    """
    num = den = None
    for w, p in zip(kz, parts):
        if p is None:
            continue
        num = w * p.num if num is None else num + w * p.num
        den = w * p.den if den is None else den + w * p.den
    return Pooled(num, den, np.asarray(valid, bool))


def pool_volume(values, valid, sigma, sigma_z):
    """Pooled sums of a whole volume ``(Z, R, C, ch)``: in-plane ``sigma`` cells, across z ``sigma_z`` slices."""
    planes = [pool_grid(v, m, sigma) for v, m in zip(values, valid)]
    kz = z_kernel(sigma_z)
    r = len(kz) // 2
    return [combine_z([planes[z + t - r] if 0 <= z + t - r < len(planes) else None for t in range(len(kz))], kz,
                      valid[z]) for z in range(len(planes))]
