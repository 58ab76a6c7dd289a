"""HDF5 files (h5py, the ``[hdf5]`` extra): a 2D image or a (Z, Y, X) stack in one dataset, named as
``volume.h5:/exchange/data`` or found as the file's only 2D or 3D dataset (of several, ``/exchange/data``,
where tomography pipelines write reconstructions, is taken). One z is read at a time (a chunked
dataset reads only the chunks it needs). The pixel size comes from the dataset's attributes where it
has them: ``element_size_um`` ((z, y, x) or (y, x), as Fiji and ilastik write it), else
``pixel_size_um`` and ``z_spacing_um``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import BrainrtError, file_error, first_line
from .base import Source

KIND = "hdf5"
#: A 3D dataset is a volume without --z (:data:`brainrt.sources.VOLUME_RULES`).
VOLUME = "by shape"
SUFFIXES = (".h5", ".hdf5", ".hdf", ".he5", ".nxs")
SIGNATURE = b"\x89HDF\r\n\x1a\n"
#: Taken among several datasets: the tomography convention (Data Exchange, tomopy, tomocupy).
CONVENTIONAL = "/exchange/data"
_INNER = re.compile(r"^(.+?\.(?:" + "|".join(s[1:] for s in SUFFIXES) + r")):(.*)$", re.IGNORECASE)


def split(spec: str):
    """(file, dataset path or "") of ``FILE.h5:/path`` or ``FILE.h5``."""
    m = _INNER.match(spec)
    return (m.group(1), "/" + m.group(2).lstrip("/")) if m else (spec, "")


def claims(path: str) -> bool:
    """``FILE.h5:/dataset``, or a file that starts with the HDF5 signature (whatever its name)."""
    file, inner = split(path)
    if inner:
        return True
    try:
        with Path(file).open("rb") as f:
            return f.read(8) == SIGNATURE
    except OSError:
        return file.lower().endswith(SUFFIXES) and not Path(file).exists()


@dataclass(frozen=True)
class HDF5Source(Source):
    kind = KIND
    modules = ("h5py",)

    @property
    def name(self):
        return f"{self.path}:{self.array}"

    def _read(self, z, rows):
        import h5py

        with h5py.File(self.path, "r") as f:
            return f[self.array][self.index(z, rows)]


def open(path) -> HDF5Source:  # noqa: A001 - every reader's ``open``
    """The :class:`HDF5Source` of ``FILE.h5[:/dataset]`` (metadata only)."""
    file, inner = split(str(path))
    h5py = _h5py(file)
    if not Path(file).is_file():
        raise file_error(file, "no such file")
    try:
        with h5py.File(file, "r") as f:
            name = inner or _only_dataset(file, f)
            ds = f.get(name)
            if not isinstance(ds, h5py.Dataset):
                raise file_error(file, f"holds no dataset {name!r} (its 2D and 3D datasets: {_listing(f)})")
            px, dz = _sizes(dict(ds.attrs))
            return HDF5Source(file, tuple(ds.shape), np.dtype(ds.dtype).str, px, dz, array=ds.name)
    except BrainrtError:
        raise
    except Exception as exc:  # h5py raises OSError, KeyError, ... for broken files
        raise file_error(file, f"cannot read as HDF5 ({type(exc).__name__}: {first_line(exc)})") from None


def _h5py(file):
    try:
        import h5py
    except ModuleNotFoundError:
        raise file_error(file, "reading HDF5 needs h5py; install brainrt with the [hdf5] extra "
                               "(pip install 'brainrt[hdf5]')") from None
    return h5py


def _images(f):
    """{path: dataset} of the file's 2D and 3D datasets."""
    import h5py

    found = {}

    def visit(name, node):  # returns None: visititems stops at the first other value
        if isinstance(node, h5py.Dataset) and node.ndim in (2, 3):
            found["/" + name] = node

    f.visititems(visit)
    return found


def _listing(f):
    return "; ".join(f"{n} {tuple(d.shape)} {d.dtype}" for n, d in _images(f).items()) or "none"


def _only_dataset(file, f):
    """The path of the file's only 2D or 3D dataset (of several, :data:`CONVENTIONAL`), or the error listing them."""
    found = _images(f)
    if len(found) == 1:
        return next(iter(found))
    if CONVENTIONAL in found:
        return CONVENTIONAL
    if not found:
        raise file_error(file, "holds no 2D or 3D dataset")
    raise file_error(file, f"holds {len(found)} 2D and 3D datasets ({_listing(f)}); name one as {file}:/PATH")


def _sizes(attrs):
    """(pixel size, z spacing) in micrometres from a dataset's attributes, None where absent."""
    el = attrs.get("element_size_um")
    if el is not None and np.ndim(el) == 1 and len(el) in (2, 3):
        el = [float(v) for v in el]
        return el[-1], (el[0] if len(el) == 3 else None)
    px, dz = attrs.get("pixel_size_um"), attrs.get("z_spacing_um")
    return (float(px) if px is not None else None), (float(dz) if dz is not None else None)
