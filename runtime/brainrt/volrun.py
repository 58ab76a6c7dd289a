"""Running a :class:`~brainrt.volume.VolumePlan`: blocks of (z, row band) on Dask or in-process.

The same two task functions run on a Dask worker and in the serial loop, so the two
give identical outputs:

1. :func:`run_block` (one per (z, band)): the worker opens the input itself and reads
   slice z (:meth:`VolumeSource.read`), builds the slice's :class:`~brainrt.plan.Plan`
   (tissue grid and intensity standardization need whole-slice statistics; they are
   computed from the whole slice inside the task and cached per worker process for the
   last two slices, so the bands of one slice on one worker pay once; a slice is tens of MB,
   its statistics well under a second against minutes of network time per band at stride 1),
   runs ``engine.blocks(plan, predictor, rows=band)`` plus the head, and writes the band
   into its own chunks of the output store (chunk rows = band rows: no two tasks share a
   chunk). ``classify`` writes raw probabilities to a scratch array; ``featurize`` writes
   the features.
2. :func:`finish_slice` (classify, one per z, after its bands): in-plane smoothing needs
   rows of the neighbouring bands, so it reads the slice's raw probabilities band by band
   through :class:`~brainrt.smooth.RowSmoother` (same result as the 2D path, bounded
   memory) and writes the smoothed probabilities and the full-resolution label pyramid.
3. :func:`zsmooth_slice` (classify with z-regularization, one per z, after the finish
   tasks of the slices within its kernel's reach): the in-plane smoothed probabilities
   of the neighbouring slices, Gaussian-weighted along z and normalized over tissue cells
   (separable: in-plane first, then across z), a band at a time; then the outputs.

Every task writes a completion record after its data; a rerun skips recorded tasks
(resume). The output is assembled under ``.NAME.partial`` beside the target, which holds
the run's fingerprint; a rerun with other arguments is refused, and the folder is renamed
into place when every task is done. The bundle is loaded once per worker process
(verified once, cached by its manifest's sha256).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import threading
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np

from .errors import BrainrtError, file_error

log = logging.getLogger("brainrt")

#: Folder of the completion records and the run's fingerprint inside the store.
STATE = ".brainrt"
#: Smallest side of the label pyramid's coarsest level (levels halve until below it), and most levels.
PYRAMID_MIN, PYRAMID_LEVELS = 64, 5
LABEL_CHUNK = 1024
#: Bytes of neighbouring slices' probabilities the z pass reads at a time.
Z_BYTES = 64 << 20

_BUNDLES: dict = {}
_SLICES: OrderedDict = OrderedDict()
_LOCK = threading.Lock()


# --------------------------------------------------------------------------- per-process caches
def worker_bundle(vplan):
    """The plan's bundle, loaded and verified once per process (keyed by the manifest's sha256)."""
    from .bundle import MANIFEST, Bundle, sha256_file

    with _LOCK:
        b = _BUNDLES.get(vplan.model_hash)
        if b is None:
            b = Bundle.load(vplan.model, threads=vplan.threads, device=vplan.device)
            if sha256_file(Path(vplan.model) / MANIFEST) != vplan.model_hash:
                raise file_error(vplan.model, "the bundle changed since the run was planned")
            _BUNDLES[vplan.model_hash] = b
        return b


def slice_plan(vplan, bundle, z):
    """The checked 2D plan of slice ``z`` (None for a slice without tissue); the last two are cached."""
    from .plan import make_plan

    key = (vplan.source, z, vplan.model_hash, tuple(sorted(vplan.slice_options.items())))
    with _LOCK:
        if key in _SLICES:
            _SLICES.move_to_end(key)
            return _SLICES[key]
    image = vplan.source.read(z)
    if image.shape != tuple(vplan.source.shape[1:]):
        raise file_error(vplan.source.name, f"slice {z} has shape {image.shape}, not the stack's "
                                            f"{tuple(vplan.source.shape[1:])}")
    try:
        plan = make_plan(image, bundle, owner=vplan.task, **vplan.slice_options)
    except BrainrtError as exc:
        if "no tissue found" not in str(exc):
            raise BrainrtError(f"{vplan.source.name} z={z}: {exc}") from None
        plan = None  # an empty slice (e.g. past the tissue's end): everything off tissue
    with _LOCK:
        _SLICES[key] = plan
        while len(_SLICES) > 2:
            _SLICES.popitem(last=False)
    return plan


# --------------------------------------------------------------------------- tasks
def _record(store, name):
    return Path(store) / STATE / "done" / name


def _mark(store, name):
    p = _record(store, name)
    tmp = p.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text("")
    os.replace(tmp, p)  # the record appears whole, after the data


def run_block(vplan, store, z, band, bundle=None):
    """Compute and write block (z, band) unless its completion record exists; returns 1 if computed."""
    import zarr

    name = f"b{z}-{band[0]}"
    if _record(store, name).exists():
        return 0
    bundle = bundle or worker_bundle(vplan)
    plan = slice_plan(vplan, bundle, z)
    zi, (r0, r1) = vplan.zs.index(z), band
    C = vplan.grid[1]
    root = zarr.open_group(str(store), mode="r+")
    if vplan.task == "featurize":
        out, target = np.zeros((r1 - r0, C, vplan.n_features), np.float32), root["features"]
    else:
        out, target = np.zeros((r1 - r0, C, len(vplan.class_names)), np.float32), root["scratch/probabilities"]
    valid = np.zeros((r1 - r0, C), bool)
    if plan is not None:
        from .engine import blocks
        from .heads import Classifier, apply_rows

        clf = Classifier.of(bundle, vplan.head) if vplan.task == "classify" else None
        for b in blocks(plan, bundle.predictor(plan.method, stride=plan.stride, precision=plan.precision), rows=band):
            rows = slice(b.r0 - r0, b.r1 - r0)
            if clf is None:
                out[rows] = b.features
            else:
                apply_rows(b.features, b.valid, clf.fn, out[rows])
        valid = plan.valid[r0:r1]
    target[zi, r0:r1] = out
    root["valid" if vplan.task == "featurize" else "scratch/valid"][zi, r0:r1] = valid
    _mark(store, name)
    return 1


def finish_slice(vplan, store, z, *_deps):  # long: one streamed pass (smooth, write, pyramid) kept readable in order
    """Smooth slice ``z``'s probabilities in the plane and write them and its label pyramid (classify)."""
    import zarr

    from .smooth import RowSmoother

    name = f"f{z}"
    if _record(store, name).exists():
        return 0
    root = zarr.open_group(str(store), mode="r+")
    zi, (R, C) = vplan.zs.index(z), vplan.grid
    raw, valid = root["scratch/probabilities"], root["scratch/valid"]
    probs, zsm = root["0"], vplan.z_sigma > 0
    smoother = RowSmoother(vplan.sigma_cells, space=vplan.space) if vplan.sigma_cells > 0 else None
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
            probs[:, zi, done : done + n] = np.moveaxis(p, -1, 0)
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
    _mark(store, name)
    return 1


