"""Cut patches and tiles out of a slice, fast: numba kernels plus thin validating wrappers.

Kernels follow pynndescent's style: short ``@numba.njit(cache=True)`` functions that
trust their inputs (:func:`patches_kernel`, :func:`tile_kernel`, and the helpers
:func:`valid_centres`, :func:`batch_ranges`: no input validation). The windowing engine
(:mod:`brainrt.engine.loop`) calls them directly on a checked plan; the wrappers
(:func:`gather_patches`, :func:`grid_centres`, :func:`batches`) check their arguments
for other callers. Each kernel
has a slow, obvious twin in ``tests/naive.py``. Patch ``k``
centred on ``(cy, cx)`` covers rows ``cy - P // 2 .. cy - P // 2 + P - 1`` (and the
same for columns), as in :mod:`brainrt.geometry`. Pixels outside the image are either
mirrored (``pad="reflect"``, numpy.pad's ``reflect``: the edge pixel is not repeated)
or set to a constant raw value (``pad="constant"``).

Every value written is ``(float64(image[y, x]) * scale - mean) / std`` rounded once to
float32, so the result does not depend on the image's dtype or memory order.
"""

from __future__ import annotations

import numba
import numpy as np

from brainrt.errors import BrainrtError, check_float, check_image, check_positive_int, param_error

PAD_REFLECT = 0
PAD_CONSTANT = 1
#: Kernel code of each padding mode.
PAD_CODES = {"reflect": PAD_REFLECT, "constant": PAD_CONSTANT}


@numba.njit(cache=True)
def _reflect_index(i, n):
    """i -> i mod 2(n-1), folded back into [0, n) (numpy.pad 'reflect'; 0 when n == 1)."""
    if n == 1:
        return 0
    period = 2 * (n - 1)
    i = i % period
    if i < 0:
        i += period
    if i >= n:
        i = period - i
    return i


@numba.njit(cache=True)
def _gather_one(image, y0, x0, patch, mode, scale, mean, std, cval):
    """patch[r, c] = (image[pad(y0 + r), pad(x0 + c)] * scale - mean) / std."""
    h, w = image.shape
    p, q = patch.shape
    inside = y0 >= 0 and x0 >= 0 and y0 + p <= h and x0 + q <= w
    for r in range(p):
        y = y0 + r
        if not inside and mode == PAD_REFLECT:
            y = _reflect_index(y, h)
        row_out = not (0 <= y < h)
        for c in range(q):
            x = x0 + c
            if inside:
                v = np.float64(image[y, x])
            elif mode == PAD_REFLECT:
                v = np.float64(image[y, _reflect_index(x, w)])
            elif row_out or x < 0 or x >= w:
                v = cval
            else:
                v = np.float64(image[y, x])
            patch[r, c] = np.float32((v * scale - mean) / std)


@numba.njit(cache=True, parallel=True)
def patches_kernel(image, centres, out, mode, scale, mean, std, cval):
    """out[k, 0] = normalized P x P patch of image centred on centres[k], in parallel over k."""
    half = out.shape[2] // 2
    for k in numba.prange(centres.shape[0]):
        _gather_one(image, centres[k, 0] - half, centres[k, 1] - half, out[k, 0], mode, scale, mean, std, cval)


@numba.njit(cache=True, parallel=True)
def tile_kernel(image, y0, x0, tile, mode, scale, mean, std, cval):
    """tile[r, c] = normalized image[pad(y0 + r), pad(x0 + c)], in parallel over rows."""
    for r in numba.prange(tile.shape[0]):
        _gather_one(image, y0 + r, x0, tile[r : r + 1], mode, scale, mean, std, cval)


