"""Pixel size: a slice taken at another pixel size is resampled to the bundle's for the network.

The network learned its areas at the bundle's pixel size (1.17 um for the shipped bundles); a
slice binned 2 x 2 shows every structure at half the size. :func:`pixel_size_of` decides the
slice's pixel size (``--pixel-size``, else the file's metadata, else the bundle's, logged) and
refuses implausible ones; :func:`resampling_of` says how to resample; :func:`resample` does it.

Geometry: the grid stays the input's. Cell ``(i, j)`` of stride ``s`` is centred on input pixel
``(i s + s // 2, j s + s // 2)``; the network reads a copy of the slice resampled by ``f = s_r / s``
(``s_r = round(s * px / bundle_px)``, the stride in resampled pixels) in which the same cell is
centred on resampled pixel ``(i s_r + s_r // 2, ...)``. Resampled pixel ``y_r`` is input position
``s // 2 + (y_r - s_r // 2) / f``, so every cell's centre lands exactly on its input pixel and the
grid (its shape, tissue cells and outputs) is the input's. The factor is exact when ``s * px /
bundle_px`` is an integer (a 2 x 2 binning at stride 16: s_r = 32) and otherwise off by at most half a
resampled pixel per stride; a stride too small to follow the pixel size is refused with the smallest
that does. One slice is resampled at a time (a volume's per slice).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from ..errors import file_error, param_error

log = logging.getLogger("brainrt")

#: Pixel sizes (um) outside this range are refused: no micron-scale image of tissue has them.
PLAUSIBLE_UM = (0.05, 50.0)
#: Most factor between the slice's pixel size and the bundle's that resampling may bridge.
MAX_FACTOR = 8.0
#: Pixel sizes within this relative difference of the bundle's are used as they are.
SAME = 0.02
#: Most relative error of the resampled pixel size (a stride too small to follow the factor).
MAX_ERROR = 0.05


@dataclass(frozen=True)
class Resampling:
    """How the network sees a slice of ``shape`` at stride ``stride``: resampled by ``factor`` to ``net_shape``,
    at stride ``net_stride``; ``pixel_size_um`` is the input's, ``net_pixel_size_um`` the resampled one's."""

    shape: tuple
    stride: int
    pixel_size_um: float
    net_stride: int
    net_shape: tuple

    @property
    def factor(self) -> float:
        return self.net_stride / self.stride

    @property
    def net_pixel_size_um(self) -> float:
        return self.pixel_size_um / self.factor

    def input_coords(self, n):
        """Input positions of resampled pixels ``0..n-1`` along one axis (see the module's geometry)."""
        return self.stride // 2 + (np.arange(n, dtype=np.float64) - self.net_stride // 2) / self.factor


def pixel_size_of(given, from_file, bundle_px, source, owner):
    """The slice's pixel size in um: ``given`` (``--pixel-size``), else ``from_file`` (its metadata), else the
    bundle's (logged as assumed); an implausible one is the one-line error."""
    px = given or from_file
    if px is None:
        (log.info if source != "image" else log.debug)(
            "%s: pixel size unknown (no --pixel-size, none in the file): assumed the bundle's %g um", source, bundle_px)
        return float(bundle_px)
    px = float(px)
    lo, hi = PLAUSIBLE_UM
    far = max(px / bundle_px, bundle_px / px) > MAX_FACTOR
    if lo <= px <= hi and not far:
        return px
    why = (f"outside the plausible {lo:g}..{hi:g} um" if not lo <= px <= hi else
           f"more than {MAX_FACTOR:g}x from the bundle's {bundle_px:g} um (the network cannot see it at its scale)")
    if given:
        raise param_error("pixel_size_um", owner, f"a pixel size in um within {MAX_FACTOR:g}x of the bundle's "
                          f"{bundle_px:g} um", given)
    raise file_error(source, f"its pixel size {px:g} um is {why}; pass --pixel-size if the metadata is wrong")


def resampling_of(shape, stride, px, bundle_px, source):
    """The :class:`Resampling` of a slice of ``shape`` and pixel size ``px`` at ``stride``, or None when its
    pixel size is the bundle's (within :data:`SAME`)."""
    f = px / bundle_px
    if abs(f - 1.0) <= SAME:
        return None
    net_stride = max(1, round(stride * f))
    err = abs(net_stride / stride / f - 1.0)
    if err > MAX_ERROR:
        need = next(n for n in range(stride + 1, 10 * stride + 64) if abs(max(1, round(n * f)) / n / f - 1) <= MAX_ERROR)
        raise file_error(source, f"pixel size {px:g} um at stride {stride}: the grid cannot follow the resampling "
                                 f"to the bundle's {bundle_px:g} um (x{f:.3g}); use a stride of at least {need}")
    rows, cols = (-(-n // stride) for n in shape)
    net_shape = tuple(max(round(n * net_stride / stride), 1) for n in shape)
    net_shape = tuple(min(max(m, (r - 1) * net_stride + 1), r * net_stride) for m, r in zip(net_shape, (rows, cols)))
    return Resampling(tuple(shape), stride, px, net_stride, net_shape)


def resample(image, r: Resampling, *, order=1):
    """``image`` (the input's shape) resampled to ``r.net_shape``: bilinear (``order=1``; a Gaussian first when
    shrinking, against aliasing) or nearest (``order=0``, for masks); same dtype (integers rounded)."""
    from scipy.ndimage import gaussian_filter, map_coordinates

    src = np.asarray(image)
    work = src.astype(np.float32) if order else src
    if order and r.factor < 1.0:
        work = gaussian_filter(work, sigma=0.5 * (1.0 / r.factor - 1.0) + 1e-9, mode="mirror")
    ys = r.input_coords(r.net_shape[0])
    xs = r.input_coords(r.net_shape[1])
    out = np.empty(r.net_shape, np.float32 if order else src.dtype)
    band = max(1, (1 << 20) // max(r.net_shape[1], 1))  # rows per call: bounded temporaries
    for y0 in range(0, r.net_shape[0], band):
        yy, xx = np.meshgrid(ys[y0: y0 + band], xs, indexing="ij")
        out[y0: y0 + band] = map_coordinates(work, [yy, xx], order=order, mode="mirror")
    if order == 0 or src.dtype.kind == "f":
        return out.astype(src.dtype, copy=False)
    info = np.iinfo(src.dtype)
    return np.clip(np.rint(out), info.min, info.max).astype(src.dtype)
