"""Benchmark: naive torch per patch vs the runtime's per-patch path vs the dense path, fp32 and int8.

One run, one crop of a real slice, one thread count, side by side. Prints patches/s,
each path's ratio to naive, the dense path's multiply-adds/s as a share of the machine's
real fp32 and int8 peaks measured in the same run (:mod:`peak`: onnxruntime's own
matrix products of 2048 x 2048 matrices, and numpy's sgemm in a child process free of
the OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE handicaps; each printed with what ran it), and
the share of wall time spent in tiling and stitching.

int8: the dense path with the bundle's int8 graphs, timed interleaved with fp32 on the
same crop (``int8/fp32 dense speed: <ratio>x``), and, with ``--mask``, its agreement
with fp32 over the whole slice at stride 4 (``int8 label agreement (stride 4):
<fraction>`` over tissue, feature cosine similarity median and 1st percentile, pixel
accuracy of both against the annotation). A bundle without int8 graphs gets a
temporary int8 copy calibrated on the image (tools/quantize_bundle.py), said so.
The stride comparison times the dense path at strides 3 and 1, 12 and 4 on a 1000 x 1500
crop, at the default precision (stride 3 runs the stride-1 graph and keeps every third position, so the two should
cost about the same; ``--no-strides`` skips it). ``--whole-slice`` also runs ``brainrt classify`` of the whole
slice at stride 1 in a child process (labels, probabilities and overlay written to a
temporary folder) and
prints its wall time and peak RSS (minutes).

    python tools/bench_dense.py --model models/slice309-paper6 --image ../shared/data/slice309.tif \
        --mask ../shared/data/slice309_areas.tif [--whole-slice int8]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from peak import inherited_numpy_rate, median_peaks, peaks
from quantize_bundle import quantize_bundle


def dense_macs_per_position(patch_size=128, context=0):
    """Multiply-adds per output position of the dense graph at stride 1 (context branch included)."""
    from brainrt.geometry import final_map_size

    m = final_map_size(patch_size)
    conv = 7 * 7 * 1 * 16 + 5 * 5 * 16 * 32 + 3 * 3 * 32 * 64 + 3 * 3 * 64 * 128
    macs = conv + m * m * 128 * 1024 + 1024 * 64
    if context:  # conv 7/16, 5/32, 3/32, 3/16 at full resolution (a trous) and its FC1 half
        macs += 7 * 7 * 16 + 5 * 5 * 16 * 32 + 3 * 3 * 32 * 32 + 3 * 3 * 32 * 16 + m * m * 16 * 1024
    return macs


def naive_torch(image, bundle, n_patches, batch=256, threads=None):
    """What a user would write: crop patches, batch them, run the torch model in eager mode."""
    import torch

    from brainrt_train.model import PaperCNN, PlainCNN

    if threads:
        torch.set_num_threads(threads)
    P = bundle.patch_size
    ctx = bundle.manifest.context.factor if bundle.manifest.context else 0
    model = PlainCNN(PaperCNN(len(bundle.class_names), patch_size=P, context=ctx).eval())  # same shape and cost
    norm = bundle.normalization
    P = bundle.manifest.footprint  # the pixels the network reads (512 with the context branch)
    image = np.pad(image, P // 2, mode="reflect") if min(image.shape) <= P else image
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


def int8_bundle(bundle, image_path, tmp, threads):
    """``bundle`` if it has int8 graphs, else a temporary copy with them (calibrated on ``image_path``)."""
    import brainrt

    if "int8" in bundle.manifest.precisions:
        return bundle
    out = Path(tmp) / (bundle.path.name + "-int8")
    entry = quantize_bundle(bundle.path, out, calib_image=image_path)
    print(f"note: {bundle.path} has no int8 graphs; timing a copy quantized now ({entry['calibration']['method']} "
          f"calibration on {Path(image_path).name})")
    return brainrt.Bundle.load(out, threads=threads)


def int8_agreement(image_path, mask_path, bundle, stride=4):
    """fp32 vs int8 over the slice's tissue at ``stride``: labels, feature cosine, pixel accuracy."""
    import brainrt
    from brainrt.api import score

    out = {}
    for p in ("fp32", "int8"):
        g = brainrt.featurize(image_path, bundle, stride=stride, precision=p)
        r = brainrt.classify(g, bundle)
        out[p] = (g, r, score(r, mask_path, bundle)["pixel_accuracy"])
    (g32, r32, acc32), (g8, r8, acc8) = out["fp32"], out["int8"]
    v = g32.valid
    a, b = g32.features[v].astype(np.float64), g8.features[v].astype(np.float64)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    cos = np.where((na == 0) & (nb == 0), 1.0, (a * b).sum(1) / np.maximum(na * nb, 1e-30))
    return {"label_agreement": float((r32.labels[v] == r8.labels[v]).mean()), "n_cells": int(v.sum()),
            "cosine_median": float(np.median(cos)), "cosine_p1": float(np.percentile(cos, 1)),
            "pixel_accuracy_fp32": acc32, "pixel_accuracy_int8": acc8,
            "seconds_fp32": g32.stats["seconds"], "seconds_int8": g8.stats["seconds"]}


