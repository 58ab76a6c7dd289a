"""Derived bundles: a parent bundle's graphs with heads fitted from strokes (:mod:`brainrt.fit`), and their class maps.

A derived bundle is an ordinary bundle folder. Its graphs are **copied** from the parent,
not referenced: the folder stays self-contained (it can be moved, shared or archived
without the parent, and a moved or deleted parent cannot break it), :meth:`Bundle.load`
verifies it with the same hashes as any bundle (no second code path that resolves files
elsewhere), and the copied per-patch graph keeps the parent's model id, so feature grids
computed with the parent (``brainrt featurize``) are accepted by the derived bundle. The
cost is the graphs' size (about 22 MB for the shipped bundle). The manifest records the
parent (path, model id, the sha256 of its manifest and of every file), the strokes (files
and sha256), the counts per class, the cross-validation and the library versions.

Heads: ``logreg`` (the default) and ``area_density`` are new; the parent's class-free
heads (``gmm`` clusters) are copied; heads tied to the parent's classes
(SVMs, the CNN's output layer) are left out. The parent's smoothing default and intensity
quantiles are kept (the features are the parent's).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import file_error
from ..heads import CLASS_FREE_HEADS, scikit
from ..io import atomic_path, check_target
from ..model.manifest import ClassSpec
from ..model.seal import MANIFEST, seal_bundle, sha256_file
from ..plots import area_colors, class_colors
from ..sources import open_volume

#: Parent files describing the parent's own heads, not copied.
PARENT_ONLY = ("metrics.json", "confusion.png")
LABELS = "stroke labels"


def _hex(rgb):
    return "#" + "".join(f"{int(round(255 * float(v))):02x}" for v in rgb[:3])


@dataclass(frozen=True)
class ClassTable:
    """Classes of a fit: ``names``, ``codes`` (tuple of mask codes per class, label maps write the first) and
    ``colors`` ("#rrggbb" per class); ``ignore`` / ``unlabeled`` codes as in a training class map.

    JSON (the class-map format of ``train-and-export``, plus optional colours)::

        {"classes": {"Ctx": [1], "TRN": [3]}, "colors": {"TRN": "#d62728"}, "unlabeled": [0]}
    """

    names: tuple
    codes: tuple
    colors: tuple
    ignore: tuple = ()
    unlabeled: tuple = (0,)

    @classmethod
    def resolve(cls, spec, bundle):
        """The parent's class map (``spec`` None), a dict, or a JSON file; colours default to the parent's."""
        if spec is None:
            m = bundle.manifest
            d = {"classes": dict(zip(m.class_names, m.codes_per_class)), "colors": _parent_colors(bundle)}
            return cls.from_dict(d, source=bundle.path, parent=bundle)
        if isinstance(spec, dict):
            return cls.from_dict(spec, source="class_map", parent=bundle)
        path = Path(spec)
        try:
            d = json.loads(path.read_text())
        except OSError:
            raise file_error(path, "no such class-map file") from None
        except ValueError as exc:
            raise file_error(path, f"not valid JSON ({exc})") from None
        return cls.from_dict(d, source=path, parent=bundle)

    @classmethod
    def from_dict(cls, d, *, source="class map", parent=None):
        try:
            names = tuple(str(k) for k in d["classes"])
            codes = tuple(tuple(int(c) for c in v) for v in d["classes"].values())
            given = {str(k): str(v) for k, v in d.get("colors", {}).items()}
            ignore, unlabeled = (tuple(int(c) for c in d.get(k, dflt)) for k, dflt in (("ignore", ()),
                                                                                         ("unlabeled", (0,))))
        except (KeyError, TypeError, ValueError, AttributeError):
            raise file_error(source, 'expected {"classes": {"name": [codes...]}, "colors": {"name": "#rrggbb"}}') \
                from None
        flat = [c for cs in codes for c in cs] + list(ignore) + list(unlabeled)
        if len(names) < 2 or not all(codes) or len(flat) != len(set(flat)) or min(flat, default=0) < 0:
            raise file_error(source, "needs at least 2 classes, each with its own non-negative codes")
        return cls(names, codes, _colors(names, given, parent, source), ignore, unlabeled)

    def class_index(self, strokes, *, source=LABELS):
        """Class index per pixel (-1: unlabeled or ignored); codes of no class are an error naming them."""
        strokes = np.asarray(strokes)
        if strokes.dtype.kind not in "iub":
            raise file_error(source, f"stroke labels must be integer codes, got pixel type {strokes.dtype}")
        small = strokes.dtype.kind == "u" and strokes.dtype.itemsize <= 2  # counting beats sorting 8 M pixels
        codes = np.flatnonzero(np.bincount(strokes.ravel())) if small else np.unique(strokes)
        lut = {c: -1 for c in self.unlabeled + self.ignore}
        lut.update({c: i for i, cs in enumerate(self.codes) for c in cs})
        unknown = [int(c) for c in codes if int(c) not in lut]
        if unknown:
            known = ", ".join(f"{n}={'/'.join(map(str, cs))}" for n, cs in zip(self.names, self.codes))
            raise file_error(source, f"holds codes {unknown} that are not in the class map ({known}); name new "
                                     "areas with a class-map JSON (--class-map)")
        table = np.full(int(codes.max()) + 1 if codes.size else 1, -1, np.int16)
        for c, i in lut.items():
            if c < table.size:
                table[c] = i
        return table[strokes if small else strokes.astype(np.int64)]

    def specs(self):
        """The manifest's classes (:class:`~brainrt.model.manifest.ClassSpec`, with their colours)."""
        return tuple(ClassSpec(n, cs, {"color": col}) for n, cs, col in zip(self.names, self.codes, self.colors))

    def to_dict(self):
        return {"classes": {n: list(cs) for n, cs in zip(self.names, self.codes)},
                "colors": dict(zip(self.names, self.colors)), "ignore": list(self.ignore),
                "unlabeled": list(self.unlabeled)}


