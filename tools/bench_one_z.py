"""What running one slice as a volume of one z would cost: the slice's path against the volume's serial executor.

A slice is classified by streaming: the engine's blocks go through the head into the slice's map
(:class:`brainrt.maps.slicemap.SliceMap`), whose probabilities and uncertainty are written band by band into
their OME-TIFFs, then the full-resolution label map (the OME-TIFF set of ``brainrt classify``, without its overlay
PNG, which a volume does not draw). A volume is classified as a resumable task graph: each (z, band)
block writes the head's raw probabilities into scratch arrays of the partial OME-Zarr, and each slice's finish
task reads them back band by band into the same ``SliceMap`` and writes the probabilities, their uncertainty and
the label map, each with its pyramid (the OME-Zarr of ``brainrt classify --z all``). This prints, for the same slice at each stride,
the two side by side in one run: seconds from the plan to the written maps, the bundle loaded (median of ``--repeats`` alternated runs, each in its own process),
the peak memory of that process, the bytes of scratch the volume's run held on disk at its largest (measured
after its last block, before the finish task drops them), and whether the two label grids agree cell for cell
and how far their probabilities differ.

    python tools/bench_one_z.py                          # slice309, strides 16 and 8, 3 repeats
    python tools/bench_one_z.py --image s.tif --strides 16 --repeats 1 --model models/synthetic-demo

Each run uses one onnxruntime thread, so the two compare the same work.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SLICE309 = ROOT.parent / "shared" / "data" / "slice309.tif"


def _du(path):
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def run_slice(image, model, stride, work):
    """The slice's path: plan, head and map streamed into the probabilities' and uncertainty's OME-TIFFs."""
    import numpy as np
    import tifffile

    import brainrt
    from brainrt import api
    from brainrt.outputs import classification_set, probabilities_path, uncertainty_path, write_classification

    bundle = brainrt.Bundle.load(model, threads=1)
    out = Path(work) / "s.labels.ome.tif"
    t0 = time.perf_counter()
    plan = api.make_plan(image, bundle, stride=stride)
    with classification_set(out, None) as s:  # as `brainrt classify` writes it, without the overlay PNG
        res = api.classify_plan(plan, bundle, probabilities=s.path(probabilities_path(out)),
                                uncertainty=s.path(uncertainty_path(out)))
        write_classification(out, res, into=s)
    dt = time.perf_counter() - t0
    return dt, np.moveaxis(tifffile.imread(probabilities_path(out)), 0, -1), 0  # (K, R, C) -> (R, C, K)


def run_volume(image, model, stride, work):
    """The volume's serial executor on a stack of this one slice: scratch, blocks, finish, OME-Zarr."""
    import numpy as np
    import tifffile
    import zarr

    import brainrt
    from brainrt.outputs import partial_path
    from brainrt.volumes import make_volume_plan
    from brainrt.volumes import run_volume as run

    bundle = brainrt.Bundle.load(model, threads=1)
    t0 = time.perf_counter()
    vplan = make_volume_plan(str(Path(work).parent / "stack.tif"), bundle, stride=stride)
    out, scratch, n_blocks = Path(work) / "v.ome.zarr", [0], vplan.n_blocks

    def on_task(n):  # after the last block, before the finish task: the scratch at its largest
        if n == n_blocks:
            scratch[0] = _du(partial_path(out) / "scratch")

    run(vplan, out, bundle=bundle, on_task=on_task)
    dt = time.perf_counter() - t0
    root = zarr.open_group(str(out), mode="r")
    K = len(vplan.class_names)
    probs = np.moveaxis(np.asarray(root["0"][:K, 0]), 0, -1)
    return dt, probs, scratch[0]


def child(args):
    """One run in this process; prints its seconds, peak RSS, scratch bytes and where its outputs are."""
    import numpy as np

    dt, probs, scratch = (run_slice if args.child == "slice" else run_volume)(args.image, args.model, args.stride,
                                                                             args.work)
    np.save(Path(args.work) / f"{args.child}.npy", probs.astype(np.float32))
    print(json.dumps({"seconds": dt, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "scratch_mb": scratch / 2**20}))


def _one(kind, image, model, stride, work):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, __file__, "--child", kind, "--image", str(image), "--model", str(model),
                          "--stride", str(stride), "--work", str(work)], capture_output=True, text=True, env=env,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image", default=str(SLICE309))
    ap.add_argument("--model", default=None)
    ap.add_argument("--strides", type=int, nargs="+", default=[16, 8])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--child", choices=["slice", "volume"], help=argparse.SUPPRESS)
    ap.add_argument("--stride", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.model is None:
        from brainrt.bundle.load import default_model

        args.model = str(default_model())
    if args.child:
        return child(args)
    import numpy as np

    print(f"{Path(args.image).name}, bundle {Path(args.model).name}, one onnxruntime thread, median of {args.repeats}")
    print("stride  slice path s  one-z volume s  ratio  slice RSS MB  volume RSS MB  scratch MB  labels agree  max |dp|")
    for stride in args.strides:
        runs = {"slice": [], "volume": []}
        with tempfile.TemporaryDirectory() as work:
            import tifffile

            tifffile.imwrite(Path(work) / "stack.tif", tifffile.imread(args.image)[None])  # the slice as a stack
            for _ in range(args.repeats):  # alternated: the machine's drift hits both
                for kind in runs:
                    with tempfile.TemporaryDirectory(dir=work) as w:
                        runs[kind].append(_one(kind, args.image, args.model, stride, w))
                        os.replace(Path(w) / f"{kind}.npy", Path(work) / f"{kind}.npy")
            p, q = (np.load(Path(work) / f"{k}.npy") for k in ("slice", "volume"))
        tissue = p.sum(-1) > 0
        agree = float(np.mean(p.argmax(-1)[tissue] == q.argmax(-1)[tissue]))
        med = {k: {m: statistics.median(r[m] for r in v) for m in v[0]} for k, v in runs.items()}
        s, v = med["slice"], med["volume"]
        print(f"{stride:6d}  {s['seconds']:12.2f}  {v['seconds']:14.2f}  {v['seconds'] / s['seconds']:5.2f}  "
              f"{s['rss_mb']:12.0f}  {v['rss_mb']:13.0f}  {v['scratch_mb']:10.1f}  {agree:12.4f}  "
              f"{float(np.abs(p - q).max()):.2e}")


if __name__ == "__main__":
    main()
