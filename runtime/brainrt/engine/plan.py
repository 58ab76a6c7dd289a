"""The input edge: raw input (an array or a TIFF path, and options) to one frozen, checked :class:`Plan`.

Every check of what a user passes happens here, once, with one error template (see
:mod:`brainrt.errors`); the windowing engine, the predictors and the heads trust the plan.
The defaults live here too (pixel size, stride, method, tissue fraction).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import BrainrtError, NoTissue, check_image, file_error, param_error
from ..geometry import DENSE_MAX_SUBSAMPLE, dense_step, grid_shape
from ..model import params
from ..sources import read_image, read_mask
from .intensity import intensity_scale, standardize_image
from .resample import Resampling, pixel_size_of, resample, resampling_of
from .tissue import tissue_cells

log = logging.getLogger("brainrt")

#: Pixel size of the paper's data, micrometres; used when neither the caller nor the TIFF gives one.
DEFAULT_PIXEL_SIZE_UM = 1.17
#: Declared with their constraints in :mod:`brainrt.model.params` (the 2D and volume edges share them).
DEFAULT_STRIDE = params.default("stride")
DEFAULT_BATCH_SIZE = params.default("batch_size")
DEFAULT_MIN_TISSUE = params.default("min_tissue")
METHODS = params.PARAMS["method"].constraint.values
DEFAULT_PRECISION = params.default("precision")
DEFAULT_STANDARDIZE = params.default("standardize")


@dataclass(frozen=True, eq=False)
class Plan:
    """A checked featurization job: the image, the grid cells to featurize and how.

    Attributes
    ----------
    image : ndarray (H, W)
        uint8, uint16, float32 or float64, finite, at least one patch a side.
    valid : ndarray (R, C) bool
        Cells to featurize; cell ``(i, j)`` is centred on ``(i*stride + stride//2, j*stride + stride//2)``.
    stride, patch_size : int
    method : {"patch", "dense"}
        Resolved evaluation path ("auto" is decided here).
    pixel_size_um : float
    batch_size : int
        Patches per predictor call on the per-patch path.
    source : str
        The file read, or "image" for an array (names the input in messages).
    standardized : bool
        Whether ``image`` was mapped onto the training tissue's intensity quantiles
        (then it holds the training images' pixel type).
    precision : {"fp32", "int8"}
        Arithmetic of the graphs to run (the bundle has them).
    scale : float
        Factor that brings ``image`` to [0, 1] (:func:`intensity_scale`; default: by its pixel type).
    resampling : Resampling or None
        Set when the input's pixel size is not the bundle's: ``image``, ``stride`` and ``pixel_size_um``
        are then the network's (resampled) ones; :attr:`image_shape`, :attr:`grid_stride` and
        :attr:`grid_pixel_size_um` the input's, on which the grid and every output lie.
    input_image : ndarray or None
        The image on the input's pixels (previews); default ``image``.
    """

    image: np.ndarray
    valid: np.ndarray
    stride: int
    patch_size: int
    method: str
    pixel_size_um: float = DEFAULT_PIXEL_SIZE_UM
    batch_size: int = DEFAULT_BATCH_SIZE
    source: str = "image"
    standardized: bool = False
    precision: str = DEFAULT_PRECISION
    scale: float | None = None
    resampling: Resampling | None = None
    input_image: np.ndarray | None = None

    def __post_init__(self):
        if self.scale is None:
            object.__setattr__(self, "scale", intensity_scale(self.image.dtype))
        if self.input_image is None:
            object.__setattr__(self, "input_image", self.image)

    @property
    def shape(self) -> tuple:
        """Grid shape (R, C)."""
        return tuple(self.valid.shape)

    @property
    def image_shape(self) -> tuple:
        """The input's shape (the outputs' pixel grid)."""
        return tuple(self.resampling.shape if self.resampling else self.image.shape)

    @property
    def grid_stride(self) -> int:
        """The grid's stride in input pixels."""
        return self.resampling.stride if self.resampling else self.stride

    @property
    def grid_pixel_size_um(self) -> float:
        """The input's pixel size."""
        return self.resampling.pixel_size_um if self.resampling else self.pixel_size_um

    @property
    def n_cells(self) -> int:
        return int(self.valid.sum())


def make_plan(image, bundle, *, stride=DEFAULT_STRIDE, method="auto", tissue=None, min_tissue=DEFAULT_MIN_TISSUE,
              threshold=None, z=None, pixel_size_um=None, batch_size=DEFAULT_BATCH_SIZE, standardize=DEFAULT_STANDARDIZE,
              owner="featurize", series=None, precision=DEFAULT_PRECISION):
    """Check everything and return the :class:`Plan`.

    ``image`` is an array (H, W) (or a stack with ``z``) or a TIFF path; ``tissue`` is
    None or "otsu" (Otsu's threshold, or ``threshold``), "all", a mask array or a mask
    TIFF path; ``pixel_size_um`` defaults to the TIFF's, else :data:`DEFAULT_PIXEL_SIZE_UM`.
    ``standardize``: "auto" (default) maps the image's tissue histogram onto the bundle's training
    tissue (:mod:`brainrt.engine.intensity`) only where the pixel range demands it (values spanning a tiny
    part of their type's range); a slice in its type's range is read as it is (scaled by its type),
    so a crop is mapped like the same tissue in the whole slice, whatever areas it holds. "match"
    always maps it (a whole slice of another instrument or contrast; its map then depends on the
    areas in view), "off" never (True and False mean "match" and "off"). ``series`` picks one series of a
    multi-series TIFF. ``precision`` "int8" runs the bundle's int8 graphs, "auto" (default) them where
    the CPU has VNNI (:meth:`~brainrt.bundle.load.Bundle.auto_precision`).
    Errors name the file for file problems and the parameter (of ``owner``) otherwise.
    """
    o = params.check(owner, stride=stride, batch_size=batch_size, min_tissue=min_tissue, threshold=threshold,
                     pixel_size_um=pixel_size_um, method=method, precision=precision, standardize=standardize)
    o["method"] = resolve_method(o["method"], o["stride"], bundle.dense_strides, owner)
    o["precision"] = bundle.check_precision(o["precision"], owner)  # "auto": int8 where it pays (VNNI)
    return plan_of(image, bundle, tissue=tissue, z=z, owner=owner, series=series, **o)


def plan_of(image, bundle, *, stride, method, tissue, min_tissue, threshold, pixel_size_um, batch_size, standardize,
            precision, z=None, series=None, owner="featurize"):
    """The :class:`Plan` of ``image`` with options already checked (by :func:`make_plan`, or once for a
    whole volume by :func:`brainrt.volumes.plan.make_volume_plan`); ``method`` resolved. The image and
    the tissue mask are still checked here: they differ from slice to slice. A slice whose pixel size is
    not the bundle's is resampled to it for the network (:mod:`brainrt.engine.resample`); the grid stays the input's."""
    image, source, tiff_px = _read_image(image, z, bundle.patch_size, series)
    check_stride(stride, image.shape, source)
    px = pixel_size_of(pixel_size_um, tiff_px, bundle.pixel_size_um, source, owner)
    rs = resampling_of(image.shape, stride, px, bundle.pixel_size_um, source)
    if rs is not None:
        log.info("%s: pixel size %g um, the bundle's is %g um: resampled x%.4g to %d x %d px for the network "
                 "(stride %d there); outputs on the input's %d x %d pixel grid", source, px, bundle.pixel_size_um,
                 rs.factor, *rs.net_shape, rs.net_stride, *image.shape)
        if is_tissue_mask(tissue):
            tissue = resample(_tissue_mask(tissue, image.shape, z, owner), rs, order=0)
        given, image, stride, px = image, resample(image, rs), rs.net_stride, rs.net_pixel_size_um
        method = method if dense_step(stride, bundle.dense_strides) is not None else "patch"
    valid = _valid_cells(image, source, tissue, z=z, patch_size=bundle.patch_size, stride=stride,
                         threshold=threshold, min_tissue=min_tissue, owner=owner)
    intensity = bundle.manifest.intensity
    narrow = _warn_narrow_range(image, source, intensity is not None and standardize != "off")
    match = intensity is not None and (standardize == "match" or (standardize == "auto" and narrow))
    if match:
        image = standardize_image(image, intensity, threshold, bundle.manifest.normalization.trained_dtype)
    return Plan(image, valid, stride, bundle.patch_size, method, px, batch_size, source, match,
                precision, _scale_of(image, source), rs, given if rs is not None else None)


def is_tissue_mask(tissue) -> bool:
    """Whether the ``tissue`` option names a mask (an array, a path, a mask stack) rather than a rule (None or
    "otsu": Otsu's threshold; "all": every cell). The 2D and the volume edges share this reading."""
    return tissue is not None and not (isinstance(tissue, str) and tissue in ("otsu", "all"))


def is_mask_dtype(dtype) -> bool:
    """Whether a tissue mask of ``dtype`` is one (booleans or integers, nonzero = tissue): a slice's mask array and a
    volume's mask stack alike."""
    return np.dtype(dtype) == bool or np.issubdtype(dtype, np.integer)


def check_stride(stride, shape, source):
    """Refuse a stride past the image's shorter side: its grid's cells would be centred outside the
    image (cell ``(i, j)`` is centred on ``i * stride + stride // 2``), a map painted from patches
    that do not look at the pixels they label. The 2D and the volume edges share this check."""
    h, w = shape[-2:]
    if stride > min(h, w):
        raise file_error(source, f"stride {stride} is larger than the image ({h} x {w} px): grid cells would be "
                                 f"centred outside it; use a stride of at most {min(h, w)}")


def _scale_of(image, source):
    """:func:`intensity_scale` of the image (a float image holding 0..255 is read as such, and logged)."""
    peak = float(np.nanmax(image)) if image.dtype.kind == "f" else None
    scale = intensity_scale(image.dtype, peak)
    if image.dtype.kind == "f" and scale != 1.0:
        log.info("%s: float values up to %g are read as 0..%d levels", source, peak, round(1 / scale))
    return scale


#: A pixel range below this fraction of the pixel type's full range draws a warning.
NARROW_RANGE = 1 / 64


def _warn_narrow_range(image, source, standardized):
    """Whether the pixel values span a tiny part of their type's range (the network would see a flat image),
    with a warning saying so; ``standardized``: whether the slice will be mapped onto the training tissue."""
    lo, hi = float(np.nanmin(image)), float(np.nanmax(image))
    full = float(np.iinfo(image.dtype).max) if image.dtype.kind in "ui" else 1.0
    if hi - lo >= NARROW_RANGE * full:
        return False
    how = ("intensity standardization maps it onto the training tissue's quantiles (fitted on the tissue in "
           "view: a crop holding other areas is mapped differently; rescale the slice to its pixel type's range for a map "
           "that does not depend on them)" if standardized else
           "this bundle records no training intensities to map it onto, so the map may be one class; "
           "rescale the slice to its pixel type's range")
    log.warning("%s: pixel values span only %g..%g, %.2g%% of the %s range; %s", source, lo, hi,
                100 * (hi - lo) / full, image.dtype, how)
    return True


def resolve_method(method, stride, dense_strides, owner):
    """'patch' or 'dense' for a checked ``method``. 'auto' picks dense when a dense graph's stride divides
    ``stride`` and its subsampling is cheaper than per patch (:data:`~brainrt.geometry.DENSE_MAX_SUBSAMPLE`)."""
    d = dense_step(stride, dense_strides)
    if method == "dense" and d is None:
        raise param_error("method", owner, f"'auto' or 'patch' at stride {stride} (this bundle has no dense graphs)",
                          method)
    if method == "auto":
        return "dense" if d is not None and stride // d <= DENSE_MAX_SUBSAMPLE else "patch"
    return method


def _is_path(x) -> bool:
    return isinstance(x, (str, Path))


def _read_image(image, z, patch_size, series=None):
    """(checked 2D image, its name in messages, pixel size of the TIFF or None)."""
    if _is_path(image):
        arr, px = read_image(image, z=z, series=series)
        return check_image(arr, str(image), finite=False, min_side=patch_size), str(image), px
    image = np.asarray(image)
    if z is not None and image.ndim == 2:
        raise file_error("image", f"is a 2D image; z={z} does not apply")
    if z is not None and image.ndim == 3:
        if not 0 <= z < image.shape[0]:
            raise file_error("image", f"z {z} is outside the stack's {image.shape[0]} slices")
        image = image[z]
    return check_image(image, "image", min_side=patch_size), "image", None


def _valid_cells(image, source, tissue, *, z, patch_size, stride, threshold, min_tissue, owner):
    """The grid cells to featurize (tissue), or the error saying why there are none."""
    if not is_tissue_mask(tissue):
        if tissue == "all":
            valid = np.ones(grid_shape(image.shape, stride), bool)
        else:
            valid = tissue_cells(image, patch_size, stride, threshold=threshold, min_fraction=min_tissue)
    else:
        mask = _tissue_mask(tissue, image.shape, z, owner)
        name = str(tissue) if _is_path(tissue) else "tissue mask"
        if not mask.any():
            raise NoTissue(f"{name}: the tissue mask is all zero: no pixel is tissue (nonzero = tissue)")
        valid = tissue_cells(image, patch_size, stride, mask=mask, min_fraction=min_tissue)
        if not valid.any():
            raise NoTissue(f"{name}: no patch of the grid has {100 * min_tissue:g}% of its {patch_size} px square "
                           f"inside the tissue mask ({int(np.count_nonzero(mask))} tissue pixels)")
    if not valid.any():
        raise NoTissue(f"{source}: no tissue found: every patch is background (featurize all cells or give a "
                       "lower threshold or a tissue mask)")
    return valid


def _tissue_mask(tissue, shape, z, owner):
    """A tissue mask (array, or TIFF path) of the image's shape."""
    expected = f"'otsu', 'all', a mask TIFF or a 2D mask of the image's shape {shape}"
    if _is_path(tissue):
        if str(tissue) in ("otsu", "all") or not str(tissue).lower().endswith((".tif", ".tiff")):
            raise param_error("tissue", owner, expected, tissue)
        return read_mask(tissue, shape, z=z, what="tissue mask")
    mask = np.asarray(tissue)
    if mask.shape != shape or not is_mask_dtype(mask.dtype):
        raise BrainrtError(f"The 'tissue' parameter of {owner} must be {expected}. "
                           f"Got an array of shape {mask.shape} and type {mask.dtype} instead.")
    return mask
