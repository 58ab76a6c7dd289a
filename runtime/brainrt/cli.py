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

    m = train_and_export(list(zip(images, masks)), out, class_map=class_map, progress=True, **kw)
    click.echo(f"wrote {out}: CNN test accuracy {m['metrics']['cnn_test_accuracy']:.3f}, "
               f"logreg {m['metrics'].get('logreg_test_accuracy', float('nan')):.3f}")



# --------------------------------------------------------------------------- runtime
def _model_option(f):
    return click.option("-m", "--model", "model", default=None, type=click.Path(),
                        help="Model bundle folder (default: the shipped slice309 bundle).")(f)


def _grid_options(f):
    opts = [
        click.option("--stride", default=16, show_default=True, help="Grid step in pixels."),
        click.option("--method", type=click.Choice(["auto", "patch", "dense"]), default="auto", show_default=True,
                     help="Dense (whole tiles) or per-patch evaluation; auto picks dense when it applies."),
        click.option("--tissue-mask", type=click.Path(), default=None, help="TIFF mask of the tissue (nonzero = tissue)."),
        click.option("--threshold", type=float, default=None, help="Tissue intensity threshold (default: Otsu)."),
        click.option("--all-cells", is_flag=True, help="Featurize every cell, background included."),
        click.option("--z", type=int, default=None, help="Slice index of a 3D TIFF stack."),
        click.option("--pixel-size", type=float, default=None, help="Pixel size in um (default: from the TIFF, else 1.17)."),
        click.option("--threads", type=int, default=None, help="onnxruntime threads (default: all cores)."),
        click.option("--batch-size", default=256, show_default=True, help="Patches per onnxruntime call."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _check_out(out, *, is_dir=False):
    """Fail on an unwritable output path before any work (and before a progress bar)."""
    from .io import check_target

    check_target(out, is_dir=is_dir)


def _load_bundle(model, threads=None):
    from .api import default_model
    from .bundle import Bundle

    return Bundle.load(model or default_model(), threads=threads)


def _featurize_source(source, bundle, *, stride, method, tissue_mask, threshold, all_cells, z, pixel_size,
                      batch_size, out=None, progress=None, classify_head=None):
    """A FeatureGrid from a slice TIFF, or from a saved feature grid (.zarr folder).

    With ``classify_head`` (a head name, "" for the default) a slice TIFF is featurized
    and classified in one streaming pass and a ClassMapResult is returned instead.
    """
    from . import api
    from .io import read_tiff

    if str(source).rstrip("/").endswith(".zarr"):
        grid = api.load_features(source)
        if grid.model_id != bundle.model_id:
            raise BrainrtError(f"{source}: features were computed by model {grid.model_id}, "
                               f"not by this bundle ({bundle.model_id}); featurize the slice again")
        return grid, None
    image, px = read_tiff(source, z=z)
    tissue = "all" if all_cells else None
    if tissue_mask:
        tissue, _ = read_tiff(tissue_mask, z=z, what="tissue mask")
        if tissue.shape != image.shape:
            raise BrainrtError(f"{tissue_mask}: tissue mask shape {tissue.shape} differs from the image's {image.shape}")
    if progress is None:
        progress = log.isEnabledFor(logging.INFO)  # no bar with -q
    common = dict(stride=stride, method=method, tissue=tissue, threshold=threshold, batch_size=batch_size,
                  progress=progress, pixel_size_um=pixel_size or px or 1.17)
    try:
        if classify_head is not None:
            return api.classify_image(image, bundle, head=classify_head or None, **common), image
        grid = api.featurize(image, bundle, out=out, **common)
    except BrainrtError as exc:
        msg = str(exc)
        raise BrainrtError(msg if msg.startswith(str(source)) else f"{source}: {msg.removeprefix('image: ')}") from None
    return grid, image


def _default_out(source, suffix):
    from pathlib import Path

    name = Path(str(source).rstrip("/")).name
    for ext in (".features.zarr", ".zarr", ".ome.tif", ".tiff", ".tif"):
        if name.endswith(ext):
            name = name[: -len(ext)]
            break
    return str(Path(str(source).rstrip("/")).parent / f"{name}{suffix}")


@main.command()
@click.argument("slice_tif", type=click.Path())
@_model_option
@_grid_options
@click.option("-o", "--out", default=None, type=click.Path(), help="Output .zarr folder (default: SLICE.features.zarr).")
@_errors_as_one_line
def featurize(slice_tif, model, threads, **kw):
    """Features of every tissue patch of SLICE_TIF on a stride grid, saved as zarr."""
    out = kw.pop("out") or _default_out(slice_tif, ".features.zarr")
    _check_out(out, is_dir=True)
    bundle = _load_bundle(model, threads)
    grid, _ = _featurize_source(slice_tif, bundle, out=out, **kw)
    st = grid.stats
    click.echo(f"wrote {out}: grid {grid.shape[0]} x {grid.shape[1]} x {bundle.n_features}, {st['patches']} patches "
               f"by the {st['method']} path in {st['seconds']:.1f} s ({st['patches_per_s']:.0f} patches/s)")


@main.command()
@click.argument("source", type=click.Path())
@_model_option
@_grid_options
@click.option("--head", default=None, help="Classifier head: logreg (default), linsvm, rbfsvm, cnn.")
@click.option("--truth", type=click.Path(), default=None, help="Label-mask TIFF to score against.")
@click.option("-o", "--out", default=None, type=click.Path(), help="Label map OME-TIFF (default: SOURCE.labels.ome.tif).")
@_errors_as_one_line
def classify(source, model, threads, head, truth, out, **kw):
    """Area map of SOURCE (a slice TIFF or a .zarr feature grid) in the class map's codes.

    Writes the label map at full resolution (OME-TIFF), per-class probabilities at grid
    resolution (OME-TIFF, same physical scale), an overlay PNG and, with --truth,
    accuracy, confusion matrix and per-class F1 (JSON + PNG).
    """
    from . import api
    from .outputs import write_classification

    out = out or _default_out(source, ".labels.ome.tif")
    _check_out(out)
    bundle = _load_bundle(model, threads)
    if str(source).rstrip("/").endswith(".zarr"):
        grid, image = _featurize_source(source, bundle, **kw)
        result = api.classify(grid, bundle, head=head)
    else:  # stream: features are never held whole (a stride-1 grid of a slice is GBs)
        result, image = _featurize_source(source, bundle, classify_head=head or "", **kw)
        grid = result.grid
    truth_arr = None
    if truth:
        from .io import read_tiff

        truth_arr, _ = read_tiff(truth, z=kw.get("z"), what="label mask")
        if truth_arr.shape != tuple(grid.image_shape):
            raise BrainrtError(f"{truth}: truth shape {truth_arr.shape} differs from the slice's {tuple(grid.image_shape)}")
    written, metrics = write_classification(out, result, bundle, image=image, truth=truth_arr)
    msg = f"wrote {', '.join(written)}"
    if metrics:
        msg += f"; pixel accuracy {metrics['pixel_accuracy']:.3f} over {metrics['n_pixels']} labeled pixels"
    click.echo(msg)


@main.command()
@click.argument("source", type=click.Path())
@_model_option
@_grid_options
@click.option("-o", "--out", default=None, type=click.Path(), help="Cluster map OME-TIFF (default: SOURCE.clusters.ome.tif).")
@_errors_as_one_line
def cluster(source, model, threads, out, **kw):
    """GMM cluster map and, per area, a log-likelihood map (low = unlike that area; outliers)."""
    from . import api
    from .outputs import write_clusters

    out = out or _default_out(source, ".clusters.ome.tif")
    _check_out(out)
    bundle = _load_bundle(model, threads)
    grid, image = _featurize_source(source, bundle, **kw)
    clusters, loglik = api.cluster(grid, bundle)
    written = write_clusters(out, clusters, loglik, grid, bundle, image=image)
    click.echo(f"wrote {', '.join(written)}")


@main.command()
@click.argument("source", type=click.Path())
@_model_option
@_grid_options
@click.option("--area", default=None, help="Sub-divide the cells classified as this area (e.g. Ctx).")
@click.option("--roi", type=click.Path(), default=None, help="Or a TIFF mask of the region (nonzero = inside).")
@click.option("-k", "--clusters", "k", default=4, show_default=True)
@click.option("--head", default=None, help="Classifier head used with --area.")
@click.option("-o", "--out", default=None, type=click.Path(), help="Sub-division OME-TIFF (default: SOURCE.subdivide.ome.tif).")
@_errors_as_one_line
def subdivide(source, model, threads, area, roi, k, head, out, **kw):
    """PCA + KMeans of the features inside one area or ROI (e.g. cortical layers)."""
    from . import api
    from .outputs import region_cells, write_subdivision

    if (area is None) == (roi is None):
        raise BrainrtError("give exactly one of --area NAME or --roi MASK")
    out = out or _default_out(source, ".subdivide.ome.tif")
    _check_out(out)
    bundle = _load_bundle(model, threads)
    grid, image = _featurize_source(source, bundle, **kw)
    region = region_cells(grid, bundle, area=area, roi=roi, head=head, z=kw.get("z"))
    sub = api.subdivide(grid, region=region, k=k)
    written = write_subdivision(out, sub, grid, image=image, title=f"{area or roi}: k={k}")
    click.echo(f"wrote {', '.join(written)}")


@main.command()
@click.option("-o", "--out", default="brainrt-demo", show_default=True, type=click.Path(), help="Output folder.")
@click.option("-m", "--model", default=None, type=click.Path(), help="Bundle (default: the shipped synthetic demo bundle).")
@click.option("--seed", default=7, show_default=True, help="Seed of the synthetic slice.")
@_errors_as_one_line
def demo(out, model, seed):
    """Run the whole chain on a built-in synthetic slice; no data needed."""
    from .demo import run_demo

    for line in run_demo(out, model=model, seed=seed):
        click.echo(line)


if __name__ == "__main__":  # pragma: no cover
    main()
