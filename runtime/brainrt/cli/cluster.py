"""``brainrt cluster``: GMM clusters and per-area log-likelihood maps of a slice."""

from __future__ import annotations

import click

from .common import run_command
from .options import grid_options, model_option, one_line_errors


@click.command()
@click.argument("source", type=click.Path())
@model_option
@grid_options
@click.option("-o", "--out", default=None, type=click.Path(), help="Cluster map OME-TIFF (default: SOURCE.clusters.ome.tif).")
@one_line_errors
def cluster(source, model, threads, out, overwrite, **kw):
    """GMM cluster map and, per area, a log-likelihood map (low = unlike that area; outliers)."""
    run_command("cluster", source, model, threads, out, overwrite, kw)
