"""The public Python API: featurize, classify, cluster, subdivide, score; save and load features.

Every function that takes raw input turns it into a checked :class:`~brainrt.engine.plan.Plan`
first (:func:`make_plan`, the input edge), then runs the windowing engine over a
predictor of the bundle into a sink (:func:`brainrt.engine.loop.run`, :mod:`brainrt.outputs.sinks`),
which applies heads to the blocks (:mod:`brainrt.heads`) or writes them. Options after
the data argument are keyword-only. Every function is safe to call from several threads with one loaded :class:`~brainrt.bundle.load.Bundle`
(onnxruntime sessions are thread-safe for ``run``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .bundle.load import default_model, demo_model
from .bundle.scoring import pixel_metrics, read_truth, score
from .engine.grid import FeatureGrid, load_features, zarr_attrs
from .engine.loop import Block, Meter, drain, run
from .engine.plan import (DEFAULT_BATCH_SIZE, DEFAULT_MIN_TISSUE, DEFAULT_PRECISION, DEFAULT_STANDARDIZE,
                          DEFAULT_STRIDE, make_plan)
from .errors import BrainrtError
from .geometry import cell_centre, upsample
from .heads import ClassMapResult, Classifier, area_loglik, gmm_clusters, head_bands
from .maps.smooth import choose
from .outputs.sinks import ArraySink, ClassifySink, ZarrFeatureSink, band_writers
from .sources import read_mask

log = logging.getLogger("brainrt")

__all__ = ["ClassMapResult", "FeatureGrid", "classify", "classify_image", "classify_plan", "cluster",
           "default_model", "demo_model", "featurize", "featurize_plan", "interior_cells", "load_features", "make_plan",
           "pixel_metrics", "read_truth", "region_cells", "score", "subdivide", "upsample"]


def featurize(image, bundle, *, stride=DEFAULT_STRIDE, method="auto", tissue=None, min_tissue=DEFAULT_MIN_TISSUE,
              threshold=None, batch_size=DEFAULT_BATCH_SIZE, out=None, progress=False, pixel_size_um=None, z=None,
              standardize=DEFAULT_STANDARDIZE, precision=DEFAULT_PRECISION):
    """Features of the patch centred on every tissue cell of a stride grid.

    Parameters
    ----------
    image : ndarray (H, W), or str or Path of a TIFF
        uint8, uint16, float32 or float64 (float taken as [0, 1]) grayscale slice; with
        ``z``, a slice of a 3D stack.
    bundle : Bundle
        A loaded model bundle.
    stride : int
        Grid step in pixels; cell ``(i, j)`` is centred on ``(i*stride + stride//2, j*stride + stride//2)``.
    method : {"auto", "patch", "dense"}
        "dense" evaluates large tiles at once (strides dividing 16 or multiples of 16;
        "auto" uses it whenever it applies); both give the same features.
    tissue : None, "otsu", "all", ndarray (H, W) or a mask TIFF path
        Which cells to featurize: Otsu threshold (default), every cell, or a user mask.
    min_tissue, threshold : float
        Minimum tissue fraction of a patch for its cell to count; fixed threshold instead of Otsu's.
    batch_size : int
        Patches per predictor call (per-patch path).
    out : str, Path or None
        Write the grid to this zarr folder (atomically) instead of keeping it in memory.
    progress : bool
        Show a progress bar (patches/s, ETA).
    pixel_size_um : float or None
        Default: the TIFF's, else 1.17.
    standardize : {"auto", "match", "off"}
        Map the tissue histogram onto the training tissue's: "auto" where the pixel range demands it.
    precision : {"fp32", "int8"}
        "int8" runs the bundle's int8 graphs (dense path about 3.5x faster; README, "int8").

    Returns a :class:`FeatureGrid`: ``features`` (R, C, F) float32, R, C = ceil(H / stride), ceil(W / stride).
    """
    plan = make_plan(image, bundle, stride=stride, method=method, tissue=tissue, min_tissue=min_tissue,
                     threshold=threshold, z=z, pixel_size_um=pixel_size_um, batch_size=batch_size,
                     standardize=standardize, precision=precision)
    return featurize_plan(plan, bundle, out=out, progress=progress)


def featurize_plan(plan, bundle, *, out=None, progress=False, on_block=None, record=None):
    """:func:`featurize` of a checked plan: features in memory, or streamed into the zarr folder ``out``
    (with the run ``record`` of :mod:`brainrt.outputs.finished` inside, if given).

    ``on_block(block, meter)`` is called after every block of grid rows (see :func:`brainrt.engine.loop.run`).
    """
    meter = Meter(plan.n_cells, progress=progress)
    try:
        sink = (ArraySink.features(plan.shape, bundle.n_features) if out is None else
                ZarrFeatureSink(out, valid=plan.valid, n_features=bundle.n_features,
                                attrs=zarr_attrs(plan, bundle.model_id), record=record))
        features = run(plan, bundle.predictor_for(plan), sink, meter=meter, on_block=on_block)
    except BaseException:
        meter.close(plan.method)  # ends the progress bar's line before the error message (and says no more)
        raise
    stats = _close(meter, plan, "featurized")
    return FeatureGrid.of_plan(plan, features, bundle.model_id, stats)


def _close(meter, plan, verb):
    stats = {**meter.close(plan.method), "precision": plan.precision}
    log.info("%s %d patches by the %s path (%s) in %.1f s (%.0f patches/s)", verb, stats["patches"], plan.method,
             plan.precision, stats["seconds"], stats["patches_per_s"] or 0)
    return stats


def _check_grid(grid, bundle):
    if grid.model_id != bundle.model_id:
        raise BrainrtError(f"features were computed by model {grid.model_id}, not by this bundle "
                           f"({bundle.path}, model {bundle.model_id})")


def classify(grid, bundle, *, head=None, smooth=None):
    """Area of every featurized cell by a head of the bundle.

    Parameters
    ----------
    grid : FeatureGrid
        From :func:`featurize` or :func:`load_features` with the same bundle.
    head : str or None
        One of :data:`~brainrt.heads.CLASSIFIER_HEADS` that the bundle holds ("cnn": the network's own output
        layer, "ctx": a context head); None: the bundle's default.
    smooth : float or None
        Gaussian smoothing of the class scores before the argmax, sigma in micrometres
        (:mod:`brainrt.maps.smooth`); None: the bundle's default (chosen on validation), 0: off.

    Returns
    -------
    ClassMapResult
    """
    _check_grid(grid, bundle)
    return classify_plan(grid, bundle, head=head, smooth=smooth)


def _smoothing(bundle, clf, smooth, pixel_size_um, stride):
    """(sigma in grid cells, space) of a classification (:func:`brainrt.maps.smooth.choose`)."""
    return choose(bundle.manifest.smoothing, smooth, proba=clf.proba, pixel_size_um=pixel_size_um, stride=stride)


def classify_image(image, bundle, *, stride=DEFAULT_STRIDE, head=None, method="auto", tissue=None,
                   min_tissue=DEFAULT_MIN_TISSUE, threshold=None, batch_size=DEFAULT_BATCH_SIZE, progress=False,
                   pixel_size_um=None, z=None, smooth=None, standardize=DEFAULT_STANDARDIZE, precision=DEFAULT_PRECISION):
    """Featurize and classify a slice in one streaming pass (features never held whole).

    Same options as :func:`featurize` plus ``head`` and ``smooth`` (see :func:`classify`);
    same result as ``classify(featurize(image, bundle, ...), bundle, head=head,
    smooth=smooth)``, with memory bounded by one block of grid rows whatever the slice
    size. The returned grid has no features.
    """
    Classifier.of(bundle, head)  # a bad head fails before the plan's work
    plan = make_plan(image, bundle, stride=stride, method=method, tissue=tissue, min_tissue=min_tissue,
                     threshold=threshold, z=z, pixel_size_um=pixel_size_um, batch_size=batch_size,
                     standardize=standardize, precision=precision, owner="classify_image")
    return classify_plan(plan, bundle, head=head, smooth=smooth, progress=progress)


def classify_plan(plan, bundle, *, head=None, smooth=None, progress=False, on_block=None, probabilities=None,
                  uncertainty=None):
    """:func:`classify_image` of a checked plan, or :func:`classify` of a saved :class:`FeatureGrid` (``plan``):
    the one path of a slice's map. The head runs on each block of rows as it comes (the engine's, featurized
    as the plan streams; a saved grid's rows, a head call's band at a time) and the map is finished as the rows
    arrive (:class:`~brainrt.outputs.sinks.ClassifySink`: smoothing with a halo of rows, the labels).

    ``probabilities``: an OME-TIFF path the (smoothed) probabilities are streamed to, a band of
    rows at a time, instead of being kept (the result then holds none): a stride-1 slice then
    never holds them whole. Written atomically; ignored for heads without probabilities.
    ``uncertainty`` (with ``probabilities``): an OME-TIFF path their margin and entropy are streamed to
    (:mod:`brainrt.maps.uncertainty`; else :meth:`ClassMapResult.uncertainty` computes them from the result).
    """
    clf, saved = Classifier.of(bundle, head), isinstance(plan, FeatureGrid)
    if saved:
        _check_grid(plan, bundle)
    sigma, space = _smoothing(bundle, clf, smooth, plan.pixel_size_um, plan.stride)
    writer = (band_writers(probabilities, uncertainty, plan.valid, bundle.class_names, plan.pixel_size_um * plan.stride)
              if probabilities is not None and clf.proba else None)
    meter = Meter(0 if saved else plan.n_cells, progress=progress and not saved)
    try:
        sink = ClassifySink(clf, plan.valid, sigma=sigma, space=space, stream=clf.stream(plan.pixel_size_um, plan.stride),
                            probabilities=writer)
        labels, probs = (drain(_saved_blocks(plan, sink.cells), sink, meter=meter, on_block=on_block) if saved else
                         run(plan, bundle.predictor_for(plan), sink, meter=meter, on_block=on_block))
        if writer is not None:
            writer.commit()
    except BaseException:
        meter.close(None if saved else plan.method)  # as in featurize_plan
        if writer is not None:  # the loop's sink aborts it; this covers a failure before the loop (idempotent)
            writer.abort()
        raise
    grid = plan if saved else FeatureGrid.of_plan(plan, None, bundle.model_id, _classified(meter, plan, writer,
                                                                                          probabilities, uncertainty))
    return ClassMapResult(labels, probs, bundle.class_names, bundle.class_codes, grid, clf.name,
                          sigma * plan.pixel_size_um * plan.stride, bundle.manifest.class_colors)


def _saved_blocks(grid, cells):
    """The rows of a saved grid as the engine's blocks of ``cells``' values (a head's, :func:`head_bands`)."""
    for r0, r1, values in head_bands(grid.features, grid.valid, cells.fn):
        v = grid.valid[r0:r1]
        block = cells.empty(r1 - r0, v.shape[1])
        if values is not None:
            block[v] = values
        yield Block(r0, r1, block, v)


def _classified(meter, plan, writer, probabilities, uncertainty):
    """The statistics of a plan's classification (where its probabilities and uncertainty were streamed)."""
    stats = _close(meter, plan, "featurized and classified")
    if writer is not None:
        stats["probabilities"] = str(probabilities)
        if uncertainty is not None:
            stats["uncertainty"] = str(uncertainty)
    return stats


def cluster(grid, bundle):
    """GMM clusters and per-area log-likelihoods of every featurized cell.

    Returns
    -------
    clusters : ndarray (R, C) int16
        GMM component per cell (-1 off tissue).
    loglik : ndarray (R, C, K) float32
        ``log p(features | area)`` for each area (NaN off tissue); low everywhere = outlier.
    """
    _check_grid(grid, bundle)
    return gmm_clusters(grid.features, grid.valid, bundle), area_loglik(grid.features, grid.valid, bundle)


def subdivide(grid, *, region, k=4, n_components=10, seed=0, interior=False):
    """PCA + KMeans of the features inside one region (e.g. one area's cells).

    Parameters
    ----------
    grid : FeatureGrid
    region : ndarray (R, C) bool
        Cells to sub-divide (combined with ``grid.valid``).
    k : int
        Number of clusters.
    interior : bool
        Only cells whose whole patch lies inside the region (:func:`interior_cells`): patches
        that cross the region's border see the neighbouring area, and cluster by that
        (thin strips along the border) rather than by the region's own structure.

    Returns
    -------
    clusters : ndarray (R, C) int16
        Cluster per cell of the region, -1 elsewhere; clusters are numbered by their
        mean first principal component, so numbering is stable across runs.
    """
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    sel = _selection(region, grid, k, interior)
    rows = np.flatnonzero(sel.any(axis=1))
    f = np.concatenate([np.asarray(grid.features[r])[sel[r]] for r in rows])
    z = StandardScaler().fit_transform(f)
    pcs = PCA(min(n_components, z.shape[1]), random_state=seed).fit_transform(z)
    lab = KMeans(k, n_init=10, random_state=seed).fit_predict(pcs)
    order = np.argsort([pcs[lab == i, 0].mean() for i in range(k)])
    remap = np.empty(k, np.int16)
    remap[order] = np.arange(k)
    out = np.full(grid.shape, -1, np.int16)
    out[sel] = remap[lab]
    return out


def _selection(region, grid, k, interior):
    """The featurized cells of ``region`` (only its interior, if asked); at least ``k`` of them."""
    sel = np.asarray(region, bool) & grid.valid
    if interior:
        sel = interior_cells(sel, grid)
    if sel.sum() < k:
        where = "the region's interior (cells whose patch lies inside it)" if interior else "the region"
        raise BrainrtError(f"{where} holds {int(sel.sum())} featurized cells, fewer than k={k}")
    return sel


def interior_cells(region, grid):
    """Cells of ``region`` whose patch lies inside it: the region eroded by half a patch (the paper sampled
    inside areas). The image edge does not count as a border."""
    from scipy.ndimage import binary_erosion

    r = -(-(grid.patch_size // 2) // grid.stride)  # ceil(P/2 / stride) cells
    return binary_erosion(np.asarray(region, bool), np.ones((2 * r + 1, 2 * r + 1), bool), border_value=1)


def region_cells(grid, bundle, *, area=None, roi=None, head=None, z=None):
    """Cells of one area (by the classifier) or inside a ROI mask (array or TIFF, by each cell's centre pixel)."""
    if area is not None:
        if area not in bundle.class_names:
            raise BrainrtError(f"unknown area {area!r}; the bundle's areas are {', '.join(bundle.class_names)}")
        return classify(grid, bundle, head=head).labels == bundle.class_names.index(area)
    mask = read_mask(roi, grid.image_shape, z=z, what="ROI mask") if isinstance(roi, (str, Path)) else np.asarray(roi)
    R, C = grid.shape
    ys = np.minimum(cell_centre(np.arange(R), grid.stride), mask.shape[0] - 1)
    xs = np.minimum(cell_centre(np.arange(C), grid.stride), mask.shape[1] - 1)
    return mask[np.ix_(ys, xs)] != 0
