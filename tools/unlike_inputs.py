"""The input check's scores (:mod:`brainrt.familiar`) on a slice, its crops and its simulated changes.

For each variant it prints the three scores a run logs and records (tissue share outside the
training tissue's central gray values, neighbour correlation, feature deficit) and whether the
run would warn. The thresholds (:data:`brainrt.familiar.INTENSITY_WARN`,
:data:`brainrt.familiar.CORRELATION_WARN`) must lie between the slice's own variants (crops,
blur, binning, gray levels, gain: mapped, no warning) and the ones a map must not be trusted on
(inverted contrast, noise: warned). A variant refused outright (no tissue found) is printed as such.

    python tools/unlike_inputs.py --image ../shared/data/slice309.tif
"""

from __future__ import annotations

import argparse

import numpy as np

#: Crops (y0:y1, x0:x1) of slice309: cortex only (the issue's), and two with background in view.
CROPS = ((400, 1100, 4000, 5400), (0, 1024, 4000, 5024), (256, 1280, 1600, 2624))


def variants(image, seed=0):
    """(name, image, expected to warn) for the slice, its crops and its simulated changes."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    f = image.astype(np.float64)
    h, w = image.shape[0] // 2 * 2, image.shape[1] // 2 * 2
    binned = f[:h, :w].reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
    u8 = lambda x: np.clip(np.rint(x), 0, 255).astype(np.uint8)  # noqa: E731
    out = [("as is", image, False)]
    out += [(f"crop {y0}:{y1},{x0}:{x1}", np.ascontiguousarray(image[y0:y1, x0:x1]), False) for y0, y1, x0, x1 in CROPS]
    out += [("blur sigma 1 px", u8(ndimage.gaussian_filter(f, 1.0)), False),
            ("binned 2 x 2 and back", u8(ndimage.zoom(binned, 2, order=1)), False),
            ("19 gray levels", u8(np.rint(f / 255 * 18) * 255 / 18), False),
            ("gain 0.8, offset +20", u8(0.8 * f + 20), False),
            ("Poisson-like noise", u8(f + rng.normal(0, 1, f.shape) * np.sqrt(np.maximum(f, 1))), False),
            ("inverted (255 - slice)", (255 - image).astype(image.dtype), True),
            ("uniform noise", rng.integers(0, 256, image.shape, dtype=np.uint8), True)]
    return out


def main(argv=None):
    import brainrt
    from brainrt.api import default_model
    from brainrt.errors import BrainrtError
    from brainrt.familiar import familiarity

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image", required=True)
    ap.add_argument("--model", default=None)
    ap.add_argument("--stride", type=int, default=16)
    a = ap.parse_args(argv)
    bundle = brainrt.Bundle.load(a.model or default_model())
    image, _ = brainrt.read_tiff(a.image)
    print("| variant | outside gray values | neighbour correlation | feature deficit (nats/feature) | warns | expected |")
    print("|---|---|---|---|---|---|")
    for name, img, expect in variants(image):
        try:
            plan = brainrt.make_plan(img, bundle, stride=a.stride, tissue="all" if name == "uniform noise" else None)
        except BrainrtError as exc:
            print(f"| {name} | refused: {exc} | | | yes (refused) | {'warn' if expect else 'map'} |", flush=True)
            continue
        s = familiarity(plan, bundle)
        fmt = lambda v, spec: "n/a" if v is None else format(v, spec)  # noqa: E731
        print(f"| {name} | {fmt(s['intensity_outside'], '.3f')} | {fmt(s['neighbour_correlation'], '.3f')} | "
              f"{fmt(s['feature_deficit'], '.2f')} | {'yes' if s['unlike'] else 'no'} | "
              f"{'warn' if expect else 'map'} |", flush=True)


if __name__ == "__main__":
    main()
