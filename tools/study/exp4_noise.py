"""Experiment 4: logistic-regression accuracy when Gaussian noise is added to the test images."""

from __future__ import annotations

import numpy as np

from .common import DPI, KIND_LABELS, PAPER, Caught, features_of, fmt, log, make_classifiers, per_class_subset, plt_, \
    save_fig

KEY = "exp4_noise"
NOISE_LEVELS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5)


def run(st):
    """Logistic-regression accuracy when Gaussian noise is added to the test images."""
    n = st.args.noise_per_class or (10 if st.args.quick else 300)
    idx = per_class_subset(st.y["test"], n, st.K)
    cen, y = st.centres["test"][idx], st.y["test"][idx]
    levels = list(st.args.noise_levels)
    res = {"levels": levels, "n_test": int(len(idx)), "per_class": n, "accuracy": {}}
    for kind in st.extractors:
        clf = st.fitted.get(kind, {}).get("logreg")
        if clf is None:  # exp. 2 did not run: fit here
            clf = make_classifiers(st)["logreg"]
            with Caught():
                clf.fit(st.feats[kind]["train"], st.y["train"])
        accs = []
        for li, s in enumerate(levels):
            f = features_of(st, kind, cen, noise=s, noise_seed=st.seed * 1000 + li)
            accs.append(float((clf.predict(f) == y).mean()))
        res["accuracy"][kind] = accs
        log(f"exp4: {kind} " + " ".join(f"{s}:{a:.3f}" for s, a in zip(levels, accs)))
    # relative drop at the largest level
    res["retained_at_max"] = {k: (v[-1] / v[0] if v[0] else None) for k, v in res["accuracy"].items()}
    res["mean_over_levels"] = {k: float(np.mean(v)) for k, v in res["accuracy"].items()}
    st.results[KEY] = res
    _figure(st, res, levels, len(idx))
    # no example patches: crops of the user's data do not belong in a committed report


def _figure(st, res, levels, n):
    plt = plt_()
    fig, ax = plt.subplots(figsize=(5.5, 3.4), dpi=DPI)
    for kind, accs in res["accuracy"].items():
        ax.plot(levels, accs, "o-", label=KIND_LABELS[kind])
    ax.axhline(1 / st.K, color="gray", ls=":", lw=1, label="chance")
    ax.set_xlabel("noise std (unit intensity)")
    ax.set_ylabel("logistic-regression test accuracy")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    ax.set_title(f"Noise robustness ({n} test patches)", fontsize=10)
    save_fig(fig, st.fig("exp4", "exp4_noise.png"))


def report(st, w):
    """Section of experiment 4."""
    R = st.results
    e4 = R.get(KEY)
    w("## 4. Noise robustness")
    w("")
    w(f"Paper: {PAPER['exp4']}.")
    w("")
    if e4:
        w(f"Logistic regression (fitted on clean training features) on {e4['n_test']} test patches "
          f"({e4['per_class']} per class) with Gaussian noise added in unit intensity, clipped to [0, 1]; the "
          "same noise level for every feature type, drawn independently on every pixel that feature type reads"
          + (f" (for the trained CNN of this context bundle: the whole {R['setup']['footprint']} px footprint, "
             f"patch and context field alike; for the baselines: the {R['setup']['patch_size']} px patch)"
             if (R.get("setup") or {}).get("context") else "") + ".")
        w("")
        w("| features | " + " | ".join(f"std {s}" for s in e4["levels"]) + " | retained at max |")
        w("| --- | " + " | ".join("---" for _ in e4["levels"]) + " | --- |")
        for k, accs in e4["accuracy"].items():
            w(f"| {KIND_LABELS[k]} | " + " | ".join(fmt(x) for x in accs) + f" | {fmt(e4['retained_at_max'][k], 2)} |")
        w("")
        mo = e4["mean_over_levels"]
        bk = max(mo, key=mo.get)
        w(f"Highest mean accuracy over the noise levels: {KIND_LABELS[bk]} ({fmt(mo[bk])}); trained CNN "
          f"{fmt(mo.get('trained'))}, keeping {fmt(e4['retained_at_max'].get('trained'), 2)} of its clean accuracy at "
          f"std {e4['levels'][-1]} (chance = {1 / st.K:.3f}).")
        w("")
        w(st.figure_links("exp4"))
    w("")
