"""What the experiments share: the :class:`Study` state, labels, figure and format helpers,
the patches' pixels and features (:func:`cut_inputs`, :func:`features_of`) and the heads."""

from __future__ import annotations

import argparse
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from brainrt.engine.tiling import gather_patches

CLASSIFIERS = ("logreg", "linsvm", "rbfsvm")
HEAD_LABELS = {"logreg": "logistic regression", "linsvm": "linear SVM", "rbfsvm": "RBF SVM",
               "cnn": "CNN (end-to-end output layer)"}
KIND_LABELS = {"trained": "trained CNN (bundle)", "random": "random-weight CNN", "handcrafted": "hand-crafted texture",
               "resnet18": "ImageNet ResNet-18"}
DPI = 90
MAX_PNG_BYTES = 300_000

#: What the paper reports (numbers where it gives them).
PAPER = {
    "exp1": "heads on the trained features and the end-to-end CNN are comparable; the heads slightly better",
    "exp2": "no accuracy for these baselines; the paper's comparison with generic (ImageNet) features is the "
            "Gram-matrix analysis of experiment 5",
    "exp3": "unsupervised clusters of the trained features match the areas far better than those of other features",
    "exp4": "the feature-based model is robust to noise",
    "exp5_block_error": {"trained": 0.28, "inception": 0.56, "resnet18": 0.72},
    "exp5_neighbours": "neighbouring areas (Ctx-Str, VP-ZI) sit closer than distant ones (Ctx-VP)",
    "exp6": "clusters inside the cortex reveal anatomically relevant patterns (laminar structure) "
            "the network was not trained to find",
    "exp7_pixel_accuracy": 0.80,
}


def log(msg):
    print(f"[study {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def shrink_png(path, max_bytes=MAX_PNG_BYTES):
    """Re-encode a PNG as an adaptive-palette image (then downscale) until it is small."""
    from PIL import Image

    path = Path(path)
    if path.stat().st_size <= max_bytes:
        return
    img = Image.open(path).convert("RGB")
    for _ in range(6):
        q = img.quantize(colors=128, method=Image.Quantize.MEDIANCUT)
        q.save(path, optimize=True)
        if path.stat().st_size <= max_bytes:
            return
        img = img.resize((int(img.width * 0.8), int(img.height * 0.8)), Image.LANCZOS)


def save_fig(fig, path):
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    shrink_png(path)
    return Path(path).name


def plt_():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def per_class_subset(y, n, n_classes):
    """Indices of the first ``n`` items of each class (in the given order), sorted by class."""
    idx = [np.flatnonzero(y == c)[:n] for c in range(n_classes)]
    return np.concatenate(idx) if idx else np.zeros(0, np.int64)


def fmt(x, nd=3):
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "n/a"
    return f"{x:.{nd}f}"


@dataclass
class Study:
    args: argparse.Namespace
    out: Path
    command: str
    bundle: object = None
    names: list = None
    codes: list = None  # codes per class
    P: int = 0
    F: int = 0  # footprint: the pixels the trained network reads per patch (P, or its context field)
    seed: int = 0
    scale: float = 1.0
    pixel_size: float = 1.17
    workdir: str = None
    image: np.ndarray = None
    mask: np.ndarray = None
    slices: list = None
    split: dict = None  # gap, fractions
    centres: dict = field(default_factory=dict)  # split -> (N, 2) patch centres (cy, cx) in the slice
    y: dict = field(default_factory=dict)
    extractors: dict = field(default_factory=dict)
    sides: dict = field(default_factory=dict)  # kind -> side of the square each extractor reads (P or F)
    feats: dict = field(default_factory=dict)  # kind -> split -> (N, F)
    fitted: dict = field(default_factory=dict)  # kind -> head name -> estimator
    results: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    figures: dict = field(default_factory=dict)  # experiment -> [file names]
    errors: dict = field(default_factory=dict)

    @property
    def K(self):
        return len(self.names)

    def fig(self, key, name):
        self.figures.setdefault(key, []).append(name)
        return self.out / name

    def figure_links(self, key):
        """Markdown image links to the figures of experiment ``key``."""
        return "\n".join(f"![{n}]({n})" for n in self.figures.get(key, []))

    def class_pixels(self, c):
        """Pixels of the slice annotated as class ``c``."""
        return np.isin(self.mask, self.codes[c])


def cut_inputs(st, side, centres):
    """The pixels an extractor reads: the ``side`` x ``side`` square centred on each of ``centres``
    ((n, 2) int, rows ``cy - side//2 ..``), raw values as float32 ``(n, side, side)``.

    Cut by the runtime's own gather (:func:`brainrt.engine.tiling.gather_patches`, what ``brainrt.featurize``
    feeds the per-patch graph; pixels past the image edge mirrored as it mirrors them), with no
    normalization. ``side`` = P gives the trainer's patches (:func:`brainrt_train.data.extract`);
    ``side`` = the bundle's footprint gives a context network's input, the same pixels the runtime reads.
    """
    out = np.empty((len(centres), 1, side, side), np.float32)
    return gather_patches(st.image, np.asarray(centres, np.int64), side, out, scale=1.0, mean=0.0, std=1.0)[:, 0]


def features_of(st, kind, centres, *, noise=0.0, noise_seed=0):
    """Features by one extractor of the patches centred on ``centres``, each cut at the side that
    extractor reads (:func:`cut_inputs`), with optional Gaussian noise (unit intensity) on those pixels."""
    fn, side = st.extractors[kind], st.sides.get(kind, st.P)
    batch = int(np.clip(2**24 // (side * side), 16, 256))  # 256 patches of 128 px; 64 footprints of 512 px
    rng = np.random.default_rng(noise_seed) if noise else None
    out = []
    for i in range(0, len(centres), batch):
        # as the trainer: float32 pixels divided by the dtype's maximum (brainrt_train.train.to_unit)
        x = cut_inputs(st, side, centres[i : i + batch]) / np.float32(1.0 / st.scale)
        if noise:
            x = np.clip(x + rng.normal(0.0, noise, x.shape).astype(np.float32), 0.0, 1.0)
        out.append(np.asarray(fn(x), np.float32))
    return np.concatenate(out) if out else np.zeros((0, 1), np.float32)


def make_classifiers(st):
    """The bundle's classifier heads, unfitted (RBF SVM without Platt scaling: same predictions)."""
    from brainrt_train.heads import make_heads

    heads = make_heads(n_classes=st.K, seed=st.seed)
    heads["rbfsvm"].set_params(svc__probability=False)
    return {k: heads[k] for k in CLASSIFIERS}


class Caught:
    """Collect the warnings (e.g. convergence) raised inside a block, by category name."""

    def __enter__(self):
        self._cm = warnings.catch_warnings(record=True)
        self.rec = self._cm.__enter__()
        warnings.simplefilter("always")
        return self

    def __exit__(self, *exc):
        self._cm.__exit__(*exc)
        self.names = sorted({w.category.__name__ for w in self.rec if w.category.__name__ != "FutureWarning"})
        return False
