#!/usr/bin/env python3
"""Reproduce the experiments of Balwani & Dyer, "Modeling variability in brain architecture
with deep feature learning" (Asilomar 2019), with a brainrt model bundle.

    python tools/study.py --model models/slice309-paper6 --image ../shared/data/slice309.tif \\
        --mask ../shared/data/slice309_areas.tif -o docs/study

writes ``REPORT.md`` (the command at the top, every number next to the paper's),
``results.json`` (all numbers) and small PNG figures into the output folder.

The train/val/test patches are the bundle's own: they are re-created from the seed, patch
size, counts, gap and class map recorded in the bundle manifest, with the trainer's own
sampling code. Experiments:

1. heads (logreg, linear SVM, RBF SVM) on the trained features vs the CNN's own output;
2. the same heads refit on baseline features (random-weight CNN, hand-crafted textures,
   ImageNet ResNet-18 when ``--resnet18-weights`` is given);
3. unsupervised GMM clusters vs areas (V-measure);
4. robustness of logistic regression to Gaussian noise on the test images;
5. structure: Gram matrices, block-diagonal error, class-mean similarities, 3D PCA;
6. sub-division of the cortex into clusters and their relation to cortical depth;
7. at scale: whole-slice area map against the annotation.

``--quick`` runs everything on few patches and coarse grids (for tests).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import study_features as sf  # noqa: E402

NOISE_LEVELS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5)
CLASSIFIERS = ("logreg", "linsvm", "rbfsvm")
HEAD_LABELS = {"logreg": "logistic regression", "linsvm": "linear SVM", "rbfsvm": "RBF SVM",
               "cnn": "CNN (end-to-end output layer)"}
KIND_LABELS = {"trained": "trained CNN (bundle)", "random": "random-weight CNN", "handcrafted": "hand-crafted texture",
               "resnet18": "ImageNet ResNet-18"}
#: Neighbouring and distant area pairs of the paper's six areas (for experiment 5).
NEAR_PAIRS = (("Ctx", "Str"), ("VP", "ZI"))
FAR_PAIR = ("Ctx", "VP")
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


# =========================================================================== helpers
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


def cut_inputs(st, side, centres):
    """The pixels an extractor reads: the ``side`` x ``side`` square centred on each of ``centres``
    ((n, 2) int, rows ``cy - side//2 ..``), raw values as float32 ``(n, side, side)``.

    Cut by the runtime's own gather (:func:`brainrt.tiling.gather_patches`, what ``brainrt.featurize``
    feeds the per-patch graph; pixels past the image edge mirrored as it mirrors them), with no
    normalization. ``side`` = P gives the trainer's patches (:func:`brainrt_train.data.extract`);
    ``side`` = the bundle's footprint gives a context network's input, the same pixels the runtime reads.
    """
    from brainrt.tiling import gather_patches

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


def make_gmm(st, dim, n_samples):
    from sklearn.decomposition import PCA
    from sklearn.mixture import GaussianMixture
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    steps = [StandardScaler()]
    if dim > 64:
        steps.append(PCA(min(64, n_samples - 1), random_state=st.seed))
    steps.append(GaussianMixture(st.K, covariance_type="full", reg_covar=1e-3, n_init=2, random_state=st.seed))
    return make_pipeline(*steps)


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


# =========================================================================== setup
def setup(st):
    """Load the bundle and the slice; re-create the bundle's split and cut out the patches."""
    from brainrt.bundle import Bundle
    from brainrt.io import read_tiff
    from brainrt.plan import DEFAULT_PIXEL_SIZE_UM, intensity_scale
    from brainrt_train.data import ClassMap, load_slice, sample_patches

    a = st.args
    if a.threads:  # the runtime's gathers (numba) too
        import numba

        numba.set_num_threads(max(1, min(a.threads, numba.config.NUMBA_NUM_THREADS)))
    st.bundle = b = Bundle.load(a.model, threads=a.threads)
    m = b.manifest
    tr = m.training
    st.names, st.P, st.F = list(b.class_names), b.patch_size, m.footprint
    st.codes = m.codes_per_class
    st.seed = int(tr.seed)
    cmap = ClassMap.from_dict(m.class_map, source=f"{a.model}/manifest.json")
    if len(tr.data) != 1:
        raise SystemExit(f"the bundle was trained on {len(tr.data)} slices; this tool handles one-slice bundles")
    sl = load_slice(a.image, a.mask, cmap)
    st.slices = [sl]
    st.image = sl.image
    st.mask, _ = read_tiff(a.mask, what="label mask")
    st.pixel_size = a.pixel_size or read_tiff(a.image)[1] or DEFAULT_PIXEL_SIZE_UM
    st.scale = intensity_scale(st.image.dtype)
    d0 = tr.data[0]
    same_data = {"image": sl.sha256["image"] == d0.image_sha256, "mask": sl.sha256["mask"] == d0.mask_sha256}
    if not all(same_data.values()):
        st.notes.append("The image/mask given differ from the bundle's training data (sha256), so the "
                        "re-created patches are NOT the bundle's.")
    gap, fractions = tr.gap, tr.fractions
    n_per_class = {s: tr.asked(s) for s in ("train", "val", "test")}
    st.split = {"gap": gap, "fractions": fractions, "n_per_class": n_per_class}
    t = time.perf_counter()
    sets, report = sample_patches(st.slices, n_classes=st.K, patch_size=st.P, n_per_class=n_per_class, gap=gap,
                                  fractions=fractions, seed=st.seed)
    taken = {s: {st.names[c]: v["taken"] for c, v in report["per_split"][s].items()} for s in ("train", "val", "test")}
    manifest_taken = {s: tr.taken(s) for s in ("train", "val", "test")}
    log(f"re-created the split in {time.perf_counter() - t:.1f} s: test per class {taken['test']}")
    quick = a.quick
    limits = {"train": a.max_train_per_class or (40 if quick else None),
              "test": a.max_test_per_class or (20 if quick else None)}
    for s in ("train", "test"):
        ps = sets[s]
        idx = np.arange(len(ps)) if limits[s] is None else np.sort(per_class_subset(ps.labels, limits[s], st.K))
        st.centres[s] = np.asarray(ps.centres[idx], np.int64)  # one slice: slice_idx is 0
        st.y[s] = ps.labels[idx].astype(np.int64)
    hist = []
    mpath = Path(a.model) / "metrics.json"
    if mpath.is_file():
        hist = json.loads(mpath.read_text()).get("history", [])
    training = {"epochs_run": tr.epochs_run, "epochs": tr.epochs, "lr": tr.lr, "schedule": tr.schedule}
    if hist:
        training.update(final_train_accuracy=hist[-1].get("train_acc"),
                        best_val_accuracy=max(h.get("val_acc", 0) for h in hist))
    st.results["setup"] = {
        "training": training,
        "bundle": str(a.model), "model_id": b.model_id, "classes": st.names, "codes": st.codes,
        "patch_size": st.P, "footprint": st.F, "context": m.context.to_dict() if m.context else None,
        "normalization": b.normalization.to_dict(), "seed": st.seed, "gap": gap,
        "fractions": list(fractions), "image": str(a.image), "mask": str(a.mask),
        "image_sha256_matches_bundle": same_data["image"], "mask_sha256_matches_bundle": same_data["mask"],
        "split_counts_recreated": taken, "split_counts_manifest": manifest_taken,
        "split_matches_manifest": taken == manifest_taken,
        "used_per_split": {s: int(len(st.y[s])) for s in ("train", "test")},
        "used_per_class": {s: {st.names[c]: int((st.y[s] == c).sum()) for c in range(st.K)} for s in ("train", "test")},
        "quick": bool(quick), "threads": a.threads or os.cpu_count(),
        "bundle_metrics": m.metrics,
    }
    log(f"bundle {b.model_id}: {st.K} classes {st.names}, P={st.P}"
        + (f", context branch: footprint {st.F} px" if m.context else "") + f"; using {len(st.y['train'])} train / "
        f"{len(st.y['test'])} test patches")


