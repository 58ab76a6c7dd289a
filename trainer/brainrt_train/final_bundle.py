"""``train-and-export --final --choices FILE`` and ``--cv K``: the shipped bundle by one command (issue 31, item 3).

**Choices** (:class:`Choices`, a JSON file or the record in a bundle made this way): the network recipe (a
candidate of :mod:`brainrt_train.netcv` by name and its full recipe), the training budget (epochs x tile batches
per epoch x tiles per batch x outputs per tile side, torch threads), the seed, the folds (``k``), the heads'
candidate grid (or one chosen head recipe) and the class map.

**The final fit** (:func:`final_fit_bundle`), every step recorded in the manifest (``training.extra.final``):

1. the network trained from scratch on **every labeled pixel** of the slice (tiles, the recipe, the fixed
   budget, no validation selection: the last weights; :func:`brainrt_train.netcv.train_fold`);
2. its per-patch, dense and int8 graphs exported (:func:`brainrt_train.pipeline.export_graphs`, the int8 copies
   calibrated on half of the labeled cells' footprints and checked on the other half);
3. the slice's stride-16 features computed from the exported graph (the runtime's ``featurize``);
4. the default head and map smoothing chosen by the heads' spatial cross-validation on those features
   (:func:`brainrt_train.final.choose_heads`, grids widened until the choice is interior), refitted on every
   labeled cell and written as the default (:func:`brainrt_train.final.write_final`); the other heads the
   bundle declares (``linsvm``, ``rbfsvm``, ``gmm``, ``area_density``) fitted on up to ``n_per_class`` labeled
   cells per class, the network's own ``cnn`` head kept.

The heads' figures are made on features of a network trained on the same pixels (in-sample for the
network): optimistic, and they favour small smoothing; the honest estimate of the recipe is the network
cross-validation's (``--cv``, held-out folds).

**--cv K** (:func:`make_choices`): the network candidates under the spatial K-fold cross-validation
(:func:`brainrt_train.netcv.run`, resumable results file), chosen by the cross-validation mean of the smoothed
pixel accuracy; the choices JSON and REPORT.md written to ``OUT.cv/`` beside the bundle, then the final fit.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from brainrt.errors import BrainrtError

log = logging.getLogger("brainrt.train")

#: Who chose the recipes a final fit writes (the manifest's ``chosen_on``).
CHOSEN_BY = "train-and-export --final"
#: The budget's fields, in the order of ``--budget E x B x N x T``.
BUDGET = ("epochs", "tile_batches_per_epoch", "tile_batch", "tiles")
#: The CV's real budget (docs/accuracy/network-cv-long): 8 epochs x 40 batches of 8 tiles of 12 x 12 positions.
DEFAULT_BUDGET = {"epochs": 8, "tile_batches_per_epoch": 40, "tile_batch": 8, "tiles": 12, "threads": 2}
#: Recipe keys a choices file may set (the rest of a recipe is :data:`brainrt_train.netcv.BASE`'s).
RECIPE_KEYS = ("context", "lr", "schedule", "border_p", "rotate_p", "max_scale", "patch_size", "per_patch",
               "weight_decay", "label_smoothing", "mixup", "swa_epochs", "blur_max", "bin_p")


def default_heads():
    """The heads' candidate grid of :mod:`brainrt_train.final` (as a choices file writes it)."""
    from .final import SIGMAS_UM, SPACES, head_candidates

    return {"candidates": [[k, dict(p)] for k, p in head_candidates(ctx=True)], "sigmas_um": list(SIGMAS_UM),
            "spaces": list(SPACES)}


