"""Feature grids: features on a stride grid, in memory or in a zarr folder.

Grid geometry: see :mod:`brainrt.geometry`. On disk a grid is an OME-NGFF 0.5 image (:data:`NGFF_FORMAT`):
``0`` (F, R, C) float32 (a volume's (F, Z, R, C)), one named channel per feature, placed at the slice's
scale (stride x pixel size, the half-cell translation), the tissue cells as the label image
``labels/tissue`` (1 = featurized), and brainrt's geometry under the ``brainrt`` attribute
(:func:`zarr_attrs`). :func:`load_features` reads it, and the layout before it (:data:`ZARR_FORMAT`:
``features`` (R, C, F) and ``valid`` arrays, the geometry in the root attributes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import BrainrtError, file_error
from ..integrity import Guarded, compressors, verify
from ..ngff import create_level, image_attrs, label_image_attrs, labels_attrs
from ..sources import NGFF_FORMAT
from .plan import DEFAULT_PIXEL_SIZE_UM

ZARR_FORMAT = "brainrt-features/1"
#: The feature image's array and the tissue label image's, in the store.
FEATURES, TISSUE = "0", "labels/tissue/0"
#: The folders :func:`brainrt.integrity.seal` lists the chunks of.
FEATURE_ARRAYS = (FEATURES, "labels")


@dataclass
class FeatureGrid:
    """Features on a stride grid.

    Attributes
    ----------
    features : array (R, C, F) float32
        Features of the patch centred on each grid cell (0 where ``valid`` is False).
        A NumPy array, or a zarr array when read from or written to disk.
    valid : ndarray (R, C) bool
        Cells that were featurized (tissue).
    stride, patch_size : int
        Cell ``(i, j)`` is the patch centred on pixel ``(i*stride + stride//2, j*stride + stride//2)``.
    image_shape : tuple (H, W)
    model_id : str
        First 12 hex digits of the feature graph's sha256.
    pixel_size_um : float
    stats : dict
        How the features were computed (path, patches, seconds, stage timings).
    """

    features: object
    valid: np.ndarray
    stride: int
    patch_size: int
    image_shape: tuple
    model_id: str
    pixel_size_um: float = DEFAULT_PIXEL_SIZE_UM
    stats: dict = field(default_factory=dict)

    @property
    def shape(self):
        return tuple(self.valid.shape)

    @classmethod
    def of_plan(cls, plan, features, model_id, stats=None):
        """The grid of a :class:`~brainrt.engine.plan.Plan` holding ``features``."""
        return cls(features, plan.valid, plan.grid_stride, plan.patch_size, plan.image_shape, model_id,
                   plan.grid_pixel_size_um, stats or {})


def zarr_attrs(plan, model_id) -> dict:
    """brainrt's attributes of a feature grid: format, geometry, model, precision and pixel size."""
    return {"format": NGFF_FORMAT, "stride": plan.grid_stride, "patch_size": plan.patch_size,
            "image_shape": list(plan.image_shape), "model_id": model_id, "precision": plan.precision,
            "pixel_size_um": plan.grid_pixel_size_um,
            "grid": "cell (i, j) is the patch centred on pixel (i*stride + stride//2, j*stride + stride//2)"}


def create_feature_store(root, grid_shape, n_features, chunks, meta):
    """The empty OME-NGFF feature image in the zarr group ``root``: ``0`` (F, [Z,] R, C) of ``grid_shape``
    ([Z,] R, C), chunked by ``chunks`` ([Z,] R, C) with every channel in a chunk, and the tissue label
    image; ``meta``: brainrt's attributes (:func:`zarr_attrs`; stride, pixel size and, for a volume,
    ``z_spacing_um``). Returns (features, tissue) arrays."""
    names = "zyx"[-len(grid_shape):]
    px, s = float(meta["pixel_size_um"]), int(meta["stride"])
    scale = ((float(meta.get("z_spacing_um") or px),) if len(grid_shape) == 3 else ()) + (px * s, px * s)
    shift = (0.0,) * (len(grid_shape) - 2) + ((s - 1) / 2 * px,) * 2  # cell (i, j) covers pixels i*s .. i*s+s-1
    feats = create_level(root, FEATURES, "c" + names, (n_features, *grid_shape), (n_features, *chunks), "float32",
                         0.0, compressors())
    root.attrs.update({**image_attrs("features", "c" + names, [(1.0, *scale)], translation=(0.0, *shift),
                                     channels=[f"feature {i:02d}" for i in range(n_features)]), "brainrt": meta})
    labels = root.require_group("labels")
    labels.attrs.update(labels_attrs(["tissue"]))
    group = labels.require_group("tissue")
    tissue = create_level(group, "0", names, tuple(grid_shape), tuple(chunks), "uint8", 0, compressors())
    group.attrs.update(label_image_attrs("tissue", names, [scale], translation=shift, values={1: "tissue"},
                                         colors={1: (255, 255, 255, 96)}))
    return feats, tissue


def load_features(path, *, bundle=None, z=None):
    """Open a feature grid written by :func:`brainrt.featurize` (``out=``) or ``brainrt featurize``.

    A feature volume (``featurize --z all``) gives the grid of its slice ``z``. With
    ``bundle``, refuse features computed by another model. A damaged store (a chunk
    missing, truncated or altered) is refused (:mod:`brainrt.integrity`).
    """
    path = Path(path)
    try:
        meta, feats, valid = _open(path)
    except BrainrtError:
        raise
    except Exception as exc:
        raise file_error(path, f"cannot open as a brainrt feature grid ({_short(exc)})") from None
    volume = meta.get("task") == "featurize"
    if bundle is not None and meta["model_id"] != bundle.model_id:
        raise file_error(path, f"features were computed by model {meta['model_id']}, not by this bundle "
                               f"({bundle.path}, model {bundle.model_id}); featurize the slice again")
    if volume:
        return _volume_slice(path, meta, feats, valid, bundle, z)
    if z not in (None, 0):
        raise file_error(path, f"holds the features of one slice; --z {z} does not apply")
    return FeatureGrid(feats, np.asarray(valid[...]) != 0, int(meta["stride"]), int(meta["patch_size"]),
                       tuple(meta["image_shape"]), meta["model_id"],
                       float(meta.get("pixel_size_um", DEFAULT_PIXEL_SIZE_UM)))


def _open(path):
    """(brainrt's attributes, features, tissue) of a feature grid in either layout (verified)."""
    import zarr

    root = zarr.open_group(str(path), mode="r")
    attrs = dict(root.attrs)
    meta = attrs.get("brainrt", {})
    ngff = meta.get("format") == NGFF_FORMAT
    if not ngff and attrs.get("format") != ZARR_FORMAT and meta.get("task") != "featurize":
        raise ValueError("not a brainrt feature grid")
    verify(path)
    if ngff:
        return meta, Guarded(root[FEATURES], path, channels_first=True), Guarded(root[TISSUE], path)
    return (meta if meta.get("task") == "featurize" else attrs), Guarded(root["features"], path), \
        Guarded(root["valid"], path)


def _volume_slice(path, meta, feats, valid, bundle, z):
    """The :class:`FeatureGrid` of slice ``z`` of a feature volume (``meta``: its attributes)."""
    zs = list(meta["zs"])
    if z is None or isinstance(z, str) or z not in zs:
        got = "" if z is None else f"; --z {z} is not one of them"
        raise file_error(path, f"holds the features of {len(zs)} slices (z {zs[0]}..{zs[-1]}){got}; pass --z "
                               "(z= in Python) to choose one")
    patch = meta.get("patch_size") or (bundle.patch_size if bundle is not None else None)
    if patch is None:
        raise file_error(path, "a feature volume records no patch size; pass bundle= to read it")
    zi = zs.index(z)
    return FeatureGrid(Guarded(feats.array, path, prefix=(zi,), channels_first=feats.cf), np.asarray(valid[zi]) != 0,
                       int(meta["stride"]),
                       int(patch), tuple(meta["image_shape"]), meta["model_id"],
                       float(meta.get("pixel_size_um") or DEFAULT_PIXEL_SIZE_UM))


def _short(exc):
    return (str(exc).splitlines() or [type(exc).__name__])[0][:120]
