"""Models for other tools: a bundle as a BioImage Model Zoo package (``brainrt export --format bioimageio``).

Lives here: :mod:`~brainrt.zoo.graph` builds the one ONNX graph (the dense network at a grid stride, a
head folded in), :mod:`~brainrt.zoo.package` the package around it (:func:`export_bioimageio`),
:mod:`~brainrt.zoo.card` its documentation (the ``brainrt export`` command is :mod:`brainrt.cli.export`).

May import: every room up to the jobs (their featurize and classify give the test tensors' expected
numbers); ``onnx`` and ``bioimageio.spec`` only inside the functions that
export (the ``[bioimageio]`` extra), so ``import brainrt`` never needs them.
"""

from .package import WHAT, export_bioimageio

__all__ = ["WHAT", "export_bioimageio"]
