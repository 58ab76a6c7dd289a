"""What the commands share: the output's checks and the finished-output rule before any work, the job
of a source (a slice's plan or a saved feature grid), and the volume path of featurize and classify."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import NamedTuple

import click

from .. import api
from ..bundle import MANIFEST, Bundle, default_model, sha256_file
from ..errors import BrainrtError
from ..finished import COMPLETE
from ..grid import FeatureGrid
from ..io import check_not_input
from ..outputs import TiffSet, ZarrStack
from ..sources import check_not_bundle, is_feature_grid
from ..volumes import process_volume
from .options import VOLUME_KIND, check_out_name, command_record, default_out, interrupted_status, output_kind, show_progress


def volume_command(task, source, model, threads, out, workers, scheduler, overwrite, kw, **task_kw):
    """A volume (--z a:b or all, a TIFF folder or a zarr stack): one Dask run into an OME-Zarr or zarr folder."""
    check_not_bundle(source)
    out = out or default_out(source, ".ome.zarr" if task == "classify" else ".features.zarr")
    bundle, _ = prepare(out, model, threads, is_dir=True, inputs=(source, kw.get("tissue_mask")), record=False,
                        device=kw["device"])
    opts = plan_options(**dict(kw, z=None))
    try:
        vplan, st = process_volume(source, bundle, out, task=task, workers=workers, scheduler=scheduler,
                                   progress=show_progress(), threads=threads or 1, device=kw["device"],
                                   overwrite=overwrite, **dict(opts, z=kw["z"] or "all"), **task_kw)
    except KeyboardInterrupt as exc:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # stopping now: a second Ctrl-C must not cut the exit short
        click.echo(ZarrStack(out).interrupted_line(), err=True)
        sys.exit(interrupted_status(exc))
    if st["complete"]:
        return click.echo(COMPLETE.format(out))
    click.echo(f"wrote {out}: {len(vplan.zs)} slices, grid {vplan.grid[0]} x {vplan.grid[1]}, {st['blocks']} blocks "
               f"({st['computed_blocks']} computed) in {st['seconds']:.1f} s ({st['blocks_per_s'] or 0:.2f} blocks/s)")


def plan_options(tissue_mask, all_cells, pixel_size, device="auto", **kw):
    """The grid options as keyword arguments of :func:`brainrt.make_plan`."""
    if isinstance(kw.get("z"), str):
        raise BrainrtError(f"--z {kw['z']} names several slices; only featurize and classify run volumes")
    return dict(kw, tissue=tissue_mask or ("all" if all_cells else None), pixel_size_um=pixel_size)


def prepare(out, model, threads, *, is_dir=False, inputs=(), overwrite=False, record=True, device="auto"):
    """Fail on an unwritable output path, or one that is an input, before any work (and before a
    progress bar); load the bundle; apply the finished-output rule (:mod:`brainrt.finished`) to the output's
    store (:mod:`brainrt.outputs`: a zarr folder, or an OME-TIFF set).

    Returns ``(bundle, run record)``, or ``(None, None)`` when ``out`` is already finished by the
    same command and arguments (said on stdout).
    """
    ctx = click.get_current_context()
    store = ZarrStack(out) if is_dir else TiffSet(out)
    check_not_input([out, *store.members], inputs)
    check_out_name(out, ctx.info_name, output_kind(ctx.info_name) if record else VOLUME_KIND)
    store.check()
    model = Path(model or default_model())
    if not (record and (model / MANIFEST).is_file()):  # no record, or a bundle that will not load: say why first
        return Bundle.load(model, threads=threads, device=device), None
    rec = command_record(ctx, sha256_file(model / MANIFEST))
    if store.finished(rec, overwrite=overwrite):
        click.echo(COMPLETE.format(out))
        return None, None
    return Bundle.load(model, threads=threads, device=device), rec


class Started(NamedTuple):
    """What a command has once started: its output, bundle, run record and job (:func:`start`)."""
    out: str
    bundle: Bundle
    record: dict | None
    job: object


def start(command, source, model, threads, out, overwrite, kw, *, inputs=()):
    """Every command's start on one slice: its output (``out``, else SOURCE's name with the command's suffix,
    :func:`~.options.output_kind`), the output's checks and the finished-output rule before any work
    (:func:`prepare`; ``inputs``: the command's input files besides SOURCE and the tissue mask), the bundle,
    and the job (:func:`job_of`, not yet checked). None when ``out`` is finished by the same command and
    arguments (said on stdout)."""
    suffixes, _, suffix = output_kind(command)
    out = out or default_out(source, suffix)
    bundle, rec = prepare(out, model, threads, is_dir=suffixes == (".zarr",), inputs=(source, *inputs, kw["tissue_mask"]),
                          overwrite=overwrite, device=kw["device"])
    if bundle is None:
        return None
    return Started(out, bundle, rec, job_of(source, bundle, kw, command))


def job_of(source, bundle, kw, owner):
    """What to compute, checked and not yet run: a saved feature grid (.zarr, opened lazily; a job of every
    command but featurize, which makes one) or a slice's :class:`~brainrt.plan.Plan`. Both know the slice's
    ``image_shape``, so masks are checked before any work."""
    if owner != "featurize" and is_feature_grid(source):
        return api.load_features(source, bundle=bundle, z=kw["z"])
    return api.make_plan(source, bundle, owner=owner, **plan_options(**kw))


def grid_and_image(job, bundle):
    """The feature grid of a :func:`job_of` (a slice featurized in memory, with its image; a saved grid, no image)."""
    if isinstance(job, FeatureGrid):
        return job, None
    return api.featurize_plan(job, bundle, progress=show_progress()), job.input_image
