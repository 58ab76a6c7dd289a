"""Heads on stride-16 cell features, chosen on a bundle's split; optionally the final fit on every label.

The shipped bundle's heads were fitted on the features of its training patches (60% of the
labels, the training bands). This tool fits a logistic regression on the features of the
stride-16 **cells** of the training bands instead (the grid ``brainrt featurize`` writes,
read once), and chooses on the **validation** pixels only:

1. the head: class-balanced or not, and ``C`` (map macro F1 at stride 16, each candidate with
   its best smoothing);
2. per-class log-probability biases for the small and thin areas (HypoTh, WM), added to the
   regression's intercepts (so the runtime serves them as any logistic regression), chosen
   together with 3. the map smoothing (``brainrt_train.evaluate.choose_smoothing_of``).

Then it scores the recipe and the shipped heads on the same cells on the **test** pixels
(pixel accuracy and macro F1 at stride 16 smoothed, per-class F1 with and without the
biases) and on slice309's hypothalamic end (share of the unlabeled tissue at x < 905 called
Ctx or Str). ``--final``: when the recipe is at least as good as the shipped heads on
validation (macro F1 and the hypothalamic end), refit it on every labeled cell and write it
into the bundle as its default head ``logreg`` (graphs unchanged; smoothing, hashes and
``training.final`` rewritten; metrics stay the split run's). Writes ``results.json``,
``REPORT.md`` and PNGs.

    python -m tools.cell_heads --model models/slice309-paper6 --features runs/final/slice309_s16.zarr \\
        --image ../shared/data/slice309.tif --mask ../shared/data/slice309_areas.tif -o docs/accuracy/cell-heads [--final]
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tools.accuracy_report import end_picture, hypothalamic_end, load, pictures, split_of

C_GRID = (0.01, 0.1, 1.0, 10.0)
#: Log-probability biases tried for each small or thin class (all pairs).
BIAS_GRID = (0.0, 1.0, 2.0, 3.0)
SMALL = ("HypoTh", "WM")
PIXEL_UM = 1.17


@dataclass
class Cells:
    """A slice's stride-16 grid: features (R, C, F), valid (R, C), class of each cell's centre pixel (-1: none),
    split of each centre (``{split: (R, C) bool}``), and the slice and split pixel regions it came from."""

    features: np.ndarray
    valid: np.ndarray
    y: np.ndarray
    split: dict
    stride: int
    sl: object
    regions: dict
    names: list


def cells_of(model, features, image, mask):
    """:class:`Cells` of the slice ``image`` / ``mask`` featurized into ``features`` by ``model``."""
    import brainrt
    from brainrt.engine.grid import load_features

    bundle, cmap, sl = load(model, image, mask)
    regions, _, _ = split_of(bundle, sl, len(cmap.names))
    grid = load_features(features, bundle=bundle)
    if tuple(grid.image_shape) != tuple(sl.labels.shape):
        raise brainrt.BrainrtError(f"{features}: features of an image of shape {tuple(grid.image_shape)}, "
                                   f"not {tuple(sl.labels.shape)}")
    s = grid.stride
    R, C = grid.shape
    cy, cx = np.arange(R) * s + s // 2, np.arange(C) * s + s // 2
    valid = np.asarray(grid.valid, bool)
    y = np.where(valid, sl.labels[cy][:, cx], -1)
    split = {k: regions[k][0][cy][:, cx] & (y >= 0) for k in ("train", "val", "test")}
    return bundle, Cells(np.asarray(grid.features, np.float32), valid, y, split, s, sl, regions, list(cmap.names))


def fit_logreg(X, y, *, C, balanced, seed=0):
    """A logistic regression on standardized features (the bundle's ``logreg`` kind of head)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        return make_pipeline(StandardScaler(), LogisticRegression(C=C, class_weight="balanced" if balanced else None,
                                                                  max_iter=3000, random_state=seed)).fit(X, y)


