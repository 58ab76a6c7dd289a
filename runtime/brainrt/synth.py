"""Synthetic annotated slices: brain-like areas that a CNN can learn to tell apart.

Each area differs in cell density and size, in fibre orientation and strength, and
in mean brightness, the cues that separate real areas in X-ray microtomography.
Vessels (dark tubes) cross area borders, and an optional background surrounds the
tissue. The generator is deterministic for a given seed and needs only NumPy/SciPy,
so tests and the demo run with no data at all.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

#: Texture parameters of the built-in synthetic areas, by mask code.
AREAS = {
    1: dict(name="dense-small", density=0.012, radius=1.6, fibre_angle=0.0, fibre=0.10, level=0.55),
    2: dict(name="sparse-large", density=0.003, radius=3.2, fibre_angle=45.0, fibre=0.05, level=0.50),
    3: dict(name="fibrous", density=0.004, radius=1.8, fibre_angle=90.0, fibre=0.35, level=0.45),
    4: dict(name="medium", density=0.007, radius=2.4, fibre_angle=135.0, fibre=0.15, level=0.60),
}
BACKGROUND_CODE = 0


@dataclass(frozen=True)
class SyntheticSlice:
    """A synthetic slice: ``image`` (H, W) uint8, ``mask`` (H, W) uint8 area codes."""

    image: np.ndarray
    mask: np.ndarray
    names: dict


def _area_layout(shape, n_areas, rng):
    """Areas as curved bands along x (as areas lie in a coronal/axial slice), codes 1..n."""
    phase = rng.uniform(0, 2 * np.pi)
    edges = np.linspace(0, 1, n_areas + 1)[1:-1] + rng.uniform(-0.03, 0.03, n_areas - 1)
    return _bands(shape, phase, edges)


def _bands(shape, phase, edges):
    """Area codes 1..len(edges)+1 of curved bands with a bend of ``phase`` and borders at ``edges`` (0..1 of x)."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    bend = 0.06 * w * np.sin(2 * np.pi * yy / (1.5 * h) + phase)
    u = (xx + bend) / w  # roughly 0..1 along x
    return (np.searchsorted(edges, u) + 1).astype(np.uint8)


def _fibres(shape, angle_deg, rng):
    """Oriented texture: white noise smoothed much more along one direction."""
    noise = rng.standard_normal(shape).astype(np.float32)
    f = np.fft.rfft2(noise)
    ky = np.fft.fftfreq(shape[0])[:, None]
    kx = np.fft.rfftfreq(shape[1])[None, :]
    t = np.deg2rad(angle_deg)
    along = kx * np.cos(t) + ky * np.sin(t)
    across = -kx * np.sin(t) + ky * np.cos(t)
    filt = np.exp(-(along / 0.01) ** 2 - (across / 0.12) ** 2)
    out = np.fft.irfft2(f * filt, s=shape)
    return out / (out.std() + 1e-8)


def _cells(shape, density, radius, rng):
    """Bright blobs: Poisson points blurred to the cell radius, normalized to peak ~1."""
    pts = (rng.random(shape) < density).astype(np.float32)
    blobs = ndimage.gaussian_filter(pts, radius)
    return blobs * (2 * np.pi * radius**2)


def _vessels(shape, n, rng):
    """Dark tubes: random smooth curves of a few pixels' width, value in [0, 1]."""
    h, w = shape
    canvas = np.zeros(shape, np.float32)
    for _ in range(n):
        y, x = rng.uniform(0, h), rng.uniform(0, w)
        ang = rng.uniform(0, 2 * np.pi)
        for _ in range(int(1.5 * max(h, w))):
            ang += rng.normal(0, 0.05)
            y += np.sin(ang)
            x += np.cos(ang)
            if not (0 <= y < h and 0 <= x < w):
                break
            canvas[int(y), int(x)] = 1.0
    width = rng.uniform(1.5, 3.0)
    return np.clip(ndimage.gaussian_filter(canvas, width) * width * 4, 0, 1)


