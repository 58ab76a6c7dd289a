"""Nested spatial CV of the shipped recipe family (ctx f150, 4 re-imagings, probability smoothing): for each outer
fold, the fold network's own features (trained without that fold's pixels) and its re-imagings; C and sigma chosen
inside the outer training part (choose_interior), then scored on the outer held-out pixels with every guard."""
import json, sys
import numpy as np
from brainrt_train import cv, netcv

C = __import__("os").environ.get("CACHE", "runs/fold-features-r")
setup = netcv.Setup("../shared/data/slice309.tif", "../shared/data/slice309_areas.tif", changes=False)
heads = [("ctx", (("C", c), ("scales", "f150"))) for c in (0.1, 1.0, 10.0)]
out = {}
for f in map(int, sys.argv[1:]):
    g = cv.with_features(setup.grid, (np.load(f"{C}/fold{f}.npy"), tuple(np.load(f"{C}/fold{f}.r{i}.npy") for i in range(4))))
    r, recipe = cv.nested_fold(g, setup.cf, f, heads, (20.0, 40.0, 80.0), ("prob",))
    out[f] = {"scores": r, "recipe": recipe.label()}
    print(f, recipe.label(), r["smoothed"]["pixel_accuracy"], r["smoothed"]["macro_f1"], flush=True)
json.dump(out, open(f"{__import__('os').environ.get('OUT', 'runs/nested')}/fold{'_'.join(sys.argv[1:])}.json", "w"), default=float)
