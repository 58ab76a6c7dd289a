"""Simple models on CNN features: classifiers, a GMM, per-area densities.

Every head standardizes its input inside a scikit-learn Pipeline, so callers pass raw
features.
"""

from __future__ import annotations

import time
import warnings

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import v_measure_score
from sklearn.mixture import GaussianMixture
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, LinearSVC

from brainrt.densities import AreaDensity
from brainrt.heads import scikit


def make_heads(*, n_classes, seed=0):
    """Unfitted heads by name (no global PCA + KMeans: sub-division fits its own per region, so a bundle
    writes no ``pca_kmeans`` head; older bundles keep theirs, verified and never loaded)."""
    return {
        "logreg": make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, C=1.0)),
        "linsvm": make_pipeline(StandardScaler(), LinearSVC(C=0.1, max_iter=20000, random_state=seed)),
        "rbfsvm": make_pipeline(StandardScaler(), SVC(kernel="rbf", C=1.0, gamma="scale", probability=True, random_state=seed)),
        "gmm": make_pipeline(StandardScaler(), GaussianMixture(n_classes, covariance_type="full", reg_covar=1e-3,
                                                               n_init=2, random_state=seed)),
        "area_density": AreaDensity(n_components=2, random_state=seed),
    }


#: The classifiers fitted here: the scikit-learn kind's (:mod:`brainrt.heads.scikit`, whose module says how
#: they are recorded, loaded and applied).
CLASSIFIERS = scikit.CLASSIFIERS


def fit_heads(f_train, y_train, f_test, y_test, *, n_classes, seed=0):
    """Fit every head on training features; return ``(heads, metrics)``.

    Metrics: test accuracy of each classifier, test V-measure of the GMM's clusters against the
    true areas, fit seconds of each head.
    """
    heads = make_heads(n_classes=n_classes, seed=seed)
    metrics = {}
    for name, head in heads.items():
        t = time.perf_counter()
        with warnings.catch_warnings():  # scikit-learn 1.9 deprecates SVC(probability=True) for a calibrated
            # wrapper; the shipped bundles' rbfsvm heads are SVCs, and the warning says nothing to a user
            warnings.filterwarnings("ignore", message=".*`probability` parameter", category=FutureWarning)
            if name in CLASSIFIERS or name == "area_density":
                head.fit(f_train, y_train)
            else:
                head.fit(f_train)
        m = {"fit_seconds": round(time.perf_counter() - t, 2)}
        if len(y_test):
            if name in CLASSIFIERS:
                m["test_accuracy"] = float(np.mean(head.predict(f_test) == y_test))
            elif name == "gmm":
                m["test_v_measure"] = float(v_measure_score(y_test, head.predict(f_test)))
            elif name == "area_density":
                m["test_accuracy_argmax"] = float(np.mean(head.score_samples(f_test).argmax(1) == y_test))
        metrics[name] = m
    return heads, metrics
