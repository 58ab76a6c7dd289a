"""Feature-network candidates under the spatial K-fold cross-validation (issue 31): the core.

``tools/network_cv.py`` (the comparison's command and report) and ``train-and-export --cv K`` (which
chooses the network recipe of a final fit) both run it. Same folds for every candidate
(:func:`brainrt_train.cv.spatial_folds`), equal training compute (the same number of tile batches
of the same tiles; the per-patch candidate gets the same training minutes as today's recipe on
tiles in the same fold). For each candidate and fold:

1. the network is trained from scratch on the fold's **training pixels only** (:func:`train_fold`:
   tiles whose labeled positions lie in ``train[f]``; per patch: centres in ``train[f]``), no
   validation set (the last epoch's weights);
2. its stride-16 features of the whole slice (:func:`brainrt_train.tiles.grid_features`, the
   runtime's grid, no intensity standardization) -> the default head recipe: class-balanced
   logistic regression on standardized cell features, **C = 0.1 fixed**, fitted on the fold's
   training cells (:func:`brainrt_train.cv.fit_head`);
3. scored on ``held_out[f]`` (:func:`brainrt_train.cv.score_fold`): per-class F1, pixel accuracy
   raw and smoothed (log-probabilities), the anatomical guards;
4. imaging changes of the whole slice, the head unchanged (:func:`imaging_changes`): Gaussian blur
   sigma 1 px, 2 x 2 binning resampled back (bilinear), a re-rendering as another slice might look
   (256 levels, gamma, contrast, offset, blur 0.8 px); their loss of smoothed pixel accuracy.

:func:`run` keeps the results in a JSON file, written after every fold of every candidate (a rerun
skips what is there); :func:`choose` picks the candidate with the best cross-validation mean of the
smoothed pixel accuracy; :func:`report` is the comparison's REPORT.md.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

#: Today's recipe (the shipped network's: context 4, Adam 1e-3 one-cycle, dihedral + tissue border + gray-level
#: jitter), and the candidates: what each changes.
BASE = {"context": 4, "lr": 1e-3, "schedule": "onecycle", "border_p": 0.6, "rotate_p": 0.0}
CANDIDATES = {
    "tiles": {},
    "patches": {"per_patch": True},
    "strong-aug": {"rotate_p": 0.5, "max_scale": 0.2, "blur_max": 2.5, "bin_p": 0.3},
    "wd+ls": {"weight_decay": 0.05, "label_smoothing": 0.1},
    "mixup+swa": {"mixup": 0.4, "swa_epochs": 2},
}
#: The fixed head of the comparison (its recipe for :func:`brainrt_train.cv.fit_head`) and its description.
HEAD = ("logreg", (("C", 0.1), ("balanced", True)))
HEAD_TEXT = "class-balanced logistic regression on standardized stride-16 cell features, C = 0.1 fixed"
#: The keys of a recipe that :func:`brainrt_train.train.fit` takes as they are.
FIT_KEYS = ("weight_decay", "label_smoothing", "mixup", "swa_epochs", "blur_max", "bin_p")


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def imaging_changes(image):
    """``{name: image}``: the slice blurred (Gaussian sigma 1 px), binned 2 x 2 then resampled back, and
    re-rendered (:func:`brainrt_train.evaluate.simulate_slice_change`: 256-level dithering, gamma 0.8,
    contrast 1.15, an offset, blur 0.8 px; what the slice we do not have brings, 256 levels against 19)."""
    from scipy import ndimage

    from .evaluate import binned_back, simulate_slice_change

    top = np.iinfo(image.dtype).max if image.dtype.kind in "ui" else None
    blur = np.clip(np.rint(ndimage.gaussian_filter(image.astype(np.float32), 1.0)), 0, top).astype(image.dtype)
    out = {"blur1": blur, "bin2": binned_back(image)}
    if image.dtype == np.uint8:  # the re-rendering writes 8-bit gray levels
        out["rerendered"] = simulate_slice_change(image)
    return out


def other_changes(image):
    """Imaging changes outside :func:`brainrt_train.evaluate.random_rendering`'s family (a check that heads fitted
    on re-imagings did not learn only the changes that score them): Poisson-like noise (2 counts per gray level),
    a gain and offset alone (0.85 x + 30), and 256 gray levels alone (dithered, nothing else)."""
    from .evaluate import simulate_slice_change

    rng = np.random.default_rng(5)
    return {"poisson": np.clip(rng.poisson(image.astype(np.float64) * 2.0) / 2.0, 0, 255).astype(np.uint8),
            "gain": np.clip(np.rint(image * 0.85 + 30), 0, 255).astype(np.uint8),
            "levels256": simulate_slice_change(image, gamma=1.0, contrast=1.0, offset=0.0, blur=0.0)}


def macs_per_position(model, n_out=32):
    """Multiply-adds per stride-16 output position of the tile evaluation (large tile, counted by torch)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    side, _ = model.tile_geometry(n_out)
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model.tile_features(torch.zeros(1, 1, side, side))
    return fc.get_total_flops() / 2 / n_out**2