#: Python expression: this process's peak resident memory in bytes (VmHWM, Linux). Not ``ru_maxrss``: Linux
#: carries that over from the parent across fork and exec, so a child of this benchmark (which holds its
#: crops, torch and the fp32 arena by then) reported the parent's 1.81 GB for a 1.02 GB run.
OWN_PEAK_RSS = "int(next(ln for ln in open('/proc/self/status') if ln.startswith('VmHWM:')).split()[1]) * 1024"


def whole_slice(model, image_path, precision, threads):
    """``brainrt classify`` of the whole slice at stride 1 in a fresh process, writing its outputs (labels,
    probabilities, overlay) into a temporary folder: wall seconds from reading the TIFF to the last file,
    the engine's own seconds in that run (cutting tiles, onnxruntime, stitching: the pure dense time),
    peak RSS bytes of the process and the precision it ran."""
    code = ("import json, sys, time; from brainrt import api; from brainrt.cli import main; st = {}; "
            "close = api._close; api._close = lambda m, p, v: st.update(close(m, p, v)) or st; "
            "t = time.perf_counter(); main(['-q', 'classify', sys.argv[2], '-m', sys.argv[1], '--stride', '1', "
            "'--precision', sys.argv[3], '--threads', sys.argv[4], '-o', sys.argv[5]], standalone_mode=False); "
            "print(json.dumps({'seconds': time.perf_counter() - t, 'stats': st, 'rss': " + OWN_PEAK_RSS + "}))")
    with tempfile.TemporaryDirectory(prefix="bench-whole-") as tmp:
        t = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", code, str(model), str(image_path), precision, str(threads),
                               str(Path(tmp) / "slice.labels.ome.tif")], check=True, capture_output=True, text=True)
        wall = time.perf_counter() - t
    r = json.loads(done.stdout.strip().splitlines()[-1])
    engine = sum(r["stats"]["timings"].values())
    return {"seconds": r["seconds"], "process_wall_s": wall, "engine_s": engine, "peak_rss_bytes": r["rss"],
            "precision": r["stats"]["precision"], "patches": r["stats"]["patches"]}


