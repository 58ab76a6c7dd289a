"""The windowing engine: a plan and a predictor in, blocks of grid rows with their features out.

The engine knows geometry (which pixels each grid cell needs, batches, tiles with halos,
stitching) and nothing of onnxruntime; a predictor (:mod:`brainrt.model.predictor`) maps what
the engine cuts to features. Two paths give the same features to float rounding:

- per patch: the windows around the plan's valid cells are cut into preallocated batch
  buffers (one per window the predictor reads) and handed over a batch at a time;
- dense: large tiles with halos are cut, the predictor maps a tile to the features of
  every window position at once, and each block is stitched from its tiles.

:func:`drain` is the one loop over the blocks (:func:`run`'s: ``run(plan, predictor, sink, rows=(r0, r1),
on_block=...)``; or a saved grid's rows): it hands every block to a sink (:mod:`brainrt.outputs.sinks`: an in-memory grid, a
zarr writer, a classifier, a volume band) and calls ``on_block`` after each (progress,
cancel). ``rows`` restricts it to a band of grid rows, so a scheduler (e.g. Dask, one
task per band or per z) can split a slice without touching this module. Progress and
stage timings are kept by one :class:`Meter`. No input validation: the plan is checked
(:mod:`brainrt.engine.plan`).
"""

from __future__ import annotations

import time
from typing import NamedTuple

import numpy as np

from ..geometry import cell_centre
from .tiling import PAD_REFLECT, batch_ranges, patches_kernel, tile_kernel, valid_centres

#: Largest input tile side of the dense path (bounds the activations' memory); a wider
#: window (a 2048 px context field reads 1888 px) gets its window plus half of this.
DENSE_MAX_TILE = 1024
#: Largest output tile side. FC1 becomes a dilated 5x5 convolution whose im2col buffer
#: in onnxruntime holds 3200 floats per output position (12.8 kB), plus 4 kB of FC1
#: output: 160 x 160 positions keep that near 430 MB, so a whole slice stays under 2 GB.
DENSE_MAX_OUT = 160
#: Output tile width over its height, by precision. int8 im2col values are bytes, a quarter of fp32's:
#: a 160 x 320 int8 tile of the shipped bundle peaked at 464 MB of process memory against 789 MB for a
#: 160 x 160 fp32 one, and ran 1.27x faster per position than a 160 x 160 int8 tile (the convolutions'
#: halo is shared by more positions; measured side by side). The height stays: it is the rows of a
#: block and of a volume's band.
DENSE_WIDTH_FACTOR = {"fp32": 1, "int8": 2}
#: Most input pixels per batch on the per-patch path (64 MB of float32).
BATCH_PIXELS = 1 << 24
#: Cells per block on the per-patch path, in batches.
BATCHES_PER_BLOCK = 4


class Block(NamedTuple):
    """Grid rows ``r0:r1``: ``features`` (r, C, F) float32 (0 off tissue), or the sink's per-cell values
    (:class:`CellMap`), and ``valid`` (r, C)."""

    r0: int
    r1: int
    features: np.ndarray
    valid: np.ndarray


class CellMap(NamedTuple):
    """What a sink keeps of each tissue cell: ``fn`` maps the features (n, F) of tissue cells to (n, *shape)
    values of ``dtype`` (a head's probabilities); other cells are 0. A sink with one (its ``cells``
    attribute) gets blocks of those values: the engine maps each tile as it is stitched, so a block never
    holds the features (at stride 1 a block of slice309's features is 238 MB, its 6 probabilities 22 MB)."""

    fn: object
    shape: tuple
    dtype: object = np.float32

    @classmethod
    def into(cls, fn, out):
        """``fn``'s values per cell of the grid ``out`` (rows, cols, *shape) fills (its cell shape and dtype)."""
        return cls(fn, out.shape[2:], out.dtype)

    def empty(self, rows, cols):
        return np.zeros((rows, cols) + tuple(self.shape), self.dtype)


