"""``brainrt info``: what a model bundle holds."""

from __future__ import annotations

from pathlib import Path

import click

from ..bundle.load import default_model
from ..model.manifest import describe
from ..model.seal import verify_bundle
from .options import one_line_errors


@click.command()
@click.argument("bundle", type=click.Path(), required=False)
@one_line_errors
def info(bundle):
    """What a model bundle holds: classes and their mask codes, heads, training data, split, metrics."""
    folder = Path(bundle or default_model())
    for line in describe(verify_bundle(folder), folder):
        click.echo(line)
