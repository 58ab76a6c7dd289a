"""TIFF files: a 2D slice, a 3D stack (multi-page, ImageJ or OME) or one series of a multi-series
(OME-)TIFF. The fallback reader: any path no other reader claims is read as a TIFF.

A slice is read whole (:func:`read_2d`, masks too); a stack one page at a time through
tifffile's zarr view of its first series (:class:`TiffSource`, contiguous ImageJ stacks included).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import PIXEL_TYPES, BrainrtError, check_image, file_error, first_line
from .base import Source, check_no_channels, check_not_bundle, holds_image, quiet_tifffile

KIND = "tiff"
#: A 3D TIFF is a volume only with --z naming several slices; without --z it is refused as a slice that needs one
#: (:data:`brainrt.sources.VOLUME_RULES`).
VOLUME = "with z"
#: A file may hold several series: ``open(path, series)`` picks one.
SERIES = True
SUFFIXES = (".ome.tif", ".tiff", ".tif")
#: Pixel types of masks (label codes): an image's, or any integer type read as int64.
MASK_TYPES = PIXEL_TYPES + (np.dtype(np.int64),)

log = logging.getLogger("brainrt")


def claims(path: str) -> bool:
    """Every path no other reader claims (the fallback: its errors say what is wrong with the file)."""
    return True


@dataclass(frozen=True)
class TiffSource(Source):
    """One series of a TIFF (the only one, or the one chosen); ``axes`` as tifffile names them."""

    axes: str = ""
    series: int = 0

    kind = KIND
    modules = ("tifffile", "zarr")

    def _read(self, z, rows):
        import tifffile
        import zarr

        with tifffile.TiffFile(self.path) as tif:
            store = tif.series[self.series].aszarr()
            try:
                return zarr.open(store, mode="r")[self.index(z, rows)]
            finally:
                store.close()


def open(path, series=None) -> TiffSource:  # noqa: A001 - every reader's ``open``
    """The :class:`TiffSource` of the TIFF's only series, or of series ``series`` (metadata only); a file of
    several series without ``series`` is refused listing them, as a slice's read is (:func:`_pick_series`)."""
    import tifffile

    try:
        with quiet_tifffile(), tifffile.TiffFile(path) as tif:
            if not holds_image(tif):
                raise file_error(path, "has a TIFF header but no image in it (0 pages): the file is empty or was cut "
                                       "short")
            chosen = _pick_series(path, tif.series, series)
            shape, dtype, axes = tuple(chosen.shape), chosen.dtype, chosen.axes
            px = tiff_pixel_size(tif)
            spacing = (tif.imagej_metadata or {}).get("spacing")
            if tif.is_ome and tif.ome_metadata:
                m = re.search(r'PhysicalSizeZ="([0-9.eE+-]+)"', tif.ome_metadata)
                spacing = float(m.group(1)) if m else spacing
    except BrainrtError:
        raise
    except Exception as exc:  # tifffile raises many types for broken files
        raise file_error(path, f"cannot read as TIFF ({type(exc).__name__}: {first_line(exc)})") from None
    check_no_channels(path, axes, shape)
    return TiffSource(str(path), shape, np.dtype(dtype).str, px, float(spacing) if spacing else None, axes=axes,
                      series=series or 0)


def check_stack(src: TiffSource):
    """Refuse a TIFF that is not a 3D grayscale stack (planar samples of 3 or 4 slices are read as one)."""
    shape, axes = src.shape, src.axes
    if len(shape) == 3 and axes == "SYX":  # tifffile.imwrite(stack) of 3 or 4 slices, without photometric
        log.info("%s: its %d planar samples are read as the slices of a stack (write stacks with "
                 "photometric='minisblack' to store them as such)", src.path, shape[0])
    elif len(shape) != 3 or "S" in axes:
        raise file_error(src.path, f"expected a 3D grayscale stack (Z, Y, X), got shape {shape} (axes {axes}); "
                                   "write stacks with tifffile.imwrite(path, stack, photometric='minisblack')")


def read_2d(path, *, z=None, what="image", series=None):
    """A 2D grayscale image (or mask) of the TIFF and its pixel size (see :func:`brainrt.sources.read_image`)."""
    path = Path(path)
    arr, axes, pixel_size = _read_series(path, series)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4) and axes.endswith("S"):
        raise file_error(path, f"expected a 2D grayscale {what}, got an RGB(A) image of shape {arr.shape}")
    if arr.ndim == 3:
        if z is None:
            raise file_error(path, f"expected a 2D grayscale {what}, got shape {arr.shape}; pass --z to choose a slice")
        if not 0 <= z < arr.shape[0]:
            raise file_error(path, f"--z {z} is outside the stack's {arr.shape[0]} slices")
        arr = arr[z]
    elif z is not None and (what == "image" or z != 0):
        raise file_error(path, f"is a 2D {what}; --z {z} does not apply")
    if what == "image":
        return check_image(arr, path), pixel_size
    if arr.dtype.kind in "iu" and arr.dtype not in PIXEL_TYPES:
        arr = arr.astype(np.int64)  # masks hold codes: any integer type will do
    return check_image(arr, path, types=MASK_TYPES), pixel_size


def _read_series(path, index=None):
    """(array, axes, pixel size or None) of one series of the TIFF (the only one, or ``index``), or the one-line error."""
    import tifffile

    if path.is_dir():
        check_not_bundle(path)
        raise file_error(path, "is a directory, not a TIFF file")
    if not path.is_file():
        raise file_error(path, "no such file")
    if path.stat().st_size == 0:
        raise file_error(path, "empty file (0 bytes), not a TIFF")
    try:
        with quiet_tifffile(), tifffile.TiffFile(path) as tif:
            if not holds_image(tif):
                raise file_error(path, "has a TIFF header but no image in it (0 pages): the file is empty or was cut "
                                       "short")
            series = _pick_series(path, tif.series, index)
            check_no_channels(path, series.axes, series.shape)
            return np.asarray(series.asarray()), series.axes, tiff_pixel_size(tif)
    except BrainrtError:
        raise
    except Exception as exc:  # tifffile raises many types for broken files
        raise file_error(path, f"cannot read as TIFF ({type(exc).__name__}: {first_line(exc)})") from None


def _pick_series(path, series, index):
    """The series ``index`` (None: the only one), or the error listing every series and its shape."""
    if index is None and len(series) == 1:
        return series[0]
    listing = "; ".join(f"{i}: {s.axes} {tuple(s.shape)} {s.dtype}" for i, s in enumerate(series))
    if index is None:
        raise file_error(path, f"holds {len(series)} series ({listing}); pass --series N (series= in Python) to choose one")
    if not 0 <= index < len(series):
        raise file_error(path, f"--series {index} is outside the file's {len(series)} series ({listing})")
    return series[index]


def tiff_pixel_size(tif):
    """Pixel size in micrometres from ImageJ/OME metadata or resolution tags, else None."""
    try:
        ij = tif.imagej_metadata or {}
        page = tif.pages[0]
        tag = page.tags.get("XResolution")
        unit = page.tags.get("ResolutionUnit")
        if tag is None:
            return None
        num, den = tag.value
        if num == 0:
            return None
        per_unit = den / num  # units per pixel
        u = str(ij.get("unit", "")).lower()
        if u in ("micron", "um", "µm", "\\u00b5m"):
            return float(per_unit)
        if unit is not None and int(unit.value) == 3:  # centimetre
            return float(per_unit * 1e4)
        if unit is not None and int(unit.value) == 2:  # inch
            return None  # usually a DPI default, not a physical size
    except Exception:
        return None
    return None
