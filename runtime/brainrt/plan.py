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

from .errors import BrainrtError, check_float, check_image, check_positive_int, file_error, param_error
from .geometry import DENSE_MAX_SUBSAMPLE, dense_step, grid_shape
from .tissue import _tissue_grid

log = logging.getLogger("brainrt")

#: Pixel size of the paper's data, micrometres; used when neither the caller nor the TIFF gives one.
DEFAULT_PIXEL_SIZE_UM = 1.17
DEFAULT_STRIDE = 16
DEFAULT_BATCH_SIZE = 256
DEFAULT_MIN_TISSUE = 0.5
METHODS = ("auto", "patch", "dense")
#: fp32 stays the default: int8 agrees with it on 99.4% of slice309's tissue at stride 4 (README, "int8").
DEFAULT_PRECISION = "fp32"


def intensity_scale(dtype, peak=None) -> float:
    """Factor that brings pixel values of ``dtype`` to the unit range used in training.

    Float images are taken as [0, 1], unless their brightest value ``peak`` says they hold
    the levels of an integer type (0..255, or 0..65535).
    """
    dtype = np.dtype(dtype)
    if dtype == np.uint8:
        return 1.0 / 255.0
    if dtype == np.uint16:
        return 1.0 / 65535.0
    if peak is not None and peak > 1.0:
        return 1.0 / 255.0 if peak <= 255.0 else 1.0 / 65535.0
    return 1.0


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

    def __post_init__(self):
        if self.scale is None:
            object.__setattr__(self, "scale", intensity_scale(self.image.dtype))

    @property
    def shape(self) -> tuple:
        """Grid shape (R, C)."""
        return tuple(self.valid.shape)

    @property
    def image_shape(self) -> tuple:
        return tuple(self.image.shape)

    @property
    def n_cells(self) -> int:
        return int(self.valid.sum())


def make_plan(image, bundle, *, stride=DEFAULT_STRIDE, method="auto", tissue=None, min_tissue=DEFAULT_MIN_TISSUE,
              threshold=None, z=None, pixel_size_um=None, batch_size=DEFAULT_BATCH_SIZE, standardize=True,
              owner="featurize", series=None, precision=DEFAULT_PRECISION):
    """Check everything and return the :class:`Plan`.

    ``image`` is an array (H, W) (or a stack with ``z``) or a TIFF path; ``tissue`` is
    None or "otsu" (Otsu's threshold, or ``threshold``), "all", a mask array or a mask
    TIFF path; ``pixel_size_um`` defaults to the TIFF's, else :data:`DEFAULT_PIXEL_SIZE_UM`.
    ``standardize`` maps the image's tissue histogram onto the bundle's training tissue
    (:mod:`brainrt.intensity`) when the bundle records one. ``series`` picks one series of a
    multi-series TIFF. ``precision`` "int8" runs the bundle's int8 graphs.
    Errors name the file for file problems and the parameter (of ``owner``) otherwise.
    """
    stride = check_positive_int(stride, "stride", owner)
    batch_size = check_positive_int(batch_size, "batch_size", owner)
    min_tissue = check_float(min_tissue, "min_tissue", owner, low=0.0, high=1.0)
    if threshold is not None:
        threshold = check_float(threshold, "threshold", owner)
    if pixel_size_um is not None and check_float(pixel_size_um, "pixel_size_um", owner) <= 0:
        raise param_error("pixel_size_um", owner, "a positive float", pixel_size_um)
    method = _resolve_method(method, stride, bundle.dense_strides, owner)
    precision = bundle.check_precision(precision, owner)
    image, source, tiff_px = _read_image(image, z, bundle.patch_size, series)
    valid = _valid_cells(image, source, tissue, z=z, patch_size=bundle.patch_size, stride=stride,
                         threshold=threshold, min_tissue=min_tissue, owner=owner)
    px = float(pixel_size_um or tiff_px or DEFAULT_PIXEL_SIZE_UM)
    intensity = bundle.manifest.intensity if standardize else None
    _warn_narrow_range(image, source, intensity is not None)
    if intensity is not None:
        image = standardize_image(image, intensity, threshold, bundle.manifest.normalization.trained_dtype)
    return Plan(image, valid, stride, bundle.patch_size, method, px, batch_size, source, intensity is not None,
                precision, _scale_of(image, source))