@dataclass(frozen=True)
class Choices:
    """What a final fit is made of (see the module's docstring); :meth:`read` checks a file, :meth:`to_dict`
    is what a choices file and the manifest hold."""

    network: str
    recipe: dict
    budget: dict
    seed: int
    folds: dict
    heads: dict
    class_map: object = "prasad2020"
    cv: dict | None = None

    def to_dict(self):
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def read(cls, path):
        """The choices of a JSON file or of a bundle folder made by a final fit; one line naming ``path`` else."""
        path = Path(path)
        if path.is_dir():
            from brainrt.model.seal import verify_bundle

            m = verify_bundle(path)
            d = ((m.training.extra if m.training else {}).get("final") or {}).get("choices")
            if d is None:
                raise BrainrtError(f"{path}: a bundle without a final fit's choices (training.final.choices); "
                                   "give a choices JSON")
        else:
            try:
                d = json.loads(path.read_text())
            except OSError as exc:
                raise BrainrtError(f"{path}: cannot read the choices file ({exc.strerror or exc})") from None
            except ValueError as exc:
                raise BrainrtError(f"{path}: not a JSON choices file ({exc})") from None
        return cls.from_dict(d, source=path)

    @classmethod
    def from_dict(cls, d, *, source="choices"):
        """Checked :class:`Choices` of a dict; a :class:`BrainrtError` naming ``source`` and the field else."""
        def bad(what):
            return BrainrtError(f"{source}: {what}")

        if not isinstance(d, dict):
            raise bad("expected a JSON object")
        missing = [k for k in ("network", "recipe", "budget", "seed") if k not in d]
        if missing:
            raise bad(f"missing {', '.join(missing)} (a choices file names the network, its recipe, budget and seed)")
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise bad(f"unknown field(s) {', '.join(unknown)}")
        recipe = _checked_recipe(d["recipe"], bad)
        budget = _checked_budget(d["budget"], bad)
        if not isinstance(d["seed"], int) or isinstance(d["seed"], bool):
            raise bad(f"seed: expected an integer, got {d['seed']!r}")
        folds = d.get("folds", {"k": 5})
        if not (isinstance(folds, dict) and isinstance(folds.get("k"), int) and folds["k"] >= 3):
            raise bad(f"folds: expected {{\"k\": K}} with K >= 3, got {folds!r}")
        heads = _checked_heads(d.get("heads", default_heads()), bad)
        return cls(str(d["network"]), recipe, budget, d["seed"], folds, heads, d.get("class_map", "prasad2020"),
                   d.get("cv"))

    @property
    def renderings(self):
        """How many re-imagings of the slice the heads are fitted on besides the slice itself (0: none)."""
        return self.heads.get("renderings", 0)

    def head_grid(self):
        """``(heads, sigmas, spaces)`` of the heads' candidate grid (None: one chosen recipe)."""
        if "chosen" in self.heads:
            return None
        return ([(k, tuple(p.items())) for k, p in self.heads["candidates"]], tuple(self.heads["sigmas_um"]),
                tuple(self.heads["spaces"]))


def _checked_recipe(r, bad):
    if not isinstance(r, dict):
        raise bad(f"recipe: expected an object, got {r!r}")
    unknown = sorted(set(r) - set(RECIPE_KEYS))
    if unknown:
        raise bad(f"recipe: unknown key(s) {', '.join(unknown)} (known: {', '.join(RECIPE_KEYS)})")
    from .netcv import BASE

    full = {**BASE, **r}
    if full.get("per_patch"):
        raise bad("recipe: a final fit trains on tiles (per_patch is a comparison candidate only)")
    for k, v in full.items():
        if k not in ("schedule", "per_patch") and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise bad(f"recipe: {k} must be a number, got {v!r}")
    if full["schedule"] not in ("constant", "onecycle"):
        raise bad(f"recipe: schedule must be constant or onecycle, got {full['schedule']!r}")
    return full


def _checked_budget(b, bad):
    if not isinstance(b, dict):
        raise bad(f"budget: expected an object, got {b!r}")
    b = {**{"threads": DEFAULT_BUDGET["threads"]}, **b}
    for k in (*BUDGET, "threads"):
        if not (isinstance(b.get(k), int) and not isinstance(b.get(k), bool) and b[k] >= 1):
            raise bad(f"budget: {k} must be an integer >= 1, got {b.get(k)!r}")
    return {k: b[k] for k in (*BUDGET, "threads")}


def _checked_heads(h, bad):
    if not isinstance(h, dict):
        raise bad(f"heads: expected an object, got {h!r}")
    n = h.get("renderings", 0)
    if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= 16:
        raise bad(f"heads: renderings must be an integer 0..16 (re-imagings of the slice the heads also fit), got {n!r}")
    return {**_checked_head_grid(h, bad), **({"renderings": n} if n else {})}


