"""Experiment 1: test accuracy of the bundle's heads on the trained features vs the CNN's own output."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import confusion_matrix, f1_score

from brainrt.plots import confusion_png

from .common import CLASSIFIERS, HEAD_LABELS, PAPER, fmt, log, shrink_png

KEY = "exp1_heads"


def run(st):
    """Test accuracy of the bundle's heads on the trained features vs the CNN's own output."""
    b, f, y = st.bundle, st.feats["trained"]["test"], st.y["test"]
    res = {}
    for name in CLASSIFIERS + ("cnn",):
        pred = np.asarray(b.head(name).predict(f))
        res[name] = {"test_accuracy": float((pred == y).mean()),
                     "macro_f1": float(f1_score(y, pred, average="macro", labels=list(range(st.K)), zero_division=0))}
        st.fitted.setdefault("trained", {})[name] = b.head(name)
    for name in CLASSIFIERS + ("cnn",):
        res[name]["bundle_manifest_accuracy"] = b.manifest.test_accuracy(name)
    full = st.results["setup"]["used_per_split"]["test"] == sum(b.manifest.training.taken("test").values())
    res["full_test_split"] = bool(full)
    recorded = [(res[h]["test_accuracy"], res[h]["bundle_manifest_accuracy"]) for h in CLASSIFIERS + ("cnn",)]
    res["matches_manifest"] = bool(full and all(m is not None and abs(x - m) < 1e-9 for x, m in recorded))
    best = max(CLASSIFIERS, key=lambda h: res[h]["test_accuracy"])
    res["best_head"] = best
    res["best_head_minus_cnn"] = res[best]["test_accuracy"] - res["cnn"]["test_accuracy"]
    for name in ("logreg", "cnn"):
        cm = confusion_matrix(y, b.head(name).predict(f), labels=list(range(st.K)))
        p = st.fig("exp1", f"exp1_confusion_{name}.png")
        confusion_png(p, cm, st.names, title=f"{HEAD_LABELS[name]}: test accuracy {res[name]['test_accuracy']:.3f}")
        shrink_png(p)
    st.results[KEY] = res
    log("exp1: " + ", ".join(f"{k} {res[k]['test_accuracy']:.3f}" for k in CLASSIFIERS + ("cnn",)))


def report(st, w):
    """Section of experiment 1."""
    e1 = st.results.get(KEY)
    w("## 1. Heads on the trained features vs the end-to-end CNN")
    w("")
    w(f"Paper: {PAPER['exp1']}.")
    w("")
    if e1:
        w("| model | test accuracy | macro F1 | accuracy in the bundle manifest |")
        w("| --- | --- | --- | --- |")
        for h in CLASSIFIERS + ("cnn",):
            w(f"| {HEAD_LABELS[h]} | {fmt(e1[h]['test_accuracy'])} | {fmt(e1[h]['macro_f1'])} | "
              f"{fmt(e1[h].get('bundle_manifest_accuracy'))} |")
        d = e1["best_head_minus_cnn"]
        w("")
        if e1["full_test_split"]:
            w(f"Recomputed from the re-created test patches and the ONNX graph; equal to the accuracies the trainer "
              f"recorded in the manifest: **{'yes' if e1['matches_manifest'] else 'NO'}**.")
        else:
            w("(A subset of the test split: the manifest's accuracies are over the whole split.)")
        w("")
        w(f"Best head: {HEAD_LABELS[e1['best_head']]}, {abs(d) * 100:.1f} points "
          f"{'above' if d > 0 else 'below' if d < 0 else 'level with'} the CNN's own output: "
          + ("as in the paper (heads slightly better)." if 0 < d <= 0.05 else
             "comparable, but the CNN is ahead (the paper found the heads slightly better)." if -0.02 <= d <= 0 else
             "heads clearly better (the paper found only a slight advantage)." if d > 0.05 else
             "the CNN is clearly ahead, unlike the paper."))
        w("")
        w(st.figure_links("exp1"))
    w("")
