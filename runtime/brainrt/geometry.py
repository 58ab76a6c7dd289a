"""Where the network looks: patch, window and grid arithmetic shared by trainer and runtime.

The paper's network (valid convolutions 7/5/3/3, four 2x2 max-pools) only reaches its
output from windows of ``38 + 16 m`` pixels (m = side of the last feature map). A patch
of ``P`` pixels is therefore evaluated on its *centred* window of
``W = 38 + 16 * ((P - 38) // 16)`` pixels (118 for P = 128), starting ``(P - W) // 2``
pixels inside the patch (5 for P = 128). The exported per-patch ONNX model takes the
whole P x P patch and crops the window itself, so callers only think in patches.

Grid convention (runtime): grid cell ``(i, j)`` of stride ``s`` is the patch whose centre
is pixel ``(i * s + s // 2, j * s + s // 2)``; the patch covers rows
``[cy - P // 2, cy - P // 2 + P)``. A label map at full resolution gives pixel ``(y, x)``
the value of cell ``(y // s, x // s)``. Cells whose patch crosses the image edge see the
image reflected.
"""

from __future__ import annotations

#: Total stride of the network (four 2x2 max-pools).
NET_STRIDE = 16
#: Side of the smallest window that reaches a 1x1 output.
MIN_WINDOW = 38


def window_size(patch_size: int) -> int:
    """Side of the window the network evaluates inside a patch of ``patch_size``."""
    m = (patch_size - MIN_WINDOW) // NET_STRIDE
    if m < 1:
        raise ValueError(f"patch size must be at least {MIN_WINDOW + NET_STRIDE}, got {patch_size}")
    return MIN_WINDOW + NET_STRIDE * m


def final_map_size(patch_size: int) -> int:
    """Side of the last feature map (5 for a 128 px patch)."""
    return (window_size(patch_size) - MIN_WINDOW) // NET_STRIDE


def window_offset(patch_size: int) -> int:
    """Offset of the window's top-left corner inside the patch (5 for 128 px)."""
    return (patch_size - window_size(patch_size)) // 2


def grid_shape(image_shape, stride: int) -> tuple[int, int]:
    """Number of grid cells (rows, cols) covering an image at ``stride``."""
    h, w = image_shape
    return (-(-h // stride), -(-w // stride))


def cell_centre(index: int, stride: int) -> int:
    """Pixel coordinate of the centre of grid cell ``index`` along one axis."""
    return index * stride + stride // 2


#: Most grid steps per dense step worth subsampling a dense graph for. A dense position costs
#: 1/26 (stride-16 graph) to 1/50 or less (strides 1-4) of a per-patch cell (shipped bundle,
#: 2 threads), so computing q * q positions per cell is cheaper than per patch up to q = 5.
DENSE_MAX_SUBSAMPLE = 5


def dense_step(stride: int, dense_strides) -> int | None:
    """The dense graph stride serving grid ``stride``: the largest of ``dense_strides`` dividing it (None: none).

    Grid stride ``s = q * d`` is the dense graph of stride ``d`` with every ``q``-th output
    position kept (:func:`brainrt.engine.loop.dense_geometry`): the same windows as per patch.
    """
    divisors = [d for d in dense_strides if stride % d == 0]
    return max(divisors) if divisors else None


def upsample(cells, stride, image_shape):
    """Grid map (R, C, ...) to full resolution (H, W, ...): pixel (y, x) takes cell (y // s, x // s)."""
    import numpy as np

    h, w = image_shape
    return np.repeat(np.repeat(cells, stride, axis=0), stride, axis=1)[:h, :w]


def manifest_problems(m) -> list:
    """What a bundle manifest's geometry contradicts in itself (patch, window, footprint, net
    stride, dense graphs, graph input shape); empty when it is consistent."""
    P, fp, out = m.patch_size, m.footprint, []
    try:
        want = (window_size(P), window_offset(P))
    except ValueError:
        return [f"patch_size {P} is too small for the network"]
    got = (m.window.get("size", want[0]), m.window.get("offset", want[1]))
    if got != want:
        out.append(f"window {got[0]} at offset {got[1]} is not the {want[0]} px window at offset {want[1]} of "
                   f"patch_size {P}")
    if m.context and m.context.footprint != P * m.context.factor:
        out.append(f"context footprint {m.context.footprint} is not patch_size {P} x factor {m.context.factor}")
    if m.net_stride != NET_STRIDE:
        out.append(f"net_stride {m.net_stride} is not the network's {NET_STRIDE}")
    shape = [d for d in m.onnx.input_shape if isinstance(d, int)]
    if shape and shape[-2:] != [fp, fp]:
        out.append(f"onnx input_shape {list(m.onnx.input_shape)} does not end in the footprint {fp} x {fp}")
    return out + _dense_problems(m, fp)

def _dense_problems(m, fp):
    g = m.dense_onnx
    if g is None:
        return []
    out = [f"dense stride {s} does not divide net_stride {m.net_stride} or has no graph file"
           for s in g.strides if m.net_stride % s or str(s) not in g.files]
    if g.footprint is not None and g.footprint != fp:
        out.append(f"dense footprint {g.footprint} is not the bundle's footprint {fp}")
    if (g.offset or 0) + g.window > fp:
        out.append(f"dense window {g.window} at offset {g.offset or 0} overruns the footprint {fp}")
    return out