def recipe_of(name, recipe=None):
    """The full recipe of candidate ``name`` (``recipe``: its changes, default :data:`CANDIDATES`'s) over :data:`BASE`."""
    return {**BASE, **(CANDIDATES[name] if recipe is None else recipe)}


def fit_kwargs(names, r, norm, seed):
    """:func:`brainrt_train.train.fit`'s keywords for the full recipe ``r``."""
    return dict(n_classes=len(names), patch_size=r.get("patch_size", 128), norm=norm, lr=r["lr"],
                schedule=r["schedule"], seed=seed, context=r["context"], border_p=r["border_p"],
                rotate_p=r["rotate_p"], **{k: r[k] for k in FIT_KEYS if k in r})


def train_fold(sl, labels_train, names, recipe, *, batches, epochs, tile_out, tile_batch, seed, minutes=None,
               dtype_max=255.0):
    """Train one network on the training labels ``labels_train`` (int8, -1 elsewhere) of slice ``sl``, from
    scratch, for a fixed budget (the last weights); ``recipe``: a candidate's changes to :data:`BASE` (or a full
    recipe); ``dtype_max``: what the pixel type's full range maps to 1. Returns (model, norm, seconds, history,
    budget)."""
    from brainrt_train.tiles import TileSampler
    from brainrt_train.train import fit

    r = {**BASE, **recipe}
    unit = sl.image[labels_train >= 0].astype(np.float64) / dtype_max
    norm = {"mean": float(unit.mean()), "std": float(unit.std()) or 1.0}
    common = fit_kwargs(names, r, norm, seed)
    if r.get("per_patch"):
        return train_patches(sl, labels_train, names, r, common, epochs=epochs, minutes=minutes, seed=seed,
                             dtype_max=dtype_max)
    sampler = TileSampler([sl.image], [labels_train], n_classes=len(names), patch_size=common["patch_size"],
                          context=r["context"], n_out=tile_out, dtype_max=dtype_max, border_p=r["border_p"],
                          rotate_p=r["rotate_p"], max_scale=r.get("max_scale", 0.15))
    model, history, seconds = fit((None, np.zeros(0)), None, epochs=epochs, batch_size=64, tiles=sampler,
                                  tile_batch=tile_batch, tile_batches=batches, **common)
    return model, norm, seconds, history, {"tiles": tile_out, "tile_batch": tile_batch, "batches_per_epoch": batches}


