"""Where the engine's blocks go: small objects that :func:`brainrt.engine.loop.run` feeds.

A sink takes the blocks of grid rows in order (``put(block)``), gives its result at the
end (``close()``) and cleans up after an error or an interrupt (``abort()``). The loop
is written once, in the engine; what happens to the features is the sink's business:

- :class:`ArraySink`: into one NumPy array of grid rows, the features themselves or a
  head's output per cell (``fn``), for the whole grid or for one band of rows;
- :class:`ZarrFeatureSink`: into a zarr feature grid written beside its target and
  renamed into place when complete (a stride-1 grid of a slice is GBs);
- :class:`ClassifySink`: a classifier head on every block, its rows finished as they arrive by the
  one finishing path of a slice's map (:class:`~brainrt.maps.slicemap.SliceMap`: the streamed in-plane
  regularization, the labels), so features are never held whole; the probabilities go into memory
  or, band by band, into their OME-TIFF.

The volume band writer (:mod:`brainrt.volumes.blocks`) is an :class:`ArraySink` over
one band whose rows then go into the volume's store. Sinks trust their inputs: the plan
is checked.
"""

from __future__ import annotations

import numpy as np

from ..engine.grid import FEATURE_ARRAYS, FEATURES, create_feature_store
from ..engine.loop import CellMap
from ..heads.context import PassThrough
from ..integrity import Guarded, seal
from ..io import atomic_path
from ..maps.slicemap import SliceMap
from ..maps.uncertainty import CHANNELS, Tee, UncertaintyBands
from .finished import FOLDER_RECORD, write_record
from .ome_tiff import OmeTiffBands


class Sink:
    """The sink protocol: ``put(block)`` per block in order, ``close()`` -> result, ``abort()`` on failure."""

    def put(self, block):  # pragma: no cover - abstract
        raise NotImplementedError

    def close(self):
        return None

    def abort(self):
        """Undo what was started (temporary files); the default has nothing to undo."""


class ArraySink(Sink):
    """Blocks into ``out``, whose first row is grid row ``r0``: the features (``fn`` None) or
    ``fn(features)`` of every valid cell (a head; ``out`` then holds its output per cell, mapped by the
    engine tile by tile: :class:`~brainrt.engine.loop.CellMap`)."""

    def __init__(self, out, *, r0=0, fn=None):
        self.out, self.r0, self.fn = out, r0, fn
        self.cells = None if fn is None else CellMap.into(fn, out)

    @classmethod
    def features(cls, shape, n_features, *, r0=0):
        """A sink of features into a zeroed (rows, cols, n_features) float32 array."""
        return cls(np.zeros(tuple(shape) + (n_features,), np.float32), r0=r0)

    def put(self, block):
        rows = self.out[block.r0 - self.r0 : block.r1 - self.r0]
        if self.fn is None:
            rows[...] = block.features
        else:  # the head's values of the block's tissue cells (the rest of ``out`` as it was)
            rows[block.valid] = block.features[block.valid]

    def close(self):
        return self.out


class ZarrFeatureSink(Sink):
    """Feature blocks into the OME-NGFF feature image ``path`` (:func:`brainrt.engine.grid.create_feature_store`:
    ``0`` (F, R, C) float32, the tissue label image, brainrt's ``attrs``), written in a temporary folder beside it and renamed into place by :meth:`close`, which returns
    the ``features`` array opened read-only. With a run ``record`` (:mod:`brainrt.outputs.finished`), the
    record goes inside the group, so a finished grid is known by the arguments that made it."""

    def __init__(self, path, *, valid, n_features, attrs, record=None):
        import zarr

        R, C = valid.shape
        self.path, self.attrs, self.record = path, attrs, record
        self._target = atomic_path(path, overwrite=True, is_dir=True)
        tmp = self._target.__enter__()
        try:
            self.root = zarr.open_group(str(tmp), mode="w")
            self.arr, tissue = create_feature_store(self.root, (R, C), n_features, (64, 64), attrs)
            tissue[:] = np.asarray(valid, np.uint8)
            self.tmp = tmp
        except BaseException as exc:
            self._target.__exit__(type(exc), exc, exc.__traceback__)
            raise

    def put(self, block):
        self.arr[:, block.r0 : block.r1] = np.moveaxis(block.features, -1, 0)

    def close(self):
        import zarr

        if self.record is not None:
            write_record(self.tmp / FOLDER_RECORD, self.record)
        seal(self.tmp, FEATURE_ARRAYS)  # chunk checksums (:mod:`brainrt.integrity`)
        self._target.__exit__(None, None, None)
        return Guarded(zarr.open_group(str(self.path), mode="r")[FEATURES], self.path, channels_first=True)

    def abort(self):
        exc = RuntimeError("aborted")
        self._target.__exit__(RuntimeError, exc, None)  # removes the temporary folder


