"""Deprecated: volume runs moved to :mod:`brainrt.volumes` (``brainrt.volumes.process_volume``,
``run_volume``, ``dask_client``, ...). The old names still work and warn once per use."""

from __future__ import annotations

from .volumes import blocks, moved_from

__getattr__ = moved_from("volrun", blocks)
