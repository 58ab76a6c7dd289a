"""Frozen dataclasses read from and written to JSON objects, losing nothing: the manifest's machinery.

A :class:`Part` reads its known fields from a JSON object (unknown keys go to its
``extra`` and are written back unchanged) and writes itself back with :func:`plain`.
:mod:`brainrt.model.manifest` builds every part of a bundle's manifest on it.
"""

from __future__ import annotations

import dataclasses

from ..errors import BrainrtError


def split_fields(cls, d, where):
    """(known fields, extra keys) of the dict ``d`` for dataclass ``cls``; missing fields raise."""
    if not isinstance(d, dict):
        raise BrainrtError(f"{where}: expected an object, got {type(d).__name__}")
    names = [f.name for f in dataclasses.fields(cls) if f.name != "extra"]
    optional = {f.name for f in dataclasses.fields(cls)
                if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING}
    missing = [n for n in names if n not in d and n not in optional]
    if missing:
        raise BrainrtError(f"{where}: missing field {missing[0]!r}")
    return {n: d[n] for n in names if n in d}, {k: v for k, v in d.items() if k not in names}


def plain(obj):
    """Known fields then extra keys, as JSON-ready values (tuples become lists); an
    optional field left at None is left out."""
    out = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.name != "extra" and not (value is None and f.default is None):
            out[f.name] = _json(value)
    return {**out, **obj.extra}


def _json(v):
    if hasattr(v, "to_dict"):
        return v.to_dict()
    if isinstance(v, (tuple, list)):
        return [_json(x) for x in v]
    if isinstance(v, dict):
        return {k: _json(x) for k, x in v.items()}
    return v


class Part:
    """What every manifest part shares: read from a JSON object (``_where`` names the part
    in errors, ``_coerce`` turns the known fields' JSON values into their types; unknown
    keys go to ``extra``) and write back (:func:`plain`)."""

    _where = "manifest"

    @classmethod
    def _coerce(cls, known):
        return known

    @classmethod
    def from_dict(cls, d):
        known, extra = split_fields(cls, d, cls._where)
        return cls(**cls._coerce(known), extra=extra)

    def to_dict(self):
        return plain(self)
