"""OME-NGFF 0.5 metadata of the OME-Zarr images brainrt writes (zarr v3 groups).

One place says how an image's levels, axes and physical placement are written, for every writer
(the classify volume's probabilities and label pyramid, the feature images): each level's
``coordinateTransformations`` is its scale, then the half-cell offset of a grid image as a translation
(the order the specification requires: a translation after the scale); every array carries
``dimension_names`` equal to the axes' names (:func:`create_level`). The tests validate what this
writes with ``ome-zarr-models``. (napari-ome-zarr 0.10 applies only each image's first transform, the
scale: it draws grid images half a cell up and left; brainrt's own napari reader places feature grids.)
"""

from __future__ import annotations

import numpy as np

VERSION = "0.5"
UNIT = "micrometer"


def axes(names):
    """The axes of ``names`` ("czyx", "cyx", "zyx", "yx"): c a channel axis, the others space in micrometres."""
    return [{"name": a, "type": "channel"} if a == "c" else {"name": a, "type": "space", "unit": UNIT} for a in names]


def create_level(group, path, names, shape, chunks, dtype, fill_value=0, compressors="auto"):
    """A level array of an image (``names``: its axes' names, its ``dimension_names``)."""
    return group.create_array(path, shape=shape, chunks=chunks, dtype=dtype, fill_value=fill_value,
                              dimension_names=tuple(names), compressors=compressors)


def image_attrs(name, names, scales, *, translation=None, channels=None, window=None):
    """The ``ome`` attributes of a multiscale image: ``scales[i]`` the per-axis scale of level ``str(i)``,
    ``translation`` the physical offset of every level (a grid's half cell), ``channels`` the channel
    names (omero, with the display ``window`` (lo, hi) when given)."""
    shift = [{"type": "translation", "translation": _floats(translation)}] \
        if translation is not None and any(translation) else []
    ms = {"name": name, "axes": axes(names),
          "datasets": [{"path": str(i), "coordinateTransformations": [{"type": "scale", "scale": _floats(s)}, *shift]}
                       for i, s in enumerate(scales)]}
    ome = {"version": VERSION, "multiscales": [ms]}
    if channels is not None:
        ome["omero"] = {"channels": [_channel(n, window) for n in channels]}
    return {"ome": ome}


def labels_attrs(names):
    """The ``ome`` attributes of an image's ``labels`` group listing the label images ``names``."""
    return {"ome": {"version": VERSION, "labels": list(names)}}


def label_image_attrs(name, names, scales, *, values, colors=None, translation=None):
    """A label image's ``ome`` attributes: :func:`image_attrs` plus ``image-label`` (each of ``values``,
    ``{value: name}``, named and coloured by ``colors`` ``{value: (r, g, b, a)}`` 0..255)."""
    attrs = image_attrs(name, names, scales, translation=translation)
    il = {"version": VERSION, "source": {"image": "../../"},
          "properties": [{"label-value": int(v), "name": str(n)} for v, n in values.items()]}
    if colors:
        il["colors"] = [{"label-value": int(v), "rgba": [int(c) for c in rgba]} for v, rgba in colors.items()]
    attrs["ome"]["image-label"] = il
    return attrs


def _channel(name, window):
    c = {"label": str(name), "active": True}
    if window is not None:
        lo, hi = (float(v) for v in window)
        c["window"] = {"start": lo, "end": hi, "min": lo, "max": hi}
    return c


def _floats(v):
    return [float(x) for x in np.asarray(v, dtype=float).ravel()]
