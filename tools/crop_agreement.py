"""Same tissue, same map: crops of a slice classified alone against the whole slice's map.

Classifies the whole slice (default options: stride 16, the bundle's smoothing, intensity
standardization as chosen), then each crop alone, and prints for each crop the share of
its tissue pixels (tissue in the whole slice's map) farther than each ``--margin`` px from the
crop's border that get the whole slice's label, and the crop's pixel accuracy against the
annotation when a mask is given. Crops are ``y0:y1,x0:x1`` (aligned to the stride, so the
crop's cells are the whole slice's cells). Issue 28's target: >= 0.98 for crops of at least
1024 x 1024.

    python tools/crop_agreement.py --image ../shared/data/slice309.tif --mask ../shared/data/slice309_areas.tif
"""

from __future__ import annotations

import argparse
import time

import numpy as np

#: The issue's crop (700 x 1400, cortex, no background in view) and four crops of 1024 px or more.
CROPS = ("400:1100,4000:5400", "0:1024,4000:5024", "384:1408,4400:5632", "256:1280,1600:2624",
         "384:1408,2800:4080")


def parse_crop(text):
    """``"y0:y1,x0:x1"`` -> (y0, y1, x0, x1)."""
    (y0, y1), (x0, x1) = (tuple(int(v) for v in part.split(":")) for part in text.split(","))
    return y0, y1, x0, x1


def full_labels(res, shape):
    """Full-resolution class indices (-1 off tissue) of a classify result."""
    from brainrt.geometry import upsample

    return upsample(res.labels, res.grid.stride, shape)


def agreement(whole, crop_map, box, margin):
    """Share of the crop's tissue pixels (whole map >= 0) farther than ``margin`` px from its border that
    ``crop_map`` labels as ``whole`` does; also their count."""
    y0, y1, x0, x1 = box
    ref = whole[y0 + margin: y1 - margin, x0 + margin: x1 - margin]
    got = crop_map[margin: crop_map.shape[0] - margin, margin: crop_map.shape[1] - margin]
    tissue = ref >= 0
    n = int(tissue.sum())
    return (float((got[tissue] == ref[tissue]).mean()) if n else float("nan")), n


def accuracy(labels, codes, mask):
    """Pixel accuracy of ``labels`` (class indices) on the annotated pixels of ``mask`` the class map covers."""
    lut = np.full(256, -2, np.int64)
    for k, cs in enumerate(codes):
        for c in np.atleast_1d(cs):
            lut[int(c)] = k
    truth = lut[mask]
    scored = truth >= 0
    return float((labels[scored] == truth[scored]).mean()) if scored.any() else float("nan")


def arguments(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image", required=True)
    ap.add_argument("--mask", default=None)
    ap.add_argument("--model", default=None)
    ap.add_argument("--stride", type=int, default=16)
    ap.add_argument("--margin", type=int, nargs="+", default=[128, 256, 384],
                    help="px from the crop's border (several: one figure each)")
    ap.add_argument("--standardize", default=None, help="standardize= of classify_image (default: the API's)")
    ap.add_argument("--smooth", type=float, default=None, help="smooth= in um (default: the bundle's)")
    ap.add_argument("--simulate", action="store_true",
                    help="re-render the slice first (brainrt_train.evaluate.simulate_slice_change: 256-level "
                         "dithering, gamma 0.8, contrast 1.15, offset, blur)")
    ap.add_argument("--crop", action="append", default=None, help="y0:y1,x0:x1 (repeat; default: five crops)")
    return ap.parse_args(argv)


def main(argv=None):
    import brainrt
    from brainrt.api import default_model

    a = arguments(argv)
    bundle = brainrt.Bundle.load(a.model or default_model())
    image, _ = brainrt.read_tiff(a.image)
    mask = brainrt.read_tiff(a.mask)[0] if a.mask else None
    if a.simulate:
        from brainrt_train.evaluate import simulate_slice_change

        image = simulate_slice_change(image)
    kw = dict(stride=a.stride, smooth=a.smooth)
    if a.standardize is not None:
        kw["standardize"] = a.standardize
    codes = [c.codes for c in bundle.manifest.classes]
    t0 = time.perf_counter()
    whole = full_labels(brainrt.classify_image(image, bundle, **kw), image.shape)
    line = f"whole slice {image.shape[0]} x {image.shape[1]}: {time.perf_counter() - t0:.0f} s"
    print(line + (f", pixel accuracy {accuracy(whole, codes, mask):.3f}" if mask is not None else ""), flush=True)
    for text in a.crop or CROPS:
        box = parse_crop(text)
        y0, y1, x0, x1 = box
        crop = np.ascontiguousarray(image[y0:y1, x0:x1])
        m = full_labels(brainrt.classify_image(crop, bundle, **kw), crop.shape)
        shares = [(mg, *agreement(whole, m, box, mg)) for mg in a.margin]
        acc = (f"; pixel accuracy {accuracy(m, codes, mask[y0:y1, x0:x1]):.3f} (whole map there "
               f"{accuracy(whole[y0:y1, x0:x1], codes, mask[y0:y1, x0:x1]):.3f})") if mask is not None else ""
        print(f"crop {text} ({y1 - y0} x {x1 - x0}): share of tissue px agreeing with the whole map, by distance from "
              f"the border: " + ", ".join(f"> {mg} px {ag:.4f} ({n} px)" for mg, ag, n in shares) + acc, flush=True)


if __name__ == "__main__":
    main()
