"""Intensity standardization: map a slice's tissue histogram onto the training tissue's.

Slices of one volume, and slices of different instruments, differ in brightness,
contrast, gamma and gray-level depth (slice309 holds 19 levels, its neighbours 256).
The bundle records the quantiles of its training tissue (:func:`tissue_quantiles`); a new
slice is mapped value by value so that its tissue quantiles land on them
(:func:`fit_map`, then :meth:`IntensityMap.apply`).

The map is monotone and built from a histogram accumulated over row bands (bounded
memory, like Otsu). Each gray value ``v`` goes to the training quantile at the
mid-rank of ``v`` in the new tissue, ``(F(v-) + F(v)) / 2``: discrete histograms (19
levels) map level to level, and a slice mapped onto its own quantiles barely moves.
Integer images keep their dtype (a lookup table, rounded to the nearest level); float
images map through a piecewise-linear curve. :func:`standardize_image` does the whole
step for a slice (the input edge calls it); :func:`intensity_scale` is the factor that
brings a pixel type to the unit range the network was trained on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from .tissue import auto_threshold

log = logging.getLogger("brainrt")

#: Probabilities at which the training tissue's quantiles are stored.
N_QUANTILES = 1001
#: Rows per band when the histogram is accumulated (bounded memory).
BAND = 512
#: Bins of the histogram of float images.
FLOAT_BINS = 4096


def _histogram(image, threshold):
    """``(values, counts)`` of the pixels above ``threshold`` (tissue), band by band."""
    bands = range(0, image.shape[0], BAND)
    if image.dtype.kind in "ui":
        n = int(np.iinfo(image.dtype).max) + 1
        counts = np.zeros(n, np.int64)
        for y in bands:
            b = image[y : y + BAND]
            counts += np.bincount(b[b > threshold].ravel(), minlength=n)
        return np.arange(n, dtype=np.float64), counts
    finite = [b[np.isfinite(b) & (b > threshold)] for b in (image[y : y + BAND] for y in bands)]
    lo = min((float(v.min()) for v in finite if v.size), default=0.0)
    hi = max((float(v.max()) for v in finite if v.size), default=1.0)
    hi = hi if hi > lo else lo + 1.0
    counts = sum(np.histogram(v, bins=FLOAT_BINS, range=(lo, hi))[0] for v in finite)
    edges = np.linspace(lo, hi, FLOAT_BINS + 1)
    return 0.5 * (edges[:-1] + edges[1:]), np.asarray(counts, np.int64)


def _mid_ranks(counts):
    """Mid-rank ``(F(v-) + F(v)) / 2`` of every histogram bin, in [0, 1]."""
    cdf = np.cumsum(counts, dtype=np.float64)
    total = cdf[-1]
    return (cdf - 0.5 * counts) / total


def tissue_quantiles(images_and_thresholds) -> np.ndarray:
    """Quantiles (at ``N_QUANTILES`` even probabilities) of the tissue of several images.

    ``images_and_thresholds`` yields ``(image, threshold)``; tissue is ``image > threshold``.
    Values are in the images' own units (0..255 for uint8).
    """
    values, counts = None, None
    for image, threshold in images_and_thresholds:
        v, c = _histogram(np.asarray(image), threshold)
        if values is None:
            values, counts = v, c
        elif v.shape == values.shape and np.array_equal(v, values):
            counts = counts + c
        else:
            raise ValueError("training images must share one pixel type for tissue quantiles")
    if counts is None or counts.sum() == 0:
        raise ValueError("no tissue pixel to take quantiles of")
    cdf = np.cumsum(counts) / counts.sum()
    probs = np.clip(np.linspace(0.0, 1.0, N_QUANTILES), 1e-12, 1.0)  # quantile 0 = darkest tissue value
    idx = np.minimum(np.searchsorted(cdf, probs, side="left"), values.size - 1)
    return values[idx]


@dataclass(frozen=True)
class IntensityMap:
    """A monotone gray-value map: ``values`` (sorted) go to ``targets``."""

    values: np.ndarray
    targets: np.ndarray
    dtype: np.dtype
    out_dtype: np.dtype

    def apply(self, block):
        """``block`` mapped into ``out_dtype`` (the training images' type: integers are the nearest level)."""
        block = np.asarray(block)
        if self.dtype.kind in "ui":
            return self._lut()[block]
        out = np.interp(block, self.values, self.targets)
        return self._cast(out)

    def _lut(self):
        return self._cast(self.targets)

    def _cast(self, x):
        if self.out_dtype.kind in "ui":
            info = np.iinfo(self.out_dtype)
            return np.clip(np.rint(x), info.min, info.max).astype(self.out_dtype)
        return np.asarray(x, np.float32)


def fit_map(image, threshold, target_quantiles, *, out_dtype=None) -> IntensityMap:
    """The map that takes the tissue (``image > threshold``) of ``image`` onto ``target_quantiles``.

    Background (at or below ``threshold``) maps affinely from ``[darkest pixel, darkest
    tissue value]`` onto ``[0, darkest training tissue value)``: it keeps its order and
    stays below the tissue whatever the pixel type, scale or offset of the slice (uint8,
    uint16 x257 or 1000 + v, float /255 or 0..255 give one map). ``target_quantiles``
    come from :func:`tissue_quantiles`, in the units of ``out_dtype`` (default: the image's).
    """
    image = np.asarray(image)
    values, counts = _histogram(image, threshold)
    if counts.sum() == 0:
        raise ValueError("no tissue pixel to standardize")
    tq = np.asarray(target_quantiles, np.float64)
    out_dtype = np.dtype(out_dtype or image.dtype)
    ranks = _mid_ranks(counts)
    seen = counts > 0
    # a monotone curve through (value, mid-rank) of every occupied bin; others interpolate
    r = np.interp(values, values[seen], ranks[seen])
    targets = np.interp(r, np.linspace(0.0, 1.0, tq.size), tq)
    first = float(values[seen][0]) if image.dtype.kind in "ui" else _darkest(image, above=threshold)
    background = _background_curve(_darkest(image), first, float(targets[seen][0]), out_dtype)
    if image.dtype.kind in "ui":
        below = values <= threshold
        targets[below] = background(values[below])
        return IntensityMap(values, targets, image.dtype, out_dtype)
    # float: the histogram spans the tissue only; the curve starts at the darkest pixel
    anchors = np.array([v for v in (_darkest(image), threshold) if v < first] + [first])
    anchors = np.unique(anchors)  # sorted, and a slice without background starts at its tissue
    keep = values > first
    return IntensityMap(np.concatenate([anchors, values[keep]]),
                        np.concatenate([background(anchors[:-1]), [targets[seen][0]], targets[keep]]),
                        image.dtype, out_dtype)


def _darkest(image, above=None):
    """The darkest finite pixel value (above ``above``, if given), band by band."""
    lows = []
    for b in (image[y : y + BAND] for y in range(0, image.shape[0], BAND)):
        b = b[np.isfinite(b)] if image.dtype.kind == "f" else b.ravel()
        b = b if above is None else b[b > above]
        if b.size:
            lows.append(float(b.min()))
    return min(lows)


def _background_curve(lo, first, target_first, out_dtype):
    """Background values ``v`` -> ``(v - lo) / (first - lo) * target_first``, kept a level below ``target_first``."""
    top = target_first - (1.0 if out_dtype.kind in "ui" else 0.0)
    span = first - lo

    def curve(v):
        t = (np.asarray(v, np.float64) - lo) / span * target_first if span > 0 else np.zeros(np.shape(v))
        return np.clip(t, 0.0, max(top, 0.0))

    return curve


def intensity_scale(dtype, peak=None) -> float:
    """Factor that brings pixel values of ``dtype`` to the unit range used in training.

    Float images are taken as [0, 1], unless their brightest value ``peak`` says they hold
    the levels of an integer type (0..255, or 0..65535).
    """
    dtype = np.dtype(dtype)
    if dtype == np.uint8:
        return 1.0 / 255.0
    if dtype == np.uint16:
        return 1.0 / 65535.0
    if peak is not None and peak > 1.0:
        return 1.0 / 255.0 if peak <= 255.0 else 1.0 / 65535.0
    return 1.0


def standardize_image(image, intensity, threshold, trained_dtype):
    """``image`` mapped onto the training tissue's quantiles, in the training pixel type.

    Tissue is ``image > threshold`` (Otsu's threshold when None). A slice with no
    tissue above the threshold is left as it is.
    """
    t = auto_threshold(image, quiet=True) if threshold is None else threshold
    try:
        imap = fit_map(image, t, intensity.quantiles, out_dtype=trained_dtype)
    except ValueError:  # no tissue pixel: nothing to match
        log.warning("intensity standardization skipped: no pixel above the tissue threshold %g", t)
        return image
    return imap.apply(image)
