"""OME-TIFF outputs: a 2D or (C, Y, X) map with its pixel size and channel names, written atomically
(:func:`write_ome_tiff`) or a band of rows at a time, never held whole (:class:`OmeTiffBands`: a
slice's probabilities and uncertainty streamed as the engine's rows are finished).

May import: :mod:`brainrt.io` (the atomic rename into place).
"""

from __future__ import annotations

import os

import numpy as np

from ..io import atomic_path


def _ome_options(ndim, pixel_size_um, channel_names):
    """tifffile keywords of an OME-TIFF of ``ndim`` axes (Y, X or C, Y, X) with its pixel size and channel names."""
    meta = {"axes": "YX" if ndim == 2 else "CYX", "PhysicalSizeX": pixel_size_um, "PhysicalSizeY": pixel_size_um,
            "PhysicalSizeXUnit": "µm", "PhysicalSizeYUnit": "µm"}
    if channel_names is not None:
        meta["Channel"] = {"Name": list(channel_names)}
    return dict(ome=True, metadata=meta, resolution=(1e4 / pixel_size_um, 1e4 / pixel_size_um),
                resolutionunit="CENTIMETER")


def write_ome_tiff(path, data, *, pixel_size_um, channel_names=None, overwrite=True):
    """Write a 2D (Y, X) or 3D (C, Y, X) array as OME-TIFF with its pixel size, atomically."""
    import tifffile

    data = np.asarray(data)
    with atomic_path(path, overwrite=overwrite) as tmp:
        # minisblack always: a (C, Y, X) map 3 or 4 columns wide would be stored as RGB(A) samples otherwise
        tifffile.imwrite(tmp, data, compression="zlib", photometric="minisblack",
                         **_ome_options(data.ndim, pixel_size_um, channel_names))


class OmeTiffBands:
    """A (C, Y, X) OME-TIFF written a band of rows at a time, never held whole.

    The file is laid out in full at once (uncompressed, one contiguous strip per channel)
    under a temporary name beside ``path``; ``write(y0, band)`` puts the rows ``y0 ..`` of
    every channel (band (rows, X, C)) in place; ``commit()`` renames the file into place,
    ``abort()`` removes it (the target is untouched).
    """

    def __init__(self, path, shape, dtype, *, pixel_size_um, channel_names=None):
        import tifffile

        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        self._target = atomic_path(path)
        tmp = self._target.__enter__()
        try:
            tifffile.imwrite(tmp, shape=self.shape, dtype=self.dtype, photometric="minisblack",
                             **_ome_options(3, pixel_size_um, channel_names))
            with tifffile.TiffFile(tmp) as tif:
                pages = tif.pages[: self.shape[0]]
                self._offsets = [p.dataoffsets[0] for p in pages]
                assert all(len(p.dataoffsets) == 1 for p in pages)  # one strip per channel plane
            self._fd = os.open(tmp, os.O_RDWR)
        except BaseException as exc:
            self._target.__exit__(type(exc), exc, exc.__traceback__)
            raise

    def write(self, y0, band):
        """Rows ``y0 .. y0 + len(band)`` of every channel; ``band`` is (rows, X, C)."""
        row_bytes = self.shape[2] * self.dtype.itemsize
        for c, offset in enumerate(self._offsets):
            os.pwrite(self._fd, np.ascontiguousarray(band[..., c], self.dtype).tobytes(), offset + y0 * row_bytes)

    def commit(self):
        os.close(self._fd)
        self._fd = None
        self._target.__exit__(None, None, None)

    def abort(self):
        if self._fd is None:  # committed or aborted already
            return
        os.close(self._fd)
        self._fd = None
        exc = RuntimeError("aborted")
        self._target.__exit__(RuntimeError, exc, None)  # removes the temporary file
