"""``train-and-export``: from annotated slices to a verified model bundle."""

from __future__ import annotations

import logging
import platform
import time
from pathlib import Path

import numpy as np

from brainrt.bundle import MANIFEST, LinearHead, hash_tree, verify_bundle
from brainrt.errors import BrainrtError, check_positive_int, file_error, param_error
from brainrt.geometry import MIN_WINDOW, NET_STRIDE, window_offset, window_size
from brainrt.io import atomic_path, write_json
from brainrt.manifest import SCHEMA_VERSION, Manifest

from .data import SPLITS, ClassMap, extract, load_slice, sample_patches

log = logging.getLogger("brainrt.train")


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


def _inputs(slices, patches, patch_size, context, dtype_max):
    """Training inputs in [0, 1]: ``(N, 1, P, P)`` patches, or ``(N, 2, P, P)`` with the pooled context."""
    import torch

    from .data import extract_context
    from .train import to_unit

    x = to_unit(extract(slices, patches, patch_size), dtype_max)
    if context:
        x = torch.cat([x, to_unit(extract_context(slices, patches, patch_size, context), dtype_max)], 1)
    return x


def _tissue_quantiles(slices):
    """Intensity quantiles of the training tissue (pixels above each slice's Otsu threshold)."""
    from brainrt.intensity import tissue_quantiles
    from brainrt.tissue import otsu_threshold

    return tissue_quantiles((sl.image, otsu_threshold(sl.image)) for sl in slices)


def _with_smoothing(tmp, manifest, slices, *, layout):
    """Choose the default smoothing on validation pixels, record it (and its table) in the manifest.

    The validation region is re-created from the split the manifest records (seed, gap, fractions).
    """
    import dataclasses

    from brainrt.bundle import Bundle
    from brainrt.manifest import Smoothing

    from .evaluate import choose_smoothing, split_footprints

    t = manifest.training
    regions = split_footprints(slices, n_classes=len(manifest.class_names), patch_size=manifest.patch_size, gap=t.gap,
                               fractions=t.fractions, seed=t.seed, layout=layout)
    best, table = choose_smoothing(Bundle.load(tmp), slices, regions, list(manifest.class_names))
    log.info("smoothing chosen on validation: sigma %.0f um (%s space), macro F1 %.3f", best["sigma_um"],
             best["space"], best["macro_f1"])
    sm = Smoothing(sigma_um=best["sigma_um"], space=best["space"], chosen_on="validation split, macro F1, stride 16",
                   extra={"table": table})
    manifest = dataclasses.replace(manifest, smoothing=sm)
    (tmp / MANIFEST).write_text(manifest.to_json())
    verify_bundle(tmp)
    return manifest


def _redraw(slices, pools, n_train, patch_size, context, dtype_max, seed):
    """``epoch -> (x_unit, y)``: a fresh balanced training set from the training regions."""
    import torch

    from .data import draw_balanced

    def redraw(epoch):
        ps = draw_balanced(pools, n_train, np.random.default_rng([seed, 1, epoch]))
        return _inputs(slices, ps, patch_size, context, dtype_max), torch.from_numpy(ps.labels)

    return redraw


def _int8_graphs(tmp, slices, sets, *, footprint, dense_info, head, normalization, seed, n=512):
    """int8 copies of the graphs just exported, calibrated on training footprints; their manifest entry.

    The calibration method is the one whose per-patch copy agrees best with fp32 on
    validation footprints (:mod:`brainrt_train.quantize`).
    """
    from .quantize import quantize_bundle_graphs, training_footprints

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
    import torch

    model.eval()
    with torch.no_grad():
        out = [model.features((x_unit[i : i + batch] - norm["mean"]) / norm["std"]) for i in range(0, len(x_unit), batch)]
    return torch.cat(out).numpy()