def with_bias(model, names, bias):
    """A copy of ``model`` whose log-probability of each class in ``bias`` (name -> value) is raised by it."""
    out = copy.deepcopy(model)
    lr = out.steps[-1][1]
    for name, b in bias.items():
        lr.intercept_[list(lr.classes_).index(names.index(name))] += b
    return out


def probabilities(model, cells):
    """Class probabilities (R, C, K) of every valid cell, as the runtime computes them."""
    from brainrt.heads import apply_rows, float32_proba, per_class

    K = len(cells.names)
    fn = per_class(model, float32_proba(model) or model.predict_proba, K, 0.0)
    return apply_rows(cells.features, cells.valid, fn, np.zeros(cells.valid.shape + (K,), np.float32))


def pixel_map(prob, cells, sigma_um, space):
    from brainrt_train.evaluate import labels_of

    return labels_of(prob, cells.valid, stride=cells.stride, shape=cells.sl.labels.shape,
                     sigma_cells=sigma_um / (PIXEL_UM * cells.stride), space=space)


def scores(pred, cells, split):
    """Pixel accuracy, macro F1 and per-class F1 / recall of a map on ``split``'s pixels."""
    from brainrt_train.evaluate import pixel_scores

    sc = pixel_scores(pred, cells.sl.labels, cells.regions[split][0], cells.names)
    return {"pixel_accuracy": sc["pixel_accuracy"], "macro_f1": sc["macro_f1"],
            "f1": {n: v["f1"] for n, v in sc["per_class"].items()},
            "recall": {n: v["recall"] for n, v in sc["per_class"].items()}}


def smoothing_of(prob, cells):
    """(best, table) of the smoothing of ``prob`` on the validation pixels."""
    from brainrt_train.evaluate import choose_smoothing_of

    return choose_smoothing_of([(prob, cells.valid)], [cells.sl], cells.regions["val"], cells.names,
                               stride=cells.stride, pixel_size_um=PIXEL_UM)


def choose_head(cells, seed=0):
    """(balanced, C) with the best validation macro F1 (each with its best smoothing), and the table."""
    on = cells.split["train"]
    X, y = cells.features[on], cells.y[on]
    table = []
    for balanced in (False, True):
        for C in C_GRID:
            prob = probabilities(fit_logreg(X, y, C=C, balanced=balanced, seed=seed), cells)
            best, _ = smoothing_of(prob, cells)
            table.append({"balanced": balanced, "C": C, "sigma_um": best["sigma_um"], "space": best["space"],
                          "val_macro_f1": best["macro_f1"], "val_pixel_accuracy": best["pixel_accuracy"]})
            print(json.dumps(table[-1]), flush=True)
    best = max(table, key=lambda r: (round(r["val_macro_f1"], 4), -r["C"]))  # ties: stronger regularization
    return best, table


def choose_bias(model, cells):
    """Biases of the small classes and the smoothing, chosen together: the best validation macro F1 (ties: the
    smallest biases); the table (each bias pair with its best smoothing) and the chosen pair's smoothing table."""
    table, tables = [], []
    for bh in BIAS_GRID:
        for bw in BIAS_GRID:
            bias = dict(zip(SMALL, (bh, bw)))
            best, smooth_table = smoothing_of(probabilities(with_bias(model, cells.names, bias), cells), cells)
            table.append({"bias": bias, "sigma_um": best["sigma_um"], "space": best["space"],
                          "val_macro_f1": best["macro_f1"], "val_pixel_accuracy": best["pixel_accuracy"],
                          "val_recall": best["recall"]})
            tables.append(smooth_table)
    k = max(range(len(table)), key=lambda i: (round(table[i]["val_macro_f1"], 4), -sum(table[i]["bias"].values())))
    return table[k], table, tables[k]


