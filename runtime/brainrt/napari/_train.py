"""The "Train areas" widget's work, without Qt: fit heads from strokes painted over an image, map the image.

The image's features are computed once per (bundle, stride, image pixels) and kept in a
:class:`FeatureCache`; a refit after painting corrections only reads the stroke cells from
the cached grid, fits (:func:`brainrt.fit.fitted_of`) and applies the head to the cached
grid, so it takes seconds. Like the other jobs (:mod:`._work`) it featurizes through the
library's loop with a per-block callback (:class:`._work.Progress`): progress after every
block, Cancel at the next one.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict

import numpy as np

from ..bundle.derive import ClassTable, stroke_record
from ..bundle.strokes import cell_labels, samples_of_grid
from ..engine.plan import DEFAULT_PRECISION
from ..errors import BrainrtError
from ..fit import fitted_of, predict_grid, uncertainty
from ..geometry import grid_shape
from ..maps.smooth import choose
from ._work import featurize, grid_layer, labels_layer, load_bundle


class FeatureCache:
    """Feature grids already computed, by (bundle folder, stride, sha256 of the image's pixels); the ``size``
    most recent are kept (a stride-16 grid of slice309 is 8 MB)."""

    def __init__(self, size=2):
        self.size, self._grids = size, OrderedDict()

    @staticmethod
    def key(bundle_path, stride, image):
        a = np.ascontiguousarray(image)
        h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
        return str(bundle_path), int(stride), h.hexdigest()

    def get(self, key):
        grid = self._grids.get(key)
        if grid is not None:
            self._grids.move_to_end(key)
        return grid

    def put(self, key, grid):
        self._grids[key] = grid
        while len(self._grids) > self.size:
            self._grids.popitem(last=False)

    def nbytes(self):
        return sum(g.features.nbytes for g in self._grids.values())


def train_job(source, strokes, bundle_path, *, cache, state, stride=16, class_map=None, strokes_name="strokes",
              precision=DEFAULT_PRECISION, on_block=None):
    """Fit on the strokes (an array of the image's shape) and return the map and uncertainty layers.

    ``state`` receives the ``fitted`` heads, the parent ``bundle`` and the ``seconds`` of each stage, for the
    widget's Save and status line; ``on_block`` is called after every block while the image is featurized.
    """
    bundle = load_bundle(bundle_path)
    table = ClassTable.resolve(class_map, bundle)
    strokes = np.asarray(strokes)
    if strokes.shape != source.image.shape:
        raise BrainrtError(f"{strokes_name}: stroke layer of shape {strokes.shape} differs from the image's "
                           f"{source.image.shape}")
    cells = cell_labels(strokes, table, stride, grid_shape(strokes.shape, stride), source=strokes_name)
    if not cells.mask.any():
        raise BrainrtError(f"{strokes_name}: no strokes yet; paint some with the class codes as labels")
    t0, key = time.perf_counter(), FeatureCache.key(bundle_path, stride, source.image)
    grid, cached = cache.get(key), True
    if grid is None:
        grid, cached = featurize(source, bundle, stride=stride, precision=precision, on_block=on_block), False
        cache.put(key, grid)
    t1 = time.perf_counter()
    samples = samples_of_grid(grid.features, grid.valid, cells, source=strokes_name)
    fitted = fitted_of(samples, table, [{**stroke_record(source.image, strokes), "image": source.name}],
                       stride=stride)
    sigma, space = choose(bundle.manifest.smoothing, None, proba=True, pixel_size_um=grid.pixel_size_um,
                          stride=grid.stride)
    labels, probs = predict_grid(fitted, grid.features, grid.valid, sigma_cells=sigma, space=space)
    state.update(fitted=fitted, bundle=bundle, cached=cached,
                 seconds={"features": round(t1 - t0, 3), "fit_and_map": round(time.perf_counter() - t1, 3)})
    doubt = uncertainty(probs, grid.valid)
    return [labels_layer(labels, source, grid, source.label("trained areas"), list(table.names),
                          colors=list(table.colors), values=[cs[0] for cs in table.codes]),
            grid_layer(doubt, source, grid, source.label("uncertainty"), colormap="inferno",
                        contrast_limits=(0.0, 1.0), opacity=0.6, visible=False)]


def strokes_layer(source, table, name, shape):
    """An empty Labels layer of ``shape`` (the image layer's: 2D, or a stack's) for painting strokes: values
    are the class map's codes, each in its class's colour, hovering shows the class."""
    from napari.utils.colormaps import DirectLabelColormap
    from matplotlib.colors import to_rgba

    codes = [cs[0] for cs in table.codes]
    cmap = DirectLabelColormap(color_dict={None: (0, 0, 0, 0), 0: (0, 0, 0, 0),
                                           **{c: to_rgba(col) for c, col in zip(codes, table.colors)}})
    features = {"index": [0, *codes], "name": ["unlabeled", *table.names]}
    dtype = np.uint8 if max(codes) < 256 else np.uint16
    return np.zeros(shape, dtype), dict(name=name, scale=tuple(source.scale),
                                                     translate=tuple(source.translate), colormap=cmap,
                                                     features=features, opacity=0.8), "labels"
