"""Heads: the bundle's models on features, by kind, and applying them a band of rows at a time.

Lives here: the head kinds (:mod:`.kinds`, one module a kind: :mod:`.scikit`, :mod:`.linear`,
:mod:`.context`, with the context head's pooled stream), each declaring how its heads are fitted, recorded
in the manifest, loaded and applied; applying a loaded head (:mod:`.apply`: :class:`Classifier`, clusters,
densities, :class:`ClassMapResult`).

May import: the base modules (errors) and the maps (:mod:`brainrt.maps`: uncertainty, pooling; the
context heads pool with them); never bundles, plans, the engine, outputs or the faces (a bundle loads its
heads through :func:`bundle_heads`).
"""

from .apply import (HEAD_CHUNK, OFF_TISSUE, ClassMapResult, Classifier, apply_rows, area_loglik, chunk_rows,
                    float32_proba, gmm_clusters, head_bands, logistic_affine, per_class)
from .kinds import (CLASS_FREE_HEADS, CLASSIFIER_HEADS, KINDS, NOT_CLASSIFIERS, UNUSED_HEADS, Heads, bundle_heads,
                    kind_of, load_head)
from .linear import LinearHead

__all__ = ["CLASSIFIER_HEADS", "CLASS_FREE_HEADS", "ClassMapResult", "Classifier", "HEAD_CHUNK", "Heads", "KINDS",
           "LinearHead", "NOT_CLASSIFIERS", "OFF_TISSUE", "UNUSED_HEADS", "apply_rows", "area_loglik", "bundle_heads",
           "chunk_rows", "float32_proba", "gmm_clusters", "head_bands", "kind_of", "load_head", "logistic_affine", "per_class"]
