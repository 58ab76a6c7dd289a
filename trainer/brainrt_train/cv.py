"""Spatial K-fold cross-validation: the one way every choice (heads, regularization, smoothing, networks) is made.

Folds. The labeled tissue is cut into blocks: ``K`` row bands over the labeled rows, crossed
with columns about ``aspect`` band heights wide. Block ``(band b, column c)`` belongs to fold
``(b + 2 c) mod K`` (a Latin layout): two blocks of one fold never touch, every column holds
every fold, so any class at least one column wide and ``K - 2`` bands high is held out in at
least three folds, and a held-out block has training tissue of its own class beside it (the
areas of a slab run along x). A fold's **held-out** pixels are the labeled pixels of its blocks;
its **training** pixels are the labeled pixels of the other folds farther than ``gap_px``
(Chebyshev: square dilation) from every held-out pixel, so no training patch centre lies within
half a patch of a held-out pixel. :func:`spatial_folds` refuses a layout that holds a class
out in fewer than ``min_folds`` folds.

Cells. Heads are fitted on the cells of a stride-``s`` feature grid (``brainrt featurize``): a
cell is a training sample of fold ``f`` when its centre pixel is a training pixel of ``f``;
maps are scored on the held-out **pixels** (pixel ``(y, x)`` takes cell ``(y // s, x // s)``,
as :func:`brainrt.geometry.upsample` does), computed exactly from per-cell class counts of
held-out pixels (:class:`CellFolds`), so that scoring a map costs one small matrix product.

Guards (:func:`guards`): anatomical checks of a whole-slice map along slice309's slab
(hypothalamus -> thalamus -> striatum -> callosum -> cortex along x). They read image columns
to *check* a map; nothing that makes a map may see them.

Rules, enforced here where code can: choices by the cross-validation **mean** (of macro F1 of
the regularized map, so that a thin area lost costs a sixth); a numeric grid is widened until the
chosen value is interior (:func:`choose_interior`); a per-class bias is kept only where it raises
that class's F1 in at least ``K - 1`` folds and lowers no other class's mean F1 by more than
0.02 (:func:`bias_allowed`); a recipe's reported figures come from a nested cross-validation
(:func:`nested`: its choices made inside each outer fold's training part).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

#: A class must be held out in at least this many folds.
MIN_FOLDS = 3
#: Half of the 128 px patch.
GAP_PX = 64
#: A bias may lower another class's mean F1 by at most this.
BIAS_TOLERANCE = 0.02


@dataclass(frozen=True)
class Folds:
    """``fold_map`` (H, W) int8: the fold of each labeled pixel, -1 where unlabeled; the block layout."""

    fold_map: np.ndarray
    k: int
    gap_px: int
    band_px: int
    col_px: int
    origin: tuple

    def held_out(self, f):
        """(H, W) bool: fold ``f``'s held-out pixels."""
        return self.fold_map == f

    def train(self, f):
        """(H, W) bool: labeled pixels of the other folds farther than the gap from fold ``f``'s held-out pixels."""
        from brainrt.split import window_sum

        held = self.held_out(f)
        near = window_sum(held, self.gap_px, self.gap_px) > 0
        keep = (self.fold_map >= 0) & ~held & ~near
        return keep

    def record(self):
        """What a refit needs to rebuild these folds (the manifest's and the report's record)."""
        return {"k": self.k, "gap_px": self.gap_px, "band_px": self.band_px, "col_px": self.col_px,
                "origin": list(self.origin), "layout": "fold = (row band + 2 column) mod k over the labeled extent"}


