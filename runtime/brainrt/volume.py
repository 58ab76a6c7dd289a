"""Volumes: lazy stack readers and the volume plan (which slices, which row bands, how).

A volume is read one slice at a time, never whole: :func:`open_volume` returns a small
picklable :class:`VolumeSource` (paths and geometry only) whose :meth:`~VolumeSource.read`
opens the file and reads one z; a Dask worker calls it itself, so no pixels travel
through the client. Three kinds of input:

- a 3D TIFF stack (multi-page, ImageJ or OME), read through tifffile's zarr view of its
  first series (one page per read, contiguous ImageJ stacks included);
- a folder of 2D TIFFs, one per z, in natural order (``s2.tif`` before ``s10.tif``);
- a zarr array, or an OME-Zarr image (its full-resolution level), by local path or an
  fsspec URL where the filesystem package is installed.

:func:`make_volume_plan` checks everything once (like :func:`brainrt.plan.make_plan` for
a slice) and returns the frozen :class:`VolumePlan`: the slices, the grid, the row bands
(the unit of work: one task per (z, band)) and the per-slice plan options.
"""

from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import BrainrtError, check_float, check_positive_int, file_error, param_error
from .geometry import grid_shape

TIFF_SUFFIXES = (".tif", ".tiff")

log = logging.getLogger("brainrt")


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
        """Slice ``z`` as a 2D array (reads only that slice)."""
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
    """Whether ``path`` with ``z`` is a volume job: ``z`` a range or "all", a folder of TIFFs,
    or a zarr that is not a saved feature grid (which has a ``features`` array)."""
    p = str(path).rstrip("/")
    if isinstance(z, str) and not z.strip().lstrip("-").isdigit():
        return True
    if "://" in p:
        return True
    if p.endswith(".zarr") or Path(p).is_dir():
        return not (Path(p) / "features").exists() and not _is_2d_zarr(p)
    return False


def _is_2d_zarr(path):
    """Whether ``path`` is a zarr array or OME-Zarr image of one slice (read as a slice, not a volume)."""
    from .io import is_zarr_path, open_zarr_image

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

    from .io import _first_line, _pixel_size

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            shape, dtype, axes = tuple(series.shape), series.dtype, series.axes
            px = _pixel_size(tif)
            spacing = (tif.imagej_metadata or {}).get("spacing")
            if tif.is_ome and tif.ome_metadata:
                m = re.search(r'PhysicalSizeZ="([0-9.eE+-]+)"', tif.ome_metadata)
                spacing = float(m.group(1)) if m else spacing
    except Exception as exc:  # tifffile raises many types for broken files
        raise file_error(path, f"cannot read as TIFF ({type(exc).__name__}: {_first_line(exc)})") from None
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
    from .io import _pixel_size

    with tifffile.TiffFile(files[0]) as tif:
        page, px = tif.series[0], _pixel_size(tif)
        shape, dtype = tuple(page.shape), page.dtype
    if len(shape) != 2:
        raise file_error(files[0], f"expected a 2D grayscale slice in the folder {path}, got shape {shape}")
    return VolumeSource("folder", str(path), (len(files),) + shape, np.dtype(dtype).str, px)


def _open_zarr_array(path, array=""):
    import zarr

    node = zarr.open(path, mode="r")
    return node[array] if array else node


def _open_zarr_source(path):
    from .io import open_zarr_image

    node, array, px, dz = open_zarr_image(path)
    shape = tuple(node.shape)
    if len(shape) != 3:
        raise file_error(path, f"expected a 3D (Z, Y, X) array, got shape {shape}")
    return VolumeSource("zarr", str(path), shape, np.dtype(node.dtype).str, px, dz, array=array)


def parse_z(z, n_slices, owner="classify"):
    """The slice indices of ``z``: an int, "a:b" (Python range, either end optional), "all" or None (all)."""
    if z is None or (isinstance(z, str) and z.strip() == "all"):
        return tuple(range(n_slices))
    try:
        if isinstance(z, str) and ":" in z:
            a, b = (s.strip() for s in z.split(":", 1))
            zs = tuple(range(n_slices))[slice(int(a) if a else None, int(b) if b else None)]
        else:
            zi = int(z)
            if not 0 <= zi < n_slices:
                raise ValueError
            zs = (zi,)
    except ValueError:
        raise param_error("z", owner, f"an index in 0..{n_slices - 1}, a range 'a:b' or 'all'", z) from None
    if not zs:
        raise param_error("z", owner, f"a non-empty range of the stack's {n_slices} slices", z)
    return zs