def choose_recipe(cells, seed=0):
    """The recipe, every choice on the validation pixels: head, then small-class biases with the smoothing."""
    head, head_table = choose_head(cells, seed)
    on = cells.split["train"]
    model = fit_logreg(cells.features[on], cells.y[on], C=head["C"], balanced=head["balanced"], seed=seed)
    best, bias_table, smooth_table = choose_bias(model, cells)
    recipe = {"head": "logistic regression on standardized stride-16 cell features", "C": head["C"],
              "balanced": head["balanced"], "bias": best["bias"], "sigma_um": best["sigma_um"],
              "space": best["space"], "seed": seed}
    return recipe, model, {"heads": head_table, "biases": bias_table, "smoothing": smooth_table}


def evaluate(prob, cells, sigma_um, space):
    """Validation and test scores (stride 16, raw and smoothed), the hypothalamic end, the smoothed map."""
    raw, smoothed = pixel_map(prob, cells, 0.0, space), pixel_map(prob, cells, sigma_um, space)
    out = {f"{split}_{kind}": scores(pred, cells, split) for split in ("val", "test")
           for kind, pred in (("raw", raw), ("smoothed", smoothed))}
    out["hypothalamic_end"] = hypothalamic_end(smoothed, cells.sl.labels, cells.names)
    out["smoothing"] = {"sigma_um": sigma_um, "space": space}
    return out, {(16, "raw"): raw, (16, "smoothed"): smoothed}


def compare(bundle, cells, recipe, model):
    """Scores and maps of the shipped default head, the recipe without biases, and the recipe."""
    sm = bundle.manifest.smoothing
    runs = {"shipped": (bundle.head(bundle.manifest.default_head), sm.sigma_um, sm.space),
            "cells, no bias": (model, recipe["sigma_um"], recipe["space"]),
            "cells + bias": (with_bias(model, cells.names, recipe["bias"]), recipe["sigma_um"], recipe["space"])}
    results, maps = {}, {}
    for name, (head, sigma, space) in runs.items():
        results[name], maps[name] = evaluate(probabilities(head, cells), cells, sigma, space)
    return results, maps


def at_least_as_good(results):
    """The shipping rule: validation macro F1 (smoothed) and hypothalamic end no worse than the shipped heads'."""
    new, old = results["cells + bias"], results["shipped"]
    return (new["val_smoothed"]["macro_f1"] >= old["val_smoothed"]["macro_f1"]
            and new["hypothalamic_end"]["ctx_or_str"] <= old["hypothalamic_end"]["ctx_or_str"])


def final_record(recipe, cells, results, choices):
    """``training.final`` of the bundle: what the shipped default head saw, the recipe, the honest estimate."""
    on = cells.y >= 0
    est = results["cells + bias"]
    return {"heads": "logreg (the default head) refitted on every labeled stride-16 cell of slice309: the "
                     "train, validation and test bands and the gaps between them; the recipe was chosen on the "
                     "split (validation pixels), see tools/cell_heads.py",
            "recipe": recipe, "n_cells": {n: int((cells.y[on] == i).sum()) for i, n in enumerate(cells.names)},
            "other_heads": "linsvm, rbfsvm, cnn, gmm, area_density, pca_kmeans: the split run's (training-band "
                           "patches); the network saw the training bands only",
            "metrics": "the split run's (heads fitted on the training band only, scored on test)",
            "estimate": {"what": "the recipe fitted on the training-band cells, scored on the test pixels "
                                 "(stride 16, smoothed): the honest estimate of the shipped default head",
                         "pixel_accuracy": est["test_smoothed"]["pixel_accuracy"],
                         "macro_f1": est["test_smoothed"]["macro_f1"], "f1": est["test_smoothed"]["f1"],
                         "hypothalamic_end_ctx_or_str": est["hypothalamic_end"]["ctx_or_str"]},
            "smoothing_table": choices["smoothing"]}


