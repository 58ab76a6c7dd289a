"""Volume blocks: the tasks a worker runs, the output store's layout, and their completion records.

Everything that runs inside a task lives here, so a worker process needs only this module:

- **the worker cache**: the bundle, loaded and verified once per process (:func:`worker_bundle`);
- **the tasks** (their graph is data, :func:`brainrt.volumes.graph.task_graph`; the
  executors of :mod:`brainrt.volumes.executors` only schedule it): ``read`` (one per z, a
  data task) reads the slice once and makes its :class:`~brainrt.plan.Plan` (:func:`slice_plan`:
  the tissue grid and the intensity standardization need whole-slice statistics), which the
  executor hands to the slice's blocks and drops after them, so the volume is read once
  whatever the band height (a band plus its halo would be the footprint's 512 px more);
  a block (z, row band) runs the engine's loop on it into a :class:`BandSink` (features,
  or a head's raw probabilities, into the band's own chunks: no two tasks share a chunk);
  ``finish`` (classify, one per z,
  after its bands) smooths in the plane through :class:`~brainrt.smooth.RowSmoother` and
  writes the label pyramid; ``zsmooth`` (one per z, after the finishes within its
  kernel's reach) smooths across slices (:func:`~brainrt.smooth.smooth_across`);
- **the store**: its layout (OME-Zarr for classify, a zarr group for featurize;
  :func:`create_store`), assembled under ``.NAME.partial`` with the run record of
  :mod:`brainrt.finished` (the one a finished output keeps) and one completion record per
  task written after its data (:func:`execute`); a rerun skips recorded tasks (resume), a
  rerun with other arguments is refused, and the folder is renamed into place when every
  task is done (:func:`finalize`); a finished output is left alone (:func:`is_complete`).
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import numpy as np

from ..bundle import MANIFEST, Bundle, sha256_file
from ..engine import run
from ..errors import BrainrtError, file_error
from ..finished import FOLDER_RECORD, differences, is_finished, read_record, same_run, write_record
from ..geometry import upsample
from ..heads import OFF_TISSUE, Classifier
from ..grid import FEATURE_ARRAYS, FEATURES, TISSUE, create_feature_store
from ..integrity import seal
from ..io import check_target
from ..ngff import create_level, image_attrs, label_image_attrs, labels_attrs
from ..plan import plan_of
from ..plots import area_colors
from ..sinks import ArraySink
from ..smooth import RowSmoother, radius, smooth_across
from ..sources import NGFF_FORMAT
from ..uncertainty import CHANNELS, margin_entropy

#: Folder of the completion records (``done/``) and the run record inside the store.
STATE = str(FOLDER_RECORD.parent)
#: Smallest side of the label pyramid's coarsest level (levels halve until below it), and most levels.
PYRAMID_MIN, PYRAMID_LEVELS = 64, 5
LABEL_CHUNK = 1024
#: Bytes of neighbouring slices' probabilities the z pass reads at a time.
Z_BYTES = 64 << 20

_BUNDLES: dict = {}
_LOCK = threading.Lock()


# --------------------------------------------------------------------------- per-process caches
def worker_bundle(vplan):
    """The plan's bundle, loaded and verified once per process (keyed by the manifest's sha256)."""
    with _LOCK:
        b = _BUNDLES.get(vplan.model_hash)
        if b is None:
            b = Bundle.load(vplan.model, threads=vplan.threads, device=vplan.device)
            if sha256_file(Path(vplan.model) / MANIFEST) != vplan.model_hash:
                raise file_error(vplan.model, "the bundle changed since the run was planned")
            _BUNDLES[vplan.model_hash] = b
        return b


def remember_bundle(vplan, bundle):
    """Use the loaded ``bundle`` for ``vplan``'s tasks in this process (the serial executor's)."""
    with _LOCK:
        _BUNDLES[vplan.model_hash] = bundle


def slice_plan(vplan, bundle, z):
    """The 2D plan of slice ``z`` (None for a slice without tissue): reads the slice."""
    image = vplan.source.read(z)
    if image.shape != tuple(vplan.source.shape[1:]):
        raise file_error(vplan.source.name, f"slice {z} has shape {image.shape}, not the stack's "
                                            f"{tuple(vplan.source.shape[1:])}")
    try:  # the options were checked once, by make_volume_plan
        return plan_of(image, bundle, owner=vplan.task, **vplan.slice_options)
    except BrainrtError as exc:
        if "no tissue found" not in str(exc):  # named by the stack and z (the slice itself is an in-memory image)
            raise BrainrtError(f"{vplan.source.name} z={z}: {str(exc).removeprefix('image: ')}") from None
        return None  # an empty slice (e.g. past the tissue's end): everything off tissue


# --------------------------------------------------------------------------- running a task
def block_name(z, band):
    """The completion record (and graph name) of block (z, band)."""
    return f"b{z}-{band[0]}"


def execute(vplan, store, task, *values):
    """Run ``task`` (a :class:`~brainrt.volumes.graph.Task`): a data task returns its value; another runs
    unless its completion record exists, with the ``values`` of its ``uses`` (first; then its deps'
    results, which it only waited for), and writes the record after the data. Returns 1 if it ran, 0 if
    it was done already."""
    if task.data:
        return task.fn(vplan, store, *task.args)
    if _record(store, task.name).exists():
        return 0
    task.fn(vplan, store, *task.args, *values[: len(task.uses)])
    _mark(store, task.name)
    return 1


def _record(store, name):
    return Path(store) / STATE / "done" / name


def _mark(store, name):
    p = _record(store, name)
    tmp = p.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text("")
    os.replace(tmp, p)  # the record appears whole, after the data


# --------------------------------------------------------------------------- the tasks
class BandSink(ArraySink):
    """The volume band writer: the band's features (featurize) or the head's raw probabilities (classify),
    written with the band's valid cells into slice position ``zi`` of the store by :meth:`close`."""

    def __init__(self, vplan, root, zi, band, valid, fn=None):
        r0, r1 = band
        depth = vplan.n_features if vplan.task == "featurize" else vplan.n_terms or len(vplan.class_names)
        super().__init__(np.zeros((r1 - r0, vplan.grid[1], depth), np.float32), r0=r0, fn=fn)
        names = (FEATURES, TISSUE) if vplan.task == "featurize" else ("scratch/probabilities", "scratch/valid")
        self.targets, self.zi, self.valid = [root[n] for n in names], zi, valid
        self.channels_first = vplan.task == "featurize"

    def close(self):
        r0, r1 = self.r0, self.r0 + len(self.out)
        if self.channels_first:
            self.targets[0][:, self.zi, r0:r1] = np.moveaxis(self.out, -1, 0)
        else:
            self.targets[0][self.zi, r0:r1] = self.out
        self.targets[1][self.zi, r0:r1] = self.valid.astype(self.targets[1].dtype)
        return self.out


