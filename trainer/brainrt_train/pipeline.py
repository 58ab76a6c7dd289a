"""``train-and-export``: from annotated slices to a verified model bundle.

:func:`train_and_export` runs the steps in order, each a function of what the ones
before it returned: :func:`load_data` (the slices), :func:`sample` (the split and the
training inputs), :func:`train` (or weights from a checkpoint), then inside the bundle
folder being built :func:`export_graphs`, :func:`fit_bundle_heads`, the int8 copies,
:func:`build_manifest` (the typed :class:`~brainrt.model.manifest.Manifest`) and
:func:`~brainrt.model.seal.seal_bundle`. :class:`TrainOptions` holds every option, checked once.
"""

from __future__ import annotations

import dataclasses
import logging
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import joblib
import numpy as np
import torch

from brainrt.bundle.load import Bundle
from brainrt.heads import LinearHead
from brainrt.errors import BrainrtError, check_positive_int, param_error
from brainrt.geometry import MIN_WINDOW, NET_STRIDE, window_offset, window_size
from brainrt.engine.intensity import tissue_quantiles
from brainrt.io import atomic_path, write_json
from brainrt.model.manifest import (ClassSpec, Context, DenseGraphs, Int8Graphs, Intensity, Manifest, Normalization,
                                    OnnxGraph, Smoothing, Training, TrainingSlice)
from brainrt.model.seal import seal_bundle
from brainrt.outputs.finished import refusal
from brainrt.plots import confusion_png
from brainrt.engine.tissue import otsu_threshold

from .data import SPLITS, ClassMap, draw_balanced, extract, extract_context, load_slice, sample_patches
from .evaluate import choose_smoothing, split_footprints
from .export import export_dense, export_features, share_weights
from .heads import fit_heads
from .model import context_scales
from .train import BORDER_P, ROTATE_P, classification_metrics, fit, load_checkpoint, predict, to_unit

log = logging.getLogger("brainrt.train")


@dataclass(frozen=True, kw_only=True)
class TrainOptions:
    """Every option of ``train-and-export`` (the command's flags), checked when built.

    ``context=4`` adds the context branch (see :mod:`brainrt_train.model`). ``checkpoint``
    keeps the best weights of a long run on disk as training goes; ``init_from`` takes such
    a file instead of training (same data, split and seed), so a run trained elsewhere can
    be exported here. ``layout`` picks the split bands (:func:`brainrt_train.data.split_regions`);
    ``redraw`` draws new training positions from the training regions every epoch.
    ``smooth_choice`` picks the default map smoothing on the validation split's pixels.
    ``int8`` adds int8 copies of the graphs, calibrated on training footprints
    (:mod:`brainrt_train.quantize`). ``border_p`` / ``rotate_p``: shares of samples given a
    tissue border in their context / of batches turned and rescaled (None: the defaults
    :data:`~brainrt_train.train.BORDER_P`, :data:`~brainrt_train.train.ROTATE_P`).
    ``context`` may list several scales (``(4, 16)``: a 512 and a 2048 px field for 128 px
    patches). ``final``: once the recipe is chosen on the split, refit the heads on every
    split's patches after every choice (smoothing too) is made (:func:`final_heads`).
    ``tiles``: train on tiles of ``tiles x tiles`` stride-16 output positions (batches of
    ``tile_batch`` tiles) labeled at the split's training positions (:mod:`brainrt_train.tiles`)
    instead of on patches; 0 = per patch. ``redraw`` is moot then (every batch is new tiles).
    """

    class_map: str | ClassMap = "prasad2020"
    patch_size: int = 128
    n_train: int = 2000
    n_val: int = 1000
    n_test: int = 1000
    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-4
    schedule: str = "constant"
    seed: int = 0
    gap: int | None = None
    max_minutes: float | None = None
    z: int | None = None
    dense: bool = True
    progress: bool | None = None
    context: int | tuple = 0
    checkpoint: str | Path | None = None
    init_from: str | Path | None = None
    layout: str = "rows"
    redraw: bool = False
    smooth_choice: bool = True
    int8: bool = True
    border_p: float | None = None
    rotate_p: float | None = None
    final: bool = False
    tiles: int = 0
    tile_batch: int = 8

    def __post_init__(self):
        if not (isinstance(self.tiles, int) and self.tiles >= 0):
            raise param_error("tiles", "train_and_export", "0 (per patch) or outputs per tile side (an int >= 1)",
                              self.tiles)
        for name in ("patch_size", "epochs", "batch_size", "tile_batch", "n_train", "n_val", "n_test"):
            check_positive_int(getattr(self, name), name, "train_and_export")
        if self.patch_size < MIN_WINDOW + NET_STRIDE:
            raise param_error("patch_size", "train_and_export", f"an int >= {MIN_WINDOW + NET_STRIDE}", self.patch_size)
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise param_error("lr", "train_and_export", "a positive float", self.lr)
        for name, default in (("border_p", BORDER_P), ("rotate_p", ROTATE_P)):
            value = default if getattr(self, name) is None else getattr(self, name)
            if not (isinstance(value, (int, float)) and 0 <= value <= 1):
                raise param_error(name, "train_and_export", "a share in [0, 1]", value)
            object.__setattr__(self, name, value)
        try:
            context_scales(self.context)
        except (TypeError, ValueError):
            raise param_error("context", "train_and_export", "0, a power of two >= 2 or a tuple of them",
                              self.context) from None

    @property
    def n_per_class(self) -> dict:
        return {"train": self.n_train, "val": self.n_val, "test": self.n_test}