def write_final(bundle, model, recipe, record, seed=0):
    """Refit nothing here: write ``model`` as the bundle's default head, with the recipe's smoothing and
    ``training.final``, into the bundle folder (atomically, every other file copied as it is, verified)."""
    import dataclasses

    import joblib
    from brainrt.io import atomic_path
    from brainrt.model.manifest import Smoothing
    from brainrt.model.seal import seal_bundle, verify_bundle

    path = Path(bundle.path)
    m = verify_bundle(path)
    with atomic_path(path, overwrite=True, is_dir=True) as tmp:
        for rel in m.files:
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path / rel, tmp / rel)
        joblib.dump(model, tmp / m.heads[m.default_head])
        table = record.pop("smoothing_table")
        sm = Smoothing(sigma_um=recipe["sigma_um"], space=recipe["space"], extra={"table": table},
                       chosen_on="validation split, macro F1, stride 16 (the cell head fitted on the training bands)")
        training = dataclasses.replace(m.training, extra={**m.training.extra, "final": record})
        seal_bundle(tmp, dataclasses.replace(m, smoothing=sm, training=training))
    return path


def final_fit(bundle, cells, recipe, results, choices):
    """The recipe refitted on every labeled cell and written into the bundle; its scores and maps (in-sample)."""
    on = cells.y >= 0
    model = fit_logreg(cells.features[on], cells.y[on], C=recipe["C"], balanced=recipe["balanced"],
                       seed=recipe["seed"])
    model = with_bias(model, cells.names, recipe["bias"])
    write_final(bundle, model, recipe, final_record(recipe, cells, results, choices))
    return evaluate(probabilities(model, cells), cells, recipe["sigma_um"], recipe["space"])


def _row(name, r):
    e = r["hypothalamic_end"]
    v, t = r["val_smoothed"], r["test_smoothed"]
    return (f"| {name} | {r['smoothing']['sigma_um']:.0f} um {r['smoothing']['space']} | {v['pixel_accuracy']:.3f} | "
            f"{v['macro_f1']:.3f} | {r['test_raw']['pixel_accuracy']:.3f} | {t['pixel_accuracy']:.3f} | "
            f"{t['macro_f1']:.3f} | {e['ctx_or_str']:.3f} | {e['share']['HypoTh']:.3f} |")


def _choice_lines(choices):
    lines = ["### Choices (validation pixels only)", "", "| balanced | C | smoothing | val macro F1 | val pixel acc |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['balanced']} | {r['C']} | {r['sigma_um']:.0f} um {r['space']} | {r['val_macro_f1']:.3f} | "
              f"{r['val_pixel_accuracy']:.3f} |" for r in choices["heads"]]
    top = sorted(choices["biases"], key=lambda r: -r["val_macro_f1"])[:6]
    lines += ["", "Biases (log-probability, added to the intercepts), best six and none:", "",
              "| HypoTh | WM | smoothing | val macro F1 | val recall HypoTh | val recall WM |", "|---|---|---|---|---|---|"]
    none = [r for r in choices["biases"] if not any(r["bias"].values())]
    lines += [f"| {r['bias']['HypoTh']} | {r['bias']['WM']} | {r['sigma_um']:.0f} um {r['space']} | "
              f"{r['val_macro_f1']:.3f} | {r['val_recall']['HypoTh']:.2f} | {r['val_recall']['WM']:.2f} |"
              for r in top + none]
    lines += ["", "Smoothing of the chosen head and biases:", "",
              "| sigma | space | val macro F1 | val pixel acc | val recall HypoTh | val recall WM |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['sigma_um']:.0f} um | {r['space']} | {r['macro_f1']:.3f} | {r['pixel_accuracy']:.3f} | "
              f"{r['recall']['HypoTh']:.2f} | {r['recall']['WM']:.2f} |" for r in choices["smoothing"]]
    return lines


def _in_sample_note(res):
    if not res["bundle_final"]:
        return []
    return ["**Note:** the bundle's default head already saw every label (`training.final`): its rows below are "
            "in-sample, not a comparison.", ""]


