"""Feature grids: features on a stride grid, in memory or in a zarr folder.

Grid geometry: see :mod:`brainrt.geometry`. The zarr layout is ``features`` (R, C, F)
float32, ``valid`` (R, C) bool and the geometry in the attributes
(:func:`zarr_attrs`); :func:`load_features` reads it back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import BrainrtError, file_error
from .integrity import Guarded, verify
from .plan import DEFAULT_PIXEL_SIZE_UM

ZARR_FORMAT = "brainrt-features/1"


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
        """The grid of a :class:`~brainrt.plan.Plan` holding ``features``."""
        return cls(features, plan.valid, plan.stride, plan.patch_size, plan.image_shape, model_id,
                   plan.pixel_size_um, stats or {})


def zarr_attrs(plan, model_id) -> dict:
    """Attributes of a zarr feature grid: format, geometry, model, precision and pixel size."""
    return {"format": ZARR_FORMAT, "stride": plan.stride, "patch_size": plan.patch_size,
            "image_shape": list(plan.image_shape), "model_id": model_id, "precision": plan.precision,
            "pixel_size_um": plan.pixel_size_um,
            "grid": "cell (i, j) is the patch centred on pixel (i*stride + stride//2, j*stride + stride//2)"}


def load_features(path, *, bundle=None, z=None):
    """Open a feature grid written by :func:`brainrt.featurize` (``out=``) or ``brainrt featurize``.

    A feature volume (``featurize --z all``) gives the grid of its slice ``z``. With
    ``bundle``, refuse features computed by another model. A damaged store (a chunk
    missing, truncated or altered) is refused (:mod:`brainrt.integrity`).
    """
    import zarr

    path = Path(path)
    try:
        root = zarr.open_group(str(path), mode="r")
        attrs = dict(root.attrs)
        volume = attrs.get("brainrt", {}).get("task") == "featurize"
        if attrs.get("format") != ZARR_FORMAT and not volume:
            raise ValueError("not a brainrt feature grid")
        verify(path)
        feats, valid = Guarded(root["features"], path), Guarded(root["valid"], path)
    except BrainrtError:
        raise
    except Exception as exc:
        raise file_error(path, f"cannot open as a brainrt feature grid ({_short(exc)})") from None
    meta = attrs["brainrt"] if volume else attrs
    if bundle is not None and meta["model_id"] != bundle.model_id:
        raise file_error(path, f"features were computed by model {meta['model_id']}, not by this bundle "
                               f"({bundle.path}, model {bundle.model_id}); featurize the slice again")
    if volume:
        return _volume_slice(path, meta, feats, valid, bundle, z)
    if z not in (None, 0):
        raise file_error(path, f"holds the features of one slice; --z {z} does not apply")
    return FeatureGrid(feats, np.asarray(valid[:]), int(attrs["stride"]), int(attrs["patch_size"]),
                       tuple(attrs["image_shape"]), attrs["model_id"],
                       float(attrs.get("pixel_size_um", DEFAULT_PIXEL_SIZE_UM)))


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
    return FeatureGrid(Guarded(feats.array, path, prefix=(zi,)), np.asarray(valid[zi]), int(meta["stride"]),
                       int(patch), tuple(meta["image_shape"]), meta["model_id"],
                       float(meta.get("pixel_size_um") or DEFAULT_PIXEL_SIZE_UM))


def _short(exc):
    return (str(exc).splitlines() or [type(exc).__name__])[0][:120]
