"""A command's job, decided in one place: its source read as one slice or as a volume, and run on the path
that follows from it.

- one slice (a plan of the slice, or a saved feature grid): the serial path, the engine over the slice's
  row blocks (:mod:`brainrt.api`) into the OME-TIFF set of the map or the zarr folder of the features;
- a volume (``--z a:b`` or ``all``, a folder of TIFFs, a zarr or HDF5 stack): the volume executors
  (:func:`brainrt.volumes.process_volume`) into one OME-Zarr or zarr folder.

:func:`make_job` decides which (:func:`brainrt.sources.is_volume_input`; featurize and classify run volumes,
cluster and subdivide slices) and refuses, before any work, the options that do not apply to what it decided.
The :class:`Job` then names its output (default name, what ``-o`` must look like, its store and whether the
command's run record is the one applied to it) and :meth:`Job.run` runs it, once the caller has checked that
output and loaded the bundle (the command line's start, :func:`brainrt.cli.common.run_command`); it returns
the lines it says.
"""

from __future__ import annotations

import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path

from . import api
from .bundle.scoring import score_lines
from .engine.grid import FeatureGrid
from .errors import BrainrtError
from .familiar import checked
from .heads import Classifier
from .outputs import (TiffSet, ZarrStack, classification_set, probabilities_path, uncertainty_path,
                      write_classification, write_clusters, write_subdivision)
from .outputs.finished import COMPLETE
from .sources import SUFFIXES, check_not_bundle, file_of, is_feature_grid, is_volume_input, read_mask
from .volumes import process_volume

#: What each task writes of one slice: (suffixes of ``-o``, what it is, the default output's suffix).
SLICE_OUTPUTS = {"featurize": ((".zarr",), "a zarr folder of features", ".features.zarr"),
                 "classify": ((".tif", ".tiff"), "an OME-TIFF label map and its side files", ".labels.ome.tif"),
                 "cluster": ((".tif", ".tiff"), "an OME-TIFF cluster map and its side files", ".clusters.ome.tif"),
                 "subdivide": ((".tif", ".tiff"), "an OME-TIFF map and its overlay", ".subdivide.ome.tif")}
#: What a volume's task writes (the same for both), and its default output's suffix by task.
VOLUME_OUTPUT = ((".zarr",), "a volume into one OME-Zarr / zarr folder", ".ome.zarr")
VOLUME_SUFFIXES = {"featurize": ".features.zarr", "classify": ".ome.zarr"}
#: The task options that score or draw one slice (refused for a volume), and those a volume's run takes.
SLICE_ONLY = ("truth", "uncertain_below", "preview_width")
VOLUME_TAKES = ("head", "smooth", "smooth_z")


@dataclass(frozen=True)
class Job:
    """One command's job, not yet run: ``task`` on ``source`` (slice ``z`` of a stack, or the volume's ``z``)."""

    task: str
    source: str
    z: object
    volume: bool
    plan: dict = field(default_factory=dict)  # the plan's keyword options (make_plan's, without z)
    options: dict = field(default_factory=dict)  # the task's (head, smooth, truth, area, k, ...)
    where: dict = field(default_factory=dict)  # where a volume runs: workers, scheduler, threads, device

    @property
    def output(self):
        """What ``-o`` must name: (its suffixes, what it is, the default output's suffix)."""
        return VOLUME_OUTPUT if self.volume else SLICE_OUTPUTS[self.task]

    @property
    def suffix(self):
        """The suffix of the default output (SOURCE's name with its own suffix replaced)."""
        return VOLUME_SUFFIXES[self.task] if self.volume else SLICE_OUTPUTS[self.task][2]

    def default_out(self):
        """The default output: SOURCE's name (the file, without an HDF5 dataset) with its image or zarr suffix
        replaced by the output's."""
        path = Path(file_of(str(self.source).rstrip("/")))
        name = next((path.name[: -len(ext)] for ext in SUFFIXES if path.name.endswith(ext)), path.name)
        return str(path.parent / f"{name}{self.suffix}")

    @property
    def records(self):
        """Whether the command's run record is the output's: a slice's is; a volume's is its plan's, applied by
        the volume executors."""
        return not self.volume

    def store(self, out):
        """The output store of ``out`` (:mod:`brainrt.outputs`): a zarr folder or an OME-TIFF set."""
        return ZarrStack(out) if self.output[0] == (".zarr",) else TiffSet(out)

    def run(self, bundle, out, record=None, *, progress=False, overwrite=False):
        """Run the job into ``out`` with ``bundle`` (``record``: the command's run record of a slice's output);
        the lines it says."""
        run = _volume if self.volume else SLICE_RUNS[self.task]
        return run(self, bundle, out, record, progress=progress, overwrite=overwrite)

    def slice_job(self, bundle):
        """What to compute of one slice, checked and not yet run: a saved feature grid (.zarr, opened lazily; a
        job of every task but featurize, which makes one) or the slice's :class:`~brainrt.engine.plan.Plan`. Both
        know the slice's ``image_shape``, so masks are checked before any work."""
        if self.task != "featurize" and is_feature_grid(self.source):
            return api.load_features(self.source, bundle=bundle, z=self.z)
        return api.make_plan(self.source, bundle, owner=self.task, z=self.z, **self.plan)


