"""The ``brainrt`` command line: thin click commands over the library.

Each command turns its paths into one library call and one writer call. Commands of
other packages (the trainer's ``train-and-export``) are registered under the entry-point
group ``brainrt.commands`` and imported only when invoked (or listed by ``--help``), so
the runtime never imports the trainer.
"""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path

import click

from . import api, params
from .bundle import MANIFEST, Bundle, default_model, sha256_file, verify_bundle
from .demo import run_demo
from .derive import check_fit_target, save_bundle
from .errors import BrainrtError
from .familiar import checked
from .finished import COMPLETE
from .fit import fit_heads
from .grid import FeatureGrid
from .heads import CLASSIFIER_HEADS, Classifier
from .io import check_not_input
from .scoring import score_lines
from .outputs import (TiffSet, ZarrStack, classification_set, probabilities_path, uncertainty_path,
                      write_classification, write_clusters, write_subdivision)
from .manifest import describe
from .options import (VOLUME_KIND, AreaOption, LabelsList, check_out_name, command_record, default_out, grid_options,
                      interrupted_status, model_option, one_line_errors, output_kind, show_progress, sigterm_as_interrupt,
                      slice_only, standardize_option, threads_option, volume_options)
from .sources import check_not_bundle, is_feature_grid, is_volume_input, read_mask
from .volumes import process_volume
from .zoo.command import export

log = logging.getLogger("brainrt")

#: Entry-point group of commands other packages add to ``brainrt``.
COMMAND_GROUP = "brainrt.commands"


def _plugins():
    """Name -> entry point of the commands registered by other packages."""
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=COMMAND_GROUP)}


class _Commands(click.Group):
    """This module's commands plus the registered ones, each loaded when first needed."""

    def list_commands(self, ctx):
        return sorted({*super().list_commands(ctx), *_plugins()})

    def get_command(self, ctx, name):
        cmd = super().get_command(ctx, name)
        if cmd is None and name in (plugins := _plugins()):
            cmd = plugins[name].load()
        return cmd

    def main(self, *args, standalone_mode=True, **kwargs):
        """Usage errors (a bad option value, a missing argument) as one line too, exit status 2."""
        with sigterm_as_interrupt():
            return self._main(*args, standalone_mode=standalone_mode, **kwargs)

    def _main(self, *args, standalone_mode=True, **kwargs):
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            super().main(*args, standalone_mode=False, **kwargs)
        except click.ClickException as exc:
            where = getattr(exc, "ctx", None)
            hint = f" (see '{where.command_path} --help')" if where is not None else ""
            click.echo(f"Error: {exc.format_message()}{hint}", err=True)
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(0)


@click.group(cls=_Commands)
@click.version_option(None, "--version", package_name="brainrt", message="brainrt %(version)s")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only errors.")
@click.option("--progress/--no-progress", default=None,
              help="Progress bars on stderr (default: only when stderr is a terminal).")
@click.pass_context
def main(ctx, verbose, quiet, progress):
    """brainrt: maps of brain architecture from micron-scale images with CNN features."""
    ctx.obj = {"progress": progress}
    level = logging.ERROR if quiet else logging.DEBUG if verbose > 1 else logging.INFO
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)


def _run_volume(task, source, model, threads, out, workers, scheduler, overwrite, kw, **task_kw):
    """A volume (--z a:b or all, a TIFF folder or a zarr stack): one Dask run into an OME-Zarr or zarr folder."""
    check_not_bundle(source)
    out = out or default_out(source, ".ome.zarr" if task == "classify" else ".features.zarr")
    bundle, _ = _prepare(out, model, threads, is_dir=True, inputs=(source, kw.get("tissue_mask")), record=False,
                         device=kw["device"])
    opts = _plan_options(**dict(kw, z=None))
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


def _plan_options(tissue_mask, all_cells, pixel_size, device="auto", **kw):
    """The grid options as keyword arguments of :func:`brainrt.make_plan`."""
    if isinstance(kw.get("z"), str):
        raise BrainrtError(f"--z {kw['z']} names several slices; only featurize and classify run volumes")
    return dict(kw, tissue=tissue_mask or ("all" if all_cells else None), pixel_size_um=pixel_size)


def _prepare(out, model, threads, *, is_dir=False, inputs=(), overwrite=False, record=True, device="auto"):
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




def _job(source, bundle, kw, owner):
    """What to compute, checked and not yet run: a saved feature grid (.zarr, opened lazily) or a slice's
    :class:`~brainrt.plan.Plan`. Both know the slice's ``image_shape``, so masks are checked before any work."""
    if is_feature_grid(source):
        return api.load_features(source, bundle=bundle, z=kw["z"])
    return api.make_plan(source, bundle, owner=owner, **_plan_options(**kw))