def stride_costs(image, bundle, shape=(1000, 1500), pairs=((3, 1), (12, 4)), precision="auto"):
    """Seconds of the dense path at each stride of ``pairs`` on a centred crop of ``shape`` (all cells),
    and the ratio of each pair: a stride no graph has (3, 12) against the graph it subsamples (1, 4)."""
    import brainrt

    h, w = image.shape
    ch, cw = min(shape[0], h), min(shape[1], w)
    crop = np.ascontiguousarray(image[(h - ch) // 2 : (h - ch) // 2 + ch, (w - cw) // 2 : (w - cw) // 2 + cw])
    secs = {}
    for s in sorted({s for p in pairs for s in p}):
        g = brainrt.featurize(crop, bundle, stride=s, tissue="all", precision=precision)
        assert g.stats["method"] == "dense", s
        secs[s] = g.stats["seconds"]
    return {"crop": [ch, cw], "seconds": secs, "precision": g.stats["precision"],
            "ratios": {f"{a}/{b}": secs[a] / secs[b] for a, b in pairs}}


def _args(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="models/slice309-paper6")
    ap.add_argument("--image", default="../shared/data/slice309.tif")
    ap.add_argument("--crop", type=int, default=1024, help="Side of the crop (centred on the tissue).")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--naive-patches", type=int, default=512, help="Patches timed for the naive path.")
    ap.add_argument("--patch-stride", type=int, default=4, help="Grid stride for the per-patch runtime path.")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--mask", default=None, help="Annotation of --image: int8 agreement at stride 4 over the slice.")
    ap.add_argument("--whole-slice", nargs="*", default=None, choices=["fp32", "int8"],
                    help="Also classify the whole slice at stride 1 with these precisions (default int8; minutes).")
    ap.add_argument("--no-strides", action="store_true",
                    help="Skip the stride comparison (strides 3 vs 1 and 12 vs 4 on a 1000 x 1500 crop, default precision).")
    ap.add_argument("--json", default=None, help="Also write the results here.")
    return ap.parse_args(argv)


def _paths(crop, bundle, args):
    """Medians over ``args.repeats`` of the peaks, per-patch, dense fp32 and dense int8 positions/s (interleaved,
    so the ratios see the same load), and of the dense path's tiling + stitching share of wall time."""
    import brainrt

    runs = {"per_patch": [], "dense": [], "share": [], "dense8": [], "peaks": []}
    for _ in range(args.repeats):
        runs["peaks"].append(peaks(args.threads, repeats=3))  # the peak under the same load as the paths timed
        g = brainrt.featurize(crop, bundle, stride=args.patch_stride, method="patch", tissue="all", precision="fp32")
        runs["per_patch"].append(g.stats["patches_per_s"])
        g = brainrt.featurize(crop, bundle, stride=1, method="dense", tissue="all", precision="fp32")
        runs["dense"].append(g.stats["patches_per_s"])
        t = g.stats["timings"]
        runs["share"].append((t["tiling"] + t["stitching"]) / g.stats["seconds"])
        g = brainrt.featurize(crop, bundle, stride=1, method="dense", tissue="all", precision="int8")
        runs["dense8"].append(g.stats["patches_per_s"])  # right after fp32 on the same crop: the ratio sees the same load
    return {k: median_peaks(v) if k == "peaks" else statistics.median(v) for k, v in runs.items()}


def _print_peaks(res, macs):
    """Each precision's peak candidates (with what ran them), the peak, and the dense path's share of it."""
    for name, p in res["peaks"].items():
        for c in p["candidates"]:
            print(f"{name} peak candidate: {c['rate'] / 1e9:6.1f} G multiply-adds/s  {c['how']}")
        print(f"{name} peak: {p['peak'] / 1e9:.1f} G multiply-adds/s ({p['how'].split(',')[0]})")
        print(f"dense {name} (stride 1): {macs[name] / 1e9:.1f} G multiply-adds/s = {100 * macs[name] / p['peak']:.0f}% "
              f"of the {name} peak")
    ref = res["numpy_here"]
    print(f"(not a peak: {ref['how']}: {ref['rate'] / 1e9:.1f} G multiply-adds/s)")


def _print_strides(res, image, bundle):
    sc = stride_costs(image, bundle)
    res["strides"] = sc
    print(f"strides on a {sc['crop'][0]} x {sc['crop'][1]} crop (dense, {sc['precision']}): "
          + ", ".join(f"stride {k} {v:.1f} s" for k, v in sc["seconds"].items()))
    print("stride cost ratios: " + ", ".join(f"stride {k}: {v:.2f}x" for k, v in sc["ratios"].items()))


def _print_int8(res, args, bundle):
    print(f"int8/fp32 dense speed: {res['int8']['ratio']:.2f}x")
    if args.mask:
        a = int8_agreement(args.image, args.mask, bundle)
        res["int8"]["agreement"] = a
        print(f"int8 label agreement (stride 4): {a['label_agreement']:.4f}")
        print(f"int8 feature cosine similarity (stride 4, {a['n_cells']} tissue cells): median {a['cosine_median']:.5f}, "
              f"1st percentile {a['cosine_p1']:.5f}")
        print(f"pixel accuracy vs annotation (stride 4): fp32 {a['pixel_accuracy_fp32']:.4f}, int8 "
              f"{a['pixel_accuracy_int8']:.4f} ({100 * (a['pixel_accuracy_int8'] - a['pixel_accuracy_fp32']):+.2f} points)")
    _print_whole(res, args, bundle)


def _print_whole(res, args, bundle):
    """--whole-slice: `brainrt classify` of the whole slice at stride 1, against the engine's own time in that
    run and against the pure dense time at this run's crop rate of the same precision."""
    whole = [] if args.whole_slice is None else (args.whole_slice or ["int8"])  # bare --whole-slice: int8
    for p in whole:
        r = whole_slice(bundle.path, args.image, p, args.threads)
        res["int8"][f"whole_slice_stride1_{p}"] = r
        rate = res["int8"]["dense"] if r["precision"] == "int8" else res["dense"]
        dense = r["patches"] / rate
        print(f"whole slice, stride 1, {p} ({r['precision']}, {r['patches']} positions): `brainrt classify` with its "
              f"outputs {r['seconds']:.1f} s ({r['process_wall_s']:.1f} s process wall), peak RSS "
              f"{r['peak_rss_bytes'] / 1e9:.2f} GB")
        print(f"  pure dense time: {r['engine_s']:.1f} s the engine's own in that run (tiles, onnxruntime, stitching): "
              f"whole / dense {r['seconds'] / r['engine_s']:.2f}x; {dense:.1f} s at this run's {r['precision']} crop "
              f"rate: {r['seconds'] / dense:.2f}x; int8/fp32 dense speed {res['int8']['ratio']:.2f}x")


def main(argv=None):
    args = _args(argv)
    import brainrt

    bundle = brainrt.Bundle.load(args.model, threads=args.threads)
    image, _ = brainrt.read_tiff(args.image)
    h, w = image.shape
    c = args.crop
    y0, x0 = max(0, h // 2 - c // 2), max(0, w // 2 - c // 2)
    crop = np.ascontiguousarray(image[y0 : y0 + c, x0 : x0 + c])
    res = {"numpy_here": inherited_numpy_rate(), "crop": c, "threads": args.threads}
    res["naive"] = statistics.median(naive_torch(crop, bundle, args.naive_patches, threads=args.threads)
                                     for _ in range(args.repeats))
    tmp = tempfile.TemporaryDirectory(prefix="bench-int8-")
    bundle = int8_bundle(bundle, args.image, tmp.name, args.threads)
    r = _paths(crop, bundle, args)
    per_pos = dense_macs_per_position(bundle.patch_size, bundle.manifest.context.factor if bundle.manifest.context else 0)
    macs = {"fp32": r["dense"] * per_pos, "int8": r["dense8"] * per_pos}
    res.update(peaks=r["peaks"], per_patch=r["per_patch"], dense=r["dense"], dense_macs=macs, tiling_stitching_share=r["share"],
               int8={"dense": r["dense8"], "ratio": r["dense8"] / r["dense"]})
    rows = [("naive torch eager, per patch", res["naive"]), (f"runtime per-patch (stride {args.patch_stride})",
            r["per_patch"]), ("runtime dense (stride 1)", r["dense"]), ("runtime dense int8 (stride 1)", r["dense8"])]
    print(f"crop {c} x {c} of {args.image}, {args.threads} threads, medians of {args.repeats} runs; "
          f"providers {', '.join(bundle.session.get_providers())}")
    print(f"{'path':38s} {'patches/s':>12s} {'x naive':>9s}")
    for name, v in rows:
        print(f"{name:38s} {v:12.1f} {v / res['naive']:9.1f}")
    _print_peaks(res, macs)
    print(f"dense: tiling + stitching = {100 * r['share']:.1f}% of wall time")
    _print_int8(res, args, bundle)
    if not args.no_strides:
        _print_strides(res, image, bundle)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    tmp.cleanup()


if __name__ == "__main__":
    main()
