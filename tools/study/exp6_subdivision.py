"""Experiment 6: sub-division of the cortex into clusters of dense trained features, and their
relation to cortical depth."""

from __future__ import annotations

import time

import numpy as np
from matplotlib.patches import Patch
from scipy import ndimage
from sklearn.metrics import normalized_mutual_info_score

import brainrt
from brainrt.api import upsample
from brainrt.geometry import cell_centre
from brainrt.plots import class_colors
from brainrt.engine.tissue import otsu_threshold

from .common import DPI, PAPER, fmt, log, plt_, save_fig

KEY = "exp6_subdivision"
DEPTH_DEFINITIONS = {
    "surface_um": "distance to the nearest background pixel: Euclidean distance transform "
                  "(scipy.ndimage.distance_transform_edt) of the tissue mask (Otsu threshold of the image "
                  "smoothed with sigma 2 px, small specks removed, holes filled)",
    "white_matter_um": "distance to the nearest pixel annotated as white matter (WM class)",
    "surface_ray_um": "distance to the first background pixel along the direction pointing away from the "
                      "nearest white-matter pixel (reaches the pial surface rather than a cut edge)",
    "relative": "surface_ray / (surface_ray + white_matter): 0 at the pial surface, 1 at the white matter"}
DEPTH_LABELS = {"surface_um": "distance to background (um)", "white_matter_um": "distance to white matter (um)",
                "relative": "relative depth (0 surface, 1 WM)"}


def tissue_mask(image):
    """Tissue = Otsu threshold of the lightly smoothed image, small specks removed, holes filled."""
    sm = ndimage.gaussian_filter(image.astype(np.float32), 2.0)
    t = otsu_threshold(sm)
    fg = sm > t
    lab, n = ndimage.label(fg)
    if n > 1:
        sizes = ndimage.sum(fg, lab, index=np.arange(1, n + 1))
        keep = np.zeros(n + 1, bool)
        keep[1:] = sizes >= 0.05 * sizes.max()
        fg = keep[lab]
    return ndimage.binary_fill_holes(fg), float(t)


def ray_to_background(tissue, y, x, uy, ux):
    """Pixels travelled from each (y, x) along the unit direction (uy, ux) until the first
    background pixel (NaN when the ray leaves the image first or has no direction)."""
    H, W = tissue.shape
    dist = np.full(len(y), np.nan)
    active = np.flatnonzero((uy != 0) | (ux != 0))
    for k in range(1, H + W):
        if not active.size:
            break
        iy = np.rint(y[active] + k * uy[active]).astype(np.int64)
        ix = np.rint(x[active] + k * ux[active]).astype(np.int64)
        outside = (iy < 0) | (iy >= H) | (ix < 0) | (ix >= W)
        hit = ~outside
        hit[hit] = ~tissue[iy[hit], ix[hit]]
        dist[active[hit]] = k
        active = active[~(hit | outside)]
    return dist


def depth_of_cells(st, y, x):
    """Depth measures (per cell centre, full-image pixel coordinates; :data:`DEPTH_DEFINITIONS`)
    and a diagnostic of the nearest background pixel's side."""
    px = st.pixel_size
    tissue, thr = tissue_mask(st.image)
    d_bg, (by, bx) = ndimage.distance_transform_edt(tissue, return_indices=True)
    depths = {"surface_um": d_bg[y, x] * px}
    info = {"tissue_threshold": thr}
    wm = [i for i, n in enumerate(st.names) if n.upper() in ("WM", "WHITE MATTER", "WHITE_MATTER")]
    wm_px = st.class_pixels(wm[0]) if wm else None
    if wm_px is not None and wm_px.any():
        d_wm, (wy, wx) = ndimage.distance_transform_edt(~wm_px, return_indices=True)
        dw = d_wm[y, x]
        vy, vx = y - wy[y, x], x - wx[y, x]
        norm = np.maximum(np.hypot(vy, vx), 1e-9)
        uy, ux = np.where(dw > 0, vy / norm, 0.0), np.where(dw > 0, vx / norm, 0.0)
        ray = ray_to_background(tissue, y.astype(np.float64), x.astype(np.float64), uy, ux)
        depths["white_matter_um"] = dw * px
        depths["surface_ray_um"] = ray * px
        depths["relative"] = ray / np.maximum(ray + dw, 1e-9)
        # is the nearest background pixel the one away from the white matter (pial-like)?
        gy, gx = by[y, x] - y, bx[y, x] - x
        cos = (gy * uy + gx * ux) / np.maximum(np.hypot(gy, gx), 1e-9)
        info["nearest_background_away_from_wm_fraction"] = float(np.mean(cos > np.cos(np.pi / 4)))
        info["ray_left_image_fraction"] = float(np.mean(~np.isfinite(ray)))
    return depths, info