def _grid_and_image(job, bundle):
    """The feature grid of a :func:`_job` (a slice featurized in memory, with its image; a saved grid, no image)."""
    if isinstance(job, FeatureGrid):
        return job, None
    return api.featurize_plan(job, bundle, progress=show_progress()), job.input_image


# --------------------------------------------------------------------------- commands
@main.command()
@click.argument("slice_tif", type=click.Path())
@model_option
@grid_options
@click.option("-o", "--out", default=None, type=click.Path(), help="Output .zarr folder (default: SLICE.features.zarr).")
@volume_options
@one_line_errors
def featurize(slice_tif, model, threads, out, workers, scheduler, overwrite, **kw):
    """Features of every tissue patch of SLICE_TIF on a stride grid, saved as zarr.

    A volume (a 3D stack with --z a:b or all, a folder of TIFFs, a zarr stack) runs on Dask
    (--workers N local processes, or --scheduler ADDRESS) into one zarr, (z, rows, cols, 64).
    """
    if is_volume_input(slice_tif, kw["z"]):
        return _run_volume("featurize", slice_tif, model, threads, out, workers, scheduler, overwrite, kw)
    slice_only(slice_tif, workers, scheduler)
    out = out or default_out(slice_tif, ".features.zarr")
    bundle, rec = _prepare(out, model, threads, is_dir=True, inputs=(slice_tif, kw["tissue_mask"]),
                           overwrite=overwrite, device=kw["device"])
    if bundle is None:
        return
    plan = checked(api.make_plan(slice_tif, bundle, owner="featurize", **_plan_options(**kw)), bundle, rec)
    grid = api.featurize_plan(plan, bundle, out=out, progress=show_progress(), record=rec)
    st = grid.stats
    click.echo(f"wrote {out}: grid {grid.shape[0]} x {grid.shape[1]} x {bundle.n_features}, {st['patches']} patches "
               f"by the {st['method']} path in {st['seconds']:.1f} s ({st['patches_per_s']:.0f} patches/s)")


@main.command()
@click.argument("source", type=click.Path())
@model_option
@grid_options
@click.option("--head", default=None, help=f"Classifier head (default: the bundle's): {', '.join(CLASSIFIER_HEADS)}.")
@click.option("--smooth", type=float, default=None,
              help="Smooth class scores before the argmax, sigma in um (default: the bundle's, chosen on "
                   "validation; 0: off).")
@click.option("--truth", type=click.Path(), default=None, help="Label-mask TIFF to score against.")
@click.option("--held-out", is_flag=True,
              help="With --truth on the bundle's training slice: score only the test split it recorded.")
@click.option("--preview-width", type=click.IntRange(min=64), default=None,
              help="Overlay PNG width in pixels (default 3000; at most the slice's: full resolution).")
@click.option("--uncertain-below", type=click.FloatRange(0, 1), default=None,
              help="Hatch the overlay where the margin between the two likeliest areas is below this (README).")
@click.option("-o", "--out", default=None, type=click.Path(), help="Label map OME-TIFF (default: SOURCE.labels.ome.tif).")
@volume_options
@click.option("--smooth-z", type=float, default=0.0, show_default=True,
              help="Volumes: also smooth class scores across slices, sigma in um (0: off).")
