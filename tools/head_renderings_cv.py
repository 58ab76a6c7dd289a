"""Heads fitted on re-imagings of the slice, under the spatial cross-validation (issue 31).

For each fold, the fold network of the chosen recipe (trained on the fold's training pixels only, as the network
CV trains it) gives stride-16 features of slice309 and of images of it made otherwise: N random re-imagings
(:func:`brainrt_train.evaluate.random_rendering`, seeds 0..N-1: what a head with ``heads.renderings = N`` is
also fitted on), the CV's imaging changes (blur 1 px, 2 x 2 binning, the re-rendering), and changes outside the
re-imagings' family (:func:`brainrt_train.netcv.other_changes`: Poisson-like noise, gain and offset, 256 levels).
Each head recipe is fitted on the fold's training cells with 0 and with N re-imagings, then scored on the fold's
held-out pixels, clean (with the guards) and under every change: pixel accuracy and per-class F1 of the
regularized map. The choice between 0 and N is made on the mean over the folds. ``--picture PNG FOLDER...``
draws the chosen recipe's figures against N from several runs.

    python tools/head_renderings_cv.py --image ../shared/data/slice309.tif \\
        --mask ../shared/data/slice309_areas.tif --choices docs/accuracy/final-fit/choices-final.json \\
        --cache runs/fold-features-r4 --renderings 4 -o docs/accuracy/final-fit/renderings
"""

from __future__ import annotations

import argparse
import functools
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

#: The network CV's own head (tools/network_cv.py), scored beside the chosen recipe.
SIMPLE = {"head": "logreg", "C": 0.1, "balanced": True, "sigma_um": 100.0, "space": "log", "bias": {}}


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def score_recipe(grid, cf, f, feats, recipe, n, seed):
    """Fold ``f``: ``recipe`` fitted with ``n`` re-imagings, scored clean and under every change in ``feats``."""
    from brainrt_train import cv

    g = dataclasses.replace(grid, features=feats["clean"], renderings=tuple(feats[f"r{i}"] for i in range(n)))
    model, prob = cv.fit_head(g, cf.train[f], recipe.head, seed)
    out = {}
    for name, x in feats.items():
        if name.startswith("r") and name[1:].isdigit():
            continue
        part = dataclasses.replace(g, features=x)
        p = cv.with_bias(prob if name == "clean" else cv.probabilities(part, model), grid.names, recipe.bias)
        out[name] = cv.score_fold(part, cf, f, p, recipe.sigma_um, recipe.space, with_guards=name == "clean")
    return out


def summary(per_fold, names):
    """Fold means: accuracy, macro F1, per-class F1 and the worst class of each image; the guards held (clean)."""
    m = lambda xs: round(float(np.nanmean(xs)), 4)  # noqa: E731
    out = {}
    for image in per_fold[0]:
        s = [r[image]["smoothed"] for r in per_fold]
        f1 = {n: m([x["f1"][n] for x in s]) for n in names}
        out[image] = {"acc": m([x["pixel_accuracy"] for x in s]), "macro_f1": m([x["macro_f1"] for x in s]),
                      "f1": f1, "worst": min((v, n) for n, v in f1.items() if v == v)[::-1],
                      "folds": [round(x["pixel_accuracy"], 4) for x in s]}
    out["clean"]["guards_ok"] = m([sum(v["ok"] for v in r["clean"]["guards"].values()) for r in per_fold])
    return out


def report(res):
    """REPORT.md: one row per recipe and re-imaging count, every image's accuracy and worst class."""
    images = list(next(iter(next(iter(res["summary"].values())).values())))
    lines = ["# Heads fitted on re-imagings of the slice, under the spatial cross-validation", "",
             f"Command: `{res['command']}`.", "", f"Network: {res['network']} (each fold's own network). "
             "Pixel accuracy of the regularized map over each fold's held-out pixels, mean of the folds, and the "
             "class with the lowest mean F1 (nan folds skipped). Guards: the anatomical checks held on the clean "
             "slice, of 5.", "",
             "| head | re-imagings | " + " | ".join(images) + " | macro F1 clean | macro F1, mean of the images "
             "| largest loss | guards |", "|---" * (len(images) + 6) + "|"]
    for label, by_n in res["summary"].items():
        for n, s in by_n.items():
            cells = [f"{s[i]['acc']:.3f} ({s[i]['worst'][0]} {s[i]['worst'][1]:.2f})" for i in images]
            lines.append(f"| {label} | {n} | " + " | ".join(cells) + f" | {s['clean']['macro_f1']:.3f} | "
                         f"{np.mean([s[i]['macro_f1'] for i in images]):.3f} | "
                         f"{max(s['clean']['acc'] - s[i]['acc'] for i in images):.3f} | {s['clean']['guards_ok']:.1f} |")
    lines += ["", "Per class (F1, mean of the folds):", ""]
    for label, by_n in res["summary"].items():
        for n, s in by_n.items():
            for i in images:
                lines.append(f"- {label}, {n} re-imagings, {i}: " + ", ".join(f"{k} {v:.2f}" for k, v in s[i]["f1"].items()))
    return "\n".join(lines) + "\n"


