"""Map accuracy of bundles on their own test split: patches, pixels, smoothing, a simulated slice change.

For each bundle (trained on the slice given here), this recomputes the bundle's split
(bands, gaps, seed from its manifest) and reports on the test split:

- patch accuracy and per-class F1 of the CNN's own output layer and of every head, on
  the bundle's test patches, featurized by the runtime;
- pixel accuracy and per-class F1 of the area map at stride 16 and 4 over the test
  split's footprints, raw and smoothed with the bundle's default (chosen on validation);
- the same maps on a re-rendered slice (256-level dithering, gamma, contrast, blur; see
  ``brainrt_train.evaluate.simulate_slice_change``), with and without standardization;

each beside the paper's figures; and the **hypothalamic end**: the share of slice309's
unlabeled tissue left of the annotated rectangle (x < 905, the slab's hypothalamic end;
cortex and striatum lie at the other end) that the default map (stride 16, smoothed)
calls Ctx or Str, with a picture. Writes ``results.json``, ``REPORT.md`` and PNGs.

``--split val`` scores the validation split instead (patches and maps, no slice change):
the figures to choose a model on, never the test split's.

    python tools/accuracy_report.py --model models/slice309-paper6 [--model OTHER] \\
        --image ../shared/data/slice309.tif --mask ../shared/data/slice309_areas.tif -o docs/accuracy
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

PAPER = {"patch_accuracy": 0.889, "map_accuracy_at_scale": 0.80}


def load(model, image_path, mask_path):
    import brainrt
    from brainrt_train.data import ClassMap, load_slice

    bundle = brainrt.Bundle.load(model)
    m = bundle.manifest
    cmap = ClassMap.from_dict(m.class_map)
    sl = load_slice(image_path, mask_path, cmap)
    return bundle, cmap, sl


def split_of(bundle, sl, n_classes):
    """The bundle's split regions and test/val patches on this slice, from its manifest."""
    from brainrt_train.data import sample_patches
    from brainrt_train.evaluate import split_footprints

    t = bundle.manifest.training
    layout = str(t.split["layout"][0].get("layout", "rows")).split()[0]
    layout = layout if layout in ("rows", "interior") else "rows"
    kw = dict(n_classes=n_classes, patch_size=bundle.patch_size, gap=t.gap, fractions=t.fractions, seed=t.seed)
    regions = split_footprints([sl], layout=layout, **kw)
    sets, _ = sample_patches([sl], n_per_class={s: t.asked(s) for s in ("train", "val", "test")}, layout=layout,
                             **{k: v for k, v in kw.items() if k != "fractions"}, fractions=t.fractions)
    return regions, sets, layout


def patch_features(bundle, image, centres):
    """Runtime features of the footprints centred on ``centres`` (standardized like the runtime does)."""
    from brainrt.engine.plan import make_plan
    from brainrt.engine.tiling import PAD_REFLECT, patches_kernel

    plan = make_plan(image, bundle, stride=16, tissue="all")
    pred = bundle.predictor("patch")
    fp = pred.footprint
    out = []
    for a in range(0, len(centres), 64):
        buf = np.empty((min(64, len(centres) - a), 1, fp, fp), np.float32)
        patches_kernel(plan.image, centres[a : a + 64], buf, PAD_REFLECT, plan.scale, pred.mean, pred.std, 0.0)
        out.append(pred(buf))
    return np.concatenate(out)


def patch_scores(bundle, sl, sets, names, split="test"):
    from brainrt_train.train import classification_metrics

    f = patch_features(bundle, sl.image, sets[split].centres)
    y = sets[split].labels
    out = {}
    for head in ["cnn", "logreg", "linsvm", "rbfsvm"]:
        if head not in bundle.manifest.heads:
            continue
        model = bundle.head(head)
        pred = model.predict(f)
        m = classification_metrics(y, pred, names)
        out[head] = {"accuracy": m["accuracy"], "f1": {n: v["f1"] for n, v in m["per_class"].items()},
                     "confusion_matrix": m["confusion_matrix"]}
    return out


def map_scores(bundle, image, sl, regions, names, *, strides, standardize=True):
    from brainrt_train.evaluate import class_probabilities, labels_of, pixel_scores

    sm = bundle.manifest.smoothing
    sigma_um, space = (sm.sigma_um, sm.space) if sm else (0.0, "log")
    out, maps = {}, {}
    for stride in strides:
        t = time.perf_counter()
        prob, valid = class_probabilities(bundle, image, stride=stride, standardize=standardize)
        secs = time.perf_counter() - t
        px = 1.17
        for name, sig in (("raw", 0.0), ("smoothed", sigma_um)):
            pred = labels_of(prob, valid, stride=stride, shape=sl.labels.shape, sigma_cells=sig / (px * stride),
                             space=space)
            for split in ("val", "test"):
                sc = pixel_scores(pred, sl.labels, regions[split][0], names)
                out[f"stride{stride}_{name}_{split}"] = {
                    "pixel_accuracy": sc["pixel_accuracy"], "macro_f1": sc["macro_f1"],
                    "f1": {n: v["f1"] for n, v in sc["per_class"].items()},
                    "recall": {n: v["recall"] for n, v in sc["per_class"].items()}}
            maps[(stride, name)] = pred
        out[f"stride{stride}_seconds"] = round(secs, 1)
    out["smoothing"] = {"sigma_um": sigma_um, "space": space}
    return out, maps


