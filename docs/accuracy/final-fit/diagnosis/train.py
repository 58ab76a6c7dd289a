"""Diagnosis (issue 31): a fold network (mixup+swa, the CV's budget and seed + f) kept with its weights, and its
whole-grid features of slice309 clean, re-rendered, and re-rendered then intensity-matched onto slice309's tissue."""
import json, sys, time, types
import numpy as np, torch
from brainrt.engine.intensity import standardize_image, tissue_quantiles
from brainrt.engine.tissue import auto_threshold
from brainrt_train import netcv
from brainrt_train.tiles import grid_features
DIAG = __import__("os").environ.get("DIAG", "runs/diag")  # where the fold networks and features are kept

torch.set_num_threads(2)
ch = json.load(open("docs/accuracy/final-fit/choices.json"))
setup = netcv.Setup("../shared/data/slice309.tif", "../shared/data/slice309_areas.tif")
img = setup.sl.image
ref = types.SimpleNamespace(quantiles=tissue_quantiles([(img, auto_threshold(img, quiet=True))]))
images = {"clean": img, "rerendered": setup.images["rerendered"],
          "rerendered_match": standardize_image(setup.images["rerendered"], ref, None, np.uint8)}
for f in map(int, sys.argv[1:]):
    out, t = f"{DIAG}/fold{f}_s0", time.time()
    model, norm, sec, _, _ = netcv.train_on_fold(setup, netcv.recipe_of("mixup+swa"), f, ch["budget"], seed=0)
    print(f"fold {f} trained {sec / 60:.1f} min", flush=True)
    torch.save(model.state_dict(), out + ".pt"); json.dump(norm, open(out + ".norm.json", "w"))
    for name, im in images.items():
        feats, _ = grid_features(model, im, norm=norm, dtype_max=255.0, cells=setup.grid.valid)
        np.save(f"{out}.{name}.npy", feats); print(f"fold {f} {name} {time.time() - t:.0f} s", flush=True)