def build_extractors(st):
    import torch

    torch.set_num_threads(st.args.threads or os.cpu_count() or 1)
    st.extractors["trained"] = sf.trained_extractor(st.bundle)
    st.sides["trained"] = st.F  # the network's own input: the patch, or its context footprint
    st.extractors["random"] = sf.random_cnn_extractor(st.K, st.P, st.bundle.normalization.to_dict(), seed=st.args.baseline_seed,
                                                      workdir=None if st.args.quick else st.workdir,
                                                      threads=st.args.threads)
    st.extractors["handcrafted"] = sf.handcrafted_extractor()
    if st.args.resnet18_weights:
        st.extractors["resnet18"] = sf.resnet18_extractor(st.args.resnet18_weights, patch_size=st.P,
                                                          workdir=None if st.args.quick else st.workdir,
                                                          threads=st.args.threads)
    else:
        st.notes.append("ImageNet ResNet-18 baseline skipped: no --resnet18-weights given (torchvision is not "
                        "installed and nothing is downloaded).")


def compute_features(st):
    """Features of the train and test patches for every feature type."""
    info = {}
    for kind in st.extractors:
        t = time.perf_counter()
        st.feats[kind] = {s: features_of(st, kind, st.centres[s]) for s in ("train", "test")}
        dt = time.perf_counter() - t
        n = sum(len(v) for v in st.feats[kind].values())
        info[kind] = {"dim": int(st.feats[kind]["train"].shape[1]), "seconds": round(dt, 1),
                      "patches_per_s": round(n / dt, 1) if dt else None}
        log(f"features {kind}: {n} patches, {info[kind]['dim']} dims, {dt:.1f} s")
    st.results["features"] = info


# =========================================================================== experiments
def exp1_heads(st):
    """Test accuracy of the bundle's heads on the trained features vs the CNN's own output."""
    from sklearn.metrics import f1_score

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
    from sklearn.metrics import confusion_matrix

    from brainrt.plots import confusion_png

    for name in ("logreg", "cnn"):
        cm = confusion_matrix(y, b.head(name).predict(f), labels=list(range(st.K)))
        p = st.fig("exp1", f"exp1_confusion_{name}.png")
        confusion_png(p, cm, st.names, title=f"{HEAD_LABELS[name]}: test accuracy {res[name]['test_accuracy']:.3f}")
        shrink_png(p)
    st.results["exp1_heads"] = res
    log("exp1: " + ", ".join(f"{k} {res[k]['test_accuracy']:.3f}" for k in CLASSIFIERS + ("cnn",)))


def exp2_baselines(st):
    """The same heads refit on baseline features of the same patches."""
    res = {"trained": {h: st.results.get("exp1_heads", {}).get(h, {}).get("test_accuracy") for h in CLASSIFIERS}}
    res["trained"]["note"] = "the bundle's fitted heads (exp. 1)"
    res["trained"]["logreg_train_accuracy"] = float(
        (st.bundle.head("logreg").predict(st.feats["trained"]["train"]) == st.y["train"]).mean())
    for kind in st.feats:
        if kind == "trained":
            continue
        ftr, fte = st.feats[kind]["train"], st.feats[kind]["test"]
        res[kind] = {}
        st.fitted[kind] = {}
        for name, est in make_classifiers(st).items():
            t = time.perf_counter()
            with Caught() as c:
                est.fit(ftr, st.y["train"])
            acc = float((est.predict(fte) == st.y["test"]).mean())
            res[kind][name] = acc
            st.fitted[kind][name] = est
            if c.names:
                res[kind].setdefault("warnings", {})[name] = c.names
            log(f"exp2: {kind} {name} {acc:.3f} ({time.perf_counter() - t:.1f} s)")
        res[kind]["logreg_train_accuracy"] = float((st.fitted[kind]["logreg"].predict(ftr) == st.y["train"]).mean())
        res[kind]["dim"] = int(ftr.shape[1])
        res[kind]["dead_features"] = int((ftr.std(0) == 0).sum())
    st.results["exp2_baselines"] = res
    # bar chart
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


def exp3_unsupervised(st):
    """GMM (one component per area) fitted on training features; V-measure of test clusters."""
    from sklearn.metrics import adjusted_rand_score, v_measure_score

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
    kinds = list(res)
    best = max(kinds, key=lambda k: res[k]["v_measure"])
    res["best"] = best
    st.results["exp3_unsupervised"] = res


def exp4_noise(st):
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
    st.results["exp4_noise"] = res
    plt = plt_()
    fig, ax = plt.subplots(figsize=(5.5, 3.4), dpi=DPI)
    for kind, accs in res["accuracy"].items():
        ax.plot(levels, accs, "o-", label=KIND_LABELS[kind])
    ax.axhline(1 / st.K, color="gray", ls=":", lw=1, label="chance")
    ax.set_xlabel("noise std (unit intensity)")
    ax.set_ylabel("logistic-regression test accuracy")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    ax.set_title(f"Noise robustness ({len(idx)} test patches)", fontsize=10)
    save_fig(fig, st.fig("exp4", "exp4_noise.png"))
    # no example patches: crops of the user's data do not belong in a committed report


def _gram_space(kind, ftr, f):
    """Nonnegative features comparable across dimensions: CNN features as they are (ReLU
    outputs); hand-crafted ones min-max scaled by the training range."""
    if kind == "handcrafted":
        lo, hi = ftr.min(0), ftr.max(0)
        return np.clip((f - lo) / np.where(hi > lo, hi - lo, 1.0), 0, 1)
    return f


