"""Head kind ``context``: a linear classifier on each cell's features plus Gaussian-pooled neighbourhood summaries.

- **fitted**: in the trainer (its ``ctxhead.add_context_head``, on a bundle's features);
- **recorded**: ``heads/NAME.npz`` (folded weights, no pickle) in the manifest's ``heads``, and its
  scales and stage-1 head in ``context_heads`` (:class:`~brainrt.model.context_record.ContextHeadSpec`);
- **loaded**: :meth:`ContextHead.load` with its scales and its stage-1 head;
- **applied**: its per-cell terms, pooled by :class:`ContextStream` (streamed) or
  :func:`context_probabilities` (:meth:`brainrt.heads.apply.Classifier.stream`).

In the spirit of ilastik's autocontext, on deep features: the head's input is the cell's
own 64 features and, at one or more scales, the features and/or a first-stage head's
class probabilities averaged over the tissue cells around it (normalized Gaussian
pooling, :mod:`brainrt.maps.pooling`; ``sigma_um`` in micrometres so that every grid stride
sees the same field, and ``sigma_z_um`` across the slices of a volume).

The head is multinomial logistic regression on the standardized inputs, fitted in the
trainer and stored folded (``heads/NAME.npz``: no pickle). Pooling is linear, so the
weights are applied *before* pooling: every cell yields ``K`` self logits plus ``K``
terms per scale (:meth:`ContextHead.terms`), only those ``K (1 + S)`` channels are
pooled, and ``softmax(self + sum_s pooled_s)`` is the class probability. That equals
the fitted pipeline on explicitly pooled 64-feature inputs to float rounding (tested),
and keeps streaming at stride 1 cheap: :class:`ContextStream` pools the terms of
consecutive row blocks with one :class:`~brainrt.maps.pooling.RowPooler` per scale and yields
probability rows as soon as every scale's halo has arrived.
"""

from __future__ import annotations

import numpy as np

from ..maps.pooling import RowPooler, combine_z, z_kernel

KIND = "context"
HEADS = ("ctx",)
CLASSIFIERS = ("ctx",)
CLASS_FREE = ()


def claims(rel, spec) -> bool:
    return spec is not None


def load(path, spec=None, stage1=None):
    return ContextHead.load(path, spec.scales, stage1)


class ContextHead:
    """Folded weights: ``w_self`` (K, F) and ``bias`` (K,); per scale ``w[s]`` (K, F or K).

    ``scales`` are the manifest's :class:`~brainrt.model.manifest.PoolScale` s (source, sigma_um,
    sigma_z_um); ``stage1`` the head whose probabilities the "probabilities" scales pool.
    """

    def __init__(self, w_self, bias, w, scales, stage1=None):
        self.w_self, self.bias = np.asarray(w_self, np.float32), np.asarray(bias, np.float32)
        self.w = [np.asarray(x, np.float32) for x in w]
        self.scales, self.stage1 = tuple(scales), stage1
        self.classes_ = np.arange(self.w_self.shape[0])
        if len(self.w) != len(self.scales):
            raise ValueError(f"{len(self.w)} weight blocks for {len(self.scales)} scales")

    @property
    def n_classes(self):
        return self.w_self.shape[0]

    @property
    def n_terms(self):
        """Channels per cell before pooling: K self logits + K per scale."""
        return self.n_classes * (1 + len(self.scales))

    @classmethod
    def load(cls, path, scales, stage1=None):
        with np.load(path, allow_pickle=False) as z:
            return cls(z["w_self"], z["bias"], [z[f"w{i}"] for i in range(len(scales))], scales, stage1)

    def save(self, path):
        np.savez(path, w_self=self.w_self, bias=self.bias, **{f"w{i}": w for i, w in enumerate(self.w)})

    def terms(self, f):
        """(n, F) features -> (n, K (1 + S)) float32: self logits, then each scale's pre-pooling term."""
        f = np.asarray(f, np.float32)
        p = None
        out = [f @ self.w_self.T + self.bias]
        for sc, w in zip(self.scales, self.w):
            if sc.source == "probabilities":
                p = self._stage1_probabilities(f) if p is None else p
                out.append(p @ w.T)
            else:
                out.append(f @ w.T)
        return np.concatenate(out, axis=1).astype(np.float32)

    def _stage1_probabilities(self, f):
        """Stage-1 probabilities with one column per class (0 for a class its training never saw)."""
        p = np.asarray(self.stage1.predict_proba(f), np.float32)
        if p.shape[1] == self.n_classes:
            return p
        full = np.zeros((len(f), self.n_classes), np.float32)
        full[:, np.asarray(self.stage1.classes_, np.int64)] = p
        return full

    def sigmas_cells(self, pixel_size_um, stride):
        """In-plane sigma of each scale in grid cells."""
        return [sc.sigma_um / (pixel_size_um * stride) for sc in self.scales]

    def probabilities(self, self_logits, pooled):
        """Class probabilities from the self logits (..., K) and the pooled terms of every scale."""
        z = self_logits + sum(pooled) if pooled else self_logits
        z = z - z.max(axis=-1, keepdims=True)
        e = np.exp(z)
        return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


