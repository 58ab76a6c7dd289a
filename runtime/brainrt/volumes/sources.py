"""Volume sources: lazy stack readers (paths and geometry only; pixels are read where they are used).

A volume is read one slice at a time, never whole: :func:`open_volume` returns a small
picklable :class:`VolumeSource` (paths and geometry only) whose :meth:`~VolumeSource.read`
opens the file and reads one z; a Dask worker calls it itself, so no pixels travel
through the client. Three kinds of input:

- a 3D TIFF stack (multi-page, ImageJ or OME), read through tifffile's zarr view of its
  first series (one page per read, contiguous ImageJ stacks included);
- a folder of 2D TIFFs, one per z, in natural order (``s2.tif`` before ``s10.tif``);
- a zarr array, or an OME-Zarr image (its full-resolution level), by local path or an
  fsspec URL where the filesystem package is installed.

A new input format is one more ``kind`` here: a branch in :func:`open_volume` that reads
its metadata and one in :meth:`VolumeSource.read` that reads one slice.

Every read is measured: :func:`bytes_read` is what this process's reads took from the
kernel (``rchar`` in ``/proc/self/task/*/io``, across each :meth:`~VolumeSource.read`, of
the reading thread and of zarr's I/O threads, where zarr and tifffile's zarr view read: the
file bytes really read, whatever the layout; a Dask worker's event loop is not counted), so a
benchmark can sum it over the workers.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import BrainrtError, file_error
from ..grid import is_feature_grid
from ..io import first_line, is_zarr_path, open_zarr_image, tiff_pixel_size

TIFF_SUFFIXES = (".tif", ".tiff")

log = logging.getLogger("brainrt")

_READ = {"bytes": 0, "slices": 0}  # this process's source reads (:func:`bytes_read`)
#: Threads whose reads count besides the reading one: zarr's event loop and the executor its stores
#: read in (zarr 3: ``zarr_io``, ``zarr_pool_N`` or the loop's default ``asyncio_N``).
IO_THREADS = ("zarr_", "asyncio_")


def _rchar() -> dict:
    """``{thread id: bytes read through the kernel so far}`` of this thread and zarr's I/O threads."""
    me, out = threading.get_native_id(), {}
    for t in threading.enumerate():
        if t.native_id == me or t.name.startswith(IO_THREADS):
            try:
                text = Path(f"/proc/self/task/{t.native_id}/io").read_text()
                out[t.native_id] = int(next(line for line in text.splitlines() if line.startswith("rchar:")).split()[1])
            except (OSError, StopIteration, ValueError):  # no /proc io counters here: nothing counted
                pass
    return out


def bytes_read() -> dict:
    """This process's source reads so far: ``{"bytes": measured rchar, "slices": reads}``."""
    return dict(_READ)


@dataclass(frozen=True)
class VolumeSource:
    """A lazily read stack: ``kind`` ("tiff", "folder", "zarr"), its ``path`` (and the
    ``array`` path inside a zarr group), ``shape`` (Z, H, W), ``dtype`` and the voxel size in
    micrometres where the file records it. Small: one copy travels with every task (a
    folder's file list is made again where it is read, once per process)."""

    kind: str
    path: str
    shape: tuple
    dtype: str
    pixel_size_um: float | None = None
    z_spacing_um: float | None = None
    array: str = ""

    @property
    def name(self) -> str:
        return self.path

    def read(self, z: int) -> np.ndarray:
        """Slice ``z`` as a 2D array (reads only that slice; counted in :func:`bytes_read`)."""
        import tifffile  # noqa: F401  (imported before measuring: not the slice's bytes)
        import zarr  # noqa: F401

        before = _rchar()
        try:
            return self._read(z)
        finally:
            _READ["bytes"] += sum(n - before.get(t, 0) for t, n in _rchar().items())  # threads started too
            _READ["slices"] += 1

    def _read(self, z):
        if self.kind == "folder":
            import tifffile

            return np.asarray(tifffile.imread(folder_files(self.path)[z]))
        if self.kind == "tiff":
            import tifffile
            import zarr

            with tifffile.TiffFile(self.path) as tif:
                store = tif.series[0].aszarr()
                try:
                    return np.asarray(zarr.open(store, mode="r")[z])
                finally:
                    store.close()
        return np.asarray(_open_zarr_array(self.path, self.array)[z])