def _textures(mask, n_areas, rng):
    """Each area's texture (cells and fibres around its gray level) inside its mask, borders softened."""
    shape = mask.shape
    img = np.zeros(shape, np.float32)
    for code in range(1, n_areas + 1):
        p = AREAS[code]
        sel = mask == code
        tex = (
            p["level"]
            + 0.25 * _cells(shape, p["density"], p["radius"], rng)
            + p["fibre"] * 0.5 * _fibres(shape, p["fibre_angle"], rng)
        )
        img[sel] = tex[sel]
    return ndimage.gaussian_filter(img, 0.7)  # soften area borders like real tissue


def _add_background(img, mask, rng):
    """Dark background (mask code 0) along the top (wavy) and the right edge, in place."""
    h, w = mask.shape
    yy, xx = np.mgrid[0:h, 0:w]
    outside = (yy < 0.12 * h + 0.05 * h * np.sin(xx / w * 6)) | (xx > 0.93 * w)
    img[outside] = rng.normal(0.04, 0.01, int(outside.sum()))
    mask[outside] = BACKGROUND_CODE


def make_slice(shape=(512, 768), *, n_areas=4, seed=0, background=True, vessels=4, levels=None):
    """Generate a synthetic annotated slice.

    Parameters
    ----------
    shape : tuple of int
        (height, width) in pixels.
    n_areas : int
        Number of areas (2..4), mask codes 1..n_areas.
    seed : int
        Seed of the random generator; equal seeds give equal slices.
    background : bool
        Surround the tissue by a dark background (mask code 0) on its top and right.
    vessels : int
        Number of dark vessels crossing the slice.
    levels : int or None
        Quantize the image to this many gray levels (the real slice309 has 19).

    Returns
    -------
    SyntheticSlice
        ``image`` (H, W) uint8 and ``mask`` (H, W) uint8 with 0 = background.
    """
    if not 2 <= n_areas <= len(AREAS):
        raise ValueError(f"n_areas must be in 2..{len(AREAS)}, got {n_areas}")
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in shape)
    mask = _area_layout(shape, n_areas, rng)
    return _render(mask, n_areas, rng, background=background, vessels=vessels, levels=levels)


def _render(mask, n_areas, rng, *, background, vessels, levels):
    """The :class:`SyntheticSlice` of an area layout: textures, vessels, noise, background (mask updated in place)."""
    shape = mask.shape
    img = _textures(mask, n_areas, rng)
    if vessels:
        img *= 1 - 0.5 * _vessels(shape, vessels, rng)
    img += rng.normal(0, 0.04, shape).astype(np.float32)
    if background:
        _add_background(img, mask, rng)
    img = np.clip(img, 0, 1)
    if levels:
        img = np.round(img * (levels - 1)) / (levels - 1)
    image = np.round(img * 255).astype(np.uint8)
    names = {code: AREAS[code]["name"] for code in range(1, n_areas + 1)}
    return SyntheticSlice(image=image, mask=mask, names=names)


def synthetic_class_map(n_areas=4):
    """The class map (name -> list of codes) that matches :func:`make_slice`."""
    return {AREAS[c]["name"]: [c] for c in range(1, n_areas + 1)}


@dataclass(frozen=True)
class SyntheticVolume:
    """A synthetic stack: ``image`` (Z, H, W) uint8, ``mask`` (Z, H, W) uint8 area codes."""

    image: np.ndarray
    mask: np.ndarray
    names: dict


