"""The manifest's record of a bundle's graphs: the network's input normalization, the per-patch and dense
feature graphs, the context branch's fields and the int8 copies.

Parts of :class:`brainrt.model.manifest.Manifest` (``normalization``, ``onnx``, ``dense_onnx``, ``context``,
``int8``; read and written there, like every part).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import BrainrtError
from .records import Part


@dataclass(frozen=True, kw_only=True)
class Normalization(Part):
    """Network input: ``(pixel * scale - mean) / std``.

    ``scale`` records the training images' dtype (1/255 for uint8); at run time the
    scale follows the dtype of the image being featurized (:func:`brainrt.engine.plan.intensity_scale`).
    """

    scale: float
    mean: float
    std: float
    formula: str = "(pixel * scale - mean) / std"
    trained_dtype: str = "uint8"
    extra: dict = field(default_factory=dict)

    _where = "manifest normalization"

    @classmethod
    def _coerce(cls, k):
        return {**k, "mean": float(k["mean"]), "std": float(k["std"]), "scale": float(k["scale"])}


@dataclass(frozen=True)
class OnnxGraph(Part):
    """The per-patch feature graph: ``input`` (N, 1, P, P) float32 -> ``output`` (N, F)."""

    file: str
    input: str
    output: str
    opset: int
    input_shape: tuple = ()
    extra: dict = field(default_factory=dict)

    _where = "manifest onnx"

    @classmethod
    def _coerce(cls, k):
        return {**k, "input_shape": tuple(k.get("input_shape", ()))}


@dataclass(frozen=True)
class DenseGraphs(Part):
    """Fully convolutional graphs, one per dense stride: ``input`` (1, 1, H, W) -> ``output`` (1, F, h, w).

    ``output[:, :, i, j]`` holds the features of the window whose top-left is tile pixel
    ``(i * s, j * s)``; ``window`` is that window's side.
    """

    files: dict
    input: str
    output: str
    strides: tuple
    window: int
    offset: int | None = None  # window start inside the footprint (None: the patch's centred window)
    footprint: int | None = None
    extra: dict = field(default_factory=dict)

    _where = "manifest dense_onnx"

    @classmethod
    def _coerce(cls, k):
        opt = {n: int(k[n]) for n in ("offset", "footprint") if k.get(n) is not None}
        return {"files": {str(a): str(b) for a, b in k["files"].items()}, "input": k["input"], "output": k["output"],
                "strides": tuple(int(s) for s in k["strides"]), "window": int(k["window"]), **opt}

    def file(self, stride):
        """Graph file of the dense stride ``stride``."""
        return self.files[str(stride)]


@dataclass(frozen=True)
class Context(Part):
    """The context branch: the network also reads a ``footprint`` px field around each
    patch (same centre), averaged ``factor`` x ``factor``. With several scales (``scales``,
    ascending, e.g. 4 and 16) each factor ``k`` is the ``k * patch`` field averaged
    ``k x k``; ``factor`` is the largest and the footprint its field. Bundles with one
    scale do not write ``scales``."""

    factor: int
    footprint: int
    scales: tuple | None = None
    extra: dict = field(default_factory=dict)

    _where = "manifest context"

    @classmethod
    def _coerce(cls, k):
        scales = {"scales": tuple(int(f) for f in k["scales"])} if k.get("scales") else {}
        if scales and max(scales["scales"]) != int(k["factor"]):
            raise BrainrtError(f"manifest context: factor {k['factor']} is not the largest of scales {k['scales']}")
        return {"factor": int(k["factor"]), "footprint": int(k["footprint"]), **scales}

    @property
    def factors(self) -> tuple:
        """Every context factor, ascending (one-scale bundles: ``(factor,)``)."""
        return self.scales or (self.factor,)



#: Arithmetic a bundle's graphs may come in (fp32 always; int8 when :class:`Int8Graphs` are recorded).
PRECISIONS = ("fp32", "int8")


@dataclass(frozen=True)
class Int8Graphs(Part):
    """int8 copies of the feature graphs (QDQ: s8 weights per output channel, u8 activations).

    Same inputs, outputs and geometry as the fp32 graphs: ``file`` is the per-patch
    graph's copy, ``dense_files`` the dense graphs' (by stride), ``weights`` their shared
    weights file. ``calibration`` records the set and the method that fixed the
    activation ranges; ``agreement`` how closely the per-patch copy follows fp32 on
    held-out footprints (``label_agreement`` through the default head,
    ``cosine_median`` and ``cosine_p1`` of the features).
    """

    file: str
    dense_files: dict = field(default_factory=dict)
    weights: str = ""
    calibration: dict = field(default_factory=dict)
    agreement: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    _where = "manifest int8"

    @classmethod
    def _coerce(cls, k):
        return {**k, "dense_files": {str(a): str(b) for a, b in k.get("dense_files", {}).items()}}

    def dense_file(self, stride):
        """int8 graph file of the dense stride ``stride`` (None if there is none)."""
        return self.dense_files.get(str(stride))
