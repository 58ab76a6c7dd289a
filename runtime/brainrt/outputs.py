"""Files the commands write: OME-TIFF maps with their pixel size, PNG previews, JSON metrics."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .api import pixel_metrics, upsample
from .errors import BrainrtError
from .io import write_json, write_ome_tiff

OFF_TISSUE = 255  # label value of cells that were not featurized


def _sibling(out, suffix):
    out = Path(out)
    name = out.name
    for ext in (".ome.tif", ".ome.tiff", ".tif", ".tiff"):
        if name.endswith(ext):
            name = name[: -len(ext)]
            break
    return out.parent / f"{name}{suffix}"


def write_classification(out, result, bundle, *, image=None, truth=None):
    """Label map (full resolution, mask codes), probabilities (grid resolution), overlay
    PNG and, with ``truth``, metrics JSON and confusion PNG. Returns (paths, metrics)."""
    from .plots import confusion_png, overlay_png

    grid = result.grid
    codes = np.asarray(result.codes + [OFF_TISSUE], np.uint8)
    cell_codes = codes[result.labels]  # -1 indexes OFF_TISSUE
    full = upsample(cell_codes, grid.stride, grid.image_shape)
    px = grid.pixel_size_um
    write_ome_tiff(out, full, pixel_size_um=px)
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
    metrics = None
    if truth is not None:
        codes_per_class = [c["codes"] for c in bundle.manifest["classes"]]
        pred = np.where(full == OFF_TISSUE, -1, full.astype(np.int16))
        metrics = pixel_metrics(pred, truth, names=result.names, codes_per_class=codes_per_class)
        j = _sibling(out, ".metrics.json")
        write_json(j, metrics)
        c = _sibling(out, ".confusion.png")
        confusion_png(c, metrics["confusion_matrix"], result.names,
                      title=f"pixels vs truth (accuracy {metrics['pixel_accuracy']:.3f})")
        written += [str(j), str(c)]
    return written, metrics


def write_clusters(out, clusters, loglik, grid, bundle, *, image=None):
    """GMM cluster map (full resolution), per-area log-likelihood maps (grid resolution), PNG."""
    from .plots import overlay_png

    c8 = np.where(clusters >= 0, clusters, OFF_TISSUE).astype(np.uint8)
    write_ome_tiff(out, upsample(c8, grid.stride, grid.image_shape), pixel_size_um=grid.pixel_size_um)
    ll = _sibling(out, ".loglik.ome.tif")
    write_ome_tiff(ll, np.moveaxis(loglik, -1, 0), pixel_size_um=grid.pixel_size_um * grid.stride,
                   channel_names=bundle.class_names)
    written = [str(out), str(ll)]
    if image is not None:
        png = _sibling(out, ".overlay.png")
        k = int(clusters.max()) + 1
        overlay_png(png, image, upsample(clusters, grid.stride, grid.image_shape), [f"cluster {i}" for i in range(k)],
                    title="GMM clusters")
        written.append(str(png))
    return written


def region_cells(grid, bundle, *, area=None, roi=None, head=None, z=None):
    """Cells of one area (by the classifier) or inside a ROI mask (by their centre pixel)."""
    from .api import classify
    from .geometry import cell_centre
    from .io import read_tiff

    if area is not None:
        if area not in bundle.class_names:
            raise BrainrtError(f"unknown area {area!r}; the bundle's areas are {', '.join(bundle.class_names)}")
        labels = classify(grid, bundle, head=head).labels
        return labels == bundle.class_names.index(area)
    mask, _ = read_tiff(roi, z=z, what="ROI mask")
    if mask.shape != tuple(grid.image_shape):
        raise BrainrtError(f"{roi}: ROI shape {mask.shape} differs from the slice's {tuple(grid.image_shape)}")
    R, C = grid.shape
    ys = np.minimum(cell_centre(np.arange(R), grid.stride), mask.shape[0] - 1)
    xs = np.minimum(cell_centre(np.arange(C), grid.stride), mask.shape[1] - 1)
    return mask[np.ix_(ys, xs)] != 0


def write_subdivision(out, sub, grid, *, image=None, title=""):
    """Sub-division cluster map (full resolution) and an overlay PNG."""
    from .plots import overlay_png

    s8 = np.where(sub >= 0, sub, OFF_TISSUE).astype(np.uint8)
    write_ome_tiff(out, upsample(s8, grid.stride, grid.image_shape), pixel_size_um=grid.pixel_size_um)
    written = [str(out)]
    if image is not None:
        png = _sibling(out, ".overlay.png")
        k = int(sub.max()) + 1
        overlay_png(png, image, upsample(sub, grid.stride, grid.image_shape), [f"cluster {i}" for i in range(k)],
                    title=title)
        written.append(str(png))
    return written
