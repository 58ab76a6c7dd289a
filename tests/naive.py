"""Slow, obvious twins of the fast kernels, for the tests to compare against (as stumpy's)."""

from __future__ import annotations

import numpy as np


def gather_patches_naive(image, centres, patch_size, out, *, scale, mean, std, pad="reflect", cval=0.0):
    """One patch at a time: np.pad the image just enough, slice, normalize."""
    image = np.asarray(image, dtype=np.float64)
    h, w = image.shape
    half = patch_size // 2
    centres = np.asarray(centres, dtype=np.int64)
    for k, (cy, cx) in enumerate(centres):
        y0, x0 = cy - half, cx - half
        before_y, after_y = max(0, -y0), max(0, y0 + patch_size - h)
        before_x, after_x = max(0, -x0), max(0, x0 + patch_size - w)
        widths = ((before_y, after_y), (before_x, after_x))
        if pad == "reflect":
            padded = np.pad(image, widths, mode="reflect")
        else:
            padded = np.pad(image, widths, mode="constant", constant_values=cval)
        y, x = y0 + before_y, x0 + before_x
        patch = padded[y : y + patch_size, x : x + patch_size]
        out[k, 0] = ((patch * scale - mean) / std).astype(np.float32)
    return out[: len(centres)]


def gather_tile_naive(image, y0, x0, out, *, scale, mean, std, pad="reflect", cval=0.0):
    """np.pad the image by the tile's overhang on every side, slice the tile, normalize."""
    image = np.asarray(image, dtype=np.float64)
    h, w = image.shape
    th, tw = out.shape
    before_y, after_y = max(0, -y0), max(0, y0 + th - h)
    before_x, after_x = max(0, -x0), max(0, x0 + tw - w)
    widths = ((before_y, after_y), (before_x, after_x))
    if pad == "reflect":
        padded = np.pad(image, widths, mode="reflect")
    else:
        padded = np.pad(image, widths, mode="constant", constant_values=cval)
    y, x = y0 + before_y, x0 + before_x
    out[:] = ((padded[y : y + th, x : x + tw] * scale - mean) / std).astype(np.float32)
    return out


def grid_centres_naive(grid_shape, stride, valid=None):
    """Double loop over the cells in row-major order."""
    centres, cells = [], []
    for i in range(grid_shape[0]):
        for j in range(grid_shape[1]):
            if valid is None or valid[i, j]:
                cells.append((i, j))
                centres.append((i * stride + stride // 2, j * stride + stride // 2))
    return np.array(centres, dtype=np.int64).reshape(-1, 2), np.array(cells, dtype=np.int64).reshape(-1, 2)


def box_fraction_naive(mask, patch_size, stride):
    """Count the tissue of each cell's clipped footprint with a slice sum."""
    h, w = mask.shape
    rows, cols = -(-h // stride), -(-w // stride)
    frac = np.zeros((rows, cols), dtype=np.float32)
    for i in range(rows):
        for j in range(cols):
            top = i * stride + stride // 2 - patch_size // 2
            left = j * stride + stride // 2 - patch_size // 2
            window = mask[max(top, 0) : max(top + patch_size, 0), max(left, 0) : max(left + patch_size, 0)]
            frac[i, j] = np.count_nonzero(window) / patch_size**2
    return frac