#: Rows of a block pushed into the smoother at a time.
PUSH_ROWS = 32


class ClassifySink(Sink):
    """A classifier head (:class:`~brainrt.heads.Classifier`) on every block; its probability rows finished
    as they arrive by a :class:`~brainrt.maps.slicemap.SliceMap` (regularized in the plane when ``sigma`` (grid
    cells) > 0, labelled, handed on). A context head's terms go through its ``stream``
    (:meth:`~brainrt.heads.Classifier.stream`, which pools them with a halo of rows) first.
    ``close()`` gives ``(labels, probabilities)``: labels (R, C) int16 (-1 off tissue) always in memory
    (small), probabilities (R, C, K) in memory, or streamed band by band to ``probabilities`` (a writer
    with ``write(y0, band)`` and ``abort()``, e.g. :class:`~brainrt.outputs.ome_tiff.OmeTiffBands`; then None), so a
    stride-1 slice never holds them whole. A head without probabilities gives labels only."""

    def __init__(self, clf, valid, *, sigma=0.0, space="log", stream=None, probabilities=None):
        self.clf, self.writer = clf, probabilities
        self.stream = stream if stream is not None else PassThrough()
        self.map = SliceMap(valid, clf.n_classes, sigma=sigma, space=space, writer=probabilities) if clf.proba else None
        self.labels = None if clf.proba else np.full(valid.shape, -1, np.int16)
        self.cells = CellMap.into(clf.fn, clf.empty((0, 0), terms=True))  # the engine maps each tile through the head

    def put(self, block):
        if self.map is None:  # the head gives labels (-1 stays off tissue)
            self.labels[block.r0 : block.r1][block.valid] = block.features[block.valid]
            return
        for a in range(0, len(block.valid), PUSH_ROWS):  # the smoother's steps: its temporaries stay small
            for rows in self.stream.push(block.features[a : a + PUSH_ROWS], block.valid[a : a + PUSH_ROWS]):
                self.map.push(rows)

    def close(self):
        if self.map is None:
            return self.labels, None
        for rows in self.stream.flush():
            self.map.push(rows)
        return self.map.close()

    def abort(self):
        if self.writer is not None:
            self.writer.abort()


def band_writers(probabilities, uncertainty, valid, names, cell_um):
    """The writer a slice's probabilities stream into, band by band (:class:`ClassifySink`'s ``probabilities``):
    the OME-TIFF ``probabilities`` (K, R, C) of the classes ``names``, and with ``uncertainty`` their margin and
    entropy beside it (:mod:`brainrt.maps.uncertainty`; NaN off the ``valid`` cells); grid cells ``cell_um``
    wide."""
    shape = tuple(valid.shape)
    writer = OmeTiffBands(probabilities, (len(names),) + shape, np.float32, pixel_size_um=cell_um,
                          channel_names=list(names))
    if uncertainty is None:
        return writer
    try:
        u = OmeTiffBands(uncertainty, (len(CHANNELS),) + shape, np.float32, pixel_size_um=cell_um,
                         channel_names=list(CHANNELS))
    except BaseException:
        writer.abort()
        raise
    return Tee(writer, UncertaintyBands(u, valid))