def train_patches(sl, labels_train, names, r, common, *, epochs, minutes, seed, dtype_max=255.0):
    """Per-patch training on centres in the training region (footprints inside the image), as many patches
    per epoch as fit ``minutes`` of training (timed on a probe of 128 patches first)."""
    import torch

    from brainrt_train.data import draw_balanced
    from brainrt_train.pipeline import patch_inputs
    from brainrt_train.train import fit

    C, P = len(names), common["patch_size"]
    inner = np.zeros(labels_train.shape, bool)
    inner[P // 2 : -P // 2, P // 2 : -P // 2] = True
    pools = []
    for c in range(C):
        ys, xs = np.nonzero((labels_train == c) & inner)
        pools.append(np.stack([np.zeros_like(ys), ys, xs], 1))
    probe = draw_balanced(pools, 128 // C + 1, np.random.default_rng(seed))
    x = patch_inputs([sl], probe, P, r["context"], dtype_max)
    t0 = time.perf_counter()
    fit((x, torch.from_numpy(probe.labels)), None, epochs=1, batch_size=64, **{**common, "schedule": "constant"})
    per_patch = (time.perf_counter() - t0) / len(probe.labels)
    n_train = max(8, int(minutes * 60 / per_patch / epochs / C))

    def redraw(epoch):
        ps = draw_balanced(pools, n_train, np.random.default_rng([seed, 1, epoch]))
        return patch_inputs([sl], ps, P, r["context"], dtype_max), torch.from_numpy(ps.labels)

    model, history, seconds = fit(redraw(0), None, epochs=epochs, batch_size=64, redraw=redraw, **common)
    return model, common["norm"], seconds, history, {"patches_per_class_epoch": n_train}


def evaluate_fold(model, norm, sl, images, grid, cf, f, sigma_um):
    """Scores of fold ``f``'s held-out pixels (:func:`score_features`) for a trained network: its clean features of
    the whole tissue grid, and under each imaging change those of the tile blocks holding held-out cells."""
    from brainrt_train.tiles import grid_features

    t0 = time.perf_counter()
    grid.features, _ = grid_features(model, sl.image, norm=norm, dtype_max=255.0, cells=grid.valid)
    held = cf.counts[f].sum(-1) > 0
    changes = {name: grid_features(model, img, norm=norm, dtype_max=255.0, cells=held & grid.valid)
               for name, img in images.items()}
    out = score_features(grid, cf, f, sigma_um, changes)
    out["eval_seconds"] = round(time.perf_counter() - t0, 1)
    return out


def score_features(grid, cf, f, sigma_um, changes):
    """Fold ``f``: the head :data:`HEAD` fitted on the clean features (``grid.features``) of its training cells,
    scored on its held-out pixels clean (whole tissue grid: guards too) and on each imaging change's features
    (``changes``: ``{name: (features, computed cells)}``; smoothing over the computed cells)."""
    import dataclasses

    from brainrt.heads import apply_rows, float32_proba, per_class

    from brainrt_train import cv

    head, prob = cv.fit_head(grid, cf.train[f], HEAD)
    out = {"clean": cv.score_fold(grid, cf, f, prob, sigma_um, "log")}
    K = len(grid.names)
    fn = per_class(head, float32_proba(head) or head.predict_proba, K, 0.0)
    for name, (feats, computed) in changes.items():
        part = dataclasses.replace(grid, features=feats, valid=grid.valid & computed)
        p = apply_rows(feats, part.valid, fn, np.zeros(grid.valid.shape + (K,), np.float32))
        out[name] = cv.score_fold(part, cf, f, p, sigma_um, "log", with_guards=False)
    return out


class Setup:
    """What every candidate and fold shares: the slice, class names, folds, cell folds, the scoring grid (its
    features filled per network) and the imaging changes."""

    def __init__(self, image, mask, *, k=5, class_map="prasad2020", changes=True):
        from brainrt.geometry import grid_shape
        from brainrt.engine.tissue import tissue_grid

        from brainrt_train import cv
        from brainrt_train.data import ClassMap, load_slice

        cmap = class_map if isinstance(class_map, ClassMap) else ClassMap.resolve(class_map)
        self.names = list(cmap.names)
        self.sl = sl = load_slice(image, mask, cmap)
        self.folds = cv.spatial_folds(sl.labels, k=k, n_classes=len(self.names))
        shape = grid_shape(sl.labels.shape, 16)
        self.cf = cv.cell_folds(self.folds, sl.labels, 16, shape, len(self.names))
        valid = tissue_grid(sl.image, 128, 16)
        self.grid = cv.Grid(None, valid, sl.labels, self.names, 16)
        self.grid.y_cells = np.where(valid, cv.at_centres(sl.labels, 16, shape), -1)
        self.images = imaging_changes(sl.image) if changes else {}


def header(command, setup, candidates, budget, *, seed, sigma_um):
    """The results' record of the run (everything but the candidates' folds)."""
    from brainrt_train.model import PaperCNN

    macs = {c: round(macs_per_position(PaperCNN(len(setup.names), context=recipe_of(c)["context"])))
            for c in candidates}
    return dict(command=command, folds=setup.folds.record(), seed=seed, base_recipe=BASE, sigma_um=sigma_um,
                macs=macs, head=HEAD_TEXT, budget=budget)


def train_on_fold(setup, recipe, f, budget, *, seed, minutes=None):
    """:func:`train_fold` on fold ``f``'s training pixels of ``setup``'s slice, the ``budget`` (``epochs``,
    ``tile_batches_per_epoch``, ``tile_batch``, ``tiles``), seed ``seed + f``: the network CV's network of that
    fold."""
    labels_train = np.where(setup.folds.train(f), setup.sl.labels, -1).astype(np.int8)
    return train_fold(setup.sl, labels_train, setup.names, recipe, batches=budget["tile_batches_per_epoch"],
                      epochs=budget["epochs"], tile_out=budget["tiles"], tile_batch=budget["tile_batch"],
                      seed=seed + f, minutes=minutes)


def run_one(setup, res, c, f, budget, *, seed, sigma_um, features_dir=None):
    """Train candidate ``c`` on fold ``f``'s training pixels, score it, record it in ``res``; ``features_dir``:
    keep its network and clean grid features in ``features_dir/c`` (:func:`keep_fold`; the features are what
    :func:`fold_features` reads)."""
    s = setup
    minutes = None
    if CANDIDATES[c].get("per_patch"):
        ref = res["candidates"].get("tiles", {}).get("folds", {}).get(str(f))
        minutes = ref["train_minutes"] if ref else 2.0
    log(f"fold {f}: training {c}")
    model, norm, seconds, history, used = train_on_fold(s, CANDIDATES[c], f, budget, seed=seed, minutes=minutes)
    scores = evaluate_fold(model, norm, s.sl, s.images, s.grid, s.cf, f, sigma_um)
    if features_dir is not None:
        keep_fold(Path(features_dir) / c, f, model, norm, s.grid.features, trained_as(CANDIDATES[c], budget, seed))
    acc = scores["clean"]["smoothed"]["pixel_accuracy"]
    rec = {**scores, "train_minutes": round(seconds / 60, 2), "history": history, "budget": used,
           "loss": {k: round(acc - scores[k]["smoothed"]["pixel_accuracy"], 4) for k in s.images}}
    res["candidates"][c]["folds"][str(f)] = rec
    log(f"fold {f} {c}: train {seconds / 60:.1f} min, acc raw {scores['clean']['raw']['pixel_accuracy']:.3f} "
        f"smoothed {acc:.3f} macro F1 {scores['clean']['smoothed']['macro_f1']:.3f}; losses {rec['loss']}")


def trained_as(recipe, budget, seed):
    """What makes a fold network of :func:`train_on_fold` (full recipe, the budget's training keys, base seed): a
    kept network is used in its place only when this matches."""
    keys = ("epochs", "tile_batches_per_epoch", "tile_batch", "tiles")
    return json.loads(json.dumps({"recipe": {**BASE, **recipe}, "budget": {k: budget[k] for k in keys},
                                  "seed": seed}))


def keep_fold(folder, f, model, norm, features, made):
    """Fold ``f``'s network as ``folder/fold{f}.pt`` (:func:`brainrt_train.train.load_checkpoint`, with ``norm``,
    its intensity standardization, and ``made``, its :func:`trained_as`) and its clean grid features as
    ``folder/fold{f}.npy`` (what :func:`fold_image_features` reads)."""
    from brainrt_train.train import save_checkpoint

    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / f"fold{f}.npy", features)
    save_checkpoint(folder / f"fold{f}.pt", model.state_dict(), n_classes=model.out.out_features,
                    patch_size=model.patch_size, context=list(model.context), norm=norm, made=made)


def run(setup, path, candidates, budget, *, command, seed=0, sigma_um=100.0, only_folds=None, after_fold=None,
        features_dir=None):
    """Every candidate on every fold (``only_folds``: those), results in the JSON file ``path`` after each (a rerun
    skips the folds it holds); ``after_fold(results)`` after each one; ``features_dir``: see :func:`run_one`.
    Returns the results."""
    path = Path(path)
    res = json.loads(path.read_text()) if path.exists() else {}
    res.update(header(command, setup, candidates, budget, seed=seed, sigma_um=sigma_um))
    res.setdefault("candidates", {})
    for c in candidates:
        res["candidates"].setdefault(c, {"recipe": recipe_of(c), "folds": {}})
    log(f"folds {setup.folds.record()}; training cells per fold {[int(t.sum()) for t in setup.cf.train]}")
    for f in (only_folds if only_folds is not None else range(setup.folds.k)):
        for c in candidates:
            if str(f) in res["candidates"][c]["folds"]:
                continue
            run_one(setup, res, c, f, budget, seed=seed, sigma_um=sigma_um, features_dir=features_dir)
            tmp = path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(res, indent=1, default=str) + "\n")
            tmp.replace(path)
            if after_fold is not None:
                after_fold(res)
    return res


