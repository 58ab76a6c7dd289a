"""Training on tiles: a label per stride-16 output position, tiles drawn so every class gets its share.

The network evaluated on a tile (:meth:`brainrt_train.model.PaperCNN.tile_logits`) gives the
scores of ``n x n`` patch positions 16 px apart at once, sharing their convolutions (the
formulation of the exported dense graphs at stride 16, context branch included). Each
position's label is the class of its centre pixel where that pixel lies in the training
region, else -1 (ignored).

:class:`TileSampler` anchors every tile on a training pixel of one class, the classes taking
turns (HypoTh and WM are small and thin: drawn by area they would hardly appear); the
anchor is an output position of the tile. The loss weighs each class present in a batch
equally (:func:`balanced_weights`), as a balanced patch set does. Geometric augmentation is
done while cutting (dihedral turns, optionally a free rotation and scale, a tissue border):
the labels follow the pixels; the gray-level augmentation is the per-patch one
(:func:`brainrt_train.train.intensity_augment`) applied to the whole tile.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from brainrt.errors import BrainrtError
from brainrt.geometry import NET_STRIDE

from .data import reflect_pad
from .model import tile_geometry


def training_labels(shape, pools, n_slices):
    """Per slice, an int8 map of the training labels: class index at each pool position, -1 elsewhere.

    ``pools`` is one array of ``(slice, cy, cx)`` per class (the split's eligible training
    centres, :func:`brainrt_train.data.sample_patches`); ``shape`` a function of the slice index.
    """
    maps = [np.full(shape(k), -1, np.int8) for k in range(n_slices)]
    for c, pool in enumerate(pools):
        for k, cy, cx in np.asarray(pool, np.int64).reshape(-1, 3):
            maps[k][cy, cx] = c
    return maps


def balanced_weights(y, n_classes):
    """Class weights for the cross-entropy of labels ``y`` (-1 ignored): every class present
    in ``y`` gets the same total weight (``1 / count``), absent ones 0."""
    counts = torch.bincount(y[y >= 0].flatten(), minlength=n_classes).to(torch.float64)
    return torch.where(counts > 0, 1.0 / counts.clamp_min(1), torch.zeros(())).float()


class TileSampler:
    """Draw training tiles ``(N, 1, T, T)`` (unit range) and their labels ``(N, n, n)``.

    ``images`` and ``labels`` are per slice (labels int8, -1 = not a training position).
    Tile ``t`` of a batch is anchored on a random training pixel of class
    ``(start + t) mod C`` (``start`` random, classes without training pixels skipped), placed
    at a random output position of the tile's middle half. ``rotate_p``: share of tiles turned by a free
    angle (up to ``max_deg``) and rescaled (up to ``max_scale``) about the anchor (labels read
    at the turned positions' centres, nearest pixel); every tile is then turned by a random
    multiple of 90 degrees and flipped at random. ``border_p`` (context models only): share
    of tiles given a straight tissue border (dark beyond a random line that crosses no position's
    patch), so a border is only ever in a position's context, as
    :func:`brainrt_train.train.tissue_edge` makes it.
    """

    def __init__(self, images, labels, *, n_classes, patch_size, context, n_out, dtype_max, border_p=0.0,
                 rotate_p=0.0, max_deg=45.0, max_scale=0.15):
        self.n_classes, self.patch_size, self.n_out, self.dtype_max = n_classes, patch_size, n_out, float(dtype_max)
        self.side, self.offset = tile_geometry(patch_size, context, n_out)
        self.border_p = border_p if context else 0.0
        self.rotate_p, self.max_deg, self.max_scale = rotate_p, max_deg, max_scale
        reach = self.side * math.sqrt(2) * (1 + max_scale) if rotate_p > 0 else self.side
        self.pad = int(math.ceil(reach)) + 2
        self.images = [reflect_pad(im, self.pad) for im in images]
        self.labels = [np.pad(lab, self.pad, constant_values=-1) for lab in labels]
        self.shapes = [lab.shape for lab in labels]
        self.pools = []  # per class: (slice index, flat index in the unpadded slice)
        for c in range(n_classes):
            parts = [np.stack([np.full(len(f), k), f], 1) for k, lab in enumerate(labels)
                     if len(f := np.flatnonzero(lab == c))]
            self.pools.append(np.concatenate(parts) if parts else np.zeros((0, 2), np.int64))
        self.classes = [c for c in range(n_classes) if len(self.pools[c])]
        if len(self.classes) < 2:
            raise BrainrtError("training on tiles needs training pixels of at least 2 classes")

    def positions_per_tile(self):
        return self.n_out * self.n_out

    def anchors(self, n_tiles, rng):
        """Classes of the ``n_tiles`` anchors of one batch (each class's share equal up to one tile)."""
        start = int(rng.integers(len(self.classes)))
        return [self.classes[(start + t) % len(self.classes)] for t in range(n_tiles)]

    def draw(self, n_tiles, rng):
        """One batch: ``(x, y, anchor_classes)``; x float32 ``(N, 1, T, T)`` in [0, 1], y int64 ``(N, n, n)``."""
        T = self.side
        xs, ys = np.empty((n_tiles, 1, T, T), np.float32), np.empty((n_tiles, self.n_out, self.n_out), np.int64)
        classes = self.anchors(n_tiles, rng)
        for t, c in enumerate(classes):
            k, flat = self.pools[c][rng.integers(len(self.pools[c]))]
            ay, ax = divmod(int(flat), self.shapes[k][1])
            img, lab = self._cut(k, ay, ax, rng)
            if self.border_p > 0 and rng.random() < self.border_p:
                img, lab = self._border(img, lab, rng)
            turns, flip = int(rng.integers(4)), bool(rng.random() < 0.5)
            img, lab = np.rot90(img, turns), np.rot90(lab, turns)
            if flip:
                img, lab = img[:, ::-1], lab[:, ::-1]
            xs[t, 0], ys[t] = img, lab
        return torch.from_numpy(xs), torch.from_numpy(ys), classes

    def _cut(self, k, ay, ax, rng):
        """The tile around anchor pixel ``(ay, ax)`` of slice ``k`` (unit range) and its label grid."""
        T, off, n, p = self.side, self.offset, self.n_out, self.pad
        ai, aj = rng.integers(n // 4, n - n // 4, size=2)  # the anchor in the tile's middle half: more of it labeled
        pa = np.array([off + NET_STRIDE * ai, off + NET_STRIDE * aj], np.float64)  # the anchor's tile pixel
        centres = off + NET_STRIDE * np.arange(n)
        if not (self.rotate_p > 0 and rng.random() < self.rotate_p):
            r0, c0 = ay - int(pa[0]) + p, ax - int(pa[1]) + p
            img = self.images[k][r0 : r0 + T, c0 : c0 + T].astype(np.float32) / self.dtype_max
            return img, self.labels[k][np.ix_(r0 + centres, c0 + centres)].astype(np.int64)
        a = math.radians(rng.uniform(-self.max_deg, self.max_deg))
        z = math.exp(rng.uniform(-1, 1) * math.log1p(self.max_scale))
        m = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]) * z  # source px per tile px

        def source(rows, cols):  # tile (row, col) -> padded slice (row, col)
            d = np.stack([rows - pa[0], cols - pa[1]])
            return m @ d.reshape(2, -1) + np.array([[ay + p], [ax + p]])

        rr, cc = np.meshgrid(np.arange(T, dtype=np.float64), np.arange(T, dtype=np.float64), indexing="ij")
        src = source(rr, cc)
        r_lo, c_lo = int(np.floor(src[0].min())), int(np.floor(src[1].min()))
        r_hi, c_hi = int(np.ceil(src[0].max())) + 1, int(np.ceil(src[1].max())) + 1
        crop = torch.from_numpy(self.images[k][r_lo:r_hi, c_lo:c_hi].astype(np.float32) / self.dtype_max)
        h, w = crop.shape
        grid = np.stack([(src[1] - c_lo) / max(w - 1, 1) * 2 - 1, (src[0] - r_lo) / max(h - 1, 1) * 2 - 1], -1)
        grid = torch.from_numpy(grid.reshape(1, T, T, 2).astype(np.float32))
        img = F.grid_sample(crop[None, None], grid, mode="bilinear", align_corners=True)[0, 0].numpy()
        qr, qc = np.meshgrid(centres.astype(np.float64), centres.astype(np.float64), indexing="ij")
        q = np.rint(source(qr, qc)).astype(np.int64)
        return img, self.labels[k][q[0], q[1]].reshape(n, n).astype(np.int64)

    def _border(self, img, lab, rng):
        """Dark beyond a random straight line that crosses no position's patch, only contexts (closer to the
        positions more often); positions whose patch would reach past it are ignored all the same."""
        T, off, n = self.side, self.offset, self.n_out
        theta = rng.uniform(0, 2 * math.pi)
        u = np.array([math.cos(theta), math.sin(theta)])
        centre = (T - 1) / 2
        # beyond every position's patch (the farthest centre plus a patch's half-diagonal), inside the tile
        near = NET_STRIDE * (n - 1) / 2 * (abs(u[0]) + abs(u[1])) + self.patch_size / 2 * math.sqrt(2) + 1
        dist = near + rng.random() ** 2 * max(centre * (abs(u[0]) + abs(u[1])) - near, 0)
        r = np.arange(T) - centre
        proj = u[0] * r[:, None] + u[1] * r[None, :]
        img = np.where(proj > dist, np.float32(rng.uniform(0, 0.08)), img)
        q = off + NET_STRIDE * np.arange(n) - centre
        qproj = u[0] * q[:, None] + u[1] * q[None, :]
        lab = np.where(qproj > dist - (self.patch_size / 2 * math.sqrt(2) + 1), -1, lab)
        return img.astype(np.float32), lab


@torch.no_grad()
def grid_features(model, image, *, norm, dtype_max, n_out=24, batch=4, cells=None):
    """Features of every stride-16 grid cell of ``image`` (the runtime's grid: cell ``(i, j)`` is the
    patch centred on pixel ``(16 i + 8, 16 j + 8)``, the image mirrored past its edges), from the
    trainable network evaluated on tiles in eval mode: float32 ``(rows, cols, 64)``.

    The exported dense graph at stride 16 computes the same features (to float rounding); this
    path needs no export, so a cross-validation can score a network right after training it.
    ``cells`` (rows, cols) bool: only the ``n_out x n_out`` blocks holding one of them are computed
    (the others stay 0); with ``cells``, returns ``(features, computed)``.
    """
    from brainrt.geometry import grid_shape

    model.eval()
    side, off = tile_geometry(model.patch_size, model.context, n_out)
    rows, cols = grid_shape(image.shape, NET_STRIDE)
    half = NET_STRIDE // 2
    pad = off + side
    padded = reflect_pad(image, pad)
    starts = [(i, j) for i in range(0, rows, n_out) for j in range(0, cols, n_out)
              if cells is None or cells[i : i + n_out, j : j + n_out].any()]
    out = np.zeros((rows, cols, 64), np.float32)
    computed = np.zeros((rows, cols), bool)
    for b in range(0, len(starts), batch):
        chunk = starts[b : b + batch]
        x = np.stack([padded[pad + half + NET_STRIDE * i - off : pad + half + NET_STRIDE * i - off + side,
                             pad + half + NET_STRIDE * j - off : pad + half + NET_STRIDE * j - off + side]
                      for i, j in chunk]).astype(np.float32) / float(dtype_max)
        f = model.tile_features((torch.from_numpy(x)[:, None] - norm["mean"]) / norm["std"]).permute(0, 2, 3, 1).numpy()
        for (i, j), fi in zip(chunk, f):
            h, w = min(n_out, rows - i), min(n_out, cols - j)
            out[i : i + h, j : j + w] = fi[:h, :w]
            computed[i : i + h, j : j + w] = True
    return out if cells is None else (out, computed)
