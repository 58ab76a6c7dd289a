"""``brainrt featurize``: features of a slice on a stride grid (a zarr), or of a volume."""

from __future__ import annotations

import click

from .. import api
from ..familiar import checked
from ..sources import is_volume_input
from .common import start, volume_command
from .options import grid_options, model_option, one_line_errors, show_progress, slice_only, volume_options


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
    if is_volume_input(slice_tif, kw["z"]):
        return volume_command("featurize", slice_tif, model, threads, out, workers, scheduler, overwrite, kw)
    slice_only(slice_tif, workers, scheduler)
    if (s := start("featurize", slice_tif, model, threads, out, overwrite, kw)) is None:
        return
    out, bundle, rec, plan = s
    grid = api.featurize_plan(checked(plan, bundle, rec), bundle, out=out, progress=show_progress(), record=rec)
    st = grid.stats
    click.echo(f"wrote {out}: grid {grid.shape[0]} x {grid.shape[1]} x {bundle.n_features}, {st['patches']} patches "
               f"by the {st['method']} path in {st['seconds']:.1f} s ({st['patches_per_s']:.0f} patches/s)")
