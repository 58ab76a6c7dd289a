"""``brainrt demo``: the whole chain on a synthetic slice, with pictures."""

from __future__ import annotations

from pathlib import Path

from . import api
from .bundle.load import Bundle
from .model.seal import MANIFEST, sha256_file
from .outputs import write_classification, write_clusters, write_subdivision
from .outputs.finished import FOLDER_RECORD, is_finished, run_record, write_record
from .synth import make_slice


def run_demo(out, *, model=None, seed=7, overwrite=False):
    """Featurize, classify (scored against the synthetic truth), cluster and sub-divide.

    Yields one line per step, saying what was written where. The folder ``out`` follows the
    finished-output rule (:mod:`brainrt.outputs.finished`): a finished demo of the same seed and bundle
    is left as it is; any other content is replaced only with ``overwrite``.
    """
    out = Path(out)
    model = Path(model or api.demo_model())
    record = run_record("demo", {"--seed": seed}, {}, sha256_file(model / MANIFEST) if (model / MANIFEST).is_file()
                        else None)
    if is_finished(out, record, is_dir=True, overwrite=overwrite):
        yield f"{out} is complete (the same seed and bundle); nothing to do (--overwrite recomputes it)"
        return
    bundle = Bundle.load(model)
    out.mkdir(parents=True, exist_ok=True)
    P = bundle.patch_size
    s = make_slice((6 * P, 9 * P), seed=seed, levels=19)
    yield f"synthetic slice {s.image.shape[0]} x {s.image.shape[1]} px, areas: {', '.join(s.names.values())}"
    grid = api.featurize(s.image, bundle, stride=8)
    yield f"featurize: {grid.stats['patches']} patches, {grid.stats['method']} path, {grid.stats['patches_per_s']:.0f} patches/s"
    result = api.classify(grid, bundle)
    m = api.score(result, s.mask, bundle)
    written = write_classification(out / "areas.ome.tif", result, image=s.image, metrics=m, truth=s.mask)
    yield f"classify: pixel accuracy {m['pixel_accuracy']:.3f}; wrote {', '.join(written)}"
    clusters, loglik = api.cluster(grid, bundle)
    written = write_clusters(out / "clusters.ome.tif", clusters, loglik, grid, bundle.class_names, image=s.image)
    yield f"cluster: wrote {', '.join(written)}"
    first = bundle.class_names[0]
    sub = api.subdivide(grid, region=result.labels == 0, k=3, interior=True)  # patches inside the area
    written = write_subdivision(out / "subdivide.ome.tif", sub, grid, image=s.image, title=f"{first}: k=3")
    yield f"subdivide {first}: wrote {', '.join(written)}"
    write_record(out / FOLDER_RECORD, record)
    yield f"done: open the PNGs in {out}/"
