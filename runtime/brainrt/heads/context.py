"""Head kind ``context``: a linear classifier on each cell's features plus pooled neighbourhood terms.

- **fitted**: in the trainer (its ``ctxhead.add_context_head``, on a bundle's features);
- **recorded**: ``heads/NAME.npz`` (folded weights, no pickle) in the manifest's ``heads``, and its
  scales and stage-1 head in ``context_heads`` (:class:`~brainrt.model.context_record.ContextHeadSpec`);
- **loaded**: :meth:`~brainrt.ctxhead.ContextHead.load` with its scales and its stage-1 head;
- **applied**: its per-cell terms, pooled by :class:`~brainrt.ctxhead.ContextStream` (streamed) or
  :func:`~brainrt.ctxhead.context_probabilities` (:meth:`brainrt.heads.apply.Classifier.stream`).
"""

from __future__ import annotations

from ..ctxhead import ContextHead

KIND = "context"
HEADS = ("ctx",)
CLASSIFIERS = ("ctx",)
CLASS_FREE = ()


def claims(rel, spec) -> bool:
    return spec is not None


def load(path, spec=None, stage1=None):
    return ContextHead.load(path, spec.scales, stage1)