def _l2(f):
    return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)


def _cos(a, b):
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))


def exp5_structure(st):
    """Gram matrices, block-diagonal error, class-mean similarities and a 3D PCA."""
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    plt = plt_()
    n = st.args.gram_per_class or (10 if st.args.quick else 100)
    idx = per_class_subset(st.y["test"], n, st.K)
    y = st.y["test"][idx]
    D = (y[:, None] == y[None, :]).astype(np.float64)
    N = len(idx)
    res = {"per_class": n, "n": int(N), "block_error": {}, "block_error_zscored": {}, "class_mean_cosine": {},
           "class_mean_cosine_centred": {}, "neighbours": {}}
    kinds = list(st.feats)
    pca_pts = {}
    for kind in kinds:
        ftr, fte = st.feats[kind]["train"], st.feats[kind]["test"]
        X = _l2(_gram_space(kind, ftr, fte[idx]).astype(np.float64))
        G = X @ X.T
        res["block_error"][kind] = float(np.linalg.norm(G - D) / N)
        sc = StandardScaler().fit(ftr)
        Z = _l2(sc.transform(fte[idx]).astype(np.float64))
        res["block_error_zscored"][kind] = float(np.linalg.norm(Z @ Z.T - D) / N)
        # class means over all test patches
        g_all = _gram_space(kind, ftr, fte)
        z_all = sc.transform(fte)
        means = [g_all[st.y["test"] == c].mean(0) for c in range(st.K)]
        zmeans = [z_all[st.y["test"] == c].mean(0) for c in range(st.K)]
        S = np.array([[_cos(a, b) for b in means] for a in means])
        Sc = np.array([[_cos(a, b) for b in zmeans] for a in zmeans])
        res["class_mean_cosine"][kind] = S.round(4).tolist()
        res["class_mean_cosine_centred"][kind] = Sc.round(4).tolist()
        res["neighbours"][kind] = {"raw": _neighbour_verdict(st.names, S), "centred": _neighbour_verdict(st.names, Sc)}
        pca_pts[kind] = PCA(3, random_state=st.seed).fit(sc.transform(ftr)).transform(sc.transform(fte[idx]))
        # Gram figure
        fig, ax = plt.subplots(figsize=(4.2, 3.8), dpi=DPI)
        im = ax.imshow(G, cmap="viridis", vmin=min(0.0, float(G.min())), vmax=1, interpolation="nearest")
        edges = np.cumsum([np.sum(y == c) for c in range(st.K)])[:-1] - 0.5
        for e in edges:
            ax.axhline(e, color="w", lw=0.6)
            ax.axvline(e, color="w", lw=0.6)
        mids = [np.mean(np.flatnonzero(y == c)) for c in range(st.K) if np.any(y == c)]
        ax.set_xticks(mids, [st.names[c] for c in range(st.K) if np.any(y == c)], fontsize=7, rotation=45)
        ax.set_yticks(mids, [st.names[c] for c in range(st.K) if np.any(y == c)], fontsize=7)
        fig.colorbar(im, ax=ax, fraction=0.046)
        ax.set_title(f"{KIND_LABELS[kind]}\nGram of L2-normalized features, error {res['block_error'][kind]:.2f}",
                     fontsize=8)
        save_fig(fig, st.fig("exp5", f"exp5_gram_{kind}.png"))
        log(f"exp5: {kind} block error {res['block_error'][kind]:.3f} (z-scored {res['block_error_zscored'][kind]:.3f})")
    # class-mean similarity figure
    fig, axs = plt.subplots(1, len(kinds), figsize=(3.3 * len(kinds), 3.2), dpi=DPI, squeeze=False)
    for ax, kind in zip(axs[0], kinds):
        S = np.array(res["class_mean_cosine"][kind])
        ax.imshow(S, cmap="magma", vmin=min(0.0, S.min()), vmax=1)
        for i in range(st.K):
            for j in range(st.K):
                ax.text(j, i, f"{S[i, j]:.2f}", ha="center", va="center", fontsize=6,
                        color="black" if S[i, j] > 0.6 else "white")
        ax.set_xticks(range(st.K), st.names, fontsize=7, rotation=45)
        ax.set_yticks(range(st.K), st.names, fontsize=7)
        ax.set_title(KIND_LABELS[kind], fontsize=8)
    fig.suptitle("Cosine similarity of class-mean features", fontsize=9)
    save_fig(fig, st.fig("exp5", "exp5_class_similarity.png"))
    # 3D PCA
    from brainrt.plots import class_colors

    colors = class_colors(st.K)
    fig = plt.figure(figsize=(3.6 * len(kinds), 3.6), dpi=DPI)
    for i, kind in enumerate(kinds):
        ax = fig.add_subplot(1, len(kinds), i + 1, projection="3d")
        p = pca_pts[kind]
        for c in range(st.K):
            s = y == c
            ax.scatter(p[s, 0], p[s, 1], p[s, 2], s=4, color=colors[c], label=st.names[c], depthshade=False)
        ax.set_title(KIND_LABELS[kind], fontsize=8)
        ax.tick_params(labelsize=5)
        if i == 0:
            ax.legend(fontsize=6, markerscale=2, loc="upper left")
    fig.suptitle("First three principal components (z-scored features, test patches)", fontsize=9)
    save_fig(fig, st.fig("exp5", "exp5_pca3d.png"))
    st.results["exp5_structure"] = res


def _neighbour_verdict(names, S):
    """Are neighbouring areas more similar than the distant pair? (None when an area is absent.)"""
    ix = {n: i for i, n in enumerate(names)}
    if not all(a in ix and b in ix for a, b in NEAR_PAIRS + (FAR_PAIR,)):
        return None
    far = float(S[ix[FAR_PAIR[0]], ix[FAR_PAIR[1]]])
    near = {f"{a}-{b}": float(S[ix[a], ix[b]]) for a, b in NEAR_PAIRS}
    return {"near": near, "far": {f"{FAR_PAIR[0]}-{FAR_PAIR[1]}": far},
            "neighbours_closer": bool(all(v > far for v in near.values()))}


# --------------------------------------------------------------------------- exp 6
def tissue_mask(image):
    """Tissue = Otsu threshold of the lightly smoothed image, small specks removed, holes filled."""
    from scipy import ndimage

    from brainrt.tissue import otsu_threshold

    sm = ndimage.gaussian_filter(image.astype(np.float32), 2.0)
    t = otsu_threshold(sm)
    fg = sm > t
    lab, n = ndimage.label(fg)
    if n > 1:
        sizes = ndimage.sum(fg, lab, index=np.arange(1, n + 1))
        keep = np.zeros(n + 1, bool)
        keep[1:] = sizes >= 0.05 * sizes.max()
        fg = keep[lab]
    return ndimage.binary_fill_holes(fg), float(t)