def merged(out):
    """Every ``results*.json`` of the folder ``out`` merged: the first file's header, every candidate's folds."""
    res = None
    for path in sorted(Path(out).glob("results*.json")):
        r = json.loads(path.read_text())
        if res is None:
            res = r
            continue
        for c, entry in r.get("candidates", {}).items():
            res["candidates"].setdefault(c, {**entry, "folds": {}})["folds"].update(entry["folds"])
    if res is None or not any(e.get("folds") for e in res.get("candidates", {}).values()):
        raise SystemExit(f"{out}: no scored fold in any results*.json: nothing to report")
    return res


def by_epochs(runs, candidate):
    """One results dict of ``candidate`` trained for several epoch counts (``runs``: network-CV result folders, one
    epoch count each): its entries named ``"{candidate} {E} ep"`` by ascending E, so :func:`report` and
    :func:`choose` compare them as candidates. Runs whose budgets differ in anything but the epochs, or two runs of
    one epoch count, are refused in one line."""
    entries, commands, first = {}, {}, None
    for run in runs:
        res = merged(run)
        budget, entry = dict(res["budget"]), res["candidates"].get(candidate)
        if not entry or not entry["folds"]:
            raise SystemExit(f"{run}: no scored fold of {candidate}")
        e = budget.pop("epochs")
        if e in entries:
            raise SystemExit(f"{run}: a second run of {e} epochs")
        first = first or (res, budget)
        if budget != first[1] or res["folds"] != first[0]["folds"]:
            raise SystemExit(f"{run}: its budget per epoch or folds differ from {runs[0]}'s ({budget} vs {first[1]})")
        entries[e], commands[e] = entry, res["command"]
    res = first[0]
    names = {e: f"{candidate} {e} ep" for e in sorted(entries)}
    return {**res, "command": "; ".join(commands[e] for e in sorted(entries)),
            "budget": {**res["budget"], "epochs": sorted(entries)},
            "macs": {n: res["macs"].get(candidate, "-") for n in names.values()},
            "candidates": {names[e]: entries[e] for e in sorted(entries)}}


