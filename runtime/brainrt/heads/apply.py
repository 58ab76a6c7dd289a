"""Applying heads to features: classifiers, GMM clusters, per-area densities, a band of rows at a time.

Whatever its kind (:mod:`brainrt.heads.kinds`), a loaded head is applied here. Features may be a
NumPy or a zarr array; heads see one band of rows at a time (:func:`apply_rows`), so memory stays
bounded whatever the grid size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import BrainrtError
from ..maps.uncertainty import margin_entropy
from .context import ContextHead, ContextStream, PassThrough, context_probabilities
from .kinds import CLASSIFIER_HEADS, NOT_CLASSIFIERS

#: Cells per head call: scikit-learn works in float64, so this bounds its copies (~32 MB).
HEAD_CHUNK = 65536
#: Label-map value of cells that were not featurized.
OFF_TISSUE = 255


@dataclass
class ClassMapResult:
    """Per-cell classes: ``labels`` (R, C) int16 class indices (-1 off tissue) and
    ``probabilities`` (R, C, K) float32 (None for heads without probabilities)."""

    labels: np.ndarray
    probabilities: object
    names: list
    codes: list
    grid: object
    head: str = ""
    smooth_um: float = 0.0
    #: the class map's own colours ("#rrggbb" per class), None where it records none (pictures then use the
    #: atlas's colours of the names, :func:`brainrt.plots.area_colors`)
    colors: object = None

    def cell_codes(self):
        """Label map at grid resolution in the class map's mask codes (uint8, OFF_TISSUE off tissue)."""
        return np.asarray(self.codes + [OFF_TISSUE], np.uint8)[self.labels]  # -1 indexes OFF_TISSUE

    def uncertainty(self):
        """(R, C, 2) float32 margin between the two likeliest areas and normalized entropy of the (smoothed)
        probabilities, NaN off tissue (:mod:`brainrt.maps.uncertainty`); None without probabilities (held)."""
        return None if self.probabilities is None else margin_entropy(self.probabilities, self.labels >= 0)


