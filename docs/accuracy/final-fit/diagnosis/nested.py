"""Nested spatial CV of the shipped recipe family (a context head, 4 re-imagings, probability smoothing): for each
outer fold, the fold network's own features (trained without that fold's pixels) and its re-imagings; C and sigma
chosen inside the outer training part (choose_interior), then scored on the outer held-out pixels with every guard.

    CACHE=FOLD_FEATURES OUT=DIR python docs/accuracy/final-fit/diagnosis/nested.py 0 1 2 3 4
    python docs/accuracy/final-fit/diagnosis/nested.py --summary SHIPPED.json DIR/fold*.json

Environment: SCALES (the context head's scales, default f150), CS (default 0.1,1,10), SIGMAS (um, default 20,40,80).
Stop 35: the defaults on runs/fold-features-r (8-epoch fold networks). Stop 38: SCALES=p150 CS=1,10,100
SIGMAS=30,60,120 on the 24-epoch fold networks' features (tools/network_cv.py --keep, head_renderings_cv.py)."""
import json, os, sys
import numpy as np
from brainrt_train import cv, netcv

env = os.environ.get
if sys.argv[1] == "--summary":  # the folds' results -> the estimate, every guard per fold and their summary
    folds = {}
    for p in sys.argv[3:]:
        folds.update(json.load(open(p)))
    names = list(netcv.Setup("../shared/data/slice309.tif", "../shared/data/slice309_areas.tif", changes=False).grid.names)
    keys = sorted(folds, key=int)
    sm = cv.summarize([folds[k]["scores"] for k in keys], names)
    strip = lambda d: {"mean": d["mean"], "sd": d["sd"]}  # noqa: E731 - the layout of shipped.json since stop 35
    out = {"folds": len(keys), "pixel_accuracy": strip(sm["smoothed"]["pixel_accuracy"]),
           "pixel_accuracy_raw": strip(sm["raw"]["pixel_accuracy"]), "macro_f1": strip(sm["smoothed"]["macro_f1"]),
           "f1": {n: strip(v) for n, v in sm["smoothed"]["f1"].items()},
           "f1_raw": {n: strip(v) for n, v in sm["raw"]["f1"].items()},
           "guards": {g: {**v, "share": strip(v["share"])} for g, v in sm["guards"].items()}}
    out.update(chosen_per_fold={k: folds[k]["recipe"] for k in keys},
               per_fold_guards={k: {g: [round(v["share"], 4), v["ok"]] for g, v in folds[k]["scores"]["guards"].items()}
                                for k in keys}, estimate=env("ESTIMATE", ""), command=env("COMMAND", ""))
    json.dump(out, open(sys.argv[2], "w"), indent=1, default=float)
    sys.exit(0)
C = env("CACHE", "runs/fold-features-r")
setup = netcv.Setup("../shared/data/slice309.tif", "../shared/data/slice309_areas.tif", changes=False)
scales = env("SCALES", "f150")
heads = [("ctx", (("C", float(c)), ("scales", scales))) for c in env("CS", "0.1,1,10").split(",")]
sigmas = tuple(float(s) for s in env("SIGMAS", "20,40,80").split(","))
out = {}
for f in map(int, sys.argv[1:]):
    g = cv.with_features(setup.grid, (np.load(f"{C}/fold{f}.npy"), tuple(np.load(f"{C}/fold{f}.r{i}.npy") for i in range(4))))
    r, recipe = cv.nested_fold(g, setup.cf, f, heads, sigmas, ("prob",))
    out[f] = {"scores": r, "recipe": recipe.label()}
    print(f, recipe.label(), r["smoothed"]["pixel_accuracy"], r["smoothed"]["macro_f1"], flush=True)
json.dump(out, open(f"{env('OUT', 'runs/nested')}/fold{'_'.join(sys.argv[1:])}.json", "w"), default=float)