def choose_epochs(res):
    """``(E, {E: CV mean}, interior)`` for :func:`by_epochs`'s results: the epoch count with the best mean smoothed
    pixel accuracy (:func:`choose`), and whether it lies inside the grid (not its smallest or largest count)."""
    best, means = choose(res)
    of = dict(zip(res["candidates"], res["budget"]["epochs"]))  # by_epochs keeps both in ascending E
    grid = res["budget"]["epochs"]
    return of[best], {of[c]: m for c, m in means.items()}, grid[0] < of[best] < grid[-1]


def worst_under(folds, change, names):
    """``(class, mean F1)``: the class whose smoothed F1 under the imaging change ``change``, averaged over the
    folds that hold it out, is lowest ("-" without that change): the collapse of one area that a mean loss hides."""
    per = {n: [r[change]["smoothed"]["f1"][n] for r in folds if change in r] for n in names}
    per = {n: float(np.nanmean(v)) for n, v in per.items() if v and not all(x != x for x in v)}
    if not per:
        return "-"
    n = min(per, key=per.get)
    return f"{n} {per[n]:.2f}"


def choose(res):
    """The candidate with the best cross-validation mean of the smoothed pixel accuracy over the folds every scored
    candidate shares, and the means: ``(name, {name: mean})``."""
    done = {c: e["folds"] for c, e in res["candidates"].items() if e["folds"]}
    if not done:
        raise ValueError("no candidate has a scored fold")
    common = set.intersection(*(set(f) for f in done.values()))
    if not common:
        raise ValueError("the candidates share no scored fold")
    means = {c: float(np.mean([folds[f]["clean"]["smoothed"]["pixel_accuracy"] for f in sorted(common)]))
             for c, folds in done.items()}
    return max(means, key=lambda c: means[c]), means


