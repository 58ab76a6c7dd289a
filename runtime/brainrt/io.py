"""Reading slices and writing outputs safely.

Every reader validates at the edge and raises :class:`BrainrtError` with one line that
names the file; every writer writes to a temporary name beside the target and renames
it into place, so an interrupted run never leaves a half-written file.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from .errors import PIXEL_TYPES, BrainrtError, check_image, file_error

#: Pixel types of masks (label codes): an image's, or any integer type read as int64.
MASK_TYPES = PIXEL_TYPES + (np.dtype(np.int64),)


def read_tiff(path, *, z=None, what="image", series=None):
    """Read a 2D grayscale image from a TIFF file.

    Parameters
    ----------
    path : str or Path
        The TIFF file.
    z : int or None, keyword-only
        Index of the slice to take from a 3D stack; required for stacks.
    what : str
        What the file is, for error messages ("image", "label mask").
    series : int or None, keyword-only
        Series of a multi-series (OME-)TIFF; required when the file holds several.

    Returns
    -------
    image : ndarray (H, W)
        uint8, uint16, float32 or float64, finite.
    pixel_size_um : float or None
        Pixel size from the TIFF's resolution tags, if it has any.
    """
    if is_zarr_path(path) and what == "image":
        return read_zarr(path, z=z, what=what)
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


def is_zarr_path(path) -> bool:
    """Whether ``path`` names a zarr store (a ``.zarr`` name, a zarr folder, or a URL)."""
    p = str(path).rstrip("/")
    return "://" in p or p.endswith(".zarr") or any((Path(p) / m).exists() for m in ("zarr.json", ".zarray", ".zgroup"))


def open_zarr_image(path):
    """(array, its path in the store, pixel size, z spacing) of a zarr array or an OME-Zarr image
    (its full-resolution level); sizes are None where the metadata gives none."""
    import zarr

    try:
        node = zarr.open(str(path).rstrip("/"), mode="r")
    except Exception as exc:
        raise file_error(path, f"cannot open as zarr ({type(exc).__name__})") from None
    if not isinstance(node, zarr.Group):
        return node, "", None, None
    attrs = dict(node.attrs)
    ms = attrs.get("ome", attrs).get("multiscales")
    if not ms:
        raise file_error(path, "is a zarr group but not an OME-Zarr image (no multiscales); give the array's path")
    ds = ms[0]["datasets"][0]
    names = [a["name"] if isinstance(a, dict) else a for a in ms[0].get("axes", [])]
    scale = next((t["scale"] for t in ds.get("coordinateTransformations", []) if t["type"] == "scale"), None)
    px = float(scale[-1]) if scale and names[-2:] == ["y", "x"] else None
    dz = float(scale[-3]) if scale and names[-3:] == ["z", "y", "x"] else None
    return node[ds["path"]], ds["path"], px, dz


def read_zarr(path, *, z=None, what="image"):
    """A 2D slice of a zarr array or OME-Zarr image (``z`` picks one of a 3D one), and its pixel size."""
    node, _, px, _ = open_zarr_image(path)
    if node.ndim == 3:
        if z is None:
            raise file_error(path, f"expected a 2D grayscale {what}, got shape {node.shape}; pass --z to choose a slice")
        if not 0 <= z < node.shape[0]:
            raise file_error(path, f"--z {z} is outside the stack's {node.shape[0]} slices")
        arr = np.asarray(node[z])
    elif node.ndim == 2:
        if z not in (None, 0):
            raise file_error(path, f"is a 2D {what}; --z {z} does not apply")
        arr = np.asarray(node[:])
    else:
        raise file_error(path, f"expected a 2D grayscale {what}, got shape {node.shape}")
    return check_image(arr, path), px


def read_mask(path, shape, *, z=None, what="label mask"):
    """A mask TIFF (tissue, truth, ROI) that must match the slice's ``shape``."""
    mask, _ = read_tiff(path, z=z, what=what)
    if mask.shape != tuple(shape):
        raise file_error(path, f"{what} shape {mask.shape} differs from the slice's {tuple(shape)}")
    return mask


def _read_series(path, index=None):
    """(array, axes, pixel size or None) of one series of the TIFF (the only one, or ``index``), or the one-line error."""
    import tifffile

    if path.is_dir():
        raise file_error(path, "is a directory, not a TIFF file")
    if not path.is_file():
        raise file_error(path, "no such file")
    if path.stat().st_size == 0:
        raise file_error(path, "empty file (0 bytes), not a TIFF")
    try:
        with tifffile.TiffFile(path) as tif:
            series = _pick_series(path, tif.series, index)
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


def check_not_input(targets, inputs):
    """Raise the one-line error if an output path resolves to one of the command's input files."""
    ins = {Path(p).resolve(): p for p in inputs if p is not None and isinstance(p, (str, Path)) and Path(p).exists()}
    for target in targets:
        if Path(target).resolve() in ins:
            raise file_error(target, "is an input of this command; refusing to overwrite it (choose another -o)")


def first_line(exc):
    """The first line of an exception's message (at most 160 characters), for one-line errors."""
    text = str(exc).strip().splitlines()
    return text[0][:160] if text else "unknown error"


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
    parent = target.parent if str(target.parent) else Path(".")
    suffix = "".join(target.suffixes)
    if is_dir:
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=parent))
    else:
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".tmp{suffix}", dir=parent)
        os.close(fd)
        tmp = Path(name)
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
        tifffile.imwrite(tmp, data, compression="zlib", **_ome_options(data.ndim, pixel_size_um, channel_names))


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
