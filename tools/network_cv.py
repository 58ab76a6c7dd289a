"""Feature-network candidates compared under the spatial K-fold cross-validation (issue 31, item 2).

Same folds for every candidate (:func:`brainrt_train.cv.spatial_folds`, k = 5, 64 px gap), equal
training compute (the same number of tile batches of the same tiles; the per-patch candidate
gets the same training minutes as today's recipe on tiles in the same fold). For each candidate
and fold:

1. the network is trained from scratch on the fold's **training pixels only** (tiles whose
   labeled positions lie in ``train[f]``; per patch: centres in ``train[f]``), no validation set
   (the last epoch's weights);
2. its stride-16 features of the whole slice (:func:`brainrt_train.tiles.grid_features`, the
   runtime's grid, no intensity standardization) -> the default head recipe: class-balanced
   logistic regression on standardized cell features, **C = 0.1 fixed** (not chosen by an inner
   CV: the budget), fitted on the fold's training cells (:func:`brainrt_train.cv.fit_head`);
3. scored on ``held_out[f]`` (:func:`brainrt_train.cv.score_fold`): per-class F1, pixel
   accuracy raw and smoothed (``--sigma-um``, log-probabilities), the anatomical guards;
4. imaging changes of the whole slice, the head unchanged: Gaussian blur sigma 1 px, 2 x 2
   binning resampled back (bilinear) to the full grid; their loss of smoothed pixel accuracy.

Results go to ``results.json`` after every fold of every candidate (a rerun skips what is there),
the per-fold picture to ``folds.png``. Run it in the background:

    nice -n 10 python tools/network_cv.py --image ../shared/data/slice309.tif \\
        --mask ../shared/data/slice309_areas.tif -o docs/accuracy/network-cv > runs/network_cv.log 2>&1 &
"""

from __future__ import annotations