def _checked_head_grid(h, bad):
    if "chosen" in h:
        from .final import recipe_of

        try:
            recipe_of(h["chosen"])
        except (KeyError, TypeError, ValueError, AttributeError):
            raise bad(f"heads: chosen must be a recipe (head, its parameters, sigma_um, space), got {h['chosen']!r}") \
                from None
        return {"chosen": dict(h["chosen"])}
    from brainrt_train.cv import HEAD_KINDS

    cands = h.get("candidates")
    if not (isinstance(cands, list) and cands and all(isinstance(c, list) and len(c) == 2 and c[0] in HEAD_KINDS
                                                      and isinstance(c[1], dict) for c in cands)):
        raise bad(f"heads: candidates must be a list of [kind, {{params}}] with kind in {sorted(HEAD_KINDS)}")
    sig, sp = h.get("sigmas_um"), h.get("spaces", ["log"])
    if not (isinstance(sig, list) and sig and all(isinstance(s, (int, float)) and s >= 0 for s in sig)):
        raise bad(f"heads: sigmas_um must be a list of sigmas >= 0 (um), got {sig!r}")
    if not (isinstance(sp, list) and sp and set(sp) <= {"log", "prob"}):
        raise bad(f"heads: spaces must list log and/or prob, got {sp!r}")
    return {"candidates": cands, "sigmas_um": [float(s) for s in sig], "spaces": sp}


def parse_budget(text, threads):
    """``"8x40x8x12"`` (epochs x tile batches per epoch x tiles per batch x outputs per tile side) -> the budget."""
    try:
        values = [int(t) for t in text.lower().split("x")]
    except ValueError:
        values = []
    if len(values) != len(BUDGET) or min(values) < 1:
        raise BrainrtError(f"--budget: expected EPOCHSxBATCHESxTILES_PER_BATCHxOUTPUTS (e.g. 8x40x8x12), got {text!r}")
    return {**dict(zip(BUDGET, values)), "threads": threads}


def cv_folder(out):
    """Where ``--cv`` keeps its results, report and choices: ``OUT.cv`` beside the bundle ``OUT``."""
    out = Path(out)
    return out.parent / f"{out.name}.cv"


def folds_of(labels, k, names, mask_path):
    """The spatial folds of the slice's labels, or the one-line error naming the mask."""
    from . import cv

    try:
        return cv.spatial_folds(labels, k=k, n_classes=len(names))
    except ValueError as exc:
        raise BrainrtError(f"{mask_path}: {k} spatial folds of its labels: {exc}") from None


def train_network(data, choices):
    """The network of the recipe trained on every labeled pixel of the (one) slice for the budget, the last
    weights: a :class:`~brainrt_train.pipeline.Trained` (no test metrics: nothing is held out)."""
    import torch

    from .netcv import train_fold
    from .pipeline import Trained

    torch.set_num_threads(choices.budget["threads"])
    sl, b = data.slices[0], choices.budget
    log.info("training %s on every labeled pixel: %d epochs x %d batches of %d tiles of %d x %d positions, %d threads",
             choices.network, b["epochs"], b["tile_batches_per_epoch"], b["tile_batch"], b["tiles"], b["tiles"],
             b["threads"])
    model, norm, seconds, history, _ = train_fold(
        sl, sl.labels.astype(np.int8), list(data.cmap.names), choices.recipe, batches=b["tile_batches_per_epoch"],
        epochs=b["epochs"], tile_out=b["tiles"], tile_batch=b["tile_batch"], seed=choices.seed, dtype_max=data.dtype_max)
    log.info("trained in %.1f min", seconds / 60)
    return Trained(model, norm, history, seconds, {})


def export_options(data, choices):
    """The :class:`~brainrt_train.pipeline.TrainOptions` the export and the manifest read."""
    from .pipeline import TrainOptions

    r, b = choices.recipe, choices.budget
    return TrainOptions(class_map=data.cmap, patch_size=int(r.get("patch_size", 128)), seed=choices.seed,
                        context=int(r["context"]), epochs=b["epochs"], lr=float(r["lr"]), schedule=r["schedule"],
                        tiles=b["tiles"], tile_batch=b["tile_batch"], border_p=float(r["border_p"]),
                        rotate_p=float(r["rotate_p"]))


