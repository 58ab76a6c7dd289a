"""``brainrt demo``: the whole chain on a synthetic slice, with pictures."""

from __future__ import annotations

from pathlib import Path

from . import api
from .bundle import Bundle
from .outputs import write_classification, write_clusters, write_subdivision
from .synth import make_slice


def run_demo(out, *, model=None, seed=7):
    """Featurize, classify (scored against the synthetic truth), cluster and sub-divide.

    Yields one line per step, saying what was written where.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    bundle = Bundle.load(model or api.demo_model())
    P = bundle.patch_size
    s = make_slice((6 * P, 9 * P), seed=seed, levels=19)
    yield f"synthetic slice {s.image.shape[0]} x {s.image.shape[1]} px, areas: {', '.join(s.names.values())}"
    grid = api.featurize(s.image, bundle, stride=8)
    yield f"featurize: {grid.stats['patches']} patches, {grid.stats['method']} path, {grid.stats['patches_per_s']:.0f} patches/s"
    result = api.classify(grid, bundle)
    m = api.score(result, s.mask, bundle)
    written = write_classification(out / "areas.ome.tif", result, image=s.image, metrics=m)
    yield f"classify: pixel accuracy {m['pixel_accuracy']:.3f}; wrote {', '.join(written)}"
    clusters, loglik = api.cluster(grid, bundle)
    written = write_clusters(out / "clusters.ome.tif", clusters, loglik, grid, bundle.class_names, image=s.image)
    yield f"cluster: wrote {', '.join(written)}"
    first = bundle.class_names[0]
    sub = api.subdivide(grid, region=result.labels == 0, k=3, interior=True)  # patches inside the area
    written = write_subdivision(out / "subdivide.ome.tif", sub, grid, image=s.image, title=f"{first}: k=3")
    yield f"subdivide {first}: wrote {', '.join(written)}"
    yield f"done: open the PNGs in {out}/"
