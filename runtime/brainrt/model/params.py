"""The options of every job, declared once as data: their constraints and their defaults.

In the spirit of scikit-learn's ``_param_validation``: an option is a :class:`Param` (a
constraint and a default) in :data:`PARAMS`; :func:`check` validates the options a
caller passed with the one error template of :mod:`brainrt.errors`
("The 'stride' parameter of featurize must be a positive int. Got -3 instead."). The 2D
edge (:func:`brainrt.engine.plan.make_plan`), the volume edge
(:func:`brainrt.volumes.plan.make_volume_plan`) and the command line's defaults read the
same declarations, and the tests generate invalid values from them
(:meth:`Interval.invalid`, :meth:`Options.invalid`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import param_error
from .manifest import PRECISIONS


@dataclass(frozen=True)
class Interval:
    """An int or a finite float in ``[low, high]`` (``low_open``: ``low`` itself excluded); ``none``: None allowed."""

    kind: type
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    none: bool = False

    def describe(self) -> str:
        what = "int" if self.kind is int else "float"
        if self.low == 0 and self.low_open and self.high is None:
            return f"a positive {what}"
        if self.kind is int and self.low == 1 and self.high is None:
            return "a positive int"
        if self.low is not None and self.high is not None:
            return f"a float in [{float(self.low)}, {float(self.high)}]"
        return f"a finite {what}"

    def check(self, value, name, owner):
        if value is None and self.none:
            return None
        bad = param_error(name, owner, self.describe(), value)
        if isinstance(value, (bool, str, bytes)):
            raise bad
        if self.kind is int:
            if isinstance(value, (float, np.floating)) or not hasattr(value, "__index__"):
                raise bad
            value = int(value)
        else:
            if not isinstance(value, (int, float, np.integer, np.floating)) or not math.isfinite(float(value)):
                raise bad
            value = float(value)
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            raise bad
        if self.high is not None and value > self.high:
            raise bad
        return value

    def invalid(self) -> list:
        """Values this constraint refuses (for tests)."""
        out = ["3", True, float("nan")] + ([] if self.none else [None])
        if self.kind is int:
            out.append(2.0)
        if self.low is not None:
            out.append(self.low - 1 if not self.low_open else self.low)
        if self.high is not None:
            out.append(self.high * 2 + 1)
        return out


@dataclass(frozen=True)
class Options:
    """One of a few values (strings)."""

    values: tuple
    none: bool = False

    def describe(self) -> str:
        return f"one of {self.values}"

    def check(self, value, name, owner):
        if value is None and self.none:
            return None
        if not isinstance(value, str) or value not in self.values:
            raise param_error(name, owner, self.describe(), value)
        return value

    def invalid(self) -> list:
        return ["", "other", 3] + ([] if self.none else [None])


@dataclass(frozen=True)
class Param:
    """An option: its constraint and its default."""

    constraint: object
    default: object = None


#: Every option of featurize / classify, of a slice or a volume. Defaults: the paper's grid step,
#: half a patch of tissue, 256 patches per call, precision "auto": int8 where the CPU has VNNI and the
#: bundle int8 graphs, else fp32 (README, "int8").
PARAMS = {
    "stride": Param(Interval(int, 1), 16),
    "batch_size": Param(Interval(int, 1), 256),
    "min_tissue": Param(Interval(float, 0.0, 1.0), 0.5),
    "threshold": Param(Interval(float, none=True), None),
    "pixel_size_um": Param(Interval(float, 0.0, low_open=True, none=True), None),
    "z_spacing_um": Param(Interval(float, 0.0, low_open=True, none=True), None),
    "method": Param(Options(("auto", "patch", "dense")), "auto"),
    "precision": Param(Options(("auto",) + PRECISIONS), "auto"),
    "smooth": Param(Interval(float, 0.0, 1e6, none=True), None),
    "smooth_z": Param(Interval(float, 0.0, 1e6), 0.0),
    "band_rows": Param(Interval(int, 1, none=True), None),
    "threads": Param(Interval(int, 1, none=True), None),
    "task": Param(Options(("featurize", "classify")), "classify"),
    "device": Param(Options(("auto", "cpu", "cuda")), "auto"),
    "standardize": Param(Options(("auto", "match", "off")), "auto"),
}


def default(name):
    """The declared default of option ``name``."""
    return PARAMS[name].default


#: ``standardize`` as a bool (the API before issue 28): True mapped every slice onto the training tissue.
STANDARDIZE_BOOLS = {True: "match", False: "off"}


def check(owner, **values) -> dict:
    """The options ``values`` checked against their declarations (ints as int, floats as float), or the
    one-line error of the first bad one, naming it and ``owner``."""
    if isinstance(values.get("standardize"), (bool, np.bool_)):
        values["standardize"] = STANDARDIZE_BOOLS[bool(values["standardize"])]
    return {name: PARAMS[name].constraint.check(v, name, owner) for name, v in values.items()}
