"""A bundle as a BioImage Model Zoo package (``bioimageio.spec`` 0.5 model description, one zip).

The package holds the graph of :mod:`brainrt.zoo.graph` (ONNX weights), ``rdf.yaml`` (axes: batch, channel,
y, x; the input's size a multiple of the stride, the output's the input's over the stride, with its scale
and halo; the intensity normalization as a ``scale_linear`` preprocessing; reflect padding, as brainrt
reflects at a slice's edges), test input and output tensors of a crop of a real slice (the output made by
brainrt's own engine and head, not by the graph), a cover (the map over the crop), the model card as
documentation, the paper and the dataset as citations, and the licence. The export runs the graph on the
test crop as a tiling tool would (padded by the halo, reflected) and refuses to write a package whose
numbers differ from brainrt's by more than :data:`TOLERANCE`.

``bioimageio.spec`` and ``onnx`` are imported only here (the ``[bioimageio]`` extra).
"""

from __future__ import annotations

import json
import re
import tempfile
import time
from pathlib import Path

import numpy as np

from ..api import classify, featurize_plan, make_plan
from ..bundle.load import Bundle
from ..errors import BrainrtError, file_error
from ..geometry import upsample
from ..io import atomic_path, check_not_input, check_target
from ..plots import overlay_png
from ..version import __version__
from . import graph as G
from .card import citations, documentation

#: What a package maps: class probabilities (a folded head) or the network's features.
WHAT = ("classes", "features")
#: Largest difference allowed between the package's outputs and brainrt's on the test crop.
TOLERANCE = 1e-4
#: Side of the test crop (pixels), where the image and :data:`MAX_POSITIONS` allow it.
CROP = 512
#: Most dense positions of one run of the graph in the export's own check: the network's FC1 becomes a dilated
#: convolution whose im2col buffer holds about 12.8 kB per position in onnxruntime (:mod:`brainrt.engine.loop`), so
#: 320 x 320 positions take about 1.3 GB.
MAX_POSITIONS = 320 * 320


def _spec():
    """bioimageio.spec and onnx, or the one-line error naming the extra."""
    try:
        import bioimageio.spec
        import onnx  # noqa: F401
    except ImportError as exc:
        raise BrainrtError(f"{exc.name or 'bioimageio.spec'} is not installed; exporting a bioimage.io package needs the [bioimageio] "
                           "extra (pip install 'brainrt[bioimageio]')") from None
    return bioimageio.spec


def export_bioimageio(bundle, out, *, image, what="classes", head=None, stride=16, crop=None, z=None,
                      overwrite=False, license="CC-BY-4.0"):
    """Write ``out`` (a ``.zip``): the bioimage.io model package of ``bundle`` (a folder or a loaded
    :class:`~brainrt.bundle.load.Bundle`) at grid ``stride``, ``what`` "classes" (the head ``head``, default the
    bundle's, folded into the graph) or "features". ``image`` (a slice: a path or a uint8 array) gives the
    test crop: ``crop`` (row, col) its top-left pixel, default the :data:`CROP` px square with the most
    tissue. Returns a dict of what was written (the crop, the halo, the largest difference to brainrt)."""
    out = _check_out(out, overwrite, image)
    spec = _spec()
    bundle = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
    if what not in WHAT:
        raise BrainrtError(f"--what must be one of {', '.join(WHAT)}; got {what!r}")
    head = (head or bundle.manifest.default_head) if what == "classes" else None
    geo = G.geometry(bundle, stride)
    largest = largest_crop(bundle, geo)
    folded = G.folded_head(bundle, head) if head else None
    model = G.build(bundle, geo, folded)
    pixels, at = test_crop(image, bundle, geo, crop=crop, z=z, largest=largest)
    expected = reference(pixels, bundle, geo, head)
    diff = _check_graph(model, pixels, expected, bundle, geo)
    with tempfile.TemporaryDirectory() as d, atomic_path(out, overwrite=overwrite) as tmp:
        folder = Path(d)
        _files(folder, model, pixels, expected, bundle, geo, head, at)
        rdf = _rdf(bundle, geo, head, folder, license)
        (folder / "rdf.yaml").write_text(json.dumps(rdf, indent=1))  # JSON is YAML
        descr = _validated(spec, folder / "rdf.yaml", out)
        spec.save_bioimageio_package(descr, output_path=tmp)
    return {"out": str(out), "crop": at, "size": pixels.shape, "halo": geo.halo, "max_abs_diff": diff, "head": head}


def _check_out(out, overwrite, image):
    out = Path(out)
    if out.suffix.lower() != ".zip":
        raise file_error(out, "a bioimage.io package is a .zip; name the output NAME.zip")
    check_not_input([out], [image] if isinstance(image, (str, Path)) else [])
    return check_target(out, overwrite=overwrite)


