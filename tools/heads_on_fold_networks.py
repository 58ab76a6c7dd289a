"""The default head and map regularization chosen on the fold networks' features (issue 31, item 3).

A final network trains on every labeled pixel, so a heads' cross-validation on its features scores held-out
cells whose labels the network learned: it flatters every head and favours small map regularizers (the bias
that ``tools/cv_heads.py --unseen-only`` avoids for the shipped network). Here each fold's head is fitted and
scored on the features of a network of the chosen recipe trained on **that fold's training pixels only** (the
network cross-validation's network of that fold: same recipe, budget and seed), over the heads' candidate grid
of the choices file, grids widened until the choice is interior (:func:`brainrt_train.final.choose_heads`). The
choice is written into a copy of the choices file as ``heads.chosen``, which ``train-and-export --final
--choices`` then fits on the final network's features without choosing again.

    python tools/heads_on_fold_networks.py --image ../shared/data/slice309.tif \\
        --mask ../shared/data/slice309_areas.tif --choices docs/accuracy/network-cv-long/choices.json \\
        --cache runs/fold-features -o docs/accuracy/network-cv-long/choices-final.json \\
        --report docs/accuracy/network-cv-long/heads-on-fold-networks.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--image", required=True)
    ap.add_argument("--mask", required=True)
    ap.add_argument("--choices", required=True, help="The network cross-validation's choices JSON.")
    ap.add_argument("--cache", required=True, help="Folder keeping each fold network's features (fold{f}.npy, and "
                    "fold{f}.r{i}.npy of the re-imagings when the choices' heads.renderings is N > 0).")
    ap.add_argument("-o", "--out", required=True, help="The choices JSON to write, with heads.chosen.")
    ap.add_argument("--report", required=True, help="JSON of the heads' cross-validation on the fold networks.")
    args = ap.parse_args(argv)
    import torch

    from brainrt_train import netcv
    from brainrt_train.data import ClassMap
    from brainrt_train.final_bundle import FOLD_HEADS, Choices, chosen_heads, heads_on_fold_networks

    choices = Choices.read(args.choices)
    if "chosen" in choices.heads:
        raise SystemExit(f"{args.choices}: heads already chosen ({choices.heads['chosen']}); give the CV's choices")
    torch.set_num_threads(choices.budget.get("threads", 2))
    cmap = ClassMap.from_dict(choices.class_map) if isinstance(choices.class_map, dict) else choices.class_map
    setup = netcv.Setup(args.image, args.mask, k=choices.folds["k"], class_map=cmap, changes=False)
    if choices.folds.get("origin") and setup.folds.record() != choices.folds:
        raise SystemExit(f"{args.mask}: its folds {setup.folds.record()} are not the choices' {choices.folds}")
    t0 = time.perf_counter()
    chosen, record = heads_on_fold_networks(setup, choices, args.cache)
    command = "python tools/heads_on_fold_networks.py " + " ".join(argv if argv is not None else sys.argv[1:])
    record.update(command=command, network=choices.network, seconds=round(time.perf_counter() - t0, 1))
    Path(args.report).write_text(json.dumps(record, indent=1, default=str) + "\n")
    out = {**choices.to_dict(), "heads": chosen_heads(chosen, choices)}
    out["cv"] = {**(out.get("cv") or {}), "heads": {"chosen": chosen.label(), "on": FOLD_HEADS,
                                                    "grid": choices.heads,
                                                    "report": str(args.report), "command": command}}
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    log(f"chosen on the fold networks' features: {chosen.label()}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
