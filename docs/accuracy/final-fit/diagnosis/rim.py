"""The final network's heads refitted with N re-imagings (N = 0, 2, 4, 8; recipe ctx C1 f150 + 40 um prob):
in-sample whole-slice accuracy and the guards, on slice309 and re-rendered; cortex-rim ZI share.

    python docs/accuracy/final-fit/diagnosis/rim.py BUNDLE OUT.json [RECIPE_JSON [N,N,...]]

(stop 35: the shipped network with the defaults; stop 38: the 24-epoch refit with the heads chosen on its fold
networks, '{"head": "ctx", "C": 10.0, "scales": "p150", "sigma_um": 60.0, "space": "prob", "bias": {}}' 0,2,4,8,16)."""
import dataclasses, json
import numpy as np, tifffile, brainrt
from brainrt.bundle.load import Bundle
from brainrt.engine.tissue import auto_threshold
from brainrt_train import cv
from brainrt_train.data import ClassMap, load_slice
from brainrt_train.evaluate import random_rendering, simulate_slice_change
from brainrt_train.final import final_fit, recipe_of

B = __import__("sys").argv[1]
b = Bundle.load(B)
sl = load_slice("../shared/data/slice309.tif", "../shared/data/slice309_areas.tif", ClassMap.from_dict(b.manifest.class_map))
names = list(ClassMap.from_dict(b.manifest.class_map).names)
tissue = sl.image > auto_threshold(sl.image, quiet=True)
feat = lambda im: brainrt.featurize(im, b, stride=16, precision="fp32", tissue=tissue)
g0 = feat(sl.image)
grid = cv.grid_from(g0, sl.labels, names)
argv = __import__("sys").argv
RECIPE = json.loads(argv[3]) if len(argv) > 3 else {"head": "ctx", "C": 1.0, "scales": "f150", "sigma_um": 40.0,
                                                   "space": "prob", "bias": {}}
NS = tuple(int(n) for n in argv[4].split(",")) if len(argv) > 4 else (0, 2, 4, 8)
rend = [feat(random_rendering(sl.image, i)).features for i in range(max(NS))]
rer = dataclasses.replace(grid, features=feat(simulate_slice_change(sl.image)).features)
recipe = recipe_of(RECIPE)
out = {}
for n in NS:
    gn = dataclasses.replace(grid, renderings=tuple(rend[:n]))
    model, prob = final_fit(gn, recipe, 0)
    for name, g, p in (("slice309", grid, prob), ("rerendered", rer, cv.probabilities(rer, model))):
        pred = cv.map_cells(p, g.valid, g.sigma_cells(RECIPE["sigma_um"]), RECIPE["space"])
        y = g.y_cells; m = g.valid & (y >= 0)
        gd = cv.guards(pred, 16, names, sl.labels.shape, sl.labels)
        zi_ctx = float((pred[:, 4450 // 16:] == names.index("ZI")).sum() / (pred[:, 4450 // 16:] >= 0).sum())
        out[f"{n} {name}"] = dict(acc_cells=round(float((pred[m] == y[m]).mean()), 4), zi_right_of_4450=round(zi_ctx, 4),
                                  guards={k: (round(v["share"], 3), v["ok"]) for k, v in gd.items()})
        print(n, name, out[f"{n} {name}"], flush=True)
json.dump(out, open(__import__("sys").argv[2], "w"), indent=1)