def gather_patches(image, centres, patch_size, out, *, scale, mean, std, pad="reflect", cval=0.0):
    """Copy normalized square patches of ``image`` into a preallocated batch buffer.

    Parameters
    ----------
    image : ndarray, shape (H, W)
        uint8, uint16, float32 or float64; any memory order (not copied).
    centres : ndarray of int, shape (n, 2)
        Patch centres ``(cy, cx)``; may lie near or outside the image.
    patch_size : int
        Side ``P`` of the patches.
    out : ndarray of float32, shape (>= n, 1, P, P), C-contiguous
        Buffer to fill; ``out[:n]`` is overwritten and returned (a view).
    scale, mean, std : float
        Each value is ``(image[y, x] * scale - mean) / std``.
    pad : {"reflect", "constant"}
        Pixels outside the image: mirrored without repeating the edge (numpy.pad
        ``reflect``), or the raw value ``cval`` (then scaled and normalized).
    cval : float
        Raw value of outside pixels for ``pad="constant"``.
    """
    owner = "gather_patches"
    image = check_image(image, finite=False)
    centres = np.asarray(centres)
    if centres.ndim != 2 or centres.shape[1] != 2 or not np.issubdtype(centres.dtype, np.integer):
        raise BrainrtError(
            f"The centres of {owner} must be an (n, 2) int array. Got shape {centres.shape}, dtype {centres.dtype} instead."
        )
    centres = np.ascontiguousarray(centres, dtype=np.int64)
    patch_size = check_positive_int(patch_size, "patch_size", owner)
    _check_out(out, (centres.shape[0], 1, patch_size, patch_size), owner)
    if pad not in PAD_CODES:
        raise param_error("pad", owner, "'reflect' or 'constant'", pad)
    scale, mean, cval = (check_float(v, n, owner) for v, n in ((scale, "scale"), (mean, "mean"), (cval, "cval")))
    std = check_float(std, "std", owner, nonzero=True)
    if len(centres):
        patches_kernel(image, centres, out, PAD_CODES[pad], scale, mean, std, cval)
    return out[: len(centres)]


def _check_out(out, shape, owner):
    """``out`` must be a writeable C-contiguous float32 buffer of ``shape`` (or more rows)."""
    if not isinstance(out, np.ndarray) or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise BrainrtError(f"The out buffer of {owner} must be a C-contiguous float32 array.")
    if out.ndim != len(shape) or out.shape[0] < shape[0] or out.shape[1:] != shape[1:]:
        raise BrainrtError(f"The out buffer of {owner} must have shape (>= {shape[0]}, "
                           f"{', '.join(map(str, shape[1:]))}). Got {out.shape} instead.")
    if not out.flags.writeable:
        raise BrainrtError(f"The out buffer of {owner} must be writeable.")


def grid_centres(grid_shape, stride, valid=None):
    """Centres of grid cells, in row-major order.

    Parameters
    ----------
    grid_shape : tuple of int, (rows, cols)
        Grid size, e.g. :func:`brainrt.geometry.grid_shape`.
    stride : int
        Grid stride ``s``; cell ``(i, j)`` is centred on ``(i * s + s // 2, j * s + s // 2)``.
    valid : ndarray of bool, shape grid_shape, optional
        Keep only the cells where ``valid`` is True.

    Returns
    -------
    centres : ndarray of int64, shape (n, 2)
        Pixel centres ``(cy, cx)``.
    cells : ndarray of int64, shape (n, 2)
        Cell indices ``(i, j)``.
    """
    owner = "grid_centres"
    stride = check_positive_int(stride, "stride", owner)
    try:
        rows, cols = (int(v) for v in grid_shape)
    except (TypeError, ValueError):
        raise param_error("grid_shape", owner, "a pair of non-negative ints", grid_shape) from None
    if rows < 0 or cols < 0:
        raise param_error("grid_shape", owner, "a pair of non-negative ints", grid_shape)
    valid = np.ones((rows, cols), bool) if valid is None else np.asarray(valid)
    if valid.shape != (rows, cols):
        raise BrainrtError(
            f"The valid mask of {owner} must have the grid shape {(rows, cols)}. Got {valid.shape} instead."
        )
    return valid_centres(valid.astype(bool, copy=False), stride)


def valid_centres(valid, stride):
    """(centres, cells) of the True cells of ``valid`` (R, C) bool, row-major. No input validation."""
    cells = np.stack(np.nonzero(valid), axis=1).astype(np.int64, copy=False).reshape(-1, 2)
    return cells * stride + stride // 2, cells


def batch_ranges(n, batch_size):
    """(start, stop) of consecutive batches covering range(n)."""
    for start in range(0, n, batch_size):
        yield start, min(start + batch_size, n)


def batches(n, batch_size):
    """Split ``range(n)`` into consecutive batches.

    Parameters
    ----------
    n : int
        Number of items (>= 0).
    batch_size : int
        Largest batch.

    Returns
    -------
    iterator of (int, int)
        ``(start, stop)`` of each batch; the last one may be shorter.
    """
    batch_size = check_positive_int(batch_size, "batch_size", "batches")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise param_error("n", "batches", "a non-negative int", n)
    return batch_ranges(int(n), batch_size)
