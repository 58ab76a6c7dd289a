"""Feature-network candidates compared under the spatial K-fold cross-validation (issue 31, item 2).

The command and report over :mod:`brainrt_train.netcv` (the candidates, training on a fold's label image,
the fold's scores, the resumable results file), which ``train-and-export --cv K`` runs too.

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
import sys
from pathlib import Path

from brainrt_train.netcv import CANDIDATES, Setup, log, report, run


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
    ap.add_argument("--keep", help="a folder keeping each fold's network (CANDIDATE/fold{f}.pt) and clean grid "
                    "features (CANDIDATE/fold{f}.npy), for scoring other heads later without training again")
    ap.add_argument("--report", action="store_true", help="only merge the results files and write REPORT.md, folds.png")
    ap.add_argument("--choices", action="store_true", help="with --report: also write choices.json, the final fit's "
                    "choices (the best candidate by the CV mean of smoothed pixel accuracy; train-and-export --final "
                    "--choices)")
    return ap.parse_args(argv)


def write_choices(out, argv):
    """``out/choices.json``: the final fit's choices made from the merged results."""
    from brainrt.io import write_json
    from brainrt_train.data import ClassMap
    from brainrt_train.final_bundle import choices_of
    from brainrt_train.netcv import merged

    command = "python tools/network_cv.py " + " ".join(argv if argv is not None else sys.argv[1:])
    choices = choices_of(merged(out), ClassMap.resolve("prasad2020"), command, source=out / "results*.json")
    write_json(out / "choices.json", choices.to_dict())
    log(f"wrote {out / 'choices.json'}: {choices.network} (CV means {choices.cv['means']})")


def main(argv=None):
    args = parse(argv)
    import torch

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.report:
        (out / "REPORT.md").write_text(report(out))
        if args.choices:
            write_choices(out, argv)
        return 0

    def write_report(_res):
        try:
            (out / "REPORT.md").write_text(report(out))
        except Exception as exc:  # a report never stops the run
            log(f"report failed: {exc!r}")

    budget = {"epochs": args.epochs, "tile_batches_per_epoch": args.batches, "tiles": args.tiles,
              "tile_batch": args.tile_batch, "threads": args.threads}
    command = "python tools/network_cv.py " + " ".join(argv if argv is not None else sys.argv[1:])
    run(Setup(args.image, args.mask, k=args.folds), out / args.results_name, args.candidates, budget, command=command,
        seed=args.seed, sigma_um=args.sigma_um, only_folds=args.only_folds, after_fold=write_report,
        features_dir=args.keep)
    log("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
