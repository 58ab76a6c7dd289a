"""Writers of a slice's maps: OME-TIFF maps with their pixel size, PNG previews, JSON metrics.

Writers only write: they take computed results (and the image, for previews) and put them on
disk as one output set (:class:`~brainrt.outputs.tiff_set.TiffSet`). Computing, reading and
scoring happen before, in :mod:`brainrt.api`.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

from ..geometry import upsample
from ..heads import OFF_TISSUE
from ..io import write_json
from ..plots import area_colors, confusion_png, overlay_png
from ..maps.uncertainty import CHANNELS
from .finished import set_member
from .ome_tiff import OmeTiffBands, write_ome_tiff
from .tiff_set import TiffSet, probabilities_path, uncertainty_path


def classification_set(out, record):
    """The output set of the label map ``out`` (``with``: written as one), for :func:`write_classification`'s
    ``into`` when the probabilities are streamed into it first (:func:`probabilities_path`)."""
    return TiffSet(out).writing(record)


def label_key(names, codes):
    """The class names of a label map, by code ("areas: 1 Ctx, 2 Str, ..., 255 off tissue"), as its channel name."""
    return "areas: " + ", ".join(f"{c} {n}" for c, n in zip(codes, names)) + f", {OFF_TISSUE} off tissue"


def write_classification(out, result, *, image=None, metrics=None, truth=None, record=None, into=None,
                         uncertain_below=None, preview_width=None):
    """Label map (full resolution, mask codes), probabilities and their uncertainty (margin, entropy; grid
    resolution, uncompressed), overlay PNG (with ``image``; truth borders with ``truth``, a mask of the
    image's shape; hatched where the margin is below ``uncertain_below``; ``preview_width`` px wide, default
    :data:`brainrt.plots.PREVIEW_WIDTH`; the areas in the class map's colours, else the atlas's) and, with
    ``metrics`` (from :func:`brainrt.api.score`), metrics JSON and confusion PNG: one output set,
    written as one (files of an older set that this call does not write are removed). ``into``: the
    open set (:func:`classification_set`) the probabilities were already streamed into
    (:func:`brainrt.api.classify_plan`), committed by its ``with``. Returns the paths written."""
    with contextlib.nullcontext(into) if into is not None else TiffSet(out).writing(record) as s:
        return [str(p) for p in _write_classification(s, Path(out), result, image, metrics, truth, uncertain_below,
                                                      preview_width)]


def _write_classification(s, out, result, image, metrics, truth, uncertain_below, preview_width):
    grid = result.grid
    px = grid.pixel_size_um
    write_ome_tiff(s.path(out), upsample(result.cell_codes(), grid.stride, grid.image_shape), pixel_size_um=px,
                   channel_names=[label_key(result.names, result.codes)])
    written = [out]
    held = {probabilities_path(out): (result.probabilities, result.names), uncertainty_path(out): (result.uncertainty(), CHANNELS)}
    for p, (values, names) in held.items():
        if values is not None:
            bands = OmeTiffBands(s.path(p), (len(names),) + values.shape[:2], np.float32,
                                 pixel_size_um=px * grid.stride, channel_names=list(names))
            bands.write(0, values)
            bands.commit()
        if values is not None or s.has(p):
            written.append(p)
    if image is not None:
        png = set_member(out, ".overlay.png")
        overlay_png(s.path(png), image, upsample(result.labels, grid.stride, grid.image_shape), result.names,
                    title=f"brainrt classify (stride {grid.stride})", pixel_size_um=px, truth=truth,
                    hatch=_uncertain(s, out, result, uncertain_below),
                    hatch_label=f"margin < {uncertain_below:g}" if uncertain_below is not None else "",
                    width=preview_width, colors=area_colors(result.names, result.colors))
        written.append(png)
    if metrics is not None:
        j, c = set_member(out, ".metrics.json"), set_member(out, ".confusion.png")
        write_json(s.path(j), metrics)
        confusion_png(s.path(c), metrics["confusion_matrix"], result.names,
                      title=f"pixels vs truth (accuracy {metrics['pixel_accuracy']:.3f})")
        written += [j, c]
    return written


def _uncertain(s, out, result, below):
    """Full-resolution mask of the cells whose margin is below ``below`` (None without a threshold), from the
    result or from the uncertainty map streamed into the set ``s``."""
    if below is None:
        return None
    u = result.uncertainty()
    if u is None:
        path = s.written(uncertainty_path(out))
        if path is None:
            return None
        import tifffile

        u = np.moveaxis(tifffile.imread(path, key=0)[None], 0, -1)
    margin = u[..., 0]
    return upsample(np.isfinite(margin) & (margin < below), result.grid.stride, result.grid.image_shape)


def write_clusters(out, clusters, loglik, grid, names, *, image=None, record=None):
    """GMM cluster map (full resolution), per-area log-likelihood maps (grid resolution), PNG: one output set."""
    c8 = np.where(clusters >= 0, clusters, OFF_TISSUE).astype(np.uint8)
    ll = set_member(out, ".loglik.ome.tif")
    with TiffSet(out).writing(record) as s:
        write_ome_tiff(s.path(out), upsample(c8, grid.stride, grid.image_shape), pixel_size_um=grid.pixel_size_um)
        write_ome_tiff(s.path(ll), np.moveaxis(loglik, -1, 0), pixel_size_um=grid.pixel_size_um * grid.stride,
                       channel_names=names)
        png = _cluster_overlay(s, out, clusters, grid, image, "GMM clusters")
    return [str(out), str(ll)] + png


def write_subdivision(out, sub, grid, *, image=None, title="", record=None):
    """Sub-division cluster map (full resolution) and an overlay PNG: one output set."""
    s8 = np.where(sub >= 0, sub, OFF_TISSUE).astype(np.uint8)
    with TiffSet(out).writing(record) as s:
        write_ome_tiff(s.path(out), upsample(s8, grid.stride, grid.image_shape), pixel_size_um=grid.pixel_size_um)
        png = _cluster_overlay(s, out, sub, grid, image, title)
    return [str(out)] + png


def _cluster_overlay(s, out, clusters, grid, image, title):
    """The overlay PNG of a cluster map beside ``out``, in the output set ``s`` (none without the image)."""
    if image is None:
        return []
    png = set_member(out, ".overlay.png")
    k = int(clusters.max()) + 1
    overlay_png(s.path(png), image, upsample(clusters, grid.stride, grid.image_shape), [f"cluster {i}" for i in range(k)],
                title=title, pixel_size_um=grid.pixel_size_um)
    return [str(png)]
