"""Setup of a study: the bundle and the slice, the bundle's own split re-created, the features
of its train and test patches by every extractor."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from brainrt.bundle.load import Bundle
from brainrt.sources import read_image as read_tiff
from brainrt.engine.intensity import intensity_scale
from brainrt.engine.plan import DEFAULT_PIXEL_SIZE_UM
from brainrt_train.data import ClassMap, load_slice, sample_patches

from . import features as sf
from .common import features_of, log, per_class_subset

SPLITS = ("train", "val", "test")


def setup(st):
    """Load the bundle and the slice; re-create the bundle's split and cut out the patches."""
    same_data = _load(st)
    tr = st.bundle.manifest.training
    st.split = {"gap": tr.gap, "fractions": tr.fractions, "n_per_class": {s: tr.asked(s) for s in SPLITS}}
    taken = _recreate_split(st)
    m, b = st.bundle.manifest, st.bundle
    st.results["setup"] = {
        "training": _training_record(st.args.model, tr),
        "bundle": str(st.args.model), "model_id": b.model_id, "classes": st.names, "codes": st.codes,
        "patch_size": st.P, "footprint": st.F, "context": m.context.to_dict() if m.context else None,
        "normalization": b.normalization.to_dict(), "seed": st.seed, "gap": tr.gap,
        "fractions": list(tr.fractions), "image": str(st.args.image), "mask": str(st.args.mask),
        "image_sha256_matches_bundle": same_data["image"], "mask_sha256_matches_bundle": same_data["mask"],
        "split_counts_recreated": taken, "split_counts_manifest": {s: tr.taken(s) for s in SPLITS},
        "split_matches_manifest": taken == {s: tr.taken(s) for s in SPLITS},
        "used_per_split": {s: int(len(st.y[s])) for s in ("train", "test")},
        "used_per_class": {s: {st.names[c]: int((st.y[s] == c).sum()) for c in range(st.K)} for s in ("train", "test")},
        "quick": bool(st.args.quick), "threads": st.args.threads or os.cpu_count(),
        "bundle_metrics": m.metrics,
    }
    log(f"bundle {b.model_id}: {st.K} classes {st.names}, P={st.P}"
        + (f", context branch: footprint {st.F} px" if m.context else "") + f"; using {len(st.y['train'])} train / "
        f"{len(st.y['test'])} test patches")


def _load(st):
    """The bundle and the slice into ``st``; whether the slice is the bundle's training data (sha256)."""
    a = st.args
    if a.threads:  # the runtime's gathers (numba) too
        import numba

        numba.set_num_threads(max(1, min(a.threads, numba.config.NUMBA_NUM_THREADS)))
    st.bundle = b = Bundle.load(a.model, threads=a.threads)
    m = b.manifest
    st.names, st.P, st.F, st.codes, st.seed = list(b.class_names), b.patch_size, m.footprint, m.codes_per_class, \
        int(m.training.seed)
    cmap = ClassMap.from_dict(m.class_map, source=f"{a.model}/manifest.json")
    if len(m.training.data) != 1:
        raise SystemExit(f"the bundle was trained on {len(m.training.data)} slices; this tool handles one-slice bundles")
    sl = load_slice(a.image, a.mask, cmap)
    st.slices, st.image = [sl], sl.image
    st.mask, _ = read_tiff(a.mask, what="label mask")
    st.pixel_size = a.pixel_size or read_tiff(a.image)[1] or DEFAULT_PIXEL_SIZE_UM
    st.scale = intensity_scale(st.image.dtype)
    d0 = m.training.data[0]
    same_data = {"image": sl.sha256["image"] == d0.image_sha256, "mask": sl.sha256["mask"] == d0.mask_sha256}
    if not all(same_data.values()):
        st.notes.append("The image/mask given differ from the bundle's training data (sha256), so the "
                        "re-created patches are NOT the bundle's.")
    return same_data


def _recreate_split(st):
    """The bundle's train/test patches (capped per class in quick mode) into ``st``; counts taken per split."""
    a, sp = st.args, st.split
    t = time.perf_counter()
    sets, report = sample_patches(st.slices, n_classes=st.K, patch_size=st.P, n_per_class=sp["n_per_class"],
                                  gap=sp["gap"], fractions=sp["fractions"], seed=st.seed)
    taken = {s: {st.names[c]: v["taken"] for c, v in report["per_split"][s].items()} for s in SPLITS}
    log(f"re-created the split in {time.perf_counter() - t:.1f} s: test per class {taken['test']}")
    limits = {"train": a.max_train_per_class or (40 if a.quick else None),
              "test": a.max_test_per_class or (20 if a.quick else None)}
    for s in ("train", "test"):
        ps = sets[s]
        idx = np.arange(len(ps)) if limits[s] is None else np.sort(per_class_subset(ps.labels, limits[s], st.K))
        st.centres[s] = np.asarray(ps.centres[idx], np.int64)  # one slice: slice_idx is 0
        st.y[s] = ps.labels[idx].astype(np.int64)
    return taken


def _training_record(model, tr):
    """How the bundle was trained (manifest), with the last training and best validation accuracy (metrics.json)."""
    hist = []
    mpath = Path(model) / "metrics.json"
    if mpath.is_file():
        hist = json.loads(mpath.read_text()).get("history", [])
    training = {"epochs_run": tr.epochs_run, "epochs": tr.epochs, "lr": tr.lr, "schedule": tr.schedule}
    if hist:
        training.update(final_train_accuracy=hist[-1].get("train_acc"),
                        best_val_accuracy=max(h.get("val_acc", 0) for h in hist))
    return training


def build_extractors(st):
    import torch

    torch.set_num_threads(st.args.threads or os.cpu_count() or 1)
    st.extractors["trained"] = sf.trained_extractor(st.bundle)
    st.sides["trained"] = st.F  # the network's own input: the patch, or its context footprint
    st.extractors["random"] = sf.random_cnn_extractor(st.K, st.P, st.bundle.normalization.to_dict(), seed=st.args.baseline_seed,
                                                      workdir=None if st.args.quick else st.workdir,
                                                      threads=st.args.threads)
    st.extractors["handcrafted"] = sf.handcrafted_extractor()
    if st.args.resnet18_weights:
        st.extractors["resnet18"] = sf.resnet18_extractor(st.args.resnet18_weights, patch_size=st.P,
                                                          workdir=None if st.args.quick else st.workdir,
                                                          threads=st.args.threads)
    else:
        st.notes.append("ImageNet ResNet-18 baseline skipped: no --resnet18-weights given (torchvision is not "
                        "installed and nothing is downloaded).")


def compute_features(st):
    """Features of the train and test patches for every feature type."""
    info = {}
    for kind in st.extractors:
        t = time.perf_counter()
        st.feats[kind] = {s: features_of(st, kind, st.centres[s]) for s in ("train", "test")}
        dt = time.perf_counter() - t
        n = sum(len(v) for v in st.feats[kind].values())
        info[kind] = {"dim": int(st.feats[kind]["train"].shape[1]), "seconds": round(dt, 1),
                      "patches_per_s": round(n / dt, 1) if dt else None}
        log(f"features {kind}: {n} patches, {info[kind]['dim']} dims, {dt:.1f} s")
    st.results["features"] = info