def natural_key(name: str):
    """Sort key that orders embedded numbers by value (``s2`` before ``s10``)."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def is_volume_input(path, z=None) -> bool:
    """Whether ``path`` with ``z`` is a volume job: ``z`` a range or "all", a folder of TIFFs, or (without
    ``z``) a zarr that is not a saved feature grid (:func:`brainrt.grid.is_feature_grid`) nor one slice.
    One index ``z`` of a 3D TIFF or zarr stack is a slice (2D outputs)."""
    p = str(path).rstrip("/")
    if isinstance(z, str) and not z.strip().lstrip("-").isdigit():
        return True
    if "://" not in p and Path(p).is_dir() and not is_zarr_path(p):
        return True  # a TIFF folder: the 2D readers read files
    if z is not None:
        return False
    if "://" in p:
        return True
    if p.endswith(".zarr") or Path(p).is_dir():
        return not is_feature_grid(p) and not _is_2d_zarr(p)
    return False


def _is_2d_zarr(path):
    """Whether ``path`` is a zarr array or OME-Zarr image of one slice (read as a slice, not a volume)."""
    if not is_zarr_path(path) or not Path(path).exists():
        return False
    try:
        return open_zarr_image(path)[0].ndim == 2
    except BrainrtError:
        return False


def open_volume(path) -> VolumeSource:
    """The :class:`VolumeSource` of a 3D TIFF, a folder of 2D TIFFs or a zarr / OME-Zarr path.

    Reads metadata only. Raises the one-line :class:`BrainrtError` naming the file.
    """
    p = str(path).rstrip("/")
    if "://" not in p and not Path(p).exists():
        raise file_error(p, "no such file or folder")
    if "://" in p or p.endswith(".zarr") or (Path(p) / "zarr.json").exists() or (Path(p) / ".zarray").exists() \
            or (Path(p) / ".zgroup").exists():
        return _open_zarr_source(p)
    if Path(p).is_dir():
        return _open_folder(p)
    return _open_tiff_stack(p)


def _open_tiff_stack(path):
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            shape, dtype, axes = tuple(series.shape), series.dtype, series.axes
            px = tiff_pixel_size(tif)
            spacing = (tif.imagej_metadata or {}).get("spacing")
            if tif.is_ome and tif.ome_metadata:
                m = re.search(r'PhysicalSizeZ="([0-9.eE+-]+)"', tif.ome_metadata)
                spacing = float(m.group(1)) if m else spacing
    except Exception as exc:  # tifffile raises many types for broken files
        raise file_error(path, f"cannot read as TIFF ({type(exc).__name__}: {first_line(exc)})") from None
    if len(shape) == 3 and axes == "SYX":  # tifffile.imwrite(stack) of 3 or 4 slices, without photometric
        log.info("%s: its %d planar samples are read as the slices of a stack (write stacks with "
                 "photometric='minisblack' to store them as such)", path, shape[0])
    elif len(shape) != 3 or "S" in axes:
        raise file_error(path, f"expected a 3D grayscale stack (Z, Y, X), got shape {shape} (axes {axes}); "
                               "write stacks with tifffile.imwrite(path, stack, photometric='minisblack')")
    return VolumeSource("tiff", str(path), shape, np.dtype(dtype).str, px, float(spacing) if spacing else None)


@functools.lru_cache(maxsize=8)
def folder_files(path) -> tuple:
    """The TIFF files of a folder in natural order (cached per process)."""
    files = sorted((f for f in Path(path).iterdir() if f.suffix.lower() in TIFF_SUFFIXES and f.is_file()),
                   key=lambda f: natural_key(f.name))
    return tuple(str(f) for f in files)


def _open_folder(path):
    import tifffile

    files = folder_files(str(path))
    if not files:
        raise file_error(path, "is a folder with no .tif/.tiff files")
    with tifffile.TiffFile(files[0]) as tif:
        page, px = tif.series[0], tiff_pixel_size(tif)
        shape, dtype = tuple(page.shape), page.dtype
    if len(shape) != 2:
        raise file_error(files[0], f"expected a 2D grayscale slice in the folder {path}, got shape {shape}")
    for z, f in enumerate(files[1:], 1):  # every slice's shape from its header, before any work
        try:
            with tifffile.TiffFile(f) as tif:
                other = tuple(tif.series[0].shape)
        except Exception as exc:  # tifffile raises many types for broken files
            raise file_error(f, f"cannot read as TIFF ({type(exc).__name__}: {first_line(exc)})") from None
        if other != shape:
            raise file_error(path, f"slice {z} ({Path(f).name}) has shape {other}, not the stack's {shape} "
                                   f"(that of {Path(files[0]).name})")
    return VolumeSource("folder", str(path), (len(files),) + shape, np.dtype(dtype).str, px)


def _open_zarr_array(path, array=""):
    import zarr

    node = zarr.open(path, mode="r")
    return node[array] if array else node


def _open_zarr_source(path):
    node, array, px, dz = open_zarr_image(path)
    shape = tuple(node.shape)
    if len(shape) != 3:
        raise file_error(path, f"expected a 3D (Z, Y, X) array, got shape {shape}")
    return VolumeSource("zarr", str(path), shape, np.dtype(node.dtype).str, px, dz, array=array)
