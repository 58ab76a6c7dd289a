"""Context heads on a bundle's stride-16 features: candidates scored on validation, one chosen, optionally shipped.

    python tools/context_heads.py --model models/slice309-paper6 --image ../shared/data/slice309.tif \\
        --mask ../shared/data/slice309_areas.tif --features /tmp/heads/s309_s16.npz -o /tmp/heads/run \\
        [--write models/slice309-paper6 [--default]]

For every candidate neighbourhood (:data:`brainrt_train.ctxhead.CANDIDATES`) and
regularization ``C`` it fits a class-balanced logistic regression on the bundle's
training cells (the split its manifest records) and reports, on the validation and the
test region, pixel accuracy / macro F1 / per-class F1 of the raw map and of the map
smoothed with the bundle's default, plus the hypothalamic-end measure (share of the
tissue at x < 905 called each class). The bundle's own default head is the baseline.
The choice reads validation only (:func:`brainrt_train.ctxhead.choose`); ``--write``
fits nothing new: it stores the chosen head into that bundle (copy, re-hash, verify,
rename), as default head with ``--default`` (only when it beats the baseline's
validation macro F1). Writes ``results.json``, ``REPORT.md`` and ``maps.png``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "runtime"), str(ROOT / "trainer")]
#: The classes the hypothalamic-end measure (slice309, x < 905) is reported for.
HYPO_END = {"Ctx", "Str", "HypoTh"}


def grid_features(bundle, image, cache, stride):
    """(features, valid, pixel size) of the image at ``stride``, from ``cache`` (.npz) when it is this model's."""
    import brainrt

    if cache and Path(cache).is_file():
        z = np.load(cache)
        if str(z["model_id"]) == bundle.model_id and z["features"].shape[:2] == z["valid"].shape:
            return z["features"], z["valid"], float(z["pixel_size_um"])
    g = brainrt.featurize(image, bundle, stride=stride)
    if cache:
        np.savez(cache, features=np.asarray(g.features), valid=g.valid, model_id=bundle.model_id,
                 pixel_size_um=g.pixel_size_um)
    return np.asarray(g.features), g.valid, g.pixel_size_um


def regions_of(bundle, sl):
    from brainrt_train.evaluate import split_footprints

    t = bundle.manifest.training
    return split_footprints([sl], n_classes=len(bundle.class_names), patch_size=bundle.patch_size, gap=t.gap,
                            fractions=t.fractions, seed=t.seed, layout=t.extra.get("layout", "rows"))


def run(args):
    import brainrt
    from brainrt.heads import apply_rows, per_class
    from brainrt_train import ctxhead as ch
    from brainrt_train.data import ClassMap, load_slice

    bundle = brainrt.Bundle.load(args.model)
    m, names = bundle.manifest, list(bundle.class_names)
    sl = load_slice(args.image, args.mask, ClassMap.from_dict(m.class_map))
    feats, valid, px = grid_features(bundle, args.image, args.features, args.stride)
    regions = regions_of(bundle, sl)
    ts, tfeats, tvalid, train = train_cells(args, bundle, sl, feats, valid, regions)
    sm = m.smoothing
    smooth_cells = (sm.sigma_um if sm else 0.0) / (px * args.stride)
    stage1 = bundle.head(args.stage1)
    K = len(names)
    base = apply_rows(feats, valid, per_class(stage1, stage1.predict_proba, K, 0.0),
                      np.zeros(valid.shape + (K,), np.float32))
    table = [{"name": f"shipped {args.stage1}", "scales": [], "C": None, "baseline": True,
              **ch.map_scores(base, valid, sl, regions, names, stride=args.stride, smooth_cells=smooth_cells)}]
    heads, probs = {}, {table[0]["name"]: base}
    for cname in args.candidates:
        spec = ch.CANDIDATES[cname]
        for C in args.C:
            t = time.perf_counter()
            head = ch.fit_candidate(tfeats, tvalid, train, ch.scales_of(spec), stage1, C=C, pixel_size_um=px,
                                    stride=ts, n_classes=K, balanced=not args.unbalanced)
            prob = ch.head_probabilities(head, feats, valid, pixel_size_um=px, stride=args.stride)
            row = {"name": cname, "scales": [list(s) for s in spec], "C": C, "train": args.train, "train_stride": ts,
                   "balanced": not args.unbalanced,
                   **ch.map_scores(prob, valid, sl, regions, names, stride=args.stride, smooth_cells=smooth_cells),
                   "seconds": round(time.perf_counter() - t, 1)}
            table.append(row)
            heads[(cname, C)], probs[f"{cname} C={C}"] = head, prob
            print(f"{cname:10s} C={C:<5} val {row['smoothed_val']['macro_f1']:.3f} / {row['raw_val']['macro_f1']:.3f}"
                  + (f"  end Ctx+Str {row['smoothed_end']['Ctx+Str']:.2f}" if HYPO_END <= set(names) else "")
                  + f"  ({row['seconds']} s)", flush=True)
    best = ch.choose([r for r in table if not r.get("baseline")])  # validation scores only
    best["chosen"] = True
    return bundle, sl, valid, smooth_cells, table, best, heads[(best["name"], best["C"])], probs