def largest_crop(bundle, geo):
    """The largest test crop side (a multiple of the stride, at most :data:`CROP`) whose tile, with its halo,
    holds at most :data:`MAX_POSITIONS` dense positions; the one-line error where not even the smallest tile
    does (a small stride of a network with a wide field: every tool running the package would need as much)."""
    reach, s = 2 * geo.halo * geo.stride, geo.stride
    side = min(CROP, (int(MAX_POSITIONS ** 0.5) * geo.dense - reach) // s * s)
    if side < geo.min_size:
        need = ((geo.min_size + reach) // geo.dense) ** 2
        raise BrainrtError(f"{bundle.path}: at stride {s} the smallest tile ({geo.min_size} px, {geo.min_size + reach} "
                           f"px with its halo) runs {need} dense positions, about {need * 12.8e-6:.0f} GB for "
                           "onnxruntime; export a larger stride")
    return side


def test_crop(image, bundle, geo, *, crop=None, z=None, largest=CROP):
    """(pixels (n, n) uint8, (row, col)) of the slice ``image``: the crop at ``crop`` (its top-left pixel), or the
    ``largest`` px square (smaller on a smaller slice; a multiple of the stride) holding the most tissue cells."""
    plan = make_plan(image, bundle, stride=geo.stride, z=z, standardize="off", precision="fp32", owner="export")
    source = image if isinstance(image, (str, Path)) else "image"
    if plan.image.dtype != np.uint8:
        raise file_error(source, f"pixel type {plan.image.dtype}; the package's test crop is uint8, as the bundle's "
                                 "training slices (save an 8-bit copy of the slice for the export)")
    s = geo.stride
    side = min(largest, *(d // s * s for d in plan.image.shape))
    if side < geo.min_size:
        raise file_error(source, f"{plan.image.shape[0]} x {plan.image.shape[1]} px is smaller than the package's "
                                 f"smallest tile ({geo.min_size} px at stride {s})")
    if crop is None:
        crop = _most_tissue(plan.valid, side // s)
        crop = (crop[0] * s, crop[1] * s)
    r, c = (int(v) for v in crop)
    if r < 0 or c < 0 or r + side > plan.image.shape[0] or c + side > plan.image.shape[1]:
        raise file_error(source, f"a {side} px crop at ({r}, {c}) does not fit in the {plan.image.shape[0]} x "
                                 f"{plan.image.shape[1]} px slice")
    return np.ascontiguousarray(plan.image[r : r + side, c : c + side]), (r, c)


def _most_tissue(valid, n):
    """Top-left cell of the ``n`` x ``n`` window of grid cells holding the most tissue cells (the first of ties)."""
    sat = np.pad(np.cumsum(np.cumsum(valid.astype(np.int64), 0), 1), ((1, 0), (1, 0)))
    counts = sat[n:, n:] - sat[:-n, n:] - sat[n:, :-n] + sat[:-n, :-n]
    return np.unravel_index(int(np.argmax(counts)), counts.shape)


def reference(pixels, bundle, geo, head):
    """brainrt's own numbers on the crop, (1, C, rows, cols) float32: the engine's dense path (fp32, every cell,
    the crop reflected at its edges) and the head's probabilities unsmoothed, or the features."""
    plan = make_plan(pixels, bundle, stride=geo.stride, tissue="all", standardize="off", method="dense",
                     precision="fp32", owner="export")
    grid = featurize_plan(plan, bundle)
    values = classify(grid, bundle, head=head, smooth=0).probabilities if head else grid.features
    return np.ascontiguousarray(np.moveaxis(np.asarray(values, np.float32), -1, 0)[None])


def _check_graph(model, pixels, expected, bundle, geo):
    """Largest difference between the graph, run on the crop as a tiling tool runs it (reflected by the halo,
    the halo cropped off), and brainrt's numbers; the one-line error beyond :data:`TOLERANCE`."""
    import onnxruntime as ort

    n, h = bundle.normalization, geo.halo * geo.stride
    x = np.pad(pixels, h, mode="reflect").astype(np.float32) * np.float32(n.scale / n.std) - np.float32(n.mean / n.std)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(None, {G.INPUT: x[None, None]})[0][..., geo.halo : -geo.halo, geo.halo : -geo.halo]
    diff = float(np.abs(got - expected).max())
    if diff > TOLERANCE:
        raise BrainrtError(f"{bundle.path}: the exported graph differs from brainrt by {diff:.2g} on the test crop "
                           f"(more than {TOLERANCE:g}); not writing the package")
    return diff


def _files(folder, model, pixels, expected, bundle, geo, head, at):
    """The package's files in ``folder``: model.onnx, the test tensors, cover.png, README.md."""
    (folder / "model.onnx").write_bytes(model.SerializeToString())
    np.save(folder / "test_input.npy", pixels[None, None])
    np.save(folder / "test_output.npy", expected)
    _cover(folder / "cover.png", pixels, expected, bundle, geo, head)
    (folder / "README.md").write_text(documentation(bundle, geo, head, at, pixels.shape[0], TOLERANCE))


def _cover(path, pixels, expected, bundle, geo, head):
    """The map over the crop (the head's areas), or the features' first three principal components as colours
    over it."""
    values = np.moveaxis(expected[0], 0, -1)
    if head:
        labels = upsample(values.argmax(-1), geo.stride, pixels.shape)
        return overlay_png(path, pixels, labels, bundle.class_names, alpha=0.5, width=pixels.shape[1],
                           colors=None, title=f"{bundle.path.name}: areas (head {head})")
    import matplotlib.pyplot as plt

    flat = values.reshape(-1, values.shape[-1]) - values.reshape(-1, values.shape[-1]).mean(0)
    pcs = flat @ np.linalg.svd(flat, full_matrices=False)[2][:3].T
    rgb = upsample(((pcs - pcs.min(0)) / np.ptp(pcs, 0).clip(1e-9)).reshape(values.shape[:2] + (3,)), geo.stride,
                   pixels.shape)
    plt.imsave(path, 0.5 * rgb + 0.5 * (pixels / 255.0)[..., None])


def _ident(name):
    """A class name as a bioimage.io channel name (letters, digits, ``_``)."""
    return re.sub(r"\W", "_", name)


def _axes(geo, channels, halo):
    xy = [{"type": "space", "id": a, "size": {"min": geo.min_size, "step": geo.stride}} for a in ("y", "x")]
    if halo:
        xy = [{"type": "space", "id": a, "size": {"tensor_id": "image", "axis_id": a}, "scale": geo.stride,
               "halo": geo.halo} for a in ("y", "x")]
    return [{"type": "batch", "size": 1}, {"type": "channel", "channel_names": channels}, *xy]


def _rdf(bundle, geo, head, folder, license):  # long: one literal, the rdf.yaml
    """The model description (rdf.yaml) as a dict."""
    n, out = bundle.normalization, G.PROBABILITIES if head else G.FEATURES
    channels = [_ident(c) for c in bundle.class_names] if head else [f"f{i:02d}" for i in range(bundle.n_features)]
    what = f"area classifier (head {head})" if head else f"{bundle.n_features} CNN features"
    return {
        "format_version": "0.5.12", "type": "model",
        "name": f"brainrt {bundle.path.name} {'areas' if head else 'features'} stride {geo.stride}",
        "description": f"brainrt {what} of the bundle {bundle.path.name} on a grid of stride {geo.stride} px "
                       "(Balwani and Dyer's deep feature model of brain areas in X-ray microtomography).",
        "authors": [{"name": "brainrt developers"}], "cite": citations(), "license": license,
        "documentation": {"source": "README.md"}, "covers": [{"source": "cover.png"}], "version": "0.1.0",
        "tags": ["brainrt", "x-ray-microtomography", "mouse", "brain", "brain-areas", "2d",
                 "classification" if head else "features", "onnx"],
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "inputs": [{"id": G.INPUT, "axes": _axes(geo, ["gray"], False), "test_tensor": {"source": "test_input.npy"},
                    "data": {"type": "float32", "range": [0.0, 1.0 / n.scale]},
                    "preprocessing": [{"id": "ensure_dtype", "kwargs": {"dtype": "float32"}},
                                      {"id": "scale_linear", "kwargs": {"gain": n.scale / n.std, "offset": -n.mean / n.std}},
                                      {"id": "ensure_dtype", "kwargs": {"dtype": "float32"}}],
                    "pad": {"mode": "reflect"}, "description": "gray values of a slice on its 8-bit scale"}],
        "outputs": [{"id": out, "axes": _axes(geo, channels, True), "test_tensor": {"source": "test_output.npy"},
                     "data": {"type": "float32", **({"range": [0.0, 1.0]} if head else {})},
                     "description": "class probabilities per grid cell" if head else "features per grid cell"}],
        "weights": {"onnx": {"source": "model.onnx", "opset_version": 17}},
        "config": {"bioimageio": {"reproducibility_tolerance": [{"absolute_tolerance": TOLERANCE,
                                                                   "relative_tolerance": TOLERANCE}]},
                   "brainrt": {"version": __version__, "bundle": bundle.path.name, "model_id": bundle.model_id,
                               "stride": geo.stride, "head": head, "halo_cells": geo.halo}},
    }


def _validated(spec, rdf, out):
    """The validated description of ``rdf`` (local files only), or the one-line error with the first problem."""
    descr = spec.load_description(rdf, perform_io_checks=True)
    if not isinstance(descr, spec.ModelDescr):
        errors = getattr(descr.validation_summary, "errors", None) or []
        first = f"{'.'.join(map(str, errors[0].loc))}: {errors[0].msg}" if errors else descr.validation_summary.status
        raise file_error(out, f"the package would not be a valid bioimage.io model ({first}); not writing it")
    return descr