def picture(folders, png):
    """Accuracy of every image and the F1 of each class on the clean slice against the number of re-imagings, for
    the chosen recipe, from several runs' ``results.json`` (one N each, all with 0)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_n = {}
    for d in folders:
        s = json.loads((Path(d) / "results.json").read_text())["summary"]
        label = next(k for k in s if k.startswith("chosen"))
        by_n.update({int(n): v for n, v in s[label].items()})
    ns = sorted(by_n)
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for image in by_n[ns[0]]:
        a.plot(ns, [by_n[n][image]["acc"] for n in ns], "o-", label=image, lw=2.5 if image == "clean" else 1.2)
    for cls in by_n[ns[0]]["clean"]["f1"]:
        b.plot(ns, [by_n[n]["clean"]["f1"][cls] for n in ns], "o-", label=cls)
    b.plot(ns, [by_n[n]["clean"]["macro_f1"] for n in ns], "k--", label="macro F1")
    a.set(xlabel="re-imagings the head is also fitted on", ylabel="pixel accuracy, held-out (5-fold mean)",
          title=f"{label}: each image")
    b.set(xlabel="re-imagings the head is also fitted on", ylabel="F1 on the clean slice (5-fold mean)",
          title="per class, clean slice")
    for ax in (a, b):
        ax.set_xticks(ns)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    plt.close(fig)


def parse(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--image", required=True)
    ap.add_argument("--mask", required=True)
    ap.add_argument("--choices", required=True, help="Choices JSON whose heads.chosen is the recipe to score.")
    ap.add_argument("--cache", required=True, help="Folder keeping each fold network's features per image.")
    ap.add_argument("--renderings", type=int, default=4, help="N re-imagings the heads are fitted on (against 0).")
    ap.add_argument("-o", "--out", required=True, help="Folder for results.json and REPORT.md.")
    return ap.parse_args(argv)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--picture":  # --picture PNG FOLDER...: the runs' chosen recipe against N
        picture(argv[2:], argv[1])
        return 0
    args = parse(argv)
    import torch

    from brainrt_train import netcv
    from brainrt_train.evaluate import random_rendering
    from brainrt_train.final import recipe_of
    from brainrt_train.final_bundle import Choices

    choices = Choices.read(args.choices)
    if "chosen" not in choices.heads:
        raise SystemExit(f"{args.choices}: no heads.chosen; run tools/heads_on_fold_networks.py first")
    torch.set_num_threads(choices.budget.get("threads", 2))
    setup = netcv.Setup(args.image, args.mask, k=choices.folds["k"], changes=False)
    img = setup.sl.image
    changes = functools.cache(lambda: {**netcv.imaging_changes(img), **netcv.other_changes(img)})  # made once
    images = {"clean": lambda: img, **{f"r{i}": (lambda i=i: random_rendering(img, i)) for i in range(args.renderings)},
              **{n: (lambda n=n: changes()[n]) for n in ("blur1", "bin2", "rerendered", "poisson", "gain", "levels256")}}
    of = netcv.fold_image_features(setup, choices.recipe, choices.budget, images, seed=choices.seed, cache=args.cache)
    recipes = {f"{k} {recipe_of(r).label()}": recipe_of(r) for k, r in (("chosen", choices.heads["chosen"]),
                                                                        ("simple", SIMPLE))}
    per = {label: {n: [] for n in (0, args.renderings)} for label in recipes}
    for f in range(setup.folds.k):
        feats = of(f)
        for label, r in recipes.items():
            for n in per[label]:
                per[label][n].append(score_recipe(setup.grid, setup.cf, f, feats, r, n, choices.seed))
        log(f"fold {f} scored")
    write(args.out, {"command": "python tools/head_renderings_cv.py " + " ".join(argv), "network": choices.network,
                     "folds": setup.folds.record(),
                     "summary": {lb: {str(n): summary(v, setup.names) for n, v in by.items()} for lb, by in per.items()}})
    return 0


def write(out, res):
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(res, indent=1) + "\n")
    (out / "REPORT.md").write_text(report(res))
    log(f"wrote {out / 'REPORT.md'}")


if __name__ == "__main__":
    sys.exit(main())
