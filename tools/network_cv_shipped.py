"""The shipped network scored by the network cross-validation's protocol (issue 31): the incumbent beside the candidates.

``tools/network_cv.py`` trains each candidate per fold; the shipped network cannot be retrained per fold, so
its fixed features (``brainrt featurize --stride 16``, standardization off as for the candidates) go through
the same head (class-balanced logistic regression C 0.1 on the fold's training cells), the same 100 um
smoothing of log-probabilities, the same folds and guards, and the same imaging changes (blur 1 px, 2 x 2
binning resampled back, featurized through the runtime). Two cell sets:

- ``unseen``: the cells whose patch the shipped network trained on are left out of every fold (training
  and held out, as ``tools/cv_heads.py --unseen-only`` does): the honest figure, on fewer held-out pixels;
- ``all``: every labeled cell, as for the candidates: flattered by the network's memory of its training bands.

    python tools/network_cv_shipped.py --image ../shared/data/slice309.tif \\
        --mask ../shared/data/slice309_areas.tif --work /tmp/shipped-ncv -o docs/accuracy/network-cv-long/shipped.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def featurized(work, images, model, standardize):
    """``{name: zarr path}``: each image featurized at stride 16 by the runtime (kept in ``work``, reused)."""
    out = {}
    for name, path in images.items():
        z = Path(work) / f"{name}_{standardize}.zarr"
        if not z.exists():
            subprocess.run([sys.executable, "-m", "brainrt.cli", "featurize", str(path), "-m", str(model), "--stride",
                            "16", "--pixel-size", "1.17", "--standardize", standardize, "-o", str(z)], check=True)
        out[name] = z
    return out


def score(grid, others, cf, f, sigma_um):
    """Fold ``f`` of one cell set (:func:`brainrt_train.netcv.score_features`) and the imaging changes' losses."""
    from brainrt_train.netcv import score_features

    out = score_features(grid, cf, f, sigma_um, {k: (o.features, o.valid) for k, o in others.items()})
    s = out["clean"]["smoothed"]["pixel_accuracy"]
    out["loss"] = {k: round(s - out[k]["smoothed"]["pixel_accuracy"], 4) for k in others}
    return out


def run(args):
    """Every fold of both cell sets; returns the results dict."""
    import brainrt
    import tifffile

    from brainrt_train import cv
    from brainrt_train.data import ClassMap, load_slice
    from tools.cv_heads import unseen_labels
    from brainrt_train.netcv import imaging_changes

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    bundle = brainrt.Bundle.load(args.model)
    sl = load_slice(args.image, args.mask, ClassMap.from_dict(bundle.manifest.class_map))
    images = {"clean": Path(args.image)}
    for name, im in imaging_changes(sl.image).items():
        images[name] = work / f"{name}.tif"
        if not images[name].exists():
            tifffile.imwrite(images[name], im)
    feats = featurized(work, images, args.model, "off")
    folds = cv.spatial_folds(sl.labels, k=args.folds, n_classes=len(ClassMap.from_dict(bundle.manifest.class_map).names))
    res = {"command": "python tools/network_cv_shipped.py " + " ".join(sys.argv[1:]), "model": str(args.model),
           "folds": folds.record(), "head": "class-balanced logistic regression C 0.1 (as tools/network_cv.py)",
           "sigma_um": args.sigma_um, "sets": {}}
    for which in ("unseen", "all"):
        grid = cv.grid_of(feats["clean"], args.image, args.mask, bundle)[0]
        labels = unseen_labels(bundle, sl, grid) if which == "unseen" else sl.labels
        cf = cv.cell_folds(folds, labels, grid.stride, grid.valid.shape, len(grid.names))
        others = {k: cv.grid_of(feats[k], args.image, args.mask, bundle)[0] for k in images if k != "clean"}
        per = {str(f): score(grid, others, cf, f, args.sigma_um) for f in range(folds.k)}
        res["sets"][which] = {"folds": per, "mean": means(per)}
        log(f"{which}: {res['sets'][which]['mean']}")
    return res


def means(per):
    """Fold means of the figures the candidates' table shows."""
    f = list(per.values())
    m = lambda xs: round(float(np.nanmean(xs)), 4)  # noqa: E731
    names = list(f[0]["clean"]["smoothed"]["f1"])
    return {"acc_raw": m([x["clean"]["raw"]["pixel_accuracy"] for x in f]),
            "acc_smoothed": m([x["clean"]["smoothed"]["pixel_accuracy"] for x in f]),
            "macro_f1": m([x["clean"]["smoothed"]["macro_f1"] for x in f]),
            "f1": {n: m([x["clean"]["smoothed"]["f1"][n] for x in f]) for n in names},
            "guards_ok": m([sum(g["ok"] for g in x["clean"]["guards"].values()) for x in f]),
            "loss": {k: m([x["loss"][k] for x in f]) for k in f[0]["loss"]}}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--image", required=True)
    ap.add_argument("--mask", required=True)
    ap.add_argument("--model", default="models/slice309-paper6")
    ap.add_argument("--work", required=True, help="Folder for the imaging changes' TIFFs and the feature zarrs.")
    ap.add_argument("-o", "--out", required=True, help="Results JSON.")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--sigma-um", type=float, default=100.0)
    args = ap.parse_args(argv)
    res = run(args)
    Path(args.out).write_text(json.dumps(res, indent=1, default=str) + "\n")
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
