"""Pixel size honoured: slice309 binned 2 x 2 (2.34 um pixels) classified as given, resampled on the fly, and
resampled by hand to 1.17 um (bilinear), each scored against the annotation (binned the same way).

Prints one line per case: pixel accuracy of the default map (smoothed) over the annotated pixels.

    python tools/pixel_size_check.py --image ../shared/data/slice309.tif --mask ../shared/data/slice309_areas.tif
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np


def binned(image):
    """2 x 2 mean binning, uint8."""
    h, w = (image.shape[0] // 2) * 2, (image.shape[1] // 2) * 2
    return np.rint(image[:h, :w].astype(np.float64).reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))).astype(np.uint8)


def by_hand(small, shape):
    """Bilinear resampling of ``small`` back to ``shape`` (pixel centres aligned), uint8."""
    from scipy.ndimage import map_coordinates

    ys = (np.arange(shape[0]) + 0.5) / 2 - 0.5
    xs = (np.arange(shape[1]) + 0.5) / 2 - 0.5
    out = np.empty(shape, np.uint8)
    for y0 in range(0, shape[0], 256):
        yy, xx = np.meshgrid(ys[y0:y0 + 256], xs, indexing="ij")
        out[y0:y0 + 256] = np.clip(np.rint(map_coordinates(small.astype(np.float32), [yy, xx], order=1,
                                                           mode="nearest")), 0, 255)
    return out


def main(argv=None):
    import tifffile

    import brainrt
    from brainrt.api import default_model
    from tools.crop_agreement import accuracy

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image", required=True)
    ap.add_argument("--mask", required=True)
    ap.add_argument("--model", default=None)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="  log: %(message)s")
    logging.getLogger("brainrt").setLevel(logging.INFO)
    bundle = brainrt.Bundle.load(a.model or default_model())
    codes = [c.codes for c in bundle.manifest.classes]
    image, _ = brainrt.read_tiff(a.image)
    mask = brainrt.read_tiff(a.mask)[0]
    small, small_mask = binned(image), mask[: image.shape[0] // 2 * 2: 2, : image.shape[1] // 2 * 2: 2]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "slice309_bin2.tif"
        tifffile.imwrite(path, small, imagej=True, resolution=(1 / 2.34, 1 / 2.34), metadata={"unit": "um"})
        cases = [("binned, read as 1.17 um (as before), stride 16", dict(image=path, stride=16, pixel_size_um=1.17),
                  small_mask),
                 ("binned, 2.34 um resampled on the fly, stride 8 (16 at 1.17 um)", dict(image=path, stride=8),
                  small_mask),
                 ("binned, 2.34 um resampled on the fly, stride 16", dict(image=path, stride=16), small_mask),
                 ("binned, resampled by hand to 1.17 um (bilinear), --standardize off, stride 16",
                  dict(image=by_hand(small, image.shape), stride=16, standardize="off"), mask),
                 ("full resolution, stride 16", dict(image=image, stride=16), mask)]
        for name, kw, truth in cases:
            t0 = time.perf_counter()
            res = brainrt.classify_image(kw.pop("image"), bundle, **kw)
            full = brainrt.upsample(res.labels, res.grid.stride, res.grid.image_shape)
            n = min(full.shape[0], truth.shape[0]), min(full.shape[1], truth.shape[1])
            acc = accuracy(full[: n[0], : n[1]], codes, truth[: n[0], : n[1]])
            print(f"{name}: pixel accuracy {acc:.3f} ({time.perf_counter() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