def zsmooth_slice(vplan, store, z, *_deps):
    """Smooth slice ``z``'s in-plane smoothed probabilities across neighbouring slices (Gaussian of
    ``vplan.z_sigma`` slices, normalized over tissue cells like in the plane) and write the outputs."""
    import zarr

    from .smooth import _from_scores, _kernel, _to_scores, radius

    name = f"g{z}"
    if _record(store, name).exists():
        return 0
    root = zarr.open_group(str(store), mode="r+")
    zi, (R, C), r = vplan.zs.index(z), vplan.grid, radius(vplan.z_sigma)
    lo, hi = max(0, zi - r), min(len(vplan.zs), zi + r + 1)
    w = _kernel(vplan.z_sigma)[lo - zi + r : hi - zi + r]
    planar, valid, probs = root["scratch/planar"], root["scratch/valid"], root["0"]
    labels = np.full((R, C), -1, np.int16)
    step = max(1, Z_BYTES // ((hi - lo) * C * len(vplan.class_names) * 4))  # rows per read: bounded memory
    for r0 in range(0, R, step):
        r1 = min(R, r0 + step)
        p, v = np.asarray(planar[lo:hi, r0:r1]), np.asarray(valid[lo:hi, r0:r1])
        num = den = 0.0
        for j in range(hi - lo):  # same order of terms for every cell
            sj, dj = _to_scores(p[j], v[j], vplan.space)
            num, den = num + w[j] * sj, den + w[j] * dj
        out = _from_scores(num, den, v[zi - lo], vplan.space)
        probs[:, zi, r0:r1] = np.moveaxis(out, -1, 0)
        labels[r0:r1] = np.where(v[zi - lo], out.argmax(-1), -1)
    _write_labels(vplan, root, zi, labels)
    _mark(store, name)
    return 1


def _write_labels(vplan, root, zi, labels):
    """The label pyramid of slice position ``zi`` from its grid labels (class indices, -1 off tissue)."""
    from .geometry import upsample
    from .heads import OFF_TISSUE

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
def _create_store(vplan, tmp):
    """The empty output (OME-Zarr for classify, a zarr group for featurize) with its metadata."""
    import zarr

    root = zarr.open_group(str(tmp), mode="w")
    Z, (R, C), F, K = len(vplan.zs), vplan.grid, vplan.n_features, len(vplan.class_names)
    band = vplan.bands[0][1] - vplan.bands[0][0]
    cc = min(C, 512)
    if vplan.task == "featurize":
        from .integrity import compressors

        root.create_array("features", shape=(Z, R, C, F), chunks=(1, band, cc, F), dtype="float32", fill_value=0.0,
                          compressors=compressors())
        root.create_array("valid", shape=(Z, R, C), chunks=(1, band, cc), dtype="bool", fill_value=False,
                          compressors=compressors())
        root.attrs.update(_attrs(vplan))
    else:
        root.create_array("scratch/probabilities", shape=(Z, R, C, K), chunks=(1, band, cc, K), dtype="float32",
                          fill_value=0.0)
        root.create_array("scratch/valid", shape=(Z, R, C), chunks=(1, band, cc), dtype="bool", fill_value=False)
        if vplan.z_sigma > 0:
            root.create_array("scratch/planar", shape=(Z, R, C, K), chunks=(1, band, cc, K), dtype="float32",
                              fill_value=0.0)
        root.create_array("0", shape=(K, Z, R, C), chunks=(1, 1, min(R, 1024), min(C, 1024)), dtype="float32",
                          fill_value=0.0)
        _ome_metadata(vplan, root)
    (tmp / STATE / "done").mkdir(parents=True, exist_ok=True)
    (tmp / STATE / "run.json").write_text(json.dumps(vplan.fingerprint(), indent=1))
    return root


def _attrs(vplan):
    return {"brainrt": {"task": vplan.task, "model_id": vplan.model_id, "stride": vplan.stride,
                        "zs": list(vplan.zs), "pixel_size_um": vplan.pixel_size_um,
                        "z_spacing_um": vplan.z_spacing_um, "source": vplan.source.path,
                        "image_shape": list(vplan.source.shape[1:]), "class_names": list(vplan.class_names)}}


def _name_and_centre(root, class_names, half):
    """The probability image's channels named by class (omero) and shifted by half a grid cell (top-level
    translation after each level's scale: napari-ome-zarr applies one top-level transform)."""
    ome = dict(root.attrs["ome"]) if "ome" in root.attrs else None
    omero = {"channels": [{"label": n, "active": True, "window": {"start": 0, "end": 1, "min": 0, "max": 1}}
                          for n in class_names]}
    shift = [{"type": "translation", "translation": [0, 0, half, half]}]
    if ome is not None:
        ome["multiscales"] = [{**ome["multiscales"][0], "coordinateTransformations": shift}]
        root.attrs.update({"ome": {**ome, "omero": omero}})
    else:
        root.attrs.update({"omero": omero, "multiscales": [{**root.attrs["multiscales"][0],
                                                            "coordinateTransformations": shift}]})


def _ome_metadata(vplan, root):
    """Probabilities (c, z, y, x) at grid resolution as the image, the area labels (z, y, x) with a pyramid."""
    from ome_zarr.writer import write_label_metadata, write_multiscales_metadata

    from .heads import OFF_TISSUE
    from .plots import class_colors

    px, dz, s = vplan.pixel_size_um, vplan.z_spacing_um, vplan.stride
    um = "micrometer"
    half = (s - 1) / 2 * px  # cell (i, j) covers pixels i*s .. i*s + s - 1: its value sits at their centre
    write_multiscales_metadata(
        root, [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1.0, dz, px * s, px * s]}]}],
        axes=[{"name": "c", "type": "channel"}] + [{"name": a, "type": "space", "unit": um} for a in "zyx"],
        name="probabilities")
    _name_and_centre(root, vplan.class_names, half)
    root.attrs.update(_attrs(vplan))
    h, w = vplan.source.shape[1:]
    Z = len(vplan.zs)
    labels = root.require_group("labels/areas")
    datasets = []
    for level in range(_n_levels((h, w))):
        f = 2**level
        shape = (Z, -(-h // f), -(-w // f))
        labels.create_array(str(level), shape=shape, chunks=(1, min(shape[1], LABEL_CHUNK), min(shape[2], LABEL_CHUNK)),
                            dtype="uint8", fill_value=OFF_TISSUE)
        datasets.append({"path": str(level),
                         "coordinateTransformations": [{"type": "scale", "scale": [dz, px * f, px * f]}]})
    write_multiscales_metadata(labels, datasets, axes=[{"name": a, "type": "space", "unit": um} for a in "zyx"],
                               name="areas")
    colors = class_colors(len(vplan.class_names))
    write_label_metadata(
        root["labels"], "areas",
        colors=[{"label-value": int(c), "rgba": [int(round(255 * v)) for v in colors[i]] + [255]}
                for i, c in enumerate(vplan.class_codes)] + [{"label-value": OFF_TISSUE, "rgba": [0, 0, 0, 0]}],
        properties=[{"label-value": int(c), "name": n} for n, c in zip(vplan.class_names, vplan.class_codes)]
        + [{"label-value": OFF_TISSUE, "name": "off tissue"}], source={"image": "../../"})


def partial_path(out):
    """The folder a volume output is assembled in (kept by an interrupted run, for its resume)."""
    out = Path(out)
    return out.parent / f".{out.name}.partial"


def _open_partial(vplan, out):
    """The partial store of ``out``: resumed when its fingerprint matches, refused when it differs, else new."""
    from .io import check_target

    check_target(out, is_dir=True)
    tmp = partial_path(out)
    run = tmp / STATE / "run.json"
    if run.is_file():
        old = json.loads(run.read_text())
        new = json.loads(json.dumps(vplan.fingerprint()))
        if old != new:
            diff = ", ".join([f"{k} {_short(old.get(k))} vs {_short(new.get(k))}" for k in new
                              if old.get(k) != new.get(k)][:3])
            raise file_error(out, f"an unfinished run with other arguments is in {tmp} ({diff}); rerun it with "
                                  "the same arguments to resume, or delete that folder")
        return tmp, sum(1 for p in (tmp / STATE / "done").iterdir() if not p.name.endswith(".tmp"))
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    _create_store(vplan, tmp)
    return tmp, 0


def _short(value, n=40):
    text = repr(value)
    return text if len(text) <= n else text[: n - 3] + "..."


def _finalize(vplan, tmp, out):
    import zarr

    if vplan.task == "classify":
        root = zarr.open_group(str(tmp), mode="r+")
        del root["scratch"]
    shutil.rmtree(tmp / STATE)
    if vplan.task == "featurize":
        from .integrity import seal

        seal(tmp, ("features", "valid"))
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)


# --------------------------------------------------------------------------- executors
def run_volume(vplan, out, *, client=None, bundle=None, progress=False, on_task=None):
    """Run every block of ``vplan`` into the OME-Zarr (classify) or zarr (featurize) folder ``out``.

    ``client``: a ``dask.distributed.Client`` (None: run in this process with ``bundle``).
    Resumes an unfinished run of the same plan; ``on_task(n_done)`` is called after each task
    (tests use it to interrupt a run). Returns statistics (tasks, computed, skipped, seconds, blocks/s).
    """
    out = Path(out)
    tmp, already = _open_partial(vplan, out)
    t0 = time.perf_counter()
    if client is not None:
        log.info("dask dashboard: %s", client.dashboard_link)
    bar = _bar(vplan, progress)
    try:
        if client is None:
            computed = _run_serial(vplan, tmp, bundle or worker_bundle(vplan), bar, on_task)
        else:
            computed = _run_dask(vplan, tmp, client, bar, on_task)
    finally:
        if bar is not None:
            bar.close()
    _finalize(vplan, tmp, out)
    dt = time.perf_counter() - t0
    computed_blocks = computed[0]
    return {"blocks": vplan.n_blocks, "computed_blocks": computed_blocks, "skipped_records": already,
            "seconds": round(dt, 3), "blocks_per_s": round(computed_blocks / dt, 3) if dt else None}


def _bar(vplan, progress):
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=vplan.n_blocks, unit="block", desc=vplan.task, smoothing=0.1, mininterval=1.0)


