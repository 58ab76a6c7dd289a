"""The command line of the study: options, the stages in order, results.json and REPORT.md."""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

from brainrt.io import write_json

from . import (exp1_heads, exp2_baselines, exp3_unsupervised, exp4_noise, exp5_structure, exp6_subdivision,
               exp7_scale)
from .common import PAPER, Study, log
from .prepare import build_extractors, compute_features, setup
from .report import write_report

#: The experiments in order: (``--only`` key, module with ``KEY``, ``run`` and ``report``).
EXPERIMENTS = (("1", exp1_heads), ("2", exp2_baselines), ("3", exp3_unsupervised), ("4", exp4_noise),
               ("5", exp5_structure), ("6", exp6_subdivision), ("7", exp7_scale))
#: How the command is spelled in REPORT.md and results.json (run from the repository root).
COMMAND = "python -m tools.study"
DESCRIPTION = ('Reproduce the experiments of Balwani & Dyer, "Modeling variability in brain architecture\n'
               'with deep feature learning" (Asilomar 2019), with a brainrt model bundle.')


def parse_args(argv):
    p = argparse.ArgumentParser(prog=COMMAND, description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="bundle folder (e.g. models/slice309-paper6)")
    p.add_argument("--image", required=True, help="the bundle's training slice (TIFF)")
    p.add_argument("--mask", required=True, help="its annotation (TIFF of area codes)")
    p.add_argument("-o", "--out", required=True, help="output folder (REPORT.md, results.json, PNGs)")
    p.add_argument("--stride", type=int, default=16, help="grid stride of the whole-slice map (exp. 7)")
    p.add_argument("--subdiv-stride", type=int, default=8, help="grid stride inside the cortex (exp. 6)")
    p.add_argument("--subdivide-class", default="Ctx", help="class to sub-divide (exp. 6)")
    p.add_argument("-k", "--k", type=int, default=4, help="clusters of the sub-division (exp. 6)")
    p.add_argument("--noise-levels", type=float, nargs="+", default=list(exp4_noise.NOISE_LEVELS))
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


def _stage(st, name, fn):
    """Run one stage, timed; a failure is recorded (and printed) and the other stages still run."""
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


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("exp[1-7]_*.png"):  # figures of an earlier run (only ours)
        old.unlink()
    st = Study(args=args, out=out, command=f"{COMMAND} {shlex.join(argv)}")
    warnings.filterwarnings("ignore", category=FutureWarning)
    t0 = time.perf_counter()
    log(f"output folder {out}; {'QUICK mode' if args.quick else 'full run'}")
    _stage(st, "setup", setup)
    if "setup" in st.errors:
        raise SystemExit(f"setup failed: {st.errors['setup']}")
    with tempfile.TemporaryDirectory(prefix="study-") as tmp:
        st.workdir = tmp
        _stage(st, "features", lambda s: (build_extractors(s), compute_features(s)))
        for key, exp in EXPERIMENTS:
            if not args.only or key in args.only:
                _stage(st, exp.KEY, exp.run)
    total = time.perf_counter() - t0
    st.results.update(timings=dict(st.timings, total=round(total, 1)), command=st.command, paper=PAPER,
                      skipped=[n for n in st.notes if "skipped" in n], figures=st.figures)
    write_json(out / "results.json", st.results)
    write_report(st, total, [exp.report for _, exp in EXPERIMENTS])
    log(f"wrote {out / 'REPORT.md'}, {out / 'results.json'} and {sum(map(len, st.figures.values()))} figures "
        f"in {total / 60:.1f} min")
    return 1 if st.errors else 0