#: slice309's annotated rectangle starts at this column; left of it lies the hypothalamic end.
HYPO_END_X = 905


def hypothalamic_end(pred, labels, names, *, x_max=HYPO_END_X):
    """Shares of the unlabeled tissue at ``x < x_max`` (pixels the map covers, no label) called each class."""
    region = (pred[:, :x_max] >= 0) & (labels[:, :x_max] < 0)
    called = pred[:, :x_max][region]
    share = {n: float(np.mean(called == i)) if called.size else float("nan") for i, n in enumerate(names)}
    return {"x_max": x_max, "n_pixels": int(called.size), "share": share,
            "ctx_or_str": share.get("Ctx", 0.0) + share.get("Str", 0.0)}


def report_one(model, args):
    from brainrt_train.evaluate import simulate_slice_change

    bundle, cmap, sl = load(model, args.image, args.mask)
    names = list(cmap.names)
    regions, sets, layout = split_of(bundle, sl, len(names))
    ctx = bundle.manifest.context
    res = {"model": str(model), "split": args.split, "context": list(ctx.factors) if ctx else 0,
           "layout": layout, "patch": patch_scores(bundle, sl, sets, names, args.split)}
    res["maps"], maps = map_scores(bundle, sl.image, sl, regions, names, strides=args.strides)
    res["hypothalamic_end"] = hypothalamic_end(maps[(16, "smoothed")], sl.labels, names)
    if args.split != "test":
        return res, maps, sl, regions
    changed = simulate_slice_change(sl.image, seed=0)
    res["changed"], _ = map_scores(bundle, changed, sl, regions, names, strides=(16,))
    res["changed_no_standardization"], _ = map_scores(bundle, changed, sl, regions, names, strides=(16,),
                                                      standardize=False)
    res["changed_patch"] = _changed_patch(bundle, changed, sets, names)
    return res, maps, sl, regions


def _changed_patch(bundle, changed, sets, names):
    from brainrt_train.train import classification_metrics

    f = patch_features(bundle, changed, sets["test"].centres)
    y = sets["test"].labels
    best = bundle.manifest.default_head
    return {h: classification_metrics(y, bundle.head(h).predict(f), names)["accuracy"] for h in ("cnn", best)}


def pictures(out, name, maps, sl, regions, names, split="test"):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    cmap = ListedColormap(plt.get_cmap("tab10").colors[: len(names)])
    fig, axes = plt.subplots(3, 1, figsize=(14, 9))
    axes[0].imshow(np.ma.masked_less(sl.labels, 0), cmap=cmap, vmin=0, vmax=len(names) - 1, interpolation="nearest")
    axes[0].set_title(f"annotation (revision 2); {split} split footprints outlined")
    for ax, key, title in ((axes[1], (16, "raw"), "stride 16, raw"), (axes[2], (16, "smoothed"), "stride 16, smoothed")):
        ax.imshow(np.ma.masked_less(maps[key], 0), cmap=cmap, vmin=0, vmax=len(names) - 1, interpolation="nearest")
        ax.set_title(f"{name}: area map, {title}")
    for ax in axes:
        ax.contour(regions[split][0], levels=[0.5], colors="k", linewidths=0.6)
        ax.set_axis_off()
    handles = [plt.Rectangle((0, 0), 1, 1, color=cmap(i)) for i in range(len(names))]
    fig.legend(handles, names, loc="lower center", ncol=len(names))
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    path = out / f"{name}_maps.png"
    fig.savefig(path, dpi=70)
    plt.close(fig)
    return path.name


