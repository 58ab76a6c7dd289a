"""What every reader gives: a small, picklable :class:`Source` (paths and geometry only) whose
:meth:`~Source.read` reads one z (or rows of it) where it is called, and the measure of those reads.

Every read is measured: :func:`bytes_read` is what this process's reads took from the
kernel (``rchar`` in ``/proc/self/task/*/io``, across each :meth:`~Source.read`, of the
reading thread and of zarr's I/O threads, where zarr and tifffile's zarr view read: the file
bytes really read, whatever the layout; a Dask worker's event loop is not counted), so a
benchmark can sum it over the workers.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import BrainrtError, file_error, first_line

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


def band(rows):
    """``rows`` (``(r0, r1)`` or None: all) as a slice."""
    return slice(None) if rows is None else slice(*rows)


@dataclass(frozen=True)
class Source:
    """An image or a stack read lazily: its ``path`` (and the ``array`` path inside a zarr group or an
    HDF5 file), ``shape`` ((Z, H, W) or (H, W)), ``dtype`` and the voxel size in micrometres where the
    file records it. Small: one copy travels with every task. Each reader module subclasses it with
    the ``kind`` it reads and a ``_read(z, rows)``."""

    path: str
    shape: tuple
    dtype: str
    pixel_size_um: float | None = None
    z_spacing_um: float | None = None
    array: str = ""

    kind = ""
    #: Packages a read imports: imported before measuring (not the slice's bytes).
    modules: tuple = ()

    @property
    def name(self) -> str:
        """How messages and run records name it: the path (and the array inside, where one was chosen)."""
        return self.path

    def read(self, z=None, rows=None) -> np.ndarray:
        """Slice ``z`` of a stack (None for a 2D image) as a 2D array, or its ``rows`` ``(r0, r1)`` only;
        reads only those (counted in :func:`bytes_read`)."""
        for m in self.modules:
            __import__(m)
        before = _rchar()
        try:
            return np.asarray(self._read(z, rows))
        except (BrainrtError, MemoryError):
            raise
        except Exception as exc:  # a truncated or broken file: name it (a worker's traceback names nothing)
            raise file_error(self.file(z), f"cannot read slice {z} ({type(exc).__name__}: {first_line(exc)})") \
                from None
        finally:
            _READ["bytes"] += sum(n - before.get(t, 0) for t, n in _rchar().items())  # threads started too
            _READ["slices"] += 1

    def file(self, z) -> str:
        """The file slice ``z`` is read from (a folder's: that slice's file)."""
        return self.path

    def _read(self, z, rows):  # pragma: no cover - every reader defines it
        raise NotImplementedError

    def index(self, z, rows):
        """The numpy index of slice ``z`` (or the whole 2D image) and ``rows``."""
        return (band(rows),) if len(self.shape) == 2 else (z, band(rows))


def check_not_bundle(path):
    """The one-line error for a model bundle folder given where an image belongs."""
    if (Path(path) / "manifest.json").is_file():  # brainrt.model.seal.MANIFEST (sources import errors only)
        raise file_error(path, "is a model bundle folder, not an image; pass a bundle with -m/--model")


def check_no_channels(path, axes, shape):
    """The one-line error for an image with a channel axis (OME or ImageJ axes ``C``): channels are not slices."""
    if "C" in axes:
        n = shape[axes.index("C")]
        raise file_error(path, f"holds {n} channels (axes {axes}, shape {tuple(shape)}); brainrt maps one grayscale "
                               "channel: save the channel to map as its own TIFF")


def holds_image(tif):
    """Whether an open TIFF holds an image (a header with no page, or an empty first page, holds none)."""
    return bool(tif.series) and len(tif.series[0].shape) > 0 and int(np.prod(tif.series[0].shape)) > 0


@contextlib.contextmanager
def quiet_tifffile():
    """tifffile's own log lines (e.g. "contains no pages") off while a file is opened: the error says it once."""
    logger = logging.getLogger("tifffile")
    old = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(old)
