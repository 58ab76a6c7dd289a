"""``brainrt classify``: the area map of a slice (OME-TIFF set) or of a volume (OME-Zarr)."""

from __future__ import annotations

import click

from ..heads import CLASSIFIER_HEADS
from .common import run_command
from .options import grid_options, model_option, one_line_errors, volume_options


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
    run_command("classify", source, model, threads, out, overwrite, kw, inputs=(truth,), workers=workers,
                scheduler=scheduler, smooth_z=smooth_z, head=head, smooth=smooth, truth=truth, held_out=held_out,
                preview_width=preview_width, uncertain_below=uncertain_below)
