"""``brainrt cluster``: GMM clusters and per-area log-likelihood maps of a slice."""

from __future__ import annotations

import click

from .. import api
from ..familiar import checked
from ..outputs import write_clusters
from .common import grid_and_image, start
from .options import grid_options, model_option, one_line_errors


@click.command()
@click.argument("source", type=click.Path())
@model_option
@grid_options
@click.option("-o", "--out", default=None, type=click.Path(), help="Cluster map OME-TIFF (default: SOURCE.clusters.ome.tif).")
@one_line_errors
def cluster(source, model, threads, out, overwrite, **kw):
    """GMM cluster map and, per area, a log-likelihood map (low = unlike that area; outliers)."""
    if (s := start("cluster", source, model, threads, out, overwrite, kw)) is None:
        return
    out, bundle, rec, job = s
    grid, image = grid_and_image(checked(job, bundle, rec), bundle)
    clusters, loglik = api.cluster(grid, bundle)
    written = write_clusters(out, clusters, loglik, grid, bundle.class_names, image=image, record=rec)
    click.echo(f"wrote {', '.join(written)}")
