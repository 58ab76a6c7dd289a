"""Models for other tools: a bundle as a BioImage Model Zoo package (``brainrt export --format bioimageio``).

:mod:`~brainrt.zoo.graph` builds the one ONNX graph (the dense network at a grid stride, a head folded in),
:mod:`~brainrt.zoo.package` the package around it, :mod:`~brainrt.zoo.card` its documentation. Nothing here
imports ``onnx`` or ``bioimageio.spec`` until an export runs (the ``[bioimageio]`` extra).
"""

from .package import WHAT, export_bioimageio

__all__ = ["WHAT", "export_bioimageio"]
