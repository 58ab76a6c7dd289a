"""The ``brainrt`` command line: thin click commands over the library."""

from __future__ import annotations

import functools
import logging
import sys

import click

from .errors import BrainrtError

log = logging.getLogger("brainrt")


def _errors_as_one_line(fn):
    """Turn BrainrtError (and missing optional packages) into one line and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except BrainrtError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(2)
        except ModuleNotFoundError as exc:
            click.echo(f"Error: {exc.name} is not installed; install brainrt with the [train] extra "
                       "for training (pip install 'brainrt[train]')", err=True)
            sys.exit(2)

    return wrapper


@click.group()
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only errors.")
def main(verbose, quiet):
    """brainrt: maps of brain architecture from micron-scale images with CNN features."""
    level = logging.ERROR if quiet else logging.DEBUG if verbose > 1 else logging.INFO
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)


@main.command("train-and-export")
@click.option("--image", "images", multiple=True, required=True, type=click.Path(), help="Image TIFF (repeat for several slices).")
@click.option("--mask", "masks", multiple=True, required=True, type=click.Path(), help="Label-mask TIFF, one per --image.")
@click.option("--class-map", default="prasad2020", show_default=True, help="Preset name or JSON file {classes, ignore, unlabeled}.")
@click.option("-o", "--out", required=True, type=click.Path(), help="Bundle folder to write.")
@click.option("--patch-size", default=128, show_default=True)
@click.option("--n-train", default=2000, show_default=True, help="Training patches per class (at most).")
@click.option("--n-val", default=1000, show_default=True)
@click.option("--n-test", default=1000, show_default=True)
@click.option("--epochs", default=30, show_default=True)
@click.option("--batch-size", default=64, show_default=True)
@click.option("--lr", default=1e-4, show_default=True, help="Adam learning rate (the paper's 1e-4).")
@click.option("--schedule", type=click.Choice(["constant", "onecycle"]), default="constant", show_default=True)
@click.option("--max-minutes", type=float, default=None, help="Stop training before an epoch that would overrun this.")
@click.option("--seed", default=0, show_default=True)
@click.option("-k", "--clusters", "k", default=4, show_default=True, help="KMeans clusters of the pca_kmeans head.")
@click.option("--gap", type=int, default=None, help="Min. pixels between training and evaluation patches (default: one patch).")
@click.option("--z", type=int, default=None, help="Slice index in 3D stacks.")
@click.option("--overwrite", is_flag=True, help="Replace an existing bundle folder.")
@_errors_as_one_line
def train_and_export_cmd(images, masks, class_map, out, **kw):
    """Train the paper's CNN on annotated slices and write a verified model bundle."""
    if len(images) != len(masks):
        raise BrainrtError(f"got {len(images)} --image and {len(masks)} --mask; give one mask per image")
    from brainrt_train.pipeline import train_and_export

    m = train_and_export(list(zip(images, masks)), out, class_map=class_map, **kw)
    click.echo(f"wrote {out}: CNN test accuracy {m['metrics']['cnn_test_accuracy']:.3f}, "
               f"logreg {m['metrics'].get('logreg_test_accuracy', float('nan')):.3f}")


if __name__ == "__main__":  # pragma: no cover
    main()
