"""Predictors: small callables that map network input to features, built here from a bundle's graphs.

:func:`for_plan` is the one place a run's predictor is made (the plan's method, stride
and precision); :func:`build` makes any of them.

The windowing engine (:mod:`brainrt.engine.loop`) cuts the input and stitches the output; a
predictor only runs a graph. What it needs from the engine it says in attributes:

- ``kind``: "patch" (a batch of windows centred on grid cells) or "dense" (one tile);
- ``windows`` (patch): the side of each square window it reads around a cell centre, one
  input per window (``(P,)`` today; a context model would say ``(128, 512)``);
- ``stride``, ``window``, ``offset`` (dense): output step in tile pixels, the side of the
  window one output position sees, and where that window starts inside a patch;
- ``mean``, ``std``: input normalization, applied by the kernels while cutting;
- ``n_features``.

A predictor of another precision (int8) is another graph behind the same attributes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from ..errors import BrainrtError, check_positive_int, param_error
from ..geometry import dense_step, window_offset, window_size


@dataclass(frozen=True, eq=False)
class PatchPredictor:
    """``predictor(batch)``: (N, 1, P, P) float32 normalized patches -> (N, F) float32 features."""

    session: object
    input_name: str
    windows: tuple
    mean: float
    std: float
    n_features: int
    kind: str = "patch"

    @property
    def footprint(self) -> int:
        """Side of the largest window read around a cell centre."""
        return max(self.windows)

    def __call__(self, *batches) -> np.ndarray:
        return self.session.run(None, {self.input_name: batches[0]})[0]


@dataclass(frozen=True, eq=False)
class DensePredictor:
    """``predictor(tile)``: (H, W) float32 normalized tile -> (F, h, w) features, where
    ``[:, i, j]`` is the window whose top-left is tile pixel ``(i * stride, j * stride)``."""

    session: object
    input_name: str
    stride: int
    window: int
    offset: int
    mean: float
    std: float
    n_features: int
    kind: str = "dense"
    precision: str = "fp32"

    def __call__(self, tile) -> np.ndarray:
        return self.session.run(None, {self.input_name: tile[None, None]})[0][0]


def for_plan(bundle, plan):
    """The predictor that runs a checked :class:`~brainrt.engine.plan.Plan`: its method, stride and precision."""
    return build(bundle, plan.method, stride=plan.stride, precision=plan.precision)


def build(bundle, kind="patch", *, stride=None, precision="fp32"):
    """A predictor over the graphs of ``bundle`` (a :class:`~brainrt.bundle.load.Bundle`).

    ``kind="patch"``: batches of (N, 1, P, P) patches. ``kind="dense"``: tiles, for the
    grid ``stride``: the graph of the largest dense stride dividing it, whose output the
    engine subsamples (:func:`~brainrt.geometry.dense_step`). ``precision="int8"`` runs the int8 copies of the graphs (same
    inputs, outputs and geometry).
    """
    m = bundle.manifest
    precision = bundle.check_precision(precision)
    norm = dict(mean=m.normalization.mean, std=m.normalization.std, n_features=m.n_features)
    if kind == "patch":
        session = bundle.graph_session(m.onnx.file if precision == "fp32" else m.int8.file)
        return PatchPredictor(session, m.onnx.input, (m.footprint,), **norm)
    if kind != "dense":
        raise param_error("kind", "Bundle.predictor", "'patch' or 'dense'", kind)
    w = dense_window(bundle, stride, precision)
    return DensePredictor(bundle.dense_session(w.stride, precision), m.dense_onnx.input, w.stride, w.window, w.offset,
                          **norm, precision=precision)


class DenseWindow(NamedTuple):
    """Geometry of a dense graph: output ``stride`` in pixels, the ``window`` one output sees, and its
    ``offset`` inside a patch (what :func:`brainrt.engine.loop.dense_geometry` needs; no session)."""

    stride: int
    window: int
    offset: int


def dense_window(bundle, stride, precision="fp32"):
    """The :class:`DenseWindow` of the bundle's dense graph for grid ``stride``, or the one-line error."""
    m, P = bundle.manifest, bundle.patch_size
    stride = check_positive_int(stride, "stride", "Bundle.predictor")
    have = [d for d in bundle.dense_strides if precision == "fp32" or m.int8.dense_file(d)]
    d = dense_step(stride, have)  # the largest dense stride dividing the grid's (the engine subsamples)
    if d is None:
        raise BrainrtError(f"{bundle.path}: bundle has no {precision} dense graph for stride {stride}")
    g = m.dense_onnx
    if g.offset is None:  # the patch's centred window
        return DenseWindow(d, window_size(P), window_offset(P))
    return DenseWindow(d, g.window, g.offset - (m.footprint - P) // 2)  # inside a wider footprint
