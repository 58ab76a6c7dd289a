"""The epoch count of a network recipe chosen by the spatial cross-validation (issue 31, item 3).

Each epoch count of the grid is one ``tools/network_cv.py`` run of the same candidate, folds, seed and
budget per epoch (``--epochs E``, its own ``-o`` folder). This merges them as candidates named
``"mixup+swa 8 ep"``, writes the comparison (``REPORT.md`` with every fold's per-class F1, raw and
smoothed accuracy, guards and imaging-change losses; ``epochs.png``; the merged results ``grid.json``),
and, with ``--choices``, the final fit's choices with ``budget.epochs`` set to the count with the best
CV mean. A best count at
the grid's edge is not a choice: the choices file is then refused (exit 2) until the grid is extended.

    python tools/epochs_cv.py --runs runs/epochs/e4 runs/epochs/e8 runs/epochs/e16 \\
        --candidate mixup+swa -o docs/accuracy/final-fit/epochs \\
        --choices docs/accuracy/final-fit/choices-final-r4.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from brainrt_train.netcv import by_epochs, choose_epochs, log, report


def parse(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", nargs="+", required=True, help="network_cv.py output folders, one epoch count each")
    ap.add_argument("--candidate", default="mixup+swa")
    ap.add_argument("-o", "--out", required=True)
    ap.add_argument("--choices", help="a choices file whose recipe was run: written again as OUT/choices.json with "
                    "the chosen epoch count")
    return ap.parse_args(argv)


def picture(out, res):
    """``out/epochs.png``: per epoch count, the folds' smoothed and raw accuracy and macro F1 (mean and each fold),
    and the imaging changes' mean losses."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    epochs = res["budget"]["epochs"]
    folds = [list(e["folds"].values()) for e in res["candidates"].values()]
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    for (what, key), m in ((("smoothed", "pixel_accuracy"), "o-"), (("raw", "pixel_accuracy"), "s--"),
                           (("smoothed", "macro_f1"), "^:")):
        vals = [[r["clean"][what][key] for r in fo] for fo in folds]
        line, = a.plot(epochs, [np.mean(v) for v in vals], m, label=f"{key.replace('_', ' ')}, {what}")
        for e, v in zip(epochs, vals):
            a.plot([e] * len(v), v, ".", color=line.get_color(), alpha=0.4)
    for change in ("blur1", "bin2", "rerendered"):
        b.plot(epochs, [np.nanmean([r["loss"].get(change, np.nan) for r in fo]) for fo in folds], "o-", label=change)
    a.set_title("held-out pixels, mean of the folds (dots: each fold)")
    b.set_title("loss of smoothed pixel accuracy under an imaging change")
    for ax in (a, b):
        ax.set_xlabel("epochs")
        ax.set_xticks(epochs)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(Path(out) / "epochs.png", dpi=90)
    plt.close(fig)


def write_choices(out, path, res, chosen, argv):
    """``out/choices.json``: the choices of ``path`` with the CV's epoch count (``chosen``: :func:`choose_epochs`'s
    answer); exit 2 if it is at the grid's edge."""
    from brainrt.io import write_json
    from brainrt_train.final_bundle import Choices

    e, means, interior = chosen
    if not interior:
        raise SystemExit(f"{path}: the best epoch count, {e}, is at the edge of the grid {sorted(means)}: "
                         "extend the grid before choosing")
    c = Choices.read(path)
    c = dataclasses.replace(c, budget={**c.budget, "epochs": e}, cv={**(c.cv or {}), "epochs": {
        "chosen": e, "means": {str(k): round(v, 4) for k, v in sorted(means.items())},
        "criterion": "mean over the folds of the smoothed pixel accuracy of held-out pixels (the network CV's head "
                     "and smoothing)", "report": str(out), "runs": [str(r) for r in res["runs"]],
        "by": "python tools/epochs_cv.py " + " ".join(argv if argv is not None else sys.argv[1:])}})
    write_json(Path(out) / "choices.json", c.to_dict())
    log(f"wrote {Path(out) / 'choices.json'}: {e} epochs (CV means {means})")


def main(argv=None):
    args = parse(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res = {**by_epochs(args.runs, args.candidate), "runs": args.runs}
    (out / "REPORT.md").write_text(report(out, res, note=f"{args.candidate} at each epoch count of the grid, "
                                          f"from {', '.join(args.runs)}"))
    picture(out, res)
    (out / "grid.json").write_text(json.dumps(res, indent=1, default=str) + "\n")
    chosen = e, means, interior = choose_epochs(res)
    log(f"CV means by epochs: {({k: round(v, 4) for k, v in means.items()})}; best {e} "
        f"({'interior' if interior else 'at the edge of the grid'})")
    if args.choices:
        write_choices(out, args.choices, res, chosen, argv)
    return 0


def cli(argv=None):
    """:func:`main`, a refusal (a ``SystemExit`` with its line) printed on one line with exit status 2."""
    try:
        return main(argv)
    except SystemExit as exc:
        if not isinstance(exc.code, str):
            raise
        print(exc.code, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(cli())
