"""Outputs: where a run's results go, and when an output counts as finished.

Lives here: the finished-output rule and the run record that decides it (:mod:`.finished`: nothing
there, write; same arguments, nothing to do; anything else, a refusal naming what differs; written
atomically); the output store interface (:mod:`.store`) and its two stores, the OME-TIFF set of one
slice (:mod:`.tiff_set`) and the zarr stack of a volume (:mod:`.zarr_stack`), both applying that rule;
the writers of a slice's maps (:mod:`.writers`, OME-TIFF maps by :mod:`.ome_tiff`); the sinks (:mod:`.sinks`), where the engine's blocks
go: an in-memory grid, a zarr feature grid, a classifier whose rows a slice's map finishes, and the band
writers its probabilities and their uncertainty stream into.

May import: files and formats (:mod:`brainrt.io`, :mod:`brainrt.runfiles`, :mod:`brainrt.errors`,
:mod:`brainrt.integrity`), the sources (an input's identity in a run record), and what a writer draws
or names (geometry, plots, heads' constants, uncertainty). The stores and writers never import the
engine: a store is told what to write, it computes nothing. The sinks, which take the engine's blocks
as they come, also import its feature grid and cell map (:mod:`brainrt.engine.grid`,
:class:`~brainrt.engine.loop.CellMap`), the heads' streams and a slice's map finishing
(:mod:`brainrt.maps.slicemap`). Never the plans' makers, the jobs, the executors or the command line.
"""

from .store import OutputStore
from .tiff_set import TiffSet, probabilities_path, siblings, uncertainty_path
from .writers import classification_set, label_key, write_classification, write_clusters, write_subdivision
from .zarr_stack import ZarrStack, partial_path

__all__ = ["OutputStore", "TiffSet", "ZarrStack", "classification_set", "label_key", "partial_path",
           "probabilities_path", "siblings", "uncertainty_path", "write_classification", "write_clusters",
           "write_subdivision"]
