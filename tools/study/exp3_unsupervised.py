"""Experiment 3: GMM clusters (one component per area) of each feature type vs the areas."""

from __future__ import annotations

from sklearn.decomposition import PCA
from sklearn.metrics import adjusted_rand_score, v_measure_score
from sklearn.mixture import GaussianMixture
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from .common import KIND_LABELS, PAPER, Caught, fmt, log

KEY = "exp3_unsupervised"


def make_gmm(st, dim, n_samples):
    """StandardScaler (+ PCA to 64 dims for wider features) + a full-covariance GMM of ``st.K`` components."""
    steps = [StandardScaler()]
    if dim > 64:
        steps.append(PCA(min(64, n_samples - 1), random_state=st.seed))
    steps.append(GaussianMixture(st.K, covariance_type="full", reg_covar=1e-3, n_init=2, random_state=st.seed))
    return make_pipeline(*steps)


def run(st):
    """GMM (one component per area) fitted on training features; V-measure of test clusters."""
    res = {}
    for kind in st.feats:
        ftr, fte = st.feats[kind]["train"], st.feats[kind]["test"]
        if kind == "trained" and "gmm" in st.bundle.heads:
            gmm, src = st.bundle.head("gmm"), "bundle head"
        else:
            gmm, src = make_gmm(st, ftr.shape[1], len(ftr)), "refit"
            with Caught():
                gmm.fit(ftr)
        pred = gmm.predict(fte)
        res[kind] = {"v_measure": float(v_measure_score(st.y["test"], pred)),
                     "adjusted_rand": float(adjusted_rand_score(st.y["test"], pred)), "gmm": src,
                     "pca64": bool(ftr.shape[1] > 64 and src == "refit")}
        log(f"exp3: {kind} V-measure {res[kind]['v_measure']:.3f}")
    res["best"] = max(list(res), key=lambda k: res[k]["v_measure"])
    st.results[KEY] = res


def report(st, w):
    """Section of experiment 3."""
    e3 = st.results.get(KEY)
    w("## 3. Unsupervised: GMM clusters vs areas")
    w("")
    w(f"Paper: {PAPER['exp3']}.")
    w("")
    if e3:
        w(f"GMM with {st.K} components (full covariance, StandardScaler first; PCA to 64 dims for wider features) "
          "fitted on the training features, clusters predicted on the test features.")
        w("")
        w("| features | V-measure | adjusted Rand | GMM |")
        w("| --- | --- | --- | --- |")
        for k, v in e3.items():
            if isinstance(v, dict):
                w(f"| {KIND_LABELS[k]} | {fmt(v['v_measure'])} | {fmt(v['adjusted_rand'])} | {v['gmm']} |")
        w("")
        vm = {k: v["v_measure"] for k, v in e3.items() if isinstance(v, dict)}
        if "trained" in vm and len(vm) > 1:
            rest = max(v for k, v in vm.items() if k != "trained")
            w(f"Trained features {'lead' if vm['trained'] > rest else 'do NOT lead'}: V-measure {fmt(vm['trained'])} vs "
              f"best other {fmt(rest)} ({vm['trained'] / max(rest, 1e-9):.1f}x).")
    w("")