def _scale_of(image, source):
    """:func:`intensity_scale` of the image (a float image holding 0..255 is read as such, and logged)."""
    peak = float(np.nanmax(image)) if image.dtype.kind == "f" else None
    scale = intensity_scale(image.dtype, peak)
    if image.dtype.kind == "f" and scale != 1.0:
        log.info("%s: float values up to %g are read as 0..%d levels", source, peak, round(1 / scale))
    return scale


def standardize_image(image, intensity, threshold, trained_dtype):
    """``image`` mapped onto the training tissue's quantiles, in the training pixel type.

    Tissue is ``image > threshold`` (Otsu's threshold when None). A slice with no
    tissue above the threshold is left as it is.
    """
    from .intensity import fit_map
    from .tissue import auto_threshold

    t = auto_threshold(image, quiet=True) if threshold is None else threshold
    try:
        imap = fit_map(image, t, intensity.quantiles, out_dtype=trained_dtype)
    except ValueError:  # no tissue pixel: nothing to match
        log.warning("intensity standardization skipped: no pixel above the tissue threshold %g", t)
        return image
    return imap.apply(image)


#: A pixel range below this fraction of the pixel type's full range draws a warning.
NARROW_RANGE = 1 / 64


def _warn_narrow_range(image, source, standardized):
    """Warn when the pixel values span a tiny part of their type's range (the network then sees a flat image)."""
    lo, hi = float(np.nanmin(image)), float(np.nanmax(image))
    full = float(np.iinfo(image.dtype).max) if image.dtype.kind in "ui" else 1.0
    if hi - lo >= NARROW_RANGE * full:
        return
    how = ("intensity standardization maps it onto the training tissue's" if standardized else
           "this bundle records no training intensities to map it onto, so the map may be one class; "
           "rescale the slice to its pixel type's range")
    log.warning("%s: pixel values span only %g..%g, %.2g%% of the %s range; %s", source, lo, hi,
                100 * (hi - lo) / full, image.dtype, how)


def _resolve_method(method, stride, dense_strides, owner):
    """'patch' or 'dense'. 'auto' picks dense when a dense graph's stride divides ``stride`` and its
    subsampling is cheaper than per patch (:data:`~brainrt.geometry.DENSE_MAX_SUBSAMPLE`)."""
    if method not in METHODS:
        raise param_error("method", owner, f"one of {METHODS}", method)
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
        from .io import read_tiff

        arr, px = read_tiff(image, z=z, series=series)
        return check_image(arr, str(image), finite=False, min_side=patch_size), str(image), px
    image = np.asarray(image)
    if z is not None and image.ndim == 3:
        if not 0 <= z < image.shape[0]:
            raise file_error("image", f"z {z} is outside the stack's {image.shape[0]} slices")
        image = image[z]
    return check_image(image, "image", min_side=patch_size), "image", None


def _valid_cells(image, source, tissue, *, z, patch_size, stride, threshold, min_tissue, owner):
    """The grid cells to featurize (tissue), or the error saying why there are none."""
    if tissue is None or (isinstance(tissue, str) and tissue in ("otsu", "all")):
        if tissue == "all":
            valid = np.ones(grid_shape(image.shape, stride), bool)
        else:
            valid = _tissue_grid(image, patch_size, stride, threshold=threshold, min_fraction=min_tissue)
    else:
        mask = _tissue_mask(tissue, image.shape, z, owner)
        valid = _tissue_grid(image, patch_size, stride, mask=mask, min_fraction=min_tissue)
    if not valid.any():
        raise file_error(source, "no tissue found: every patch is background (featurize all cells or give a "
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
    if mask.shape != shape or not (mask.dtype == bool or np.issubdtype(mask.dtype, np.integer)):
        raise BrainrtError(f"The 'tissue' parameter of {owner} must be {expected}. "
                           f"Got an array of shape {mask.shape} and type {mask.dtype} instead.")
    return mask


def read_mask(path, shape, *, z=None, what="label mask"):
    """A mask TIFF (tissue, truth, ROI) that must match the slice's ``shape``."""
    from .io import read_tiff

    mask, _ = read_tiff(path, z=z, what=what)
    if mask.shape != tuple(shape):
        raise file_error(path, f"{what} shape {mask.shape} differs from the slice's {tuple(shape)}")
    return mask
