"""Reader of brainrt feature grids (zarr folders from ``brainrt featurize``): the features at grid scale
(one channel per feature, on a slider) and the first three principal components as RGB."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..engine.grid import load_features
from ..errors import BrainrtError


def get_reader(path):
    """The reader when ``path`` is a brainrt feature zarr folder, else None (napari tries other readers)."""
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    try:
        load_features(path)
    except (BrainrtError, OSError, ValueError, KeyError):
        return None
    return read_features


def read_features(path):
    """Layer data: the (F, R, C) features (hidden) and the PCA RGB, each cell on its stride x stride pixels."""
    path = Path(path[0] if isinstance(path, (list, tuple)) else path)
    grid = load_features(path)
    features = np.asarray(grid.features, np.float32)  # a whole grid in memory (stride 16: a few MB)
    px, s = grid.pixel_size_um, grid.stride
    place = {"scale": (px * s, px * s), "translate": ((s - 1) / 2 * px, (s - 1) / 2 * px)}
    name = path.name.removesuffix(".zarr").removesuffix(".features")
    return [(np.moveaxis(features, -1, 0), {"name": f"{name} features", "visible": False,
                                            "scale": (1.0, *place["scale"]), "translate": (0.0, *place["translate"])},
             "image"),
            (pca_rgb(features, grid.valid), {"name": f"{name} PCA (RGB)", "rgb": True, **place}, "image")]


def pca_rgb(features, valid):
    """The first three principal components of the valid cells as RGB in [0, 1] (black off tissue)."""
    from sklearn.decomposition import PCA

    rgb = np.zeros(valid.shape + (3,), np.float32)
    x = features[valid]
    if len(x) < 3:
        return rgb
    pcs = PCA(3, random_state=0).fit_transform(x)
    lo, hi = np.percentile(pcs, 1, axis=0), np.percentile(pcs, 99, axis=0)
    rgb[valid] = np.clip((pcs - lo) / np.where(hi > lo, hi - lo, 1.0), 0, 1)
    return rgb
