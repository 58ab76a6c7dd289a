"""Experiment 5: structure of the feature space (Gram matrices, block-diagonal error,
class-mean similarities, a 3D PCA)."""

from __future__ import annotations

import numpy as np
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler

from brainrt.plots import class_colors

from .common import DPI, KIND_LABELS, PAPER, fmt, log, per_class_subset, plt_, save_fig

KEY = "exp5_structure"
#: Neighbouring and distant area pairs of the paper's six areas.
NEAR_PAIRS = (("Ctx", "Str"), ("VP", "ZI"))
FAR_PAIR = ("Ctx", "VP")


def _gram_space(kind, ftr, f):
    """Nonnegative features comparable across dimensions: CNN features as they are (ReLU
    outputs); hand-crafted ones min-max scaled by the training range."""
    if kind == "handcrafted":
        lo, hi = ftr.min(0), ftr.max(0)
        return np.clip((f - lo) / np.where(hi > lo, hi - lo, 1.0), 0, 1)
    return f


def _l2(f):
    return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)


def _cos(a, b):
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))


def neighbour_verdict(names, S):
    """Are neighbouring areas more similar than the distant pair? (None when an area is absent.)"""
    ix = {n: i for i, n in enumerate(names)}
    if not all(a in ix and b in ix for a, b in NEAR_PAIRS + (FAR_PAIR,)):
        return None
    far = float(S[ix[FAR_PAIR[0]], ix[FAR_PAIR[1]]])
    near = {f"{a}-{b}": float(S[ix[a], ix[b]]) for a, b in NEAR_PAIRS}
    return {"near": near, "far": {f"{FAR_PAIR[0]}-{FAR_PAIR[1]}": far},
            "neighbours_closer": bool(all(v > far for v in near.values()))}


def run(st):
    """Gram matrices, block-diagonal error, class-mean similarities and a 3D PCA."""
    n = st.args.gram_per_class or (10 if st.args.quick else 100)
    idx = per_class_subset(st.y["test"], n, st.K)
    y = st.y["test"][idx]
    res = {"per_class": n, "n": int(len(idx)), "block_error": {}, "block_error_zscored": {}, "class_mean_cosine": {},
           "class_mean_cosine_centred": {}, "neighbours": {}}
    kinds = list(st.feats)
    pca_pts = {kind: _structure(st, kind, idx, res) for kind in kinds}
    _similarity_figure(st, res, kinds)
    _pca_figure(st, pca_pts, y, kinds)
    st.results[KEY] = res


def _structure(st, kind, idx, res):
    """One feature type's entries of ``res`` and its Gram figure; its test points in 3 principal components."""
    y = st.y["test"][idx]
    D = (y[:, None] == y[None, :]).astype(np.float64)
    N = len(idx)
    ftr, fte = st.feats[kind]["train"], st.feats[kind]["test"]
    X = _l2(_gram_space(kind, ftr, fte[idx]).astype(np.float64))
    G = X @ X.T
    res["block_error"][kind] = float(np.linalg.norm(G - D) / N)
    sc = StandardScaler().fit(ftr)
    Z = _l2(sc.transform(fte[idx]).astype(np.float64))
    res["block_error_zscored"][kind] = float(np.linalg.norm(Z @ Z.T - D) / N)
    # class means over all test patches
    g_all = _gram_space(kind, ftr, fte)
    z_all = sc.transform(fte)
    means = [g_all[st.y["test"] == c].mean(0) for c in range(st.K)]
    zmeans = [z_all[st.y["test"] == c].mean(0) for c in range(st.K)]
    S = np.array([[_cos(a, b) for b in means] for a in means])
    Sc = np.array([[_cos(a, b) for b in zmeans] for a in zmeans])
    res["class_mean_cosine"][kind] = S.round(4).tolist()
    res["class_mean_cosine_centred"][kind] = Sc.round(4).tolist()
    res["neighbours"][kind] = {"raw": neighbour_verdict(st.names, S), "centred": neighbour_verdict(st.names, Sc)}
    _gram_figure(st, kind, G, y, res["block_error"][kind])
    log(f"exp5: {kind} block error {res['block_error'][kind]:.3f} (z-scored {res['block_error_zscored'][kind]:.3f})")
    return PCA(3, random_state=st.seed).fit(sc.transform(ftr)).transform(sc.transform(fte[idx]))


def _gram_figure(st, kind, G, y, error):
    plt = plt_()
    fig, ax = plt.subplots(figsize=(4.2, 3.8), dpi=DPI)
    im = ax.imshow(G, cmap="viridis", vmin=min(0.0, float(G.min())), vmax=1, interpolation="nearest")
    edges = np.cumsum([np.sum(y == c) for c in range(st.K)])[:-1] - 0.5
    for e in edges:
        ax.axhline(e, color="w", lw=0.6)
        ax.axvline(e, color="w", lw=0.6)
    mids = [np.mean(np.flatnonzero(y == c)) for c in range(st.K) if np.any(y == c)]
    ax.set_xticks(mids, [st.names[c] for c in range(st.K) if np.any(y == c)], fontsize=7, rotation=45)
    ax.set_yticks(mids, [st.names[c] for c in range(st.K) if np.any(y == c)], fontsize=7)
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title(f"{KIND_LABELS[kind]}\nGram of L2-normalized features, error {error:.2f}", fontsize=8)
    save_fig(fig, st.fig("exp5", f"exp5_gram_{kind}.png"))