def slice_grid(folder, data, renderings=0):
    """The slice's stride-16 features from the bundle being built at ``folder`` (its exported graph, fp32, as
    ``brainrt featurize`` computes them): a :class:`brainrt_train.cv.Grid`; ``renderings``: with N > 0, also
    those of N re-imagings of the slice (:func:`brainrt_train.evaluate.random_rendering`, seeds 0..N-1) on the
    same cells, which the heads are then fitted on too."""
    import brainrt
    from brainrt.bundle.load import Bundle

    from .cv import grid_from
    from .evaluate import random_rendering

    sl, bundle = data.slices[0], Bundle.load(folder)
    t0 = time.perf_counter()
    g = brainrt.featurize(sl.image, bundle, stride=16, precision="fp32")
    log.info("stride-16 features of the slice from the exported graph: %d cells in %.1f s", int(g.valid.sum()),
             time.perf_counter() - t0)
    grid = grid_from(g, sl.labels, list(data.cmap.names))
    if not renderings:
        return grid
    from brainrt.engine.tissue import auto_threshold

    tissue = sl.image > auto_threshold(sl.image, quiet=True)  # the slice's own tissue: the same cells in each
    rend = []
    for i in range(renderings):
        r = brainrt.featurize(random_rendering(sl.image, i), bundle, stride=16, precision="fp32", tissue=tissue)
        if not np.array_equal(r.valid, g.valid):
            raise RuntimeError(f"re-imaging {i} of the slice has other tissue cells than the slice")
        rend.append(r.features)
    log.info("and of %d re-imagings of the slice in %.1f s", renderings, time.perf_counter() - t0)
    return dataclasses.replace(grid, renderings=tuple(rend))


def choose_default_head(grid, folds, choices):
    """The heads' spatial cross-validation on ``grid``: ``(chosen Recipe, its summary, the record)``."""
    from . import cv
    from .final import choose_heads, recipe_of

    t0 = time.perf_counter()
    cf = cv.cell_folds(folds, grid.labels, grid.stride, grid.valid.shape, len(grid.names))
    hg = choices.head_grid()
    if hg is None:
        chosen = recipe_of(choices.heads["chosen"])
        results, _ = cv.evaluate_heads(grid, cf, [chosen.head], [chosen.sigma_um], (chosen.space,), seed=choices.seed)
        record = {"chosen": chosen.label(), "chosen_recipe": chosen.to_dict(), "widened": [],
                  "grid": cv.as_jsonable(results)}
    else:
        chosen, results, record = choose_heads(grid, cf, hg[0], seed=choices.seed, sigmas=hg[1], spaces=hg[2],
                                               log=log.info)
    record["seconds"] = round(time.perf_counter() - t0, 1)
    log.info("heads' cross-validation: %s in %.0f s", chosen.label(), record["seconds"])
    return chosen, results[chosen], record


def labeled_cells(grid):
    """Rows, columns and classes of every labeled tissue cell of ``grid``."""
    r, c = np.nonzero(grid.valid & (grid.y_cells >= 0))
    return r, c, grid.y_cells[r, c]


def other_heads(folder, grid, n_classes, seed, n_per_class=2000):
    """The bundle's scikit-learn heads (:func:`brainrt_train.heads.fit_heads`) fitted on up to ``n_per_class``
    labeled cells per class (drawn with ``seed``), saved under ``folder/heads``: ``(heads, files, cells per class)``."""
    import joblib

    from .heads import fit_heads

    r, c, y = labeled_cells(grid)
    rng = np.random.default_rng(seed)
    take = np.sort(np.concatenate([rng.permutation(np.flatnonzero(y == k))[:n_per_class] for k in range(n_classes)]))
    x = grid.features[r[take], c[take]]
    heads, _ = fit_heads(x, y[take], x[:0], y[:0], n_classes=n_classes, seed=seed)
    (folder / "heads").mkdir(exist_ok=True)
    files = {}
    for name, head in heads.items():
        joblib.dump(head, folder / "heads" / f"{name}.joblib")
        files[name] = f"heads/{name}.joblib"
    return heads, files, np.bincount(y[take], minlength=n_classes).tolist()


