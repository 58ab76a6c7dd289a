"""The public Python API: featurize, classify, cluster, subdivide; save and load features.

Options after the data argument are keyword-only. Inputs are validated here, once; the
kernels behind trust them. Every function is safe to call from several threads with one
loaded :class:`~brainrt.bundle.Bundle` (onnxruntime sessions are thread-safe for ``run``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import BrainrtError, file_error
from .featurize import FeatureGrid, Progress, iter_blocks, plan_grid, resolve_method, validate_image

log = logging.getLogger("brainrt")

ZARR_FORMAT = "brainrt-features/1"


def featurize(image, bundle, *, stride=16, method="auto", tissue=None, min_tissue=0.5, threshold=None,
              batch_size=256, out=None, progress=False, pixel_size_um=1.17):
    """Features of the patch centred on every tissue cell of a stride grid.

    Parameters
    ----------
    image : ndarray (H, W)
        uint8, uint16 or float32 (float taken as [0, 1]) grayscale slice.
    bundle : Bundle
        A loaded model bundle.
    stride : int
        Grid step in pixels; cell ``(i, j)`` is centred on ``(i*stride + stride//2, j*stride + stride//2)``.
    method : {"auto", "patch", "dense"}
        "dense" evaluates large tiles at once (strides dividing 16 or multiples of 16);
        "auto" uses it whenever it applies. Both give the same features.
    tissue : None, "otsu", "all" or ndarray (H, W)
        Which cells to featurize: Otsu threshold (default), every cell, or a user mask.
    min_tissue : float
        Minimum tissue fraction of a patch for its cell to count.
    threshold : float or None
        Fixed intensity threshold instead of Otsu's.
    batch_size : int
        Patches per onnxruntime call on the per-patch path.
    out : str, Path or None
        Write the grid to this zarr folder (atomically) instead of keeping it in memory.
    progress : bool
        Show a progress bar with patches/s and ETA.

    Returns
    -------
    FeatureGrid
        ``features`` (R, C, F) float32 with R, C = ceil(H / stride), ceil(W / stride).
    """
    image, grid, blocks, finish = _stream(image, bundle, stride=stride, method=method, tissue=tissue,
                                          min_tissue=min_tissue, threshold=threshold, batch_size=batch_size,
                                          progress=progress, pixel_size_um=pixel_size_um)
    R, C = grid.shape
    try:
        if out is None:
            feats = np.zeros((R, C, bundle.n_features), np.float32)
            for r0, r1, block, _ in blocks:
                feats[r0:r1] = block
            grid.features = feats
        else:
            grid.features = _write_zarr(out, grid, blocks, bundle.n_features)
    finally:
        finish("featurized")  # also ends the progress bar's line before any error message
    return grid


def _stream(image, bundle, *, stride, method, tissue, min_tissue, threshold, batch_size, progress, pixel_size_um):
    """Validate once, plan the grid and start the blocks; shared by featurize and classify_image.

    Returns ``(image, grid, blocks, finish)``: ``grid`` has no features yet, ``blocks``
    is :func:`iter_blocks`'s generator, ``finish(verb)`` closes the progress bar and
    records the run's statistics in ``grid.stats``.
    """
    image = validate_image(image, bundle)
    stride, valid = plan_grid(image, bundle, stride=stride, tissue=tissue, min_tissue=min_tissue, threshold=threshold)
    method = resolve_method(method, stride, bundle)
    meter = Progress(valid.sum(), enabled=progress)
    grid = FeatureGrid(None, valid, stride, bundle.patch_size, tuple(image.shape), bundle.model_id, pixel_size_um)
    timings = {}
    blocks = iter_blocks(image, bundle, stride=stride, valid=valid, method=method, batch_size=batch_size,
                         progress=meter, timings=timings)

    def finish(verb):
        grid.stats = {"method": method, **meter.close(), "timings": {k: round(v, 3) for k, v in timings.items()}}
        log.info("%s %d patches by the %s path in %.1f s (%.0f patches/s)", verb, grid.stats["patches"], method,
                 grid.stats["seconds"], grid.stats["patches_per_s"] or 0)

    return image, grid, blocks, finish


def _write_zarr(path, grid, blocks, n_features):
    """Stream blocks into a zarr group written beside ``path`` and renamed into place."""
    import zarr

    from .io import atomic_path

    R, C = grid.shape
    with atomic_path(path, overwrite=True, is_dir=True) as tmp:
        root = zarr.open_group(str(tmp), mode="w")
        arr = root.create_array("features", shape=(R, C, n_features), chunks=(64, 64, n_features), dtype="float32",
                                fill_value=0.0)
        root.create_array("valid", shape=(R, C), chunks=(512, 512), dtype="bool")[:] = grid.valid
        for r0, r1, block, _ in blocks:
            arr[r0:r1] = block
        root.attrs.update({"format": ZARR_FORMAT, "stride": grid.stride, "patch_size": grid.patch_size,
                           "image_shape": list(grid.image_shape), "model_id": grid.model_id,
                           "pixel_size_um": grid.pixel_size_um,
                           "grid": "cell (i, j) is the patch centred on pixel (i*stride + stride//2, j*stride + stride//2)"})
    return zarr.open_group(str(path), mode="r")["features"]


def load_features(path):
    """Open a feature grid written by :func:`featurize` (``out=``) or ``brainrt featurize``."""
    import zarr

    path = Path(path)
    try:
        root = zarr.open_group(str(path), mode="r")
        attrs = dict(root.attrs)
        if attrs.get("format") != ZARR_FORMAT:
            raise ValueError("not a brainrt feature grid")
        feats, valid = root["features"], np.asarray(root["valid"][:])
    except Exception as exc:
        raise file_error(path, f"cannot open as a brainrt feature grid ({_short(exc)})") from None
    return FeatureGrid(feats, valid, int(attrs["stride"]), int(attrs["patch_size"]), tuple(attrs["image_shape"]),
                       attrs["model_id"], float(attrs.get("pixel_size_um", 1.17)))


def _short(exc):
    return (str(exc).splitlines() or [type(exc).__name__])[0][:120]


@dataclass
class ClassMapResult:
    """Per-cell classes: ``labels`` (R, C) int16 class indices (-1 off tissue) and
    ``probabilities`` (R, C, K) float32 (None for heads without probabilities)."""

    labels: np.ndarray
    probabilities: object
    names: list
    codes: list
    grid: FeatureGrid


def _check_grid(grid, bundle):
    if grid.model_id != bundle.model_id:
        raise BrainrtError(f"features were computed by model {grid.model_id}, not by this bundle ({bundle.model_id})")


#: Cells per head call: scikit-learn works in float64, so this bounds its copies (~32 MB).
HEAD_CHUNK = 65536


def _apply_rows(features, valid, fn, out):
    """``out[valid] = fn(features[valid])``, a band of rows at a time (bounded memory).

    ``features`` (r, C, F) may be a NumPy or zarr array; ``out`` (r, C, ...) is filled in
    place and returned.
    """
    step = max(1, HEAD_CHUNK // max(valid.shape[1], 1))
    for r0 in range(0, valid.shape[0], step):
        v = valid[r0 : r0 + step]
        if v.any():
            out[r0 : r0 + step][v] = fn(np.asarray(features[r0 : r0 + step])[v])
    return out


def _per_class(model, fn, n_classes, fill):
    """``fn`` with one float32 column per class of the bundle.

    A head only has columns for the classes it saw in training (``model.classes_``); a
    class without training patches gets ``fill`` (probability 0, log-likelihood NaN).
    """
    seen = np.asarray(getattr(model, "classes_", np.arange(n_classes)), np.int64)

    def apply(f):
        out = np.asarray(fn(f), np.float32)
        if out.shape[1] == n_classes and np.array_equal(seen, np.arange(n_classes)):
            return out
        full = np.full((out.shape[0], n_classes), fill, np.float32)
        full[:, seen] = out
        return full

    return apply


def _classifier(bundle, head):
    """The classifier head ``head`` (default from the manifest) as a per-row function, and
    an empty output for a grid: probabilities (R, C, K) or, without them, labels (R, C)."""
    head = head or bundle.manifest.get("default_head", "logreg")
    model = bundle.head(head)
    if not hasattr(model, "predict") or head in ("gmm", "pca_kmeans", "area_density"):
        raise BrainrtError(f"head {head!r} is not a classifier; use one of logreg, linsvm, rbfsvm, cnn")
    K = len(bundle.class_names)
    if hasattr(model, "predict_proba"):
        return _per_class(model, model.predict_proba, K, 0.0), lambda shape: np.zeros(shape + (K,), np.float32)
    return model.predict, lambda shape: np.full(shape, -1, np.int16)


def _result(out, grid, bundle):
    """ClassMapResult from a head's output grid (probabilities or labels)."""
    if out.ndim == 3:
        labels = np.where(grid.valid, out.argmax(-1), -1).astype(np.int16)
        return ClassMapResult(labels, out, bundle.class_names, bundle.class_codes, grid)
    return ClassMapResult(out, None, bundle.class_names, bundle.class_codes, grid)


def classify(grid, bundle, *, head=None):
    """Area of every featurized cell by a head of the bundle.

    Parameters
    ----------
    grid : FeatureGrid
        From :func:`featurize` or :func:`load_features` with the same bundle.
    head : str or None
        "logreg" (default), "linsvm", "rbfsvm" or "cnn" (the network's own output layer).

    Returns
    -------
    ClassMapResult
    """
    _check_grid(grid, bundle)
    fn, empty = _classifier(bundle, head)
    return _result(_apply_rows(grid.features, grid.valid, fn, empty(grid.shape)), grid, bundle)


def classify_image(image, bundle, *, stride=16, head=None, method="auto", tissue=None, min_tissue=0.5,
                   threshold=None, batch_size=256, progress=False, pixel_size_um=1.17):
    """Featurize and classify a slice in one streaming pass (features never held whole).

    Same options as :func:`featurize` plus ``head``; same result as
    ``classify(featurize(image, bundle, ...), bundle, head=head)``, with memory bounded by
    one block of grid rows whatever the slice size. The returned grid has no features.
    """
    fn, empty = _classifier(bundle, head)
    image, grid, blocks, finish = _stream(image, bundle, stride=stride, method=method, tissue=tissue,
                                          min_tissue=min_tissue, threshold=threshold, batch_size=batch_size,
                                          progress=progress, pixel_size_um=pixel_size_um)
    out = empty(grid.shape)
    try:
        for r0, r1, block, v in blocks:
            _apply_rows(block, v, fn, out[r0:r1])
    finally:
        finish("featurized and classified")
    return _result(out, grid, bundle)


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
    gmm = bundle.head("gmm")
    dens = bundle.head("area_density")
    clusters = _apply_rows(grid.features, grid.valid, gmm.predict, np.full(grid.shape, -1, np.int16))
    K = len(bundle.class_names)
    loglik = _apply_rows(grid.features, grid.valid, _per_class(dens, dens.score_samples, K, np.nan),
                         np.full(grid.shape + (K,), np.nan, np.float32))
    return clusters, loglik


def subdivide(grid, *, region, k=4, n_components=10, seed=0):
    """PCA + KMeans of the features inside one region (e.g. one area's cells).

    Parameters
    ----------
    grid : FeatureGrid
    region : ndarray (R, C) bool
        Cells to sub-divide (combined with ``grid.valid``).
    k : int
        Number of clusters.

    Returns
    -------
    clusters : ndarray (R, C) int16
        Cluster per cell of the region, -1 elsewhere; clusters are numbered by their
        mean first principal component, so numbering is stable across runs.
    """
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    sel = np.asarray(region, bool) & grid.valid
    if sel.sum() < k:
        raise BrainrtError(f"the region holds {int(sel.sum())} featurized cells, fewer than k={k}")
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


def upsample(cells, stride, image_shape):
    """Grid map (R, C, ...) to full resolution (H, W, ...): pixel (y, x) takes cell (y // s, x // s)."""
    h, w = image_shape
    return np.repeat(np.repeat(cells, stride, axis=0), stride, axis=1)[:h, :w]


def pixel_metrics(pred_codes, truth, *, names, codes_per_class, where=None):
    """Accuracy, confusion matrix and per-class F1 over labeled pixels.

    ``truth`` holds mask codes; a pixel counts when its code belongs to a class (and
    ``where`` is True, if given). Pixels off tissue (prediction -1) count as wrong.
    """
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    lut = np.full(max(int(truth.max()), max(max(c) for c in codes_per_class)) + 1, -1, np.int16)
    for i, cs in enumerate(codes_per_class):
        lut[list(cs)] = i
    t = lut[truth]
    code_to_idx = {cs[0]: i for i, cs in enumerate(codes_per_class)}
    plut = np.full(max(code_to_idx) + 2, -1, np.int16)
    for c, i in code_to_idx.items():
        plut[c] = i
    p = np.where(pred_codes >= 0, plut[np.clip(pred_codes, 0, plut.size - 1)], -1)
    sel = t >= 0
    if where is not None:
        sel &= where
    tt, pp = t[sel], p[sel]
    labels = list(range(len(names)))
    cm = confusion_matrix(tt, pp, labels=labels)
    pr, rc, f1, sup = precision_recall_fscore_support(tt, pp, labels=labels, zero_division=0)
    return {"pixel_accuracy": float((tt == pp).mean()) if tt.size else float("nan"), "n_pixels": int(tt.size),
            "unclassified_pixels": int((pp < 0).sum()), "confusion_matrix": cm.tolist(),
            "per_class": {n: {"precision": float(pr[i]), "recall": float(rc[i]), "f1": float(f1[i]),
                              "support": int(sup[i])} for i, n in enumerate(names)}}


def _models_dir():
    """The ``models/`` folder of a source checkout (bundles are not installed as package data)."""
    import os

    env = os.environ.get("BRAINRT_MODELS")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "models"


def default_model():
    """The shipped real-data bundle (slice309, the paper's six areas)."""
    p = _models_dir() / "slice309-paper6"
    if not p.is_dir():
        raise BrainrtError(f"{p}: no default bundle here; pass --model BUNDLE or set BRAINRT_MODELS")
    return p


def demo_model():
    """The shipped bundle trained on synthetic slices (for the demo)."""
    p = _models_dir() / "synthetic-demo"
    if not p.is_dir():
        raise BrainrtError(f"{p}: no demo bundle here; pass --model BUNDLE or set BRAINRT_MODELS")
    return p
