"""Model bundles: a folder with ONNX graph(s), joblib heads and a ``manifest.json`` (:mod:`brainrt.model.manifest`).

joblib unpickles arbitrary code, so a bundle is treated as code: the manifest lists the
sha256 of every file and :meth:`Bundle.load` verifies all of them *before* anything is
unpickled or handed to onnxruntime. A bundle whose files changed after export, lacks a
file, has extra heads, or has an unknown schema version is refused.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import BrainrtError, file_error, param_error
from ..geometry import manifest_problems
from ..heads import bundle_heads
from ..model import params, predictor, sessions
from ..model.manifest import PRECISIONS, Manifest
from ..model.seal import MANIFEST, verify_bundle

log = logging.getLogger("brainrt")

__all__ = ["Bundle", "default_model", "demo_model"]


def models_dir() -> Path:
    """The ``models/`` folder of a source checkout (bundles are not installed as package data), or
    ``$BRAINRT_MODELS``."""
    env = os.environ.get("BRAINRT_MODELS")
    return Path(env) if env else Path(__file__).resolve().parents[3] / "models"


def default_model() -> Path:
    """The shipped real-data bundle (slice309, the paper's six areas)."""
    p = models_dir() / "slice309-paper6"
    if not p.is_dir():
        raise BrainrtError(f"{p}: no default bundle here; pass --model BUNDLE or set BRAINRT_MODELS")
    return p


def demo_model() -> Path:
    """The shipped bundle trained on synthetic slices (for the demo)."""
    p = models_dir() / "synthetic-demo"
    if not p.is_dir():
        raise BrainrtError(f"{p}: no demo bundle here; pass --model BUNDLE or set BRAINRT_MODELS")
    return p


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


#: Names of the devices a bundle may run on ("auto": CUDA where usable, else the CPU).
#: Where the network runs, as :mod:`brainrt.model.params` declares it.
DEVICES = params.PARAMS["device"].constraint.values
_PROVIDERS = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}


def providers(device="auto"):
    """onnxruntime execution providers for ``device`` (the one place they are chosen).

    "cuda" needs onnxruntime's GPU build (``pip install 'brainrt[gpu]'``) and loadable CUDA
    libraries, else the one-line error; "auto" takes CUDA where it is usable and the CPU
    otherwise; the CPU is always last, for operators CUDA lacks.
    """
    import onnxruntime as ort

    if device not in DEVICES:
        raise param_error("device", "Bundle.load", f"one of {DEVICES}", device)
    cuda = "CUDAExecutionProvider" in ort.get_available_providers() and _cuda_usable()
    if device == "cuda" and not cuda:
        raise BrainrtError("--device cuda: this onnxruntime has no usable CUDA provider (it needs the GPU build, "
                           "pip install 'brainrt[gpu]', and the CUDA 12 libraries); use --device auto or cpu")
    return _PROVIDERS["cuda" if device == "cuda" or (device == "auto" and cuda) else "cpu"]


