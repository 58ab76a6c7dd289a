"""Sources: every input format of images, one module a reader, and the one place that tells them apart.

Lives here: the readers (``tiff``, ``tiff_folder``, ``zarr_image``, ``hdf5``), the :class:`Source` they
give (``base``) and the one choice among them (this module: :data:`READERS`, ``read_image``,
``read_mask``, ``open_volume``). A reader module declares ``KIND``, its name ``SUFFIXES``, when its input is a volume
(``VOLUME``, one of :data:`VOLUME_RULES`), ``claims(path)`` (a cheap look at the name,
folder markers or magic bytes), ``open(path)`` (metadata only, one-line errors; with ``SERIES``, ``open(path, series)``
picks one of a file's series) giving a picklable
:class:`~brainrt.sources.base.Source` (shape, dtype, pixel size, z spacing, ``read(z, rows)``), and
where it needs them ``check_stack(src)`` (its own refusal of what is no 3D stack) and ``read_2d``
(its own slice reader; the TIFF's, which reads series and masks). :data:`READERS` lists them in the
order they are asked; the first that claims a path reads it. **A new format is one module here and
one line in** :data:`READERS`.

May import: :mod:`brainrt.errors` only (and the optional packages each reader needs, in its functions).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import BrainrtError, check_image, file_error
from . import hdf5, tiff, tiff_folder, zarr_image
from .base import Source, bytes_read, check_not_bundle
from .tiff_folder import folder_files, natural_key

#: The readers, asked in this order (TIFF last: it takes every path that no other claims).
READERS = (zarr_image, hdf5, tiff_folder, tiff)
#: The OME-NGFF feature grid's format (``attrs["brainrt"]["format"]``), that :mod:`brainrt.engine.grid` writes.
NGFF_FORMAT = "brainrt-features/2"
#: When a reader's input is a volume job (its ``VOLUME``): "always" (a folder of 2D TIFFs), "with z" (only with a
#: ``--z`` naming several slices: a 3D TIFF), "by shape" (a 3D array, unless ``--z`` names one slice: zarr, HDF5).
VOLUME_RULES = ("always", "with z", "by shape")
#: Name endings that default output names drop (a saved feature grid's first), in the order they are tried.
SUFFIXES = (".features.zarr",) + tuple(s for r in READERS for s in r.SUFFIXES)

__all__ = ["NGFF_FORMAT", "READERS", "SUFFIXES", "VOLUME_RULES", "Source", "bytes_read", "check_not_bundle", "file_of", "folder_files", "integer_codes", "is_feature_grid",
           "is_volume_input", "natural_key", "open_source", "open_volume", "read_image", "read_mask", "reader_of"]


def reader_of(path):
    """The reader module of ``path``: the first of :data:`READERS` that claims it."""
    p = str(path).rstrip("/")
    return next(r for r in READERS if r.claims(p))


def file_of(path) -> str:
    """The file (or folder) that ``path`` names, without the dataset inside it (``v.h5:/exchange/data`` -> ``v.h5``)."""
    return hdf5.split(str(path))[0]


def open_source(path) -> Source:
    """The :class:`Source` of any input (metadata only)."""
    return reader_of(path).open(str(path).rstrip("/"))


def open_volume(path, series=None) -> Source:
    """The :class:`Source` of a 3D stack: a TIFF (its only series, or ``series``), a folder of 2D TIFFs, a zarr /
    OME-Zarr path or an HDF5 dataset. Reads metadata only. Raises the one-line :class:`BrainrtError` naming the
    file."""
    p = str(path).rstrip("/")
    if "://" not in p and not Path(file_of(p)).exists():
        raise file_error(file_of(p), "no such file or folder")
    reader = reader_of(p)
    if series is not None and not getattr(reader, "SERIES", False):
        raise file_error(p, f"--series {series} picks a series of a multi-series TIFF; this is not a TIFF file")
    src = reader.open(p) if series is None else reader.open(p, series)
    if hasattr(reader, "check_stack"):
        reader.check_stack(src)
    elif len(src.shape) != 3:
        raise file_error(p, f"expected a 3D (Z, Y, X) array, got shape {src.shape}")
    return src


def read_image(path, *, z=None, what="image", series=None):
    """Read a 2D grayscale image of any source (masks: of a TIFF).

    ``z`` picks a slice of a stack (required for stacks), ``what`` names the file in messages
    ("image", "label mask"), ``series`` picks one series of a multi-series (OME-)TIFF.
    Returns the image (H, W) (uint8, uint16, float32 or float64, finite) and the pixel size the
    file records, or None.
    """
    reader = reader_of(path) if what == "image" else tiff
    if hasattr(reader, "read_2d"):
        return reader.read_2d(path, z=z, what=what, series=series)
    src = reader.open(str(path).rstrip("/"))
    if len(src.shape) == 3:
        if z is None:
            raise file_error(path, f"expected a 2D grayscale {what}, got shape {src.shape}; pass --z to choose a slice")
        if not 0 <= z < src.shape[0]:
            raise file_error(path, f"--z {z} is outside the stack's {src.shape[0]} slices")
    elif len(src.shape) == 2:
        if z not in (None, 0):
            raise file_error(path, f"is a 2D {what}; --z {z} does not apply")
        z = None
    else:
        raise file_error(path, f"expected a 2D grayscale {what}, got shape {src.shape}")
    return check_image(src.read(z), path), src.pixel_size_um


def read_mask(path, shape, *, z=None, what="label mask"):
    """A mask TIFF (tissue, truth, ROI) that must match the slice's ``shape``."""
    mask, _ = read_image(path, z=z, what=what)
    if mask.shape != tuple(shape):
        raise file_error(path, f"{what} shape {mask.shape} differs from the slice's {tuple(shape)}")
    if what == "label mask" and mask.dtype.kind == "f":  # class codes (a tissue or ROI mask: nonzero = inside)
        mask = integer_codes(mask, path)
    return mask


