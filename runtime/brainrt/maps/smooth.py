"""Spatial regularization of class maps: Gaussian smoothing of class scores on the grid.

An area is large; a patch classifier's errors are small and scattered. Smoothing the
class scores of neighbouring cells before the argmax removes most of them. Scores are
smoothed as a normalized convolution over tissue cells only, ``G * (s * valid) / G *
valid``, so background never bleeds into the tissue and the tissue edge is not darkened.
``space="log"`` smooths log-probabilities (a product of neighbouring likelihoods),
``"prob"`` the probabilities themselves.

:class:`RowSmoother` does the same on a stream of row blocks (the streaming classify
path at stride 1 never holds the whole grid): each block waits until ``radius`` rows
after it have arrived; it is a :class:`~brainrt.maps.pooling.RowPooler` of the class scores, so the
stream equals smoothing the whole grid at once, bit for bit (tests check it).
Slices of a volume are smoothed across the same way (a Gaussian along z, normalized over tissue cells), after the in-plane
pass: :func:`smooth_across`. :func:`choose` turns a user's ``smooth`` (micrometres,
None: the bundle's default) into grid cells.
"""

from __future__ import annotations

import logging

import numpy as np

from ..model import params
from .pooling import RowPooler, gaussian_kernel, radius

log = logging.getLogger("brainrt")

#: Floor of probabilities before the log.
EPS = 1e-6


def choose(default, smooth, *, proba, pixel_size_um, stride, owner="classify"):
    """(sigma in grid cells, space) of a classification: ``smooth`` um, or ``default``'s (the bundle's
    :class:`~brainrt.model.manifest.Smoothing`, or None) when ``smooth`` is None; none for a head without
    probabilities (a warning when ``smooth`` asked for it, a log line when it is the bundle's default)."""
    asked = smooth is not None
    if smooth is None:
        smooth = default.sigma_um if default else 0.0
    smooth = params.check(owner, smooth=smooth)["smooth"]
    if smooth > 0 and not proba:
        if asked:
            log.warning("--smooth %g: no smoothing: this head gives no class probabilities", smooth)
        else:
            log.info("no smoothing: this head gives no class probabilities")
        return 0.0, "log"
    return smooth / (pixel_size_um * stride), (default.space if default else "log")


def smooth_across(prob, valid, sigma, at, *, space="log"):
    """Slice ``at`` of ``prob`` (n, rows, cols, K) smoothed across the ``n`` slices by a Gaussian of ``sigma``
    slices (truncated where the window ends), normalized over tissue cells (``valid`` (n, rows, cols)) like
    :func:`smooth_probabilities` in the plane."""
    r = radius(sigma)
    w = gaussian_kernel(sigma)[r - at : r - at + len(prob)]
    num = den = 0.0
    for j in range(len(prob)):  # same order of terms for every cell
        sj, dj = _to_scores(prob[j], valid[j], space)
        num, den = num + w[j] * sj, den + w[j] * dj
    return _from_scores(num, den, valid[at], space)


def _log_scores(x):
    """``log(max(x, EPS))`` in place (the log space's scores)."""
    np.log(np.maximum(x, EPS, out=x), out=x)


def _to_scores(prob, valid, space):
    s = np.log(np.maximum(prob, EPS)) if space == "log" else prob.astype(np.float32)
    return np.where(valid[..., None], s, 0).astype(np.float32), valid.astype(np.float32)[..., None]


def _from_scores(num, den, valid, space):
    """Smoothed probabilities from the smoothed scores and weights, in place of ``num`` (returned)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        s = np.divide(num, den, out=num)
    if space == "log":
        s -= s.max(axis=-1, keepdims=True)
        np.exp(s, out=s)
    s /= s.sum(axis=-1, keepdims=True)
    s[~valid] = 0
    return s


def smooth_probabilities(prob, valid, sigma, *, space="log"):
    """Smoothed class probabilities ``(rows, cols, K)`` of tissue cells; ``sigma`` in cells.

    ``sigma <= 0`` returns the probabilities unchanged (off-tissue cells zeroed).
    """
    prob, valid = np.asarray(prob, np.float32), np.asarray(valid, bool)
    if sigma <= 0:
        return np.where(valid[..., None], prob, 0).astype(np.float32)
    sm = RowSmoother(sigma, space=space, rows=len(prob))
    blocks = list(sm.push(prob, valid)) + list(sm.flush())
    return np.concatenate([b for b in blocks], axis=0) if blocks else prob[:0]


class RowSmoother:
    """Smooth a grid given as consecutive row blocks; yields smoothed blocks in order.

    ``push(prob_block, valid_block)`` yields the rows that can be finished; ``flush()``
    yields the rest at the end of the grid. A :class:`RowPooler` of the class scores (``rows``: the
    grid's height, when known).
    """

    def __init__(self, sigma, *, space="log", rows=None):
        if space not in ("log", "prob"):
            raise ValueError(f"space must be 'log' or 'prob', got {space!r}")
        self.pooler = RowPooler(sigma, prepare=_log_scores if space == "log" else None, rows=rows)
        self.space = space
        self.k, self.r = self.pooler.k, self.pooler.r

    def push(self, prob, valid):
        yield from self._finish(self.pooler.push(prob, valid))

    def flush(self):
        yield from self._finish(self.pooler.flush())

    def _finish(self, pooled):
        for p in pooled:
            yield _from_scores(p.num, p.den, p.valid, self.space)