def markdown(res):
    names = list(res["results"]["shipped"]["test_smoothed"]["f1"])
    lines = ["# Cell-feature heads on slice309's split (issue 22, items 3 and 4)", "",
             "Generated by `tools/cell_heads.py`. " + " ".join(" ".join(__doc__.split("\n\n")[1:3]).split()), "",
             f"Command: `{res['command']}`", "", *_in_sample_note(res), f"Training-band cells: {res['n_train_cells']}.", "",
             f"**Recipe** (chosen on validation): `{json.dumps(res['recipe'])}`", "",
             *_choice_lines(res["choices"]), "", "### Scores (stride 16; pixels of each split)", "",
             "| heads | smoothing | val acc | val macro F1 | test acc raw | test acc smoothed | test macro F1 | "
             "hypothalamic end Ctx/Str | end HypoTh |", "|---|---|---|---|---|---|---|---|---|"]
    lines += [_row(n, r) for n, r in res["results"].items()]
    lines += ["", "Per-class F1, test pixels, stride 16 smoothed:", "", "| heads | " + " | ".join(names) + " |",
              "|---" * (1 + len(names)) + "|"]
    lines += [f"| {n} | " + " | ".join(f"{r['test_smoothed']['f1'][c]:.2f}" for c in names) + " |"
              for n, r in res["results"].items()]
    lines += ["", f"Shipping rule (validation macro F1 and hypothalamic end no worse than the shipped heads'): "
                  f"**{'met' if res['ship'] else 'not met'}**."]
    if res.get("final"):
        e = res["final"]["hypothalamic_end"]
        lines += ["", f"Final fit (every labeled cell, written into the bundle): hypothalamic end {e['ctx_or_str']:.3f} "
                      f"Ctx/Str, HypoTh {e['share']['HypoTh']:.3f} (its split scores are in-sample, not shown)."]
    lines += [""] + [f"![{p}]({p})" for p in res["pngs"]]
    return "\n".join(lines) + "\n"


def draw(out, maps, cells, results):
    """Map and hypothalamic-end PNGs of every set of heads; their file names."""
    pngs = []
    for name, m in maps.items():
        slug = name.replace(" + ", "-").replace(", ", "-").replace(" ", "-")
        pngs.append(pictures(out, slug, m, cells.sl, cells.regions, cells.names, "test"))
        pngs.append(end_picture(out, slug, m[(16, "smoothed")], cells.sl, cells.names,
                                results[name]["hypothalamic_end"]))
    return pngs


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--features", required=True, help="The slice's stride-16 features (brainrt featurize) zarr.")
    ap.add_argument("--image", required=True)
    ap.add_argument("--mask", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--final", action="store_true", help="Write the recipe fitted on every label into --model.")
    ap.add_argument("-o", "--out", required=True)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    bundle, cells = cells_of(args.model, args.features, args.image, args.mask)
    recipe, model, choices = choose_recipe(cells, args.seed)
    results, maps = compare(bundle, cells, recipe, model)
    res = {"command": "python -m tools.cell_heads " + " ".join(argv if argv is not None else sys.argv[1:]),
           "n_train_cells": int(cells.split["train"].sum()), "recipe": recipe, "choices": choices,
           "results": results, "ship": at_least_as_good(results),
           "bundle_final": "final" in bundle.manifest.training.extra}
    if args.final and res["ship"]:
        res["final"], maps["final"] = final_fit(bundle, cells, recipe, results, choices)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res["pngs"] = draw(out, maps, cells, {**results, **({"final": res["final"]} if "final" in res else {})})
    res["seconds"] = round(time.perf_counter() - t0, 1)
    (out / "results.json").write_text(json.dumps(res, indent=1) + "\n")
    (out / "REPORT.md").write_text(markdown(res))
    print(f"wrote {out / 'REPORT.md'}; recipe {json.dumps(recipe)}; ship: {res['ship']}")
    return 0 if res["ship"] or not args.final else 1


if __name__ == "__main__":
    sys.exit(main())