def _crop(st, region_px, stride):
    """Rows and columns ``(y0, y1, x0, x1)`` of the crop around ``region_px`` that holds every pixel
    its cells' footprints read (capped to 8 patches a side in quick mode)."""
    ys, xs = np.nonzero(region_px)
    H, W = st.image.shape
    m = st.F // 2 + stride  # every pixel a cell's footprint reads (the context field too), not a mirror
    y0, y1 = max(0, ys.min() - m), min(H, ys.max() + 1 + m)
    x0, x1 = max(0, xs.min() - m), min(W, xs.max() + 1 + m)
    if st.args.quick:  # cap the crop for speed
        cap = 8 * st.P
        cy, cx = (y0 + y1) // 2, (x0 + x1) // 2
        y0, y1 = max(y0, cy - cap // 2), min(y1, cy + cap // 2)
        x0, x1 = max(x0, cx - cap // 2), min(x1, cx + cap // 2)
    return y0, y1, x0, x1


def run(st):
    """PCA + KMeans of dense trained features inside the cortex; clusters vs cortical depth."""
    a = st.args
    name = a.subdivide_class if a.subdivide_class in st.names else st.names[0]
    if name != a.subdivide_class:
        st.notes.append(f"Class {a.subdivide_class!r} not in the bundle; sub-divided {name!r} instead.")
    stride = a.subdiv_stride * (2 if a.quick else 1)
    region_px = st.class_pixels(st.names.index(name))
    y0, y1, x0, x1 = _crop(st, region_px, stride)
    crop, creg = st.image[y0:y1, x0:x1], region_px[y0:y1, x0:x1]
    t = time.perf_counter()
    grid = brainrt.featurize(crop, st.bundle, stride=stride, tissue=creg, min_tissue=1e-9)
    t_feat = time.perf_counter() - t
    R, C = grid.shape
    cy_ = np.minimum(cell_centre(np.arange(R), stride), crop.shape[0] - 1)
    cx_ = np.minimum(cell_centre(np.arange(C), stride), crop.shape[1] - 1)
    sub = brainrt.subdivide(grid, region=creg[np.ix_(cy_, cx_)], k=a.k, seed=st.seed)
    sel = sub >= 0
    lab = sub[sel]
    gy, gx = np.nonzero(sel)  # row-major, as sub[sel]
    depths, info = depth_of_cells(st, cy_[gy] + y0, cx_[gx] + x0)
    res = {"class": name, "stride": stride, "k": a.k, "crop": [int(y0), int(y1), int(x0), int(x1)],
           "cells": int(sel.sum()), "featurize_seconds": round(t_feat, 1), **info,
           "depth_definitions": DEPTH_DEFINITIONS, "per_depth": {}}
    for key, d in depths.items():
        res["per_depth"][key] = _depth_stats(lab, d, a.k)
    res["primary_depth"] = "relative" if "relative" in depths else "surface_um"
    # controls: how much of the cells' image row / column the clusters explain
    res["controls"] = {"row_px": _depth_stats(lab, (cy_[gy] + y0).astype(np.float64), a.k),
                       "column_px": _depth_stats(lab, (cx_[gx] + x0).astype(np.float64), a.k)}
    res["cluster_fraction"] = {int(i): float((lab == i).mean()) for i in range(a.k)}
    st.results[KEY] = res
    log(f"exp6: {res['cells']} {name} cells at stride {stride} ({t_feat:.1f} s featurize); " + ", ".join(
        f"{k}: eta2 {v['eta_squared']:.3f} NMI {v['nmi_deciles']:.3f}" for k, v in res["per_depth"].items()))
    _figure(st, crop, sub, stride, {k: v for k, v in depths.items() if k != "surface_ray_um"}, lab, res)


def _depth_stats(lab, d, k):
    """How much of the depth ``d`` the cluster labels ``lab`` explain (eta squared, NMI with depth deciles)."""
    d = np.asarray(d, np.float64)
    ok = np.isfinite(d)
    d, lab = d[ok], lab[ok]
    if d.size < 2:
        return {"eta_squared": float("nan"), "nmi_deciles": float("nan"), "mean_per_cluster": {},
                "std_per_cluster": {}, "range": None, "n": int(d.size)}
    tot = ((d - d.mean()) ** 2).sum()
    between = sum(((lab == i).sum() * (d[lab == i].mean() - d.mean()) ** 2) for i in range(k) if np.any(lab == i))
    edges = np.unique(np.quantile(d, np.linspace(0, 1, 11)[1:-1]))
    bins = np.searchsorted(edges, d, side="right")
    return {"eta_squared": float(between / tot) if tot > 0 else float("nan"),
            "nmi_deciles": float(normalized_mutual_info_score(bins, lab)),
            "mean_per_cluster": {int(i): float(d[lab == i].mean()) for i in range(k) if np.any(lab == i)},
            "std_per_cluster": {int(i): float(d[lab == i].std()) for i in range(k) if np.any(lab == i)},
            "range": [float(d.min()), float(d.max())], "n": int(d.size)}


def _figure(st, crop, sub, stride, depths, lab, res):
    """The clusters over the crop, then the cluster fractions along each depth measure."""
    plt = plt_()
    k = res["k"]
    colors = class_colors(k)
    step = max(1, int(np.ceil(max(crop.shape) / 560)))
    full = upsample(sub, stride, crop.shape)[::step, ::step]
    img = crop[::step, ::step].astype(np.float32)
    lo, hi = np.percentile(img, (1, 99.5))
    g = np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1)
    rgb = np.repeat(g[..., None], 3, axis=2)
    s = full >= 0
    rgb[s] = 0.5 * rgb[s] + 0.5 * colors[full[s]]
    keys = list(depths)
    fig, axs = plt.subplots(1, 1 + len(keys), figsize=(5.6 + 2.6 * len(keys), 3.7), dpi=DPI,
                            gridspec_kw={"width_ratios": [2.4] + [1] * len(keys)})
    axs[0].imshow(rgb, interpolation="nearest")
    axs[0].set_title(f"{res['class']}: k={k} clusters (stride {stride})", fontsize=8)
    axs[0].set_axis_off()
    axs[0].legend(handles=[Patch(color=colors[i], label=f"cluster {i}") for i in range(k)], fontsize=6,
                  loc="lower left", framealpha=0.7)
    for ax, key in zip(axs[1:], keys):
        _depth_panel(ax, depths[key], lab, k, colors, key, res["per_depth"][key])
    save_fig(fig, st.fig("exp6", "exp6_subdivision.png"))


def _depth_panel(ax, depth, lab, k, colors, key, stats):
    ok = np.isfinite(depth)
    d, lab_k = depth[ok], lab[ok]
    if d.size < 2:
        return
    edges = np.linspace(d.min(), d.max() + 1e-9, 13)
    b = np.clip(np.searchsorted(edges, d, side="right") - 1, 0, len(edges) - 2)
    frac = np.zeros((len(edges) - 1, k))
    for j in range(len(edges) - 1):
        if np.any(b == j):
            frac[j] = np.bincount(lab_k[b == j], minlength=k) / np.sum(b == j)
    mids = 0.5 * (edges[1:] + edges[:-1])
    ax.stackplot(mids, frac.T, colors=colors[:k], alpha=0.9)
    ax.set_xlabel(DEPTH_LABELS[key], fontsize=8)
    ax.set_ylabel("cluster fraction", fontsize=8)
    ax.set_ylim(0, 1)
    ax.tick_params(labelsize=7)
    ax.set_title(f"eta2 {stats['eta_squared']:.2f}, NMI {stats['nmi_deciles']:.2f}", fontsize=8)


def report(st, w):
    """Section of experiment 6."""
    e6 = st.results.get(KEY)
    w("## 6. Sub-division of the cortex")
    w("")
    w(f"Paper: {PAPER['exp6']}.")
    w("")
    if e6:
        cr = e6["crop"]
        w(f"Dense trained features (`brainrt.featurize`, stride {e6['stride']}) over a crop y {cr[0]}..{cr[1]}, "
          f"x {cr[2]}..{cr[3]} around the {e6['class']} annotation; {e6['cells']} cells whose centre lies in "
          f"{e6['class']}; `brainrt.subdivide(grid, region, k={e6['k']})` (StandardScaler, PCA 10, KMeans).")
        w("")
        w("Depth measures: " + "; ".join(f"**{k}** = {v}" for k, v in e6["depth_definitions"].items()
                                         if k in e6["per_depth"]) + ".")
        _report_primary_depth(e6, w)
        w("")
        w("| depth measure | eta squared (variance of depth explained by cluster) | NMI (cluster vs depth deciles) | "
          "mean depth per cluster |")
        w("| --- | --- | --- | --- |")
        for k, v in e6["per_depth"].items():
            means = ", ".join(f"{i}: {m:.2f}" if k == "relative" else f"{i}: {m:.0f}"
                              for i, m in v["mean_per_cluster"].items())
            w(f"| {k} | {fmt(v['eta_squared'])} | {fmt(v['nmi_deciles'])} | {means} |")
        _report_verdict(e6, w)
        w("")
        w(st.figure_links("exp6"))
    w("")


def _report_primary_depth(e6, w):
    fr = e6.get("nearest_background_away_from_wm_fraction")
    if fr is not None:
        w(f"{fr * 100:.0f}% of these cells have their nearest background pixel on the side away from the "
          "white matter (the pial surface); for the other "
          f"{(1 - fr) * 100:.0f}% the distance transform measures the distance to another tissue edge (e.g. "
          "a cut edge of the sample beside the area). The primary depth is therefore "
          f"**{e6['primary_depth']}**, whose surface distance follows the ray away from the white matter "
          f"(rays that leave the image without meeting background: "
          f"{e6.get('ray_left_image_fraction', 0) * 100:.1f}% of cells, left out).")
    else:
        w(f"No white matter is annotated: depth = **{e6['primary_depth']}** (distance transform of the tissue "
          "mask).")


def _report_verdict(e6, w):
    ctl = e6.get("controls", {})
    if ctl:
        w("")
        er, ep = ctl["row_px"]["eta_squared"], e6["per_depth"][e6["primary_depth"]]["eta_squared"]
        w(f"Controls (same statistic for the cells' image coordinates): row (y) eta squared {fmt(er)}, column (x) "
          f"{fmt(ctl['column_px']['eta_squared'])}. "
          + ("The clusters follow the image row more than the depth: an intensity trend across the slice rather "
             "than lamination may drive them." if er > ep else
             "The clusters follow the depth more than the image row."))
    pv = e6["per_depth"][e6["primary_depth"]]
    w("")
    w(f"Clusters {'form clear depth bands' if pv['eta_squared'] >= 0.5 else 'follow depth partly' if pv['eta_squared'] >= 0.2 else 'do not form depth bands'} "
      f"(eta squared {pv['eta_squared']:.2f} on the primary depth: 1 = each cluster one band, 0 = unrelated to depth).")
