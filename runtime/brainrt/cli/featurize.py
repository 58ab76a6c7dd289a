"""``brainrt featurize``: features of a slice on a stride grid (a zarr), or of a volume."""

from __future__ import annotations

import click

from .common import run_command
from .options import grid_options, model_option, one_line_errors, volume_options


@click.command()
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
    run_command("featurize", slice_tif, model, threads, out, overwrite, kw, workers=workers, scheduler=scheduler)
