"""The layout of a volume's store: its arrays and their metadata, and what is dropped when it is done.

Classify writes an OME-Zarr: the probabilities, their margin and entropy (c, z, y, x) at grid
resolution with a pyramid, and the area labels (z, y, x) at full resolution (:mod:`brainrt.ngff`),
beside scratch arrays the tasks share (raw probabilities, a context head's pooled ones, the tissue
cells, the in-plane smoothed ones for the z pass), dropped at the end. Featurize writes the OME-NGFF
feature image and its tissue labels (:func:`brainrt.engine.grid.create_feature_store`), sealed with chunk
checksums. The folder, its records and its resume are the stack's (:mod:`brainrt.outputs.zarr_stack`).
"""

from __future__ import annotations

from ..engine.grid import FEATURE_ARRAYS, create_feature_store
from ..heads import OFF_TISSUE
from ..integrity import seal
from ..maps.uncertainty import CHANNELS
from ..ngff import create_level, image_attrs, label_image_attrs, labels_attrs
from ..outputs import label_key
from ..plots import area_colors
from ..sources import NGFF_FORMAT

#: Smallest side of the label pyramid's coarsest level (levels halve until below it), and most levels.
PYRAMID_MIN, PYRAMID_LEVELS = 64, 5
LABEL_CHUNK = 1024


def n_levels(shape):
    """Levels of the label pyramid (and of the probabilities') of slices of ``shape``."""
    n = 1
    while n < PYRAMID_LEVELS and min(shape) // 2**n >= PYRAMID_MIN:
        n += 1
    return n


def create_store(vplan, tmp):
    """Lay out the empty output in the folder ``tmp`` (OME-Zarr for classify, a zarr group for featurize) with its
    metadata (:meth:`~brainrt.outputs.zarr_stack.ZarrStack.open` adds the records)."""
    import zarr

    root = zarr.open_group(str(tmp), mode="w")
    Z, (R, C), F, K = len(vplan.zs), vplan.grid, vplan.n_features, len(vplan.class_names)
    band = vplan.bands[0][1] - vplan.bands[0][0]
    cc = min(C, 512)
    if vplan.task == "featurize":  # the OME-NGFF feature image (c, z, y, x) and its tissue labels (z, y, x)
        create_feature_store(root, (Z, R, C), F, (1, band, cc), {**_attrs(vplan)["brainrt"], "format": NGFF_FORMAT})
    else:
        if vplan.labels_only:  # a head's labels (class indices, -1 off tissue)
            root.create_array("scratch/labels", shape=(Z, R, C), chunks=(1, band, cc), dtype="int16", fill_value=-1)
        else:
            T = vplan.n_terms or K  # a context head's terms, pooled by its context pass into scratch/context
            root.create_array("scratch/probabilities", shape=(Z, R, C, T), chunks=(1, band, cc, T), dtype="float32",
                              fill_value=0.0)
        if vplan.context:
            root.create_array("scratch/context", shape=(Z, R, C, K), chunks=(1, band, cc, K), dtype="float32",
                              fill_value=0.0)
        root.create_array("scratch/valid", shape=(Z, R, C), chunks=(1, band, cc), dtype="bool", fill_value=False)
        if vplan.z_sigma > 0:
            root.create_array("scratch/planar", shape=(Z, R, C, K), chunks=(1, band, cc, K), dtype="float32",
                              fill_value=0.0)
        _ome_metadata(vplan, root)
    return root


def _attrs(vplan):
    return {"brainrt": {"task": vplan.task, "model_id": vplan.model_id, "stride": vplan.stride,
                        "zs": list(vplan.zs), "pixel_size_um": vplan.pixel_size_um,
                        "z_spacing_um": vplan.z_spacing_um, "source": vplan.source.name,
                        "image_shape": list(vplan.source.shape[1:]), "class_names": list(vplan.class_names)}}


def _ome_metadata(vplan, root):
    """The image: probabilities (c, z, y, x) at grid resolution, then their margin and entropy (a head without
    probabilities: its area codes, one channel), with a pyramid of as many levels as the area labels' (z, y, x) at
    full resolution (:mod:`brainrt.ngff`; NGFF asks a label image for its image's levels)."""
    px, dz, s, (h, w) = vplan.pixel_size_um, vplan.z_spacing_um, vplan.stride, vplan.source.shape[1:]
    Z, (R, C), n = len(vplan.zs), vplan.grid, n_levels((h, w))
    channels = ([label_key(vplan.class_names, vplan.class_codes)] if vplan.labels_only
                else [*vplan.class_names, *CHANNELS])
    dtype, fill, window = ("uint8", OFF_TISSUE, (0, 255)) if vplan.labels_only else ("float32", 0.0, (0, 1))
    for level in range(n):
        f = 2**level
        r, c = -(-R // f), -(-C // f)
        create_level(root, str(level), "czyx", (len(channels), Z, r, c), (1, 1, min(r, 1024), min(c, 1024)), dtype, fill)
    root.attrs.update(image_attrs("areas" if vplan.labels_only else "probabilities", "czyx",
                                  [(1.0, dz, px * s * 2**i, px * s * 2**i) for i in range(n)],
                                  translation=(0, 0, (s - 1) / 2 * px, (s - 1) / 2 * px),  # cell (i, j): pixels i*s ..
                                  channels=channels, window=window))
    root.attrs.update(_attrs(vplan))
    labels = root.require_group("labels")
    labels.attrs.update(labels_attrs(["areas"]))
    areas = labels.require_group("areas")
    for level in range(n):
        f = 2**level
        shape = (Z, -(-h // f), -(-w // f))
        create_level(areas, str(level), "zyx", shape, (1, min(shape[1], LABEL_CHUNK), min(shape[2], LABEL_CHUNK)),
                     "uint8", OFF_TISSUE)
    colors = area_colors(vplan.class_names)
    areas.attrs.update(label_image_attrs(
        "areas", "zyx", [(dz, px * 2**i, px * 2**i) for i in range(n)],
        values={**{int(c): nm for nm, c in zip(vplan.class_names, vplan.class_codes)}, OFF_TISSUE: "off tissue"},
        colors={**{int(c): [round(255 * v) for v in colors[i]] + [255] for i, c in enumerate(vplan.class_codes)},
                OFF_TISSUE: [0, 0, 0, 0]}))


def finish_store(vplan, tmp):
    """What a finished store keeps: the scratch arrays dropped (classify), chunk checksums written (featurize,
    :mod:`brainrt.integrity`)."""
    import zarr

    if vplan.task == "classify":
        root = zarr.open_group(str(tmp), mode="r+")
        del root["scratch"]
    if vplan.task == "featurize":
        seal(tmp, FEATURE_ARRAYS)
