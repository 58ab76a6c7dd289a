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
    first = [cmap(i)[:3] for i in range(min(n, 20))]
    return np.array(first + [_more_color(i) for i in range(n - len(first))]).reshape(n, 3)


def _more_color(i):
    """Colour of class 21 + i: hues a golden angle apart at three lightnesses (distinct for any number)."""
    from matplotlib.colors import hsv_to_rgb

    return tuple(hsv_to_rgb(((0.05 + i * 0.6180339887) % 1.0, (0.9, 0.6, 0.75)[i % 3], (0.75, 0.95, 0.55)[i % 3])))


#: The Allen Mouse Brain Atlas's structure colours (its ontology's ``color_hex_triplet``) of the structures a
#: class name may stand for (lower case): Isocortex, Striatum / Caudoputamen, Ventral posterior complex of the
#: thalamus, Zona incerta, Hypothalamus, fiber tracts (corpus callosum, internal capsule), Reticular nucleus.
ATLAS_COLORS = {
    **dict.fromkeys(("ctx", "cortex", "isocortex", "neocortex"), "#70FF71"),
    **dict.fromkeys(("str", "striatum", "cp", "caudoputamen"), "#98D6F9"),
    **dict.fromkeys(("vp", "ventral posterior complex of the thalamus"), "#FF8084"),
    **dict.fromkeys(("zi", "zona incerta"), "#F2483B"),
    **dict.fromkeys(("hypoth", "hypothalamus", "hy"), "#E64438"),
    **dict.fromkeys(("wm", "white matter", "fiber tracts", "corpus callosum", "cc", "internal capsule", "int"),
                    "#CCCCCC"),
    **dict.fromkeys(("trn", "rt", "reticular nucleus of the thalamus"), "#FF909F"),
}


def area_colors(names, given=None):
    """RGB (n, 3) of the classes ``names``: a class map's own colours (``given``, "#rrggbb" each) win; else the
    atlas's colour of a structure the name stands for (:data:`ATLAS_COLORS`); else the palette's."""
    if given:
        return class_colors(len(names), given)
    from matplotlib.colors import to_rgb

    palette = class_colors(len(names))
    return np.array([to_rgb(ATLAS_COLORS[n.strip().lower()]) if n.strip().lower() in ATLAS_COLORS else palette[i]
                     for i, n in enumerate(names)])


#: Default preview width (px): slice309's 5805 px at half resolution.
PREVIEW_WIDTH = 3000


def overlay_png(path, image, labels, names, *, valid=None, title="", alpha=0.45, max_side=None, width=None,
                pixel_size_um=None, truth=None, hatch=None, hatch_label="uncertain", colors=None):
    """Image in gray with a label map (indices 0..K-1, -1 = none) in ``colors`` (default :func:`area_colors` of
    ``names``), drawn ``width`` px wide (default :data:`PREVIEW_WIDTH`, at most the image's; or its longest side
    at most ``max_side``); the legend, the scale bar (with ``pixel_size_um``) and the title in bands above and
    below the image, off the tissue; ``truth`` (a mask of codes, 0 unlabeled): white borders only where two
    labeled areas meet; ``hatch`` (a bool mask of the image's shape): dark diagonal hatching (``hatch_label``)."""
    step = _step(image.shape, width, max_side)
    colors = area_colors(names) if colors is None else np.asarray(colors, float)
    lab = np.asarray(labels[::step, ::step])
    rgb = _gray(image, step)
    sel = lab >= 0
    if valid is not None:
        sel &= np.asarray(valid[::step, ::step], bool)
    rgb[sel] = (1 - alpha) * rgb[sel] + alpha * colors[lab[sel]]
    extra = []
    if hatch is not None and np.any(hatch):
        _hatch(rgb, np.asarray(hatch, bool)[::step, ::step])
        extra.append(("hatch", hatch_label))
    if truth is not None:
        rgb[_thick(contours(np.asarray(truth)[::step, ::step], unlabeled=0))] = 1.0
        extra.append(("truth", "truth borders"))
    _figure(path, rgb, [(colors[i], n) for i, n in enumerate(names)], extra, title,
            pixel_size_um * step if pixel_size_um else None)


def _step(shape, width, max_side):
    if max_side is not None and width is None:
        return max(1, int(np.ceil(max(shape) / max_side)))
    return max(1, int(np.ceil(shape[1] / (width or PREVIEW_WIDTH))))


