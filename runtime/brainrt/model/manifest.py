"""What a bundle's ``manifest.json`` holds: one frozen :class:`Manifest`, read and written here only.

The trainer builds a Manifest and writes ``to_dict()``; the runtime reads one with
:meth:`Manifest.from_dict`, which migrates older schemas. Nothing else touches the JSON's
keys. Keys this version does not know (fields added later, such as intensity quantiles
or a context branch) are kept in each part's ``extra`` and written back unchanged, so a
round trip loses nothing. Its larger parts are typed beside it: the graphs (:mod:`brainrt.model.graphs_record`),
the context heads (:mod:`brainrt.model.context_record`) and the training (:mod:`brainrt.model.training_record`).

Schema history:

- 1: the first bundles (both shipped ones). Its top-level ``stride`` was the network's
  total stride, not a grid stride.
- 2: ``stride`` is renamed ``net_stride``; nothing else changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import BrainrtError, file_error
from .context_record import ContextHeadSpec, PoolScale  # noqa: F401 (PoolScale: a part of the manifest too)
from .graphs_record import PRECISIONS, Context, DenseGraphs, Int8Graphs, Normalization, OnnxGraph  # noqa: F401 (parts)
from .records import Part, plain, split_fields
from .training_record import Training, TrainingSlice

SCHEMA_VERSION = 2
#: Schemas this runtime reads (older ones are migrated on reading).
READABLE_SCHEMAS = (1, 2)


@dataclass(frozen=True)
class ClassSpec(Part):
    """One area: its name and the mask codes it covers (label maps write the first)."""

    name: str
    codes: tuple
    extra: dict = field(default_factory=dict)

    _where = "manifest classes"

    @classmethod
    def _coerce(cls, k):
        return {"name": str(k["name"]), "codes": tuple(int(c) for c in k["codes"])}


@dataclass(frozen=True)
class Intensity(Part):
    """The training tissue's gray-value quantiles at ``len(quantiles)`` even probabilities
    (values in the training images' units); new slices are mapped onto them."""

    quantiles: tuple
    tissue: str = "pixels above each training slice's Otsu threshold"
    extra: dict = field(default_factory=dict)

    _where = "manifest intensity"

    @classmethod
    def _coerce(cls, k):
        return {**k, "quantiles": tuple(float(q) for q in k["quantiles"])}


@dataclass(frozen=True)
class Smoothing(Part):
    """Default map regularization: Gaussian smoothing of class scores, ``sigma_um`` micrometres."""

    sigma_um: float
    space: str = "log"
    chosen_on: str = ""
    extra: dict = field(default_factory=dict)

    _where = "manifest smoothing"

    @classmethod
    def _coerce(cls, k):
        return {**k, "sigma_um": float(k["sigma_um"])}


def _migrate(d):
    """A manifest dict of any readable schema, as schema :data:`SCHEMA_VERSION`."""
    if d.get("schema_version") == 1:
        d = {("net_stride" if k == "stride" else k): v for k, v in d.items()}
        d["schema_version"] = 2
    return d


@dataclass(frozen=True, kw_only=True)
class Manifest:
    """A bundle's manifest. Build it with :meth:`from_dict` (or the trainer's constructor call).

    ``files`` maps every bundle file (relative POSIX path) to its sha256; ``heads`` maps a
    head name to its file; ``metrics`` holds test-split scores such as
    ``"logreg_test_accuracy"``; ``versions`` the library versions at export.
    """

    schema_version: int = SCHEMA_VERSION
    created: str = ""
    classes: tuple
    class_map: dict = field(default_factory=dict)
    patch_size: int
    window: dict = field(default_factory=dict)
    net_stride: int = 16
    n_features: int
    normalization: Normalization
    onnx: OnnxGraph
    dense_onnx: DenseGraphs | None = None
    context: Context | None = None
    intensity: Intensity | None = None
    smoothing: Smoothing | None = None
    int8: Int8Graphs | None = None
    heads: dict
    default_head: str = "logreg"
    context_heads: dict | None = None  # head name -> ContextHeadSpec (its weights: the heads entry)
    versions: dict = field(default_factory=dict)
    training: Training | None = None
    metrics: dict = field(default_factory=dict)
    files: dict
    pixel_size_um: float | None = None  # of the training images; None: the paper's 1.17 um (Bundle.pixel_size_um)
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d, *, source="manifest"):
        """Check, migrate and type a parsed manifest; errors name ``source``."""
        version = d.get("schema_version") if isinstance(d, dict) else None
        if version not in READABLE_SCHEMAS:
            raise file_error(source, f"unknown bundle schema version {version!r}; this brainrt reads versions "
                                     f"{', '.join(map(str, READABLE_SCHEMAS))}")
        try:
            return cls._typed(_migrate(d))
        except BrainrtError as exc:
            raise file_error(source, str(exc)) from None
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise file_error(source, f"malformed manifest ({type(exc).__name__}: {exc})") from None

    @classmethod
    def _typed(cls, d):
        known, extra = split_fields(cls, d, "manifest")
        dense, training = known.get("dense_onnx"), known.get("training")
        parts = {k: t.from_dict(known[k]) for k, t in (("context", Context), ("intensity", Intensity),
                                                        ("smoothing", Smoothing), ("int8", Int8Graphs)) if known.get(k)}
        if known.get("context_heads"):
            parts["context_heads"] = {str(n): ContextHeadSpec.from_dict(v) for n, v in known["context_heads"].items()}
        return cls(**{**known, **parts, "classes": tuple(ClassSpec.from_dict(c) for c in known["classes"]),
                      "patch_size": int(known["patch_size"]), "n_features": int(known["n_features"]),
                      "normalization": Normalization.from_dict(known["normalization"]),
                      "onnx": OnnxGraph.from_dict(known["onnx"]),
                      "dense_onnx": DenseGraphs.from_dict(dense) if dense else None,
                      "training": Training.from_dict(training) if training else None}, extra=extra)

    @classmethod
    def from_json(cls, text, *, source="manifest"):
        """Parse ``manifest.json``'s text."""
        import json

        try:
            d = json.loads(text)
        except ValueError as exc:
            raise file_error(source, f"unreadable manifest ({exc})") from None
        return cls.from_dict(d, source=source)

    def to_dict(self):
        """The JSON object (schema :data:`SCHEMA_VERSION`); ``from_dict(to_dict())`` is the same Manifest."""
        return plain(self)

    def to_json(self):
        import json

        return json.dumps(self.to_dict(), indent=2) + "\n"

    # Derived views ---------------------------------------------------------------------
    @property
    def class_names(self) -> list:
        return [c.name for c in self.classes]

    @property
    def class_codes(self) -> list:
        """Mask code written for each class in label maps (the first of its codes)."""
        return [c.codes[0] for c in self.classes]

    @property
    def class_colors(self) -> list | None:
        """Colour of each class ("#rrggbb") where the class map records them (bundles fitted from strokes), else None."""
        colors = [c.extra.get("color") for c in self.classes]
        return colors if all(colors) else None

    @property
    def codes_per_class(self) -> list:
        """Every mask code of each class (a class may cover several codes)."""
        return [list(c.codes) for c in self.classes]

    @property
    def ignored_codes(self) -> list:
        """Mask codes the class map ignores (annotated, but in no class)."""
        return [int(c) for c in (self.class_map or {}).get("ignore", ())]

    @property
    def unlabeled_codes(self) -> list:
        """Mask codes of unlabeled pixels (0 unless the class map says otherwise)."""
        return [int(c) for c in (self.class_map or {}).get("unlabeled", (0,))]

    @property
    def known_codes(self) -> set:
        """Every mask code the class map names: its classes', and those it ignores or calls unlabeled."""
        return {c for cs in self.codes_per_class for c in cs} | set(self.ignored_codes) | set(self.unlabeled_codes)

    @property
    def dense_strides(self) -> tuple:
        return self.dense_onnx.strides if self.dense_onnx else ()

    @property
    def precisions(self) -> tuple:
        """Arithmetic the bundle's graphs come in: "fp32", and "int8" when it holds int8 copies."""
        return PRECISIONS if self.int8 else PRECISIONS[:1]

    @property
    def footprint(self) -> int:
        """Side of the pixels one position reads (the per-patch graph's input): the patch, or its context field."""
        return self.context.footprint if self.context else self.patch_size

    @property
    def model_id(self) -> str:
        """First 12 hex digits of the per-patch graph's sha256."""
        return self.files[self.onnx.file][:12]

    def test_accuracy(self, head):
        """Test-split accuracy recorded at export for ``head`` ("cnn" for the network), or None."""
        return self.metrics.get(f"{head}_test_accuracy")


