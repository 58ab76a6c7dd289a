"""brainrt: data-driven maps of brain architecture from micron-scale images.

Light runtime (no torch): load a model bundle, featurize slices with onnxruntime, and
apply the bundle's heads. See the README for the command line.

>>> import brainrt
>>> bundle = brainrt.Bundle.load("models/slice309-paper6")      # doctest: +SKIP
>>> grid = brainrt.featurize(image, bundle, stride=16)           # doctest: +SKIP
>>> areas = brainrt.classify(grid, bundle)                       # doctest: +SKIP

Layers: :mod:`brainrt.engine.plan` (the input edge, a checked Plan) -> :mod:`brainrt.engine.loop`
(windowing over a predictor built by the bundle) -> :mod:`brainrt.heads` ->
:mod:`brainrt.outputs` (writers). :mod:`brainrt.model.manifest` defines the bundle's manifest.
"""

from .api import (ClassMapResult, classify, classify_image, cluster, featurize, load_features, make_plan,
                  pixel_metrics, subdivide, upsample)
from .bundle.derive import save_bundle
from .bundle.load import Bundle
from .engine.grid import FeatureGrid
from .engine.plan import Plan
from .errors import BrainrtError
from .fit import fit_heads
from .model.manifest import Manifest
from .sources import read_image as read_tiff
from .version import __version__

__all__ = ["Bundle", "BrainrtError", "FeatureGrid", "ClassMapResult", "Manifest", "Plan", "featurize", "classify",
           "classify_image", "cluster", "fit_heads", "save_bundle", "subdivide", "load_features", "make_plan",
           "upsample", "pixel_metrics", "read_tiff"]
