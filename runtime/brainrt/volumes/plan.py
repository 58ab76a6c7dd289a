"""The volume plan: one checked, frozen job for a whole stack (which slices, which row bands, how).

:func:`make_volume_plan` is the volume's input edge, the twin of
:func:`brainrt.engine.plan.make_plan` for a slice: its options are checked against the same
declarations (:mod:`brainrt.model.params`), with the same defaults, once, on the client;
the workers build each slice's :class:`~brainrt.engine.plan.Plan` from the checked options
without checking them again (:func:`brainrt.engine.plan.plan_of`). The band height comes from
the bundle's dense geometry (no onnxruntime session on the client).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from ..engine.loop import dense_geometry
from ..engine.plan import check_stride, is_mask_dtype, is_tissue_mask, resolve_method
from ..engine.resample import pixel_size_of, resampling_of
from ..errors import file_error, param_error
from ..geometry import grid_shape
from ..heads import Classifier
from ..maps.smooth import choose
from ..model import params
from ..model.predictor import dense_window
from ..model.seal import MANIFEST, sha256_file
from ..outputs.finished import run_record
from ..sources import Source, open_volume

#: Grid rows per task on the per-patch path (the dense path uses its tile height).
PATCH_BAND_ROWS = 64
_D = params.default
log = logging.getLogger("brainrt")


def parse_z(z, n_slices, owner="classify", name="the stack"):
    """The slice indices of ``z``: an int, "a:b" (a Python range of indices, either end optional), "all" or
    None (all). An index or an end past the stack's slices is refused (one line naming the stack ``name``)."""
    if z is None or (isinstance(z, str) and z.strip() == "all"):
        return tuple(range(n_slices))
    try:
        ends = [s.strip() for s in z.split(":", 1)] if isinstance(z, str) and ":" in z else [str(z).strip()]
        a, b = (int(e) if e else None for e in (ends if len(ends) == 2 else ends * 2))
    except ValueError:
        raise param_error("z", owner, f"an index in 0..{n_slices - 1}, a range 'a:b' or 'all'", z) from None
    if len(ends) == 1:  # one index: in 0..n-1, the range a:a+1
        a, b, outside = a, a + 1, not 0 <= a < n_slices
    else:  # a range: both ends in 0..n
        outside = any(e is not None and not 0 <= e <= n_slices for e in (a, b))
    if outside:
        raise file_error(name, f"--z {z} is outside the stack's {n_slices} slices (z 0..{n_slices - 1})")
    zs = tuple(range(n_slices))[slice(a, b)]
    if not zs:
        raise param_error("z", owner, f"a non-empty range of the stack's {n_slices} slices", z)
    return zs


@dataclass(frozen=True)
class VolumePlan:
    """A checked volume job; everything a worker needs to redo any block (picklable, small).

    ``task`` is "featurize" or "classify"; ``zs`` the slices; ``bands`` the grid row ranges
    (one task per (z, band)); ``slice_options`` the keyword arguments of
    :func:`brainrt.engine.plan.make_plan` for each slice; ``model`` the bundle folder and
    ``model_hash`` its manifest's sha256 (the workers' bundle cache key); ``sigma_cells`` and
    ``space`` the in-plane smoothing of classify.
    """

    source: Source
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
    context: tuple = ()  # a context head's scales, (sigma in cells, sigma_z in slices) each
    n_terms: int = 0  # its terms per cell: the raw scratch's channels
    tissue_mask: Source | None = None  # a mask stack of the source's shape (nonzero = tissue), read per slice
    labels_only: bool = False  # a head without probabilities (classify): its labels are the map, not smoothed

    def record(self) -> dict:
        """The run record (:mod:`brainrt.outputs.finished`) of this job: what makes two runs' outputs the same, by
        option name (a finished output and a resume are checked against it)."""
        o, px = self.slice_options, self.pixel_size_um
        args = {"--z": f"{self.zs[0]}:{self.zs[-1] + 1}", "--stride": self.stride, "--method": self.method,
                "--precision": o["precision"], "--all-cells": o["tissue"] == "all", "--threshold": o["threshold"],
                "min_tissue": o["min_tissue"], "--pixel-size": px, "--standardize": o["standardize"],
                "--head": self.head, "--smooth": round(self.sigma_cells * self.stride * px, 6),
                "--smooth-z": round(self.z_sigma * self.z_spacing_um, 6), "z_spacing_um": self.z_spacing_um,
                "band_rows": self.bands[0][1] - self.bands[0][0]}
        if getattr(self.source, "series", 0):  # a chosen series of a TIFF (records of the others unchanged)
            args["--series"] = self.source.series
        inputs = {"SOURCE": self.source.name, **({"--tissue-mask": self.tissue_mask.name} if self.tissue_mask else {})}
        return run_record(self.task, args, inputs, self.model_hash)

    @property
    def n_blocks(self) -> int:
        return len(self.zs) * len(self.bands)


