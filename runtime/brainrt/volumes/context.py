"""A context head's pass over a volume: one task per slice, after the blocks of the slices it reaches
(:func:`~brainrt.volumes.graph.task_graph` places it).

The blocks write each cell's terms (:meth:`~brainrt.heads.context.ContextHead.terms`) instead of
probabilities; the context task of slice z streams the terms of slices ``z - reach .. z +
reach`` band by band through one :class:`~brainrt.heads.context.ContextStream` (in-plane pooling
with halos of rows per slice, then across z: the 3D normalized convolution) and writes
slice z's probabilities to ``scratch/context``, which the slice's finish task smooths and
writes like any head's. Memory: one band of each reached slice plus the halos.
"""

from __future__ import annotations

import numpy as np

from ..heads import Classifier
from ..heads.context import ContextStream
from ..maps.pooling import radius
from .blocks import worker_bundle


def reach(vplan):
    """Slices the pooling reaches on either side of a slice (0: in-plane only)."""
    return max([radius(sz) for _, sz in vplan.context], default=0)


def context_slice(vplan, store, z):
    """Slice z's class probabilities by the context head, from the terms of the slices within its reach."""
    import zarr

    head = Classifier.of(worker_bundle(vplan), vplan.head).context
    stream = ContextStream(head, [s for s, _ in vplan.context], [sz for _, sz in vplan.context])
    root = zarr.open_group(str(store), mode="r+")
    zi, c = vplan.zs.index(z), stream.reach
    near = [j if 0 <= j < len(vplan.zs) else None for j in range(zi - c, zi + c + 1)]
    terms, valid, out = root["scratch/probabilities"], root["scratch/valid"], root["scratch/context"]
    done = 0
    for rows in _streamed(stream, terms, valid, near, vplan.bands):
        out[zi, done : done + len(rows)] = rows
        done += len(rows)


def _streamed(stream, terms, valid, near, bands):
    """The stream's probability rows, fed band by band with the terms of the ``near`` slices (None: beyond)."""
    for r0, r1 in bands:
        yield from stream.push_slices([None if j is None else np.asarray(terms[j, r0:r1]) for j in near],
                                      [None if j is None else np.asarray(valid[j, r0:r1]) for j in near])
    yield from stream.flush()