def int8_of(folder, data, grid, trained, graphs, logreg, seed):
    """The int8 graphs (:func:`brainrt_train.pipeline.int8_graphs`), calibrated on footprints of half of the
    labeled cells and checked against fp32 on the other half (every labeled pixel trained the network)."""
    from brainrt.geometry import cell_centre

    from .data import PatchSet
    from .pipeline import int8_graphs, normalization_of

    r, c, y = labeled_cells(grid)
    h, w = grid.labels.shape
    centres = np.stack([np.minimum(cell_centre(r, grid.stride), h - 1), np.minimum(cell_centre(c, grid.stride), w - 1)], 1)
    half = np.random.default_rng(seed).permutation(len(y)) % 2 == 0
    sets = {s: PatchSet(np.zeros(int(m.sum()), np.int64), centres[m], y[m]) for s, m in (("train", half), ("val", ~half))}
    return int8_graphs(folder, data.slices, sets, footprint=graphs.plain.footprint, dense_info=graphs.dense, head=logreg,
                       normalization=normalization_of(data, trained).to_dict(), seed=seed)


def training_record(data, choices, trained, *, total_seconds):
    """The manifest's :class:`~brainrt.model.manifest.Training` of a final fit (no split: every labeled pixel)."""
    from brainrt.model.manifest import Training, TrainingSlice

    sl, r, b = data.slices[0], choices.recipe, choices.budget
    pixels = np.bincount(sl.labels[sl.labels >= 0].ravel(), minlength=data.n_classes)
    return Training(
        data=(TrainingSlice(sl.image_path.name, sl.mask_path.name, sl.sha256["image"], sl.sha256["mask"],
                            tuple(sl.image.shape)),),
        split={"mode": "none: the final fit trains on every labeled pixel (choices made by spatial cross-validation)"},
        counts={"train": {n: {"asked": int(v), "taken": int(v)} for n, v in zip(data.cmap.names, pixels)}},
        seed=choices.seed, epochs_run=len(trained.history), epochs=b["epochs"], batch_size=b["tile_batch"],
        lr=float(r["lr"]), schedule=r["schedule"], train_seconds=round(trained.seconds, 1),
        total_seconds=round(total_seconds, 1),
        extra={"context": r["context"], "tiles": {"outputs_per_side": b["tiles"], "tiles_per_batch": b["tile_batch"],
                                                  "batches_per_epoch": b["tile_batches_per_epoch"]},
               "augment": {k: r[k] for k in ("border_p", "rotate_p") if k in r}, "history": trained.history})


def cv_metrics(summary, names):
    """The manifest's metrics of a final fit: the chosen head's cross-validation figures (mean over folds)."""
    s, raw = summary["smoothed"], summary["raw"]
    return {"cv_pixel_accuracy": s["pixel_accuracy"]["mean"], "cv_pixel_accuracy_raw": raw["pixel_accuracy"]["mean"],
            "cv_macro_f1": s["macro_f1"]["mean"], **{f"cv_f1_{n}": s["f1"][n]["mean"] for n in names},
            "source": "the heads' spatial cross-validation on the final network's features (in-sample for the "
                      "network: optimistic)"}


