"""Experiment 2: the bundle's heads refit on baseline features of the same patches."""

from __future__ import annotations

import time

import numpy as np

from .common import CLASSIFIERS, DPI, HEAD_LABELS, KIND_LABELS, PAPER, Caught, fmt, log, make_classifiers, plt_, save_fig

KEY = "exp2_baselines"


def run(st):
    """The same heads refit on baseline features of the same patches."""
    res = {"trained": {h: st.results.get("exp1_heads", {}).get(h, {}).get("test_accuracy") for h in CLASSIFIERS}}
    res["trained"]["note"] = "the bundle's fitted heads (exp. 1)"
    res["trained"]["logreg_train_accuracy"] = float(
        (st.bundle.head("logreg").predict(st.feats["trained"]["train"]) == st.y["train"]).mean())
    for kind in st.feats:
        if kind != "trained":
            res[kind] = _refit(st, kind)
    st.results[KEY] = res
    _figure(st, res)


def _refit(st, kind):
    """Fit the classifiers on one baseline's training features; its test accuracies."""
    ftr, fte = st.feats[kind]["train"], st.feats[kind]["test"]
    res = {}
    st.fitted[kind] = {}
    for name, est in make_classifiers(st).items():
        t = time.perf_counter()
        with Caught() as c:
            est.fit(ftr, st.y["train"])
        acc = float((est.predict(fte) == st.y["test"]).mean())
        res[name] = acc
        st.fitted[kind][name] = est
        if c.names:
            res.setdefault("warnings", {})[name] = c.names
        log(f"exp2: {kind} {name} {acc:.3f} ({time.perf_counter() - t:.1f} s)")
    res["logreg_train_accuracy"] = float((st.fitted[kind]["logreg"].predict(ftr) == st.y["train"]).mean())
    res["dim"] = int(ftr.shape[1])
    res["dead_features"] = int((ftr.std(0) == 0).sum())
    return res


def _figure(st, res):
    """Bar chart: each head's test accuracy on each feature type."""
    plt = plt_()
    kinds = [k for k in res if k in st.feats]
    fig, ax = plt.subplots(figsize=(6.5, 3.2), dpi=DPI)
    w = 0.8 / len(CLASSIFIERS)
    for j, h in enumerate(CLASSIFIERS):
        vals = [res[k].get(h) or 0.0 for k in kinds]
        ax.bar(np.arange(len(kinds)) + (j - 1) * w, vals, w, label=HEAD_LABELS[h])
    cnn = st.results.get("exp1_heads", {}).get("cnn", {}).get("test_accuracy")
    if cnn is not None:
        ax.axhline(cnn, color="k", ls="--", lw=1, label="end-to-end CNN")
    ax.axhline(1 / st.K, color="gray", ls=":", lw=1, label="chance")
    ax.set_xticks(range(len(kinds)), [KIND_LABELS[k] for k in kinds], fontsize=8)
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    ax.set_title("Heads on each feature type (same patches)", fontsize=10)
    save_fig(fig, st.fig("exp2", "exp2_baselines.png"))


def report(st, w):
    """Section of experiment 2."""
    R = st.results
    e2 = R.get(KEY)
    w("## 2. Baselines: the same heads refit on other features of the same patches")
    w("")
    w(f"Paper: {PAPER['exp2']}.")
    w("")
    if e2:
        w("| features | dims | logistic regression | linear SVM | RBF SVM | logistic regression on its training patches |")
        w("| --- | --- | --- | --- | --- | --- |")
        for k, v in e2.items():
            dim = v.get("dim", R.get("features", {}).get(k, {}).get("dim", ""))
            w(f"| {KIND_LABELS[k]} | {dim} | {fmt(v.get('logreg'))} | {fmt(v.get('linsvm'))} | {fmt(v.get('rbfsvm'))} | "
              f"{fmt(v.get('logreg_train_accuracy'))} |")
        w("")
        if any(k != "trained" for k in e2):
            _comparison(R, e2, w)
        w("")
        w(st.figure_links("exp2"))
    w("")


def _comparison(R, e2, w):
    """The trained features against the best baseline; fit warnings, train/test gaps, dead features."""
    tr = max(e2["trained"].get(h) or 0 for h in CLASSIFIERS)
    others = {k: max(v.get(h) or 0 for h in CLASSIFIERS) for k, v in e2.items() if k != "trained"}
    bk = max(others, key=others.get)
    w(f"Best accuracy: trained {fmt(tr)} vs best baseline {KIND_LABELS[bk]} {fmt(others[bk])} "
      f"({(tr - others[bk]) * 100:+.1f} points for the trained features). Heads: scikit-learn pipelines "
      "StandardScaler + LogisticRegression(C=1) / LinearSVC(C=0.1) / SVC(rbf, C=1, gamma='scale'), the "
      "bundle's own settings. " + ("ResNet-18 was run." if "resnet18" in e2 else
                                      "ResNet-18: skipped (no `--resnet18-weights`).")
      + (f" Same patch centres, but the trained CNN reads each patch's {R['setup']['footprint']} px context "
         f"footprint and the baselines only the {R['setup']['patch_size']} px patch (see Setup)."
         if (R.get("setup") or {}).get("context") else ""))
    warn = {k: v["warnings"] for k, v in e2.items() if isinstance(v, dict) and v.get("warnings")}
    if warn:
        w(f"Fit warnings: {warn}.")
    gaps = {k: (v.get("logreg_train_accuracy"), v.get("logreg")) for k, v in e2.items()
            if v.get("logreg_train_accuracy") is not None and v.get("logreg") is not None}
    if gaps:
        w("Logistic regression, training vs test patches: " + "; ".join(
            f"{KIND_LABELS[k]} {fmt(a)} vs {fmt(b)}" for k, (a, b) in gaps.items())
          + ". Test patches come from other rows of each area (the spatial split), so a large gap means "
            "the features separate the training band but do not carry over to the held-out band.")
    dead = {k: v.get("dead_features") for k, v in e2.items() if v.get("dead_features")}
    if dead:
        w(f"Constant (dead) features on the training patches: {dead}.")
