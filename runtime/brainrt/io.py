"""Writing outputs safely (reading is :mod:`brainrt.sources`').

Every writer writes to a temporary name beside the target and renames it into place, so an
interrupted run never leaves a half-written file; an output is never written over an input
(:func:`check_not_input`) and its folder is checked before any work (:func:`check_target`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import numpy as np

from .errors import file_error
from .runfiles import temp_path


def check_not_input(targets, inputs):
    """Raise the one-line error if an output path resolves to one of the command's input files."""
    ins = {Path(p).resolve(): p for p in inputs if p is not None and isinstance(p, (str, Path)) and Path(p).exists()}
    for target in targets:
        if Path(target).resolve() in ins:
            raise file_error(target, "is an input of this command; refusing to overwrite it (choose another -o)")


def check_target(target, *, overwrite=True, is_dir=False):
    """Raise the one-line error that writing ``target`` would raise, before any work is done.

    The folder must exist and be writable; an existing target is replaced only with
    ``overwrite`` and only by the same kind (a file by a file, a folder by a folder).
    """
    target = Path(target)
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise file_error(target, f"output folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise file_error(target, f"output folder {parent} is not writable")
    if target.exists() and not overwrite:
        raise file_error(target, "already exists; pass --overwrite to replace it")
    if target.exists() and target.is_dir() != is_dir:
        kind = "a folder" if target.is_dir() else "a file"
        raise file_error(target, f"is {kind}; refusing to replace it by {'a folder' if is_dir else 'a file'}")
    return target


@contextlib.contextmanager
def atomic_path(target, *, overwrite=True, is_dir=False):
    """Yield a temporary path beside ``target``; rename it into place on success.

    On any error the temporary file or folder is removed and ``target`` is untouched.
    """
    target = check_target(target, overwrite=overwrite, is_dir=is_dir)
    tmp = temp_path(target, is_dir=is_dir)
    try:
        yield tmp
        # mkstemp/mkdtemp create 0600/0700; give the result the usual umask-based mode
        os.chmod(tmp, (0o777 if is_dir else 0o666) & ~current_umask())
        if is_dir:
            if target.exists():
                shutil.rmtree(target) if target.is_dir() else target.unlink()
            os.replace(tmp, target)
        else:
            os.replace(tmp, target)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()
        raise


def current_umask():
    """The process umask, read without changing it where /proc allows (thread-safe)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


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


def write_json(path, obj, *, overwrite=True):
    """Write JSON atomically."""
    import json

    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def save_figure(fig, path, tight=True):
    """Save a matplotlib figure as PNG atomically and close it (``tight``: cropped to what is drawn; else at
    the figure's own size in pixels)."""
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=fig.dpi, bbox_inches="tight" if tight else None)
    plt.close(fig)
