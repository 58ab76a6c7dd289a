"""Whole-grid features of saved fold networks on components of the re-rendering (dither only, dither + blur,
dither + gamma/contrast/offset) and on the full re-rendering intensity-matched."""
import json, sys, types
import numpy as np, torch
from brainrt.engine.intensity import standardize_image, tissue_quantiles
from brainrt.engine.tissue import auto_threshold
from brainrt_train import netcv
from brainrt_train.evaluate import simulate_slice_change
from brainrt_train.model import PaperCNN
from brainrt_train.tiles import grid_features
DIAG = __import__("os").environ.get("DIAG", "runs/diag")  # where the fold networks and features are kept

torch.set_num_threads(2)
setup = netcv.Setup("../shared/data/slice309.tif", "../shared/data/slice309_areas.tif", changes=False)
img = setup.sl.image
ref = types.SimpleNamespace(quantiles=tissue_quantiles([(img, auto_threshold(img, quiet=True))]))
full = simulate_slice_change(img)
images = {"dither": simulate_slice_change(img, gamma=1.0, contrast=1.0, offset=0.0, blur=0.0),
          "dither_blur": simulate_slice_change(img, gamma=1.0, contrast=1.0, offset=0.0),
          "dither_photo": simulate_slice_change(img, blur=0.0),
          "rerendered_match": standardize_image(full, ref, None, np.uint8)}
for f in map(int, sys.argv[1:]):
    p = f"{DIAG}/fold{f}_s0"
    model = PaperCNN(len(setup.names), context=4)
    model.load_state_dict(torch.load(p + ".pt")); model.eval()
    norm = json.load(open(p + ".norm.json"))
    for name, im in images.items():
        feats, _ = grid_features(model, im, norm=norm, dtype_max=255.0, cells=setup.grid.valid)
        np.save(f"{p}.{name}.npy", feats); print(f"fold {f} {name}", flush=True)
