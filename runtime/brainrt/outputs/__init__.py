"""Outputs: where a run's results go, and when an output counts as finished.

Lives here: the output store interface (:mod:`.store`) and its two stores, the OME-TIFF set of one
slice (:mod:`.tiff_set`) and the zarr stack of a volume (:mod:`.zarr_stack`), both applying the
finished-output rule of :mod:`brainrt.finished`; the writers of a slice's maps (:mod:`.writers`).

May import: the rule (:mod:`brainrt.finished`), files and formats (:mod:`brainrt.io`,
:mod:`brainrt.runfiles`, :mod:`brainrt.errors`), and what a writer draws or names (geometry, plots,
heads' constants, uncertainty). Never the engine, the plans, the executors or the command line: a
store is told what to write, it computes nothing.
"""

from .store import OutputStore
from .tiff_set import TiffSet, probabilities_path, siblings, uncertainty_path
from .writers import classification_set, label_key, write_classification, write_clusters, write_subdivision
from .zarr_stack import ZarrStack, partial_path

__all__ = ["OutputStore", "TiffSet", "ZarrStack", "classification_set", "label_key", "partial_path",
           "probabilities_path", "siblings", "uncertainty_path", "write_classification", "write_clusters",
           "write_subdivision"]