def spatial_folds(labels, *, k=5, gap_px=GAP_PX, aspect=2.5, min_folds=MIN_FOLDS, n_classes=None):
    """:class:`Folds` of a class-index map ``labels`` (H, W; -1 unlabeled): ``k`` row bands over the labeled
    rows, columns ``aspect`` bands wide; raises ``ValueError`` when a class is held out in fewer than
    ``min_folds`` folds."""
    if k < 3:
        raise ValueError(f"k = {k}: spatial cross-validation needs at least 3 folds")
    lab = labels >= 0
    rows, cols = np.flatnonzero(lab.any(1)), np.flatnonzero(lab.any(0))
    if rows.size == 0:
        raise ValueError("no labeled pixels")
    y0, x0 = int(rows[0]), int(cols[0])
    band = max(1, math.ceil((rows[-1] + 1 - y0) / k))
    col = max(1, int(round(aspect * band)))
    b = np.clip((np.arange(labels.shape[0]) - y0) // band, 0, k - 1)
    c = np.maximum((np.arange(labels.shape[1]) - x0) // col, 0)
    fold = ((b[:, None] + 2 * c[None, :]) % k).astype(np.int8)
    fold[~lab] = -1
    folds = Folds(fold, k, gap_px, band, col, (y0, x0))
    held = present(held_out_counts(folds, labels, n_classes))
    short = {i: int(held[:, i].sum()) for i in range(held.shape[1]) if held[:, i].sum() < min_folds}
    if short:
        raise ValueError(f"classes {sorted(short)} are held out in only {sorted(short.values())} folds "
                         f"(at least {min_folds}); use more folds or narrower columns")
    return folds


#: A fold holds a class out when it holds at least this share of the class's labeled pixels (slivers do not count).
MIN_SHARE = 0.02


def present(counts, min_share=MIN_SHARE):
    """(k, K) bool: fold f holds class c out (at least ``min_share`` of the class's pixels) from (k, K) counts."""
    total = counts.sum(0, keepdims=True)
    return (counts > 0) & (counts >= min_share * np.maximum(total, 1))


def held_out_counts(folds, labels, n_classes=None):
    """(k, K) labeled pixels of each class held out by each fold."""
    K = int(n_classes or labels.max() + 1)
    on = folds.fold_map >= 0
    idx = folds.fold_map[on].astype(np.int64) * K + labels[on]
    return np.bincount(idx, minlength=folds.k * K).reshape(folds.k, K)


@dataclass
class CellFolds:
    """The folds on a stride-``stride`` grid of shape ``shape``: ``y`` (R, C) class of each cell's centre pixel
    (-1 none); ``counts[f]`` (R, C, K) the held-out pixels of each class of fold ``f`` in each cell's
    stride x stride block; ``train[f]`` (R, C) bool: cells whose centre is a training pixel of fold ``f``."""

    folds: Folds
    stride: int
    y: np.ndarray
    counts: np.ndarray
    train: np.ndarray
    #: (k, K) bool: the classes each fold holds out (:func:`present`)
    held: np.ndarray = None

    @property
    def k(self):
        return self.folds.k

    def inner_train(self, outer, inner):
        """Training cells of inner fold ``inner`` inside outer fold ``outer``'s training part: training cells of
        both (beyond the gap of either held-out part)."""
        return self.train[outer] & self.train[inner]


def at_centres(image, stride, grid_shape):
    """``image`` (H, W) read at every cell's centre pixel of the stride-``stride`` grid of shape ``grid_shape``."""
    from brainrt.geometry import cell_centre

    R, C = grid_shape
    ys = np.minimum(cell_centre(np.arange(R), stride), image.shape[0] - 1)
    xs = np.minimum(cell_centre(np.arange(C), stride), image.shape[1] - 1)
    return image[np.ix_(ys, xs)]


def cell_folds(folds, labels, stride, grid_shape, n_classes):
    """:class:`CellFolds` of ``folds`` on the stride-``stride`` grid of shape ``grid_shape`` (R, C)."""
    R, C = grid_shape
    H, W = labels.shape
    y = at_centres(labels, stride, grid_shape).astype(np.int64)
    cell = (np.arange(H)[:, None] // stride).clip(max=R - 1) * C + (np.arange(W)[None, :] // stride).clip(max=C - 1)
    cell_ok = (np.arange(H)[:, None] // stride < R) & (np.arange(W)[None, :] // stride < C)
    counts = np.zeros((folds.k, R, C, n_classes), np.int32)
    for f in range(folds.k):
        m = folds.held_out(f) & cell_ok & (labels >= 0)
        idx = cell[m].astype(np.int64) * n_classes + labels[m]
        counts[f] = np.bincount(idx, minlength=R * C * n_classes).reshape(R, C, n_classes)
    train = np.stack([at_centres(folds.train(f), stride, grid_shape) & (y >= 0) for f in range(folds.k)])
    return CellFolds(folds, stride, y, counts, train, present(counts.sum((1, 2))))


def confusion(pred, counts):
    """(K, K) confusion of held-out pixels (rows: truth) of a grid map ``pred`` (R, C; -1 off tissue, counted
    wrong): exactly the pixel confusion of the upsampled map."""
    K = counts.shape[-1]
    p = pred.reshape(-1)
    on = p >= 0
    out = np.zeros((K, K), np.int64)
    np.add.at(out.T, p[on], counts.reshape(-1, K)[on])
    missed = counts.reshape(-1, K)[~on].sum(0)
    return out, missed


def scores_of(conf, missed, names, held=None):
    """Pixel accuracy, macro F1 and per-class F1 / recall / precision; per-class F1 and macro F1 count only the
    classes the fold holds out (``held`` (K,) bool, default: any support), see :func:`present`."""
    tp = np.diag(conf).astype(float)
    support = conf.sum(1) + missed
    called = conf.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        rec = np.where(support > 0, tp / support, 0.0)
        prec = np.where(called > 0, tp / called, 0.0)
        f1 = np.where(rec + prec > 0, 2 * rec * prec / (rec + prec), 0.0)
    total = support.sum()
    held = support > 0 if held is None else np.asarray(held, bool) & (support > 0)
    return {"pixel_accuracy": float(tp.sum() / total) if total else float("nan"),
            "macro_f1": float(f1[held].mean()) if held.any() else float("nan"),
            "f1": {n: float(f1[i]) if held[i] else float("nan") for i, n in enumerate(names)},
            "recall": {n: float(rec[i]) for i, n in enumerate(names)},
            "support": {n: int(support[i]) for i, n in enumerate(names)}}


def map_cells(prob, valid, sigma_cells=0.0, space="log"):
    """Grid class-index map (-1 off tissue) of probabilities, smoothed as the runtime smooths them."""
    from brainrt.maps.smooth import smooth_probabilities

    if sigma_cells > 0:
        prob = smooth_probabilities(prob, valid, sigma_cells, space=space)
    return np.where(valid, prob.argmax(-1), -1)


# --- anatomical guards (slice309's slab; checks of a map, never inputs) ---

#: name -> (x range, classes called, target (op, value)); x in slice309's pixels.
GUARDS = {
    "cortex_right_of_callosum": ((4450, None), ("Ctx",), (">=", 0.95)),
    "hypoth_in_middle": ((1300, 4450), ("HypoTh",), ("<=", 0.02)),
    "ctx_str_at_hypothalamic_end": ((0, 905), ("Ctx", "Str"), ("<=", 0.10)),
    "ctx_str_left_of_2800": ((0, 2800), ("Ctx", "Str"), ("<=", 0.05)),
    "wm_1000_4450": ((1000, 4450), ("WM",), ("~", 0.08)),
}


def _column_weights(x0, x1, stride, n_cols, width):
    """Pixels of each grid column (cell j covers x in [j s, j s + s)) that lie in ``[x0, x1)`` of the image."""
    x1 = width if x1 is None else min(x1, width)
    lo = np.arange(n_cols) * stride
    return np.clip(np.minimum(lo + stride, x1) - np.maximum(lo, x0), 0, None).astype(float)


def guards(pred, stride, names, image_shape, labels=None):
    """Shares of the tissue (cells of the map, weighted by their pixels in range) in each guard's x range called
    its classes; ``wm_1000_4450`` also gives the annotation's WM share there (``labels``) and passes within
    0.08 of it. Returns ``{name: {"share", "target", "ok", ...}}``."""
    H, W = image_shape
    R, C = pred.shape
    rows = np.clip(np.minimum((np.arange(R) + 1) * stride, H) - np.arange(R) * stride, 0, None).astype(float)
    out = {}
    for name, ((x0, x1), classes, (op, value)) in GUARDS.items():
        if not all(c in names for c in classes):
            continue
        wts = rows[:, None] * _column_weights(x0, x1, stride, C, W)[None, :]
        tissue = wts * (pred >= 0)
        hit = np.isin(pred, [names.index(c) for c in classes])
        share = float((tissue * hit).sum() / tissue.sum()) if tissue.sum() else float("nan")
        g = {"x": [x0, x1], "classes": list(classes), "share": share, "target": f"{op} {value}"}
        if op == "~":
            lab = labels[:, x0 : (W if x1 is None else x1)] if labels is not None else None
            ref = float(np.isin(lab[lab >= 0], [names.index(c) for c in classes]).mean()) if lab is not None else float("nan")
            g.update(annotation=ref, ok=bool(abs(share - ref) <= value))
        else:
            g["ok"] = bool(share >= value if op == ">=" else share <= value)
        out[name] = g
    return out


# --- the runner ---


@dataclass
class Grid:
    """A slice's stride-``stride`` feature grid and its annotation: what every recipe is fitted and scored on."""

    features: np.ndarray
    valid: np.ndarray
    labels: np.ndarray
    names: list
    stride: int
    pixel_size_um: float = 1.17
    #: (R, C) class of each valid cell's centre pixel, -1 none
    y_cells: np.ndarray = None
    #: features (R, C, F) of the same slice re-imaged (:func:`brainrt_train.evaluate.random_rendering`): a head
    #: is fitted on their training cells too (:func:`training_rows`); scores and maps use ``features`` alone
    renderings: tuple = ()

    def sigma_cells(self, sigma_um):
        return sigma_um / (self.pixel_size_um * self.stride)


@dataclass(frozen=True)
class Recipe:
    """A head and a map regularizer. ``head``: ``(kind, params)`` for :func:`fit_head`; ``smooth``: sigma in um
    and space (Gaussian on log-probabilities or probabilities, :mod:`brainrt.maps.smooth`); ``bias``: log-probability
    added per class name (allowed only by :func:`bias_allowed`)."""

    head: tuple
    sigma_um: float = 0.0
    space: str = "log"
    bias: tuple = ()

    def label(self):
        kind, params = self.head
        p = ", ".join(f"{k}={v}" for k, v in params)
        b = f" bias {dict(self.bias)}" if self.bias else ""
        return f"{kind}({p}) + {self.sigma_um:g} um {self.space}{b}"

    def to_dict(self):
        return {"head": self.head[0], **dict(self.head[1]), "sigma_um": self.sigma_um, "space": self.space,
                "bias": dict(self.bias)}


def _grid_probabilities(grid, model):
    """Probabilities (R, C, K) of a scikit-learn-like head on every valid cell, as the runtime computes them."""
    from brainrt.heads import apply_rows, float32_proba, per_class

    K = len(grid.names)
    fn = per_class(model, float32_proba(model) or model.predict_proba, K, 0.0)
    return apply_rows(grid.features, grid.valid, fn, np.zeros(grid.valid.shape + (K,), np.float32))


def training_rows(inputs, y_cells, train):
    """``(X, y, weights)`` a head is fitted on: ``inputs[0]`` (R, C, D: the slice's own) at the cells ``train``,
    and each further input (the same slice re-imaged) at the same cells. The slice's own rows weigh 1 alone, or
    half of the total with re-imagings (each of the N re-imagings 1 / 2N): the total weight stays the number of
    training cells, so a head's regularization C means the same with and without them."""
    own, others = inputs[0][train], [x[train] for x in inputs[1:]]
    n = len(others)
    w = np.concatenate([np.full(len(own), 0.5 if n else 1.0)] + [np.full(len(own), 0.5 / max(n, 1))] * n)
    return np.concatenate([own, *others]), np.tile(y_cells[train], n + 1), w


def probabilities(grid, model):
    """Probabilities (R, C, K) of a fitted head (:func:`fit_head`'s model) on ``grid``'s features, every valid cell."""
    from brainrt.heads.context import ContextHead

    if isinstance(model, ContextHead):
        from brainrt_train.ctxhead import head_probabilities

        return head_probabilities(model, grid.features, grid.valid, pixel_size_um=grid.pixel_size_um,
                                  stride=grid.stride)
    return _grid_probabilities(grid, model)


def _fit_logreg(grid, train, params, seed):
    from brainrt_train.ctxhead import fit_pipeline
    from threadpoolctl import threadpool_limits

    X, y, w = training_rows((grid.features, *grid.renderings), grid.y_cells, train)
    with threadpool_limits(1):
        model = fit_pipeline(X, y, C=params["C"], seed=seed, balanced=params.get("balanced", True),
                             sample_weight=None if not grid.renderings else w)
    return model, _grid_probabilities(grid, model)


def _fit_ctx(grid, train, params, seed):
    from brainrt_train.ctxhead import CANDIDATES, fit_pipeline, fold, head_probabilities, pooled_inputs, scales_of

    scales = scales_of(CANDIDATES[params["scales"]])
    stage1 = None
    if any(s.source == "probabilities" for s in scales):
        stage1, _ = _fit_logreg(grid, train, {"C": params["C"], "balanced": True}, seed)
    K = len(grid.names)
    inputs = [pooled_inputs(f, grid.valid, scales, stage1, pixel_size_um=grid.pixel_size_um, stride=grid.stride,
                            n_classes=K) for f in (grid.features, *grid.renderings)]
    X, y, w = training_rows(inputs, grid.y_cells, train)
    head = fold(fit_pipeline(X, y, C=params["C"], seed=seed, sample_weight=None if not grid.renderings else w), scales, n_features=grid.features.shape[-1],
                n_classes=K, stage1=stage1)
    return head, head_probabilities(head, grid.features, grid.valid, pixel_size_um=grid.pixel_size_um,
                                    stride=grid.stride)


def _fit_rbfsvm(grid, train, params, seed):
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    model = make_pipeline(StandardScaler(), SVC(C=params["C"], gamma="scale", probability=True,
                                                class_weight="balanced", random_state=seed))
    model.fit(grid.features[train], grid.y_cells[train])
    return model, _grid_probabilities(grid, model)


#: Head kinds the runner fits: kind -> fit(grid, train cells, params, seed) -> (model, probabilities).
HEAD_KINDS = {"logreg": _fit_logreg, "ctx": _fit_ctx, "rbfsvm": _fit_rbfsvm}


def fit_head(grid, train, head, seed=0):
    """Fit the head ``(kind, params)`` on the cells ``train`` (R, C bool; cells without a class or off tissue are
    skipped) of ``grid``; returns ``(model, probabilities (R, C, K) of every valid cell)``."""
    kind, params = head
    if kind not in HEAD_KINDS:
        raise ValueError(f"unknown head kind {kind!r}")
    return HEAD_KINDS[kind](grid, train & grid.valid & (grid.y_cells >= 0), dict(params), seed)


def with_bias(prob, names, bias):
    """Probabilities with each class's log-probability raised by its bias (renormalized)."""
    if not bias:
        return prob
    logp = np.log(np.clip(prob, 1e-12, None))
    for name, b in bias:
        logp[..., names.index(name)] += b
    logp -= logp.max(-1, keepdims=True)
    p = np.exp(logp)
    return (p / p.sum(-1, keepdims=True)).astype(np.float32)


def score_fold(grid, cf, f, prob, sigma_um, space, *, with_guards=True):
    """Scores of fold ``f``'s held-out pixels for the raw and the regularized map, and the guards of the latter."""
    out = {}
    for kind, sig in (("raw", 0.0), ("smoothed", sigma_um)):
        pred = map_cells(prob, grid.valid, grid.sigma_cells(sig), space)
        out[kind] = scores_of(*confusion(pred, cf.counts[f]), grid.names, cf.held[f])
        if kind == "smoothed" and with_guards:
            out["guards"] = guards(pred, grid.stride, grid.names, grid.labels.shape, grid.labels)
    return out


def summarize(per_fold, names):
    """Mean and spread over folds of every score, per class F1 and guard share."""

    def ms(values):
        a = np.asarray(values, float)
        return {"mean": float(np.nanmean(a)), "sd": float(np.nanstd(a)), "folds": [float(v) for v in a]}

    out = {}
    for kind in ("raw", "smoothed"):
        out[kind] = {"pixel_accuracy": ms([r[kind]["pixel_accuracy"] for r in per_fold]),
                     "macro_f1": ms([r[kind]["macro_f1"] for r in per_fold]),
                     "f1": {n: ms([r[kind]["f1"][n] for r in per_fold])
                            for n in names}}
    if per_fold and "guards" in per_fold[0]:
        out["guards"] = {g: {**{k: v for k, v in per_fold[0]["guards"][g].items() if k not in ("share", "ok")},
                             "share": ms([r["guards"][g]["share"] for r in per_fold]),
                             "ok_folds": int(sum(r["guards"][g]["ok"] for r in per_fold))}
                         for g in per_fold[0]["guards"]}
    return out


def evaluate_heads(grid, cf, heads, sigmas, spaces=("log",), *, seed=0, folds=None, train_of=None, features_of=None,
                   log=None, jobs=1):
    """Every head x regularizer over ``folds`` (default: all): ``{Recipe: summary}`` and the per-fold results.

    A head is fitted once per fold; its probabilities are regularized with every sigma / space. ``train_of(f)``
    gives fold ``f``'s training cells (default ``cf.train[f]``). ``features_of(f)``: fold ``f``'s own features
    (R, C, F) in place of ``grid.features``, e.g. those of a network trained on that fold's training pixels
    only, so that no held-out cell's features come from a network that saw its label; it may also give
    ``(features, renderings)``, the fold network's features of the slice re-imaged (:attr:`Grid.renderings`)."""
    folds = list(range(cf.k)) if folds is None else list(folds)
    if jobs > 1:
        from functools import partial

        parts = parallel_map(partial(evaluate_heads, seed=seed, features_of=features_of),
                             [(grid, cf, [h], sigmas, spaces) for h in heads], jobs)
        return {r: s for p in parts for r, s in p[0].items()}, {r: v for p in parts for r, v in p[1].items()}
    train_of = train_of or (lambda f: cf.train[f])
    per = {}
    for head in heads:
        for f in folds:
            g = grid if features_of is None else with_features(grid, features_of(f))
            _, prob = fit_head(g, train_of(f), head, seed)
            for space in spaces:
                for s in sigmas:
                    if s == 0 and space != spaces[0]:
                        continue
                    per.setdefault(Recipe(head, float(s), space), []).append(score_fold(g, cf, f, prob, s, space))
        if log:
            best = max((r for r in per if r.head == head), key=lambda r: np.mean([x["smoothed"]["macro_f1"] for x in per[r]]))
            log(f"{best.label()}: mean macro F1 {np.mean([x['smoothed']['macro_f1'] for x in per[best]]):.3f}")
    return {r: summarize(v, grid.names) for r, v in per.items()}, per


def with_features(grid, got):
    """``grid`` with the features (and renderings) ``got``: an array, or ``(features, renderings)``."""
    feats, rend = got if isinstance(got, tuple) else (got, grid.renderings)
    return dataclasses.replace(grid, features=feats, renderings=tuple(rend))


def criterion(summary):
    """The choice criterion: the cross-validation mean macro F1 of the regularized map."""
    return summary["smoothed"]["macro_f1"]["mean"]


def choose(results, tie=0.0):
    """The recipe with the best :func:`criterion`; within ``tie`` of it, the simplest (smallest sigma, then the
    strongest regularization, then the first listed)."""
    best = max(criterion(s) for s in results.values())
    tied = [r for r, s in results.items() if criterion(s) >= best - tie]
    return min(tied, key=lambda r: (r.sigma_um, dict(r.head[1]).get("C", 0.0)))


def grid_values(results, key):
    """Sorted distinct values of a numeric head parameter (or ``sigma_um``) in ``results``."""
    if key == "sigma_um":
        return sorted({r.sigma_um for r in results})
    return sorted({dict(r.head[1])[key] for r in results if key in dict(r.head[1])})


def at_edge(results, chosen, key, lower_bound=None):
    """``"low"`` / ``"high"`` when the chosen value of ``key`` is at that end of its grid (a natural
    ``lower_bound`` such as sigma 0 is interior enough: it cannot go lower), else None."""
    same = {r: None for r in results if r.head[0] == chosen.head[0]
            and {k: v for k, v in r.head[1] if k != key} == {k: v for k, v in chosen.head[1] if k != key}}
    values = grid_values(same, key)
    v = chosen.sigma_um if key == "sigma_um" else dict(chosen.head[1]).get(key)
    if v is None:
        return None
    if len(values) < 2:  # one value is no grid: try both sides
        return "single" if key != "sigma_um" else ("high" if v != lower_bound else None)
    if v == values[0] and v != lower_bound:
        return "low"
    if v == values[-1]:
        return "high"
    return None


def choose_interior(evaluate, heads, sigmas, *, c_factor=10.0, max_rounds=4, log=None):
    """Evaluate ``heads`` x ``sigmas`` with ``evaluate(heads, sigmas) -> results``, then widen C (x/÷ ``c_factor``)
    and sigma (x2) while the choice sits at an edge; returns ``(chosen, results, widened)``."""
    results = evaluate(heads, sigmas)
    widened = []
    for _ in range(max_rounds):
        chosen = choose(results)
        new_heads, new_sigmas = [], []
        edge = at_edge(results, chosen, "C")
        if edge:
            kind, params = chosen.head
            for side in (("low", "high") if edge == "single" else (edge,)):
                p = dict(params)
                p["C"] = float(f"{p['C'] / c_factor if side == 'low' else p['C'] * c_factor:.6g}")
                new_heads.append((kind, tuple(p.items())))
                widened.append(f"C {side}: {p['C']:g} ({kind})")
        if at_edge(results, chosen, "sigma_um", lower_bound=0.0) == "high":
            new_sigmas.append(chosen.sigma_um * 2)
            widened.append(f"sigma high: {chosen.sigma_um * 2:g} um")
        if not new_heads and not new_sigmas:
            return chosen, results, widened
        if log:
            log(f"widening: {widened[-len(new_heads) - len(new_sigmas):]}")
        more = evaluate(new_heads or [chosen.head], sorted(set(sigmas) | set(new_sigmas)) if new_sigmas else sigmas)
        results.update({r: s for r, s in more.items() if r not in results})
        heads, sigmas = heads + new_heads, sorted(set(sigmas) | set(new_sigmas))
        if new_sigmas:
            # the other heads at the new sigmas, so every head sees the same regularizer grid
            results.update(evaluate([h for h in heads if h not in new_heads and h != chosen.head], new_sigmas))
    return choose(results), results, widened


def bias_allowed(base, biased, cls, k, tolerance=BIAS_TOLERANCE):
    """Whether a bias of class ``cls`` may be kept: per-fold results ``base`` / ``biased`` (lists of fold dicts):
    its F1 rises in at least ``k - 1`` folds and no other class's mean F1 falls by more than ``tolerance``."""
    pairs = [(a["smoothed"]["f1"][cls], b["smoothed"]["f1"][cls]) for a, b in zip(base, biased)]
    pairs = [(a, b) for a, b in pairs if not (np.isnan(a) or np.isnan(b))]
    ups, n = sum(b > a for a, b in pairs), len(pairs)
    if ups < k - 1:  # the rule counts all k folds: a class held out in fewer than k - 1 folds never gets a bias
        return False, f"{cls} F1 rises in {ups} of {k} folds ({n} hold it out)"
    for name in base[0]["smoothed"]["f1"]:
        if name == cls:
            continue
        drop = np.nanmean([a["smoothed"]["f1"][name] for a in base]) - np.nanmean([b["smoothed"]["f1"][name] for b in biased])
        if drop > tolerance:
            return False, f"{name} mean F1 falls by {drop:.3f}"
    return True, f"{cls} F1 rises in {ups} of {n} folds, no other class falls by more than {tolerance}"


def nested_fold(grid, cf, outer, heads, sigmas, spaces=("log",), seed=0):
    """One outer fold of :func:`nested`: ``(scores of the outer held-out pixels, the recipe chosen inside)``."""
    inner = [g for g in range(cf.k) if g != outer]

    def evaluate(hs, ss):
        return evaluate_heads(grid, cf, hs, ss, spaces, seed=seed, folds=inner,
                              train_of=lambda g: cf.inner_train(outer, g))[0]

    recipe, _, _ = choose_interior(evaluate, list(heads), list(sigmas))
    _, prob = fit_head(grid, cf.train[outer], recipe.head, seed)
    return score_fold(grid, cf, outer, with_bias(prob, grid.names, recipe.bias), recipe.sigma_um, recipe.space), recipe


def _own_group():
    """A worker process in its own session: the scheduler shares the CPU per session, not per process."""
    import os

    try:
        os.setsid()
    except OSError:
        pass


def parallel_map(fn, items, jobs=1):
    """``[fn(*item) for item in items]``, in ``jobs`` processes when ``jobs > 1`` (results in order)."""
    if jobs <= 1:
        return [fn(*item) for item in items]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # spawn: a fork after OpenMP (scikit-learn, numba) has started its threads aborts the child
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, initializer=_own_group, mp_context=ctx) as ex:
        return list(ex.map(fn, *zip(*items)))


def nested(grid, cf, heads, sigmas, spaces=("log",), *, seed=0, log=None, jobs=1):
    """Nested cross-validation: for each outer fold, the recipe chosen by the cross-validation over the other
    folds inside its training part (:func:`choose_interior`), fitted on the outer training cells and scored on
    the outer held-out pixels. Returns ``(summary, per-fold results, chosen recipe per fold)``; outer folds in
    ``jobs`` processes."""
    items = [(grid, cf, outer, tuple(heads), tuple(sigmas), tuple(spaces), seed) for outer in range(cf.k)]
    done = parallel_map(nested_fold, items, jobs)
    per, chosen = [d[0] for d in done], [d[1] for d in done]
    if log:
        for outer, (r, recipe) in enumerate(done):
            log(f"outer fold {outer}: {recipe.label()} -> smoothed acc {r['smoothed']['pixel_accuracy']:.3f}, "
                f"macro F1 {r['smoothed']['macro_f1']:.3f}")
    return summarize(per, grid.names), per, chosen


def grid_of(features_path, image_path, mask_path, bundle):
    """The :class:`Grid` of a slice's feature zarr (``brainrt featurize``) and its annotation, classes from the
    bundle's class map; ``y_cells`` attached (class of each cell's centre pixel, -1 none or off tissue)."""
    from brainrt.engine.grid import load_features
    from brainrt_train.data import ClassMap, load_slice

    cmap = ClassMap.from_dict(bundle.manifest.class_map)
    sl = load_slice(image_path, mask_path, cmap)
    g = load_features(features_path, bundle=bundle)
    if tuple(g.image_shape) != tuple(sl.labels.shape):
        raise ValueError(f"{features_path}: features of an image of shape {tuple(g.image_shape)}, not {sl.labels.shape}")
    return grid_from(g, sl.labels, list(cmap.names)), sl


def grid_from(g, labels, names):
    """The :class:`Grid` of a :class:`~brainrt.engine.grid.FeatureGrid` ``g`` and the class-index map ``labels``."""
    grid = Grid(np.asarray(g.features, np.float32), np.asarray(g.valid, bool), labels, list(names), g.stride)
    grid.y_cells = np.where(grid.valid, at_centres(labels, g.stride, grid.valid.shape), -1)
    return grid


def as_jsonable(results):
    """``{label: {"recipe": ..., **summary}}`` of evaluate_heads' results."""
    return {r.label(): {"recipe": r.to_dict(), **s} for r, s in results.items()}


__all__ = ["Folds", "CellFolds", "Grid", "Recipe", "spatial_folds", "cell_folds", "guards", "evaluate_heads",
           "choose", "choose_interior", "nested", "bias_allowed", "scores_of", "confusion", "map_cells",
           "fit_head", "with_bias", "grid_of"]
