"""The slice tasks of a classify run: smooth a slice's probabilities and write its outputs.

``finish`` (one per z, after its bands, or after the slice's context task) finishes the slice's map
by the one path a slice's map is finished by, 2D or volume (:class:`~brainrt.maps.slicemap.SliceMap`: the
in-plane regularization, the labels) and writes the probabilities, their margin and entropy and the
label pyramid; with ``smooth_z``, ``zsmooth`` (one per z, after the finishes within its
kernel's reach) smooths across slices (:func:`~brainrt.maps.smooth.smooth_across`) and writes them instead.
The arrays are those of :mod:`brainrt.volumes.layout`.
"""

from __future__ import annotations

import numpy as np

from ..geometry import upsample
from ..heads import OFF_TISSUE
from ..maps.pooling import radius
from ..maps.slicemap import SliceMap
from ..maps.smooth import smooth_across
from ..maps.uncertainty import margin_entropy
from .layout import n_levels

#: Bytes of neighbouring slices' probabilities the z pass reads at a time.
Z_BYTES = 64 << 20


def finish_slice(vplan, store, z):
    """Finish slice ``z``'s map from its head's probabilities, band by band (:class:`~brainrt.maps.slicemap.SliceMap`:
    regularized in the plane, labelled), and write its probabilities and label pyramid (classify); with
    ``smooth_z``, its in-plane map goes to the z pass instead."""
    import zarr

    root = zarr.open_group(str(store), mode="r+")
    zi = vplan.zs.index(z)
    if vplan.labels_only:  # a head without probabilities: its labels are the map
        return _write_labels(vplan, root, zi, np.asarray(root["scratch/labels"][zi]))
    raw, valid = root["scratch/context" if vplan.context else "scratch/probabilities"], root["scratch/valid"]
    v_all = np.asarray(valid[zi])
    zsm = vplan.z_sigma > 0  # the z pass reads the in-plane map, then writes the outputs
    writer = _Planar(root, zi) if zsm else _Levels(vplan, root, zi, v_all)
    smap = SliceMap(v_all, len(vplan.class_names), sigma=vplan.sigma_cells, space=vplan.space, writer=writer)
    for r0, r1 in vplan.bands:
        smap.push(np.asarray(raw[zi, r0:r1]))
    labels, _ = smap.close()
    if not zsm:
        _write_labels(vplan, root, zi, labels)


class _Planar:
    """Bands of slice position ``zi``'s in-plane map into the scratch array the z pass reads."""

    def __init__(self, root, zi):
        self.planar, self.zi = root["scratch/planar"], zi

    def write(self, y0, band):
        self.planar[self.zi, y0 : y0 + len(band)] = band


class _Levels:
    """Bands of slice position ``zi``'s finished probabilities (and their uncertainty) into the image's levels."""

    def __init__(self, vplan, root, zi, valid):
        self.vplan, self.root, self.zi, self.valid = vplan, root, zi, valid

    def write(self, y0, band):
        _write_probabilities(self.vplan, self.root, self.zi, y0, band, self.valid[y0 : y0 + len(band)])


def zsmooth_slice(vplan, store, z):
    """Smooth slice ``z``'s in-plane smoothed probabilities across neighbouring slices (Gaussian of
    ``vplan.z_sigma`` slices, normalized over tissue cells like in the plane) and write the outputs."""
    import zarr

    root = zarr.open_group(str(store), mode="r+")
    zi, (R, C), r = vplan.zs.index(z), vplan.grid, radius(vplan.z_sigma)
    lo, hi = max(0, zi - r), min(len(vplan.zs), zi + r + 1)
    planar, valid = root["scratch/planar"], root["scratch/valid"]
    labels = np.full((R, C), -1, np.int16)
    step = max(1, Z_BYTES // ((hi - lo) * C * len(vplan.class_names) * 4))  # rows per read: bounded memory
    for r0 in range(0, R, step):
        r1 = min(R, r0 + step)
        p, v = np.asarray(planar[lo:hi, r0:r1]), np.asarray(valid[lo:hi, r0:r1])
        out = smooth_across(p, v, vplan.z_sigma, zi - lo, space=vplan.space)
        _write_probabilities(vplan, root, zi, r0, out, v[zi - lo])
        labels[r0:r1] = np.where(v[zi - lo], out.argmax(-1), -1)
    _write_labels(vplan, root, zi, labels)


def _write_probabilities(vplan, root, zi, r0, p, valid):
    """Grid rows ``r0 ..`` of slice position ``zi``'s probabilities ``p`` (rows, cols, K), then their margin and
    entropy (:mod:`brainrt.maps.uncertainty`; NaN where not ``valid``), into every level of the image (level ``l``
    keeps every ``2**l``-th row and column, as the label pyramid does: the cells' centres, so one translation
    places every level)."""
    n, p = len(p), np.concatenate([p, margin_entropy(p, valid)], -1)
    for level in range(n_levels(vplan.source.shape[1:])):
        f = 2**level
        first = -(-r0 // f) * f  # the first row of this block that level ``l`` keeps
        if first < r0 + n:
            rows = p[first - r0 :: f, ::f]
            root[str(level)][:, zi, first // f : first // f + len(rows)] = np.moveaxis(rows, -1, 0)


def _write_labels(vplan, root, zi, labels):
    """The label pyramid of slice position ``zi`` from its grid labels (class indices, -1 off tissue); a head without
    probabilities: its codes are the image's too, at grid resolution."""
    codes = np.asarray(list(vplan.class_codes) + [OFF_TISSUE], np.uint8)[labels]
    full = upsample(codes, vplan.stride, vplan.source.shape[1:])
    for level in range(n_levels(vplan.source.shape[1:])):
        f = 2**level
        root[f"labels/areas/{level}"][zi] = full[::f, ::f]
        if vplan.labels_only:
            root[str(level)][0, zi] = codes[::f, ::f]
