"""``brainrt fit``: new heads from painted strokes, written as a derived bundle."""

from __future__ import annotations

import click

from ..bundle.derive import check_fit_target, save_bundle
from ..bundle.load import Bundle, default_model
from ..fit import fit_heads
from ..io import check_not_input
from ..model import params
from .options import LabelsList, model_option, one_line_errors, standardize_option, threads_option


@click.command(cls=LabelsList)
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--labels", "strokes", multiple=True, required=True, type=click.Path(),
              help="Stroke images, one per IMAGE in order (0 = unlabeled, other values = class-map codes); "
                   "a stroke stack goes with an image stack (its slices that hold strokes are used).")
@model_option
@click.option("--class-map", default=None, type=click.Path(),
              help="JSON of the classes: {\"classes\": {\"name\": [codes]}, \"colors\": {\"name\": \"#rrggbb\"}} "
                   "(default: the parent bundle's).")
@click.option("--stride", type=click.IntRange(min=1), default=params.default("stride"), show_default=True,
              help="Grid step of the stroke cells in pixels.")
@click.option("--seed", default=0, show_default=True, help="Seed of the cross-validation folds.")
@click.option("--tissue-mask", type=click.Path(), default=None, help="TIFF mask of the tissue (2D images only).")
@click.option("--threshold", type=float, default=None, help="Tissue intensity threshold (default: Otsu).")
@click.option("--all-cells", is_flag=True, help="Every stroke cell counts as tissue.")
@threads_option
@standardize_option("Map each slice's tissue histogram onto the parent's training tissue (auto: only where "
                    "the pixel range demands it; match: always; off: never).")
@click.option("-o", "--out", required=True, type=click.Path(), help="The new bundle folder.")
@one_line_errors
def fit(images, strokes, model, class_map, stride, seed, tissue_mask, threshold, all_cells, threads, standardize,
        out):
    """Fit new heads on the parent bundle's features from painted strokes; write a derived bundle.

    IMAGES are slices (or stacks) and --labels their stroke images: a sparse label image
    per slice whose codes name areas of the class map (the parent's, or --class-map JSON
    for new areas). The new bundle works with every command (classify, cluster, volumes).
    """
    parent_path = model or default_model()
    check_fit_target(out, parent_path)
    check_not_input([out], [*images, *strokes, class_map, tissue_mask])
    parent = Bundle.load(parent_path, threads=threads)
    tissue = tissue_mask or ("all" if all_cells else None)
    fitted = fit_heads(list(images), list(strokes), parent, class_map=class_map, stride=stride, seed=seed,
                       tissue=tissue, threshold=threshold, standardize=standardize)
    save_bundle(fitted, parent, out)
    click.echo(f"wrote {out}: {fitted.summary()}")
