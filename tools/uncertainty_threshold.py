"""What an ``--uncertain-below`` threshold means on an annotated slice: the error rate of the map's pixels
whose margin (between the two likeliest areas, after the smoothing) is below it, against those above it.

For each head, the slice is classified as ``brainrt classify`` does (the bundle's default smoothing unless
``--smooth``), the margin is brought to full resolution, and every labeled pixel is scored (``--where all``)
or only the test footprints of the bundle's recorded split (``--where test``: held out for heads fitted on
the split's training bands, not for a head refitted on every label, which the bundle's manifest says):

    python tools/uncertainty_threshold.py --model models/slice309-paper6 \\
        --image ../shared/data/slice309.tif --mask ../shared/data/slice309_areas.tif --head logreg --where all
"""

from __future__ import annotations

import argparse

import numpy as np

THRESHOLDS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5)


def margins_and_wrong(bundle, image, truth, head, smooth, stride, where, mask_path):
    """Full-resolution margin and wrong-pixel flags of the pixels scored."""
    import brainrt
    from brainrt.geometry import upsample
    from brainrt.truth import held_out_region, training_slice

    res = brainrt.classify_image(image, bundle, stride=stride, head=head, smooth=smooth)
    if res.probabilities is None:
        return None, None, res
    full_labels = upsample(res.labels, stride, image.shape)
    margin = upsample(res.uncertainty()[..., 0], stride, image.shape)
    t = np.full(truth.shape, -1, np.int16)
    for i, cs in enumerate(bundle.manifest.codes_per_class):
        t[np.isin(truth, cs)] = i
    sel = t >= 0
    if where == "test":
        own = training_slice(bundle.manifest, mask_path)
        sel &= held_out_region(bundle.manifest, truth, own[0])
    m = np.where(np.isfinite(margin), margin, 0.0)[sel]  # off tissue: no area, counted wrong, margin 0
    return m, full_labels[sel] != t[sel], res


def table(m, wrong, thresholds):
    """Rows (T, share of pixels below, error rate below, error rate above, ratio)."""
    rows = []
    for thr in thresholds:
        lo = m < thr
        eb = wrong[lo].mean() if lo.any() else float("nan")
        ea = wrong[~lo].mean() if (~lo).any() else float("nan")
        rows.append((thr, lo.mean(), eb, ea, eb / ea if ea > 0 else float("inf")))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--image", required=True)
    ap.add_argument("--mask", required=True)
    ap.add_argument("--head", action="append", default=None, help="heads (default: the bundle's default)")
    ap.add_argument("--smooth", type=float, default=None, help="sigma um (default: the bundle's)")
    ap.add_argument("--stride", type=int, default=16)
    ap.add_argument("--where", choices=("all", "test"), default="all")
    a = ap.parse_args(argv)
    import tifffile

    import brainrt

    bundle = brainrt.Bundle.load(a.model)
    image, truth = tifffile.imread(a.image), tifffile.imread(a.mask)
    for head in a.head or [None]:
        m, wrong, res = margins_and_wrong(bundle, image, truth, head, a.smooth, a.stride, a.where, a.mask)
        if m is None:
            print(f"head {res.head}: no probabilities, no margin")
            continue
        print(f"head {res.head}, smoothing {res.smooth_um:g} um, stride {a.stride}, pixels scored: {a.where} "
              f"({wrong.size}), error rate {wrong.mean():.3f}")
        print(f"{'T':>5} {'below':>7} {'err<T':>7} {'err>=T':>7} {'ratio':>6}")
        for thr, share, eb, ea, r in table(m, wrong, THRESHOLDS):
            print(f"{thr:>5.2f} {share:>7.3f} {eb:>7.3f} {ea:>7.3f} {r:>6.1f}")


if __name__ == "__main__":
    main()