def train_and_export(pairs, out, *, class_map="prasad2020", patch_size=128, n_train=2000, n_val=1000,
                     n_test=1000, epochs=30, batch_size=64, lr=1e-4, schedule="constant", seed=0, k=4,
                     gap=None, max_minutes=None, overwrite=False, z=None, dense=True, progress=None,
                     context=0, checkpoint=None, init_from=None, layout="rows", redraw=False, smooth_choice=True,
                     int8=True, border_p=None, rotate_p=None):
    """Train on ``pairs`` of (image TIFF, mask TIFF) and write a bundle folder at ``out``.

    Returns the :class:`~brainrt.manifest.Manifest`. The bundle is built in a temporary folder beside ``out`` and
    renamed into place only when complete and verified. ``context=4`` adds the context
    branch (see :mod:`brainrt_train.model`). ``checkpoint`` keeps the best weights of a
    long run on disk as training goes; ``init_from`` takes such a file instead of
    training (same data, split and seed), so a run trained elsewhere can be exported here.
    ``layout`` picks the split bands (:func:`brainrt_train.data.split_regions`); ``redraw``
    draws new training positions from the training regions every epoch. ``smooth_choice``
    picks the default map smoothing on the validation split's pixels. ``int8`` adds int8
    copies of the graphs, calibrated on training footprints (:mod:`brainrt_train.quantize`).
    ``border_p`` / ``rotate_p``: shares of samples given a tissue border in their context /
    of batches turned and rescaled (defaults :data:`~brainrt_train.train.BORDER_P`,
    :data:`~brainrt_train.train.ROTATE_P`).
    """
    import torch

    from .export import export_features
    from .heads import fit_heads
    from .train import BORDER_P, ROTATE_P, classification_metrics, fit, load_checkpoint, predict, to_unit
    from brainrt.plots import confusion_png

    t_start = time.perf_counter()
    out = Path(out)
    if out.exists() and not overwrite:
        raise file_error(out, "already exists; pass --overwrite to replace it")
    cmap = ClassMap.resolve(class_map) if not isinstance(class_map, ClassMap) else class_map
    for name, value in (("patch_size", patch_size), ("epochs", epochs), ("batch_size", batch_size)):
        check_positive_int(value, name, "train_and_export")
    if patch_size < MIN_WINDOW + NET_STRIDE:
        raise param_error("patch_size", "train_and_export", f"an int >= {MIN_WINDOW + NET_STRIDE}", patch_size)
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise param_error("lr", "train_and_export", "a positive float", lr)
    border_p = BORDER_P if border_p is None else border_p
    rotate_p = ROTATE_P if rotate_p is None else rotate_p
    for name, value in (("border_p", border_p), ("rotate_p", rotate_p)):
        if not (isinstance(value, (int, float)) and 0 <= value <= 1):
            raise param_error(name, "train_and_export", "a share in [0, 1]", value)
    slices = [load_slice(img, msk, cmap, z=z) for img, msk in pairs]
    dtypes = {s.image.dtype for s in slices}
    if len(dtypes) > 1:
        raise BrainrtError(f"images have different pixel types {sorted(map(str, dtypes))}; convert them to one")
    dtype = slices[0].image.dtype
    dtype_max = float(np.iinfo(dtype).max) if dtype.kind == "u" else 1.0
    n = len(cmap.names)
    pools = []
    sets, report = sample_patches(slices, n_classes=n, patch_size=patch_size, seed=seed, gap=gap, layout=layout,
                                  n_per_class={"train": n_train, "val": n_val, "test": n_test}, pools=pools)
    for s in SPLITS:
        log.info("%s patches per class: %s", s, {cmap.names[c]: v["taken"] for c, v in report["per_split"][s].items()})
    data = {s: (_inputs(slices, sets[s], patch_size, context, dtype_max), torch.from_numpy(sets[s].labels))
            for s in SPLITS}
    xt = data["train"][0]
    norm = {"mean": float(xt.mean()), "std": float(xt.std()) or 1.0}
    if init_from:
        model, ck = load_checkpoint(init_from)
        norm, history, train_seconds = ck["norm"], ck.get("history", []), float("nan")
        log.info("weights from %s (best of %d epochs), no training", init_from, len(history))
    else:
        redraw_fn = _redraw(slices, pools, n_train, patch_size, context, dtype_max, seed) if redraw else None
        model, history, train_seconds = fit(data["train"], data["val"], n_classes=n, patch_size=patch_size, norm=norm,
                                            epochs=epochs, batch_size=batch_size, lr=lr, schedule=schedule, seed=seed,
                                            max_minutes=max_minutes, progress=progress, context=context,
                                            checkpoint=checkpoint, redraw=redraw_fn, border_p=border_p,
                                            rotate_p=rotate_p)
    cnn_pred = predict(model, data["test"][0], norm).argmax(1).numpy()
    y_test = data["test"][1].numpy()
    metrics = {"cnn": classification_metrics(y_test, cnn_pred, list(cmap.names))}
    log.info("CNN test accuracy %.3f", metrics["cnn"]["accuracy"])

    with atomic_path(out, overwrite=overwrite, is_dir=True) as tmp:
        onnx_report, plain = export_features(model, tmp / "features.onnx", patch_size=patch_size, seed=seed)
        feats = {s: torch_features(model, data[s][0], norm) for s in SPLITS}
        heads, head_metrics = fit_heads(feats["train"], data["train"][1].numpy(), feats["test"], y_test,
                                        n_classes=n, k=k, seed=seed)
        metrics["heads"] = head_metrics
        (tmp / "heads").mkdir()
        import joblib

        head_files = {}
        for name, head in heads.items():
            joblib.dump(head, tmp / "heads" / f"{name}.joblib")
            head_files[name] = f"heads/{name}.joblib"
        LinearHead(plain.head.weight.detach().numpy(), plain.head.bias.detach().numpy()).save(tmp / "heads" / "cnn.npz")
        head_files["cnn"] = "heads/cnn.npz"
        confusion_png(tmp / "confusion.png", metrics["cnn"]["confusion_matrix"], list(cmap.names),
                      title=f"CNN, test patches (accuracy {metrics['cnn']['accuracy']:.3f})")
        dense_info = None
        if dense:
            from .export import export_dense

            dense_info = export_dense(plain, tmp, patch_size=patch_size, seed=seed)
        from .export import share_weights

        share_weights([tmp / "features.onnx"] + [tmp / f for f in (dense_info or {}).get("files", {}).values()], tmp)
        normalization = {"scale": 1.0 / dtype_max, "mean": norm["mean"], "std": norm["std"]}
        int8_info = (_int8_graphs(tmp, slices, sets, footprint=plain.footprint, dense_info=dense_info,
                                  head=heads["logreg"], normalization=normalization, seed=seed) if int8 else None)
        write_json(tmp / "metrics.json", {"history": history, **metrics, "onnx_parity": onnx_report})
        manifest = Manifest.from_dict({
            "schema_version": SCHEMA_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "classes": [{"name": nm, "codes": list(cs)} for nm, cs in zip(cmap.names, cmap.codes)],
            "class_map": cmap.to_dict(),
            "patch_size": patch_size,
            "context": ({"factor": context, "footprint": plain.footprint,
                         "note": "the network also sees the footprint (rows cy - F//2 ..) averaged factor x factor"}
                        if context else None),
            "window": {"size": window_size(patch_size), "offset": window_offset(patch_size),
                       "note": "the network sees the centred window of each patch; patch rows cy - P//2 .. cy - P//2 + P - 1"},
            "net_stride": NET_STRIDE,
            "n_features": int(feats["train"].shape[1]),
            "normalization": {**normalization, "formula": "(pixel * scale - mean) / std", "trained_dtype": str(dtype)},
            "onnx": {"file": "features.onnx", "input": onnx_report["input"], "output": onnx_report["output"],
                     "opset": onnx_report["opset"], "input_shape": ["batch", 1, plain.footprint, plain.footprint]},
            "intensity": {"quantiles": [float(q) for q in _tissue_quantiles(slices)]},
            "dense_onnx": dense_info,
            "int8": int8_info,
            "heads": head_files,
            "default_head": "logreg",
            "versions": _versions(),
            "training": {
                "data": [{"image": s.image_path.name, "mask": s.mask_path.name, "image_sha256": s.sha256["image"],
                          "mask_sha256": s.sha256["mask"], "shape": list(s.image.shape)} for s in slices],
                "split": {k2: v for k2, v in report.items() if k2 != "per_split"},
                "counts": {s: {cmap.names[c]: v for c, v in report["per_split"][s].items()} for s in SPLITS},
                "seed": seed, "epochs_run": len(history), "epochs": epochs, "batch_size": batch_size, "lr": lr,
                "schedule": schedule, "context": context, "layout": layout, "redraw": bool(redraw),
                "augment": {"border_p": border_p if context else 0.0, "rotate_p": rotate_p},
                "train_seconds": round(train_seconds, 1),
                "total_seconds": round(time.perf_counter() - t_start, 1),
            },
            "metrics": {"cnn_test_accuracy": metrics["cnn"]["accuracy"],
                        "cnn_per_class_f1": {k2: v["f1"] for k2, v in metrics["cnn"]["per_class"].items()},
                        **{f"{h}_{m}": v for h, ms in head_metrics.items() for m, v in ms.items() if m != "fit_seconds"}},
            "files": hash_tree(tmp),
        })
        (tmp / MANIFEST).write_text(manifest.to_json())
        verify_bundle(tmp)
        if smooth_choice:
            manifest = _with_smoothing(tmp, manifest, slices, layout=layout)
    log.info("bundle written to %s", out)
    return manifest