@dataclass(frozen=True, eq=False)
class Bundle:
    """A verified, loaded model bundle. Create it with :meth:`Bundle.load`.

    Attributes
    ----------
    path : Path
        The bundle folder.
    manifest : Manifest
        The parsed, typed ``manifest.json``.
    session : onnxruntime.InferenceSession
        Per-patch feature graph: input ``(N, 1, P, P)`` float32, output ``(N, F)``.
    heads : Mapping
        Name -> fitted head (of a kind of :mod:`brainrt.heads.kinds`), each loaded when first used.
    """

    path: Path
    manifest: Manifest
    session: object
    heads: dict
    options: object = None
    _dense: dict = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def load(cls, path, *, threads=None, device="auto", heads=True):
        """Verify every file's hash, then load the ONNX session(s) and the heads.

        Parameters
        ----------
        path : str or Path
            The bundle folder.
        threads : int or None, keyword-only
            onnxruntime intra-op threads (None: onnxruntime's default, all cores).
        device : {"auto", "cpu", "cuda"}, keyword-only
            Where the graphs run (:func:`providers`): "auto" takes CUDA where it is usable.
        heads : bool, keyword-only
            Load the joblib heads too (False: features only).
        """
        path = Path(path)
        manifest = verify_bundle(path)
        opts, chosen = sessions.session_options(threads), providers(device)
        session = sessions.open_session(path / manifest.onnx.file, opts, chosen, owner=path)
        check_graph(path, manifest, session)
        problems = manifest_problems(manifest)
        if problems:
            raise file_error(path / MANIFEST, f"manifest geometry contradicts itself: {'; '.join(problems)}; "
                                              "refusing to load it")
        log.info("brainrt: bundle %s on %s", path.name, session.get_providers()[0])
        loaded = bundle_heads(path, manifest) if heads else {}  # each unpickled when first used
        return cls(path=path, manifest=manifest, session=session, heads=loaded, options=(opts, chosen))

    def graph_session(self, rel):
        """The session of the bundle's graph file ``rel`` (the per-patch graph's is :attr:`session`),
        created once and then reused."""
        if rel == self.manifest.onnx.file:
            return self.session
        with self._lock:
            if rel not in self._dense:
                opts, chosen = self.options
                self._dense[rel] = sessions.open_session(self.path / rel, opts, chosen)
            return self._dense[rel]

    def dense_session(self, stride, precision="fp32"):
        """The fully convolutional graph for ``stride`` (fp32, or its int8 copy), created once and then reused."""
        if precision == "int8":
            return self.graph_session(self.manifest.int8.dense_file(stride))
        return self.graph_session(self.manifest.dense_onnx.file(stride))

    def check_precision(self, precision, owner="Bundle.predictor"):
        """``precision`` if the bundle has graphs of it ("auto": :meth:`auto_precision`); else the one-line error."""
        if precision == "auto":
            return self.auto_precision()
        if precision not in PRECISIONS:
            raise param_error("precision", owner, f"one of {('auto',) + PRECISIONS}", precision)
        if precision not in self.manifest.precisions:
            raise file_error(self.path, "bundle has no int8 graphs; use precision fp32, or add them with "
                                        "tools/quantize_bundle.py (bundles exported by this brainrt have them)")
        return precision

    def auto_precision(self):
        """int8 where it pays (int8 graphs, run on a CPU with VNNI), else fp32; the log says which and why."""
        provider, has8 = self.session.get_providers()[0], "int8" in self.manifest.precisions
        why = ("the bundle has no int8 graphs" if not has8 else f"the graphs run on {provider}"
               if provider != "CPUExecutionProvider" else None if sessions.cpu_has_vnni() else "this CPU has no VNNI")
        log.info("precision fp32 (%s)" % why if why else
                 "precision int8: the bundle has int8 graphs and this CPU has VNNI (--precision fp32 for fp32)")
        return "fp32" if why else "int8"

    def predictor(self, kind="patch", *, stride=None, precision="fp32"):
        """A :mod:`~brainrt.model.predictor` over this bundle's graphs (see :func:`brainrt.model.predictor.build`)."""
        return predictor.build(self, kind, stride=stride, precision=precision)

    def predictor_for(self, plan):
        """The predictor a checked :class:`~brainrt.engine.plan.Plan` runs (its method, stride and precision)."""
        return predictor.for_plan(self, plan)

    # Convenience views of the manifest --------------------------------------------------
    @property
    def dense_strides(self) -> tuple:
        """Output strides for which the bundle has a fully convolutional graph."""
        return self.manifest.dense_strides

    @property
    def patch_size(self) -> int:
        return self.manifest.patch_size

    @property
    def class_names(self) -> list:
        return self.manifest.class_names

    @property
    def class_codes(self) -> list:
        """Mask code written for each class in label maps (the first of its codes)."""
        return self.manifest.class_codes

    @property
    def n_features(self) -> int:
        return self.manifest.n_features

    @property
    def pixel_size_um(self) -> float:
        """Pixel size of the training images, um (the manifest's; bundles that record none: the paper's 1.17)."""
        return float(self.manifest.pixel_size_um or 1.17)

    @property
    def model_id(self) -> str:
        return self.manifest.model_id

    @property
    def normalization(self):
        """The network's input normalization (:class:`~brainrt.model.manifest.Normalization`)."""
        return self.manifest.normalization

    def head(self, name):
        """The fitted head ``name``; a clear error lists the available ones."""
        if name not in self.heads:
            raise BrainrtError(
                f"{self.path}: bundle has no head {name!r}; available: {', '.join(sorted(self.heads))}"
            )
        return self.heads[name]


def _dims(arg):
    """Fixed dimensions of an ONNX input or output (None for symbolic ones)."""
    return [d if isinstance(d, int) else None for d in arg.shape]


def check_graph(path, manifest, session):
    """Refuse, in one line, a per-patch graph that disagrees with its manifest (names, input shape, output size)."""
    ins = {i.name: _dims(i) for i in session.get_inputs()}
    outs = {o.name: _dims(o) for o in session.get_outputs()}
    g, F, side = manifest.onnx, manifest.n_features, manifest.footprint
    problems = []
    if g.input not in ins:
        problems.append(f"input {g.input!r} (the graph's: {', '.join(ins)})")
    elif ins[g.input][1:] not in ([1, side, side], [None] * 3):
        problems.append(f"input (N, 1, {side}, {side}) (the graph's: {tuple(ins[g.input])})")
    if g.output not in outs:
        problems.append(f"output {g.output!r} (the graph's: {', '.join(outs)})")
    elif outs[g.output][-1] not in (F, None):
        problems.append(f"{F} features (the graph's output: {tuple(outs[g.output])})")
    if problems:
        raise file_error(path, f"manifest does not match {g.file}: it says {'; '.join(problems)}; refusing to load it")
