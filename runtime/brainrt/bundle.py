"""Model bundles: a folder with ONNX graph(s), joblib heads and a ``manifest.json``.

joblib unpickles arbitrary code, so a bundle is treated as code: the manifest lists the
sha256 of every file and :meth:`Bundle.load` verifies all of them *before* anything is
unpickled or handed to onnxruntime. A bundle whose files changed after export, lacks a
file, has extra heads, or has an unknown schema version is refused.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import BrainrtError, file_error

log = logging.getLogger("brainrt")

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"


def sha256_file(path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def hash_tree(folder, *, exclude=(MANIFEST,)) -> dict:
    """sha256 of every file below ``folder`` (relative POSIX paths), manifest excluded."""
    folder = Path(folder)
    return {
        p.relative_to(folder).as_posix(): sha256_file(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.relative_to(folder).as_posix() not in exclude
    }


def verify_bundle(folder) -> dict:
    """Check a bundle's manifest and every file's hash; return the manifest.

    Raises
    ------
    BrainrtError
        One line naming the bundle and the problem.
    """
    folder = Path(folder)
    mpath = folder / MANIFEST
    if not folder.is_dir():
        raise file_error(folder, "not a model bundle folder")
    if not mpath.is_file():
        raise file_error(folder, f"not a model bundle: {MANIFEST} is missing")
    try:
        manifest = json.loads(mpath.read_text())
    except (OSError, ValueError) as exc:
        raise file_error(mpath, f"unreadable manifest ({exc})") from None
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise file_error(folder, f"unknown bundle schema version {version!r}; this brainrt reads version {SCHEMA_VERSION}")
    expected = manifest.get("files")
    if not isinstance(expected, dict) or not expected:
        raise file_error(mpath, "manifest lists no files and hashes")
    actual = hash_tree(folder)
    for name, digest in expected.items():
        if name not in actual:
            raise file_error(folder, f"bundle file {name} is missing")
        if actual[name] != digest:
            raise file_error(folder, f"bundle file {name} does not match its sha256 in the manifest; refusing to load it")
    extra = sorted(set(actual) - set(expected))
    if extra:
        raise file_error(folder, f"bundle holds files not listed in its manifest: {', '.join(extra)}")
    return manifest


@functools.lru_cache(maxsize=1)
def _cuda_usable():
    """Whether the CUDA libraries onnxruntime-gpu needs can be loaded (no GPU: False).

    onnxruntime-gpu lists the CUDA provider even where CUDA is absent and then prints
    errors at every session; probing the libraries first keeps CPU machines quiet.
    """
    import ctypes

    def loadable(name):
        try:
            ctypes.CDLL(name)
            return True
        except OSError:
            return False

    needs = (("libcuda.so.1",), ("libcublasLt.so.13", "libcublasLt.so.12"), ("libcudnn.so.9",))
    return all(any(loadable(n) for n in names) for names in needs)


def providers(preferred=None):
    """Execution providers to use: CUDA first when usable, CPU always last."""
    import onnxruntime as ort

    avail = [p for p in ort.get_available_providers() if p != "CUDAExecutionProvider" or _cuda_usable()]
    wanted = preferred or ["CUDAExecutionProvider", "CPUExecutionProvider"]
    chosen = [p for p in wanted if p in avail] or ["CPUExecutionProvider"]
    return chosen


@dataclass(frozen=True, eq=False)
class Bundle:
    """A verified, loaded model bundle. Create it with :meth:`Bundle.load`.

    Attributes
    ----------
    path : Path
        The bundle folder.
    manifest : dict
        The parsed ``manifest.json``.
    session : onnxruntime.InferenceSession
        Per-patch feature graph: input ``(N, 1, P, P)`` float32, output ``(N, F)``.
    heads : dict
        Name -> fitted head (scikit-learn estimator or :class:`LinearHead`).
    """

    path: Path
    manifest: dict
    session: object
    heads: dict
    options: object = None
    _dense: dict = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def load(cls, path, *, threads=None, providers_=None, heads=True):
        """Verify every file's hash, then load the ONNX session(s) and the heads.

        Parameters
        ----------
        path : str or Path
            The bundle folder.
        threads : int or None, keyword-only
            onnxruntime intra-op threads (None: onnxruntime's default, all cores).
        providers_ : list of str or None, keyword-only
            Execution providers in order of preference (default: CUDA, then CPU).
        heads : bool, keyword-only
            Load the joblib heads too (False: features only).
        """
        import onnxruntime as ort

        path = Path(path)
        manifest = verify_bundle(path)
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = int(threads)
        opts.log_severity_level = 3
        chosen = providers(providers_)
        try:
            session = ort.InferenceSession(str(path / manifest["onnx"]["file"]), opts, providers=chosen)
        except Exception as exc:
            raise file_error(path, f"cannot load the ONNX graph ({type(exc).__name__})") from None
        log.info("brainrt: bundle %s on %s", path.name, session.get_providers()[0])
        loaded = {}
        if heads:
            import joblib

            for name, rel in manifest.get("heads", {}).items():
                if rel.endswith(".npz"):
                    loaded[name] = LinearHead.load(path / rel)
                else:
                    loaded[name] = joblib.load(path / rel)
        return cls(path=path, manifest=manifest, session=session, heads=loaded, options=(opts, chosen))

    @property
    def dense_strides(self) -> tuple:
        """Output strides for which the bundle has a fully convolutional graph."""
        d = self.manifest.get("dense_onnx") or {}
        return tuple(int(s) for s in d.get("strides", ()))

    def dense_session(self, stride):
        """The fully convolutional graph for ``stride``, created once and then reused."""
        with self._lock:
            if stride not in self._dense:
                import onnxruntime as ort

                opts, chosen = self.options
                rel = self.manifest["dense_onnx"]["files"][str(stride)]
                self._dense[stride] = ort.InferenceSession(str(self.path / rel), opts, providers=chosen)
            return self._dense[stride]

    # Convenience views of the manifest --------------------------------------------------
    @property
    def patch_size(self) -> int:
        return int(self.manifest["patch_size"])

    @property
    def class_names(self) -> list:
        return [c["name"] for c in self.manifest["classes"]]

    @property
    def class_codes(self) -> list:
        """Mask code written for each class in label maps (the first of its codes)."""
        return [int(c["codes"][0]) for c in self.manifest["classes"]]

    @property
    def n_features(self) -> int:
        return int(self.manifest["n_features"])

    @property
    def model_id(self) -> str:
        return self.manifest["files"][self.manifest["onnx"]["file"]][:12]

    @property
    def normalization(self) -> dict:
        return self.manifest["normalization"]

    def head(self, name):
        """The fitted head ``name``; a clear error lists the available ones."""
        if name not in self.heads:
            raise BrainrtError(
                f"{self.path}: bundle has no head {name!r}; available: {', '.join(sorted(self.heads))}"
            )
        return self.heads[name]


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