def _gray(image, step):
    img = np.asarray(image[::step, ::step], np.float32)
    lo, hi = np.percentile(img, (1, 99.5))
    g = np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1)
    return np.repeat(g[..., None], 3, axis=2)


def _figure(path, rgb, classes, extra, title, px_um):  # long: one figure laid out in pixels, in order
    """``rgb`` at one figure pixel per image pixel; a title band above it; below it the legend (``classes``:
    (colour, name); ``extra``: ("hatch" | "truth", label)) in as many rows as the width needs, then the scale
    bar: nothing is drawn over the tissue."""
    from matplotlib.patches import Patch

    plt = _plt()
    h, w = rgb.shape[:2]
    fs = max(9.0, min(28.0, w / 160))  # points at 100 dpi: legible at the picture's own size
    handles = [Patch(facecolor=c, edgecolor="0.3", label=n) for c, n in classes]
    for kind, label in extra:
        handles.append(Patch(facecolor="0.8", edgecolor="black", hatch="///", label=label) if kind == "hatch"
                       else Patch(facecolor="white", edgecolor="0.3", label=label))
    per = (max(len(x.get_label()) for x in handles) * 0.62 + 3.4) * fs * 1.39  # px per legend entry
    ncol = max(1, min(len(handles), int(w // per)))
    rows = -(-len(handles) // ncol)
    top, leg, bar = (int(fs * 2.6) if title else 4), int(fs * 2.1 * rows + fs), int(fs * 3.4) if px_um else 0
    H = h + top + leg + bar
    fig = plt.figure(figsize=(w / 100, H / 100), dpi=100)
    fig.patch.set_facecolor("white")
    ax = fig.add_axes([0, (leg + bar) / H, 1, h / H])
    ax.imshow(rgb, interpolation="nearest")
    ax.set_axis_off()
    if title:
        fig.text(0.005, 1 - 0.5 * top / H, title, fontsize=fs, va="center", ha="left")
    fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(0.0, (leg + bar) / H), ncol=ncol, fontsize=fs,
               frameon=False, handlelength=1.6, columnspacing=1.2)
    if px_um:
        _scale_bar(fig, w, H, bar, px_um, fs)
    save_figure(fig, path, tight=False)


def _hatch(rgb, mask, period=8, width=2):
    """Dark diagonal lines (every ``period`` pixels, ``width`` wide) over the pixels of ``mask``, in place."""
    yy, xx = np.indices(mask.shape)
    rgb[mask & ((yy + xx) % period < width)] = 0.1


def contours(mask, unlabeled=None):
    """Pixels where ``mask``'s value differs from the pixel below or to the right (its region borders); with
    ``unlabeled`` (a code), only where both sides are labeled (two areas meet, not an area and the unlabeled)."""
    mask = np.asarray(mask)
    edge = np.zeros(mask.shape, bool)
    on = np.ones(mask.shape, bool) if unlabeled is None else mask != unlabeled
    edge[:-1] |= (mask[:-1] != mask[1:]) & on[:-1] & on[1:]
    edge[:, :-1] |= (mask[:, :-1] != mask[:, 1:]) & on[:, :-1] & on[:, 1:]
    return edge


def _thick(edge):
    """``edge`` two pixels wide (itself and its right and lower neighbours)."""
    out = edge.copy()
    out[1:] |= edge[:-1]
    out[:, 1:] |= edge[:, :-1]
    return out


#: Scale bar lengths to choose from, micrometres.
BAR_UM = (10, 20, 50, 100, 200, 500, 1000, 2000, 5000)


def scale_bar_um(width_px, px_um):
    """The longest of :data:`BAR_UM` that fits in a fifth of an image ``width_px`` wide."""
    fits = [b for b in BAR_UM if b / px_um <= width_px / 5]
    return fits[-1] if fits else BAR_UM[0]


def _scale_bar(fig, width_px, height_px, band_px, px_um, fs):
    """A black scale bar and its label at the right of the bottom band (off the image), ``px_um`` per pixel."""
    from matplotlib.lines import Line2D

    um = scale_bar_um(width_px, px_um)
    label = f"{um // 1000} mm" if um >= 1000 else f"{um} \u00b5m"
    length = um / px_um / width_px  # figure fraction
    x1, y = 0.99, 0.25 * band_px / height_px
    fig.add_artist(Line2D([x1 - length, x1], [y, y], color="black", linewidth=max(2.0, fs / 3),
                          solid_capstyle="butt"))
    fig.text(x1 - length / 2, y + 0.12 * band_px / height_px, label, fontsize=fs, ha="center", va="bottom")
