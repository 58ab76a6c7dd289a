"""Add int8 copies of a bundle's feature graphs to a copy of the bundle, calibrated on an image.

    python tools/quantize_bundle.py models/slice309-paper6 --calib-image ../shared/data/slice309.tif -o /tmp/paper6-int8

For bundles exported before the trainer wrote int8 graphs itself. The source bundle's
hashes are checked first; the copy gets ``*.int8.onnx``, ``weights_int8.bin`` and an
``int8`` manifest entry (files, scheme, calibration set and method, agreement with
fp32 on held-out footprints), with every file's sha256 recomputed (an older manifest
is written in the current schema). The calibration
footprints are drawn at random tissue positions of the image (Otsu), or inside
``--calib-mask`` > 0; the held-out check footprints come from a second, disjoint draw.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import shutil
import tempfile
from pathlib import Path

from brainrt.geometry import window_offset
from brainrt.model.manifest import Int8Graphs
from brainrt.model.seal import seal_bundle, verify_bundle
from brainrt_train.quantize import INT8_WEIGHTS, METHODS, quantize_bundle_graphs, sample_footprints


def _read_image(path):
    import tifffile

    image = tifffile.imread(path)
    if image.ndim != 2:
        raise SystemExit(f"{path}: expected a 2D grayscale image, got shape {image.shape}")
    return image


def quantize_bundle(bundle, out, *, calib_image, calib_mask=None, n_calib=512, n_check=512, methods=METHODS,
                    seed=0):
    """Copy ``bundle`` to ``out`` with int8 graphs added; return the ``int8`` manifest entry."""
    import joblib

    bundle, out = Path(bundle), Path(out)
    manifest = verify_bundle(bundle)  # every file's sha256 first
    if out.exists():
        raise SystemExit(f"{out}: already exists")
    image = _read_image(calib_image)
    if manifest.intensity is not None:  # as the runtime sees the image
        from brainrt.engine.intensity import standardize_image

        image = standardize_image(image, manifest.intensity, None, manifest.normalization.trained_dtype)
    mask = _read_image(calib_mask) if calib_mask else None
    x = sample_footprints(image, footprint=manifest.footprint, n=n_calib + n_check, seed=seed, mask=mask,
                          normalization=dataclasses.asdict(manifest.normalization))
    x_calib, x_check = x[:n_calib], x[n_calib:]
    head = joblib.load(bundle / manifest.heads[manifest.default_head])
    g = manifest.dense_onnx
    dense = g and {"files": g.files, "window": g.window,
                   "offset": window_offset(manifest.patch_size) if g.offset is None else g.offset}
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".quantize-", dir=out.parent) as tmp:
        work = Path(tmp) / out.name
        shutil.copytree(bundle, work)
        for old in [*work.glob("*.int8.onnx"), work / INT8_WEIGHTS]:
            old.unlink(missing_ok=True)
        where = f"{calib_mask and 'inside ' + Path(calib_mask).name or 'tissue (Otsu) of'} {Path(calib_image).name}"
        entry = quantize_bundle_graphs(work, x_calib, x_check, head=head, dense=dense, methods=methods,
                                       patch_file=manifest.onnx.file,
                                       calibration_set=f"{n_calib} footprints at random positions in {where} "
                                                       f"(seed {seed}); check set: {n_check} more")
        seal_bundle(work, dataclasses.replace(manifest, int8=Int8Graphs.from_dict(entry)))
        work.rename(out)
    return entry


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--calib-image", required=True, type=Path)
    ap.add_argument("--calib-mask", type=Path, help="draw footprints where this mask is > 0 (default: Otsu tissue)")
    ap.add_argument("-o", "--out", type=Path, help="output bundle folder (default: BUNDLE-int8)")
    ap.add_argument("--n-calib", type=int, default=512)
    ap.add_argument("--n-check", type=int, default=512)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = args.out or args.bundle.with_name(args.bundle.name + "-int8")
    entry = quantize_bundle(args.bundle, out, calib_image=args.calib_image, calib_mask=args.calib_mask,
                            n_calib=args.n_calib, n_check=args.n_check, methods=args.methods, seed=args.seed)
    for m, a in entry["agreement_by_method"].items():
        print(f"{m:10s} label agreement {a['label_agreement']:.4f}  cosine median {a['cosine_median']:.5f}  "
              f"p1 {a['cosine_p1']:.5f}  (n={a['n']})")
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"chose {entry['calibration']['method']}; wrote {out} ({size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
