"""Head kind ``linear``: the CNN's own output layer, softmax(features @ W.T + b), stored without pickle.

- **fitted**: with the network (the trainer's export writes its last layer);
- **recorded**: ``heads/cnn.npz`` (``weight``, ``bias``), listed in the manifest's ``heads``;
- **loaded**: :meth:`LinearHead.load`;
- **applied**: ``predict_proba`` like any classifier (:mod:`brainrt.heads.apply`).
"""

from __future__ import annotations

import numpy as np

KIND = "linear"
HEADS = ("cnn",)
CLASSIFIERS = ("cnn",)
CLASS_FREE = ()


def claims(rel, spec) -> bool:
    return spec is None and rel.endswith(".npz")


def load(path, spec=None, stage1=None):
    return LinearHead.load(path)


class LinearHead:
    """The CNN's own output layer as a head: softmax(features @ W.T + b). No pickle needed."""

    def __init__(self, weight, bias):
        self.weight = np.asarray(weight, np.float32)
        self.bias = np.asarray(bias, np.float32)
        self.classes_ = np.arange(self.weight.shape[0])

    @classmethod
    def load(cls, path):
        with np.load(path, allow_pickle=False) as z:
            return cls(z["weight"], z["bias"])

    def save(self, path):
        np.savez(path, weight=self.weight, bias=self.bias)

    def decision_function(self, x):
        return np.asarray(x, np.float32) @ self.weight.T + self.bias

    def predict_proba(self, x):
        z = self.decision_function(x)
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def predict(self, x):
        return self.decision_function(x).argmax(axis=1)