def _similarity_figure(st, res, kinds):
    plt = plt_()
    fig, axs = plt.subplots(1, len(kinds), figsize=(3.3 * len(kinds), 3.2), dpi=DPI, squeeze=False)
    for ax, kind in zip(axs[0], kinds):
        S = np.array(res["class_mean_cosine"][kind])
        ax.imshow(S, cmap="magma", vmin=min(0.0, S.min()), vmax=1)
        for i in range(st.K):
            for j in range(st.K):
                ax.text(j, i, f"{S[i, j]:.2f}", ha="center", va="center", fontsize=6,
                        color="black" if S[i, j] > 0.6 else "white")
        ax.set_xticks(range(st.K), st.names, fontsize=7, rotation=45)
        ax.set_yticks(range(st.K), st.names, fontsize=7)
        ax.set_title(KIND_LABELS[kind], fontsize=8)
    fig.suptitle("Cosine similarity of class-mean features", fontsize=9)
    save_fig(fig, st.fig("exp5", "exp5_class_similarity.png"))


def _pca_figure(st, pca_pts, y, kinds):
    plt = plt_()
    colors = class_colors(st.K)
    fig = plt.figure(figsize=(3.6 * len(kinds), 3.6), dpi=DPI)
    for i, kind in enumerate(kinds):
        ax = fig.add_subplot(1, len(kinds), i + 1, projection="3d")
        p = pca_pts[kind]
        for c in range(st.K):
            s = y == c
            ax.scatter(p[s, 0], p[s, 1], p[s, 2], s=4, color=colors[c], label=st.names[c], depthshade=False)
        ax.set_title(KIND_LABELS[kind], fontsize=8)
        ax.tick_params(labelsize=5)
        if i == 0:
            ax.legend(fontsize=6, markerscale=2, loc="upper left")
    fig.suptitle("First three principal components (z-scored features, test patches)", fontsize=9)
    save_fig(fig, st.fig("exp5", "exp5_pca3d.png"))


def report(st, w):
    """Section of experiment 5."""
    e5 = st.results.get(KEY)
    w("## 5. Structure of the feature space")
    w("")
    pb = PAPER["exp5_block_error"]
    w(f"Paper: block-diagonal error (1/N)||G - D||_F of the Gram matrix of L2-normalized features: trained "
      f"{pb['trained']}, Inception {pb['inception']}, ResNet-18 {pb['resnet18']}; {PAPER['exp5_neighbours']}.")
    w("")
    if e5:
        w(f"{e5['per_class']} test patches per class (N = {e5['n']}), sorted by class. G = X X^T of L2-normalized "
          "features (CNN features as they are — nonnegative ReLU outputs as in the paper; hand-crafted features "
          "min-max scaled by the training range); D = 1 within a class, 0 across. The z-scored column uses "
          "features standardized by the training mean/std (cosines can then be negative).")
        w("")
        w("| features | block-diagonal error | z-scored | paper |")
        w("| --- | --- | --- | --- |")
        for k in e5["block_error"]:
            w(f"| {KIND_LABELS[k]} | {fmt(e5['block_error'][k])} | {fmt(e5['block_error_zscored'][k])} | "
              f"{pb.get(k, '—')} |")
        w(f"| Inception (not run) | — | — | {pb['inception']} |")
        if "resnet18" not in e5["block_error"]:
            w(f"| ImageNet ResNet-18 (not run: no weights) | — | — | {pb['resnet18']} |")
        be = e5["block_error"]
        if "trained" in be and len(be) > 1:
            lowest = min(be, key=be.get)
            w("")
            w(f"Lowest block-diagonal error: {KIND_LABELS[lowest]} ({fmt(be[lowest])}); trained {fmt(be['trained'])} "
              f"vs the paper's {pb['trained']}.")
        w("")
        _report_neighbours(e5, w)
        w("")
        w(st.figure_links("exp5"))
    w("")


def _report_neighbours(e5, w):
    w("Neighbouring vs distant areas (cosine similarity of class-mean features; 'centred' = of z-scored features):")
    w("")
    if all(v.get("raw") is None for v in e5["neighbours"].values()):
        w("- Not evaluated: the areas Ctx, Str, VP and ZI are not all in the class map.")
    for k, v in e5["neighbours"].items():
        for mode in ("raw", "centred"):
            vv = v.get(mode)
            if vv is None:
                continue
            near = ", ".join(f"{p} {x:.3f}" for p, x in vv["near"].items())
            far = ", ".join(f"{p} {x:.3f}" for p, x in vv["far"].items())
            w(f"- {KIND_LABELS[k]} ({mode}): {near} vs {far} → neighbours "
              f"{'closer' if vv['neighbours_closer'] else 'NOT both closer'}.")
