"""Pictures of tools/cv_heads.py: the folds over the slice, whole-slice maps, per-fold scores."""

from __future__ import annotations

import numpy as np


def _cmap(names):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    return plt, ListedColormap(plt.get_cmap("tab10").colors[: len(names)])


def fold_picture(out, folds, sl):
    plt, _ = _cmap(range(10))
    fig, ax = plt.subplots(figsize=(14, 4))
    ax.imshow(sl.image, cmap="gray", interpolation="nearest")
    fm = np.ma.masked_less(folds.fold_map, 0)
    ax.imshow(fm, cmap="tab10", vmin=0, vmax=9, alpha=0.45, interpolation="nearest")
    ax.set_title(f"spatial folds: {folds.k} row bands x columns {folds.col_px} px, fold = (band + 2 column) mod "
                 f"{folds.k}, gap {folds.gap_px} px (colours = folds)")
    ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(out / "folds.png", dpi=80)
    plt.close(fig)
    return "folds.png"


def maps_picture(out, name, maps, sl, names, titles):
    """Whole-slice maps (stride 16 upsampled), one row each, under the annotation."""
    from brainrt.geometry import upsample

    plt, cmap = _cmap(names)
    fig, axes = plt.subplots(len(maps) + 1, 1, figsize=(14, 2.6 * (len(maps) + 1)))
    axes[0].imshow(np.ma.masked_less(sl.labels, 0), cmap=cmap, vmin=0, vmax=len(names) - 1, interpolation="nearest")
    axes[0].set_title("annotation (revision 2)")
    for ax, m, t in zip(axes[1:], maps, titles):
        full = upsample(m, 16, sl.labels.shape)
        ax.imshow(np.ma.masked_less(full, 0), cmap=cmap, vmin=0, vmax=len(names) - 1, interpolation="nearest")
        ax.set_title(t, fontsize=9)
    for ax in axes:
        for x in (905, 1300, 2800, 4450):
            ax.axvline(x, color="k", lw=0.5, ls=":")
        ax.set_axis_off()
    handles = [plt.Rectangle((0, 0), 1, 1, color=cmap(i)) for i in range(len(names))]
    fig.legend(handles, names, loc="lower center", ncol=len(names))
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(out / f"{name}.png", dpi=70)
    plt.close(fig)
    return f"{name}.png"


def folds_chart(out, rows):
    """Per-fold smoothed pixel accuracy and macro F1 of the reported recipes."""
    plt, _ = _cmap(range(10))
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.6))
    for j, key in enumerate(("pixel_accuracy", "macro_f1")):
        for i, (label, s) in enumerate(rows):
            v = s["smoothed"][key]["folds"]
            axes[j].plot(range(len(v)), v, "o-", label=label)
        axes[j].set_xlabel("held-out fold")
        axes[j].set_title(f"{key.replace('_', ' ')} (regularized map)")
        axes[j].set_ylim(0, 1)
        axes[j].grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(out / "per_fold.png", dpi=80)
    plt.close(fig)
    return "per_fold.png"
