"""The plugin's work, without Qt: jobs that run the library and return napari layer data.

Each job featurizes through the library's one loop (:func:`brainrt.api.featurize_plan`,
hence :func:`brainrt.engine.loop.run`) with a :class:`Progress` as its per-block callback: it
reports the fraction of cells done after every block of grid rows and raises
:class:`Cancelled` at the next block once Cancel is pressed. A job returns a list of
layer-data tuples ``(data, kwargs, layer_type)`` that the widget adds all at once (nothing
is half-added). Errors are :class:`~brainrt.errors.BrainrtError` s with one line; the
widget shows them as notifications.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import api
from ..bundle.load import Bundle, models_dir
from ..engine.plan import DEFAULT_PRECISION, make_plan
from ..errors import BrainrtError, file_error
from ..geometry import cell_centre, upsample
from ..plots import area_colors


class Cancelled(Exception):
    """Cancel was pressed: the job stopped between two blocks and returns nothing."""


class Progress:
    """The per-block callback of a job: ``report(fraction)`` after every block, and :class:`Cancelled`
    raised at the first block after ``cancelled()`` turns true."""

    def __init__(self, report=None, cancelled=None):
        self.report, self.cancelled = report, cancelled

    def __call__(self, block, meter):
        if self.cancelled is not None and self.cancelled():
            raise Cancelled
        if self.report is not None:
            self.report(meter.n / max(meter.total, 1))


@dataclass(frozen=True)
class Source:
    """A 2D image taken from a napari layer: the pixels and where they sit in the world.

    ``scale`` and ``translate`` are the layer's last two axes (y, x); ``z`` is the slice
    index of a 3D layer (None for 2D); ``name`` names the layer in messages and outputs.
    """

    image: np.ndarray
    scale: tuple
    translate: tuple
    name: str
    z: int | None = None

    @property
    def pixel_size_um(self):
        """The layer's pixel size, taken as micrometres; None (the runtime's default) for an unscaled layer."""
        return None if float(self.scale[-1]) == 1.0 else float(self.scale[-1])

    def label(self, what):
        return f"{what} ({self.name}{'' if self.z is None else f', z={self.z}'})"


@functools.lru_cache(maxsize=4)
def load_bundle(path, device="auto"):
    """A loaded bundle, verified once per folder and device and then reused (hashing weights takes a moment)."""
    path = Path(path)
    if not str(path) or not path.is_dir():
        raise file_error(path, "not a model bundle folder")
    return Bundle.load(path, device=device)


def featurize(source, bundle, *, stride, precision=DEFAULT_PRECISION, on_block=None):
    """The :class:`~brainrt.engine.grid.FeatureGrid` of ``source`` (``on_block``: a :class:`Progress`)."""
    plan = make_plan(source.image, bundle, stride=stride, pixel_size_um=source.pixel_size_um, owner="napari",
                     precision=precision)
    return api.featurize_plan(plan, bundle, on_block=on_block)


def grid_layer(data, source, grid, name, **kw):
    """Image-layer kwargs of a grid-resolution map: each cell covers its stride x stride pixels exactly."""
    s = grid.stride
    scale = tuple(float(v) * s for v in source.scale)
    translate = tuple(t + (s - 1) / 2 * float(v) for t, v in zip(source.translate, source.scale))
    return data, dict(name=name, scale=scale, translate=translate, **kw), "image"


def labels_layer(cells, source, grid, name, names, colors=None, values=None, **kw):
    """Labels at full resolution (``values[i]`` for cell index i, 0 off the region) with a name per value and
    colours (``colors``: one per name, e.g. a class map's "#rrggbb"; default: the palette). ``values``: an area
    map's mask codes (the CLI's label map and the strokes layer hold the same); default: index + 1 (clusters)."""
    from napari.utils.colormaps import DirectLabelColormap

    values = [int(v) for v in (values if values is not None else range(1, len(names) + 1))]
    lut = np.asarray([0, *values], np.uint16)
    full = upsample(lut[np.asarray(cells) + 1], grid.stride, grid.image_shape)
    colors = area_colors(names, colors)
    cmap = DirectLabelColormap(color_dict={None: (0, 0, 0, 0), 0: (0, 0, 0, 0),
                                           **{v: (*colors[i], 1.0) for i, v in enumerate(values)}})
    features = {"index": np.asarray([0, *values]), "name": ["none", *names]}
    return full, dict(name=name, scale=tuple(source.scale), translate=tuple(source.translate), colormap=cmap,
                      features=features, opacity=0.5,
                      metadata={"brainrt_names": list(names), "brainrt_values": values}, **kw), "labels"


def area_value(metadata, area):
    """The Labels value of ``area`` in a brainrt map layer's ``metadata`` (None: not one of its areas)."""
    names = list(metadata.get("brainrt_names") or [])
    if area not in names:
        return None
    values = metadata.get("brainrt_values") or range(1, len(names) + 1)
    return int(list(values)[names.index(area)])