@dataclass(frozen=True)
class Data:
    """The annotated slices, their class map and their (common) pixel type."""

    slices: list
    cmap: ClassMap
    dtype: np.dtype

    @property
    def dtype_max(self) -> float:
        """What the pixel type's full range maps to 1 (floats are taken as already in [0, 1])."""
        return float(np.iinfo(self.dtype).max) if self.dtype.kind == "u" else 1.0

    @property
    def n_classes(self) -> int:
        return len(self.cmap.names)


@dataclass(frozen=True)
class Samples:
    """The split: ``sets`` (PatchSet per split), the sampler's ``report``, the training regions'
    ``pools`` and ``inputs`` (``(x_unit, y)`` tensors per split)."""

    sets: dict
    report: dict
    pools: list
    inputs: dict


@dataclass(frozen=True)
class Trained:
    """The trained network, its input normalization (``mean``, ``std`` of unit-range inputs),
    the epoch ``history``, training time and the network's test metrics."""

    model: object
    norm: dict
    history: list
    seconds: float
    cnn_metrics: dict


@dataclass(frozen=True)
class Graphs:
    """The exported fp32 graphs: the per-patch export's ``report``, the plain network they were
    exported from (``plain``) and the dense graphs' manifest entry (None without them)."""

    report: dict
    plain: object
    dense: dict | None


@dataclass(frozen=True)
class Heads:
    """The fitted heads (by name), their bundle files, their test metrics and the feature count."""

    heads: dict
    files: dict
    metrics: dict
    n_features: int


