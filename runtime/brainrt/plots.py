"""PNG figures: confusion matrices and label-map overlays (matplotlib, imported lazily)."""

from __future__ import annotations

import numpy as np

from .io import save_figure


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def confusion_png(path, cm, names, *, title="Confusion matrix"):
    """Row-normalized confusion matrix with counts, saved as PNG."""
    plt = _plt()
    cm = np.asarray(cm, float)
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * len(names), 0.8 + 0.7 * len(names)), dpi=100)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, f"{norm[i, j]:.2f}\n{int(cm[i, j])}", ha="center", va="center", fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    save_figure(fig, path)


def class_colors(n, given=None):
    """RGB (n, 3) of n classes: ``given`` colours (e.g. "#rrggbb" from a class map) or the tab10 / tab20 palette."""
    plt = _plt()
    if given:
        from matplotlib.colors import to_rgb

        return np.array([to_rgb(c) for c in given])
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return np.array([cmap(i)[:3] for i in range(n)])


def overlay_png(path, image, labels, names, *, valid=None, title="", alpha=0.45, max_side=2000, pixel_size_um=None,
                truth=None, hatch=None, hatch_label="uncertain"):  # long: one figure, drawn in order (image, labels, truth contours, scale bar, legend)
    """Image in gray with a label map (indices 0..K-1, -1 = none) in colour, and a legend; a scale bar
    with ``pixel_size_um``; with ``truth`` (a mask of the image's shape), its area borders as white contours;
    ``hatch`` (a bool mask of the image's shape): dark diagonal hatching over it (``hatch_label`` in the legend)."""
    plt = _plt()
    step = max(1, int(np.ceil(max(image.shape) / max_side)))
    img = np.asarray(image[::step, ::step], np.float32)
    lab = np.asarray(labels[::step, ::step])
    lo, hi = np.percentile(img, (1, 99.5))
    g = np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1)
    rgb = np.repeat(g[..., None], 3, axis=2)
    colors = class_colors(len(names))
    sel = lab >= 0
    if valid is not None:
        sel &= np.asarray(valid[::step, ::step], bool)
    rgb[sel] = (1 - alpha) * rgb[sel] + alpha * colors[lab[sel]]
    handles = []
    from matplotlib.patches import Patch

    if truth is not None:
        rgb[contours(np.asarray(truth)[::step, ::step])] = 1.0
        handles.append(Patch(facecolor="white", edgecolor="0.3", label="truth borders"))
    if hatch is not None and np.any(hatch):
        _hatch(rgb, np.asarray(hatch, bool)[::step, ::step])
        handles.append(Patch(facecolor="0.8", edgecolor="black", hatch="///", label=hatch_label))
    h, w = rgb.shape[:2]
    fig, ax = plt.subplots(figsize=(min(16, 2 + w / 150), min(16, 1 + h / 150)), dpi=100)
    ax.imshow(rgb, interpolation="nearest")
    ax.set_axis_off()
    if pixel_size_um:
        _scale_bar(ax, w, pixel_size_um * step)
    ax.legend(handles=[Patch(color=colors[i], label=n) for i, n in enumerate(names)] + handles, loc="upper left",
              bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    if title:
        ax.set_title(title, fontsize=10)
    save_figure(fig, path)


def _hatch(rgb, mask, period=8, width=2):
    """Dark diagonal lines (every ``period`` pixels, ``width`` wide) over the pixels of ``mask``, in place."""
    yy, xx = np.indices(mask.shape)
    rgb[mask & ((yy + xx) % period < width)] = 0.1


def contours(mask):
    """Pixels where ``mask``'s value differs from the pixel below or to the right (its region borders)."""
    mask = np.asarray(mask)
    edge = np.zeros(mask.shape, bool)
    edge[:-1] |= mask[:-1] != mask[1:]
    edge[:, :-1] |= mask[:, :-1] != mask[:, 1:]
    return edge


#: Scale bar lengths to choose from, micrometres.
BAR_UM = (10, 20, 50, 100, 200, 500, 1000, 2000, 5000)


def scale_bar_um(width_px, px_um):
    """The longest of :data:`BAR_UM` that fits in a fifth of an image ``width_px`` wide."""
    fits = [b for b in BAR_UM if b / px_um <= width_px / 5]
    return fits[-1] if fits else BAR_UM[0]


def _scale_bar(ax, width_px, px_um):
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    um = scale_bar_um(width_px, px_um)
    label = f"{um // 1000} mm" if um >= 1000 else f"{um} \u00b5m"
    ax.add_artist(AnchoredSizeBar(ax.transData, um / px_um, label, "lower right", pad=0.4, color="white",
                                  frameon=False, size_vertical=max(1.0, width_px / 300), fontproperties={"size": 8}))
