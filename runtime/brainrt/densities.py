"""Per-area feature densities: how likely a patch's features are under each area.

Pickled inside bundles, so it lives in the runtime package (no torch needed to load it).
"""

from __future__ import annotations

import numpy as np


class AreaDensity:
    """One Gaussian mixture per area on standardized features; ``score_samples`` gives
    ``log p(features | area)`` for every area, shape ``(N, n_areas)``. Low values in every
    area flag outliers."""

    def __init__(self, *, n_components=1, reg_covar=1e-3, random_state=0):
        self.n_components = n_components
        self.reg_covar = reg_covar
        self.random_state = random_state

    def fit(self, X, y):
        from sklearn.mixture import GaussianMixture
        from sklearn.preprocessing import StandardScaler

        X = np.asarray(X, np.float64)
        y = np.asarray(y)
        self.scaler_ = StandardScaler().fit(X)
        Z = self.scaler_.transform(X)
        self.classes_ = np.unique(y)
        self.models_ = []
        for c in self.classes_:
            Zc = Z[y == c]
            k = max(1, min(self.n_components, len(Zc) // 10))
            self.models_.append(GaussianMixture(k, covariance_type="full", reg_covar=self.reg_covar,
                                                random_state=self.random_state).fit(Zc))
        return self

    def score_samples(self, X):
        Z = self.scaler_.transform(np.asarray(X, np.float64))
        return np.stack([m.score_samples(Z) for m in self.models_], axis=1)