def train_cells(args, bundle, sl, feats, valid, regions):
    """(stride, features, valid, (rows, cols, classes)) of the cells the heads learn from: the training
    split's only (interior centres or the whole training region), on ``--train-stride``'s grid."""
    from brainrt_train import ctxhead as ch

    ts = args.train_stride or args.stride  # heads may learn from a finer grid: sigmas are in um
    tfeats, tvalid = (feats, valid) if ts == args.stride else grid_features(bundle, args.image, args.train_features,
                                                                            ts)[:2]
    train = (ch.interior_train_cells(bundle, sl, tvalid, stride=ts) if args.train == "interior"
             else ch.split_cells(sl.labels, tvalid, regions, stride=ts)["train"])
    return ts, tfeats, tvalid, train


def _fmt_row(r, key, names):
    s = r[key]
    return (f"| {r['name']} | {r['C'] if r['C'] is not None else ''} | {s['pixel_accuracy']:.3f} | {s['macro_f1']:.3f} | "
            + " | ".join(f"{s['f1'][n]:.2f}" for n in names) + " |")


def report(table, best, names, out, cmd):
    lines = ["# Context heads on the shipped bundle's stride-16 features", "", f"`{cmd}`", "",
             f"Chosen on validation (smoothed macro F1, ties within 0.005 to the smallest field): "
             f"**{best['name']} C={best['C']}**.", ""]
    for key, title in (("smoothed_val", "Validation, smoothed"), ("raw_val", "Validation, raw"),
                       ("smoothed_test", "Test, smoothed"), ("raw_test", "Test, raw")):
        lines += [f"## {title}", "", "| head | C | pixel acc. | macro F1 | " + " | ".join(names) + " |",
                  "|" + " --- |" * (4 + len(names))]
        lines += [_fmt_row(r, key, names) for r in table] + [""]
    if HYPO_END <= set(names):  # slice309's classes: the hypothalamic-end measure
        lines += ["## Hypothalamic end (tissue at x < 905): share called Ctx+Str / HypoTh", "",
                  "| head | C | raw Ctx+Str | raw HypoTh | smoothed Ctx+Str | smoothed HypoTh |", "|" + " --- |" * 6]
        lines += [f"| {r['name']} | {r['C'] if r['C'] is not None else ''} | {r['raw_end']['Ctx+Str']:.3f} | "
                  f"{r['raw_end']['HypoTh']:.3f} | {r['smoothed_end']['Ctx+Str']:.3f} | "
                  f"{r['smoothed_end']['HypoTh']:.3f} |" for r in table]
    from brainrt.io import atomic_path

    with atomic_path(out / "REPORT.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")


def maps_png(path, image, probs, valid, names, stride, smooth_cells):
    from brainrt.io import save_figure
    from brainrt.plots import class_colors
    from brainrt_train.ctxhead import END_X
    from brainrt_train.evaluate import labels_of
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = class_colors(len(names))
    fig, axes = plt.subplots(len(probs), 1, figsize=(14, 2.9 * len(probs)), dpi=90)
    g = np.asarray(image[::4, ::4], np.float32) / 255.0
    for ax, (title, prob) in zip(np.atleast_1d(axes), probs.items()):
        lab = labels_of(prob, valid, stride=stride, shape=image.shape, sigma_cells=smooth_cells)[::4, ::4]
        rgb = np.repeat(g[..., None], 3, axis=2)
        sel = lab >= 0
        rgb[sel] = 0.5 * rgb[sel] + 0.5 * colors[lab[sel]]
        ax.imshow(rgb, interpolation="nearest")
        ax.axvline(END_X / 4, color="w", lw=1, ls="--")
        ax.set_title(title, fontsize=9)
        ax.set_axis_off()
    from matplotlib.patches import Patch

    fig.legend(handles=[Patch(color=colors[i], label=n) for i, n in enumerate(names)], loc="lower center",
               ncol=len(names), fontsize=8, frameon=False)
    save_figure(fig, path)


