"""The head kinds: one module each, declaring how its heads are fitted, recorded, loaded and applied.

A kind module declares ``KIND``, ``HEADS`` (the names bundles ship it under), ``CLASSIFIERS`` (those
that classify), ``CLASS_FREE`` (those a derived bundle keeps from its parent), ``claims(rel, spec)``
(whether the manifest's file ``rel``, with its context spec or None, is of this kind) and
``load(path, spec, stage1)``. :data:`KINDS` lists them; the names below are read from it by the
command line (``--head``), the napari plugin, the API, derived bundles and the trainer. **A new head
kind is one module here and one entry in** :data:`KINDS`.
"""

from __future__ import annotations

from . import context, linear, scikit

#: The head kinds, in the order their names are offered; every head file is claimed by exactly one.
KINDS = (scikit, linear, context)
#: The classifier heads bundles ship, by name (a bundle may hold fewer: its manifest lists them); the
#: command line's, the napari plugin's and the API's choices.
CLASSIFIER_HEADS = tuple(n for k in KINDS for n in k.CLASSIFIERS)
#: Heads of known names that are not classifiers.
NOT_CLASSIFIERS = tuple(n for k in KINDS for n in k.HEADS if n not in k.CLASSIFIERS)
#: Parent heads that do not depend on the classes, copied into a derived bundle.
CLASS_FREE_HEADS = tuple(n for k in KINDS for n in k.CLASS_FREE)
#: Heads older bundles ship that no kind loads (their files stay listed and hashed): ``pca_kmeans`` (a
#: global PCA + KMeans) was fitted at export until sub-division fitted its own per region; the trainer and
#: derived bundles no longer write it.
UNUSED_HEADS = ("pca_kmeans",)


def kind_of(rel, spec=None):
    """The kind module of the manifest's head file ``rel`` (``spec``: its context spec, None)."""
    return next(k for k in KINDS if k.claims(rel, spec))


def load_head(path, rel, spec=None, stage1=None):
    """The head in the bundle file ``path`` (the manifest's ``rel``), loaded by its kind."""
    return kind_of(rel, spec).load(path, spec, stage1)
