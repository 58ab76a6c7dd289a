"""Experiment 7: the whole-slice area map (logreg head) against the annotation."""

from __future__ import annotations

import time

import numpy as np

import brainrt
from brainrt.api import pixel_metrics, upsample
from brainrt.plots import confusion_png, overlay_png
from brainrt_train.data import eligible_positions, footprints

from .common import PAPER, fmt, log, shrink_png

KEY = "exp7_scale"


def run(st):
    """Whole-slice area map (logreg head) against the annotation."""
    stride = max(st.args.stride * 2, 32) if st.args.quick else st.args.stride
    t = time.perf_counter()
    grid = brainrt.featurize(st.image, st.bundle, stride=stride)
    t_feat = time.perf_counter() - t
    result = brainrt.classify(grid, st.bundle, head="logreg")
    codes = np.asarray(result.codes, np.int16)
    cell_codes = np.where(result.labels >= 0, codes[np.clip(result.labels, 0, None)], -1).astype(np.int16)
    pred = upsample(cell_codes, stride, st.image.shape)
    regions = _split_regions(st)
    kw = dict(names=st.names, codes_per_class=st.codes)
    res = {"stride": stride, "head": "logreg", "cells": int(grid.valid.sum()), "featurize_seconds": round(t_feat, 1),
           "featurize_method": grid.stats.get("method"), "labeled": pixel_metrics(pred, st.mask, **kw),
           "held_out": pixel_metrics(pred, st.mask, where=regions["test"], **kw),
           "train_region": pixel_metrics(pred, st.mask, where=regions["train"], **kw)}
    st.results[KEY] = res
    log(f"exp7: stride {stride}, {res['cells']} cells ({t_feat:.1f} s featurize); pixel accuracy labeled "
        f"{res['labeled']['pixel_accuracy']:.3f}, held-out {res['held_out']['pixel_accuracy']:.3f}, "
        f"train region {res['train_region']['pixel_accuracy']:.3f}")
    _figures(st, upsample(result.labels, stride, st.image.shape), regions, res)


def _split_regions(st):
    """Pixels covered by the footprints of the split's held-out (test-eligible) and training-eligible centres."""
    cand, _ = eligible_positions(st.slices, n_classes=st.K, patch_size=st.P, gap=st.split["gap"],
                                 fractions=st.split["fractions"], seed=st.seed)
    regions = {}
    for s in ("test", "train"):
        cm = np.zeros(st.image.shape, bool)
        for arrs in cand[s]:
            for arr in arrs:
                cm[arr[:, 1], arr[:, 2]] = True
        regions[s] = footprints(cm, st.P)
    return regions


def _figures(st, labels_full, regions, res):
    """The area map, the annotation, the split regions and the pixel confusion matrix."""
    stride = res["stride"]
    p = st.fig("exp7", "exp7_area_map.png")
    overlay_png(p, st.image, labels_full, st.names, max_side=1400,
                title=f"logreg area map, stride {stride}: pixel accuracy {res['labeled']['pixel_accuracy']:.3f} "
                      f"(labeled), {res['held_out']['pixel_accuracy']:.3f} (held-out)")
    shrink_png(p)
    truth = np.full(st.image.shape, -1, np.int16)
    for c in range(st.K):
        truth[st.class_pixels(c)] = c
    p = st.fig("exp7", "exp7_annotation.png")
    overlay_png(p, st.image, truth, st.names, max_side=1400, title="annotation (classes of the bundle)")
    shrink_png(p)
    p = st.fig("exp7", "exp7_heldout_region.png")
    overlay_png(p, st.image, np.where(regions["test"], 0, np.where(regions["train"], 1, -1)),
                ["held-out (test footprints)", "training footprints"], max_side=1400,
                title="split regions used for the held-out accuracy")
    shrink_png(p)
    p = st.fig("exp7", "exp7_confusion.png")
    confusion_png(p, res["labeled"]["confusion_matrix"], st.names,
                  title=f"pixels vs annotation (accuracy {res['labeled']['pixel_accuracy']:.3f})")
    shrink_png(p)


def report(st, w):
    """Section of experiment 7."""
    e7 = st.results.get(KEY)
    w("## 7. At scale: whole-slice area map")
    w("")
    w(f"Paper: {PAPER['exp7_pixel_accuracy'] * 100:.0f}% pixel accuracy over a whole slice.")
    w("")
    if e7:
        w(f"`brainrt.featurize` (stride {e7['stride']}, {e7['featurize_method']} path, {e7['cells']} tissue cells, "
          f"{e7['featurize_seconds']:.0f} s) + `brainrt.classify` (logreg head); each pixel takes its cell's class; "
          "off-tissue pixels count as wrong. Held-out = pixels covered by the footprints of all test-eligible "
          "centres of the split (re-created with `eligible_positions`); training region likewise for training centres.")
        w("")
        w("| region | pixel accuracy | labeled pixels | unclassified | paper |")
        w("| --- | --- | --- | --- | --- |")
        for key, lab in (("labeled", "all labeled pixels"), ("held_out", "held-out (test footprints)"),
                         ("train_region", "training footprints")):
            m = e7[key]
            w(f"| {lab} | {fmt(m['pixel_accuracy'])} | {m['n_pixels']} | {m['unclassified_pixels']} | "
              f"{PAPER['exp7_pixel_accuracy'] if key == 'labeled' else '—'} |")
        w("")
        acc = e7["labeled"]["pixel_accuracy"]
        w(f"Whole-slice pixel accuracy {acc * 100:.1f}% vs the paper's {PAPER['exp7_pixel_accuracy'] * 100:.0f}% "
          f"({(acc - PAPER['exp7_pixel_accuracy']) * 100:+.1f} points); on the held-out part "
          f"{e7['held_out']['pixel_accuracy'] * 100:.1f}%.")
        w("")
        w("Per-class F1 (all labeled pixels): " + ", ".join(
            f"{n} {v['f1']:.2f}" for n, v in e7["labeled"]["per_class"].items()) + ".")
        w("")
        w(st.figure_links("exp7"))
    w("")