def integer_codes(mask, path):
    """A float label mask's codes as int64 when every value is a whole number, else the one-line error."""
    frac = mask != np.round(mask)
    if frac.any():
        raise file_error(path, f"label mask holds non-integer values (e.g. {mask[frac].flat[0]:g}); a label mask "
                               "holds integer class codes")
    return mask.astype(np.int64)


def is_feature_grid(path) -> bool:
    """Whether ``path`` is a saved brainrt feature grid (either layout of :mod:`brainrt.engine.grid`), not an image: by
    its files, nothing decoded."""
    p = str(path).rstrip("/")
    if reader_of(p) is not zarr_image:
        return False
    if (Path(p) / "features").is_dir():
        return True
    try:
        attrs = json.loads((Path(p) / "zarr.json").read_text()).get("attributes", {})
    except (OSError, ValueError):
        return False
    return attrs.get("brainrt", {}).get("format") == NGFF_FORMAT


def is_volume_input(path, z=None) -> bool:
    """Whether ``path`` with ``z`` is a volume job: ``z`` a range or "all", a folder of TIFFs, or (without
    ``z``) a stack that is not a TIFF (which needs ``--z``): a zarr or HDF5 source of 3D shape (not a saved
    feature grid). One index ``z`` of a stack is a slice (2D outputs)."""
    p = str(path).rstrip("/")
    if isinstance(z, str) and not z.strip().lstrip("-").isdigit():
        return True
    rule = reader_of(p).VOLUME
    if rule == "always":
        return True  # a TIFF folder: the 2D readers read files
    if z is not None or rule == "with z":
        return False
    return "://" in p or not (is_feature_grid(p) or _is_2d(p))


def _is_2d(path):
    """Whether ``path`` is a source of one slice (read as a slice, not a volume)."""
    if not Path(file_of(path)).exists():
        return False
    try:
        return len(open_source(path).shape) == 2
    except BrainrtError:  # open_volume says why, as a volume
        return False