def _parent_colors(bundle):
    """The parent's class colours: recorded ones, else the palette its maps are drawn with."""
    names = bundle.class_names
    recorded = bundle.manifest.class_colors
    return dict(zip(names, recorded or [_hex(c) for c in area_colors(names)]))


def _colors(names, given, parent, source):
    """Colour per class: given, else the parent's for a class of the same name, else the next free palette colour."""
    from matplotlib.colors import to_hex

    inherited = _parent_colors(parent) if parent is not None else {}
    try:
        chosen = {n: to_hex(given[n]) for n in names if n in given}
    except ValueError as exc:
        raise file_error(source, f"bad colour ({exc})") from None
    chosen.update({n: inherited[n] for n in names if n not in chosen and n in inherited})
    free = iter(c for c in (_hex(c) for c in class_colors(20 + len(names))) if c not in chosen.values())
    return tuple(chosen[n] if n in chosen else next(free) for n in names)


# --------------------------------------------------------------------------- reading the stroke pairs
def _read_labels(path):
    import tifffile

    path = Path(path)
    if not path.is_file():
        raise file_error(path, "no such file")
    try:
        with tifffile.TiffFile(path) as tif:
            labels, axes = np.asarray(tif.asarray()), tif.series[0].axes
    except Exception as exc:  # tifffile raises many types for broken files
        raise file_error(path, f"cannot read as TIFF ({type(exc).__name__})") from None
    if axes.endswith("S"):
        raise file_error(path, f"stroke labels are an RGB(A) image of shape {labels.shape}; save them as one code "
                               "per pixel (a single-channel integer image, 0 = unlabeled)")
    return labels


def read_pair(image, strokes):
    """(image, stroke labels, name) of each slice of a pair that is fitted: a 2D pair, or every z of a
    stack pair whose stroke slice holds a stroke. Images stay paths where they are 2D TIFFs."""
    name = str(strokes) if isinstance(strokes, (str, Path)) else LABELS
    labels = _read_labels(strokes) if isinstance(strokes, (str, Path)) else np.asarray(strokes)
    if labels.ndim == 2:
        return [(image, labels, name)]
    if labels.ndim != 3:
        raise file_error(name, f"expected 2D stroke labels or a 3D stack of them, got shape {labels.shape}")
    if isinstance(image, (str, Path)):
        src = open_volume(image)
        shape, read = tuple(src.shape), src.read
    else:
        arr = np.asarray(image)
        shape, read = arr.shape, arr.__getitem__
    if shape != labels.shape:
        raise file_error(name, f"stroke labels of shape {labels.shape} differ from the image's {shape}")
    zs = [z for z in range(labels.shape[0]) if labels[z].any()]
    if not zs:
        raise file_error(name, "holds no stroke (every pixel is 0, unlabeled)")
    return [(np.asarray(read(z)), labels[z], f"{name} z={z}") for z in zs]


