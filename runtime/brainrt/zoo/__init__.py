"""Models for other tools: a bundle as a BioImage Model Zoo package (``brainrt export --format bioimageio``).

Lives here: :mod:`~brainrt.zoo.graph` builds the one ONNX graph (the dense network at a grid stride, a
head folded in), :mod:`~brainrt.zoo.package` the package around it (:func:`export_bioimageio`),
:mod:`~brainrt.zoo.card` its documentation, :mod:`~brainrt.zoo.command` the ``brainrt export`` command.

May import: every room below the faces (the jobs' featurize and classify give the test tensors' expected
numbers) and the command-line options; ``onnx`` and ``bioimageio.spec`` only inside the functions that
export (the ``[bioimageio]`` extra), so ``import brainrt`` never needs them.
"""

from .package import WHAT, export_bioimageio

__all__ = ["WHAT", "export_bioimageio"]