def read_slice(vplan, store, z):
    """The plan of slice ``z`` for its blocks (one read); None, unread, when all its blocks are recorded."""
    if all(_record(store, block_name(z, band)).exists() for band in vplan.bands):
        return None
    return slice_plan(vplan, worker_bundle(vplan), z)


def run_block(vplan, store, z, band, plan):
    """Compute block (z, band) of ``plan`` (slice z's, from its read task) and write the band's chunks."""
    import zarr

    bundle = worker_bundle(vplan)
    root = zarr.open_group(str(store), mode="r+")
    fn = Classifier.of(bundle, vplan.head).fn if vplan.task == "classify" else None
    valid = plan.valid[band[0] : band[1]] if plan is not None else np.zeros((band[1] - band[0], vplan.grid[1]), bool)
    sink = BandSink(vplan, root, vplan.zs.index(z), band, valid, fn)
    if plan is None:  # no tissue: the band stays empty
        sink.close()
    else:
        run(plan, bundle.predictor_for(plan), sink, rows=band)


def finish_slice(vplan, store, z):  # long: one streamed pass (smooth, write, pyramid) kept readable in order
    """Smooth slice ``z``'s probabilities in the plane and write them and its label pyramid (classify)."""
    import zarr

    root = zarr.open_group(str(store), mode="r+")
    zi, (R, C) = vplan.zs.index(z), vplan.grid
    raw, valid = root["scratch/context" if vplan.context else "scratch/probabilities"], root["scratch/valid"]
    zsm = vplan.z_sigma > 0
    smoother = RowSmoother(vplan.sigma_cells, space=vplan.space, rows=R) if vplan.sigma_cells > 0 else None
    labels, done = np.full((R, C), -1, np.int16), 0
    v_all = np.asarray(valid[zi])

    def put(p):
        nonlocal done
        n = len(p)
        v = v_all[done : done + n]
        p = np.where(v[..., None], p, 0).astype(np.float32)
        if zsm:  # the z pass reads it, then writes the outputs
            root["scratch/planar"][zi, done : done + n] = p
        else:
            _write_probabilities(vplan, root, zi, done, p, v)
            labels[done : done + n] = np.where(v, p.argmax(-1), -1)
        done += n

    for r0, r1 in vplan.bands:
        p = np.asarray(raw[zi, r0:r1])
        if smoother is None:
            put(p)
        else:
            for s in smoother.push(p, v_all[r0:r1]):
                put(s)
    if smoother is not None:
        for s in smoother.flush():
            put(s)
    if not zsm:
        _write_labels(vplan, root, zi, labels)