def end_picture(out, name, pred, sl, names, end):
    """The slab's hypothalamic end (x < 905 and a margin): image and default map side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    cmap = ListedColormap(plt.get_cmap("tab10").colors[: len(names)])
    x1 = min(sl.image.shape[1], end["x_max"] + 300)
    fig, axes = plt.subplots(1, 2, figsize=(10, 5.5))
    axes[0].imshow(sl.image[:, :x1], cmap="gray", interpolation="nearest")
    axes[0].set_title("slice309, hypothalamic end")
    axes[1].imshow(np.ma.masked_less(pred[:, :x1], 0), cmap=cmap, vmin=0, vmax=len(names) - 1, interpolation="nearest")
    axes[1].set_title(f"{name}: stride 16 smoothed; x < {end['x_max']}: {100 * end['ctx_or_str']:.0f}% Ctx or Str")
    for ax in axes:
        ax.axvline(end["x_max"], color="w", lw=1, ls="--")
        ax.set_axis_off()
    handles = [plt.Rectangle((0, 0), 1, 1, color=cmap(i)) for i in range(len(names))]
    fig.legend(handles, names, loc="lower center", ncol=len(names))
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    path = out / f"{name}_hypothalamic_end.png"
    fig.savefig(path, dpi=70)
    plt.close(fig)
    return path.name


def markdown(results, split="test"):
    lines = [f"# Area-map accuracy on slice309 (annotation revision 2), {split} split", "",
             f"Generated by `tools/accuracy_report.py`. {split.capitalize()} pixels: the union of the footprints of "
             f"every eligible {split} centre (the split's bands, a patch apart from any training footprint). Smoothing: the bundle's "
             "default sigma, chosen on the validation split (macro F1). Paper: 0.889 patch test accuracy (6 areas), "
             "0.80 over a whole slice.", ""]
    for name, r in results.items():
        p, m, c = r["patch"], r["maps"], r.get("changed", {})
        sm = m["smoothing"]
        lines += [f"## {name} (context factor {r['context']}, split layout {r['layout']})", "",
                  "| measure | value | paper |", "|---|---|---|"]
        for h, v in p.items():
            lines.append(f"| patch accuracy, {h} | {v['accuracy']:.3f} | 0.889 |")
        for s in [k for k in m if k.endswith(f"_{split}")]:
            lines.append(f"| pixel accuracy, {s.replace('_', ' ')} | {m[s]['pixel_accuracy']:.3f} | 0.80 (at scale) |")
        for s in [k for k in m if k.endswith(f"_{split}")]:
            lines.append(f"| pixel macro F1, {s.replace('_', ' ')} | {m[s]['macro_f1']:.3f} | |")
        lines.append(f"| smoothing default | sigma {sm['sigma_um']:.0f} um, {sm['space']} space | |")
        e = r["hypothalamic_end"]
        lines.append(f"| hypothalamic end (unlabeled tissue, x < {e['x_max']}) called Ctx or Str | "
                     f"{e['ctx_or_str']:.3f} (HypoTh {e['share'].get('HypoTh', 0):.3f}) | target <= 0.10 |")
        for s in [k for k in c if k.endswith("_test")]:
            d = c[s]["pixel_accuracy"] - m[s]["pixel_accuracy"]
            lines.append(f"| simulated slice change, {s.replace('_', ' ')} | {c[s]['pixel_accuracy']:.3f} "
                         f"({d:+.3f}) | |")
        nc = r.get("changed_no_standardization", {})
        for s in [k for k in nc if k.endswith("_test")]:
            lines.append(f"| simulated change without standardization, {s.replace('_', ' ')} | "
                         f"{nc[s]['pixel_accuracy']:.3f} | |")
        for h, v in r.get("changed_patch", {}).items():
            lines.append(f"| simulated change, patch accuracy {h} | {v:.3f} | |")
        lines += ["", f"Per-class F1 ({split}):", "", "| | " + " | ".join(next(iter(p.values()))["f1"]) + " |",
                  "|---" * (1 + len(next(iter(p.values()))["f1"])) + "|"]
        for h, v in p.items():
            lines.append(f"| patches, {h} | " + " | ".join(f"{x:.2f}" for x in v["f1"].values()) + " |")
        for s in [k for k in m if k.endswith(f"_{split}") and k.startswith("stride")]:
            lines.append(f"| pixels, {s.replace('_', ' ')} | " + " | ".join(f"{x:.2f}" for x in m[s]["f1"].values()) + " |")
        lines += ["", f"![maps]({r['png']})", "", f"![hypothalamic end]({r['end_png']})", ""]
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", action="append", required=True)
    ap.add_argument("--name", action="append", default=None, help="A short name per --model.")
    ap.add_argument("--image", required=True)
    ap.add_argument("--mask", required=True)
    ap.add_argument("--strides", type=int, nargs="+", default=[16, 4])
    ap.add_argument("--split", choices=["test", "val"], default="test",
                    help="Score the test split (the report) or the validation split (to choose on).")
    ap.add_argument("-o", "--out", required=True)
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = args.name or [Path(m).name for m in args.model]
    results = {}
    for model, name in zip(args.model, names):
        t = time.perf_counter()
        r, maps, sl, regions = report_one(model, args)
        names_ = list(r["patch"]["cnn"]["f1"])
        r["png"] = pictures(out, name, maps, sl, regions, names_, args.split)
        r["end_png"] = end_picture(out, name, maps[(16, "smoothed")], sl, names_, r["hypothalamic_end"])
        r["seconds"] = round(time.perf_counter() - t, 1)
        results[name] = r
        print(json.dumps({name: {"patch": {h: v["accuracy"] for h, v in r["patch"].items()},
                                 "maps": {k: v["pixel_accuracy"] for k, v in r["maps"].items() if isinstance(v, dict)
                                          and "pixel_accuracy" in v},
                                 "hypothalamic_end_ctx_or_str": r["hypothalamic_end"]["ctx_or_str"]}}, indent=1))
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "REPORT.md").write_text(markdown(results, args.split))
    print(f"wrote {out / 'REPORT.md'}")


if __name__ == "__main__":
    main()
