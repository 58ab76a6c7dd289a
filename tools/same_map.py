"""Same data, same map: slice309 in five pixel types through the default pipeline.

Classifies the slice as uint8 (the reference), uint16 x257, uint16 narrow (1000 + v*95/255),
float32 / 255, float32 0..255 and float64 / 255, with the default options (intensity
standardization on), and prints for each the share of the reference's tissue cells with
the same label, the share of reference background cells mapped into tissue, and the pixel
accuracy against the annotation when a mask is given.

    python tools/same_map.py --image ../shared/data/slice309.tif --mask ../shared/data/slice309_areas.tif --stride 16
"""

from __future__ import annotations

import argparse

import numpy as np


def variants(u8):
    """Name -> the same slice in another pixel type."""
    f = u8.astype(np.float64)
    return {"uint8": u8, "uint16 x257": (u8.astype(np.uint16) * 257),
            "uint16 1000..1095": (1000 + np.rint(f * 95 / 255)).astype(np.uint16),
            "float32 /255": (f / 255).astype(np.float32), "float32 0..255": f.astype(np.float32),
            "float64 /255": f / 255}


def main(argv=None):
    import brainrt

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image", required=True)
    ap.add_argument("--mask", default=None)
    ap.add_argument("--model", default=None)
    ap.add_argument("--stride", type=int, default=16)
    a = ap.parse_args(argv)
    from brainrt.api import default_model, score

    bundle = brainrt.Bundle.load(a.model or default_model())
    u8, _ = brainrt.read_tiff(a.image)
    ref = None
    print(f"{'pixel type':<20} {'tissue labels = uint8':>22} {'bg -> tissue':>13} {'pixel acc':>10}")
    for name, img in variants(u8).items():
        res = brainrt.classify_image(img, bundle, stride=a.stride)
        lab = res.labels
        if ref is None:
            ref = lab
        tissue = ref >= 0
        same = float((lab[tissue] == ref[tissue]).mean())
        bg_in = float((lab[~tissue] >= 0).mean()) if (~tissue).any() else 0.0
        acc = score(res, a.mask, bundle)["pixel_accuracy"] if a.mask else float("nan")
        print(f"{name:<20} {same:>22.4f} {bg_in:>13.4f} {acc:>10.4f}", flush=True)


if __name__ == "__main__":
    main()
