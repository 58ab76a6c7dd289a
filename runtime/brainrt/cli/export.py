"""``brainrt export``: a bundle as a package for other tools (:mod:`brainrt.zoo`)."""

from __future__ import annotations

import click

from ..errors import BrainrtError
from ..zoo import WHAT, export_bioimageio
from .options import one_line_errors

#: Formats ``brainrt export`` writes.
FORMATS = ("bioimageio",)


@click.command("export")
@click.argument("bundle", type=click.Path())
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="bioimageio", show_default=True,
              help="bioimageio: a BioImage Model Zoo model package (.zip).")
@click.option("--what", type=click.Choice(WHAT), default="classes", show_default=True,
              help="classes: the class probabilities of a head folded into the graph; features: the 64 features.")
@click.option("--head", default=None, help="The head to fold in (default: the bundle's; one affine map and a "
                                           "softmax: logreg, cnn).")
@click.option("--stride", type=click.IntRange(min=1), default=16, show_default=True, help="Grid step in pixels.")
@click.option("--image", required=True, type=click.Path(), help="A slice (8-bit) for the test tensors and the cover.")
@click.option("--crop", nargs=2, type=int, default=None, metavar="ROW COL",
              help="Top-left pixel of the test crop (default: the 512 px square with the most tissue).")
@click.option("--z", type=int, default=None, help="Slice of a stack given as --image.")
@click.option("--license", "license_", default="CC-BY-4.0", show_default=True, help="SPDX licence of the package.")
@click.option("-o", "--out", required=True, type=click.Path(), help="The package, NAME.zip.")
@click.option("--overwrite", is_flag=True, help="Replace an existing NAME.zip.")
@one_line_errors
def export(bundle, fmt, what, head, stride, image, crop, z, license_, out, overwrite):
    """Write BUNDLE as a model package that other tools run (QuPath, ilastik, deepImageJ, bioimageio.core)."""
    if head and what != "classes":
        raise BrainrtError("--head folds a head into the graph; it does not apply to --what features")
    r = export_bioimageio(bundle, out, image=image, what=what, head=head, stride=stride, crop=crop, z=z,
                          overwrite=overwrite, license=license_)
    click.echo(f"wrote {out}: {fmt} package, {what}" + (f" (head {r['head']})" if r["head"] else "")
               + f", stride {stride}, halo {r['halo']} cells; test crop {r['size'][0]} x {r['size'][1]} px at "
               f"{tuple(r['crop'])}, within {r['max_abs_diff']:.1g} of brainrt")
