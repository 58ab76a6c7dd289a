"""Whole-slice maps of several bundles side by side: slice309 as it is and imaged differently (issue 31).

Each bundle classifies (``brainrt.classify_image``: stride 16, its default head and map regularization,
intensity standardization as chosen) the slice, the slice blurred (Gaussian sigma 1 px), binned 2 x 2 and
resampled back, and re-rendered as another slice might look (256-level dithering, gamma 0.8, contrast 1.15,
offset, blur 0.8 px: :func:`brainrt_train.evaluate.simulate_slice_change`; the unseen slice has 256 gray levels,
slice309 19). Printed and written per bundle and image: pixel accuracy over the annotated pixels (**in-sample**
for every bundle made on slice309: a sanity check, never a choice; the choices are the cross-validations') and
the anatomical guards of :func:`brainrt_train.cv.guards` (the map's shares at the hypothalamic end, right of the
callosum, in the middle of the slab...). One PNG per image with every bundle's map under the annotation.

    python tools/bundle_maps.py --image ../shared/data/slice309.tif --mask ../shared/data/slice309_areas.tif \\
        --model models/slice309-paper6 --model OTHER -o docs/accuracy/final-maps
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def images(image):
    """``{name: uint8 image}``: the slice and its imaging changes."""
    from brainrt_train.evaluate import simulate_slice_change
    from brainrt_train.netcv import imaging_changes

    return {"slice309": image, **imaging_changes(image), "rerendered": simulate_slice_change(image)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--image", required=True)
    ap.add_argument("--mask", required=True)
    ap.add_argument("--model", action="append", required=True, help="A bundle folder (repeat).")
    ap.add_argument("-o", "--out", required=True)
    args = ap.parse_args(argv)
    import brainrt

    from brainrt_train import cv
    from brainrt_train.data import ClassMap, load_slice
    from tools.crop_agreement import accuracy
    from tools.cv_pictures import maps_picture

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bundles = [brainrt.Bundle.load(m) for m in args.model]
    names = [c.name for c in bundles[0].manifest.classes]
    sl = load_slice(args.image, args.mask, ClassMap.from_dict(bundles[0].manifest.class_map))
    mask = brainrt.read_tiff(args.mask)[0]
    res = {"command": "python tools/bundle_maps.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "in_sample": "every bundle made on slice309 saw these labels", "maps": {}}
    for name, img in images(sl.image).items():
        maps, titles = [], []
        for path, b in zip(args.model, bundles):
            t0 = time.perf_counter()
            r = brainrt.classify_image(img, b, stride=16, pixel_size_um=1.17)
            full = brainrt.upsample(r.labels, 16, img.shape)
            acc = accuracy(full, [c.codes for c in b.manifest.classes], mask)
            g = cv.guards(r.labels, 16, names, sl.labels.shape, sl.labels)
            res["maps"].setdefault(name, {})[path] = {"pixel_accuracy": round(acc, 4), "guards": g}
            held = sum(v["ok"] for v in g.values())
            print(f"{name} {path}: pixel accuracy {acc:.3f} (in-sample), guards {held} of {len(g)} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
            maps.append(r.labels)
            titles.append(f"{path}: {name}, pixel accuracy {acc:.3f} (in-sample), guards held {held} of {len(g)}")
        maps_picture(out, f"maps_{name}", maps, sl, names, titles)
    (out / "results.json").write_text(json.dumps(res, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
