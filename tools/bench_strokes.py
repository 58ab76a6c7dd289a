"""Heads fitted from painted strokes on slice309: label efficiency, a new area (TRN), time and memory (issue 20).

Strokes are drawn automatically from the annotation (``brainrt.synth.draw_strokes``: straight
lines 150 px long, 3 px wide, every pixel at least 64 px inside its area, seeded) and never on
the shipped bundle's TEST footprints (the spatial split recomputed from its manifest, as in
``tools/accuracy_report.py``). Scores are pixel accuracy and macro F1 on the test footprints
(every 4th pixel in each direction) and over the whole labeled region, for

- (a) brainrt: a class-balanced logistic regression on the shipped bundle's frozen stride-16
  features (``brainrt.fit``), raw and smoothed with the bundle's default;
- (b) scikit-image's trainable segmentation (``multiscale_basic_features`` + a random forest,
  the ilastik / APOC recipe) on the same strokes' pixels;
- (c) napari-convpaint: not run (see REPORT.md: it would replace torch and needs weight downloads).

Also: TRN (code 3) added with a 7-class class map; the time of the widget's job (first fit with
the features computed, refit with them cached) and of ``brainrt fit`` + ``classify``; memory.

    python tools/bench_strokes.py --model models/slice309-paper6 --image ../shared/data/slice309.tif \\
        --mask ../shared/data/slice309_areas.tif -o docs/strokes
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

SIX = {"Ctx": [1], "Str": [2], "VP": [4], "ZI": [5], "HypoTh": [7], "WM": [6, 8]}
SEVEN = {"Ctx": [1], "Str": [2], "TRN": [3], "VP": [4], "ZI": [5], "HypoTh": [7], "WM": [6, 8]}
STEP = 4  # score every 4th pixel in each direction


def setup(args):
    import brainrt
    from brainrt_train.data import ClassMap, load_slice
    from brainrt_train.evaluate import split_footprints

    bundle = brainrt.Bundle.load(args.model, threads=args.threads)
    sl = load_slice(args.image, args.mask, ClassMap.from_dict(bundle.manifest.class_map))
    t = bundle.manifest.training
    layout = str(t.split["layout"][0].get("layout", "rows")).split()[0]
    regions = split_footprints([sl], n_classes=len(bundle.class_names), patch_size=bundle.patch_size, gap=t.gap,
                               fractions=t.fractions, seed=t.seed, layout=layout if layout in ("rows", "interior")
                               else "rows")
    codes = brainrt.read_tiff(args.mask, what="label mask")[0]
    return bundle, sl, regions["test"][0], codes


_INSIDE = {}
_ALLOWED = {}


def _allowed(test):
    """Where strokes may go: off the test footprints (one array per test mask, so interiors are reused)."""
    return _ALLOWED.setdefault(id(test), ~test)


def draw(codes, n, seed, allowed, classes):
    """Strokes of every class (its first code's area; WM: 6 and 8), each area seeded on its own, every pixel
    64 px inside the area and inside ``allowed`` (the interiors are eroded once and kept)."""
    from scipy.ndimage import binary_erosion

    from brainrt.synth import draw_strokes

    out = np.zeros_like(codes)
    for cs in classes.values():
        key = (tuple(cs), id(allowed))
        if key not in _INSIDE:
            _INSIDE[key] = binary_erosion(np.isin(codes, cs) & allowed, iterations=64)
        area = np.where(_INSIDE[key], cs[0], 0).astype(codes.dtype)
        s = draw_strokes(area, n, codes=[cs[0]], length=150, width=3, margin=0, seed=[seed, cs[0]])
        out[s > 0] = s[s > 0]
    return out


def truth_index(codes, classes):
    t = np.full(codes.shape, -1, np.int16)
    for i, cs in enumerate(classes.values()):
        t[np.isin(codes, cs)] = i
    return t


def scores(pred, truth, where, names):
    """Accuracy, macro F1 and F1 per class of class-index maps on the pixels of ``where`` with a class."""
    from sklearn.metrics import f1_score

    m = where & (truth >= 0)
    t, p = truth[m], pred[m]
    f1 = f1_score(t, p, labels=list(range(len(names))), average=None, zero_division=0)
    return {"pixel_accuracy": round(float(np.mean(t == p)), 4), "macro_f1": round(float(f1.mean()), 4),
            "f1": {n: round(float(v), 4) for n, v in zip(names, f1)}, "n_pixels": int(m.sum())}


def eval_grids(shape):
    ys, xs = np.arange(0, shape[0], STEP), np.arange(0, shape[1], STEP)
    return ys, xs


def brainrt_maps(fitted, grid, bundle, ys, xs):
    """Raw and smoothed class-index maps at the scoring pixels."""
    from brainrt.fit import predict_grid

    sm = bundle.manifest.smoothing
    out = {}
    for name, sigma in (("raw", 0.0), ("smoothed", sm.sigma_um / (grid.pixel_size_um * grid.stride) if sm else 0)):
        labels, _ = predict_grid(fitted, grid.features, grid.valid, sigma_cells=sigma, space=sm.space if sm else "log")
        out[name] = labels[np.ix_(ys // grid.stride, xs // grid.stride)]
    return out


def fit_brainrt(grid, strokes, table, seed=0):
    from brainrt.bundle.strokes import cell_labels, samples_of_grid
    from brainrt.fit import fitted_of

    cells = cell_labels(strokes, table, grid.stride, grid.shape)
    samples = samples_of_grid(grid.features, grid.valid, cells)
    return fitted_of(samples, table, [], stride=grid.stride, seed=seed)


def skimage_features(image):
    """Per-pixel multiscale basic features (float32), the ilastik / APOC recipe, and its seconds."""
    from skimage.feature import multiscale_basic_features

    t = time.perf_counter()
    f = multiscale_basic_features(image.astype(np.float32) / 255.0, sigma_min=1, sigma_max=16)
    return f.astype(np.float32, copy=False), time.perf_counter() - t


def fit_skimage(feats, strokes, truth_of_strokes, threads, seed):
    from sklearn.ensemble import RandomForestClassifier

    ys, xs = np.nonzero(strokes)
    rf = RandomForestClassifier(n_estimators=100, max_depth=16, class_weight="balanced", n_jobs=threads,
                                random_state=seed)
    return rf.fit(feats[ys, xs], truth_of_strokes[ys, xs])


def label_efficiency(args, bundle, sl, test, codes, grid, feats):
    allowed = _allowed(test)
    from brainrt.bundle.derive import ClassTable

    table = ClassTable.resolve(None, bundle)
    names, truth = list(table.names), truth_index(codes, SIX)
    ys, xs = eval_grids(codes.shape)
    t_sub, where_test = truth[np.ix_(ys, xs)], test[np.ix_(ys, xs)]
    labeled = t_sub >= 0
    rows = []
    for n in args.counts:
        for seed in args.seeds:
            strokes = draw(codes, n, seed, allowed, SIX)
            fitted = fit_brainrt(grid, strokes, table, seed)
            row = {"strokes_per_area": n, "seed": seed, "counts": fitted.record["counts"], "cv": fitted.record["cv"]}
            for name, pred in brainrt_maps(fitted, grid, bundle, ys, xs).items():
                row[f"brainrt_{name}"] = {"test": scores(pred, t_sub, where_test, names),
                                         "labeled": scores(pred, t_sub, labeled, names)}
            if feats is not None:
                t = time.perf_counter()
                rf = fit_skimage(feats, strokes, truth, args.threads, seed)
                sel = labeled
                pred = np.full(t_sub.shape, -1, np.int16)
                pred[sel] = rf.predict(feats[np.ix_(ys, xs)][sel])
                row["skimage_rf"] = {"test": scores(pred, t_sub, where_test, names),
                                     "labeled": scores(pred, t_sub, labeled, names),
                                     "seconds": round(time.perf_counter() - t, 1)}
            rows.append(row)
            print(f"n={n} seed={seed}: brainrt smoothed test {row['brainrt_smoothed']['test']['pixel_accuracy']:.3f}"
                  + (f", skimage {row['skimage_rf']['test']['pixel_accuracy']:.3f}" if feats is not None else ""),
                  flush=True)
    return rows


def new_area(args, bundle, test, codes, grid):
    """TRN added (7 classes) against the same strokes without it (6 classes), over the labeled region."""
    allowed = _allowed(test)
    from brainrt.bundle.derive import ClassTable

    ys, xs = eval_grids(codes.shape)
    out = []
    for seed in args.seeds:
        res = {"seed": seed}
        for key, classes in (("six", SIX), ("seven", SEVEN)):
            table = ClassTable.resolve({"classes": classes}, bundle)
            strokes = draw(codes, 4, seed, allowed, classes)
            fitted = fit_brainrt(grid, strokes, table, seed)
            t_sub = truth_index(codes, classes)[np.ix_(ys, xs)]
            maps = brainrt_maps(fitted, grid, bundle, ys, xs)
            res[key] = {name: scores(p, t_sub, t_sub >= 0, list(table.names)) for name, p in maps.items()}
        out.append(res)
        print(f"TRN seed={seed}: F1 {res['seven']['smoothed']['f1']['TRN']:.3f}", flush=True)
    return out


def timing(args, bundle, codes, test, out_dir):
    """The widget's job (features computed, then cached) and ``brainrt fit`` + ``classify`` with 24 strokes."""
    import brainrt
    from brainrt.napari._train import FeatureCache, train_job
    from brainrt.napari._work import Source

    image, allowed = brainrt.read_tiff(args.image)[0], _allowed(test)
    strokes = draw(codes, 4, 0, allowed, SIX)
    cache, state, res = FeatureCache(), {}, {}
    for label in ("first_fit", "refit_cached"):
        t, cpu = time.perf_counter(), time.process_time()
        job = train_job(Source(image, (1.17, 1.17), (0.0, 0.0), "slice309"), strokes, args.model, cache=cache,
                        state=state)
        try:
            while True:
                next(job)
        except StopIteration:
            pass
        res[label] = {"seconds": round(time.perf_counter() - t, 2), "cpu_seconds": round(time.process_time() - cpu, 2),
                      **state["seconds"]}
    res["cached_feature_bytes_per_pixel"] = cache.nbytes() / image.size
    res["cli"] = cli_fit_classify(args, bundle, image, strokes, codes, out_dir)
    return res


def cli_fit_classify(args, bundle, image, strokes, codes, out_dir):
    """``brainrt fit`` then ``classify`` with the new bundle, each timed; scored over the labeled region."""
    import tempfile

    import brainrt

    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        t = time.perf_counter()
        fitted = brainrt.fit_heads(image, strokes, bundle)
        path = brainrt.save_bundle(fitted, bundle, Path(tmp) / "fitted")
        t_fit = time.perf_counter() - t
        new = brainrt.Bundle.load(path, threads=args.threads)
        t = time.perf_counter()
        result = brainrt.classify_image(image, new, stride=16)
        t_map = time.perf_counter() - t
        m = brainrt.api.score(result, codes, new)
    return {"fit_seconds": round(t_fit, 1), "classify_seconds": round(t_map, 1), "stroke_cells":
            int(len(fitted.samples.y)), "pixel_accuracy_labeled_region": round(m["pixel_accuracy"], 4),
            "feature_seconds": fitted.record["seconds"]["features"], "cv": fitted.record["cv"]}


def summarize(rows, key, split, metric="pixel_accuracy"):
    """Per stroke count: mean, min, max over seeds."""
    out = {}
    for n in sorted({r["strokes_per_area"] for r in rows}):
        v = [r[key][split][metric] for r in rows if r["strokes_per_area"] == n and key in r]
        if v:
            out[n] = (float(np.mean(v)), float(np.min(v)), float(np.max(v)))
    return out


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
    styles = {"brainrt_smoothed": ("brainrt heads, smoothed", "C0", "-"), "brainrt_raw": ("brainrt heads, raw", "C0",
                                                                                       "--"),
              "skimage_rf": ("scikit-image features + RF", "C3", "-")}
    for ax, split in zip(axes, ("test", "labeled")):
        metric = "pixel_accuracy"
        for key, (label, color, ls) in styles.items():
            s = summarize(rows, key, split, metric)
            if not s:
                continue
            n = np.array(list(s))
            m, lo, hi = (np.array([v[i] for v in s.values()]) for i in range(3))
            ax.plot(n, m, ls, color=color, marker="o", label=label)
            ax.fill_between(n, lo, hi, color=color, alpha=0.15)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({r["strokes_per_area"] for r in rows}), [str(v) for v in
                                                                      sorted({r["strokes_per_area"] for r in rows})])
        ax.set_xlabel("strokes per area (150 px each, 6 areas)")
        ax.set_ylabel("pixel accuracy, " + ("test footprints" if split == "test" else "whole labeled region"))
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0].legend(loc="lower right", fontsize=8)
    fig.suptitle("slice309: maps from strokes (mean and range over seeds; strokes never on the test split)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _table(rows, split):
    keys = [k for k in ("brainrt_raw", "brainrt_smoothed", "skimage_rf") if any(k in r for r in rows)]
    lines = ["| strokes / area | " + " | ".join(f"{k} acc | {k} macro F1" for k in keys) + " |",
             "|---" * (1 + 2 * len(keys)) + "|"]
    for n in sorted({r["strokes_per_area"] for r in rows}):
        cells = []
        for k in keys:
            for metric in ("pixel_accuracy", "macro_f1"):
                m, lo, hi = summarize(rows, k, split, metric)[n]
                cells.append(f"{m:.3f} ({lo:.3f}-{hi:.3f})")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return lines


def markdown(res):
    L = ["# Maps from a few painted strokes on slice309 (issue 20)", "",
         f"Generated by `tools/bench_strokes.py` ({res['command']}); {res['machine']}.", "",
         "## Label efficiency (test footprints of the shipped bundle's spatial split)", "",
         "Mean (min-max) over seeds " + ", ".join(map(str, res["seeds"])) + "; strokes are drawn outside the test "
         "footprints.", "", *_table(res["rows"], "test"), "", "Over the whole labeled region:", "",
         *_table(res["rows"], "labeled"), "", "![accuracy vs strokes](label_efficiency.png)", ""]
    return L


def full_run(args, out, command):
    """Every measurement: label efficiency, the new area, timings, memory; results.json, the plot, tables.md."""
    import brainrt

    bundle, sl, test, codes = setup(args)
    t = time.perf_counter()
    grid = brainrt.featurize(args.image, bundle, stride=16)
    res = {"command": command, "seeds": args.seeds,
           "machine": f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the start",
           "featurize_seconds": round(time.perf_counter() - t, 1)}
    feats, secs = (None, 0.0) if args.no_skimage else skimage_features(sl.image)
    res["skimage_features_seconds"] = round(secs, 1)
    res["memory"] = {"brainrt_bytes_per_pixel": grid.features.nbytes / sl.image.size,
                     "per_pixel_64_float_stack_bytes_per_pixel": 64 * 4,
                     "skimage_stack_bytes_per_pixel": None if feats is None else feats.nbytes / sl.image.size,
                     "skimage_n_features": None if feats is None else int(feats.shape[-1])}
    res["rows"] = label_efficiency(args, bundle, sl, test, codes, grid, feats)
    del feats
    res["new_area"] = new_area(args, bundle, test, codes, grid)
    res["timing"] = timing(args, bundle, codes, test, out)
    res["machine_end"] = f"load average {os.getloadavg()[0]:.1f} at the end"
    (out / "results.json").write_text(json.dumps(res, indent=1) + "\n")
    plot(res["rows"], out / "label_efficiency.png")
    (out / "tables.md").write_text("\n".join(markdown(res)) + "\n")
    print(json.dumps({k: res[k] for k in ("memory", "timing")}, indent=1))


def timing_run(args, out):
    """Only the timings, into timing.json."""
    bundle, _, test, codes = setup(args)
    res = {"load_average_start": os.getloadavg()[0], **timing(args, bundle, codes, test, out),
           "load_average_end": os.getloadavg()[0]}
    (out / "timing.json").write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res, indent=1))


def main(argv=None):
    import sys

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="models/slice309-paper6")
    ap.add_argument("--image", default="../shared/data/slice309.tif")
    ap.add_argument("--mask", default="../shared/data/slice309_areas.tif")
    ap.add_argument("-o", "--out", default="docs/strokes")
    ap.add_argument("--counts", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-skimage", action="store_true")
    ap.add_argument("--timing-only", action="store_true", help="Only the timings (into timing.json).")
    ap.add_argument("--replot", action="store_true", help="Only redraw the plot and tables from results.json.")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.replot:
        res = json.loads((out / "results.json").read_text())
        plot(res["rows"], out / "label_efficiency.png")
        (out / "tables.md").write_text("\n".join(markdown(res)) + "\n")
    elif args.timing_only:
        timing_run(args, out)
    else:
        full_run(args, out, "python tools/bench_strokes.py " + " ".join(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
