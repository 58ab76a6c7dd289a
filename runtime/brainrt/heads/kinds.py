"""The head kinds: one module each, declaring how its heads are fitted, recorded, loaded and applied.

A kind module declares ``KIND``, ``HEADS`` (the names bundles ship it under), ``CLASSIFIERS`` (those
that classify), ``CLASS_FREE`` (those a derived bundle keeps from its parent), ``claims(rel, spec)``
(whether the manifest's file ``rel``, with its context spec or None, is of this kind) and
``load(path, spec, stage1)``. :data:`KINDS` lists them; a bundle's heads are loaded through them
(:func:`bundle_heads`, each when first used); the names below are read from it by the
command line (``--head``), the napari plugin, the API, derived bundles and the trainer. **A new head
kind is one module here and one entry in** :data:`KINDS`.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path

from ..errors import file_error, unreadable
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


def bundle_heads(path, manifest):
    """Name -> head of the manifest's head files, except :data:`UNUSED_HEADS` (verified with the rest,
    never unpickled); each is loaded when first used (:class:`Heads`). A context head (``context_heads``)
    needs its own file and its stage-1 head's: checked here, before anything is loaded."""
    specs = manifest.context_heads or {}
    for name, spec in specs.items():
        if name not in manifest.heads or (spec.stage1 is not None and spec.stage1 not in manifest.heads):
            raise file_error(path, f"context head {name!r} needs head files for itself and its stage 1 "
                                   f"{spec.stage1!r}; the manifest's heads are {', '.join(manifest.heads)}")
    return Heads(path, {name: rel for name, rel in manifest.heads.items() if name not in UNUSED_HEADS}, specs)


class Heads(Mapping):
    """The bundle's heads by name, each loaded on first use by its kind (:func:`load_head`: a context head
    with its stage 1 when ``specs`` describes it, the CNN's layer, a scikit-learn head), so a command that
    fails on its input fails before scikit-learn is even imported. Every file was verified against the
    manifest's sha256 when the bundle was loaded."""

    def __init__(self, path, files, specs=None):
        self._path, self._files, self._loaded, self._lock = Path(path), dict(files), {}, threading.RLock()
        self._specs = dict(specs or {})

    def __getitem__(self, name):
        rel = self._files[name]
        with self._lock:
            if name not in self._loaded:
                self._loaded[name] = self._load(name, rel)
            return self._loaded[name]

    def _load(self, name, rel):
        spec = self._specs.get(name)
        with unreadable(self._path / rel, f"head {name!r} cannot be loaded", "the file is damaged"):
            return load_head(self._path / rel, rel, spec, self[spec.stage1] if spec and spec.stage1 else None)

    def __iter__(self):
        return iter(self._files)

    def __len__(self):
        return len(self._files)
