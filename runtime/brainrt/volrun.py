"""Deprecated: volume runs moved to :mod:`brainrt.volumes` (``brainrt.volumes.process_volume``,
``run_volume``, ``dask_client``, ...). The old names still work and warn once per use."""

from __future__ import annotations

import warnings

from . import volumes
from .volumes import blocks


def __getattr__(name):
    """``brainrt.volrun.NAME``: the same object from :mod:`brainrt.volumes` (or its ``blocks``), with a warning."""
    if name.startswith("_"):
        raise AttributeError(name)
    where = volumes if hasattr(volumes, name) else blocks if hasattr(blocks, name) else None
    if where is None:
        raise AttributeError(f"module 'brainrt.volrun' has no attribute {name!r}")
    warnings.warn(f"brainrt.volrun.{name} moved to {where.__name__}.{name}", DeprecationWarning, stacklevel=2)
    return getattr(where, name)
