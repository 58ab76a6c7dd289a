"""``brainrt classify``: the area map of a slice (OME-TIFF set) or of a volume (OME-Zarr)."""

from __future__ import annotations

import click

from .. import api
from ..errors import BrainrtError
from ..familiar import checked
from ..grid import FeatureGrid
from ..heads import CLASSIFIER_HEADS, Classifier
from ..outputs import classification_set, probabilities_path, uncertainty_path, write_classification
from ..scoring import score_lines
from ..sources import is_volume_input, read_mask
from .common import start, volume_command
from .options import grid_options, model_option, one_line_errors, show_progress, slice_only, volume_options


@click.command()
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
        return volume_command("classify", source, model, threads, out, workers, scheduler, overwrite, kw, head=head,
                              smooth=smooth, smooth_z=smooth_z)
    slice_only(source, workers, scheduler, smooth_z=smooth_z, held_out=held_out, truth=truth)
    if (s := start("classify", source, model, threads, out, overwrite, kw, inputs=(truth,))) is None:
        return
    out, bundle, rec, job = s
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
    """(result, image) of a :func:`job_of`: a saved grid's in memory; a slice's streamed (features never held
    whole, a stride-1 grid of a slice is GBs), its probabilities into the output set ``s`` band by band."""
    if isinstance(job, FeatureGrid):
        return api.classify(job, bundle, head=head, smooth=smooth), None
    if not Classifier.of(bundle, head).proba:
        return api.classify_plan(job, bundle, head=head, smooth=smooth, progress=show_progress()), job.input_image
    return api.classify_plan(job, bundle, head=head, smooth=smooth, progress=show_progress(),
                             probabilities=s.path(probabilities_path(s.out)),
                             uncertainty=s.path(uncertainty_path(s.out))), job.input_image