def _class_pixels(st, c):
    return np.isin(st.mask, st.codes[c])


def _ray_to_background(tissue, y, x, uy, ux):
    """Pixels travelled from each (y, x) along the unit direction (uy, ux) until the first
    background pixel (NaN when the ray leaves the image first or has no direction)."""
    H, W = tissue.shape
    dist = np.full(len(y), np.nan)
    active = np.flatnonzero((uy != 0) | (ux != 0))
    for k in range(1, H + W):
        if not active.size:
            break
        iy = np.rint(y[active] + k * uy[active]).astype(np.int64)
        ix = np.rint(x[active] + k * ux[active]).astype(np.int64)
        outside = (iy < 0) | (iy >= H) | (ix < 0) | (ix >= W)
        hit = ~outside
        hit[hit] = ~tissue[iy[hit], ix[hit]]
        dist[active[hit]] = k
        active = active[~(hit | outside)]
    return dist


def depth_of_cells(st, y, x):
    """Depth measures (per cell centre, full-image pixel coordinates) and a diagnostic.

    - surface_um: Euclidean distance transform of the tissue mask (distance to the nearest
      background pixel, wherever it is);
    - white_matter_um: distance to the nearest pixel of the WM class;
    - surface_ray_um: distance to background along the direction pointing away from the
      nearest white-matter pixel (reaches the pial surface, not a cut edge beside the cortex);
    - relative: surface_ray / (surface_ray + white_matter), 0 at the surface, 1 at the WM.
    """
    from scipy import ndimage

    px = st.pixel_size
    tissue, thr = tissue_mask(st.image)
    d_bg, (by, bx) = ndimage.distance_transform_edt(tissue, return_indices=True)
    depths = {"surface_um": d_bg[y, x] * px}
    info = {"tissue_threshold": thr}
    wm = [i for i, n in enumerate(st.names) if n.upper() in ("WM", "WHITE MATTER", "WHITE_MATTER")]
    wm_px = _class_pixels(st, wm[0]) if wm else None
    if wm_px is not None and wm_px.any():
        d_wm, (wy, wx) = ndimage.distance_transform_edt(~wm_px, return_indices=True)
        dw = d_wm[y, x]
        vy, vx = y - wy[y, x], x - wx[y, x]
        norm = np.maximum(np.hypot(vy, vx), 1e-9)
        uy, ux = np.where(dw > 0, vy / norm, 0.0), np.where(dw > 0, vx / norm, 0.0)
        ray = _ray_to_background(tissue, y.astype(np.float64), x.astype(np.float64), uy, ux)
        depths["white_matter_um"] = dw * px
        depths["surface_ray_um"] = ray * px
        depths["relative"] = ray / np.maximum(ray + dw, 1e-9)
        # is the nearest background pixel the one away from the white matter (pial-like)?
        gy, gx = by[y, x] - y, bx[y, x] - x
        cos = (gy * uy + gx * ux) / np.maximum(np.hypot(gy, gx), 1e-9)
        info["nearest_background_away_from_wm_fraction"] = float(np.mean(cos > np.cos(np.pi / 4)))
        info["ray_left_image_fraction"] = float(np.mean(~np.isfinite(ray)))
    return depths, info