class ContextStream:
    """Class probabilities of a grid given as consecutive row blocks of :meth:`ContextHead.terms`.

    ``push(terms_block (r, C, K (1 + S)), valid_block)`` yields finished probability rows
    (0 off tissue) in order; ``flush()`` the rest at the end of the grid. Equal, bit for
    bit, to one push of the whole grid. With ``sigmas_z`` (slices) the pooling reaches
    across z too: :meth:`push_slices` takes the same row block of the slices ``z - reach
    .. z + reach`` (None beyond the volume) and yields slice z's rows (in-plane sums per
    slice, then :func:`~brainrt.maps.pooling.combine_z`: the 3D normalized convolution).
    """

    def __init__(self, head, sigmas_cells, sigmas_z=None):
        self.head, self.K = head, head.n_classes
        self.kz = [z_kernel(s) for s in (sigmas_z or [0.0] * len(sigmas_cells))]
        self.reach = max([len(k) // 2 for k in self.kz], default=0)
        self.poolers = [[RowPooler(sig) for _ in k] for sig, k in zip(sigmas_cells, self.kz)]
        self._parts = [[[] for _ in k] for k in self.kz]  # in-plane sums per scale and slice, not yet combined
        self._have = None  # per scale, the slice offsets inside the volume
        self._self, self._valid = [], []  # self logits and tissue of rows not yet emitted
        self._pooled = [[] for _ in self.kz]  # pooled means per scale, not yet emitted

    def push(self, terms, valid):
        if self.reach:
            raise ValueError("a stream that pools across z takes push_slices")
        yield from self.push_slices([terms], [valid])

    def push_slices(self, terms, valid):
        c, K = self.reach, self.K
        if self._have is None:
            self._have = [[t for t in range(len(k)) if terms[c - len(k) // 2 + t] is not None] for k in self.kz]
        self._self.append(np.asarray(terms[c], np.float32)[..., :K])
        self._valid.append(np.asarray(valid[c], bool))
        for s, k in enumerate(self.kz):
            for t in self._have[s]:
                j = c - len(k) // 2 + t
                part = np.asarray(terms[j], np.float32)[..., K * (s + 1) : K * (s + 2)]
                self._parts[s][t] += list(self.poolers[s][t].push(part, valid[j]))
            self._combine(s)
        yield from self._emit()

    def flush(self):
        for s in range(len(self.kz)):
            for t in self._have[s] if self._have else ():
                self._parts[s][t] += list(self.poolers[s][t].flush())
            self._combine(s)
        yield from self._emit()

    def _combine(self, s):
        """Combine across z the in-plane sums that every slice of scale ``s`` has emitted."""
        have, parts, r = self._have[s], self._parts[s], len(self.kz[s]) // 2
        while have and all(parts[t] for t in have):
            got = [parts[t].pop(0) if t in have else None for t in range(len(parts))]
            self._pooled[s].append(combine_z(got, self.kz[s], got[r].valid).mean())

    def _emit(self):
        ready = min([sum(len(p) for p in q) for q in self._pooled], default=sum(len(s) for s in self._self))
        if ready == 0:
            return
        own, valid = _take(self._self, ready), _take(self._valid, ready)
        pooled = [_take(q, ready) for q in self._pooled]
        yield np.where(valid[..., None], self.head.probabilities(own, pooled), 0).astype(np.float32)


class PassThrough:
    """The stream of a head without context: each pushed block comes out as it is."""

    def push(self, values, valid):
        yield values

    def flush(self):
        yield from ()


def _take(queue, n):
    """The first ``n`` rows of a list of row blocks, removed from it (in place)."""
    out, got = [], 0
    while got < n:
        b = queue[0]
        k = min(len(b), n - got)
        out.append(b[:k])
        if k == len(b):
            queue.pop(0)
        else:
            queue[0] = b[k:]
        got += k
    return np.concatenate(out)


def context_probabilities(head, terms, valid, sigmas_cells):
    """Whole-grid class probabilities (R, C, K) of a grid of terms (one push of a :class:`ContextStream`)."""
    stream = ContextStream(head, sigmas_cells)
    rows = list(stream.push(terms, valid)) + list(stream.flush())
    return np.concatenate(rows) if rows else np.zeros(valid.shape + (head.n_classes,), np.float32)