import argparse
import json
import sys
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


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def imaging_changes(image):
    """``{name: image}``: the slice blurred (Gaussian sigma 1 px) and binned 2 x 2 then resampled back."""
    from scipy import ndimage

    f = image.astype(np.float32)
    blur = np.clip(np.rint(ndimage.gaussian_filter(f, 1.0)), 0, 255).astype(image.dtype)
    h, w = (image.shape[0] // 2) * 2, (image.shape[1] // 2) * 2
    binned = f[:h, :w].reshape(h // 2, 2, w // 2, 2).mean((1, 3))
    # bilinear back to the full grid: pixel y of the original sits at (y - 0.5) / 2 in the binned image
    yy = np.clip((np.arange(image.shape[0]) - 0.5) / 2, 0, h // 2 - 1)
    xx = np.clip((np.arange(image.shape[1]) - 0.5) / 2, 0, w // 2 - 1)
    back = ndimage.map_coordinates(binned, np.meshgrid(yy, xx, indexing="ij"), order=1, mode="nearest")
    return {"blur1": blur, "bin2": np.clip(np.rint(back), 0, 255).astype(image.dtype)}


def macs_per_position(model, n_out=32):
    """Multiply-adds per stride-16 output position of the tile evaluation (large tile, counted by torch)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    side, _ = model.tile_geometry(n_out)
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model.tile_features(torch.zeros(1, 1, side, side))
    return fc.get_total_flops() / 2 / n_out**2


def _common(names, r, norm, seed):
    """:func:`brainrt_train.train.fit`'s keywords for recipe ``r``."""
    return dict(n_classes=len(names), patch_size=128, norm=norm, lr=r["lr"], schedule=r["schedule"], seed=seed,
                context=r["context"], border_p=r["border_p"], rotate_p=r["rotate_p"],
                **{k: r[k] for k in ("weight_decay", "label_smoothing", "mixup", "swa_epochs", "blur_max", "bin_p")
                   if k in r})


def train_fold(sl, labels_train, names, recipe, *, batches, epochs, tile_out, tile_batch, seed, minutes=None):
    """Train one network on the training labels ``labels_train`` (int8, -1 elsewhere); returns (model, norm, seconds,
    history, budget)."""
    from brainrt_train.tiles import TileSampler
    from brainrt_train.train import fit

    r = {**BASE, **recipe}
    unit = sl.image[labels_train >= 0].astype(np.float64) / 255.0
    norm = {"mean": float(unit.mean()), "std": float(unit.std()) or 1.0}
    common = _common(names, r, norm, seed)
    if r.get("per_patch"):
        return train_patches(sl, labels_train, names, r, common, epochs=epochs, minutes=minutes, seed=seed)
    sampler = TileSampler([sl.image], [labels_train], n_classes=len(names), patch_size=128, context=r["context"],
                          n_out=tile_out, dtype_max=255.0, border_p=r["border_p"], rotate_p=r["rotate_p"],
                          max_scale=r.get("max_scale", 0.15))
    model, history, seconds = fit((None, np.zeros(0)), None, epochs=epochs, batch_size=64, tiles=sampler,
                                  tile_batch=tile_batch, tile_batches=batches, **common)
    return model, norm, seconds, history, {"tiles": tile_out, "tile_batch": tile_batch, "batches_per_epoch": batches}


def train_patches(sl, labels_train, names, r, common, *, epochs, minutes, seed):
    """Per-patch training on centres in the training region (footprints inside the image), as many patches
    per epoch as fit ``minutes`` of training (timed on a probe of 128 patches first)."""
    import torch

    from brainrt_train.data import draw_balanced
    from brainrt_train.pipeline import patch_inputs
    from brainrt_train.train import fit

    C = len(names)
    inner = np.zeros(labels_train.shape, bool)
    inner[64:-64, 64:-64] = True
    pools = []
    for c in range(C):
        ys, xs = np.nonzero((labels_train == c) & inner)
        pools.append(np.stack([np.zeros_like(ys), ys, xs], 1))
    probe = draw_balanced(pools, 128 // C + 1, np.random.default_rng(seed))
    x = patch_inputs([sl], probe, 128, r["context"], 255.0)
    t0 = time.perf_counter()
    fit((x, torch.from_numpy(probe.labels)), None, epochs=1, batch_size=64, **{**common, "schedule": "constant"})
    per_patch = (time.perf_counter() - t0) / len(probe.labels)
    n_train = max(8, int(minutes * 60 / per_patch / epochs / C))

    def redraw(epoch):
        ps = draw_balanced(pools, n_train, np.random.default_rng([seed, 1, epoch]))
        return patch_inputs([sl], ps, 128, r["context"], 255.0), torch.from_numpy(ps.labels)

    model, history, seconds = fit(redraw(0), None, epochs=epochs, batch_size=64, redraw=redraw, **common)
    return model, common["norm"], seconds, history, {"patches_per_class_epoch": n_train}


def evaluate_fold(model, norm, sl, images, grid, cf, f, sigma_um):
    """Scores of fold ``f``'s held-out pixels on the clean slice (whole tissue grid: guards too) and under each
    imaging change (features only of the tile blocks holding held-out cells; smoothing over those), one head per
    fold, fitted on the clean features of the fold's training cells."""
    import dataclasses

    from brainrt.heads import apply_rows, float32_proba, per_class

    from brainrt_train import cv
    from brainrt_train.tiles import grid_features

    t0 = time.perf_counter()
    grid.features, _ = grid_features(model, sl.image, norm=norm, dtype_max=255.0, cells=grid.valid)
    head, prob = cv.fit_head(grid, cf.train[f], ("logreg", (("C", 0.1), ("balanced", True))))
    out = {"clean": cv.score_fold(grid, cf, f, prob, sigma_um, "log")}
    K = len(grid.names)
    fn = per_class(head, float32_proba(head) or head.predict_proba, K, 0.0)
    held = cf.counts[f].sum(-1) > 0
    for name, img in images.items():
        feats, computed = grid_features(model, img, norm=norm, dtype_max=255.0, cells=held & grid.valid)
        part = dataclasses.replace(grid, features=feats, valid=grid.valid & computed)
        p = apply_rows(feats, part.valid, fn, np.zeros(grid.valid.shape + (K,), np.float32))
        out[name] = cv.score_fold(part, cf, f, p, sigma_um, "log", with_guards=False)
    out["eval_seconds"] = round(time.perf_counter() - t0, 1)
    return out


def merged(out):
    """Every ``results*.json`` of ``out`` merged: the first file's header, every candidate's folds."""
    res = None
    for path in sorted(out.glob("results*.json")):
        r = json.loads(path.read_text())
        if res is None:
            res = r
            continue
        for c, entry in r.get("candidates", {}).items():
            res["candidates"].setdefault(c, {**entry, "folds": {}})["folds"].update(entry["folds"])
    return res


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
            vals = [folds[f][what]["smoothed"][key] for f in fs]
            ax.plot([int(f) + (i - len(cands) / 2) * 0.08 for f in fs], vals, "o", label=f"{c} (mean {np.mean(vals):.3f})")
        ax.set_xlabel("fold")
        ax.set_xticks(range(res["folds"]["k"]))
        ax.set_title(f"{what}: smoothed {key.replace('_', ' ')} (held-out pixels)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "folds.png", dpi=90)
    plt.close(fig)
    return "folds.png"


def _mean(values):
    v = [x for x in values if x == x]
    return f"{np.mean(v):.3f}" if v else "-"


def report(out):
    """REPORT.md of the merged results: a summary row per candidate, then every fold."""
    res = merged(out)
    names = list(next(iter(next(iter(res["candidates"].values()))["folds"].values()))["clean"]["raw"]["f1"])
    lines = [f"# Feature-network candidates under spatial {res['folds']['k']}-fold cross-validation (issue 31)", "",
             f"Command: `{res['command']}` (`--report` merges the results files of several processes).", "",
             f"Folds: {json.dumps(res['folds'])}. Head: {res['head']}. Map regularization: Gaussian "
             f"{res['sigma_um']:g} um on log-probabilities. Budget: {json.dumps(res['budget'])}.", "",
             *([(out / "NOTES.md").read_text(), ""] if (out / "NOTES.md").exists() else []),
             "| candidate | folds | acc raw | acc smoothed | macro F1 | " + " | ".join(f"F1 {n}" for n in names)
             + " | vs tiles, same folds | guards ok | blur 1 px loss | 2x2 bin loss | train min | MACs/position |",
             "|---" * (11 + len(names)) + "|"]
    base = res["candidates"].get("tiles", {}).get("folds", {})
    rows = []
    for c, e in res["candidates"].items():
        fo = [e["folds"][f] for f in sorted(e["folds"], key=int)]
        if not fo:
            continue
        g = [sum(v["ok"] for v in r["clean"]["guards"].values()) for r in fo]
        lines.append(f"| {c} | {len(fo)} | {_mean([r['clean']['raw']['pixel_accuracy'] for r in fo])} | "
                     f"{_mean([r['clean']['smoothed']['pixel_accuracy'] for r in fo])} | "
                     f"{_mean([r['clean']['smoothed']['macro_f1'] for r in fo])} | "
                     + " | ".join(_mean([r['clean']['smoothed']['f1'][n] for r in fo]) for n in names)
                     + " | " + _mean([e["folds"][f]["clean"]["smoothed"]["pixel_accuracy"] - base[f]["clean"]["smoothed"]
                                      ["pixel_accuracy"] for f in e["folds"] if f in base])
                     + f" | {_mean(g)} of {len(fo[0]['clean']['guards'])} | {_mean([r['loss']['blur1'] for r in fo])} | "
                     f"{_mean([r['loss']['bin2'] for r in fo])} | {_mean([r['train_minutes'] for r in fo])} | "
                     f"{res['macs'].get(c, '-')} |")
        rows += [f"| {c} | {f} | {r['clean']['raw']['pixel_accuracy']:.3f} | {r['clean']['smoothed']['pixel_accuracy']:.3f} "
                 f"| {r['clean']['smoothed']['macro_f1']:.3f} | "
                 + " | ".join(f"{r['clean']['smoothed']['f1'][n]:.3f}" for n in names)
                 + f" | {', '.join(k for k, v in r['clean']['guards'].items() if not v['ok']) or 'all held'} | "
                 f"{r['loss']['blur1']:.3f} | {r['loss']['bin2']:.3f} | {r['train_minutes']:.1f} |"
                 for f, r in zip(sorted(e["folds"], key=int), fo)]
    lines += ["", f"![per-fold accuracy]({folds_picture(out, res)})", "", "Per fold (held-out pixels; F1 of the "
              "smoothed map, nan where the fold holds the class out too little; guards failed):", "",
              "| candidate | fold | acc raw | acc smoothed | macro F1 | " + " | ".join(f"F1 {n}" for n in names)
              + " | guards failed | blur loss | bin loss | train min |", "|---" * (9 + len(names)) + "|", *rows, ""]
    return "\n".join(lines)


def parse(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--image")
    ap.add_argument("--mask")
    ap.add_argument("-o", "--out", required=True)
    ap.add_argument("-k", "--folds", type=int, default=5)
    ap.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=list(CANDIDATES))
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--batches", type=int, default=8, help="tile batches per epoch (the compute budget)")
    ap.add_argument("--tiles", type=int, default=12, help="outputs per tile side")
    ap.add_argument("--tile-batch", type=int, default=4)
    ap.add_argument("--sigma-um", type=float, default=100.0, help="the map regularization (Gaussian, log space)")
    ap.add_argument("--only-folds", type=int, nargs="+", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: on a shared, oversubscribed machine 2 threads ran 8-10x slower)")
    ap.add_argument("--results-name", default="results.json", help="this process's results file in -o (several "
                    "processes on different folds: one each; --report merges results*.json)")
    ap.add_argument("--report", action="store_true", help="only merge the results files and write REPORT.md, folds.png")
    return ap.parse_args(argv)


def setup(args):
    """The slice, class names, folds, cell folds, the scoring grid (features filled per network) and the
    imaging changes."""
    from brainrt.geometry import cell_centre, grid_shape
    from brainrt.tissue import tissue_grid

    from brainrt_train import cv
    from brainrt_train.data import ClassMap, load_slice

    cmap = ClassMap.resolve("prasad2020")
    names = list(cmap.names)
    sl = load_slice(args.image, args.mask, cmap)
    folds = cv.spatial_folds(sl.labels, k=args.folds, n_classes=len(names))
    shape = grid_shape(sl.labels.shape, 16)
    cf = cv.cell_folds(folds, sl.labels, 16, shape, len(names))
    valid = tissue_grid(sl.image, 128, 16)
    ys = np.minimum(cell_centre(np.arange(shape[0]), 16), sl.labels.shape[0] - 1)
    xs = np.minimum(cell_centre(np.arange(shape[1]), 16), sl.labels.shape[1] - 1)
    grid = cv.Grid(None, valid, sl.labels, names, 16)
    grid.y_cells = np.where(valid, sl.labels[np.ix_(ys, xs)], -1)
    return sl, names, folds, cf, grid, imaging_changes(sl.image)


def header(args, argv, folds, names):
    """The results' record of the run (everything but the candidates' folds)."""
    from brainrt_train.model import PaperCNN

    macs = {c: round(macs_per_position(PaperCNN(len(names), context=CANDIDATES[c].get("context", BASE["context"]))))
            for c in args.candidates}
    return dict(command="python tools/network_cv.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                folds=folds.record(), seed=args.seed, base_recipe=BASE, sigma_um=args.sigma_um, macs=macs,
                head="class-balanced logistic regression on standardized stride-16 cell features, C = 0.1 fixed",
                budget={"epochs": args.epochs, "tile_batches_per_epoch": args.batches, "tiles": args.tiles,
                        "tile_batch": args.tile_batch, "threads": args.threads})


def run_one(args, res, c, f, sl, names, folds, cf, grid, images):
    """Train candidate ``c`` on fold ``f``'s training pixels, score it, record it in ``res``."""
    minutes = None
    if CANDIDATES[c].get("per_patch"):
        ref = res["candidates"].get("tiles", {}).get("folds", {}).get(str(f))
        minutes = ref["train_minutes"] if ref else 2.0
    log(f"fold {f}: training {c}")
    labels_train = np.where(folds.train(f), sl.labels, -1).astype(np.int8)
    model, norm, seconds, history, budget = train_fold(
        sl, labels_train, names, CANDIDATES[c], batches=args.batches, epochs=args.epochs, tile_out=args.tiles,
        tile_batch=args.tile_batch, seed=args.seed + f, minutes=minutes)
    scores = evaluate_fold(model, norm, sl, images, grid, cf, f, args.sigma_um)
    s = scores["clean"]["smoothed"]["pixel_accuracy"]
    rec = {**scores, "train_minutes": round(seconds / 60, 2), "history": history, "budget": budget,
           "loss": {k: round(s - scores[k]["smoothed"]["pixel_accuracy"], 4) for k in images}}
    res["candidates"][c]["folds"][str(f)] = rec
    log(f"fold {f} {c}: train {seconds / 60:.1f} min, acc raw {scores['clean']['raw']['pixel_accuracy']:.3f} "
        f"smoothed {s:.3f} macro F1 {scores['clean']['smoothed']['macro_f1']:.3f}; losses {rec['loss']}")


def main(argv=None):
    args = parse(argv)
    import torch

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.report:
        (out / "REPORT.md").write_text(report(out))
        return 0
    sl, names, folds, cf, grid, images = setup(args)
    path = out / args.results_name
    res = json.loads(path.read_text()) if path.exists() else {}
    res.update(header(args, argv, folds, names))
    res.setdefault("candidates", {})
    for c in args.candidates:
        res["candidates"].setdefault(c, {"recipe": {**BASE, **CANDIDATES[c]}, "folds": {}})
    log(f"folds {folds.record()}; training cells per fold {[int(t.sum()) for t in cf.train]}")
    for f in (args.only_folds if args.only_folds is not None else range(folds.k)):
        for c in args.candidates:
            if str(f) in res["candidates"][c]["folds"]:
                continue
            run_one(args, res, c, f, sl, names, folds, cf, grid, images)
            tmp = path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(res, indent=1, default=str) + "\n")
            tmp.replace(path)
            try:
                (out / "REPORT.md").write_text(report(out))
            except Exception as exc:  # a report never stops the run
                log(f"report failed: {exc!r}")
    log("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