@one_line_errors
def classify(source, model, threads, workers, scheduler, smooth_z, head, smooth, truth, held_out, preview_width,
             uncertain_below, out, overwrite, **kw):
    """Area map of SOURCE (a slice TIFF or a .zarr feature grid) in the class map's codes.

    Writes the label map at full resolution (OME-TIFF), per-class probabilities and their
    uncertainty (margin, entropy) at grid resolution (OME-TIFF, same physical scale), an overlay PNG and, with --truth,
    accuracy, confusion matrix and per-class F1 (JSON + PNG). A volume (a 3D stack with --z
    a:b or all, a TIFF folder, a zarr stack) runs on Dask into one OME-Zarr (-o OUT.ome.zarr).
    """
    if is_volume_input(source, kw["z"]):
        _no_slice_options(truth=truth, uncertain_below=uncertain_below, preview_width=preview_width)
        return _run_volume("classify", source, model, threads, out, workers, scheduler, overwrite, kw, head=head,
                           smooth=smooth, smooth_z=smooth_z)
    slice_only(source, workers, scheduler, smooth_z=smooth_z, held_out=held_out, truth=truth)
    out = out or default_out(source, ".labels.ome.tif")
    bundle, rec = _prepare(out, model, threads, inputs=(source, truth, kw["tissue_mask"]), overwrite=overwrite,
                           device=kw["device"])
    if bundle is None:
        return
    job = _job(source, bundle, kw, "classify")
    if truth:  # read and checked before any work (and read again to score, by name)
        api.read_truth(truth, job.image_shape, bundle, z=kw["z"], held_out=held_out)
    Classifier.of(bundle, head)  # a bad head fails before any work
    checked(job, bundle, rec)
    with classification_set(out, rec) as s:  # a slice's probabilities stream into it, never held whole
        result, image = _classified(job, bundle, head, smooth, s)
        metrics = api.score(result, truth, bundle, z=kw["z"], held_out=held_out, source=source) if truth else None
        if metrics is not None and rec is not None and "input_check" in rec:
            metrics["input_check"] = rec["input_check"]
        contours = read_mask(truth, result.grid.image_shape, z=kw["z"]) if truth and image is not None else None
        written = write_classification(out, result, image=image, metrics=metrics, truth=contours, into=s,
                                       uncertain_below=uncertain_below, preview_width=preview_width)
    msg = f"wrote {', '.join(written)}"
    if metrics:
        msg += (f"; pixel accuracy {metrics['pixel_accuracy']:.3f} over {metrics['n_pixels']} labeled pixels "
                f"({metrics['scored_on']})")
    click.echo(msg)
    for line in score_lines(metrics, truth, held_out) if metrics else ():
        click.echo(line)


def _no_slice_options(**given):
    """Refuse, for a volume, the options that score or draw one slice (``--truth``, ``--uncertain-below``, ...)."""
    used = [f"--{k.replace('_', '-')}" for k, v in given.items() if v is not None and v is not False]
    if used:
        raise BrainrtError(f"{', '.join(used)}: scores or draws one slice; it does not apply to a volume")


def _classified(job, bundle, head, smooth, s):
    """(result, image) of a :func:`_job`: a saved grid's in memory; a slice's streamed (features never held
    whole, a stride-1 grid of a slice is GBs), its probabilities into the output set ``s`` band by band."""
    if isinstance(job, FeatureGrid):
        return api.classify(job, bundle, head=head, smooth=smooth), None
    if not Classifier.of(bundle, head).proba:
        return api.classify_plan(job, bundle, head=head, smooth=smooth, progress=show_progress()), job.input_image
    return api.classify_plan(job, bundle, head=head, smooth=smooth, progress=show_progress(),
                             probabilities=s.path(probabilities_path(s.out)),
                             uncertainty=s.path(uncertainty_path(s.out))), job.input_image


@main.command()
@click.argument("source", type=click.Path())
@model_option
@grid_options
@click.option("-o", "--out", default=None, type=click.Path(), help="Cluster map OME-TIFF (default: SOURCE.clusters.ome.tif).")
@one_line_errors
def cluster(source, model, threads, out, overwrite, **kw):
    """GMM cluster map and, per area, a log-likelihood map (low = unlike that area; outliers)."""
    out = out or default_out(source, ".clusters.ome.tif")
    bundle, rec = _prepare(out, model, threads, inputs=(source, kw["tissue_mask"]), overwrite=overwrite,
                           device=kw["device"])
    if bundle is None:
        return
    grid, image = _grid_and_image(checked(_job(source, bundle, kw, "cluster"), bundle, rec), bundle)
    clusters, loglik = api.cluster(grid, bundle)
    written = write_clusters(out, clusters, loglik, grid, bundle.class_names, image=image, record=rec)
    click.echo(f"wrote {', '.join(written)}")


@main.command()
@click.argument("source", type=click.Path())
@model_option
@grid_options
@click.option("--area", cls=AreaOption, default=None, help="Sub-divide the cells classified as this area")
@click.option("--roi", type=click.Path(), default=None, help="Or a TIFF mask of the region (nonzero = inside).")
@click.option("-k", "--clusters", "k", type=click.IntRange(min=1), default=4, show_default=True,
              help="Number of sub-divisions (KMeans clusters) of the area or ROI.")
@click.option("--head", default=None, help="Classifier head used with --area.")
@click.option("--interior/--whole", default=True, show_default=True,
              help="Only cells whose patch lies inside the region (patches crossing its border cluster by the border).")
