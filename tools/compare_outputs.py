"""Same outputs before and after: run a fixed set of commands from two trees and compare what they write.

Each side is a commit (checked out as a detached git worktree in the work folder) or a checkout
path (``.`` = this working tree, uncommitted changes included); its commands run with that
tree's ``runtime``, ``trainer`` and root on ``PYTHONPATH`` and its own ``models/``. The inputs are
written once and shared, so the run records of both sides name the same files:

- ``demo``: ``brainrt demo`` (synthetic slice; features, areas, clusters, sub-division);
- ``crop16`` / ``crop4``: a 1000 x 1500 crop of ``../shared/data/slice309.tif`` (written to the
  work folder, never committed; skipped when the data are absent) featurized and classified at
  stride 16 (scored against the crop of its annotation; and its saved features classified), classified at
  stride 4, with the default bundle;
- ``volume``: the README's synthetic 6 x 256 x 384 stack, classified and featurized with
  ``--z all --workers 2`` (a local Dask cluster).

Every file either side wrote is compared, bit for bit where the format allows: TIFF pixels (every
page) and resolution, PNG pixels, zarr chunks byte for byte, JSON (run records, metrics, zarr
metadata) after dropping what differs by nature (``seconds``, rates, ``timings``, ``mtime_ns``)
and writing each side's folders as ``<OUT>`` / ``<TREE>``. The last line is the summary to quote::

    python tools/compare_outputs.py HEAD .            # this tree's uncommitted change against HEAD
    python tools/compare_outputs.py main~1 main --only demo,volume
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
CROP = (slice(300, 1300), slice(2600, 4100))  # rows, cols of slice309: 1000 x 1500, cortex to thalamus
#: JSON keys whose values differ from run to run by nature (times, rates, file times).
VOLATILE = ("seconds", "timings", "mtime_ns", "patches_per_s", "blocks_per_s", "cells_per_s", "elapsed", "created")


def _cli(*args):
    return [sys.executable, "-c", "from brainrt.cli import main; main()", *args]


def commands(inputs: Path) -> dict:
    """Name -> list of (command line, using ``{tree}`` for the side's checkout), or None where its input is absent."""
    crop, stack, areas = str(inputs / "crop.tif"), str(inputs / "stack.tif"), str(inputs / "crop_areas.tif")
    synth = ["--model", "{tree}/models/synthetic-demo"]
    have_crop = (inputs / "crop.tif").exists()
    return {
        "demo": [_cli("demo", "-o", "demo")],
        "crop16": [_cli("featurize", crop, "--stride", "16", "-o", "crop16.features.zarr"),
                   _cli("classify", crop, "--stride", "16", "--truth", areas, "-o", "crop16.labels.ome.tif"),
                   _cli("classify", "crop16.features.zarr", "--truth", areas, "-o", "crop16.saved.labels.ome.tif")]
        if have_crop else None,
        "crop4": [_cli("classify", crop, "--stride", "4", "-o", "crop4.labels.ome.tif")] if have_crop else None,
        "volume": [_cli("classify", stack, "--z", "all", "-o", "vol.ome.zarr", "--workers", "2", *synth),
                   _cli("featurize", stack, "--z", "all", "-o", "vol.features.zarr", "--workers", "2", *synth)],
    }


def write_inputs(folder: Path):
    """The shared inputs: the synthetic stack and, where the data are, the slice309 crop."""
    import tifffile

    from brainrt.synth import make_volume

    folder.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(folder / "stack.tif", make_volume((6, 256, 384)).image, photometric="minisblack")
    if (DATA / "slice309.tif").exists():
        tifffile.imwrite(folder / "crop.tif", tifffile.imread(DATA / "slice309.tif")[CROP])
        tifffile.imwrite(folder / "crop_areas.tif", tifffile.imread(DATA / "slice309_areas.tif")[CROP])


def checkout(side: str, work: Path) -> Path:
    """The tree of ``side``: a path as it is, else a detached worktree of the commit."""
    if Path(side).is_dir():
        return Path(side).resolve()
    rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", f"{side}^{{commit}}"], check=True,
                         capture_output=True, text=True).stdout.strip()
    tree = work / f"tree-{rev[:10]}"
    if not tree.exists():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), rev], check=True,
                       capture_output=True)
    return tree


def run_side(tree: Path, out: Path, cmds: list, log) -> list:
    """Run ``cmds`` from ``tree`` with the working folder ``out``; (command, exit status) of each."""
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(str(tree / p) for p in ("runtime", "trainer", ".")))
    done = []
    for cmd in cmds:
        cmd = [c.replace("{tree}", str(tree)) for c in cmd]
        r = subprocess.run(cmd, cwd=out, env=env, capture_output=True, text=True)
        log.write(f"$ {' '.join(cmd[3:])}  (rc {r.returncode})\n{r.stdout}{r.stderr}\n")
        done.append((" ".join(cmd[3:5]), r.returncode))
    return done


# --------------------------------------------------------------------------- comparing
def _normal(obj, roots):
    """``obj`` with the volatile keys dropped and each side's folders written as their names."""
    if isinstance(obj, dict):
        return {k: _normal(v, roots) for k, v in obj.items() if k not in VOLATILE}
    if isinstance(obj, list):
        return [_normal(v, roots) for v in obj]
    if isinstance(obj, str):
        for path, name in roots:
            obj = obj.replace(path, name)
    return obj


def _tiff(path):
    import tifffile

    with tifffile.TiffFile(path) as tif:
        pages = [(p.asarray(), p.tags.get("XResolution").value if "XResolution" in p.tags else None) for p in tif.pages]
    return pages


