"""Where the tissue is: Otsu threshold, per-cell tissue fraction and the grid to featurize.

Cells follow :mod:`brainrt.geometry`: cell ``(i, j)`` of stride ``s`` is the patch of
``P`` pixels centred on ``(i * s + s // 2, j * s + s // 2)``. A cell is featurized when
at least ``min_fraction`` of its patch footprint is tissue; footprint pixels outside the
image count as background.
"""

from __future__ import annotations

import logging

import numpy as np

from brainrt.errors import BrainrtError, check_float, check_image, check_positive_int, file_error
from brainrt.geometry import cell_centre, grid_shape

log = logging.getLogger("brainrt")

#: Bins of the histogram of float images.
FLOAT_BINS = 256


#: Rows per band when a whole-slice statistic is accumulated (bounded memory).
OTSU_BAND = 512


def otsu_threshold(image) -> float:
    """Otsu's threshold: the split maximizing the between-class variance of the histogram.

    Integer images use one bin per value between their min and max; float images use
    256 bins over ``[min, max]`` of their finite values (NaN and inf are ignored).

    Parameters
    ----------
    image : ndarray, shape (H, W)
        uint8, uint16, float32 or float64.

    Returns
    -------
    threshold : float
        Foreground is ``image > threshold``. For integer images it is the largest value
        of the dark class; for float images the upper edge of the dark class's last bin.
        A constant image returns its value (no foreground).
    """
    return _otsu(check_image(image, finite=False))


#: Otsu's separability (between-class / total variance) below which a histogram has one mode:
#: a Gaussian gives 0.64, all-tissue crops of slice309 0.58-0.62, whole slices 0.77-0.85.
UNIMODAL_SEPARABILITY = 0.7


def auto_threshold(image, *, quiet=False) -> float:
    """Otsu's threshold, or just below the darkest pixel when the histogram has no background mode.

    Otsu splits any histogram in two; on a crop that is all tissue it would call the
    darker half background. When Otsu's separability is below
    :data:`UNIMODAL_SEPARABILITY` every pixel counts as tissue (logged unless ``quiet``).
    No input validation.
    """
    t, separability = _otsu(image, separability=True)
    if separability >= UNIMODAL_SEPARABILITY:
        return t
    if not quiet:
        log.info("no background in the intensity histogram (Otsu separability %.2f < %.2f): every pixel counts "
                 "as tissue; pass a threshold or a tissue mask to choose otherwise", separability, UNIMODAL_SEPARABILITY)
    lo = float(np.nanmin(image))
    return lo - (1.0 if image.dtype.kind in "ui" else max(abs(lo), 1.0) * 1e-6)  # representable in float32


def _otsu(image, *, separability=False):
    """:func:`otsu_threshold` without input validation (and Otsu's separability, if asked)."""
    bands = [image[y : y + OTSU_BAND] for y in range(0, image.shape[0], OTSU_BAND)]  # bounded memory
    if image.dtype.kind == "f":
        finite = [b[np.isfinite(b)] for b in bands]
        finite = [v for v in finite if v.size]
        if not finite:
            raise file_error("image", "holds no finite values; Otsu needs some")
        lo, hi = min(float(v.min()) for v in finite), max(float(v.max()) for v in finite)
        if lo == hi:
            return (lo, 1.0) if separability else lo
        counts = sum(np.histogram(v, bins=FLOAT_BINS, range=(lo, hi))[0] for v in finite)
        edges = np.linspace(lo, hi, FLOAT_BINS + 1)
        levels = 0.5 * (edges[:-1] + edges[1:])
        splits = edges[1:]
    else:
        lo, hi = int(image.min()), int(image.max())
        if lo == hi:
            return (float(lo), 1.0) if separability else float(lo)
        counts = np.zeros(hi - lo + 1, np.int64)
        for b in bands:
            counts += np.bincount((b.ravel() - image.dtype.type(lo)).astype(np.intp), minlength=hi - lo + 1)
        levels = lo + np.arange(counts.size, dtype=np.float64)
        splits = levels
    p = counts / counts.sum()
    w0 = np.cumsum(p)[:-1]
    mu = np.cumsum(p * levels)[:-1]
    mu_t = float(np.dot(p, levels))
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mu_t * w0 - mu) ** 2 / (w0 * (1.0 - w0))
    between[~np.isfinite(between)] = -1.0
    best = int(np.argmax(between))
    if not separability:
        return float(splits[best])
    total = float(np.dot(p, (levels - mu_t) ** 2))
    return float(splits[best]), (float(between[best]) / total if total > 0 else 1.0)