def chunk_rows(n_cols):
    """Rows of a grid ``n_cols`` wide in one head call of :func:`apply_rows` (about :data:`HEAD_CHUNK` cells).
    The calls' cells decide the float rounding of a head's matrix products, so callers that split a
    band keep to these chunks (the same bits)."""
    return max(1, HEAD_CHUNK // max(n_cols, 1))


def apply_rows(features, valid, fn, out):
    """``out[valid] = fn(features[valid])``, a band of rows at a time (bounded memory).

    ``features`` (r, C, F) may be a NumPy or zarr array; ``out`` (r, C, ...) is filled in
    place and returned.
    """
    for r0, r1, values in head_bands(features, valid, fn):
        if values is not None:
            out[r0:r1][valid[r0:r1]] = values
    return out


def head_bands(features, valid, fn):
    """``(r0, r1, fn(features[r0:r1][valid[r0:r1]]))`` for every band of :func:`chunk_rows` grid rows in
    order (None for a band without valid cells): a head over a saved grid, one call per band (the same
    float rounding wherever the bands go)."""
    step = chunk_rows(valid.shape[1])
    for r0 in range(0, valid.shape[0], step):
        v = valid[r0 : r0 + step]
        yield r0, r0 + len(v), fn(np.asarray(features[r0 : r0 + step])[v]) if v.any() else None


def per_class(model, fn, n_classes, fill):
    """``fn`` with one float32 column per class of the bundle.

    A head only has columns for the classes it saw in training (``model.classes_``); a
    class without training patches gets ``fill`` (probability 0, log-likelihood NaN).
    """
    seen = np.asarray(getattr(model, "classes_", np.arange(n_classes)), np.int64)

    def apply(f):
        out = np.asarray(fn(f), np.float32)
        if out.shape[1] == n_classes and np.array_equal(seen, np.arange(n_classes)):
            return out
        full = np.full((out.shape[0], n_classes), fill, np.float32)
        full[:, seen] = out
        return full

    return apply


def logistic_affine(model, *, binary=False):
    """(weight (k, F) float64, bias (k,), classes (k,)) of a multinomial logistic regression after any
    StandardScalers, the scalers folded into the weights (``softmax(x @ weight.T + bias)`` is its
    ``predict_proba``); with ``binary``, a two-class one too, as the logits ``(0, z)`` (their softmax is
    its sigmoid); None for other models."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    steps = [s for _, s in model.steps] if isinstance(model, Pipeline) else [model]
    lr, scalers = steps[-1], steps[:-1]
    if (not isinstance(lr, LogisticRegression) or len(lr.classes_) < 2 or (len(lr.classes_) == 2 and not binary)
            or not all(isinstance(s, StandardScaler) for s in scalers)):
        return None
    w, b = np.asarray(lr.coef_, np.float64), np.asarray(lr.intercept_, np.float64)
    for sc in reversed(scalers):  # ((x - mean) / scale) @ w.T + b == x @ (w / scale).T + (b - (w / scale) @ mean)
        w = w / (1.0 if sc.scale_ is None else sc.scale_)
        b = b - w @ (np.zeros(w.shape[1]) if sc.mean_ is None else sc.mean_)
    if len(lr.classes_) == 2:
        w, b = np.concatenate([np.zeros_like(w), w]), np.concatenate([np.zeros_like(b), b])
    return w, b, np.asarray(lr.classes_)


def float32_proba(model):
    """``predict_proba`` of a multinomial logistic regression (after any StandardScalers) as one float32
    affine map and a softmax, the scalers folded into the weights (:func:`logistic_affine`); None for other
    models.

    scikit-learn computes it in float64 on a float64 copy of the features: at stride 1 a slice has
    millions of cells, and float32 gives the same probabilities to about 1e-6 (tests check it).
    """
    affine = logistic_affine(model)
    if affine is None:
        return None
    w, b = affine[0].T.astype(np.float32), affine[1].astype(np.float32)

    def proba(x):
        z = np.asarray(x, np.float32) @ w
        z += b
        z -= z.max(axis=1, keepdims=True)
        np.exp(z, out=z)
        z /= z.sum(axis=1, keepdims=True)
        return z

    return proba


@dataclass(frozen=True)
class Classifier:
    """A classifier head as a per-row function ``fn`` and the empty grid it fills:
    probabilities (R, C, K) or, for heads without them, labels (R, C). A context head
    (:mod:`brainrt.heads.context`): ``fn`` gives its per-cell terms, which :meth:`stream` pools
    into probabilities."""

    fn: object
    n_classes: int
    proba: bool
    name: str = ""
    context: object = None

    @classmethod
    def of(cls, bundle, head=None):
        """The bundle's head ``head`` (default: the manifest's), checked to be a classifier."""
        head = head or bundle.manifest.default_head
        model = bundle.head(head)
        K = len(bundle.class_names)
        if isinstance(model, ContextHead):
            return cls(model.terms, K, True, head, model)
        if not hasattr(model, "predict") or head in NOT_CLASSIFIERS:
            raise BrainrtError(f"head {head!r} is not a classifier; use one of {', '.join(CLASSIFIER_HEADS)}")
        if hasattr(model, "predict_proba"):
            return cls(per_class(model, float32_proba(model) or model.predict_proba, K, 0.0), K, True, head)
        return cls(model.predict, K, False, head)

    def empty(self, shape, *, terms=False):
        """The grid ``fn`` fills (``terms``: a context head's terms, else its probabilities)."""
        if self.proba:
            n = self.context.n_terms if terms and self.context is not None else self.n_classes
            return np.zeros(tuple(shape) + (n,), np.float32)
        return np.full(tuple(shape), -1, np.int16)

    def stream(self, pixel_size_um, stride):
        """Rows of ``fn``'s output in, rows of the map's values out: a :class:`~brainrt.heads.context.ContextStream`
        for a context head (sigmas in cells of this grid), else a pass-through."""
        if self.context is None:
            return PassThrough()
        return ContextStream(self.context, self.context.sigmas_cells(pixel_size_um, stride))

    def apply(self, features, valid, *, pixel_size_um, stride):
        """The whole grid's map values (R, C, K) or labels (R, C): ``fn`` a band at a time, then :meth:`stream`."""
        out = apply_rows(features, valid, self.fn, self.empty(valid.shape, terms=True))
        if self.context is None:
            return out
        return context_probabilities(self.context, out, valid, self.context.sigmas_cells(pixel_size_um, stride))

    def result(self, out, grid, bundle, smooth_um=0.0):
        """:class:`ClassMapResult` of a filled output grid (smoothed by ``smooth_um``)."""
        if self.proba:
            labels = np.where(grid.valid, out.argmax(-1), -1).astype(np.int16)
            return ClassMapResult(labels, out, bundle.class_names, bundle.class_codes, grid, self.name, smooth_um,
                                  bundle.manifest.class_colors)
        return ClassMapResult(out, None, bundle.class_names, bundle.class_codes, grid, self.name, smooth_um,
                              bundle.manifest.class_colors)


def gmm_clusters(features, valid, bundle):
    """GMM component per cell (R, C) int16, -1 off tissue."""
    return apply_rows(features, valid, bundle.head("gmm").predict, np.full(valid.shape, -1, np.int16))


def area_loglik(features, valid, bundle):
    """``log p(features | area)`` per cell and area (R, C, K) float32, NaN off tissue."""
    dens = bundle.head("area_density")
    K = len(bundle.class_names)
    return apply_rows(features, valid, per_class(dens, dens.score_samples, K, np.nan),
                      np.full(valid.shape + (K,), np.nan, np.float32))