def _versions():
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("torch", "onnx", "onnxruntime", "onnxruntime-gpu", "numpy", "scikit-learn", "joblib", "brainrt"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def onnx_features(path, x_norm, batch=256):
    """Features of normalized patches (N, 1, P, P) from an exported ONNX file."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x_norm[i : i + batch]})[0] for i in range(0, len(x_norm), batch)])


def patch_inputs(slices, patches, patch_size, context, dtype_max):
    """Training inputs in [0, 1]: ``(N, 1, P, P)`` patches, plus one pooled field per context scale (channels 1..)."""
    x = [to_unit(extract(slices, patches, patch_size), dtype_max)]
    x += [to_unit(extract_context(slices, patches, patch_size, k), dtype_max) for k in context_scales(context)]
    return torch.cat(x, 1) if len(x) > 1 else x[0]


def _context(opts: TrainOptions, footprint) -> Context | None:
    """The manifest's context part (None without context); one scale writes no ``scales`` (as before)."""
    scales = context_scales(opts.context)
    if not scales:
        return None
    if len(scales) == 1:
        return Context(scales[0], footprint, extra={"note": "the network also sees the footprint (rows cy - F//2 ..) "
                                                             "averaged factor x factor"})
    return Context(scales[-1], footprint, scales=scales,
                   extra={"note": "the network also sees, for each scale k, the k * patch field around the patch's "
                                  "centre averaged k x k; the footprint (rows cy - F//2 ..) is the widest field"})


def _context_record(context):
    """How ``training.context`` records the scales: 0, one factor, or the list."""
    scales = context_scales(context)
    return 0 if not scales else (scales[0] if len(scales) == 1 else list(scales))


def _tissue_quantiles(slices):
    """Intensity quantiles of the training tissue (pixels above each slice's Otsu threshold)."""
    return tissue_quantiles((sl.image, otsu_threshold(sl.image)) for sl in slices)


def _with_smoothing(tmp, manifest, slices, *, layout):
    """Choose the default smoothing on validation pixels, record it (and its table) in the manifest.

    The validation region is re-created from the split the manifest records (seed, gap, fractions).
    """
    t = manifest.training
    regions = split_footprints(slices, n_classes=len(manifest.class_names), patch_size=manifest.patch_size, gap=t.gap,
                               fractions=t.fractions, seed=t.seed, layout=layout)
    best, table = choose_smoothing(Bundle.load(tmp), slices, regions, list(manifest.class_names))
    log.info("smoothing chosen on validation: sigma %.0f um (%s space), macro F1 %.3f", best["sigma_um"],
             best["space"], best["macro_f1"])
    sm = Smoothing(sigma_um=best["sigma_um"], space=best["space"], chosen_on="validation split, macro F1, stride 16",
                   extra={"table": table})
    return seal_bundle(tmp, dataclasses.replace(manifest, smoothing=sm))


def _redraw(slices, pools, n_train, patch_size, context, dtype_max, seed):
    """``epoch -> (x_unit, y)``: a fresh balanced training set from the training regions."""
    def redraw(epoch):
        ps = draw_balanced(pools, n_train, np.random.default_rng([seed, 1, epoch]))
        return patch_inputs(slices, ps, patch_size, context, dtype_max), torch.from_numpy(ps.labels)

    return redraw


def int8_graphs(tmp, slices, sets, *, footprint, dense_info, head, normalization, seed, n=512):
    """int8 copies of the graphs just exported, calibrated on training footprints; their manifest entry.

    The calibration method is the one whose per-patch copy agrees best with fp32 on
    validation footprints (:mod:`brainrt_train.quantize`). Wide footprints get fewer of
    them (at most twice the pixels of ``n`` 512 px footprints: 64 of 2048 px, 1 GB a set).
    """
    from .quantize import quantize_bundle_graphs, training_footprints

    n = max(16, min(n, 2 * n * 512**2 // footprint**2))

    x_cal = training_footprints(slices, sets["train"], footprint=footprint, normalization=normalization, n=n, seed=seed)
    x_chk = training_footprints(slices, sets["val"], footprint=footprint, normalization=normalization, n=n, seed=seed)
    entry = quantize_bundle_graphs(tmp, x_cal, x_chk, head=head, dense=dense_info,
                                   calibration_set=f"{len(x_cal)} of the {len(sets['train'])} training footprints "
                                                   f"(seed {seed}); agreement on {len(x_chk)} validation footprints")
    a = entry["agreement"]
    log.info("int8 graphs (%s calibration): labels %.4f equal to fp32, feature cosine median %.5f, 1st pct %.5f",
             entry["calibration"]["method"], a["label_agreement"], a["cosine_median"], a["cosine_p1"])
    return entry


def torch_features(model, x_unit, norm, batch=256):
    """Last-hidden-layer features of unit-range inputs (the exported graph matches them to 1e-4)."""
    model.eval()
    with torch.no_grad():
        out = [model.features((x_unit[i : i + batch] - norm["mean"]) / norm["std"]) for i in range(0, len(x_unit), batch)]
    return torch.cat(out).numpy()


def _tile_sampler(data: Data, samples: Samples, opts: TrainOptions):
    """The tile sampler over the split's training positions (None when training per patch)."""
    if not opts.tiles:
        return None
    from .tiles import TileSampler, training_labels

    labels = training_labels(lambda k: data.slices[k].labels.shape, samples.pools, len(data.slices))
    return TileSampler([s.image for s in data.slices], labels, n_classes=data.n_classes, patch_size=opts.patch_size,
                       context=opts.context, n_out=opts.tiles, dtype_max=data.dtype_max, border_p=opts.border_p,
                       rotate_p=opts.rotate_p)


def load_data(pairs, opts: TrainOptions) -> Data:
    """Read the ``(image, mask)`` pairs; every image must have the same pixel type."""
    cmap = opts.class_map if isinstance(opts.class_map, ClassMap) else ClassMap.resolve(opts.class_map)
    slices = [load_slice(img, msk, cmap, z=opts.z) for img, msk in pairs]
    check_every_class(slices, cmap)
    dtypes = {s.image.dtype for s in slices}
    if len(dtypes) > 1:
        raise BrainrtError(f"images have different pixel types {sorted(map(str, dtypes))}; convert them to one")
    return Data(slices, cmap, slices[0].image.dtype)


def check_every_class(slices, cmap):
    """The one-line error, before any work, for classes of the class map without a labeled pixel in any mask: a
    bundle would declare areas it never saw (and predict them at random)."""
    seen = np.zeros(len(cmap.names), bool)
    for s in slices:
        seen[np.unique(s.labels[s.labels >= 0])] = True
    if not seen.all():
        missing = ", ".join(f"{n} (code {'/'.join(map(str, cs))})" for n, cs, ok in zip(cmap.names, cmap.codes, seen)
                            if not ok)
        masks = ", ".join(str(s.mask_path) for s in slices)
        raise BrainrtError(f"{masks}: no labeled pixel of {missing}; every class of the class map needs pixels to "
                           "train on: annotate it, or leave it out of the class map (--class-map JSON)")


def sample(data: Data, opts: TrainOptions) -> Samples:
    """Split the slices (:func:`brainrt_train.data.sample_patches`) and cut the inputs of each split."""
    pools = []
    sets, report = sample_patches(data.slices, n_classes=data.n_classes, patch_size=opts.patch_size, seed=opts.seed,
                                  gap=opts.gap, layout=opts.layout, n_per_class=opts.n_per_class, pools=pools)
    names = data.cmap.names
    for s in SPLITS:
        log.info("%s patches per class: %s", s, {names[c]: v["taken"] for c, v in report["per_split"][s].items()})
    inputs = {s: (patch_inputs(data.slices, sets[s], opts.patch_size, opts.context, data.dtype_max),
                  torch.from_numpy(sets[s].labels)) for s in SPLITS}
    return Samples(sets, report, pools, inputs)


def train(data: Data, samples: Samples, opts: TrainOptions) -> Trained:
    """Train the network (or take it from ``opts.init_from``) and score it on the test split."""
    xt = samples.inputs["train"][0]
    norm = {"mean": float(xt.mean()), "std": float(xt.std()) or 1.0}
    if opts.init_from:
        model, ck = load_checkpoint(opts.init_from)
        norm, history, seconds = ck["norm"], ck.get("history", []), float("nan")
        log.info("weights from %s (best of %d epochs), no training", opts.init_from, len(history))
    else:
        redraw = (_redraw(data.slices, samples.pools, opts.n_train, opts.patch_size, opts.context, data.dtype_max,
                          opts.seed) if opts.redraw and not opts.tiles else None)
        model, history, seconds = fit(samples.inputs["train"], samples.inputs["val"], n_classes=data.n_classes,
                                      patch_size=opts.patch_size, norm=norm, epochs=opts.epochs,
                                      batch_size=opts.batch_size, lr=opts.lr, schedule=opts.schedule, seed=opts.seed,
                                      max_minutes=opts.max_minutes, progress=opts.progress, context=opts.context,
                                      checkpoint=opts.checkpoint, redraw=redraw, border_p=opts.border_p,
                                      rotate_p=opts.rotate_p, tiles=_tile_sampler(data, samples, opts),
                                      tile_batch=opts.tile_batch)
    x_test, y_test = samples.inputs["test"]
    cnn = classification_metrics(y_test.numpy(), predict(model, x_test, norm).argmax(1).numpy(), list(data.cmap.names))
    log.info("CNN test accuracy %.3f", cnn["accuracy"])
    return Trained(model, norm, history, seconds, cnn)


def export_graphs(tmp, trained: Trained, opts: TrainOptions) -> Graphs:
    """Export the per-patch graph and (``opts.dense``) the dense graphs into ``tmp``, sharing their weights."""
    report, plain = export_features(trained.model, tmp / "features.onnx", patch_size=opts.patch_size, seed=opts.seed)
    dense = export_dense(plain, tmp, patch_size=opts.patch_size, seed=opts.seed) if opts.dense else None
    share_weights([tmp / "features.onnx"] + [tmp / f for f in (dense or {}).get("files", {}).values()], tmp)
    return Graphs(report, plain, dense)


def save_cnn_head(tmp, plain):
    """The network's own linear head (its last layer) as the bundle's ``cnn`` head; returns its file."""
    fc = plain.head
    (tmp / "heads").mkdir(exist_ok=True)
    LinearHead(fc.weight.detach().numpy(), fc.bias.detach().numpy()).save(tmp / "heads" / "cnn.npz")
    return "heads/cnn.npz"


def fit_bundle_heads(tmp, data: Data, samples: Samples, trained: Trained, graphs: Graphs, opts: TrainOptions) -> Heads:
    """Fit the heads on the network's training features, save them (and the network's own
    linear head) under ``tmp/heads`` and plot the network's test confusion matrix."""
    feats = {s: torch_features(trained.model, samples.inputs[s][0], trained.norm) for s in ("train", "test")}
    heads, metrics = fit_heads(feats["train"], samples.inputs["train"][1].numpy(), feats["test"],
                               samples.inputs["test"][1].numpy(), n_classes=data.n_classes, seed=opts.seed)
    (tmp / "heads").mkdir()
    files = {}
    for name, head in heads.items():
        joblib.dump(head, tmp / "heads" / f"{name}.joblib")
        files[name] = f"heads/{name}.joblib"
    files["cnn"] = save_cnn_head(tmp, graphs.plain)
    cnn = trained.cnn_metrics
    confusion_png(tmp / "confusion.png", cnn["confusion_matrix"], list(data.cmap.names),
                  title=f"CNN, test patches (accuracy {cnn['accuracy']:.3f})")
    return Heads(heads, files, metrics, int(feats["train"].shape[1]))


def build_manifest(data: Data, samples: Samples, trained: Trained, graphs: Graphs, heads: Heads,
                   int8: dict | None, opts: TrainOptions, *, total_seconds: float) -> Manifest:
    """The bundle's manifest (no smoothing chosen yet; its files are hashed when it is sealed)."""
    return bundle_manifest(data, trained, graphs, opts, heads=heads.files, n_features=heads.n_features, int8=int8,
                           training=_training(data, samples, trained, opts, total_seconds=total_seconds),
                           metrics=_metrics(trained.cnn_metrics, heads.metrics))


def bundle_manifest(data: Data, trained: Trained, graphs: Graphs, opts: TrainOptions, *, heads: dict, n_features: int,
                    int8: dict | None, training: Training, metrics: dict, default_head="logreg") -> Manifest:
    """A manifest of the network ``trained`` and its exported ``graphs`` with the given heads (name -> file),
    training record and metrics (no smoothing; its files are hashed when it is sealed)."""
    cmap, fp = data.cmap, graphs.plain.footprint
    r = graphs.report
    return Manifest(
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        classes=tuple(ClassSpec(nm, tuple(cs)) for nm, cs in zip(cmap.names, cmap.codes)),
        class_map=cmap.to_dict(), patch_size=opts.patch_size, context=_context(opts, fp),
        window={"size": window_size(opts.patch_size), "offset": window_offset(opts.patch_size),
                "note": "the network sees the centred window of each patch; patch rows cy - P//2 .. cy - P//2 + P - 1"},
        net_stride=NET_STRIDE, n_features=n_features, normalization=normalization_of(data, trained),
        onnx=OnnxGraph("features.onnx", r["input"], r["output"], r["opset"], ("batch", 1, fp, fp)),
        intensity=Intensity(tuple(float(q) for q in _tissue_quantiles(data.slices))),
        dense_onnx=DenseGraphs.from_dict(graphs.dense) if graphs.dense else None,
        int8=Int8Graphs.from_dict(int8) if int8 else None,
        heads=heads, default_head=default_head, versions=_versions(), training=training, metrics=metrics, files={})


def normalization_of(data: Data, trained: Trained) -> Normalization:
    return Normalization(scale=1.0 / data.dtype_max, mean=trained.norm["mean"], std=trained.norm["std"],
                         trained_dtype=str(data.dtype))


def _training(data: Data, samples: Samples, trained: Trained, opts: TrainOptions, *, total_seconds) -> Training:
    """The manifest's record of the training data, split and options."""
    names, report = data.cmap.names, samples.report
    return Training(
        data=tuple(TrainingSlice(s.image_path.name, s.mask_path.name, s.sha256["image"], s.sha256["mask"],
                                 tuple(s.image.shape)) for s in data.slices),
        split={k: v for k, v in report.items() if k != "per_split"},
        counts={s: {names[c]: v for c, v in report["per_split"][s].items()} for s in SPLITS},
        seed=opts.seed, epochs_run=len(trained.history), epochs=opts.epochs, batch_size=opts.batch_size, lr=opts.lr,
        schedule=opts.schedule, train_seconds=round(trained.seconds, 1), total_seconds=round(total_seconds, 1),
        extra={"context": _context_record(opts.context), "layout": opts.layout, "redraw": bool(opts.redraw),
               "augment": {"border_p": opts.border_p if opts.context else 0.0, "rotate_p": opts.rotate_p},
               **({"tiles": {"outputs_per_side": opts.tiles, "tiles_per_batch": opts.tile_batch}} if opts.tiles else {})})


def _metrics(cnn, head_metrics) -> dict:
    """The manifest's test scores: the network's accuracy and per-class F1, each head's scores."""
    return {"cnn_test_accuracy": cnn["accuracy"], "cnn_per_class_f1": {k: v["f1"] for k, v in cnn["per_class"].items()},
            **{f"{h}_{m}": v for h, ms in head_metrics.items() for m, v in ms.items() if m != "fit_seconds"}}


def final_heads(tmp, manifest: Manifest, data: Data, samples: Samples, trained: Trained, opts: TrainOptions) -> Manifest:
    """Refit the heads on the features of every split's patches (the train, validation and
    test bands: all labeled tissue but the gaps between them) and rewrite the bundle.

    Run after every choice was made on the split (smoothing included); the manifest's
    metrics stay the split run's test figures (the honest estimate) and
    ``training.final`` says that the shipped heads saw every label.
    """
    f_all = np.concatenate([torch_features(trained.model, samples.inputs[s][0], trained.norm) for s in SPLITS])
    y_all = np.concatenate([samples.inputs[s][1].numpy() for s in SPLITS])
    heads, _ = fit_heads(f_all, y_all, f_all[:0], y_all[:0], n_classes=data.n_classes, seed=opts.seed)
    for name, head in heads.items():
        joblib.dump(head, tmp / manifest.heads[name])
    final = {"heads": "refitted on the train, validation and test patches (every labeled band; the split run's "
                      "choices kept)", "n": {s: int(len(samples.inputs[s][1])) for s in SPLITS},
             "metrics": "the split run's (heads fitted on the training band only, scored on test)"}
    training = dataclasses.replace(manifest.training, extra={**manifest.training.extra, "final": final})
    manifest = seal_bundle(tmp, dataclasses.replace(manifest, training=training))
    log.info("final fit: heads refitted on %d patches of every split", len(y_all))
    return manifest


def train_and_export(pairs, out, *, overwrite=False, options: TrainOptions | None = None, record=None,
                     **kw) -> Manifest:
    """Train on ``pairs`` of (image TIFF, mask TIFF) and write a bundle folder at ``out``.

    Options are :class:`TrainOptions`' fields, given as keywords (or as ``options``, which
    keywords then override). Returns the :class:`~brainrt.model.manifest.Manifest`. The bundle
    is built in a temporary folder beside ``out`` and renamed into place only when complete
    and verified. ``record``: the command's run record (:mod:`brainrt.outputs.finished`), kept in the
    manifest as ``run`` (a rerun with the same arguments then leaves the bundle as it is).
    """
    opts = dataclasses.replace(options, **kw) if options is not None else TrainOptions(**kw)
    t_start = time.perf_counter()
    out = Path(out)
    if out.exists() and not overwrite:
        raise refusal(out, "already exists")
    data = load_data(pairs, opts)
    samples = sample(data, opts)
    trained = train(data, samples, opts)
    with atomic_path(out, overwrite=overwrite, is_dir=True) as tmp:
        graphs = export_graphs(tmp, trained, opts)
        heads = fit_bundle_heads(tmp, data, samples, trained, graphs, opts)
        int8 = (int8_graphs(tmp, data.slices, samples.sets, footprint=graphs.plain.footprint, dense_info=graphs.dense,
                             head=heads.heads["logreg"], normalization=normalization_of(data, trained).to_dict(),
                             seed=opts.seed) if opts.int8 else None)
        write_json(tmp / "metrics.json", {"history": trained.history, "cnn": trained.cnn_metrics,
                                          "heads": heads.metrics, "onnx_parity": graphs.report})
        manifest = build_manifest(data, samples, trained, graphs, heads, int8, opts,
                                  total_seconds=time.perf_counter() - t_start)
        if record is not None:
            manifest = dataclasses.replace(manifest, extra={**manifest.extra, "run": record})
        manifest = seal_bundle(tmp, manifest)
        if opts.smooth_choice:
            manifest = _with_smoothing(tmp, manifest, data.slices, layout=opts.layout)
        if opts.final:
            manifest = final_heads(tmp, manifest, data, samples, trained, opts)
    log.info("bundle written to %s", out)
    return manifest