def box_fraction(mask, patch_size, stride) -> np.ndarray:
    """Fraction of each grid cell's patch footprint that is tissue, by a summed-area table.

    Parameters
    ----------
    mask : ndarray of bool, shape (H, W)
        Tissue mask (nonzero = tissue).
    patch_size : int
        Side ``P`` of the patches.
    stride : int
        Grid stride ``s``.

    Returns
    -------
    fraction : ndarray of float32, shape grid_shape((H, W), s)
        ``sum(mask[footprint]) / P**2``, the footprint clipped to the image (pixels
        outside count as background).
    """
    owner = "box_fraction"
    patch_size = check_positive_int(patch_size, "patch_size", owner)
    stride = check_positive_int(stride, "stride", owner)
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise BrainrtError(f"The mask of {owner} must be 2D. Got shape {mask.shape} instead.")
    return _box_fraction_bands(lambda a, b: mask[a:b] != 0, mask.shape, patch_size, stride)


def _box_fraction_bands(band, shape, patch_size, stride, band_rows=1024):
    """:func:`box_fraction` with the mask read a band of rows at a time (``band(y0, y1)``).

    Only the rows of the summed-area table that some footprint starts or ends on are
    formed, and each is dropped once no later grid row needs it, so memory stays at a
    few table rows whatever the slice size.
    """
    h, w = shape
    rows, cols = grid_shape((h, w), stride)
    top = cell_centre(np.arange(rows, dtype=np.int64), stride) - patch_size // 2
    left = cell_centre(np.arange(cols, dtype=np.int64), stride) - patch_size // 2
    t, b = np.clip(top, 0, h), np.clip(top + patch_size, 0, h)
    l, r = np.clip(left, 0, w), np.clip(left + patch_size, 0, w)
    out = np.empty((rows, cols), np.float32)
    colcount = np.zeros(w, np.int64)  # tissue pixels in rows [0, y) of each column
    y, nxt, cache = 0, 0, {}
    for yk in np.unique(np.concatenate([t, b])):
        while y < yk:
            y1 = min(yk, y + band_rows)
            colcount += np.count_nonzero(band(y, y1), axis=0)
            y = y1
        cache[yk] = np.concatenate([[0], np.cumsum(colcount)])
        while nxt < rows and b[nxt] == yk:
            sb, st = cache[b[nxt]], cache[t[nxt]]
            out[nxt] = (sb[r] - st[r] - sb[l] + st[l]) / float(patch_size * patch_size)
            nxt += 1
        if nxt < rows:
            cache = {k: v for k, v in cache.items() if k >= t[nxt]}
    return out


def tissue_grid(image, patch_size, stride, *, threshold=None, min_fraction=0.5, mask=None) -> np.ndarray:
    """Grid cells worth featurizing: those whose patch is mostly tissue.

    Parameters
    ----------
    image : ndarray, shape (H, W)
        uint8, uint16, float32 or float64.
    patch_size : int
        Side ``P`` of the patches.
    stride : int
        Grid stride ``s``.
    threshold : float, optional
        Tissue is ``image > threshold``; Otsu's threshold when None. Ignored with ``mask``.
    min_fraction : float
        Smallest tissue fraction of a patch footprint, in [0, 1].
    mask : ndarray of bool or int, shape (H, W), optional
        User tissue mask (nonzero = tissue), used instead of thresholding.

    Returns
    -------
    valid : ndarray of bool, shape grid_shape((H, W), s)
        True for the cells to featurize.
    """
    owner = "tissue_grid"
    image = check_image(image, finite=False)
    patch_size = check_positive_int(patch_size, "patch_size", owner)
    stride = check_positive_int(stride, "stride", owner)
    min_fraction = check_float(min_fraction, "min_fraction", owner, low=0.0, high=1.0)
    if mask is not None:
        mask = check_mask(mask, image.shape, owner)
    elif threshold is not None:
        threshold = check_float(threshold, "threshold", owner)
    return tissue_cells(image, patch_size, stride, threshold=threshold, min_fraction=min_fraction, mask=mask)


def check_mask(mask, shape, owner):
    """A bool or int mask of the image's ``shape``, or the one-line error."""
    mask = np.asarray(mask)
    if mask.shape != shape:
        raise BrainrtError(f"The mask of {owner} must have the image's shape {shape}. Got {mask.shape} instead.")
    if not (mask.dtype == bool or np.issubdtype(mask.dtype, np.integer)):
        raise BrainrtError(f"The mask of {owner} must be bool or int. Got {mask.dtype} instead.")
    return mask


def tissue_cells(image, patch_size, stride, *, threshold=None, min_fraction=0.5, mask=None):
    """:func:`tissue_grid` without input validation."""
    if mask is not None:
        band = lambda a, b: mask[a:b] != 0  # noqa: E731
    else:
        if threshold is None:
            threshold = auto_threshold(image)
            if threshold < float(np.nanmin(image)):  # no background: every cell, edge cells included
                return np.ones(grid_shape(image.shape, stride), bool)
        band = lambda a, b: image[a:b] > threshold  # noqa: E731
    # the pixel mask is formed a band of rows at a time: memory does not grow with the slice
    return _box_fraction_bands(band, image.shape, patch_size, stride) >= np.float32(min_fraction)