def final_fit_bundle(image, mask, out, choices: Choices, *, overwrite=False, record=None, command=""):  # long: the steps in order
    """The final fit of ``choices`` on the slice ``image`` / ``mask``, written as a verified bundle at ``out``
    (built beside it, renamed into place when complete); returns its :class:`~brainrt.model.manifest.Manifest`."""
    from brainrt.io import atomic_path
    from brainrt.model.seal import seal_bundle
    from brainrt.outputs.finished import refusal

    from .final import best_logreg, final_fit, final_record, recipe_of, write_final
    from .pipeline import bundle_manifest, export_graphs, load_data, save_cnn_head

    t0, out = time.perf_counter(), Path(out)
    if out.exists() and not overwrite:
        raise refusal(out, "already exists")
    data = load_data([(image, mask)], export_options_for_loading(choices))
    names = list(data.cmap.names)
    folds = folds_of(data.slices[0].labels, choices.folds["k"], names, mask)
    trained = train_network(data, choices)
    opts = export_options(data, choices)
    with atomic_path(out, overwrite=overwrite, is_dir=True) as tmp:
        graphs = export_graphs(tmp, trained, opts)
        files = {"cnn": save_cnn_head(tmp, graphs.plain)}
        seal_bundle(tmp, bundle_manifest(data, trained, graphs, opts, heads=files, n_features=64, int8=None,
                                         training=None, metrics={}, default_head="cnn"))
        grid = slice_grid(tmp, data, choices.renderings)
        chosen, summary, heads_cv = choose_default_head(grid, folds, choices)
        model, _ = final_fit(grid, chosen, choices.seed)
        heads, more, fitted_on = other_heads(tmp, grid, len(names), choices.seed)
        lr_recipe = best_logreg(heads_cv["grid"]) if any(v["recipe"]["head"] == "logreg"
                                                         for v in heads_cv["grid"].values()) else None
        logreg = final_fit(grid, recipe_of(lr_recipe), choices.seed)[0] if lr_recipe else heads["logreg"]
        int8 = int8_of(tmp, data, grid, trained, graphs, logreg, choices.seed)
        m = bundle_manifest(data, trained, graphs, opts, heads={**files, **more}, n_features=int(grid.features.shape[-1]),
                            int8=int8, training=training_record(data, choices, trained,
                                                                total_seconds=time.perf_counter() - t0),
                            metrics=cv_metrics(summary, names))
        seal_bundle(tmp, dataclasses.replace(m, extra={**m.extra, "run": record}) if record is not None else m)
        n_cells = {n: int(((grid.y_cells == i) & grid.valid).sum()) for i, n in enumerate(names)}
        rec = final_record(chosen, folds.record(), n_cells, summary, folds.k, choices.seed, command,
                           chosen_by=CHOSEN_BY, slice_name=data.slices[0].image_path.name)
        rec.update(choices=choices.to_dict(), heads_cv={k: heads_cv[k] for k in ("chosen", "widened", "seconds")},
                   estimate="the chosen recipe's own cross-validation on the final network's features: in-sample for "
                            "the network (it trained on every labeled pixel), so optimistic; the network's honest "
                            "estimate is its cross-validation (choices.cv)",
                   other_heads=f"linsvm, rbfsvm, gmm, area_density fitted on up to 2000 labeled cells per class "
                               f"({dict(zip(names, fitted_on))}); cnn: the network's own last layer",
                   logreg=logreg_record(lr_recipe, chosen.head[0], model, logreg),
                   int8="calibrated on footprints of half of the labeled cells, agreement checked on the other half",
                   renderings={"n": choices.renderings, "what": "the default and logreg heads are fitted on the "
                               "slice's features and on those of this many re-imagings of it (random_rendering, seeds "
                               "0..n-1), the slice's own rows weighing half"} if choices.renderings else None)
        manifest = write_final(tmp, model, chosen, rec, logreg=logreg, chosen_by=CHOSEN_BY)
    log.info("bundle written to %s in %.1f min", out, (time.perf_counter() - t0) / 60)
    return manifest


def logreg_record(lr_recipe, kind, model, logreg):
    """What the bundle's ``logreg`` head is (``training.final.logreg``): the one
    :func:`brainrt_train.final.logreg_written` says :func:`~brainrt_train.final.write_final` writes for a default
    head of ``kind`` (``lr_recipe``: the cross-validation's best logistic regression, which ``logreg`` refits)."""
    from .final import logreg_written

    which = logreg_written(kind, model, logreg)[1]
    if which == "stage1":
        return {"recipe": None, "what": "the default context head's first stage, fitted with it on the same cells "
                                        "(its probabilities are what the context head pools) (--head logreg)"}
    if which is not None and lr_recipe is not None:
        return {"recipe": lr_recipe, "what": "the best logistic regression of the cross-validation, refitted on "
                                             "every labeled cell (--head logreg)"}
    return {"recipe": None, "what": "the trainer's logistic regression, fitted with the other heads (--head logreg)"}


def export_options_for_loading(choices):
    """The options :func:`brainrt_train.pipeline.load_data` reads (the class map)."""
    from .data import ClassMap
    from .pipeline import TrainOptions

    cm = choices.class_map
    return TrainOptions(class_map=ClassMap.from_dict(cm) if isinstance(cm, dict) else cm)


