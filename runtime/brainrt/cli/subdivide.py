"""``brainrt subdivide``: PCA + KMeans sub-division of one area or ROI of a slice."""

from __future__ import annotations

import click

from .. import api
from ..errors import BrainrtError
from ..familiar import checked
from ..heads import Classifier
from ..outputs import write_subdivision
from ..sources import read_mask
from .common import grid_and_image, start
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
    if (s := start("subdivide", source, model, threads, out, overwrite, kw, inputs=(roi,))) is None:
        return
    out, bundle, rec, job = s
    if roi is not None:  # read and checked before any work
        roi = read_mask(roi, job.image_shape, z=kw["z"], what="ROI mask")
    elif area not in bundle.class_names:
        raise BrainrtError(f"unknown area {area!r}; the bundle's areas are {', '.join(bundle.class_names)}")
    else:
        Classifier.of(bundle, head)  # a bad head fails before the work
    grid, image = grid_and_image(checked(job, bundle, rec), bundle)
    region = api.region_cells(grid, bundle, area=area, roi=roi, head=head, z=kw["z"])
    sub = api.subdivide(grid, region=region, k=k, interior=interior)
    written = write_subdivision(out, sub, grid, image=image, title=f"{area or roi}: k={k}", record=rec)
    click.echo(f"wrote {', '.join(written)}")
