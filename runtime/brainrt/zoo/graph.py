"""One ONNX graph of a bundle for other tools: an image tile in, features or class probabilities on a grid out.

The graph is the bundle's dense graph for the grid stride (:func:`brainrt.model.predictor.dense_window`: the
largest dense stride dividing it, every ``q``-th position kept), with the tile reflected at its edges
first, as brainrt reflects a slice at the slice's edges, so that a tile of ``n * stride`` pixels gives
``n`` cells per side, cell ``(i, j)`` being the grid cell of pixels ``i*s .. i*s + s - 1``
(:mod:`brainrt.geometry`). A head folds in when it is one affine map and a softmax: a multinomial
logistic regression after its scalers (:func:`brainrt.heads.apply.logistic_affine`) or the CNN's own output
layer, as a 1x1 convolution and a softmax over the channels. The graph takes the normalized tile
``(pixel * scale - mean) / std``; the package says that normalization as its preprocessing.

``onnx`` is imported here only (the ``[bioimageio]`` extra).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import BrainrtError
from ..heads import NOT_CLASSIFIERS, LinearHead, logistic_affine
from ..heads.context import ContextHead
from ..model.predictor import dense_window

#: Names of the exported graph's input and outputs.
INPUT, PROBABILITIES, FEATURES = "image", "probabilities", "features"


@dataclass(frozen=True)
class Geometry:
    """Where the exported graph looks: grid ``stride`` served by the dense graph of stride ``dense`` (every
    ``q``-th position); the tile is reflected by ``top`` pixels before and ``bottom`` after each axis; the
    ``halo`` (cells) a tiling tool must crop from each side of an output tile (``halo * stride`` input
    pixels padded), ``min_size`` the smallest tile side: one cell more than the two halos (bioimage.io's
    rule), more than the graph reflects."""

    stride: int
    dense: int
    q: int
    top: int
    bottom: int
    halo: int
    min_size: int


def geometry(bundle, stride):
    """The :class:`Geometry` of grid ``stride``, or the one-line error where no dense graph serves it."""
    w = dense_window(bundle, stride)
    top = bundle.patch_size // 2 - w.offset - stride // 2  # cell 0's window starts ``top`` px before the tile
    bottom = w.window - stride - top
    if top < 0 or bottom < 0:
        raise BrainrtError(f"{bundle.path}: stride {stride} is wider than the network's window ({w.window} px); "
                           "export a smaller stride")
    halo = math.ceil(max(top, bottom) / stride)
    return Geometry(stride, w.stride, stride // w.stride, top, bottom, halo, stride * (2 * halo + 1))


def folded_head(bundle, head):
    """(weight (k, F), bias (k,), place (K, k)) of ``head`` as one affine map and a softmax over its ``k``
    classes, ``place`` putting them among the bundle's ``K`` (a head that never saw a class gives it 0);
    else the one-line error that says which heads fold."""
    model = bundle.head(head)
    if isinstance(model, ContextHead):
        raise BrainrtError(f"head {head!r} pools its terms over the slice's tissue cells (a Gaussian of "
                           f"{', '.join(f'{s.sigma_um:g}' for s in model.scales)} um normalized by the tissue mask, "
                           "which one tile cannot know); pass --head logreg")
    affine = None if head in NOT_CLASSIFIERS else (
        (model.weight, model.bias, model.classes_) if isinstance(model, LinearHead) else logistic_affine(model, binary=True))
    if affine is None:
        raise BrainrtError(f"head {head!r} is not one affine map and a softmax, so it does not fold into the "
                           "graph; pass --head logreg (or cnn)")
    w, b, seen = affine
    K = len(bundle.class_names)
    place = np.zeros((K, len(seen)), np.float32)
    place[np.asarray(seen), np.arange(len(seen))] = 1.0
    return w.astype(np.float32), b.astype(np.float32), place


def build(bundle, geo, head=None):
    """The exported graph (an ``onnx.ModelProto``, weights inside): ``image`` (1, 1, H, W) float32 normalized
    tile, H and W multiples of the stride, -> ``features`` (1, F, H/s, W/s) or, with ``head`` (a
    :func:`folded_head`), ``probabilities`` (1, K, H/s, W/s)."""
    import onnx

    model = onnx.load(str(bundle.path / bundle.manifest.dense_onnx.file(geo.dense)))  # its weights loaded inside
    graph = model.graph
    _rename(graph, graph.input[0].name, "export_tile")
    _rename(graph, graph.output[0].name, "export_dense")
    pads = _const(graph, "pads", [0, 0, geo.top, geo.top, 0, 0, geo.bottom, geo.bottom])
    graph.node.insert(0, _node("Pad", [INPUT, pads], ["export_tile"], mode="reflect"))
    last = "export_dense"
    if geo.q > 1:  # every q-th dense position
        ends, axes = _const(graph, "ends", [2 ** 62, 2 ** 62]), _const(graph, "axes", [2, 3])
        graph.node.append(_node("Slice", [last, _const(graph, "starts", [0, 0]), ends, axes,
                                          _const(graph, "steps", [geo.q, geo.q])], ["export_every_q"]))
        last = "export_every_q"
    if head is not None:
        graph.node.extend(_head_nodes(graph, last, head))
        last = graph.node[-1].output[0]
    out = PROBABILITIES if head is not None else FEATURES
    _rename(graph, last, out)
    _set_io(graph, out, len(head[2]) if head is not None else bundle.n_features)
    onnx.checker.check_model(model)
    return model


def _rename(graph, old, new):
    """Tensor ``old`` is called ``new`` in every node."""
    for n in graph.node:
        n.input[:] = [new if x == old else x for x in n.input]
        n.output[:] = [new if x == old else x for x in n.output]


def _set_io(graph, out_name, channels):
    """The graph's input is ``image`` (1, 1, height, width), its output ``out_name`` (1, channels, rows, cols)."""
    from onnx import TensorProto, helper

    del graph.input[:]
    del graph.output[:]
    del graph.value_info[:]  # of the old names
    graph.input.append(helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, [1, 1, "height", "width"]))
    graph.output.append(helper.make_tensor_value_info(out_name, TensorProto.FLOAT, [1, channels, "rows", "cols"]))


def _node(op, inputs, outputs, **attrs):
    from onnx import helper

    return helper.make_node(op, inputs, outputs, name=f"export_{op.lower()}_{outputs[0]}", **attrs)


def _const(graph, name, values, dtype=np.int64):
    """An initializer ``export_<name>`` of ``values``; its name."""
    from onnx import numpy_helper

    graph.initializer.append(numpy_helper.from_array(np.asarray(values, dtype), f"export_{name}"))
    return f"export_{name}"


def _head_nodes(graph, last, head):
    """1x1 convolution (the head's affine map), softmax over the channels, and the placing of its classes."""
    w, b, place = head
    conv = _node("Conv", [last, _const(graph, "head_w", w[:, :, None, None], np.float32),
                          _const(graph, "head_b", b, np.float32)], ["export_logits"])
    soft = _node("Softmax", ["export_logits"], ["export_softmax"], axis=1)
    if place.shape[0] == place.shape[1] and np.array_equal(place, np.eye(len(place))):
        return [conv, soft]
    put = _node("Conv", ["export_softmax", _const(graph, "place", place[:, :, None, None], np.float32)],
                ["export_placed"])
    return [conv, soft, put]
