"""Features of every patch on a stride grid, per patch or densely, block by block.

Both paths produce the same thing, blocks of grid rows with their features, so that
callers (saving to disk, classifying at scale) never hold more than a block:

- per patch: the numba tiler gathers the valid cells' patches into a preallocated batch
  buffer that the per-patch ONNX graph consumes;
- dense: the numba tiler cuts large tiles with halos, the fully convolutional ONNX graph
  maps each tile to the features of every window position at once, and the block is
  stitched from the tiles. Identical to the per-patch path to float rounding.

Grid geometry: see :mod:`brainrt.geometry`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from .errors import BrainrtError, check_positive_int, param_error
from .geometry import cell_centre, grid_shape, window_offset, window_size
from .tiling import batches, gather_patches, gather_tile, grid_centres
from .tissue import tissue_grid

log = logging.getLogger("brainrt")

METHODS = ("auto", "patch", "dense")
#: Largest input tile side of the dense path (bounds the activations' memory).
DENSE_MAX_TILE = 1024
#: Largest output tile side. FC1 becomes a dilated 5x5 convolution whose im2col buffer
#: in onnxruntime holds 3200 floats per output position (12.8 kB), plus 4 kB of FC1
#: output: 160 x 160 positions keep that near 430 MB, so a whole slice stays under 2 GB.
DENSE_MAX_OUT = 160


@dataclass
class FeatureGrid:
    """Features on a stride grid.

    Attributes
    ----------
    features : array (R, C, F) float32
        Features of the patch centred on each grid cell (0 where ``valid`` is False).
        A NumPy array, or a zarr array when read from or written to disk.
    valid : ndarray (R, C) bool
        Cells that were featurized (tissue).
    stride, patch_size : int
        Cell ``(i, j)`` is the patch centred on pixel ``(i*stride + stride//2, j*stride + stride//2)``.
    image_shape : tuple (H, W)
    model_id : str
        First 12 hex digits of the feature graph's sha256.
    pixel_size_um : float
    """

    features: object
    valid: np.ndarray
    stride: int
    patch_size: int
    image_shape: tuple
    model_id: str
    pixel_size_um: float = 1.17
    stats: dict = field(default_factory=dict)

    @property
    def shape(self):
        return tuple(self.valid.shape)


def resolve_method(method, stride, bundle):
    """'patch' or 'dense' for ``method`` ('auto' picks dense when it applies)."""
    dense_ok = bool(bundle.dense_strides) and (stride in bundle.dense_strides or stride % 16 == 0)
    if method not in METHODS:
        raise param_error("method", "featurize", f"one of {METHODS}", method)
    if method == "dense" and not dense_ok:
        raise BrainrtError(f"the dense path needs a stride that divides 16 or is a multiple of 16 "
                           f"and a bundle with dense graphs; got stride {stride}")
    if method == "auto":
        return "dense" if dense_ok else "patch"
    return method


def validate_image(image, bundle, *, name="image"):
    """Check an in-memory image once at the edge; return it as a 2D array."""
    image = np.asarray(image)
    if image.ndim != 2:
        raise BrainrtError(f"{name}: expected a 2D grayscale image, got shape {image.shape}")
    if image.dtype not in (np.uint8, np.uint16, np.float32, np.float64):
        raise BrainrtError(f"{name}: unsupported pixel type {image.dtype}; expected uint8, uint16 or float32")
    if image.dtype.kind == "f" and not np.isfinite(image).all():
        raise BrainrtError(f"{name}: holds NaN or infinite values")
    P = bundle.patch_size
    if min(image.shape) < P:
        raise BrainrtError(f"{name}: image of {image.shape[0]} x {image.shape[1]} px is smaller than one "
                           f"{P} x {P} patch")
    return image


def intensity_scale(image, bundle):
    """Factor that brings the image's pixel values to the unit range used in training."""
    if image.dtype == np.uint8:
        return 1.0 / 255.0
    if image.dtype == np.uint16:
        return 1.0 / 65535.0
    return 1.0  # float images are taken as already in [0, 1]


def iter_blocks(image, bundle, *, stride, valid, method, batch_size=256, rows_per_block=None, progress=None,
                timings=None):
    """Yield ``(row0, row1, features (r, C, F), valid (r, C))`` blocks of grid rows, in order.

    ``timings`` (a dict), if given, accumulates seconds spent in "tiling" (gathering
    patches or tiles), "onnx" and "stitching". No input validation: call through
    :func:`featurize` or :func:`brainrt.api` functions.
    """
    timings = {} if timings is None else timings
    for key in ("tiling", "onnx", "stitching"):
        timings.setdefault(key, 0.0)
    norm = bundle.normalization
    scale = intensity_scale(image, bundle)
    kw = dict(scale=scale, mean=norm["mean"], std=norm["std"])
    R, C = valid.shape
    F = bundle.n_features
    if method == "dense":
        yield from _dense_blocks(image, bundle, stride, valid, kw, F, progress, timings)
        return
    P = bundle.patch_size
    sess = bundle.session
    name_in = bundle.manifest["onnx"]["input"]
    buf = np.empty((batch_size, 1, P, P), np.float32)
    rows_per_block = rows_per_block or max(1, min(R, (4 * batch_size) // max(C, 1) or 1))
    for r0 in range(0, R, rows_per_block):
        r1 = min(R, r0 + rows_per_block)
        block = np.zeros((r1 - r0, C, F), np.float32)
        centres, cells = grid_centres((r1 - r0, C), stride, valid[r0:r1])
        centres[:, 0] += r0 * stride
        for a, b in batches(len(centres), batch_size):
            t0 = time.perf_counter()
            x = gather_patches(image, centres[a:b], P, buf, **kw)
            t1 = time.perf_counter()
            f = sess.run(None, {name_in: x})[0]
            t2 = time.perf_counter()
            block[cells[a:b, 0], cells[a:b, 1]] = f
            timings["tiling"] += t1 - t0
            timings["onnx"] += t2 - t1
            timings["stitching"] += time.perf_counter() - t2
            if progress:
                progress(b - a)
        yield r0, r1, block, valid[r0:r1]


def _dense_plan(stride, patch_size):
    """(dense stride d, subsampling q, output tile side in dense cells) for a grid stride."""
    d = stride if stride <= 16 else 16
    q = stride // d
    W = window_size(patch_size)
    out_side = max(1, min(DENSE_MAX_OUT, (DENSE_MAX_TILE - W) // d + 1))
    out_side = max(q, out_side - out_side % q)  # whole grid cells per tile
    return d, q, out_side


def _dense_blocks(image, bundle, stride, valid, kw, F, progress, timings):
    """Dense path: tiles of ``out_side`` dense cells per side, stitched into row blocks."""
    P = bundle.patch_size
    W, off = window_size(P), window_offset(P)
    d, q, out_side = _dense_plan(stride, P)
    cells_per_tile = out_side // q  # grid cells per tile side
    sess = bundle.dense_session(d)
    name_in = bundle.manifest["dense_onnx"]["input"]
    R, C = valid.shape
    base = cell_centre(0, stride) - P // 2 + off  # window top-left of cell 0
    tile_buf = np.empty(((out_side - 1) * d + W, (out_side - 1) * d + W), np.float32)
    for r0 in range(0, R, cells_per_tile):
        r1 = min(R, r0 + cells_per_tile)
        block = np.zeros((r1 - r0, C, F), np.float32)
        for c0 in range(0, C, cells_per_tile):
            c1 = min(C, c0 + cells_per_tile)
            v = valid[r0:r1, c0:c1]
            if not v.any():
                continue  # no tissue: skip the tile
            nr, nc = (r1 - r0 - 1) * q + 1, (c1 - c0 - 1) * q + 1  # dense cells needed
            tile = tile_buf[: (nr - 1) * d + W, : (nc - 1) * d + W]
            t0 = time.perf_counter()
            gather_tile(image, base + r0 * stride, base + c0 * stride, tile, **kw)
            t1 = time.perf_counter()
            out = sess.run(None, {name_in: tile[None, None]})[0][0]  # (F, nr, nc)
            t2 = time.perf_counter()
            feats = np.moveaxis(out[:, ::q, ::q], 0, -1)
            block[:, c0:c1] = np.where(v[..., None], feats, 0.0)
            timings["tiling"] += t1 - t0
            timings["onnx"] += t2 - t1
            timings["stitching"] += time.perf_counter() - t2
            if progress:
                progress(int(v.sum()))
        yield r0, r1, block, valid[r0:r1]


def plan_grid(image, bundle, *, stride, tissue=None, min_tissue=0.5, threshold=None):
    """Grid shape and the cells to featurize (tissue), validated."""
    stride = check_positive_int(stride, "stride", "featurize")
    if tissue is None or isinstance(tissue, str):
        mode = tissue or "otsu"
        if mode == "all":
            valid = np.ones(grid_shape(image.shape, stride), bool)
        elif mode == "otsu":
            valid = tissue_grid(image, bundle.patch_size, stride, threshold=threshold, min_fraction=min_tissue)
        else:
            raise param_error("tissue", "featurize", "'otsu', 'all' or a 2D mask", tissue)
    else:
        valid = tissue_grid(image, bundle.patch_size, stride, mask=np.asarray(tissue), min_fraction=min_tissue)
    if not valid.any():
        raise BrainrtError("no tissue found: every patch is background (use --tissue all or a lower --threshold)")
    return stride, valid


class Progress:
    """tqdm bar over patches with patches/s and ETA (silent when disabled)."""

    def __init__(self, total, *, enabled, desc="featurize"):
        self.bar = None
        self.t0 = time.perf_counter()
        self.n = 0
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=int(total), unit="patch", desc=desc, smoothing=0.1, mininterval=1.0)

    def __call__(self, n):
        self.n += n
        if self.bar is not None:
            self.bar.update(n)

    def close(self):
        if self.bar is not None:
            self.bar.close()
        dt = time.perf_counter() - self.t0
        return {"patches": self.n, "seconds": round(dt, 3), "patches_per_s": round(self.n / dt, 1) if dt else None}
