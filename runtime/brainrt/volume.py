"""Deprecated: volume sources and plans moved to :mod:`brainrt.volumes` (``open_volume``,
``make_volume_plan``, ``VolumePlan``, ``VolumeSource``, ...). The old names still work and warn."""

from __future__ import annotations

import warnings

from . import volumes
from .volumes import sources


def __getattr__(name):
    """``brainrt.volume.NAME``: the same object from :mod:`brainrt.volumes`, with a warning."""
    if name.startswith("_"):
        raise AttributeError(name)
    where = volumes if hasattr(volumes, name) else sources if hasattr(sources, name) else None
    if where is None:
        raise AttributeError(f"module 'brainrt.volume' has no attribute {name!r}")
    warnings.warn(f"brainrt.volume.{name} moved to {where.__name__}.{name}", DeprecationWarning, stacklevel=2)
    return getattr(where, name)