def make_volume_plan(source, bundle, *, task="classify", z="all", stride=_D("stride"), method=_D("method"),
                     tissue=None, min_tissue=_D("min_tissue"), threshold=None, pixel_size_um=None, z_spacing_um=None,
                     batch_size=_D("batch_size"), standardize=_D("standardize"), head=None, smooth=None, band_rows=None, threads=1,
                     precision=_D("precision"), series=None, smooth_z=_D("smooth_z"), device=_D("device")):
    """Check a volume job and return its :class:`VolumePlan`.

    ``source`` is a path (see :func:`brainrt.sources.open_volume`; ``series`` picks one of a multi-series TIFF) or a
    :class:`~brainrt.sources.Source`; ``tissue`` is None (Otsu per slice), "otsu", "all" or a mask stack of the
    source's shape (a path or a :class:`~brainrt.sources.Source`, any volume input; nonzero = tissue; a slice whose
    mask leaves no patch is off tissue); ``band_rows`` is the grid rows per task (default: the engine's dense
    tile height, so a band costs no extra halo); ``smooth_z`` is the sigma in micrometres of the smoothing of
    class probabilities across slices (0: off), after the in-plane ``smooth``; ``device`` where the workers
    run the network. Other options as in :func:`brainrt.featurize` and :func:`brainrt.classify`.
    """
    owner = f"{task} (volume)"
    o = params.check(owner, task=task, stride=stride, method=method, min_tissue=min_tissue, threshold=threshold,
                     pixel_size_um=pixel_size_um, z_spacing_um=z_spacing_um, batch_size=batch_size,
                     band_rows=band_rows, threads=threads, precision=precision, smooth_z=smooth_z, device=device,
                     standardize=standardize)
    precision = bundle.check_precision(o["precision"], owner)  # "auto" decided once for the whole run
    if o["smooth_z"] and task != "classify":
        raise param_error("smooth_z", owner, "0 for featurize", smooth_z)
    src = source if isinstance(source, Source) else open_volume(source, series)
    mask, tissue = _tissue_volume(tissue, src, owner), None if is_tissue_mask(tissue) else tissue
    (nz, h, w), stride = src.shape, o["stride"]
    if min(h, w) < bundle.patch_size:
        raise file_error(src.name, f"slices of {h} x {w} px are smaller than one {bundle.patch_size} px patch")
    check_stride(stride, (h, w), src.name)
    zs = parse_z(z, nz, owner, src.name)
    method = resolve_method(o["method"], stride, bundle.dense_strides, owner)
    px = _pixel_size(o["pixel_size_um"], src, bundle, stride, owner)
    dz = float(o["z_spacing_um"] or src.z_spacing_um or px)
    sigma, space, z_sigma, labels_only = _smoothing(bundle, task, head, smooth, o["smooth_z"] / dz, px, stride)
    opts = dict(stride=stride, method=method, tissue=tissue, min_tissue=o["min_tissue"], threshold=o["threshold"],
                pixel_size_um=px, batch_size=o["batch_size"], standardize=o["standardize"], precision=precision)
    grid = grid_shape((h, w), stride)
    bands = _bands(grid[0], o["band_rows"], bundle, method, stride)
    return VolumePlan(src, task, zs, grid, bands, stride, method, px, dz, *_model_fields(bundle), head, float(sigma),
                      space, o["threads"] or 1, opts, z_sigma, device,
                      *_context_fields(bundle, task, head, px * stride, dz), mask, labels_only)