@click.option("-o", "--out", default=None, type=click.Path(), help="Sub-division OME-TIFF (default: SOURCE.subdivide.ome.tif).")
@one_line_errors
def subdivide(source, model, threads, area, roi, k, head, interior, out, overwrite, **kw):
    """PCA + KMeans of the features inside one area or ROI (e.g. cortical layers)."""
    if (area is None) == (roi is None):
        raise BrainrtError("give exactly one of --area NAME or --roi MASK")
    out = out or default_out(source, ".subdivide.ome.tif")
    bundle, rec = _prepare(out, model, threads, inputs=(source, roi, kw["tissue_mask"]), overwrite=overwrite,
                           device=kw["device"])
    if bundle is None:
        return
    job = _job(source, bundle, kw, "subdivide")
    if roi is not None:  # read and checked before any work
        roi = read_mask(roi, job.image_shape, z=kw["z"], what="ROI mask")
    elif area not in bundle.class_names:
        raise BrainrtError(f"unknown area {area!r}; the bundle's areas are {', '.join(bundle.class_names)}")
    else:
        Classifier.of(bundle, head)  # a bad head fails before the work
    grid, image = _grid_and_image(checked(job, bundle, rec), bundle)
    region = api.region_cells(grid, bundle, area=area, roi=roi, head=head, z=kw["z"])
    sub = api.subdivide(grid, region=region, k=k, interior=interior)
    written = write_subdivision(out, sub, grid, image=image, title=f"{area or roi}: k={k}", record=rec)
    click.echo(f"wrote {', '.join(written)}")


@main.command(cls=LabelsList)
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--labels", "strokes", multiple=True, required=True, type=click.Path(),
              help="Stroke images, one per IMAGE in order (0 = unlabeled, other values = class-map codes); "
                   "a stroke stack goes with an image stack (its slices that hold strokes are used).")
@model_option
@click.option("--class-map", default=None, type=click.Path(),
              help="JSON of the classes: {\"classes\": {\"name\": [codes]}, \"colors\": {\"name\": \"#rrggbb\"}} "
                   "(default: the parent bundle's).")
@click.option("--stride", type=click.IntRange(min=1), default=params.default("stride"), show_default=True,
              help="Grid step of the stroke cells in pixels.")
@click.option("--seed", default=0, show_default=True, help="Seed of the cross-validation folds.")
@click.option("--tissue-mask", type=click.Path(), default=None, help="TIFF mask of the tissue (2D images only).")
@click.option("--threshold", type=float, default=None, help="Tissue intensity threshold (default: Otsu).")
@click.option("--all-cells", is_flag=True, help="Every stroke cell counts as tissue.")
@threads_option
@standardize_option("Map each slice's tissue histogram onto the parent's training tissue (auto: only where "
                    "the pixel range demands it; match: always; off: never).")
@click.option("-o", "--out", required=True, type=click.Path(), help="The new bundle folder.")
@one_line_errors
def fit(images, strokes, model, class_map, stride, seed, tissue_mask, threshold, all_cells, threads, standardize,
        out):
    """Fit new heads on the parent bundle's features from painted strokes; write a derived bundle.

    IMAGES are slices (or stacks) and --labels their stroke images: a sparse label image
    per slice whose codes name areas of the class map (the parent's, or --class-map JSON
    for new areas). The new bundle works with every command (classify, cluster, volumes).
    """
    parent_path = model or default_model()
    check_fit_target(out, parent_path)
    check_not_input([out], [*images, *strokes, class_map, tissue_mask])
    parent = Bundle.load(parent_path, threads=threads)
    tissue = tissue_mask or ("all" if all_cells else None)
    fitted = fit_heads(list(images), list(strokes), parent, class_map=class_map, stride=stride, seed=seed,
                       tissue=tissue, threshold=threshold, standardize=standardize)
    save_bundle(fitted, parent, out)
    click.echo(f"wrote {out}: {fitted.summary()}")


@main.command()
@click.argument("bundle", type=click.Path(), required=False)
@one_line_errors
def info(bundle):
    """What a model bundle holds: classes and their mask codes, heads, training data, split, metrics."""
    folder = Path(bundle or default_model())
    for line in describe(verify_bundle(folder), folder):
        click.echo(line)


@main.command()
@click.option("-o", "--out", default="brainrt-demo", show_default=True, type=click.Path(), help="Output folder.")
@click.option("-m", "--model", default=None, type=click.Path(), help="Bundle (default: the shipped synthetic demo bundle).")
@click.option("--seed", default=7, show_default=True, help="Seed of the synthetic slice.")
@click.option("--overwrite", is_flag=True, help="Replace a demo folder of another seed or bundle.")
@one_line_errors
def demo(out, model, seed, overwrite):
    """Run the whole chain on a built-in synthetic slice; no data needed."""
    for line in run_demo(out, model=model, seed=seed, overwrite=overwrite):
        click.echo(line)


main.add_command(export)  # brainrt export: bundles as packages for other tools (brainrt.zoo)


if __name__ == "__main__":  # pragma: no cover
    main()
