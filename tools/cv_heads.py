"""The shipped head and map regularization chosen by spatial K-fold cross-validation (issue 27).

Fixed features (a slice's stride-16 grid, ``brainrt featurize``), the folds and rules of
:mod:`brainrt_train.cv`:

1. every candidate head (class-balanced or plain logistic regression over a C grid, the
   context heads of :mod:`brainrt_train.ctxhead`, an RBF SVM with ``--svm``) x every map
   regularizer (Gaussian sigma over log-probabilities or probabilities), fitted per fold on the
   fold's training cells and scored on its held-out pixels; the choice is the best mean macro F1
   of the regularized map, grids widened until the choice is interior;
2. per-class biases (HypoTh, WM) tested against the bias rule; the previous shipped recipe
   (biases +3 / +3, 300 um) scored under the same folds;
3. the family's honest estimate by nested cross-validation (choices inside each outer fold);
4. ``--final``: the chosen recipe refitted on every labeled cell and written into the bundle as its
   default head and smoothing, with ``training.final`` recording the recipe, folds, seed and the
   cross-validation figures (so ``python -m tools.cv_heads ... --final`` redoes it).

Writes ``results.json``, ``shipped.json``, ``REPORT.md`` and PNGs into ``-o``; ``progress.json`` after
each stage.

    python -m tools.cv_heads --model models/slice309-paper6 --features runs/cv/slice309_s16.zarr \\
        --image ../shared/data/slice309.tif --mask ../shared/data/slice309_areas.tif -o docs/accuracy/cv [--final]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from brainrt_train.final import (SIGMAS_UM, SPACES, best_logreg, choose_heads, final_fit, final_record, head_candidates,
                                  recipe_of, shipped_json, write_final)
from tools.cv_pictures import fold_picture, folds_chart, maps_picture

#: The recipe the last final fit shipped (chosen on one validation band per class).
PREVIOUS = ("logreg", (("C", 0.1), ("balanced", True))), 300.0, "prob", (("HypoTh", 3.0), ("WM", 3.0))
BIASES = (1.0, 2.0)


CELLS = {True: "**Cells the network never trained on.** The shipped network was trained on patches of its split's "
                "training bands and memorized them (0.998 training accuracy): their features are cleaner than any new "
                "slice's. Labeled pixels inside those bands' footprints are dropped before the folds are cut and their "
                "cells leave the grid as if they were background (no head, pooling or smoothing reads them, so a "
                "held-out cell's map borrows nothing from the network's memory of its neighbours): every figure "
                "here is on features like a new slice's. The final fit uses every remaining labeled cell; the "
                "guards read maps with those holes.",
         False: "Every labeled cell, also those the network was trained on (`--all-cells`): optimistic."}


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def unseen_labels(bundle, sl, grid):
    """slice309's labels outside the footprints of the patches the bundle's **network** was trained on (its
    recorded split's training bands), and the grid's cell classes restricted to them: the network memorized those
    patches (0.998 training accuracy), so their features are cleaner than any new slice's and would flatter every
    head and favour small map regularizers."""
    from brainrt_train.cv import at_centres
    from tools.accuracy_report import split_of

    regions, _, _ = split_of(bundle, sl, len(grid.names))
    seen = regions["train"][0]
    labels = np.where(seen, -1, sl.labels)
    # memorized cells leave the grid as if they were background: no head, pooling or smoothing reads them, so
    # no map near a held-out cell borrows the network's memory of its neighbours
    grid.valid = grid.valid & ~at_centres(seen, grid.stride, grid.valid.shape)
    grid.y_cells = np.where(grid.valid, at_centres(labels, grid.stride, grid.valid.shape), -1)
    return labels


def nested_family(chosen):
    """The family the nested cross-validation chooses in: the chosen head's kind and inputs over C / 10, C, C x 10
    (and every regularizer): what the final fit chose, re-chosen inside each outer fold."""
    kind, params = chosen.head
    p = dict(params)
    return [(kind, tuple({**p, "C": float(f"{p['C'] * f:.6g}")}.items())) for f in (0.1, 1.0, 10.0)]


def resumed(out):
    """``{Recipe: summary}`` of the candidates scored in ``out/progress.json`` by an earlier run."""
    path = Path(out) / "progress.json"
    if not path.is_file():
        return {}
    grid = json.loads(path.read_text()).get("grid", {})
    return {recipe_of(v["recipe"]): {k: x for k, x in v.items() if k != "recipe"} for v in grid.values()}


def previous_recipe(grid, cf, seed):
    """The previous shipped recipe (biases and 300 um chosen on one band) under the folds: per-fold results."""
    from brainrt_train import cv

    head, sigma, space, bias = PREVIOUS
    per = []
    for f in range(cf.k):
        _, prob = cv.fit_head(grid, cf.train[f], head, seed)
        per.append(cv.score_fold(grid, cf, f, cv.with_bias(prob, grid.names, bias), sigma, space))
    return cv.Recipe(head, sigma, space, bias), per


def bias_checks(grid, cf, chosen, seed):
    """Each small class's bias against the rule, on the chosen recipe: ``[{class, bias, allowed, why, ...}]``."""
    from brainrt_train import cv

    probs = [cv.fit_head(grid, cf.train[f], chosen.head, seed)[1] for f in range(cf.k)]
    base = [cv.score_fold(grid, cf, f, p, chosen.sigma_um, chosen.space, with_guards=False) for f, p in enumerate(probs)]
    out = []
    for cls in ("HypoTh", "WM"):
        for b in BIASES:
            biased = [cv.score_fold(grid, cf, f, cv.with_bias(p, grid.names, ((cls, b),)), chosen.sigma_um, chosen.space,
                                    with_guards=False) for f, p in enumerate(probs)]
            ok, why = cv.bias_allowed(base, biased, cls, cf.k)
            out.append({"class": cls, "bias": b, "allowed": ok, "why": why,
                        "f1_mean": float(np.nanmean([r["smoothed"]["f1"][cls] for r in biased])),
                        "f1_mean_without": float(np.nanmean([r["smoothed"]["f1"][cls] for r in base])),
                        "macro_f1_mean": float(np.mean([r["smoothed"]["macro_f1"] for r in biased]))})
            log(f"bias {cls} +{b}: {'allowed' if ok else 'refused'} ({why})")
    return out


def runtime_maps(model_path, features):
    """The maps ``brainrt classify`` makes of a feature zarr with a bundle's default head: (regularized, raw)."""
    import brainrt

    bundle = brainrt.Bundle.load(model_path)
    grid = brainrt.load_features(features, bundle=bundle)
    return brainrt.classify(grid, bundle).labels, brainrt.classify(grid, bundle, smooth=0).labels


def refit(args, argv):
    """``--final-from``: the recorded recipe refitted on every labeled cell it allows and written into the bundle;
    the shipped maps (the runtime's, before and after) with their guards, written into the report."""
    import brainrt
    from brainrt_train import cv

    out, res = Path(args.out), json.loads(Path(args.final_from).read_text())
    chosen = recipe_of(res["chosen_recipe"])
    bundle = brainrt.Bundle.load(args.model)
    grid, sl = cv.grid_of(args.features, args.image, args.mask, bundle)
    if res.get("unseen_only"):
        unseen_labels(bundle, sl, grid)
    before, _ = runtime_maps(args.model, args.features)
    model, _ = final_fit(grid, chosen, res["seed"])
    best_lr = best_logreg(res["grid"])
    logreg, _ = final_fit(grid, recipe_of(best_lr), res["seed"])
    n_cells = {n: int(((grid.y_cells == i) & grid.valid).sum()) for i, n in enumerate(grid.names)}
    command = f"python -m tools.cv_heads {' '.join(argv if argv is not None else sys.argv[1:])}"
    summary = res["nested"]["summary"] if "nested" in res else res["grid"][res["chosen"]]
    record = final_record(chosen, res["folds"], n_cells, summary, res["folds"]["k"], res["seed"], command)
    record["estimate"] = ("nested spatial cross-validation" if "nested" in res else
                          "the chosen recipe's own cross-validation (choices made on the same folds: optimistic by the "
                          "selection; the nested estimate did not finish)")
    record["logreg"] = {"recipe": best_lr, "what": "the best logistic regression of the cross-validation, refitted "
                                                  "on the same cells (--head logreg)"}
    write_final(bundle.path, model, chosen, record, logreg=logreg)
    (out / "shipped.json").write_text(json.dumps({**shipped_json(summary, res["folds"]["k"]),
                                                  "estimate": record["estimate"]}, indent=1) + "\n")
    final, raw = runtime_maps(args.model, args.features)
    g = lambda m: cv.guards(m, grid.stride, grid.names, sl.labels.shape, sl.labels)  # noqa: E731
    res["final"] = {"guards": g(final), "guards_raw": g(raw), "guards_previous": g(before),
                    "n_cells": n_cells, "command": command}
    res["maps_png"] = maps_picture(out, "maps", [final, raw, before], sl, grid.names,
                                   [f"shipped now (brainrt classify, stride 16): {chosen.label()}",
                                    "shipped now, raw (--smooth 0)", "shipped before (biases +3/+3, 300 um prob)"])
    (out / "results.json").write_text(json.dumps(res, indent=1, default=str) + "\n")
    (out / "REPORT.md").write_text(markdown(res, grid.names))
    log(f"wrote {chosen.label()} into {bundle.path}; guards " + json.dumps({k: round(v["share"], 3) for k, v in g(final).items()}))
    return 0


# --- report ---


def _f1s(s, names, kind="smoothed"):
    return " | ".join(f"{s[kind]['f1'][n]['mean']:.2f}" for n in names)


def _guards(s):
    g = s.get("guards", {})
    return " | ".join(f"{v['share']['mean']:.3f} ({v['ok_folds']})" for v in g.values())


def table(rows, names):
    guard_names = list(next(iter(rows))[1].get("guards", {}))
    head = ("| recipe | acc (sd) | acc raw | macro F1 (sd) | " + " | ".join(names) + " | " + " | ".join(guard_names)
            + " |")
    lines = [head, "|---" * (4 + len(names) + len(guard_names)) + "|"]
    for label, s in rows:
        a, r, m = s["smoothed"]["pixel_accuracy"], s["raw"]["pixel_accuracy"], s["smoothed"]["macro_f1"]
        lines.append(f"| {label} | {a['mean']:.3f} ({a['sd']:.3f}) | {r['mean']:.3f} | {m['mean']:.3f} ({m['sd']:.3f}) | "
                     f"{_f1s(s, names)} | {_guards(s)} |")
    return lines


def per_fold_table(s, names):
    lines = ["| fold | acc | acc raw | macro F1 | " + " | ".join(names) + " |", "|---" * (4 + len(names)) + "|"]
    for f in range(len(s["smoothed"]["pixel_accuracy"]["folds"])):
        lines.append(f"| {f} | {s['smoothed']['pixel_accuracy']['folds'][f]:.3f} | {s['raw']['pixel_accuracy']['folds'][f]:.3f} | "
                     f"{s['smoothed']['macro_f1']['folds'][f]:.3f} | "
                     + " | ".join(f"{s['smoothed']['f1'][n]['folds'][f]:.2f}" for n in names) + " |")
    return lines


def markdown(res, names):  # long: the report's sections in order
    from brainrt_train import cv

    doc = " ".join(" ".join(__doc__.split("\n\n")[1:2]).split())
    rules = " ".join(cv.__doc__.split("\n\n")[4].split())
    folds = " ".join(cv.__doc__.split("\n\n")[1].split())
    L = ["# The shipped head and map regularization under spatial cross-validation (issue 27)", "",
         f"Generated by `tools/cv_heads.py`{' in %.0f s' % res['seconds'] if 'seconds' in res else ''}. {doc}", "", f"Command: `{res['command']}`", "",
         "## Folds", "", folds, "", f"Record: `{json.dumps(res['folds'])}`", "", CELLS[res.get("unseen_only", False)], "",
         "Held-out labeled pixels per fold and class:", "",
         "| fold | " + " | ".join(names) + " |", "|---" * (1 + len(names)) + "|"]
    L += [f"| {f} | " + " | ".join(str(v) for v in row) + " |" for f, row in enumerate(res["held_out_pixels"])]
    L += ["", "![folds](folds.png)", "", "## Rules", "", rules, "",
          "Guards are shares of the whole slice's tissue (labeled or not) in the regularized map of each fold's head; "
          "cells show the mean share over folds and (in brackets) how many folds pass its target: "
          + "; ".join(f"`{k}` {v['target']}" for k, v in res["guard_targets"].items()) + ".", "",
          "## Chosen", "", f"**{res['chosen']}** (criterion: mean macro F1 of the regularized map over the folds).", "",
          f"Grid widening: {', '.join(res['widened']) or 'none needed (every choice interior)'}.", "",
          "Per-class biases on the chosen recipe, against the rule:", "",
          "| class | bias | allowed | why | class F1 mean with / without |", "|---|---|---|---|---|"]
    L += [f"| {b['class']} | +{b['bias']:g} | {b['allowed']} | {b['why']} | {b['f1_mean']:.3f} / {b['f1_mean_without']:.3f} |"
          for b in res["biases"]]
    L += nested_lines(res, names)
    L += ["## Every candidate (mean over folds; best regularizer per head first, then the full grid in results.json)", "",
          *table(res["best_per_head"], names), "",
          "The previous shipped recipe (biases chosen on one band) under the same folds:", "",
          *table([(res["previous"]["label"], res["previous"]["summary"])], names), "",
          "Regularizers of the chosen head (mean over folds):", "", *table(res["chosen_head_grid"], names), "",
          *([f"![per fold]({p})" for p in res.get("pngs", []) if p == "per_fold.png"]), ""]
    if "final" not in res:
        return "\n".join(L) + "\n"
    return "\n".join(L + final_lines(res)) + "\n"


def nested_lines(res, names):
    """The nested estimate's section (or why it is missing)."""
    if "nested" not in res:
        return ["## Honest estimate", "", "The nested cross-validation did not finish in this run; the chosen recipe's "
                "own figures below were made on the same folds that chose it (optimistic by the selection):", "",
                *table([("chosen recipe (not nested)", res["grid"][res["chosen"]])], names), "",
                *per_fold_table(res["grid"][res["chosen"]], names), ""]
    L = ["## Honest estimate of the shipped recipe (nested cross-validation)", "",
          "Each outer fold's recipe chosen by the cross-validation over the other folds inside its training part, "
          "then scored on the outer held-out pixels:", "",
          "| outer fold | recipe chosen inside |", "|---|---|"]
    L += [f"| {f} | {r} |" for f, r in enumerate(res["nested"]["chosen"])]
    return L + ["", *table([("nested estimate", res["nested"]["summary"])], names), "",
                *per_fold_table(res["nested"]["summary"], names), ""]


def final_lines(res):
    """The shipped maps' section."""
    L = ["## Maps of the whole slice", "",
          "The final fit of the chosen recipe as `brainrt classify` serves it (stride 16, default regularization and "
          "`--smooth 0`) and the map the bundle shipped before; dotted lines at x = 905, 1300, 2800, 4450 (the "
          "guards' ranges).", "",
          "| map | " + " | ".join(res["final"]["guards"]) + " |", "|---" * (1 + len(res["final"]["guards"])) + "|"]
    for label, g in (("shipped map", res["final"]["guards"]), ("shipped map, raw", res["final"]["guards_raw"]),
                     ("the map shipped before", res["final"]["guards_previous"])):
        L.append(f"| {label} | " + " | ".join(f"{v['share']:.3f} {'ok' if v['ok'] else 'FAIL'}" for v in g.values()) + " |")
    L += ["", "(The final maps are in-sample on the labeled rectangle; the guards are checks along the slab, most of "
          "whose tissue no label covers.)", "",
          f"![maps]({res['maps_png']})", ""]
    return L


def save(out, res):
    (out / "progress.json").write_text(json.dumps(res, indent=1, default=str) + "\n")


def parser():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--features", required=True, help="the slice's stride-16 features (brainrt featurize)")
    ap.add_argument("--image", required=True)
    ap.add_argument("--mask", required=True)
    ap.add_argument("-k", "--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-ctx", dest="ctx", action="store_false", help="skip the context heads")
    ap.add_argument("--svm", action="store_true", help="also an RBF SVM (slow)")
    ap.add_argument("--final", action="store_true", help="write the chosen recipe, fitted on every label, into --model")
    ap.add_argument("--all-cells", dest="unseen_only", action="store_false",
                    help="use every labeled cell, also those the network was trained on (optimistic)")
    ap.add_argument("--jobs", type=int, default=1, help="candidates and outer folds in this many processes")
    ap.add_argument("--resume", action="store_true", help="reuse the candidates' scores in OUT/progress.json")
    ap.add_argument("--final-from", metavar="RESULTS_JSON",
                    help="skip the search: refit the recipe chosen in this results.json on every label and write it "
                         "into --model (the final fit, redone by one command)")
    ap.add_argument("-o", "--out", required=True)
    return ap


def search(args, grid, cf, out, res):
    """Every candidate under the folds, grids widened until the choice is interior: the chosen recipe, its table."""
    cache = resumed(out) if args.resume else {}
    chosen, results, record = choose_heads(grid, cf, head_candidates(args.ctx, args.svm), seed=args.seed, cache=cache,
                                           jobs=args.jobs, log=log)
    res.update(record)
    return chosen, results


def main(argv=None):
    args = parser().parse_args(argv)
    import brainrt
    from brainrt_train import cv

    if args.final_from:
        return refit(args, argv)
    t0, out = time.perf_counter(), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bundle = brainrt.Bundle.load(args.model)
    grid, sl = cv.grid_of(args.features, args.image, args.mask, bundle)
    labels = unseen_labels(bundle, sl, grid) if args.unseen_only else sl.labels
    folds = cv.spatial_folds(labels, k=args.folds, n_classes=len(grid.names))
    cf = cv.cell_folds(folds, labels, grid.stride, grid.valid.shape, len(grid.names))
    res = {"command": "python -m tools.cv_heads " + " ".join(argv if argv is not None else sys.argv[1:]),
           "folds": folds.record(), "seed": args.seed, "unseen_only": args.unseen_only,
           "held_out_pixels": cv.held_out_counts(folds, labels, len(grid.names)).tolist(),
           "guard_targets": {k: {"target": f"{v[2][0]} {v[2][1]}"} for k, v in cv.GUARDS.items()}}
    res["pngs"] = [fold_picture(out, folds, sl)]
    log(f"folds: {folds.record()}; training cells per fold {[int(t.sum()) for t in cf.train]}")
    chosen, results = search(args, grid, cf, out, res)
    save(out, res)
    prev, prev_per = previous_recipe(grid, cf, args.seed)
    res["previous"] = {"label": "previous: " + prev.label(), "summary": cv.summarize(prev_per, grid.names)}
    res["biases"] = bias_checks(grid, cf, chosen, args.seed)
    save(out, res)
    summary, _, picked = cv.nested(grid, cf, nested_family(chosen), SIGMAS_UM, SPACES, seed=args.seed, log=log,
                                   jobs=args.jobs)
    res["nested"] = {"summary": summary, "chosen": [r.label() for r in picked]}
    (out / "shipped.json").write_text(json.dumps(shipped_json(summary, folds.k), indent=1) + "\n")
    res["pngs"].append(folds_chart(out, [("chosen (CV)", results[chosen]), ("nested estimate", summary),
                                         ("previous recipe", res["previous"]["summary"])]))
    res["seconds"] = round(time.perf_counter() - t0, 1)
    (out / "results.json").write_text(json.dumps(res, indent=1, default=str) + "\n")
    if args.final:
        args.final_from = out / "results.json"
        return refit(args, argv)
    (out / "REPORT.md").write_text(markdown(res, grid.names))
    log(f"wrote {out / 'REPORT.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