def _pixel_size(given, src, bundle, stride, owner):
    """The slices' pixel size (implausible ones and strides that cannot follow a resampling refused here, once;
    each slice is resampled by :func:`brainrt.engine.plan.plan_of`)."""
    h, w = src.shape[1:]
    px = pixel_size_of(given, src.pixel_size_um, bundle.pixel_size_um, src.path, owner)
    if resampling_of((h, w), stride, px, bundle.pixel_size_um, src.path) is not None:
        log.info("%s: pixel size %g um, the bundle's is %g um: each slice is resampled to it for the network; "
                 "outputs on the input's pixel grid", src.path, px, bundle.pixel_size_um)
    return px


def _tissue_volume(tissue, src, owner):
    """The mask stack ``tissue`` (None: Otsu or all cells), opened and checked against the stack ``src``."""
    if not is_tissue_mask(tissue):
        return None
    if not isinstance(tissue, (str, Path, Source)):
        raise param_error("tissue", owner, "'otsu', 'all' or a mask stack (a path) for a volume", type(tissue).__name__)
    mask = tissue if isinstance(tissue, Source) else open_volume(tissue)
    if tuple(mask.shape) != tuple(src.shape):
        raise file_error(mask.name, f"a tissue mask of shape {tuple(mask.shape)} for a stack of shape {tuple(src.shape)}; "
                                    "it must have the stack's (z, y, x) shape")
    if not is_mask_dtype(mask.dtype):
        raise file_error(mask.name, f"a tissue mask holds integers or booleans (nonzero = tissue), not {mask.dtype}")
    return mask


def _context_fields(bundle, task, head, cell_um, dz):
    """A context head's scales in cells and slices (its ``sigma_z_um`` reaches across z), and its terms per cell."""
    head = Classifier.of(bundle, head).context if task == "classify" else None
    if head is None:
        return (), 0
    return tuple((sc.sigma_um / cell_um, sc.sigma_z_um / dz) for sc in head.scales), head.n_terms


def _model_fields(bundle):
    """The plan's bundle fields: folder, manifest sha256 (the workers' cache key), id, classes, features."""
    path = Path(bundle.path)
    return (str(path.resolve()), sha256_file(path / MANIFEST), bundle.model_id, tuple(bundle.class_names),
            tuple(bundle.class_codes), bundle.n_features)


def _smoothing(bundle, task, head, smooth, z_sigma, pixel_size_um, stride):
    """(sigma in cells, space, sigma across slices, labels only) of a classification: a head without probabilities
    is not smoothed, in the plane (:func:`~brainrt.maps.smooth.choose`, as for a slice) or across slices."""
    if task != "classify":
        return 0.0, "log", 0.0, False
    clf = Classifier.of(bundle, head)
    sigma, space = choose(bundle.manifest.smoothing, smooth, proba=clf.proba, pixel_size_um=pixel_size_um, stride=stride)
    if z_sigma > 0 and not clf.proba:  # asked for (0 by default)
        log.warning("--smooth-z: no smoothing across slices: this head gives no class probabilities")
    return sigma, space, z_sigma if clf.proba else 0.0, not clf.proba


def _bands(rows, band_rows, bundle, method, stride):
    """Grid row ranges of the tasks: ``band_rows`` each (default: the dense tile height, no extra halo)."""
    if band_rows is None:
        band_rows = PATCH_BAND_ROWS
        if method == "dense":
            q, out_side = dense_geometry(stride, dense_window(bundle, stride))
            band_rows = out_side // q
    return tuple((r, min(rows, r + band_rows)) for r in range(0, rows, band_rows))
