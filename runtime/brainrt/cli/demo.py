"""``brainrt demo``: the whole chain on a built-in synthetic slice."""

from __future__ import annotations

import click

from ..demo import run_demo
from .options import one_line_errors


@click.command()
@click.option("-o", "--out", default="brainrt-demo", show_default=True, type=click.Path(), help="Output folder.")
@click.option("-m", "--model", default=None, type=click.Path(), help="Bundle (default: the shipped synthetic demo bundle).")
@click.option("--seed", default=7, show_default=True, help="Seed of the synthetic slice.")
@click.option("--overwrite", is_flag=True, help="Replace a demo folder of another seed or bundle.")
@one_line_errors
def demo(out, model, seed, overwrite):
    """Run the whole chain on a built-in synthetic slice; no data needed."""
    for line in run_demo(out, model=model, seed=seed, overwrite=overwrite):
        click.echo(line)
