"""The manifest's record of how a bundle was trained: the slices and the patches drawn from each split.

A part of :class:`brainrt.model.manifest.Manifest` (read and written there, like every part).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .records import Part


@dataclass(frozen=True)
class TrainingSlice(Part):
    """One training slice: file names, their sha256 and the image shape."""

    image: str
    mask: str
    image_sha256: str
    mask_sha256: str
    shape: tuple
    extra: dict = field(default_factory=dict)

    _where = "manifest training data"

    @classmethod
    def _coerce(cls, k):
        return {**k, "shape": tuple(k["shape"])}


@dataclass(frozen=True, kw_only=True)
class Training(Part):
    """How the bundle was trained: data, split (the sampler's report), per-split counts, options."""

    data: tuple
    split: dict
    counts: dict
    seed: int
    epochs_run: int | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    schedule: str | None = None
    train_seconds: float | None = None
    total_seconds: float | None = None
    extra: dict = field(default_factory=dict)

    _where = "manifest training"

    @classmethod
    def _coerce(cls, k):
        return {**k, "data": tuple(TrainingSlice.from_dict(s) for s in k["data"])}

    @property
    def gap(self) -> int:
        """Minimum pixels between patches of different splits."""
        return int(self.split["gap"])

    @property
    def fractions(self) -> tuple:
        """Train/val/test fractions of the first slice's layout."""
        return tuple(self.split["layout"][0].get("fractions", (0.6, 0.2, 0.2)))

    @property
    def layout(self) -> str:
        """Split bands per class, "rows" or "interior" (older bundles: read from the split report)."""
        given = self.extra.get("layout") or str((self.split.get("layout") or [{}])[0].get("layout", "rows")).split()[0]
        return given if given in ("rows", "interior") else "rows"

    def taken(self, split) -> dict:
        """Patches taken per class name in ``split``."""
        return {name: int(v["taken"]) for name, v in self.counts[split].items()}

    def asked(self, split) -> int:
        """Patches asked per class in ``split``."""
        return max(int(v["asked"]) for v in self.counts[split].values())