def make_job(task, source, *, z=None, plan=None, workers=None, scheduler=None, threads=None, device="auto",
             **options):
    """The :class:`Job` of ``task`` on ``source``: a volume or one slice, decided here; the options that do not
    apply to it refused in one line (``plan``: :func:`brainrt.make_plan`'s keyword options without ``z``)."""
    volume = task in VOLUME_SUFFIXES and is_volume_input(source, z)
    if volume:
        _no_slice_options(source, options)
    else:
        _slice_only(source, z, workers, scheduler, options)
    where = dict(workers=workers, scheduler=scheduler, threads=threads, device=device)
    return Job(task, source, z, volume, dict(plan or {}), options, where)


def _no_slice_options(source, options):
    """Refuse, for a volume, the options that score or draw one slice (``--truth``, ``--uncertain-below``, ...)."""
    used = [f"--{k.replace('_', '-')}" for k in SLICE_ONLY if options.get(k) is not None and options[k] is not False]
    if used:
        raise BrainrtError(f"{', '.join(used)}: scores or draws one slice; it does not apply to a volume")
    check_not_bundle(source)


def _slice_only(source, z, workers, scheduler, options):
    """Refuse the volume options for one slice (they would be ignored), and ``--held-out`` without ``--truth``."""
    if isinstance(z, str):
        raise BrainrtError(f"--z {z} names several slices; only featurize and classify run volumes")
    if (opt := "--workers" if workers is not None else "--scheduler" if scheduler is not None else None):
        raise BrainrtError(f"{source}: {opt} runs a volume on Dask (--z a:b or all, a TIFF folder or a zarr stack); "
                           "this is one slice")
    if options.get("smooth_z"):
        raise BrainrtError("--smooth-z smooths across slices; it applies to a volume (--z a:b or all)")
    if options.get("held_out") and not options.get("truth"):
        raise BrainrtError("--held-out scores against a truth mask; pass --truth MASK")


# --------------------------------------------------------------------------- a volume
def _volume(job, bundle, out, record, *, progress, overwrite):
    """The volume executors: one Dask run into an OME-Zarr (classify) or zarr folder (featurize)."""
    w, opts = job.where, {k: v for k, v in job.options.items() if k in VOLUME_TAKES}
    try:
        vplan, st = process_volume(job.source, bundle, out, task=job.task, workers=w["workers"],
                                   scheduler=w["scheduler"], progress=progress, threads=w["threads"] or 1,
                                   device=w["device"], overwrite=overwrite, **dict(job.plan, z=job.z or "all"), **opts)
    except KeyboardInterrupt as exc:
        if threading.current_thread() is threading.main_thread():  # stopping now: a second Ctrl-C must not
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # cut short the exit after the cluster's shutdown
        exc.args = (ZarrStack(out).interrupted_line(),)  # what the stop left, said by the caller
        raise
    if st["complete"]:
        return [COMPLETE.format(out)]
    lines = [f"wrote {out}: {len(vplan.zs)} slices, grid {vplan.grid[0]} x {vplan.grid[1]}, {st['blocks']} blocks "
             f"({st['computed_blocks']} computed) in {st['seconds']:.1f} s ({st['blocks_per_s'] or 0:.2f} blocks/s)"]
    if st["unlike"]:  # each was warned on as its first block was done; said again where the run ends
        zs = ", ".join(map(str, st["unlike"][:10])) + (", ..." if len(st["unlike"]) > 10 else "")
        lines.append(f"{len(st['unlike'])} of {len(vplan.zs)} slices look unlike the training tissue (z {zs}): their "
                     f"maps may be wrong; the scores are in the run record (input_check)")
    return lines