def describe(m, folder):
    """What the manifest ``m`` of the bundle ``folder`` says, as the lines of ``brainrt info``."""
    lines = [f"bundle {folder} (model {m.model_id}, schema {m.schema_version}, created {m.created or '?'})",
             "classes (name, mask codes):", *[f"  {c.name:<14} {list(c.codes)}" for c in m.classes],
             f"  ignored codes {m.ignored_codes}, unlabeled {m.unlabeled_codes}; label maps "
             "write each class's first code, 255 off tissue",
             f"heads: {', '.join(f'{h} (default)' if h == m.default_head else h for h in m.heads)}",
             f"footprint {m.footprint} px (patch {m.patch_size}" + (f", context {m.context.factor}x" if m.context else "")
             + f"), net stride {m.net_stride}, dense strides {', '.join(map(str, m.dense_strides)) or 'none'}",
             f"precisions: {', '.join(m.precisions)}; intensity standardization: "
             f"{'recorded' if m.intensity else 'none'}; smoothing: "
             + (f"{m.smoothing.sigma_um:g} um" if m.smoothing else "none")]
    t = m.training
    if t is None:
        return lines + ["training: not recorded"]
    for ts in t.data:
        lines.append(f"training data: {ts.image} (sha256 {ts.image_sha256[:12]}...), mask {ts.mask} "
                     f"(sha256 {ts.mask_sha256[:12]}...), {ts.shape[0]} x {ts.shape[1]} px")
    if "gap" in t.split:
        lines.append(f"split: {t.split.get('mode', '?')}, layout {t.layout}, gap {t.gap} px, fractions "
                     f"{'/'.join(f'{f:g}' for f in t.fractions)}, seed {t.seed}; test patches {sum(t.taken('test').values())}")
    else:  # a final fit: no split
        lines.append(f"split: {t.split.get('mode', '?')}; seed {t.seed}")
    lines += [f"metrics ({m.metrics.get('source', 'test split')}): " + ", ".join(
        f"{k} {v:.3f}" for k, v in m.metrics.items() if isinstance(v, (int, float)))]
    return lines