def make_volume(shape=(6, 256, 384), *, n_areas=4, seed=0, drift=0.08, background=True, vessels=2, levels=None):
    """Generate a synthetic annotated stack whose areas drift smoothly with z.

    Each slice is a :func:`make_slice`-like slice (own textures, vessels and noise, seeded
    by ``(seed, z)``); the area borders move by up to ``drift`` of the width and the bands'
    bend turns slowly from the first slice to the last, as anatomy does between sections.

    Parameters
    ----------
    shape : tuple of int
        (slices, height, width).
    drift : float
        Largest shift of an area border over the stack, as a fraction of the width.
    Other parameters as in :func:`make_slice`.
    """
    if not 2 <= n_areas <= len(AREAS):
        raise ValueError(f"n_areas must be in 2..{len(AREAS)}, got {n_areas}")
    nz, h, w = (int(s) for s in shape)
    rng = np.random.default_rng(seed)
    phase = rng.uniform(0, 2 * np.pi)
    edges = np.linspace(0, 1, n_areas + 1)[1:-1] + rng.uniform(-0.03, 0.03, n_areas - 1)
    image, mask = np.empty((nz, h, w), np.uint8), np.empty((nz, h, w), np.uint8)
    for z in range(nz):
        t = z / max(nz - 1, 1)  # 0..1 through the stack
        m = _bands((h, w), phase + 0.8 * t, edges + drift * np.sin(0.5 * np.pi * t))
        s = _render(m, n_areas, np.random.default_rng([seed, z]), background=background, vessels=vessels,
                    levels=levels)
        image[z], mask[z] = s.image, s.mask
    return SyntheticVolume(image, mask, {code: AREAS[code]["name"] for code in range(1, n_areas + 1)})


def draw_strokes(mask, n_per_area, *, codes=None, length=150, width=3, margin=64, where=None, seed=0):
    """Straight strokes drawn inside each area of a label mask, as a user paints them (seeded, reproducible).

    Each stroke is a line of ``length`` px and ``width`` px whose every pixel lies at least
    ``margin`` px inside its area (and inside ``where``, if given), apart from the other
    strokes (so each is its own connected component); an area too small for it gets
    shorter strokes, or fewer. Returns a label image of the mask's shape and type, 0 =
    unlabeled, the area's code under its strokes.
    """
    from scipy.ndimage import binary_erosion

    mask = np.asarray(mask)
    rng = np.random.default_rng(seed)
    out, blocked = np.zeros_like(mask), np.zeros(mask.shape, bool)
    codes = sorted(int(c) for c in np.unique(mask) if c != 0) if codes is None else list(codes)
    for code in codes:
        inside = mask == code if where is None else (mask == code) & np.asarray(where, bool)
        inside = binary_erosion(inside, iterations=margin) if margin else inside
        for _ in range(n_per_area):
            ys, xs = np.nonzero(inside & ~blocked)
            line = _stroke_line(inside & ~blocked, ys, xs, length, rng) if ys.size else None
            if line is not None:
                _paint(out, blocked, line, code, width)
    return out


def _paint(out, blocked, line, code, width):
    """Paint the line ``width`` px wide with ``code``; block its surroundings for the next strokes."""
    from scipy.ndimage import binary_dilation

    py, px = line
    pad = 2 * width + 3
    y0, x0 = max(int(py.min()) - pad, 0), max(int(px.min()) - pad, 0)
    y1, x1 = int(py.max()) + pad + 1, int(px.max()) + pad + 1
    m = np.zeros((min(y1, out.shape[0]) - y0, min(x1, out.shape[1]) - x0), bool)
    m[py - y0, px - x0] = True
    stroke = binary_dilation(m, iterations=width // 2) if width > 1 else m
    out[y0 : y0 + m.shape[0], x0 : x0 + m.shape[1]][stroke] = code
    blocked[y0 : y0 + m.shape[0], x0 : x0 + m.shape[1]] |= binary_dilation(stroke, iterations=width + 1)


def _stroke_line(inside, ys, xs, length, rng, tries=200):
    """Pixel indices of a random straight line inside ``inside`` (from one of its pixels ``ys, xs``), or None."""
    for attempt in range(tries):
        n = max(2, int(length * (1 - attempt / tries)))  # shorter after failures
        i = rng.integers(ys.size)
        t = rng.uniform(0, np.pi)
        py = np.rint(ys[i] + np.arange(n) * np.sin(t)).astype(np.int64)
        px = np.rint(xs[i] + np.arange(n) * np.cos(t)).astype(np.int64)
        ok = (py >= 0) & (py < inside.shape[0]) & (px >= 0) & (px < inside.shape[1])
        if ok.all() and inside[py, px].all():
            return py, px
    return None
