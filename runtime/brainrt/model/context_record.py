"""The manifest's record of a bundle's context heads (:mod:`brainrt.heads.context`): their pooling scales
and how they were chosen.

A part of :class:`brainrt.model.manifest.Manifest` (``context_heads``: head name -> :class:`ContextHeadSpec`;
read and written there, like every part). The head's weights are a ``heads`` entry of the same name.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import BrainrtError
from .records import Part

#: What a scale pools: the cell features, or the first-stage head's class probabilities.
SOURCES = ("features", "probabilities")


@dataclass(frozen=True)
class PoolScale(Part):
    """One neighbourhood summary of a context head: ``source`` ("features" or "probabilities", the
    stage-1 head's) Gaussian-pooled over tissue, ``sigma_um`` in-plane and ``sigma_z_um`` across slices."""

    source: str
    sigma_um: float
    sigma_z_um: float = 0.0
    extra: dict = field(default_factory=dict)

    _where = "manifest context_heads scales"

    @classmethod
    def _coerce(cls, k):
        if k["source"] not in SOURCES or not float(k["sigma_um"]) > 0:
            raise BrainrtError(f"{cls._where}: bad scale {k} (source features|probabilities, sigma_um > 0)")
        return {"source": k["source"], "sigma_um": float(k["sigma_um"]), "sigma_z_um": float(k.get("sigma_z_um", 0))}


@dataclass(frozen=True)
class ContextHeadSpec(Part):
    """A context head (:mod:`brainrt.heads.context`): its scales, the stage-1 head whose probabilities it pools,
    its regularization ``C`` and how they were chosen (``extra["table"]``: the candidates' scores)."""

    scales: tuple
    stage1: str | None = None
    C: float | None = None
    chosen_on: str = ""
    extra: dict = field(default_factory=dict)

    _where = "manifest context_heads"

    @classmethod
    def _coerce(cls, k):
        return {**k, "scales": tuple(PoolScale.from_dict(x) for x in k["scales"])}
