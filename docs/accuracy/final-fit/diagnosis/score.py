"""The CV's scores (netcv.score_features: head on the fold's clean training cells, held-out pixels) of saved fold-network
features: clean, re-rendered, re-rendered + intensity match; and training-cell accuracy under the re-rendering."""
import json, sys
import numpy as np
from brainrt_train import netcv
DIAG = __import__("os").environ.get("DIAG", "runs/diag")  # where the fold networks and features are kept

setup = netcv.Setup("../shared/data/slice309.tif", "../shared/data/slice309_areas.tif", changes=False)
g, cf = setup.grid, setup.cf
res = {}
for f in map(int, sys.argv[1:]):
    p = f"{DIAG}/fold{f}_s0"
    g.features = np.load(p + ".clean.npy")
    ch = {n: (np.load(f"{p}.{n}.npy"), g.valid) for n in ("rerendered", "rerendered_match", "dither", "dither_blur", "dither_photo")
          if __import__("os").path.exists(f"{p}.{n}.npy")}
    s = netcv.score_features(g, cf, f, 100.0, ch)
    res[f] = {k: {"acc": round(v["smoothed"]["pixel_accuracy"], 3),
                  "f1": {n: round(x, 2) for n, x in v["smoothed"]["f1"].items()}} for k, v in s.items() if k != "eval_seconds"}
    for k, v in res[f].items():
        print(f"fold {f} {k:17s} acc {v['acc']:.3f} F1 {v['f1']}", flush=True)
json.dump(res, open(DIAG + "/scores_" + "_".join(sys.argv[1:]) + ".json", "w"), indent=1)