def compare_file(a: Path, b: Path, roots_a, roots_b) -> str | None:
    """None when ``a`` and ``b`` hold the same output, else what differs; the kind compared is returned as ``+kind``."""
    name = a.name.lower()
    if a.read_bytes() == b.read_bytes():
        return "+bytes"
    if name.endswith((".tif", ".tiff")):
        pa, pb = _tiff(a), _tiff(b)
        if len(pa) != len(pb):
            return f"{len(pa)} vs {len(pb)} pages"
        for i, ((xa, ra), (xb, rb)) in enumerate(zip(pa, pb)):
            if xa.shape != xb.shape or xa.dtype != xb.dtype or not np.array_equal(xa, xb, equal_nan=xa.dtype.kind == "f"):
                return f"page {i} pixels differ ({_diff(xa, xb)})"
            if ra != rb:
                return f"page {i} resolution {ra} vs {rb}"
        return "+tiff pixels"
    if name.endswith(".png"):
        import matplotlib.image as mpimg

        xa, xb = mpimg.imread(a), mpimg.imread(b)
        return "+png pixels" if np.array_equal(xa, xb) else f"png pixels differ ({_diff(xa, xb)})"
    if name.endswith(".json") or name in (".zattrs", ".zarray", ".zgroup"):
        ja, jb = _normal(json.loads(a.read_text()), roots_a), _normal(json.loads(b.read_text()), roots_b)
        return "+json" if ja == jb else f"json differs: {_json_diff(ja, jb)}"
    return "bytes differ"


def _diff(xa, xb):
    if xa.shape != xb.shape:
        return f"shape {xa.shape} vs {xb.shape}"
    d = xa != xb
    return f"{int(d.sum())} of {d.size} values"


def _json_diff(ja, jb, where=""):
    if isinstance(ja, dict) and isinstance(jb, dict):
        for k in sorted(set(ja) | set(jb)):
            if ja.get(k, "<absent>") != jb.get(k, "<absent>"):
                return _json_diff(ja.get(k, "<absent>"), jb.get(k, "<absent>"), f"{where}.{k}")
    return f"{where or '.'}: {str(ja)[:80]} vs {str(jb)[:80]}"


def compare_trees(out_a: Path, out_b: Path, roots_a, roots_b):
    """(counts by kind of identical file, [differences]) over every file under either folder."""
    files = lambda d: {p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file()}  # noqa: E731
    fa, fb = files(out_a), files(out_b)
    same, diffs = {}, [f"{f}: only in A" for f in sorted(fa - fb)] + [f"{f}: only in B" for f in sorted(fb - fa)]
    for f in sorted(fa & fb):
        verdict = compare_file(out_a / f, out_b / f, roots_a, roots_b)
        if verdict.startswith("+"):
            same[verdict[1:]] = same.get(verdict[1:], 0) + 1
        else:
            diffs.append(f"{f}: {verdict}")
    return same, diffs


def _args(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", help="commit or checkout path of the reference (e.g. HEAD, main, /work/main)")
    ap.add_argument("b", nargs="?", default=".", help="commit or checkout path compared with it (default: .)")
    ap.add_argument("--only", default=None, help="comma-separated runs (demo, crop16, crop4, volume)")
    ap.add_argument("--work", default=None, help="work folder, kept (default: a temporary one, removed)")
    return ap.parse_args(argv)


def main(argv=None):  # long: one run end to end, read top to bottom
    a = _args(argv)
    work = Path(a.work or tempfile.mkdtemp(prefix="compare-outputs-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    trees = []
    try:
        write_inputs(work / "inputs")
        all_cmds = commands(work / "inputs")
        names = a.only.split(",") if a.only else list(all_cmds)
        skipped = [n for n in names if all_cmds.get(n) is None]
        runs = {n: all_cmds[n] for n in names if all_cmds.get(n)}
        tree_a, tree_b = checkout(a.a, work), checkout(a.b, work)
        trees = [t for t in (tree_a, tree_b) if t.parent == work]
        totals, diffs, failed = {}, [], []
        with open(work / "log.txt", "w") as log:
            for name, cmds in runs.items():
                outs = []
                for side, tree in (("A", tree_a), ("B", tree_b)):
                    out = work / side / name
                    shutil.rmtree(out, ignore_errors=True)
                    failed += [f"{side} {name}: {c} exited {rc}" for c, rc in run_side(tree, out, cmds, log) if rc]
                    outs.append((out, [(str(out), "<OUT>"), (str(tree), "<TREE>")]))
                same, d = compare_trees(outs[0][0], outs[1][0], outs[0][1], outs[1][1])
                for k, v in same.items():
                    totals[k] = totals.get(k, 0) + v
                diffs += [f"{name}/{x}" for x in d]
                print(f"{name}: {sum(same.values())} files identical, {len(d)} differ", flush=True)
        for line in failed + diffs:
            print("  " + line)
        kinds = ", ".join(f"{v} {k}" for k, v in sorted(totals.items()))
        verdict = "IDENTICAL" if not (diffs or failed) else "DIFFERENT"
        print(f"compare_outputs {a.a} -> {a.b}: {verdict}; runs {', '.join(runs)}"
              f"{' (skipped: ' + ', '.join(skipped) + ', no data)' if skipped else ''}; "
              f"{sum(totals.values())} files identical ({kinds}); {len(diffs)} differ; {len(failed)} failed"
              f"{'; log ' + str(work / 'log.txt') if a.work else ''}")
        return 0 if verdict == "IDENTICAL" else 1
    finally:
        for t in trees:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(t)], capture_output=True)
        if not a.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
