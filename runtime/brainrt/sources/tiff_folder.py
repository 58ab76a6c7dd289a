"""A folder of 2D TIFFs, one per z, in natural order (``s2.tif`` before ``s10.tif``): a stack whose
every slice's shape is checked from its header before any work."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import BrainrtError, file_error, first_line
from .base import Source, band, check_not_bundle, holds_image, quiet_tifffile
from .tiff import tiff_pixel_size

KIND = "folder"
#: A folder of 2D TIFFs is always a volume (:data:`brainrt.sources.VOLUME_RULES`).
VOLUME = "always"
SUFFIXES = ()
TIFF_SUFFIXES = (".tif", ".tiff")


def claims(path: str) -> bool:
    """A local folder (zarr folders are claimed first, by their reader)."""
    return "://" not in path and Path(path).is_dir()


def natural_key(name: str):
    """Sort key that orders embedded numbers by value (``s2`` before ``s10``)."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


@functools.lru_cache(maxsize=8)
def folder_files(path) -> tuple:
    """The TIFF files of a folder in natural order (cached per process)."""
    files = sorted((f for f in Path(path).iterdir() if f.suffix.lower() in TIFF_SUFFIXES and f.is_file()),
                   key=lambda f: natural_key(f.name))
    return tuple(str(f) for f in files)


@dataclass(frozen=True)
class FolderSource(Source):
    """The folder's files in natural order, one slice each (the list made again where it is read, once per process)."""

    kind = KIND
    modules = ("tifffile", "zarr")

    def file(self, z) -> str:
        return folder_files(self.path)[z]

    def _read(self, z, rows):
        import tifffile

        return np.asarray(tifffile.imread(folder_files(self.path)[z]))[band(rows)]


def open(path) -> FolderSource:  # noqa: A001 - every reader's ``open``
    """The stack of the folder's TIFFs (headers only)."""
    check_not_bundle(path)
    files = folder_files(str(path))
    if not files:
        raise file_error(path, "is a folder with no .tif/.tiff files")
    shape, dtype, px = _slice_header(files[0])
    if len(shape) != 2:
        raise file_error(files[0], f"expected a 2D grayscale slice in the folder {path}, got shape {shape}")
    for z, f in enumerate(files[1:], 1):  # every slice's shape from its header, before any work
        other = _slice_header(f)[0]
        if other != shape:
            raise file_error(path, f"slice {z} ({Path(f).name}) has shape {other}, not the stack's {shape} "
                                   f"(that of {Path(files[0]).name})")
    return FolderSource(str(path), (len(files),) + shape, np.dtype(dtype).str, px)


def _slice_header(f):
    """(shape, dtype, pixel size) of a folder's slice file from its header; the one-line error for a file that
    is not a TIFF, holds no image, or is shorter than its header says (cut short: its pixels end early)."""
    import tifffile

    try:
        with quiet_tifffile(), tifffile.TiffFile(f) as tif:
            if not holds_image(tif):
                raise file_error(f, "has a TIFF header but no image in it (0 pages)")
            page, size = tif.series[0], Path(f).stat().st_size
            end = max((o + n for p in tif.pages for o, n in zip(p.dataoffsets, p.databytecounts)), default=0)
            if end > size:
                raise file_error(f, f"is cut short: its pixels end at byte {end}, the file has {size} bytes")
            return tuple(page.shape), page.dtype, tiff_pixel_size(tif)
    except BrainrtError:
        raise
    except Exception as exc:  # tifffile raises many types for broken files
        raise file_error(f, f"cannot read as TIFF ({type(exc).__name__}: {first_line(exc)})") from None
