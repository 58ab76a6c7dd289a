"""Predictors: small callables that map network input to features, built by :meth:`Bundle.predictor`.

The windowing engine (:mod:`brainrt.engine`) cuts the input and stitches the output; a
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

import numpy as np


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

    def __call__(self, tile) -> np.ndarray:
        return self.session.run(None, {self.input_name: tile[None, None]})[0][0]
