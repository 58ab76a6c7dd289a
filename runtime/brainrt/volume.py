"""Deprecated: volume sources and plans moved to :mod:`brainrt.volumes` (``open_volume``,
``make_volume_plan``, ``VolumePlan``, ``VolumeSource``, ...). The old names still work and warn."""

from __future__ import annotations

from . import sources
from .volumes import moved_from

__getattr__ = moved_from("volume", sources)