@dataclass(frozen=True)
class VolumePlan:
    """A checked volume job; everything a worker needs to redo any block (picklable, small).

    ``task`` is "featurize" or "classify"; ``zs`` the slices; ``bands`` the grid row ranges
    (one task per (z, band)); ``slice_options`` the keyword arguments of
    :func:`brainrt.plan.make_plan` for each slice; ``model`` the bundle folder and
    ``model_hash`` its manifest's sha256 (the workers' bundle cache key); ``sigma_cells`` and
    ``space`` the in-plane smoothing of classify.
    """

    source: VolumeSource
    task: str
    zs: tuple
    grid: tuple
    bands: tuple
    stride: int
    method: str
    pixel_size_um: float
    z_spacing_um: float
    model: str
    model_hash: str
    model_id: str
    class_names: tuple
    class_codes: tuple
    n_features: int
    head: str | None = None
    sigma_cells: float = 0.0
    space: str = "log"
    threads: int = 1
    slice_options: dict = field(default_factory=dict)
    z_sigma: float = 0.0
    device: str = "auto"

    def fingerprint(self) -> dict:
        """What makes two runs' outputs the same (a resume must match it exactly)."""
        s = self.source
        return {"source": s.path, "kind": s.kind, "shape": list(s.shape), "task": self.task, "zs": list(self.zs),
                **{k: v for k, v in sorted(self.slice_options.items())}, "model_hash": self.model_hash,
                "head": self.head, "sigma_cells": self.sigma_cells, "space": self.space, "z_sigma": self.z_sigma,
                "z_spacing_um": self.z_spacing_um, "bands": [list(b) for b in self.bands]}

    @property
    def n_blocks(self) -> int:
        return len(self.zs) * len(self.bands)


def make_volume_plan(source, bundle, *, task="classify", z="all", stride=16, method="auto", tissue=None,
                     min_tissue=0.5, threshold=None, pixel_size_um=None, z_spacing_um=None, batch_size=256,
                     standardize=True, head=None, smooth=None, band_rows=None, threads=1, precision=None, series=None,
                     smooth_z=0.0, device="auto"):  # long: the volume's input edge, one check per option in one place
    """Check a volume job and return its :class:`VolumePlan`.

    ``source`` is a path (see :func:`open_volume`) or a :class:`VolumeSource`; ``tissue``
    is None (Otsu per slice), "otsu" or "all" (a mask volume is not supported yet);
    ``band_rows`` is the grid rows per task (default: the engine's dense tile height, so a
    band costs no extra halo); ``smooth_z`` is the sigma in micrometres of the smoothing of
    class probabilities across slices (0: off), after the in-plane ``smooth``; ``device`` where the
    workers run the network (:func:`brainrt.bundle.providers`). Other options as in :func:`brainrt.featurize` and
    :func:`brainrt.classify`.
    """
    from .api import _smoothing
    from .bundle import DEVICES, MANIFEST, sha256_file
    from .engine import dense_geometry
    from .heads import Classifier
    from .plan import DEFAULT_PIXEL_SIZE_UM, _resolve_method

    from . import plan as plan_module

    owner = f"{task} (volume)"
    if task not in ("featurize", "classify"):
        raise param_error("task", owner, "'featurize' or 'classify'", task)
    if device not in DEVICES:
        raise param_error("device", owner, f"one of {DEVICES}", device)
    precision = bundle.check_precision(precision or plan_module.DEFAULT_PRECISION, owner)
    if series not in (None, 0):
        raise param_error("series", owner, "None for a volume (the first series is read)", series)
    src = source if isinstance(source, VolumeSource) else open_volume(source)
    if tissue not in (None, "otsu", "all"):
        raise param_error("tissue", owner, "'otsu' or 'all' for a volume (a mask volume is not supported)", tissue)
    stride = check_positive_int(stride, "stride", owner)
    nz, h, w = src.shape
    if min(h, w) < bundle.patch_size:
        raise file_error(src.path, f"slices of {h} x {w} px are smaller than one {bundle.patch_size} px patch")
    zs = parse_z(z, nz, owner)
    method = _resolve_method(method, stride, bundle.dense_strides, owner)
    grid = grid_shape((h, w), stride)
    if band_rows is None:  # the dense path's tile height (no extra halo), else 64 rows
        band_rows = 64
        if method == "dense":
            q, out_side = dense_geometry(stride, bundle.predictor("dense", stride=stride))
            band_rows = out_side // q
    band_rows = check_positive_int(band_rows, "band_rows", owner)
    bands = tuple((r, min(grid[0], r + band_rows)) for r in range(0, grid[0], band_rows))
    px = float(pixel_size_um or src.pixel_size_um or DEFAULT_PIXEL_SIZE_UM)
    dz = float(z_spacing_um or src.z_spacing_um or px)
    sigma, space = 0.0, "log"
    smooth_z = check_float(smooth_z or 0.0, "smooth_z", owner, low=0.0, high=1e6)
    if smooth_z and task != "classify":
        raise param_error("smooth_z", owner, "0 for featurize", smooth_z)
    if task == "classify":
        clf = Classifier.of(bundle, head)
        sigma, space = _smoothing(bundle, clf, smooth, px, stride)
        if not clf.proba:
            raise BrainrtError(f"head {head!r} gives no class probabilities; a volume needs one that does")
    opts = dict(stride=stride, method=method, tissue=tissue, min_tissue=float(min_tissue),
                threshold=None if threshold is None else float(threshold), pixel_size_um=px,
                batch_size=check_positive_int(batch_size, "batch_size", owner), standardize=bool(standardize),
                precision=precision)
    return VolumePlan(src, task, zs, grid, bands, stride, method, px, dz, str(Path(bundle.path).resolve()),
                      sha256_file(Path(bundle.path) / MANIFEST), bundle.model_id, tuple(bundle.class_names),
                      tuple(bundle.class_codes), bundle.n_features, head, float(sigma), space,
                      check_positive_int(threads, "threads", owner), opts, smooth_z / dz, device)