class Meter:
    """Patches done, seconds per stage ("tiling", "onnx", "stitching") and an optional tqdm bar."""

    STAGES = ("tiling", "onnx", "stitching")

    def __init__(self, total=0, *, progress=False, desc="featurize"):
        self.timings = dict.fromkeys(self.STAGES, 0.0)
        self.n, self.total = 0, int(total)
        self.t0 = time.perf_counter()
        self.bar = None
        if progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=int(total), unit="patch", desc=desc, smoothing=0.1, mininterval=1.0)

    def lap(self, stage, since):
        """Add the time since ``since`` to ``stage``; return now (the next lap's start)."""
        now = time.perf_counter()
        self.timings[stage] += now - since
        return now

    def done(self, n):
        self.n += n
        if self.bar is not None:
            self.bar.update(n)

    def close(self, method):
        """End the bar; the run's statistics (patches, seconds, patches/s, stage timings)."""
        if self.bar is not None:
            self.bar.close()
        dt = time.perf_counter() - self.t0
        return {"method": method, "patches": self.n, "seconds": round(dt, 3),
                "patches_per_s": round(self.n / dt, 1) if dt else None,
                "timings": {k: round(v, 3) for k, v in self.timings.items()}}


def run(plan, predictor, sink, *, rows=None, meter=None, on_block=None):
    """Run the grid rows ``rows`` (default: all) of ``plan`` through ``predictor`` into ``sink``
    (:func:`drain` of :func:`blocks`)."""
    meter = meter or Meter()
    return drain(blocks(plan, predictor, rows=rows, meter=meter, cells=getattr(sink, "cells", None)), sink,
                 meter=meter, on_block=on_block)


def drain(source, sink, *, meter=None, on_block=None):
    """Every :class:`Block` of ``source`` (in order: the engine's, or a saved grid's rows) into ``sink``.

    ``sink`` takes each block (``sink.put(block)``) and gives the result (``sink.close()``, returned); on an
    error or an interrupt ``sink.abort()`` is called and the exception goes on. ``on_block(block, meter)`` is
    called after each block (a progress report; raising from it cancels the run).
    """
    try:
        for b in source:
            sink.put(b)
            if on_block is not None:
                on_block(b, meter)
            del b  # not held while the next block is computed (a stride-1 block of a slice is 238 MB)
    except BaseException:
        sink.abort()
        raise
    return sink.close()


def blocks(plan, predictor, *, rows=None, meter=None, cells=None):
    """Yield :class:`Block` s of the grid rows ``rows`` (default: all), in order (:func:`run` consumes them);
    with ``cells`` (a :class:`CellMap`), of its values instead of the features."""
    r0, r1 = rows or (0, plan.shape[0])
    meter = meter or Meter()
    cells = cells or CellMap(None, (predictor.n_features,))
    if predictor.kind == "dense":
        return _dense_blocks(plan, predictor, r0, r1, meter, cells)
    return _patch_blocks(plan, predictor, r0, r1, meter, cells)


def _stitch(block, where, valid, features, cells):
    """``block[where] = features`` (of the cells ``valid`` there, 0 elsewhere), through ``cells.fn`` if any."""
    if cells.fn is None:
        block[where] = np.where(valid[..., None], features, 0.0) if valid is not None else features
    elif valid is None:
        block[where] = cells.fn(features)
    elif valid.any():
        block[where][valid] = cells.fn(features[valid])


