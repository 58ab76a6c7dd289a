"""Benchmark: naive torch per patch vs the runtime's per-patch path vs the dense path.

One run, one crop of a real slice, one thread count, side by side. Prints patches/s,
each path's ratio to naive, the dense path's multiply-adds/s against the sgemm peak
measured in the same run, and the share of wall time spent in tiling and stitching.

    python tools/bench_dense.py --model models/slice309-paper6 --image ../shared/data/slice309.tif
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np


def sgemm_peak(n=2048, repeats=5):
    """Median float32 matrix-product rate in multiply-adds/s (numpy, this machine, now)."""
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    b = a.copy()
    a @ b
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return n**3 / statistics.median(times)


def dense_macs_per_position(patch_size=128):
    """Multiply-adds per output position of the dense graph at stride 1."""
    from brainrt.geometry import final_map_size

    m = final_map_size(patch_size)
    conv = 7 * 7 * 1 * 16 + 5 * 5 * 16 * 32 + 3 * 3 * 32 * 64 + 3 * 3 * 64 * 128
    return conv + m * m * 128 * 1024 + 1024 * 64


def naive_torch(image, bundle, n_patches, batch=256, threads=None):
    """What a user would write: crop patches, batch them, run the torch model in eager mode."""
    import torch

    from brainrt_train.model import PaperCNN, PlainCNN

    if threads:
        torch.set_num_threads(threads)
    P = bundle.patch_size
    model = PlainCNN(PaperCNN(len(bundle.class_names), patch_size=P).eval())  # same shape and cost
    norm = bundle.normalization
    rng = np.random.default_rng(0)
    h, w = image.shape
    ys = rng.integers(0, h - P, n_patches)
    xs = rng.integers(0, w - P, n_patches)
    t = time.perf_counter()
    with torch.no_grad():
        for i in range(0, n_patches, batch):
            x = np.stack([image[y : y + P, z : z + P] for y, z in zip(ys[i : i + batch], xs[i : i + batch])])
            x = (torch.from_numpy(x).float()[:, None] / 255.0 - norm.mean) / norm.std
            model(x)
    return n_patches / (time.perf_counter() - t)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="models/slice309-paper6")
    ap.add_argument("--image", default="../shared/data/slice309.tif")
    ap.add_argument("--crop", type=int, default=1024, help="Side of the crop (centred on the tissue).")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--naive-patches", type=int, default=512, help="Patches timed for the naive path.")
    ap.add_argument("--patch-stride", type=int, default=4, help="Grid stride for the per-patch runtime path.")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None, help="Also write the results here.")
    args = ap.parse_args(argv)

    import brainrt

    bundle = brainrt.Bundle.load(args.model, threads=args.threads)
    image, _ = brainrt.read_tiff(args.image)
    h, w = image.shape
    c = args.crop
    y0, x0 = max(0, h // 2 - c // 2), max(0, w // 2 - c // 2)
    crop = np.ascontiguousarray(image[y0 : y0 + c, x0 : x0 + c])
    peak = sgemm_peak()
    naive = statistics.median(naive_torch(crop, bundle, args.naive_patches, threads=args.threads)
                              for _ in range(args.repeats))
    per_patch, dense, shares = [], [], []
    for _ in range(args.repeats):
        g = brainrt.featurize(crop, bundle, stride=args.patch_stride, method="patch", tissue="all")
        per_patch.append(g.stats["patches_per_s"])
        g = brainrt.featurize(crop, bundle, stride=1, method="dense", tissue="all")
        dense.append(g.stats["patches_per_s"])
        t = g.stats["timings"]
        shares.append((t["tiling"] + t["stitching"]) / g.stats["seconds"])
    per_patch, dense, share = statistics.median(per_patch), statistics.median(dense), statistics.median(shares)
    macs = dense * dense_macs_per_position(bundle.patch_size)
    rows = [("naive torch eager, per patch", naive), (f"runtime per-patch (stride {args.patch_stride})", per_patch),
            ("runtime dense (stride 1)", dense)]
    print(f"crop {c} x {c} of {args.image}, {args.threads} threads, medians of {args.repeats} runs")
    print(f"{'path':38s} {'patches/s':>12s} {'x naive':>9s}")
    for name, v in rows:
        print(f"{name:38s} {v:12.1f} {v / naive:9.1f}")
    print(f"sgemm peak (numpy, float32): {peak / 1e9:.1f} G multiply-adds/s")
    print(f"dense: {macs / 1e9:.1f} G multiply-adds/s = {100 * macs / peak:.0f}% of the sgemm peak")
    print(f"dense: tiling + stitching = {100 * share:.1f}% of wall time")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"naive": naive, "per_patch": per_patch, "dense": dense, "sgemm_peak_macs": peak,
                       "dense_macs": macs, "tiling_stitching_share": share, "crop": c, "threads": args.threads}, f,
                      indent=2)


if __name__ == "__main__":
    main()