def suggested_bundle(metadata, current, default):
    """The bundle a widget should use for an image layer: the one its ``brainrt_bundle`` metadata names (the sample
    slice: the synthetic-demo bundle, which was trained on such slices; slice309's sees them as almost all one
    area) while the bundle field still holds the ``default``; else ``current``."""
    name = (metadata or {}).get("brainrt_bundle")
    if name and str(current) == str(default) and (models_dir() / name).is_dir():
        return str(models_dir() / name)
    return current


def area_map_job(source, bundle_path, *, stride=16, head=None, smooth=None, precision=DEFAULT_PRECISION,
                 on_block=None):
    """Area map: a Labels layer of the classes and one probability image per class."""
    bundle = load_bundle(bundle_path)
    grid = featurize(source, bundle, stride=stride, precision=precision, on_block=on_block)
    result = api.classify(grid, bundle, head=head, smooth=smooth)
    layers = [labels_layer(result.labels, source, grid, source.label("areas"), result.names,
                           values=[cs[0] for cs in bundle.manifest.codes_per_class])]
    if result.probabilities is not None:
        layers += [grid_layer(result.probabilities[..., i], source, grid, source.label(f"p({n})"),
                               colormap="magma", contrast_limits=(0.0, 1.0), blending="additive", visible=False)
                   for i, n in enumerate(result.names)]
    return layers


def clusters_job(source, bundle_path, *, stride=16, precision=DEFAULT_PRECISION, on_block=None):
    """GMM clusters (Labels) and per-area log-likelihood maps (low everywhere = outlier)."""
    bundle = load_bundle(bundle_path)
    grid = featurize(source, bundle, stride=stride, precision=precision, on_block=on_block)
    clusters, loglik = api.cluster(grid, bundle)
    n = int(clusters.max()) + 1
    layers = [labels_layer(clusters, source, grid, source.label("clusters"), [f"cluster {i}" for i in range(n)])]
    finite = loglik[np.isfinite(loglik)]
    limits = (float(np.percentile(finite, 1)), float(finite.max())) if finite.size else (0.0, 1.0)
    layers += [grid_layer(loglik[..., i], source, grid, source.label(f"loglik({name})"), colormap="viridis",
                           contrast_limits=limits, visible=i == 0) for i, name in enumerate(bundle.class_names)]
    return layers


def subdivide_job(source, bundle_path, *, region, stride=16, k=4, interior=True, area=None, head=None,
                  precision=DEFAULT_PRECISION, on_block=None):
    """PCA + KMeans inside a region: ``region(grid)`` gives the cells (R, C) bool, or None with ``area``."""
    bundle = load_bundle(bundle_path)
    grid = featurize(source, bundle, stride=stride, precision=precision, on_block=on_block)
    cells = api.region_cells(grid, bundle, area=area, head=head) if region is None else region(grid, source)
    if not np.any(cells):
        raise BrainrtError(f"{source.name}: the region holds no grid cell of the image")
    sub = api.subdivide(grid, region=cells, k=k, interior=interior)
    what = f"subdivide {area}" if region is None else "subdivide"
    return [labels_layer(sub, source, grid, source.label(what), [f"cluster {i}" for i in range(k)])]


def cell_world(grid, source):
    """World (y, x) coordinates of every grid cell's centre, (R, C, 2)."""
    R, C = grid.shape
    ys = cell_centre(np.arange(R), grid.stride) * float(source.scale[0]) + source.translate[0]
    xs = cell_centre(np.arange(C), grid.stride) * float(source.scale[1]) + source.translate[1]
    return np.stack(np.meshgrid(ys, xs, indexing="ij"), axis=-1)


def layer_region(kind, data, scale, translate, *, value=0, z=None):
    """``region(grid, source)`` of a Labels layer (``value``, or any nonzero) or a Shapes layer (inside any shape)."""

    def region(grid, source):
        world = cell_world(grid, source)
        if kind == "shapes":
            return _inside_shapes(data, (world - translate) / scale)
        labels = np.asarray(data[z] if (z is not None and np.ndim(data) == 3) else data)
        idx = np.rint((world - translate) / scale).astype(np.int64)
        inside = np.all((idx >= 0) & (idx < labels.shape), axis=-1)
        vals = np.zeros(idx.shape[:2], labels.dtype)
        vals[inside] = labels[idx[inside][:, 0], idx[inside][:, 1]]
        return vals == value if value else vals != 0

    return region


def _inside_shapes(shapes, points):
    """Which ``points`` (R, C, 2), in the Shapes layer's data coordinates, lie inside any shape (y, x)."""
    from matplotlib.path import Path as MplPath

    flat = points.reshape(-1, 2)
    inside = np.zeros(len(flat), bool)
    for kind, verts in shapes:
        verts = np.asarray(verts, float)[:, -2:]
        if kind == "ellipse":  # napari stores the four corners of its bounding box
            c, a, b = verts.mean(0), (verts[1] - verts[0]) / 2, (verts[3] - verts[0]) / 2
            t = np.linspace(0, 2 * np.pi, 64)[:, None]
            verts = c + np.cos(t) * a + np.sin(t) * b
        if kind in ("line", "path") or len(verts) < 3:
            continue
        inside |= MplPath(verts).contains_points(flat)
    return inside.reshape(points.shape[:2])