def _patch_blocks(plan, predictor, r0, r1, meter, per_cell):
    """Per-patch path: blocks of rows holding about BATCHES_PER_BLOCK batches of cells."""
    n, C = plan.batch_size, plan.shape[1]
    n = max(1, min(n, BATCH_PIXELS // max(w * w for w in predictor.windows)))  # context windows are large
    buffers = [np.empty((n, 1, w, w), np.float32) for w in predictor.windows]
    step = max(1, min(plan.shape[0], (BATCHES_PER_BLOCK * n) // max(C, 1) or 1))
    for b0 in range(r0, r1, step):
        b1 = min(r1, b0 + step)
        block = per_cell.empty(b1 - b0, C)
        centres, cells = valid_centres(plan.valid[b0:b1], plan.stride)
        centres[:, 0] += b0 * plan.stride
        for a, b in batch_ranges(len(centres), n):
            t = time.perf_counter()
            for buf in buffers:
                patches_kernel(plan.image, centres[a:b], buf, PAD_REFLECT, plan.scale, predictor.mean,
                                predictor.std, 0.0)
            t = meter.lap("tiling", t)
            f = predictor(*(buf[: b - a] for buf in buffers))
            t = meter.lap("onnx", t)
            _stitch(block, (cells[a:b, 0], cells[a:b, 1]), None, f, per_cell)
            meter.lap("stitching", t)
            meter.done(b - a)
        yield Block(b0, b1, block, plan.valid[b0:b1])


def dense_geometry(stride, predictor):
    """(subsampling q of the dense output, output tile side in dense positions) for a grid stride: the
    tile's height; its width is up to :data:`DENSE_WIDTH_FACTOR` times that for the predictor's precision."""
    q = stride // predictor.stride
    tile = max(DENSE_MAX_TILE, predictor.window + DENSE_MAX_TILE // 2)
    out_side = max(1, min(DENSE_MAX_OUT, (tile - predictor.window) // predictor.stride + 1))
    return q, max(q, out_side - out_side % q)  # whole grid cells per tile


def _tile_columns(cols, most):
    """Ranges of ``cols`` cells in tiles of at most ``most``, as even as whole cells allow (no narrow last
    tile: a tile's halo costs as much whatever its width); the blocks of rows are cut the same way."""
    n = -(-cols // most)
    width = -(-cols // n)
    return [(c, min(cols, c + width)) for c in range(0, cols, width)]


def _dense_blocks(plan, predictor, r0, r1, meter, cells):
    """Dense path: tiles of whole grid cells (wider than high in int8), stitched into blocks of rows."""
    q, out_side = dense_geometry(plan.stride, predictor)
    per_tile = out_side // q  # grid cells per tile side (rows)
    columns = _tile_columns(plan.shape[1], per_tile * DENSE_WIDTH_FACTOR[predictor.precision])
    width = max(c1 - c0 for c0, c1 in columns)
    tile_buf = np.empty([(n * q - 1) * predictor.stride + predictor.window for n in (per_tile, width)], np.float32)
    for b0, b1 in _tile_columns(r1 - r0, per_tile):  # blocks of rows, as even as the columns
        b0, b1 = b0 + r0, b1 + r0
        block = cells.empty(b1 - b0, plan.shape[1])
        for c0, c1 in columns:
            _dense_tile(plan, predictor, tile_buf, block, b0, c0, c1, q, meter, cells)
        yield Block(b0, b1, block, plan.valid[b0:b1])


def _dense_tile(plan, predictor, tile_buf, block, b0, c0, c1, q, meter, cells):
    """Cut, run and stitch the tile of grid cells ``block rows x [c0, c1)``; skip it off tissue."""
    b1 = b0 + block.shape[0]
    v = plan.valid[b0:b1, c0:c1]
    if not v.any():
        return
    d, s = predictor.stride, plan.stride
    nr, nc = (b1 - b0 - 1) * q + 1, (c1 - c0 - 1) * q + 1  # dense positions needed
    tile = tile_buf[: (nr - 1) * d + predictor.window, : (nc - 1) * d + predictor.window]
    base = cell_centre(0, s) - plan.patch_size // 2 + predictor.offset  # window top-left of cell 0
    t = time.perf_counter()
    tile_kernel(plan.image, base + b0 * s, base + c0 * s, tile, PAD_REFLECT, plan.scale, predictor.mean,
                 predictor.std, 0.0)
    t = meter.lap("tiling", t)
    out = predictor(tile)  # (F, nr, nc)
    t = meter.lap("onnx", t)
    _stitch(block, (slice(None), slice(c0, c1)), v, np.moveaxis(out[:, ::q, ::q], 0, -1), cells)
    meter.lap("stitching", t)
    meter.done(int(v.sum()))