# --------------------------------------------------------------------------- one slice
def _featurize(job, bundle, out, record, *, progress, overwrite):
    plan = checked(job.slice_job(bundle), bundle, record)
    grid = api.featurize_plan(plan, bundle, out=out, progress=progress, record=record)
    st = grid.stats
    return [f"wrote {out}: grid {grid.shape[0]} x {grid.shape[1]} x {bundle.n_features}, {st['patches']} patches "
            f"by the {st['method']} path in {st['seconds']:.1f} s ({st['patches_per_s']:.0f} patches/s)"]


def _classify(job, bundle, out, record, *, progress, overwrite):
    o, z = job.options, job.z
    truth, held_out = o["truth"], o["held_out"]
    todo = job.slice_job(bundle)
    if truth:  # read and checked before any work (not held: read again, once, to score and draw)
        api.read_truth(truth, todo.image_shape, bundle, z=z, held_out=held_out)
    Classifier.of(bundle, o["head"])  # a bad head fails before any work
    checked(todo, bundle, record)
    with classification_set(out, record) as s:  # a slice's probabilities stream into it, never held whole
        result, image = _classified(todo, bundle, o["head"], o["smooth"], s, progress)
        mask = read_mask(truth, result.grid.image_shape, z=z, what="label mask") if truth else None
        metrics = api.score(result, mask, bundle, held_out=held_out, source=job.source, name=truth) if truth else None
        if metrics is not None and record is not None and "input_check" in record:
            metrics["input_check"] = record["input_check"]
        contours = mask if image is not None else None  # the truth's borders on the overlay
        del mask
        written = write_classification(out, result, image=image, metrics=metrics, truth=contours, into=s,
                                       uncertain_below=o["uncertain_below"], preview_width=o["preview_width"])
    msg = f"wrote {', '.join(written)}"
    if metrics:
        msg += (f"; pixel accuracy {metrics['pixel_accuracy']:.3f} over {metrics['n_pixels']} labeled pixels "
                f"({metrics['scored_on']})")
    return [msg, *(score_lines(metrics, truth, held_out) if metrics else ())]


def _classified(todo, bundle, head, smooth, s, progress):
    """(result, image) of a :meth:`Job.slice_job` (a slice's plan, featurized as it streams, or a saved grid):
    features never held whole (a stride-1 grid of a slice is GBs), the probabilities streamed into the output
    set ``s`` band by band."""
    streamed = {}  # the output set's files exist once asked for: a head without probabilities asks for none
    if Classifier.of(bundle, head).proba:
        streamed = dict(probabilities=s.path(probabilities_path(s.out)), uncertainty=s.path(uncertainty_path(s.out)))
    result = api.classify_plan(todo, bundle, head=head, smooth=smooth, progress=progress, **streamed)
    return result, getattr(todo, "input_image", None)


def _cluster(job, bundle, out, record, *, progress, overwrite):
    grid, image = _grid_and_image(checked(job.slice_job(bundle), bundle, record), bundle, progress)
    clusters, loglik = api.cluster(grid, bundle)
    written = write_clusters(out, clusters, loglik, grid, bundle.class_names, image=image, record=record)
    return [f"wrote {', '.join(written)}"]


def _subdivide(job, bundle, out, record, *, progress, overwrite):
    o = job.options
    area, roi, head = o["area"], o["roi"], o["head"]
    todo = job.slice_job(bundle)
    mask = None
    if roi is not None:  # read and checked before any work; the title names the file
        mask = read_mask(roi, todo.image_shape, z=job.z, what="ROI mask")
    elif area not in bundle.class_names:
        raise BrainrtError(f"unknown area {area!r}; the bundle's areas are {', '.join(bundle.class_names)}")
    else:
        Classifier.of(bundle, head)  # a bad head fails before the work
    grid, image = _grid_and_image(checked(todo, bundle, record), bundle, progress)
    region = api.region_cells(grid, bundle, area=area, roi=mask, head=head, z=job.z)
    sub = api.subdivide(grid, region=region, k=o["k"], interior=o["interior"])
    written = write_subdivision(out, sub, grid, image=image, title=f"{area or roi}: k={o['k']}", record=record)
    return [f"wrote {', '.join(written)}"]


def _grid_and_image(todo, bundle, progress):
    """The feature grid of a :meth:`Job.slice_job` (a slice featurized in memory, with its image; a saved grid,
    no image)."""
    if isinstance(todo, FeatureGrid):
        return todo, None
    return api.featurize_plan(todo, bundle, progress=progress), todo.input_image


#: How each task runs one slice.
SLICE_RUNS = {"featurize": _featurize, "classify": _classify, "cluster": _cluster, "subdivide": _subdivide}