def zsmooth_slice(vplan, store, z):
    """Smooth slice ``z``'s in-plane smoothed probabilities across neighbouring slices (Gaussian of
    ``vplan.z_sigma`` slices, normalized over tissue cells like in the plane) and write the outputs."""
    import zarr

    root = zarr.open_group(str(store), mode="r+")
    zi, (R, C), r = vplan.zs.index(z), vplan.grid, radius(vplan.z_sigma)
    lo, hi = max(0, zi - r), min(len(vplan.zs), zi + r + 1)
    planar, valid = root["scratch/planar"], root["scratch/valid"]
    labels = np.full((R, C), -1, np.int16)
    step = max(1, Z_BYTES // ((hi - lo) * C * len(vplan.class_names) * 4))  # rows per read: bounded memory
    for r0 in range(0, R, step):
        r1 = min(R, r0 + step)
        p, v = np.asarray(planar[lo:hi, r0:r1]), np.asarray(valid[lo:hi, r0:r1])
        out = smooth_across(p, v, vplan.z_sigma, zi - lo, space=vplan.space)
        _write_probabilities(vplan, root, zi, r0, out, v[zi - lo])
        labels[r0:r1] = np.where(v[zi - lo], out.argmax(-1), -1)
    _write_labels(vplan, root, zi, labels)


def _write_probabilities(vplan, root, zi, r0, p, valid):
    """Grid rows ``r0 ..`` of slice position ``zi``'s probabilities ``p`` (rows, cols, K), then their margin and
    entropy (:mod:`brainrt.uncertainty`; NaN where not ``valid``), into every level of the image (level ``l``
    keeps every ``2**l``-th row and column, as the label pyramid does: the cells' centres, so one translation
    places every level)."""
    n, p = len(p), np.concatenate([p, margin_entropy(p, valid)], -1)
    for level in range(_n_levels(vplan.source.shape[1:])):
        f = 2**level
        first = -(-r0 // f) * f  # the first row of this block that level ``l`` keeps
        if first < r0 + n:
            rows = p[first - r0 :: f, ::f]
            root[str(level)][:, zi, first // f : first // f + len(rows)] = np.moveaxis(rows, -1, 0)


def _write_labels(vplan, root, zi, labels):
    """The label pyramid of slice position ``zi`` from its grid labels (class indices, -1 off tissue)."""
    codes = np.asarray(list(vplan.class_codes) + [OFF_TISSUE], np.uint8)[labels]
    full = upsample(codes, vplan.stride, vplan.source.shape[1:])
    for level in range(_n_levels(vplan.source.shape[1:])):
        f = 2**level
        root[f"labels/areas/{level}"][zi] = full[::f, ::f]


def _n_levels(shape):
    n = 1
    while n < PYRAMID_LEVELS and min(shape) // 2**n >= PYRAMID_MIN:
        n += 1
    return n


# --------------------------------------------------------------------------- the store
def create_store(vplan, tmp):
    """The empty output (OME-Zarr for classify, a zarr group for featurize) with its metadata."""
    import zarr

    root = zarr.open_group(str(tmp), mode="w")
    Z, (R, C), F, K = len(vplan.zs), vplan.grid, vplan.n_features, len(vplan.class_names)
    band = vplan.bands[0][1] - vplan.bands[0][0]
    cc = min(C, 512)
    if vplan.task == "featurize":  # the OME-NGFF feature image (c, z, y, x) and its tissue labels (z, y, x)
        create_feature_store(root, (Z, R, C), F, (1, band, cc), {**_attrs(vplan)["brainrt"], "format": NGFF_FORMAT})
    else:
        T = vplan.n_terms or K  # a context head's terms, pooled by its context pass into scratch/context
        root.create_array("scratch/probabilities", shape=(Z, R, C, T), chunks=(1, band, cc, T), dtype="float32",
                          fill_value=0.0)
        if vplan.context:
            root.create_array("scratch/context", shape=(Z, R, C, K), chunks=(1, band, cc, K), dtype="float32",
                              fill_value=0.0)
        root.create_array("scratch/valid", shape=(Z, R, C), chunks=(1, band, cc), dtype="bool", fill_value=False)
        if vplan.z_sigma > 0:
            root.create_array("scratch/planar", shape=(Z, R, C, K), chunks=(1, band, cc, K), dtype="float32",
                              fill_value=0.0)
        _ome_metadata(vplan, root)
    (tmp / STATE / "done").mkdir(parents=True, exist_ok=True)
    write_record(tmp / FOLDER_RECORD, vplan.record())
    return root


def _attrs(vplan):
    return {"brainrt": {"task": vplan.task, "model_id": vplan.model_id, "stride": vplan.stride,
                        "zs": list(vplan.zs), "pixel_size_um": vplan.pixel_size_um,
                        "z_spacing_um": vplan.z_spacing_um, "source": vplan.source.name,
                        "image_shape": list(vplan.source.shape[1:]), "class_names": list(vplan.class_names)}}


def _ome_metadata(vplan, root):
    """The image: probabilities (c, z, y, x) at grid resolution, then their margin and entropy, with a pyramid of as many levels as the area
    labels' (z, y, x) at full resolution (:mod:`brainrt.ngff`; NGFF asks a label image for its image's levels)."""
    px, dz, s, (h, w) = vplan.pixel_size_um, vplan.z_spacing_um, vplan.stride, vplan.source.shape[1:]
    Z, (R, C), K, n = len(vplan.zs), vplan.grid, len(vplan.class_names) + len(CHANNELS), _n_levels((h, w))
    for level in range(n):
        f = 2**level
        r, c = -(-R // f), -(-C // f)
        create_level(root, str(level), "czyx", (K, Z, r, c), (1, 1, min(r, 1024), min(c, 1024)), "float32", 0.0)
    root.attrs.update(image_attrs("probabilities", "czyx", [(1.0, dz, px * s * 2**i, px * s * 2**i) for i in range(n)],
                                  translation=(0, 0, (s - 1) / 2 * px, (s - 1) / 2 * px),  # cell (i, j): pixels i*s ..
                                  channels=[*vplan.class_names, *CHANNELS], window=(0, 1)))
    root.attrs.update(_attrs(vplan))
    labels = root.require_group("labels")
    labels.attrs.update(labels_attrs(["areas"]))
    areas = labels.require_group("areas")
    for level in range(n):
        f = 2**level
        shape = (Z, -(-h // f), -(-w // f))
        create_level(areas, str(level), "zyx", shape, (1, min(shape[1], LABEL_CHUNK), min(shape[2], LABEL_CHUNK)),
                     "uint8", OFF_TISSUE)
    colors = area_colors(vplan.class_names)
    areas.attrs.update(label_image_attrs(
        "areas", "zyx", [(dz, px * 2**i, px * 2**i) for i in range(n)],
        values={**{int(c): nm for nm, c in zip(vplan.class_names, vplan.class_codes)}, OFF_TISSUE: "off tissue"},
        colors={**{int(c): [round(255 * v) for v in colors[i]] + [255] for i, c in enumerate(vplan.class_codes)},
                OFF_TISSUE: [0, 0, 0, 0]}))


def partial_path(out):
    """The folder a volume output is assembled in (kept by an interrupted run, for its resume)."""
    out = Path(out)
    return out.parent / f".{out.name}.partial"


def interrupted_line(out):
    """What an interrupted run of ``out`` says, once it has stopped: where its finished blocks are kept
    for the resume, or that no output was written (a partial store without a finished block is removed)."""
    tmp = partial_path(out)
    done = tmp / STATE / "done"
    if tmp.is_dir() and not (done.is_dir() and any(not p.name.endswith(".tmp") for p in done.iterdir())):
        shutil.rmtree(tmp, ignore_errors=True)
    if tmp.is_dir():
        return f"Interrupted; the finished blocks are kept in {tmp}: rerun the same command to resume"
    return "Interrupted; no output was written"


def is_complete(vplan, out, *, overwrite=False) -> bool:
    """The finished-output rule (:func:`brainrt.finished.is_finished`) for volume ``out``: True when it is
    finished by the same run (nothing to do); False when there is nothing (or ``overwrite``); else the refusal."""
    check_target(out, is_dir=True)
    return is_finished(out, vplan.record(), is_dir=True, overwrite=overwrite)


def open_partial(vplan, out, *, overwrite=False):
    """The partial store of ``out``: resumed when its run record is the same run's, else refused (a new one
    with ``overwrite``); a new one when there is none."""
    check_target(out, is_dir=True)
    tmp, new = partial_path(out), vplan.record()
    old = read_record(tmp, is_dir=True)
    if old is not None and same_run(old, new):
        return tmp, sum(1 for p in (tmp / STATE / "done").iterdir() if not p.name.endswith(".tmp"))
    if old is not None and not overwrite:
        raise file_error(out, f"an unfinished run with other arguments is in {tmp} ({differences(old, new)}); rerun "
                              "it with the same arguments to resume, --overwrite to start again, or delete that folder")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    create_store(vplan, tmp)
    return tmp, 0


def finalize(vplan, tmp, out):
    """Drop the scratch arrays and the records, and rename the finished store into place."""
    import zarr

    if vplan.task == "classify":
        root = zarr.open_group(str(tmp), mode="r+")
        del root["scratch"]
    shutil.rmtree(tmp / STATE / "done")  # the run record stays: a finished output of the same run is known
    if vplan.task == "featurize":
        seal(tmp, FEATURE_ARRAYS)  # chunk checksums (:mod:`brainrt.integrity`)
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