def parser():
    from brainrt_train import ctxhead as ch

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=ROOT / "models" / "slice309-paper6")
    ap.add_argument("--image", type=Path, required=True)
    ap.add_argument("--mask", type=Path, required=True)
    ap.add_argument("--features", type=Path, help="cache of the stride grid's features (.npz; made if missing)")
    ap.add_argument("--stride", type=int, default=16)
    ap.add_argument("--stage1", default="logreg", help="head whose probabilities 'p' scales pool (and the baseline)")
    ap.add_argument("--candidates", nargs="+", default=list(ch.CANDIDATES), choices=list(ch.CANDIDATES))
    ap.add_argument("--C", nargs="+", type=float, default=list(ch.CS))
    ap.add_argument("--train", choices=("interior", "region"), default="interior",
                    help="training cells: centred on an eligible training centre (patch inside its class, as the "
                         "bundle's heads were drawn), or every labeled cell of the training region")
    ap.add_argument("--train-stride", type=int, help="fit on this grid's cells (default: --stride)")
    ap.add_argument("--train-features", type=Path, help="cache of the --train-stride grid's features")
    ap.add_argument("--unbalanced", action="store_true", help="no class weights (default: balanced)")
    ap.add_argument("-o", "--out", type=Path, required=True)
    ap.add_argument("--maps", nargs="*", default=None, help="extra candidates 'NAME C=X' to draw in maps.png")
    ap.add_argument("--write", type=Path, help="store the chosen head into this bundle (copy of --model)")
    ap.add_argument("--default", action="store_true", help="make it the default head if it wins on validation")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing --write bundle (not --model's)")
    return ap


def write_head(args, bundle, table, best, head):
    """Store the chosen head into ``--write`` (default head with ``--default`` only if it beats the baseline
    on validation); the manifest records the validation scores of every candidate, not the test's."""
    from brainrt_train import ctxhead as ch

    wins = best["smoothed_val"]["macro_f1"] > table[0]["smoothed_val"]["macro_f1"]
    slim = [{k: v for k, v in r.items() if k.endswith("_val") or k in ("name", "scales", "C")} for r in table]
    ch.add_context_head(args.model, args.write, {"stage1": args.stage1, "C": best["C"]}, head,
                        default=args.default and wins, table=slim, overwrite=args.overwrite,
                        chosen_on=f"validation split, smoothed pixel macro F1, stride {args.stride}; "
                                  f"candidates {', '.join(args.candidates)} x C {args.C}")
    print(f"wrote {args.write} (default head: {'ctx' if args.default and wins else bundle.manifest.default_head})")


def main(argv=None):
    from brainrt.errors import BrainrtError

    args = parser().parse_args(argv)
    try:
        return choose_and_write(args, argv)
    except BrainrtError as exc:  # bad input: one line, exit 2
        print(f"context_heads: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def choose_and_write(args, argv):
    from brainrt.io import write_json
    from brainrt_train.ctxhead import check_head_target

    if args.write:  # before any work
        check_head_target(args.model, args.write, overwrite=args.overwrite)
    args.out.mkdir(parents=True, exist_ok=True)
    bundle, sl, valid, smooth_cells, table, best, head, probs = run(args)
    names = list(bundle.class_names)
    cmd = "python tools/context_heads.py " + " ".join(argv if argv is not None else sys.argv[1:])
    write_json(args.out / "results.json", {"command": cmd, "table": table})
    report(table, best, names, args.out, cmd)
    show = [table[0]["name"], f"plain C={best['C']}", f"{best['name']} C={best['C']}", *(args.maps or [])]
    maps_png(args.out / "maps.png", sl.image, {k: probs[k] for k in dict.fromkeys(show) if k in probs}, valid, names,
             args.stride, smooth_cells)
    print(f"chosen: {best['name']} C={best['C']}  val macro F1 {best['smoothed_val']['macro_f1']:.3f} "
          f"(baseline {table[0]['smoothed_val']['macro_f1']:.3f})")
    if args.write:
        write_head(args, bundle, table, best, head)


if __name__ == "__main__":
    main()
