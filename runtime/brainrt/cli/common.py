"""What the commands share: one start and run of every command's job (:func:`run_command`: the job decided
by :func:`brainrt.job.make_job`, the output's checks and the finished-output rule before any work), and the
grid options as the plan's keyword arguments."""

from __future__ import annotations

from pathlib import Path

import click

from ..bundle.load import Bundle, default_model
from ..job import make_job
from ..model.seal import MANIFEST, sha256_file
from ..outputs.finished import COMPLETE
from .options import command_record, show_progress


def run_command(task, source, model, threads, out, overwrite, kw, *, inputs=(), **options):
    """Every command: its job (:func:`~brainrt.job.make_job`: one slice or a volume, the options that do not
    apply refused), its output (``out``, else SOURCE's name with the job's suffix), the output's checks and the
    finished-output rule (:func:`prepare`; ``inputs``: the command's input files besides SOURCE and the tissue
    mask), then the job's run and what it says. ``kw``: the grid options; ``options``: the task's."""
    job = make_job(task, source, z=kw["z"], plan=plan_options(**kw), threads=threads, device=kw["device"], **options)
    out = out or job.default_out()
    bundle, rec = prepare(out, model, threads, job, inputs=(source, *inputs, kw["tissue_mask"]), overwrite=overwrite,
                          device=kw["device"])
    if bundle is None:
        return
    for line in job.run(bundle, out, rec, progress=show_progress(), overwrite=overwrite):
        click.echo(line)


def plan_options(tissue_mask, all_cells, pixel_size, device="auto", z=None, **kw):
    """The grid options as keyword arguments of :func:`brainrt.make_plan` (``z`` is the job's)."""
    return dict(kw, tissue=tissue_mask or ("all" if all_cells else None), pixel_size_um=pixel_size)


def prepare(out, model, threads, job, *, inputs=(), overwrite=False, device="auto"):
    """Fail on an unwritable output path, or one that is an input, before any work (and before a
    progress bar); load the bundle; apply the finished-output rule (:mod:`brainrt.outputs.finished`) to the job's
    output store (:mod:`brainrt.outputs`: a zarr folder, or an OME-TIFF set) when its record is the command's.

    Returns ``(bundle, run record)``, or ``(None, None)`` when ``out`` is already finished by the same
    command and arguments (said on stdout).
    """
    ctx = click.get_current_context()
    store = job.store(out)
    store.check(inputs=inputs, named=(ctx.info_name, job.output))
    model = Path(model or default_model())
    if not (job.records and (model / MANIFEST).is_file()):  # no record, or a bundle that will not load: say why first
        return Bundle.load(model, threads=threads, device=device), None
    rec = command_record(ctx, sha256_file(model / MANIFEST))
    if store.finished(rec, overwrite=overwrite):
        click.echo(COMPLETE.format(out))
        return None, None
    return Bundle.load(model, threads=threads, device=device), rec