def make_choices(image, mask, out, *, k, candidates, budget, seed=0, class_map="prasad2020", command=""):
    """``--cv K``: the network ``candidates`` under the spatial K-fold cross-validation (results kept in
    ``OUT.cv/results.json`` after every fold: a rerun resumes), the best by the mean smoothed pixel accuracy;
    ``OUT.cv/choices.json`` and ``OUT.cv/REPORT.md`` written; returns the :class:`Choices`."""
    import torch

    from brainrt.io import write_json

    from . import netcv
    from .data import ClassMap

    cmap = class_map if isinstance(class_map, ClassMap) else ClassMap.resolve(class_map)
    folder = cv_folder(out)
    try:
        setup = netcv.Setup(image, mask, k=k, class_map=cmap)
    except ValueError as exc:
        raise BrainrtError(f"{mask}: {k} spatial folds of its labels: {exc}") from None
    if setup.sl.image.dtype != np.uint8:
        raise BrainrtError(f"{image}: --cv compares networks on 8-bit slices ({setup.sl.image.dtype} given); "
                           "convert it, or make the choices file by hand and run --final --choices")
    folder.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(budget["threads"])
    note = "run by `brainrt train-and-export --cv`; its choices: choices.json"

    def write_report(res):
        (folder / "REPORT.md").write_text(netcv.report(folder, res, note=note))

    res = netcv.run(setup, folder / "results.json", list(candidates), budget, command=command, seed=seed,
                    after_fold=write_report, features_dir=folder / "features")
    write_report(res)
    choices = choices_of(res, cmap, command, source=folder / "choices.json")
    chosen, record = heads_on_fold_networks(setup, choices, folder / "features" / choices.network)
    write_json(folder / "heads.json", record)
    choices = dataclasses.replace(choices, heads=chosen_heads(chosen, choices),
                                  cv={**choices.cv, "heads": {"chosen": chosen.label(), "on": FOLD_HEADS,
                                                              "grid": choices.heads, "report": "heads.json"}})
    write_json(folder / "choices.json", choices.to_dict())
    return choices


def chosen_heads(chosen, choices):
    """The ``heads`` of a choices file once the heads' grid is chosen: the recipe, and the re-imagings kept."""
    return {"chosen": chosen.to_dict(), **({"renderings": choices.renderings} if choices.renderings else {})}


#: What the default head and map regularization of ``--cv``'s choices are chosen on.
FOLD_HEADS = ("each fold's head on the features of that fold's network (trained on the fold's training pixels "
              "only), not on a network that learned the held-out labels")


def heads_on_fold_networks(setup, choices, cache):
    """The heads' grid of ``choices`` under the folds of ``setup``, each fold's head fitted and scored on the
    features of the chosen candidate's network of that fold (kept in ``cache`` by the network CV, trained again
    where missing); returns ``(chosen Recipe, the record)``."""
    from . import netcv
    from .final import choose_heads

    heads, sigmas, spaces = choices.head_grid()
    features_of = netcv.fold_features(setup, choices.recipe, choices.budget, seed=choices.seed, cache=cache,
                                      renderings=choices.renderings, log=log.info)
    chosen, _, record = choose_heads(setup.grid, setup.cf, heads, seed=choices.seed, sigmas=sigmas, spaces=spaces,
                                     features_of=features_of, log=log.info)
    return chosen, {**record, "features": FOLD_HEADS}


def choices_of(res, cmap, command, *, source, heads=None):
    """The :class:`Choices` of a network cross-validation's results ``res`` (:func:`brainrt_train.netcv.run`): the
    best candidate by the mean smoothed pixel accuracy over the folds, its budget, seed and folds; ``heads``: the
    heads' grid (default :func:`default_heads`)."""
    from . import netcv

    name, means = netcv.choose(res)
    log.info("network chosen by the %d-fold cross-validation: %s (mean smoothed pixel accuracy %s)", res["folds"]["k"],
             name, {c: round(v, 3) for c, v in means.items()})
    budget = {k: res["budget"][k] for k in (*BUDGET, "threads")}
    return Choices.from_dict({
        "network": name, "recipe": {**res["base_recipe"], **res["candidates"][name]["recipe"]}, "budget": budget,
        "seed": res["seed"], "folds": res["folds"], "heads": heads or default_heads(), "class_map": cmap.to_dict(),
        "cv": {"criterion": "mean over the folds of the smoothed pixel accuracy of held-out pixels (head: "
                            f"{res['head']}, Gaussian {res['sigma_um']:g} um)", "means": means,
               "folds_scored": {c: sorted(e["folds"], key=int) for c, e in res["candidates"].items()},
               "command": res["command"], "by": command}}, source=source)