def exp6_subdivision(st):
    """PCA + KMeans of dense trained features inside the cortex; clusters vs cortical depth."""
    import brainrt
    from brainrt.geometry import cell_centre

    a = st.args
    name = a.subdivide_class if a.subdivide_class in st.names else st.names[0]
    if name != a.subdivide_class:
        st.notes.append(f"Class {a.subdivide_class!r} not in the bundle; sub-divided {name!r} instead.")
    c = st.names.index(name)
    stride = a.subdiv_stride * (2 if a.quick else 1)
    region_px = _class_pixels(st, c)
    P = st.P
    ys, xs = np.nonzero(region_px)
    H, W = st.image.shape
    m = st.F // 2 + stride  # every pixel a cell's footprint reads (the context field too), not a mirror
    y0, y1 = max(0, ys.min() - m), min(H, ys.max() + 1 + m)
    x0, x1 = max(0, xs.min() - m), min(W, xs.max() + 1 + m)
    if a.quick:  # cap the crop for speed
        cap = 8 * P
        cy, cx = (y0 + y1) // 2, (x0 + x1) // 2
        y0, y1 = max(y0, cy - cap // 2), min(y1, cy + cap // 2)
        x0, x1 = max(x0, cx - cap // 2), min(x1, cx + cap // 2)
    crop = st.image[y0:y1, x0:x1]
    creg = region_px[y0:y1, x0:x1]
    t = time.perf_counter()
    grid = brainrt.featurize(crop, st.bundle, stride=stride, tissue=creg, min_tissue=1e-9)
    t_feat = time.perf_counter() - t
    R, C = grid.shape
    cy_ = np.minimum(cell_centre(np.arange(R), stride), crop.shape[0] - 1)
    cx_ = np.minimum(cell_centre(np.arange(C), stride), crop.shape[1] - 1)
    region = creg[np.ix_(cy_, cx_)]
    sub = brainrt.subdivide(grid, region=region, k=a.k, seed=st.seed)
    sel = sub >= 0
    lab = sub[sel]
    gy, gx = np.nonzero(sel)  # row-major, as sub[sel]
    depths, info = depth_of_cells(st, cy_[gy] + y0, cx_[gx] + x0)
    res = {"class": name, "stride": stride, "k": a.k, "crop": [int(y0), int(y1), int(x0), int(x1)],
           "cells": int(sel.sum()), "featurize_seconds": round(t_feat, 1), **info,
           "depth_definitions": {
               "surface_um": "distance to the nearest background pixel: Euclidean distance transform "
                             "(scipy.ndimage.distance_transform_edt) of the tissue mask (Otsu threshold of the image "
                             "smoothed with sigma 2 px, small specks removed, holes filled)",
               "white_matter_um": "distance to the nearest pixel annotated as white matter (WM class)",
               "surface_ray_um": "distance to the first background pixel along the direction pointing away from the "
                                 "nearest white-matter pixel (reaches the pial surface rather than a cut edge)",
               "relative": "surface_ray / (surface_ray + white_matter): 0 at the pial surface, 1 at the white matter"},
           "per_depth": {}}
    for key, d in depths.items():
        res["per_depth"][key] = _depth_stats(lab, d, a.k)
    res["primary_depth"] = "relative" if "relative" in depths else "surface_um"
    # controls: how much of the cells' image row / column the clusters explain
    res["controls"] = {"row_px": _depth_stats(lab, (cy_[gy] + y0).astype(np.float64), a.k),
                       "column_px": _depth_stats(lab, (cx_[gx] + x0).astype(np.float64), a.k)}
    res["cluster_fraction"] = {int(i): float((lab == i).mean()) for i in range(a.k)}
    st.results["exp6_subdivision"] = res
    log(f"exp6: {res['cells']} {name} cells at stride {stride} ({t_feat:.1f} s featurize); " + ", ".join(
        f"{k}: eta2 {v['eta_squared']:.3f} NMI {v['nmi_deciles']:.3f}" for k, v in res["per_depth"].items()))
    _exp6_figure(st, crop, sub, stride, {k: v for k, v in depths.items() if k != "surface_ray_um"}, lab, res)


def _depth_stats(lab, d, k):
    from sklearn.metrics import normalized_mutual_info_score

    d = np.asarray(d, np.float64)
    ok = np.isfinite(d)
    d, lab = d[ok], lab[ok]
    if d.size < 2:
        return {"eta_squared": float("nan"), "nmi_deciles": float("nan"), "mean_per_cluster": {},
                "std_per_cluster": {}, "range": None, "n": int(d.size)}
    tot = ((d - d.mean()) ** 2).sum()
    between = sum(((lab == i).sum() * (d[lab == i].mean() - d.mean()) ** 2) for i in range(k) if np.any(lab == i))
    edges = np.unique(np.quantile(d, np.linspace(0, 1, 11)[1:-1]))
    bins = np.searchsorted(edges, d, side="right")
    return {"eta_squared": float(between / tot) if tot > 0 else float("nan"),
            "nmi_deciles": float(normalized_mutual_info_score(bins, lab)),
            "mean_per_cluster": {int(i): float(d[lab == i].mean()) for i in range(k) if np.any(lab == i)},
            "std_per_cluster": {int(i): float(d[lab == i].std()) for i in range(k) if np.any(lab == i)},
            "range": [float(d.min()), float(d.max())], "n": int(d.size)}


def _exp6_figure(st, crop, sub, stride, depths, lab, res):
    from brainrt.api import upsample
    from brainrt.plots import class_colors

    plt = plt_()
    k = res["k"]
    colors = class_colors(k)
    step = max(1, int(np.ceil(max(crop.shape) / 560)))
    full = upsample(sub, stride, crop.shape)[::step, ::step]
    img = crop[::step, ::step].astype(np.float32)
    lo, hi = np.percentile(img, (1, 99.5))
    g = np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1)
    rgb = np.repeat(g[..., None], 3, axis=2)
    s = full >= 0
    rgb[s] = 0.5 * rgb[s] + 0.5 * colors[full[s]]
    keys = list(depths)
    fig, axs = plt.subplots(1, 1 + len(keys), figsize=(5.6 + 2.6 * len(keys), 3.7), dpi=DPI,
                            gridspec_kw={"width_ratios": [2.4] + [1] * len(keys)})
    axs[0].imshow(rgb, interpolation="nearest")
    axs[0].set_title(f"{res['class']}: k={k} clusters (stride {stride})", fontsize=8)
    axs[0].set_axis_off()
    from matplotlib.patches import Patch

    axs[0].legend(handles=[Patch(color=colors[i], label=f"cluster {i}") for i in range(k)], fontsize=6,
                  loc="lower left", framealpha=0.7)
    labels = {"surface_um": "distance to background (um)", "white_matter_um": "distance to white matter (um)",
              "relative": "relative depth (0 surface, 1 WM)"}
    for ax, key in zip(axs[1:], keys):
        ok = np.isfinite(depths[key])
        d, lab_k = depths[key][ok], lab[ok]
        if d.size < 2:
            continue
        edges = np.linspace(d.min(), d.max() + 1e-9, 13)
        b = np.clip(np.searchsorted(edges, d, side="right") - 1, 0, len(edges) - 2)
        frac = np.zeros((len(edges) - 1, k))
        for j in range(len(edges) - 1):
            if np.any(b == j):
                frac[j] = np.bincount(lab_k[b == j], minlength=k) / np.sum(b == j)
        mids = 0.5 * (edges[1:] + edges[:-1])
        ax.stackplot(mids, frac.T, colors=colors[:k], alpha=0.9)
        ax.set_xlabel(labels[key], fontsize=8)
        ax.set_ylabel("cluster fraction", fontsize=8)
        ax.set_ylim(0, 1)
        ax.tick_params(labelsize=7)
        st_ = res["per_depth"][key]
        ax.set_title(f"eta2 {st_['eta_squared']:.2f}, NMI {st_['nmi_deciles']:.2f}", fontsize=8)
    save_fig(fig, st.fig("exp6", "exp6_subdivision.png"))


# --------------------------------------------------------------------------- exp 7
def exp7_scale(st):
    """Whole-slice area map (logreg head) against the annotation."""
    import brainrt
    from brainrt.api import pixel_metrics, upsample
    from brainrt.plots import confusion_png, overlay_png
    from brainrt_train.data import eligible_positions, footprints

    a = st.args
    stride = max(a.stride * 2, 32) if a.quick else a.stride
    t = time.perf_counter()
    grid = brainrt.featurize(st.image, st.bundle, stride=stride)
    t_feat = time.perf_counter() - t
    result = brainrt.classify(grid, st.bundle, head="logreg")
    codes = np.asarray(result.codes, np.int16)
    cell_codes = np.where(result.labels >= 0, codes[np.clip(result.labels, 0, None)], -1).astype(np.int16)
    pred = upsample(cell_codes, stride, st.image.shape)
    # held-out (test-eligible) and training-eligible footprints of the split
    cand, _ = eligible_positions(st.slices, n_classes=st.K, patch_size=st.P, gap=st.split["gap"],
                                 fractions=st.split["fractions"], seed=st.seed)
    regions = {}
    for s in ("test", "train"):
        cm = np.zeros(st.image.shape, bool)
        for arrs in cand[s]:
            for arr in arrs:
                cm[arr[:, 1], arr[:, 2]] = True
        regions[s] = footprints(cm, st.P)
    kw = dict(names=st.names, codes_per_class=st.codes)
    res = {"stride": stride, "head": "logreg", "cells": int(grid.valid.sum()), "featurize_seconds": round(t_feat, 1),
           "featurize_method": grid.stats.get("method"), "labeled": pixel_metrics(pred, st.mask, **kw),
           "held_out": pixel_metrics(pred, st.mask, where=regions["test"], **kw),
           "train_region": pixel_metrics(pred, st.mask, where=regions["train"], **kw)}
    st.results["exp7_scale"] = res
    log(f"exp7: stride {stride}, {res['cells']} cells ({t_feat:.1f} s featurize); pixel accuracy labeled "
        f"{res['labeled']['pixel_accuracy']:.3f}, held-out {res['held_out']['pixel_accuracy']:.3f}, "
        f"train region {res['train_region']['pixel_accuracy']:.3f}")
    labels_full = upsample(result.labels, stride, st.image.shape)
    p = st.fig("exp7", "exp7_area_map.png")
    overlay_png(p, st.image, labels_full, st.names, max_side=1400,
                title=f"logreg area map, stride {stride}: pixel accuracy {res['labeled']['pixel_accuracy']:.3f} "
                      f"(labeled), {res['held_out']['pixel_accuracy']:.3f} (held-out)")
    shrink_png(p)
    truth = np.full(st.image.shape, -1, np.int16)
    for c in range(st.K):
        truth[_class_pixels(st, c)] = c
    p = st.fig("exp7", "exp7_annotation.png")
    overlay_png(p, st.image, truth, st.names, max_side=1400, title="annotation (classes of the bundle)")
    shrink_png(p)
    p = st.fig("exp7", "exp7_heldout_region.png")
    overlay_png(p, st.image, np.where(regions["test"], 0, np.where(regions["train"], 1, -1)),
                ["held-out (test footprints)", "training footprints"], max_side=1400,
                title="split regions used for the held-out accuracy")
    shrink_png(p)
    p = st.fig("exp7", "exp7_confusion.png")
    confusion_png(p, res["labeled"]["confusion_matrix"], st.names,
                  title=f"pixels vs annotation (accuracy {res['labeled']['pixel_accuracy']:.3f})")
    shrink_png(p)


# =========================================================================== report
def _report_header(st, w, total_seconds):
    """Title, the command, setup."""
    R = st.results
    w("# Balwani & Dyer (2019) reproduced with brainrt")
    w("")
    w("Command (rerun it to regenerate this folder):")
    w("")
    w("```")
    w(st.command)
    w("```")
    w("")
    s = R.get("setup", {})
    w(f"Generated {time.strftime('%Y-%m-%d %H:%M')} in {total_seconds / 60:.1f} min on {s.get('threads')} CPU threads"
      + (" — **quick mode: few patches, coarse grids; numbers are not meaningful**" if st.args.quick else "") + ".")
    w("Paper: A. H. Balwani, E. L. Dyer, \"Modeling variability in brain architecture with deep feature learning\", "
      "Asilomar 2019. Data: Prasad et al. 2020 (CC BY 4.0), slice z=309. Where the paper gives no number its "
      "qualitative claim is quoted.")
    w("")
    if st.errors:
        w("**Experiments that failed:** " + ", ".join(f"{k} ({v})" for k, v in st.errors.items()))
        w("")
    w("## Setup")
    w("")
    if s:
        w(f"- Bundle `{s['bundle']}` (model id `{s['model_id']}`), classes {', '.join(s['classes'])}, "
          f"patch {s['patch_size']} px, seed {s['seed']}, split gap {s['gap']} px, fractions {s['fractions']}.")
        ctx = s.get("context")
        if ctx:
            w(f"- The bundle has a **context branch** (footprint {ctx['footprint']} px): its network reads the "
              f"{ctx['footprint']} px field around each {s['patch_size']} px patch (same centre; the field averaged "
              f"{ctx['factor']} x {ctx['factor']} inside the graph). The trained-CNN features are computed on each "
              f"patch's {ctx['footprint']} px footprint, cut by the runtime's own gather (the pixels "
              "`brainrt.featurize` reads; mirrored past the image edge) and normalized as the manifest says; the baselines "
              f"(random-weight CNN, hand-crafted, ResNet-18) see only the {s['patch_size']} px patch, so the trained "
              "features draw on more pixels than theirs.")
        else:
            w(f"- Single-scale bundle: every feature type reads the same {s['patch_size']} px patch.")
        w(f"- Data: `{s['image']}` / `{s['mask']}`; sha256 equal to the bundle's training data: image "
          f"{'yes' if s['image_sha256_matches_bundle'] else 'NO'}, mask {'yes' if s['mask_sha256_matches_bundle'] else 'NO'}.")
        w(f"- Split re-created with `brainrt_train.data.sample_patches` from the manifest; per-class counts equal "
          f"to the manifest's: **{'yes' if s['split_matches_manifest'] else 'NO'}**. Patches used here: "
          f"train {s['used_per_split']['train']}, test {s['used_per_split']['test']} "
          f"(test per class: {', '.join(f'{k} {v}' for k, v in s['used_per_class']['test'].items())}).")
        t = s.get("training", {})
        if t.get("best_val_accuracy") is not None:
            w(f"- The bundle's training: {t['epochs_run']} of {t['epochs']} epochs, lr {t['lr']} ({t['schedule']}); "
              f"last-epoch training accuracy {fmt(t['final_train_accuracy'])} (augmented patches), best validation "
              f"accuracy {fmt(t['best_val_accuracy'])} (the checkpoint kept).")
    fe = R.get("features", {})
    if fe:
        w("- Feature types: " + "; ".join(f"{KIND_LABELS[k]} ({v['dim']} dims, {v['patches_per_s']:.0f} patches/s)"
                                          for k, v in fe.items()) + ".")
    w("- Hand-crafted features: " + ", ".join(sf.HANDCRAFTED_GROUPS) + " — intensity mean/std/percentiles 5-95/"
      "skewness/kurtosis; uniform LBP histograms (P=8, R=1 and 2); RMS responses of 12 Gabor filters (3 frequencies x "
      "4 orientations, from the power spectrum); GLCM contrast, dissimilarity, homogeneity, energy, correlation "
      "(16 levels, distances 1 and 4, mean over 4 angles).")
    w("- Random-weight CNN: `PlainCNN(PaperCNN(...))` with torch seed "
      f"{st.args.baseline_seed} (default init; batch norm folded with its default running stats, i.e. ~identity).")
    for n in st.notes:
        w(f"- {n}")
    w("")


def _report_exp1(st, w):
    """Section of experiment 1."""
    R = st.results
    e1 = R.get("exp1_heads")
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
        w(_figs(st, "exp1"))
    w("")


def _report_exp2(st, w):
    """Section of experiment 2."""
    R = st.results
    e2 = R.get("exp2_baselines")
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
        tr = max(e2["trained"].get(h) or 0 for h in CLASSIFIERS)
        others = {k: max(v.get(h) or 0 for h in CLASSIFIERS) for k, v in e2.items() if k != "trained"}
        if others:
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
        w("")
        w(_figs(st, "exp2"))
    w("")


def _report_exp3(st, w):
    """Section of experiment 3."""
    R = st.results
    e3 = R.get("exp3_unsupervised")
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


def _report_exp4(st, w):
    """Section of experiment 4."""
    R = st.results
    e4 = R.get("exp4_noise")
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
        w(_figs(st, "exp4"))
    w("")


def _report_exp5(st, w):
    """Section of experiment 5."""
    R = st.results
    e5 = R.get("exp5_structure")
    w("## 5. Structure of the feature space")
    w("")
    pb = PAPER["exp5_block_error"]
    w(f"Paper: block-diagonal error (1/N)||G - D||_F of the Gram matrix of L2-normalized features: trained "
      f"{pb['trained']}, Inception {pb['inception']}, ResNet-18 {pb['resnet18']}; {PAPER['exp5_neighbours']}.")
    w("")
    if e5:
        w(f"{e5['per_class']} test patches per class (N = {e5['n']}), sorted by class. G = X X^T of L2-normalized "
          "features (CNN features as they are — nonnegative ReLU outputs as in the paper; hand-crafted features "
          "min-max scaled by the training range); D = 1 within a class, 0 across. The z-scored column uses "
          "features standardized by the training mean/std (cosines can then be negative).")
        w("")
        w("| features | block-diagonal error | z-scored | paper |")
        w("| --- | --- | --- | --- |")
        for k in e5["block_error"]:
            w(f"| {KIND_LABELS[k]} | {fmt(e5['block_error'][k])} | {fmt(e5['block_error_zscored'][k])} | "
              f"{pb.get(k, '—')} |")
        w(f"| Inception (not run) | — | — | {pb['inception']} |")
        if "resnet18" not in e5["block_error"]:
            w(f"| ImageNet ResNet-18 (not run: no weights) | — | — | {pb['resnet18']} |")
        be = e5["block_error"]
        if "trained" in be and len(be) > 1:
            lowest = min(be, key=be.get)
            w("")
            w(f"Lowest block-diagonal error: {KIND_LABELS[lowest]} ({fmt(be[lowest])}); trained {fmt(be['trained'])} "
              f"vs the paper's {pb['trained']}.")
        w("")
        w("Neighbouring vs distant areas (cosine similarity of class-mean features; 'centred' = of z-scored features):")
        w("")
        if all(v.get("raw") is None for v in e5["neighbours"].values()):
            w("- Not evaluated: the areas Ctx, Str, VP and ZI are not all in the class map.")
        for k, v in e5["neighbours"].items():
            for mode in ("raw", "centred"):
                vv = v.get(mode)
                if vv is None:
                    continue
                near = ", ".join(f"{p} {x:.3f}" for p, x in vv["near"].items())
                far = ", ".join(f"{p} {x:.3f}" for p, x in vv["far"].items())
                w(f"- {KIND_LABELS[k]} ({mode}): {near} vs {far} → neighbours "
                  f"{'closer' if vv['neighbours_closer'] else 'NOT both closer'}.")
        w("")
        w(_figs(st, "exp5"))
    w("")


def _report_exp6(st, w):
    """Section of experiment 6."""
    R = st.results
    e6 = R.get("exp6_subdivision")
    w("## 6. Sub-division of the cortex")
    w("")
    w(f"Paper: {PAPER['exp6']}.")
    w("")
    if e6:
        cr = e6["crop"]
        w(f"Dense trained features (`brainrt.featurize`, stride {e6['stride']}) over a crop y {cr[0]}..{cr[1]}, "
          f"x {cr[2]}..{cr[3]} around the {e6['class']} annotation; {e6['cells']} cells whose centre lies in "
          f"{e6['class']}; `brainrt.subdivide(grid, region, k={e6['k']})` (StandardScaler, PCA 10, KMeans).")
        w("")
        w("Depth measures: " + "; ".join(f"**{k}** = {v}" for k, v in e6["depth_definitions"].items()
                                         if k in e6["per_depth"]) + ".")
        fr = e6.get("nearest_background_away_from_wm_fraction")
        if fr is not None:
            w(f"{fr * 100:.0f}% of these cells have their nearest background pixel on the side away from the "
              "white matter (the pial surface); for the other "
              f"{(1 - fr) * 100:.0f}% the distance transform measures the distance to another tissue edge (e.g. "
              "a cut edge of the sample beside the area). The primary depth is therefore "
              f"**{e6['primary_depth']}**, whose surface distance follows the ray away from the white matter "
              f"(rays that leave the image without meeting background: "
              f"{e6.get('ray_left_image_fraction', 0) * 100:.1f}% of cells, left out).")
        else:
            w(f"No white matter is annotated: depth = **{e6['primary_depth']}** (distance transform of the tissue "
              "mask).")
        w("")
        w("| depth measure | eta squared (variance of depth explained by cluster) | NMI (cluster vs depth deciles) | "
          "mean depth per cluster |")
        w("| --- | --- | --- | --- |")
        for k, v in e6["per_depth"].items():
            means = ", ".join(f"{i}: {m:.2f}" if k == "relative" else f"{i}: {m:.0f}"
                              for i, m in v["mean_per_cluster"].items())
            w(f"| {k} | {fmt(v['eta_squared'])} | {fmt(v['nmi_deciles'])} | {means} |")
        ctl = e6.get("controls", {})
        if ctl:
            w("")
            er, ep = ctl["row_px"]["eta_squared"], e6["per_depth"][e6["primary_depth"]]["eta_squared"]
            w(f"Controls (same statistic for the cells' image coordinates): row (y) eta squared {fmt(er)}, column (x) "
              f"{fmt(ctl['column_px']['eta_squared'])}. "
              + ("The clusters follow the image row more than the depth: an intensity trend across the slice rather "
                 "than lamination may drive them." if er > ep else
                 "The clusters follow the depth more than the image row."))
        pv = e6["per_depth"][e6["primary_depth"]]
        w("")
        w(f"Clusters {'form clear depth bands' if pv['eta_squared'] >= 0.5 else 'follow depth partly' if pv['eta_squared'] >= 0.2 else 'do not form depth bands'} "
          f"(eta squared {pv['eta_squared']:.2f} on the primary depth: 1 = each cluster one band, 0 = unrelated to depth).")
        w("")
        w(_figs(st, "exp6"))
    w("")


def _report_exp7(st, w):
    """Section of experiment 7."""
    R = st.results
    e7 = R.get("exp7_scale")
    w("## 7. At scale: whole-slice area map")
    w("")
    w(f"Paper: {PAPER['exp7_pixel_accuracy'] * 100:.0f}% pixel accuracy over a whole slice.")
    w("")
    if e7:
        w(f"`brainrt.featurize` (stride {e7['stride']}, {e7['featurize_method']} path, {e7['cells']} tissue cells, "
          f"{e7['featurize_seconds']:.0f} s) + `brainrt.classify` (logreg head); each pixel takes its cell's class; "
          "off-tissue pixels count as wrong. Held-out = pixels covered by the footprints of all test-eligible "
          "centres of the split (re-created with `eligible_positions`); training region likewise for training centres.")
        w("")
        w("| region | pixel accuracy | labeled pixels | unclassified | paper |")
        w("| --- | --- | --- | --- | --- |")
        for key, lab in (("labeled", "all labeled pixels"), ("held_out", "held-out (test footprints)"),
                         ("train_region", "training footprints")):
            m = e7[key]
            w(f"| {lab} | {fmt(m['pixel_accuracy'])} | {m['n_pixels']} | {m['unclassified_pixels']} | "
              f"{PAPER['exp7_pixel_accuracy'] if key == 'labeled' else '—'} |")
        w("")
        acc = e7["labeled"]["pixel_accuracy"]
        w(f"Whole-slice pixel accuracy {acc * 100:.1f}% vs the paper's {PAPER['exp7_pixel_accuracy'] * 100:.0f}% "
          f"({(acc - PAPER['exp7_pixel_accuracy']) * 100:+.1f} points); on the held-out part "
          f"{e7['held_out']['pixel_accuracy'] * 100:.1f}%.")
        w("")
        w("Per-class F1 (all labeled pixels): " + ", ".join(
            f"{n} {v['f1']:.2f}" for n, v in e7["labeled"]["per_class"].items()) + ".")
        w("")
        w(_figs(st, "exp7"))
    w("")


def _report_timings(st, w, total_seconds):
    """Wall time per stage."""
    w("## Timings")
    w("")
    w("| stage | seconds |")
    w("| --- | --- |")
    for k, v in st.timings.items():
        w(f"| {k} | {v:.1f} |")
    w(f"| total | {total_seconds:.1f} |")
    w("")
    w("All numbers are also in `results.json`.")


def write_report(st, total_seconds):
    """REPORT.md: the command at the top, then one section per experiment."""
    L = []
    w = L.append
    _report_header(st, w, total_seconds)
    _report_exp1(st, w)
    _report_exp2(st, w)
    _report_exp3(st, w)
    _report_exp4(st, w)
    _report_exp5(st, w)
    _report_exp6(st, w)
    _report_exp7(st, w)
    _report_timings(st, w, total_seconds)
    (st.out / "REPORT.md").write_text("\n".join(L) + "\n")


def _figs(st, key):
    return "\n".join(f"![{n}]({n})" for n in st.figures.get(key, []))


# =========================================================================== main
def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="bundle folder (e.g. models/slice309-paper6)")
    p.add_argument("--image", required=True, help="the bundle's training slice (TIFF)")
    p.add_argument("--mask", required=True, help="its annotation (TIFF of area codes)")
    p.add_argument("-o", "--out", required=True, help="output folder (REPORT.md, results.json, PNGs)")
    p.add_argument("--stride", type=int, default=16, help="grid stride of the whole-slice map (exp. 7)")
    p.add_argument("--subdiv-stride", type=int, default=8, help="grid stride inside the cortex (exp. 6)")
    p.add_argument("--subdivide-class", default="Ctx", help="class to sub-divide (exp. 6)")
    p.add_argument("-k", "--k", type=int, default=4, help="clusters of the sub-division (exp. 6)")
    p.add_argument("--noise-levels", type=float, nargs="+", default=list(NOISE_LEVELS))
    p.add_argument("--noise-per-class", type=int, default=None, help="test patches per class in exp. 4 (300)")
    p.add_argument("--gram-per-class", type=int, default=None, help="test patches per class in the Gram matrix (100)")
    p.add_argument("--max-train-per-class", type=int, default=None, help="cap on training patches per class (all)")
    p.add_argument("--max-test-per-class", type=int, default=None, help="cap on test patches per class (all)")
    p.add_argument("--resnet18-weights", default=None, help="torchvision ResNet-18 state_dict (.pth) for a baseline")
    p.add_argument("--baseline-seed", type=int, default=0, help="seed of the random-weight CNN")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all)")
    p.add_argument("--pixel-size", type=float, default=None, help="um per pixel (default: from the TIFF, else 1.17)")
    p.add_argument("--quick", action="store_true", help="few patches and coarse grids (for tests)")
    p.add_argument("--only", nargs="+", default=None, help="run only these experiments (1..7)")
    return p.parse_args(argv)