def _digest(x):
    """sha256 of a file, or of an array's type, shape and bytes."""
    if isinstance(x, (str, Path)):
        return str(x), sha256_file(x)
    a = np.ascontiguousarray(x)
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
    return "array", h.hexdigest()


def stroke_record(image, strokes):
    """Manifest record of one image / strokes pair: names and sha256."""
    (iname, isha), (lname, lsha) = _digest(image), _digest(strokes)
    return {"image": iname, "image_sha256": isha, "labels": lname, "labels_sha256": lsha}


# --------------------------------------------------------------------------- writing the bundle
def versions():
    """Versions of the libraries that fitted the heads."""
    import importlib.metadata as md
    import platform

    out = {"python": platform.python_version()}
    for pkg in ("numpy", "scipy", "scikit-learn", "joblib", "onnxruntime", "onnxruntime-gpu", "brainrt"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def _copy_parent(parent, tmp):
    """Copy the parent's graphs and class-free heads; return the head files kept. Refuses changed files."""
    m = parent.manifest
    keep_heads = {h: rel for h, rel in m.heads.items() if h in CLASS_FREE_HEADS}
    for rel, digest in m.files.items():
        if rel in PARENT_ONLY or (rel.startswith("heads/") and rel not in keep_heads.values()):
            continue
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(parent.path / rel, tmp / rel)
        if sha256_file(tmp / rel) != digest:
            raise file_error(parent.path, f"bundle file {rel} changed since the bundle was loaded; refusing to copy it")
    return keep_heads


def _parent_record(parent):
    return {"path": str(Path(parent.path).resolve()), "model_id": parent.model_id,
            "manifest_sha256": sha256_file(Path(parent.path) / MANIFEST), "files": dict(parent.manifest.files)}


def save_bundle(fitted, parent, out):
    """Write ``fitted`` (:func:`brainrt.fit.fit_heads`) as a derived bundle of ``parent`` in the folder ``out``
    (atomically; verified before it is renamed into place). Returns the path."""
    out = Path(out)
    if out.resolve() == Path(parent.path).resolve():
        raise file_error(out, "is the parent bundle; refusing to overwrite it (choose another -o)")
    with atomic_path(out, is_dir=True) as tmp:
        heads = _copy_parent(parent, tmp)
        for name, head in fitted.heads.items():  # scikit-learn heads (:mod:`brainrt.heads.scikit`)
            heads[name] = scikit.save(head, tmp, name)
        cv = fitted.record["cv"]
        (tmp / "metrics.json").write_text(json.dumps({"cv": cv, "counts": fitted.record["counts"]}, indent=2) + "\n")
        m = parent.manifest
        manifest = dataclasses.replace(
            m, created=time.strftime("%Y-%m-%dT%H:%M:%S%z"), classes=fitted.table.specs(),
            class_map=fitted.table.to_dict(), heads=heads, default_head="logreg", context_heads=None, training=None,
            metrics={k: v for k, v in (("cv_balanced_accuracy", _best(cv, "balanced_accuracy")),
                                       ("cv_macro_f1", _best(cv, "macro_f1"))) if v is not None},
            versions=versions(), extra={**m.extra, "parent": _parent_record(parent), "fit": fitted.record})
        seal_bundle(tmp, manifest)
    return out


def _best(cv, key):
    scores = cv.get(key)
    return scores[str(cv["C"])] if scores else None


def check_fit_target(out, parent_path):
    """The one-line error for an output that cannot be written, before any work."""
    if Path(out).exists() and Path(out).resolve() == Path(parent_path).resolve():
        raise file_error(out, "is the parent bundle; refusing to overwrite it (choose another -o)")
    check_target(out, is_dir=True)


__all__ = ["ClassTable", "check_fit_target", "read_pair", "save_bundle", "stroke_record", "versions"]
