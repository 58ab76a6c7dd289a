"""Head kind ``scikit``: scikit-learn estimators (pipelines), pickled with joblib.

- **fitted**: in the trainer (its ``heads.fit_heads``: every name below, on the training
  slice's features) and from painted strokes (:func:`brainrt.fit.fit_heads`: ``logreg`` and
  ``area_density``);
- **recorded**: ``heads/NAME.joblib``, listed (and hashed) in the manifest's ``heads``;
- **loaded**: ``joblib.load`` of a verified file (:func:`load`), when first used;
- **applied**: a classifier's ``predict_proba`` (a logistic regression's folded to float32,
  :func:`brainrt.heads.apply.float32_proba`) or ``predict``; ``gmm``'s ``predict`` (clusters),
  ``area_density``'s ``score_samples`` (per-area log-likelihoods).
"""

from __future__ import annotations

KIND = "scikit"
#: The names bundles ship heads of this kind under.
HEADS = ("logreg", "linsvm", "rbfsvm", "gmm", "area_density")
#: Those that classify (the others: clusters, densities).
CLASSIFIERS = ("logreg", "linsvm", "rbfsvm")
#: Those that do not depend on the bundle's classes (a derived bundle keeps its parent's).
CLASS_FREE = ("gmm",)


def claims(rel, spec) -> bool:
    """Whether the manifest's head file ``rel`` (with its context spec, None) is of this kind."""
    return spec is None and not rel.endswith(".npz")


def load(path, spec=None, stage1=None):
    """The head in ``path`` (verified against the manifest's sha256 before)."""
    import joblib

    return joblib.load(path)


def save(head, folder, name) -> str:
    """Write ``head`` into the bundle ``folder``; its manifest entry (a path in the bundle)."""
    import joblib

    rel = f"heads/{name}.joblib"
    (folder / "heads").mkdir(exist_ok=True)
    joblib.dump(head, folder / rel)
    return rel