def _tick(bar, on_task, counts, i):
    """One task done (``i``: 0 a block, 1 a slice task): the bar counts blocks; ``on_task`` gets the computed ones."""
    if bar is not None and i == 0:
        bar.update(1)
    if on_task is not None:
        on_task(sum(counts))


def _run_serial(vplan, tmp, bundle, bar, on_task):
    counts = [0, 0]  # blocks, slice tasks computed
    for z in vplan.zs:
        for band in vplan.bands:
            counts[0] += run_block(vplan, tmp, z, band, bundle)
            _tick(bar, on_task, counts, 0)
        if vplan.task == "classify":
            counts[1] += finish_slice(vplan, tmp, z)
            _tick(bar, on_task, counts, 1)
    if vplan.z_sigma > 0:
        for z in vplan.zs:
            counts[1] += zsmooth_slice(vplan, tmp, z)
            _tick(bar, on_task, counts, 1)
    return counts


def _run_dask(vplan, tmp, client, bar, on_task):
    """Submit one task per block (and per slice's finish); workers read, compute and write themselves."""
    from dask.distributed import as_completed

    import uuid

    futures, kind, run, finished = [], {}, uuid.uuid4().hex[:8], []
    for z in vplan.zs:
        fs = [client.submit(run_block, vplan, str(tmp), z, band, key=f"brainrt-block-z{z}-r{band[0]}-{run}", retries=2)
              for band in vplan.bands]
        futures += fs
        kind.update((f.key, 0) for f in fs)
        if vplan.task == "classify":
            f = client.submit(finish_slice, vplan, str(tmp), z, *fs, key=f"brainrt-finish-z{z}-{run}",
                              retries=2)
            futures.append(f)
            finished.append(f)
            kind[f.key] = 1
    if vplan.z_sigma > 0:
        from .smooth import radius

        r = radius(vplan.z_sigma)
        for i, z in enumerate(vplan.zs):
            f = client.submit(zsmooth_slice, vplan, str(tmp), z, *finished[max(0, i - r) : i + r + 1],
                              key=f"brainrt-zsmooth-z{z}-{run}", retries=2)
            futures.append(f)
            kind[f.key] = 1
    counts = [0, 0]
    try:
        for f in as_completed(futures):
            i = kind[f.key]
            counts[i] += f.result()
            _tick(bar, on_task, counts, i)
    except BaseException:
        client.cancel(futures)
        raise
    return counts


