"""Volume blocks: the tasks a worker runs on a (z, row band) block, and how a task is run.

Everything a band task needs lives here and in :mod:`.finish` (the classify slice tasks), so a worker
process needs only these:

- **the worker cache**: the bundle, loaded and verified once per process (:func:`worker_bundle`);
- **the tasks** (their graph is data, :func:`brainrt.volumes.graph.task_graph`; the
  executors of :mod:`brainrt.volumes.executors` only schedule it): ``read`` (one per z, a
  data task) reads the slice once and makes its :class:`~brainrt.engine.plan.Plan` (:func:`slice_plan`:
  the tissue grid and the intensity standardization need whole-slice statistics), which the
  executor hands to the slice's blocks and drops after them, so the volume is read once
  whatever the band height (a band plus its halo would be the footprint's 512 px more), and checked
  against the training tissue (a note for the run, :func:`check_name`);
  a block (z, row band) runs the engine's loop on it into a :class:`BandSink` (features,
  or a head's raw probabilities, into the band's own chunks: no two tasks share a chunk);
- **running a task** (:func:`execute`): skipped when its completion record exists, recorded after
  its data (:mod:`brainrt.outputs.zarr_stack`: the stack's folder, records and resume; the arrays
  are :mod:`brainrt.volumes.layout`'s).
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from ..bundle.load import Bundle
from ..engine.grid import FEATURES, TISSUE
from ..engine.loop import run
from ..engine.plan import plan_of
from ..errors import BrainrtError, NoTissue, file_error
from ..familiar import input_check, warn_unlike
from ..heads import Classifier
from ..model.seal import MANIFEST, sha256_file
from ..outputs.sinks import ArraySink
from ..outputs.zarr_stack import is_done, mark_done, read_note, write_note

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
    opts = vplan.slice_options
    if vplan.tissue_mask is not None:  # its slice z, as a slice's mask array
        opts = {**opts, "tissue": vplan.tissue_mask.read(z)}
    try:  # the options were checked once, by make_volume_plan
        return plan_of(image, bundle, owner=vplan.task, **opts)
    except NoTissue:
        return None  # an empty slice (e.g. past the tissue's end, or outside the mask): everything off tissue
    except BrainrtError as exc:  # named by the stack and z (the slice itself is an in-memory image)
        raise BrainrtError(f"{vplan.source.name} z={z}: {str(exc).removeprefix('image: ')}") from None


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
    if is_done(store, task.name):
        return 0
    task.fn(vplan, store, *task.args, *values[: len(task.uses)])
    mark_done(store, task.name)
    return 1


# --------------------------------------------------------------------------- the tasks
class BandSink(ArraySink):
    """The volume band writer: the band's features (featurize) or what the head ``clf`` gives each cell (classify:
    its raw probabilities, a context head's terms, or the labels of a head without probabilities), written with
    the band's valid cells into slice position ``zi`` of the store by :meth:`close`."""

    def __init__(self, vplan, root, zi, band, valid, clf=None):
        r0, r1 = band
        if clf is None:
            super().__init__(np.zeros((r1 - r0, vplan.grid[1], vplan.n_features), np.float32), r0=r0)
        else:
            super().__init__(clf.empty((r1 - r0, vplan.grid[1]), terms=True), r0=r0, fn=clf.fn)
        names = ((FEATURES, TISSUE) if clf is None else
                 ("scratch/labels" if vplan.labels_only else "scratch/probabilities", "scratch/valid"))
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


def check_name(z):
    """The note of slice ``z``'s input check (:func:`read_slice`)."""
    return f"check-z{z}"


class SliceChecks:
    """What a run says of its slices' input checks (the notes of :func:`read_slice`): a warning naming the stack
    and z as soon as a block of a slice that looks unlike the training tissue is done (:meth:`seen`), and at the
    end their scores for the run record and the slices that look unlike (:meth:`summary`)."""

    def __init__(self, vplan, store):
        self.vplan, self.store, self.warned, self.unlike = vplan, store, set(), []

    def seen(self, z):
        """Warn once for slice ``z`` (a block of it is done) if its check says it looks unlike."""
        if z in self.warned:
            return
        self.warned.add(z)
        note = read_note(self.store, check_name(z))
        if note is not None and note["unlike"]:
            warn_unlike(f"{self.vplan.source.name} z={z}", note["why"])

    def summary(self):
        """``{"slices": {z: scores}, "unlike": [z, ...]}`` of every slice with tissue (``unlike`` kept as
        :attr:`unlike`)."""
        notes = {z: read_note(self.store, check_name(z)) for z in self.vplan.zs}
        slices = {str(z): {k: v for k, v in n.items() if k != "why"} for z, n in notes.items() if n is not None}
        self.unlike = [z for z, n in notes.items() if n is not None and n["unlike"]]
        return {"slices": slices, "unlike": self.unlike}


def read_slice(vplan, store, z):
    """The plan of slice ``z`` for its blocks (one read); None, unread, when all its blocks are recorded. The
    slice is checked against the training tissue as a slice of its own is (:func:`brainrt.familiar.input_check`:
    its gray values and texture, what a warning is given on), its scores and reasons left in a note for the run,
    before its first block. The feature deficit, logged and never warned on, is not computed: it runs the per-patch
    network on 128 cells, 2.1 s a slice against 4.1 s for the slice's whole stride-16 map (slice309)."""
    if all(is_done(store, block_name(z, band)) for band in vplan.bands):
        return None
    bundle = worker_bundle(vplan)
    plan = slice_plan(vplan, bundle, z)
    if plan is not None and read_note(store, check_name(z)) is None:
        scores, why = input_check(plan, bundle, features=False)  # the feature deficit: off (docstring)
        write_note(store, check_name(z), {**scores, "why": why})
    return plan


def run_block(vplan, store, z, band, plan):
    """Compute block (z, band) of ``plan`` (slice z's, from its read task) and write the band's chunks."""
    import zarr

    bundle = worker_bundle(vplan)
    root = zarr.open_group(str(store), mode="r+")
    clf = Classifier.of(bundle, vplan.head) if vplan.task == "classify" else None
    valid = plan.valid[band[0] : band[1]] if plan is not None else np.zeros((band[1] - band[0], vplan.grid[1]), bool)
    sink = BandSink(vplan, root, vplan.zs.index(z), band, valid, clf)
    if plan is None:  # no tissue: the band stays empty
        sink.close()
    else:
        run(plan, bundle.predictor_for(plan), sink, rows=band)