def folds_picture(out, res):
    """Per-fold smoothed pixel accuracy and macro F1 of every candidate, and accuracy under blur."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cands = [c for c in res["candidates"] if res["candidates"][c]["folds"]]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for ax, (what, key) in zip(axes, (("clean", "pixel_accuracy"), ("clean", "macro_f1"), ("blur1", "pixel_accuracy"))):
        for i, c in enumerate(cands):
            folds = res["candidates"][c]["folds"]
            fs = sorted(folds, key=int)
            vals = [folds[f][what]["smoothed"][key] for f in fs if what in folds[f]]
            ax.plot([int(f) + (i - len(cands) / 2) * 0.08 for f in fs if what in folds[f]], vals, "o",
                    label=f"{c} (mean {np.mean(vals):.3f})")
        ax.set_xlabel("fold")
        ax.set_xticks(range(res["folds"]["k"]))
        ax.set_title(f"{what}: smoothed {key.replace('_', ' ')} (held-out pixels)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(Path(out) / "folds.png", dpi=90)
    plt.close(fig)
    return "folds.png"


def _mean(values):
    v = [x for x in values if x == x]
    return f"{np.mean(v):.3f}" if v else "-"


def _summary_row(c, e, res, base, names):
    fo = [e["folds"][f] for f in sorted(e["folds"], key=int)]
    g = [sum(v["ok"] for v in r["clean"]["guards"].values()) for r in fo]
    loss = lambda k: _mean([r["loss"].get(k, float("nan")) for r in fo])  # noqa: E731
    return (f"| {c} | {len(fo)} | {_mean([r['clean']['raw']['pixel_accuracy'] for r in fo])} | "
            f"{_mean([r['clean']['smoothed']['pixel_accuracy'] for r in fo])} | "
            f"{_mean([r['clean']['smoothed']['macro_f1'] for r in fo])} | "
            + " | ".join(_mean([r['clean']['smoothed']['f1'][n] for r in fo]) for n in names)
            + " | " + _mean([e["folds"][f]["clean"]["smoothed"]["pixel_accuracy"] - base[f]["clean"]["smoothed"]
                             ["pixel_accuracy"] for f in e["folds"] if f in base])
            + f" | {_mean(g)} of {len(fo[0]['clean']['guards'])} | {loss('blur1')} | {loss('bin2')} | {loss('rerendered')} | "
            f"{worst_under(fo, 'rerendered', names)} | {_mean([r['train_minutes'] for r in fo])} | {res['macs'].get(c, '-')} |")


def _fold_row(c, f, r, names):
    failed = ", ".join(k for k, v in r["clean"]["guards"].items() if not v["ok"]) or "all held"
    return (f"| {c} | {f} | {r['clean']['raw']['pixel_accuracy']:.3f} | {r['clean']['smoothed']['pixel_accuracy']:.3f} "
            f"| {r['clean']['smoothed']['macro_f1']:.3f} | "
            + " | ".join(f"{r['clean']['smoothed']['f1'][n]:.3f}" for n in names)
            + f" | {failed} | {r['loss'].get('blur1', float('nan')):.3f} | {r['loss'].get('bin2', float('nan')):.3f} | "
            f"{r['loss'].get('rerendered', float('nan')):.3f} | "
            f"{r['train_minutes']:.1f} |")


def report(out, res=None, *, note="`--report` merges the results files of several processes"):
    """REPORT.md of the results (default: every results file of ``out`` merged): a summary row per candidate, then
    every fold; the per-fold picture beside it."""
    res = merged(out) if res is None else res
    names = list(next(iter(next(iter(res["candidates"].values()))["folds"].values()))["clean"]["raw"]["f1"])
    lines = [f"# Feature-network candidates under spatial {res['folds']['k']}-fold cross-validation (issue 31)", "",
             f"Command: `{res['command']}` ({note}).", "",
             f"Folds: {json.dumps(res['folds'])}. Head: {res['head']}. Map regularization: Gaussian "
             f"{res['sigma_um']:g} um on log-probabilities. Budget: {json.dumps(res['budget'])}.", "",
             *([(Path(out) / "NOTES.md").read_text(), ""] if (Path(out) / "NOTES.md").exists() else []),
             "| candidate | folds | acc raw | acc smoothed | macro F1 | " + " | ".join(f"F1 {n}" for n in names)
             + " | vs tiles, same folds | guards ok | blur 1 px loss | 2x2 bin loss | re-rendered loss "
             "| worst F1 re-rendered | train min | MACs/position |", "|---" * (13 + len(names)) + "|"]
    base = res["candidates"].get("tiles", {}).get("folds", {})
    rows = []
    for c, e in res["candidates"].items():
        if not e["folds"]:
            continue
        lines.append(_summary_row(c, e, res, base, names))
        rows += [_fold_row(c, f, e["folds"][f], names) for f in sorted(e["folds"], key=int)]
    lines += ["", f"![per-fold accuracy]({folds_picture(out, res)})", "", "Per fold (held-out pixels; F1 of the "
              "smoothed map, nan where the fold holds the class out too little; guards failed):", "",
              "| candidate | fold | acc raw | acc smoothed | macro F1 | " + " | ".join(f"F1 {n}" for n in names)
              + " | guards failed | blur loss | bin loss | re-rendered loss | train min |", "|---" * (10 + len(names)) + "|",
              *rows, ""]
    return "\n".join(lines)


def fold_features(setup, recipe, budget, *, seed=0, cache=None, renderings=0, log=log):
    """``features_of(f)`` for :func:`brainrt_train.cv.evaluate_heads`: fold ``f``'s stride-16 grid features from a
    network of ``recipe`` trained on that fold's training pixels only (the network cross-validation's network of
    that fold: same recipe, budget and seed ``seed + f``), so a head and map regularization chosen on them never
    see features of a network that learned the held-out labels. ``renderings``: with N > 0, ``features_of(f)``
    gives ``(features, renderings)``, the latter the same network's features of N re-imagings of the slice
    (:func:`brainrt_train.evaluate.random_rendering`, seeds 0..N-1). ``cache``: see :func:`fold_image_features`;
    ``budget``: ``epochs``, ``tile_batches_per_epoch``, ``tile_batch``, ``tiles``."""
    from brainrt_train.evaluate import random_rendering

    names = [f"r{i}" for i in range(renderings)]
    images = {"clean": lambda: setup.sl.image, **{n: (lambda i=i: random_rendering(setup.sl.image, i))
                                                  for i, n in enumerate(names)}}
    of = fold_image_features(setup, recipe, budget, images, seed=seed, cache=cache, log=log)

    def features_of(f):
        got = of(f)
        return (got["clean"], tuple(got[n] for n in names)) if renderings else got["clean"]

    return features_of


def fold_image_features(setup, recipe, budget, images, *, seed=0, cache=None, log=log):
    """``of(f)``: ``{name: grid features}`` of fold ``f``'s network (:func:`train_on_fold`) on each image of
    ``images`` (``{name: () -> image}``, made only when needed). ``cache``: a folder keeping them as
    ``fold{f}.npy`` ("clean") and ``fold{f}.{name}.npy`` (a rerun reads them; those missing are made by the
    fold's network: the folder's kept ``fold{f}.pt`` if :func:`fold_network` may use it, trained again else)."""
    from brainrt_train.tiles import grid_features

    memo = {}
    path = lambda f, n: Path(cache) / (f"fold{f}.npy" if n == "clean" else f"fold{f}.{n}.npy")  # noqa: E731

    def of(f):
        if f in memo:
            return memo[f]
        memo[f] = {n: np.load(path(f, n)) for n in images if cache is not None and path(f, n).exists()}
        if len(memo[f]) < len(images):
            model, norm = fold_network(setup, recipe, budget, f, seed=seed, kept=cache, log=log)
            if cache is not None:
                Path(cache).mkdir(parents=True, exist_ok=True)
            for n in [n for n in images if n not in memo[f]]:
                memo[f][n] = grid_features(model, images[n](), norm=norm, dtype_max=255.0, cells=setup.grid.valid)[0]
                if cache is not None:
                    np.save(path(f, n), memo[f][n])
        return memo[f]

    return of


def fold_network(setup, recipe, budget, f, *, seed=0, kept=None, log=log):
    """``(model, norm)``: fold ``f``'s network of :func:`train_on_fold`, read from ``kept/fold{f}.pt``
    (:func:`keep_fold`) when that was made the same way (:func:`trained_as`), trained again else."""
    from brainrt_train.train import load_checkpoint

    pt = Path(kept) / f"fold{f}.pt" if kept is not None else None
    if pt is not None and pt.exists():
        model, meta = load_checkpoint(pt)
        if meta.get("made") == trained_as(recipe, budget, seed):
            log(f"fold {f}: the kept network {pt}")
            return model, meta["norm"]
        log(f"fold {f}: {pt} was made otherwise ({meta.get('made')}): training again")
    model, norm, seconds, _, _ = train_on_fold(setup, recipe, f, budget, seed=seed)
    log(f"fold {f}: network trained on the fold's training pixels in {seconds / 60:.1f} min")
    return model, norm
