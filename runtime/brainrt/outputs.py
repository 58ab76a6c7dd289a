"""Writers: feature grids (zarr), OME-TIFF maps with their pixel size, PNG previews, JSON metrics.

Writers only write: they take computed results (and the image, for previews) and put
them on disk atomically (:func:`brainrt.io.atomic_path`). Computing, reading and scoring
happen before, in :mod:`brainrt.api`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .geometry import upsample
from .heads import OFF_TISSUE
from .io import atomic_path, write_json, write_ome_tiff


def _sibling(out, suffix):
    out = Path(out)
    name = out.name
    for ext in (".ome.tif", ".ome.tiff", ".tif", ".tiff"):
        if name.endswith(ext):
            name = name[: -len(ext)]
            break
    return out.parent / f"{name}{suffix}"


#: Files the writers put beside their main output ``X.ome.tif`` (as ``X<suffix>``).
SIBLING_SUFFIXES = (".probabilities.ome.tif", ".overlay.png", ".metrics.json", ".confusion.png", ".loglik.ome.tif")


def siblings(out):
    """Every path a writer may put beside the main output ``out``."""
    return [_sibling(out, suffix) for suffix in SIBLING_SUFFIXES]


def write_features(path, blocks, *, valid, n_features, attrs):
    """Stream feature blocks into a zarr group written beside ``path`` and renamed into place.

    Returns the written ``features`` array, opened read-only.
    """
    import zarr

    from .integrity import compressors, seal

    R, C = valid.shape
    with atomic_path(path, overwrite=True, is_dir=True) as tmp:
        root = zarr.open_group(str(tmp), mode="w")
        arr = root.create_array("features", shape=(R, C, n_features), chunks=(64, 64, n_features), dtype="float32",
                                fill_value=0.0, compressors=compressors())
        root.create_array("valid", shape=(R, C), chunks=(512, 512), dtype="bool", compressors=compressors())[:] = valid
        for b in blocks:
            arr[b.r0 : b.r1] = b.features
        root.attrs.update(attrs)
        seal(tmp, ("features", "valid"))
    return zarr.open_group(str(path), mode="r")["features"]


def label_key(names, codes):
    """The class names of a label map, by code ("areas: 1 Ctx, 2 Str, ..., 255 off tissue"), as its channel name."""
    return "areas: " + ", ".join(f"{c} {n}" for c, n in zip(codes, names)) + f", {OFF_TISSUE} off tissue"


def write_classification(out, result, *, image=None, metrics=None):
    """Label map (full resolution, mask codes), probabilities (grid resolution), overlay
    PNG and, with ``metrics`` (from :func:`brainrt.api.score`), metrics JSON and confusion PNG.
    Returns the paths written."""
    from .plots import confusion_png, overlay_png

    grid = result.grid
    px = grid.pixel_size_um
    write_ome_tiff(out, upsample(result.cell_codes(), grid.stride, grid.image_shape), pixel_size_um=px,
                   channel_names=[label_key(result.names, result.codes)])
    written = [str(out)]
    if result.probabilities is not None:
        p = _sibling(out, ".probabilities.ome.tif")
        write_ome_tiff(p, np.moveaxis(result.probabilities, -1, 0), pixel_size_um=px * grid.stride,
                       channel_names=result.names)
        written.append(str(p))
    if image is not None:
        png = _sibling(out, ".overlay.png")
        overlay_png(png, image, upsample(result.labels, grid.stride, grid.image_shape), result.names,
                    title=f"brainrt classify (stride {grid.stride})")
        written.append(str(png))
    if metrics is not None:
        j, c = _sibling(out, ".metrics.json"), _sibling(out, ".confusion.png")
        write_json(j, metrics)
        confusion_png(c, metrics["confusion_matrix"], result.names,
                      title=f"pixels vs truth (accuracy {metrics['pixel_accuracy']:.3f})")
        written += [str(j), str(c)]
    return written


def write_clusters(out, clusters, loglik, grid, names, *, image=None):
    """GMM cluster map (full resolution), per-area log-likelihood maps (grid resolution), PNG."""
    c8 = np.where(clusters >= 0, clusters, OFF_TISSUE).astype(np.uint8)
    write_ome_tiff(out, upsample(c8, grid.stride, grid.image_shape), pixel_size_um=grid.pixel_size_um)
    ll = _sibling(out, ".loglik.ome.tif")
    write_ome_tiff(ll, np.moveaxis(loglik, -1, 0), pixel_size_um=grid.pixel_size_um * grid.stride,
                   channel_names=names)
    return [str(out), str(ll)] + _cluster_overlay(out, clusters, grid, image, "GMM clusters")


def write_subdivision(out, sub, grid, *, image=None, title=""):
    """Sub-division cluster map (full resolution) and an overlay PNG."""
    s8 = np.where(sub >= 0, sub, OFF_TISSUE).astype(np.uint8)
    write_ome_tiff(out, upsample(s8, grid.stride, grid.image_shape), pixel_size_um=grid.pixel_size_um)
    return [str(out)] + _cluster_overlay(out, sub, grid, image, title)


def _cluster_overlay(out, clusters, grid, image, title):
    """The overlay PNG of a cluster map beside ``out`` (none without the image)."""
    if image is None:
        return []
    from .plots import overlay_png

    png = _sibling(out, ".overlay.png")
    k = int(clusters.max()) + 1
    overlay_png(png, image, upsample(clusters, grid.stride, grid.image_shape), [f"cluster {i}" for i in range(k)],
                title=title)
    return [str(png)]
