"""``brainrt subdivide``: PCA + KMeans sub-division of one area or ROI of a slice."""

from __future__ import annotations

import click

from ..errors import BrainrtError
from .common import run_command
from .options import AreaOption, grid_options, model_option, one_line_errors


@click.command()
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
    run_command("subdivide", source, model, threads, out, overwrite, kw, inputs=(roi,), area=area, roi=roi, k=k,
                head=head, interior=interior)