# --------------------------------------------------------------------------- one call
@contextlib.contextmanager
def dask_client(*, workers=None, scheduler=None):
    """A ``dask.distributed.Client``: of the scheduler at ``scheduler``, else of a local cluster of
    ``workers`` processes (default: one per core) with one thread each."""
    from dask.distributed import Client, LocalCluster

    logging.getLogger("distributed").setLevel(max(logging.WARNING, log.getEffectiveLevel()))
    logging.getLogger("distributed.nanny").setLevel(logging.ERROR)  # "still alive, killing" after an interrupt
    if scheduler:
        with Client(scheduler) as client:
            yield client
        return
    n = workers or os.cpu_count() or 1
    with LocalCluster(n_workers=int(n), threads_per_worker=1, processes=True, silence_logs=logging.ERROR) as cluster, \
            Client(cluster) as client:
        yield client


def process_volume(source, bundle, out, *, task="classify", client=None, workers=None, scheduler=None,
                   progress=False, **options):
    """Plan and run a volume into ``out`` (see :func:`make_volume_plan` for ``options``).

    ``client``: a ``dask.distributed.Client`` to run on; without one, a local cluster of
    ``workers`` processes or the scheduler at ``scheduler`` is used for the run.
    Returns ``(plan, statistics)``.
    """
    from .volume import make_volume_plan

    vplan = make_volume_plan(source, bundle, task=task, **options)
    if client is not None:
        return vplan, run_volume(vplan, out, client=client, progress=progress)
    with dask_client(workers=workers, scheduler=scheduler) as c:
        return vplan, run_volume(vplan, out, client=c, progress=progress)