EXPERIMENTS = (("1", "exp1_heads", exp1_heads), ("2", "exp2_baselines", exp2_baselines),
               ("3", "exp3_unsupervised", exp3_unsupervised), ("4", "exp4_noise", exp4_noise),
               ("5", "exp5_structure", exp5_structure), ("6", "exp6_subdivision", exp6_subdivision),
               ("7", "exp7_scale", exp7_scale))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("exp[1-7]_*.png"):  # figures of an earlier run (only ours)
        old.unlink()
    command = "python tools/study.py " + shlex.join(argv)
    st = Study(args=args, out=out, command=command)
    warnings.filterwarnings("ignore", category=FutureWarning)
    t0 = time.perf_counter()
    log(f"output folder {out}; {'QUICK mode' if args.quick else 'full run'}")

    def stage(name, fn):
        log(f"--- {name}")
        t = time.perf_counter()
        try:
            fn(st)
        except Exception as exc:  # keep going: the other experiments still report
            traceback.print_exc()
            st.errors[name] = f"{type(exc).__name__}: {exc}"
            st.results.setdefault("errors", {})[name] = st.errors[name]
        st.timings[name] = round(time.perf_counter() - t, 1)
        log(f"--- {name} done in {st.timings[name]:.1f} s")

    import tempfile

    stage("setup", setup)
    if "setup" in st.errors:
        raise SystemExit(f"setup failed: {st.errors['setup']}")
    with tempfile.TemporaryDirectory(prefix="study-") as tmp:
        st.workdir = tmp
        stage("features", lambda s: (build_extractors(s), compute_features(s)))
        for key, name, fn in EXPERIMENTS:
            if args.only and key not in args.only:
                continue
            stage(name, fn)
    total = time.perf_counter() - t0
    st.results["timings"] = dict(st.timings, total=round(total, 1))
    st.results["command"] = command
    st.results["paper"] = PAPER
    st.results["skipped"] = [n for n in st.notes if "skipped" in n]
    st.results["figures"] = st.figures
    from brainrt.io import write_json

    write_json(out / "results.json", st.results)
    write_report(st, total)
    log(f"wrote {out / 'REPORT.md'}, {out / 'results.json'} and {sum(map(len, st.figures.values()))} figures "
        f"in {total / 60:.1f} min")
    return 1 if st.errors else 0


if __name__ == "__main__":
    sys.exit(main())
