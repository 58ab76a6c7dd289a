"""Benchmark of volume runs: one synthetic stack serially, on 1 and on 2 local Dask workers.

Prints blocks/s, the bytes the readers of all workers took from the kernel ("measured read:
N.NNx the input"), the 1 -> 2 worker speed-up (median of ``--repeats`` alternated runs, with
the load average) beside the machine's own ceiling for it (the same single-thread matrix product in 2
processes at once against one alone, :func:`peak.process_scaling`), the scheduler's overhead (serial vs 1 worker) and the peak RSS of every
worker, then an estimate for the full 720-slice volume of 1420 x 5805 px at stride 1 and 4
on 1, 16 and 128 workers from the measured per-cell cost (the stride-1 cost is measured on
one slice of the stack), with the bytes read (at the measured ratio) and written.

    python tools/bench_volume.py                          # 16 x 512 x 768, stride 4, slice309 bundle
    python tools/bench_volume.py --shape 4 192 256 --stride 16 --model models/synthetic-demo   # quick
    python tools/bench_volume.py --full-band 1       # one stride-1 band of a 1420 x 5805 slice: peak RSS

Each worker runs onnxruntime on one thread (one process per core); the serial run too,
so the three runs compare the same work per core. "workers busy" is the CPU time the
computing processes got per wall-clock second: below the worker count, something else
on the machine took the cores (the speed-up then measures the machine, not the scheduler).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from peak import process_scaling

ROOT = Path(__file__).resolve().parents[1]

FULL = dict(slices=720, h=1420, w=5805, dtype_bytes=1)  # the thalamocortical volume (uint8)


def _cpu_s():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _warm(vplan, folder):
    """Load the bundle, compile the kernels and write once (zarr's first write is slow) in this process."""
    import dataclasses
    import os

    from brainrt.volumes import run_volume, worker_bundle

    one = dataclasses.replace(vplan, zs=vplan.zs[:1])
    run_volume(one, Path(folder) / f"warm-{os.getpid()}.ome.zarr", bundle=worker_bundle(vplan))
    return True


def _du(path):
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def _reads(client=None):
    """Bytes the volume readers of this process (or of every worker of ``client``) took from the kernel."""
    from brainrt.sources import bytes_read

    if client is None:
        return np.array(list(bytes_read().values()))
    return sum(np.array(list(r.values())) for r in client.run(bytes_read).values())


def _serial(vplan, out, bundle):
    """(seconds, peak RSS in MB, CPU seconds, bytes read) of one run in this process."""
    from brainrt.volumes import run_volume

    t, c, r = time.perf_counter(), _cpu_s(), _reads()
    run_volume(vplan, out, bundle=bundle)
    return time.perf_counter() - t, [_peak_rss_mb()], _cpu_s() - c, _reads() - r


def _on(client, vplan, out):
    """(seconds, peak RSS per worker in MB, CPU seconds of the workers, bytes read) of one run on ``client``."""
    from brainrt.volumes import run_volume

    c, r = client.run(_cpu_s), _reads(client)
    t = time.perf_counter()
    run_volume(vplan, out, client=client)
    dt = time.perf_counter() - t
    c = {k: v - c[k] for k, v in client.run(_cpu_s).items()}
    return dt, sorted(client.run(_peak_rss_mb).values()), sum(c.values()), _reads(client) - r


def _band_task(vplan, store):
    """Run the middle band of the first slice in this (fresh) worker: the plan's and the band's seconds, peak RSS."""
    from brainrt.volumes import run_block, slice_plan, worker_bundle

    bundle = worker_bundle(vplan)
    t = time.perf_counter()
    plan = slice_plan(vplan, bundle, vplan.zs[0])  # read + tissue grid + standardization (the read task)
    t1 = time.perf_counter()
    run_block(vplan, store, vplan.zs[0], vplan.bands[len(vplan.bands) // 2], plan)
    return t1 - t, time.perf_counter() - t1, _peak_rss_mb()


def full_band(model, stride, work):
    """Peak RSS of a fresh worker process running one default band of a full-size slice at ``stride``."""
    import tifffile
    from dask.distributed import Client, LocalCluster

    import brainrt
    from brainrt.synth import make_volume
    from brainrt.volumes.layout import create_store
    from brainrt.volumes import make_volume_plan

    path = Path(work) / "full.tif"
    tifffile.imwrite(path, make_volume((1, FULL["h"], FULL["w"]), seed=0).image, photometric="minisblack")
    vplan = make_volume_plan(path, brainrt.Bundle.load(model, threads=1), stride=stride)
    store = Path(work) / "full.partial"
    store.mkdir()
    create_store(vplan, store)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0",
                      silence_logs=40) as cluster, Client(cluster) as client:
        t_plan, dt, rss = client.submit(_band_task, vplan, str(store)).result()
    r0, r1 = vplan.bands[len(vplan.bands) // 2]  # a middle band: all tissue
    print(f"full-size slice {FULL['h']} x {FULL['w']}, stride {stride}: the slice's plan (read, tissue, "
          f"standardization) {t_plan:.1f} s; one band ({r1 - r0} of {vplan.grid[0]} grid rows, "
          f"{(r1 - r0) * vplan.grid[1]} cells) {dt:.1f} s on one worker; the worker's peak RSS {rss:.0f} MB")


def _args(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=int, nargs=3, default=(16, 512, 768), metavar=("Z", "H", "W"))
    ap.add_argument("--stride", type=int, default=4)
    ap.add_argument("--model", default=str(ROOT / "models" / "slice309-paper6"))
    ap.add_argument("--band-rows", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=3, help="Runs on 1 and on 2 workers, alternated (medians).")
    ap.add_argument("--tissue-fraction", type=float, default=0.70,
                    help="Tissue fraction of the full slices for the estimate (slice309: 5.8 M of 8.24 M cells).")
    ap.add_argument("--skip-stride1", action="store_true", help="Do not measure the stride-1 cost of one slice.")
    ap.add_argument("--full-band", type=int, default=None, metavar="STRIDE",
                    help="Only measure one band of a full-size slice at STRIDE in a fresh worker (time, peak RSS).")
    return ap.parse_args(argv)


def main(argv=None):
    args = _args(argv)
    if args.full_band:
        with tempfile.TemporaryDirectory(prefix="bench-volume-") as work:
            return full_band(args.model, args.full_band, Path(work))

    import tifffile

    import brainrt
    from brainrt.synth import make_volume
    from brainrt.volumes import run_volume
    from brainrt.volumes import make_volume_plan

    work = Path(tempfile.mkdtemp(prefix="bench-volume-"))
    try:
        stack = work / "stack.tif"
        tifffile.imwrite(stack, make_volume(tuple(args.shape), seed=0).image, photometric="minisblack")
        bundle = brainrt.Bundle.load(args.model, threads=1)
        vplan = make_volume_plan(stack, bundle, stride=args.stride, band_rows=args.band_rows)
        _warm(vplan, work)  # the serial process too: bundle loaded, kernels compiled
        cells = sum(int(brainrt.make_plan(vplan.source.read(z), bundle, stride=args.stride).valid.sum())
                    for z in vplan.zs)
        print(f"stack {tuple(args.shape)} uint8, stride {args.stride}, {vplan.method} path, grid {vplan.grid}, "
              f"{len(vplan.bands)} band(s) of {vplan.bands[0][1] - vplan.bands[0][0]} rows per slice, "
              f"{vplan.n_blocks} blocks, {cells} tissue cells; model {Path(args.model).name}")
        print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        times, read_ratio = _scaling(vplan, work, bundle, cells, args.repeats)
        per_cell = {args.stride: times[0] / cells}
        if not args.skip_stride1 and args.stride != 1:
            p1 = make_volume_plan(stack, bundle, stride=1, z="0")
            t = time.perf_counter()
            run_volume(p1, work / "s1.ome.zarr", bundle=bundle)
            c1 = int(brainrt.make_plan(vplan.source.read(0), bundle, stride=1).valid.sum())
            per_cell[1] = (time.perf_counter() - t) / c1
            print(f"stride 1, one slice: {c1} cells in {per_cell[1] * c1:.1f} s ({1 / per_cell[1]:.0f} cells/s, serial)")
        label_bytes = _du(work / "out2-0.ome.zarr" / "labels") / len(vplan.zs) / (args.shape[1] * args.shape[2])
        _estimate(bundle, per_cell, args.tissue_fraction, times[1] / times[2] / 2, label_bytes, read_ratio)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _scaling(vplan, work, bundle, cells, repeats):
    """Seconds of the run serially, and the medians of ``repeats`` runs on 1 and on 2 workers, alternated
    (printed with blocks/s, cells/s, RSS, busy cores and the bytes read); returns them and the read ratio."""
    from dask.distributed import Client, LocalCluster

    size = int(np.prod(vplan.source.shape)) * np.dtype(vplan.source.dtype).itemsize
    size = np.array([size, len(vplan.zs)])  # bytes, slices
    runs = {0: [_serial(vplan, work / "out0.ome.zarr", bundle)], 1: [], 2: []}
    with contextlib.ExitStack() as stack:
        clients = {}
        for n in (1, 2):
            cluster = stack.enter_context(LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                                       dashboard_address=":0", silence_logs=40))
            clients[n] = stack.enter_context(Client(cluster))
            clients[n].run(_warm, vplan, str(work))
        for i in range(repeats):
            for n in (1, 2):
                runs[n].append(_on(clients[n], vplan, work / f"out{n}-{i}.ome.zarr"))
    times = {n: float(np.median([r[0] for r in rs])) for n, rs in runs.items()}
    for n, rs in runs.items():
        dt, rss, cpu, nread = min(rs, key=lambda r: abs(r[0] - times[n]))  # the median run
        label = "serial" if n == 0 else f"{n} worker{'s' * (n > 1)}"
        print(f"{label:>10}: {dt:7.2f} s  {vplan.n_blocks / dt:6.2f} blocks/s  {cells / dt:8.0f} cells/s  "
              f"peak RSS {', '.join(f'{r:.0f}' for r in rss)} MB; workers busy {cpu / dt:.2f} cores; "
              f"measured read: {nread[0] / size[0]:.2f}x the input ({nread[1] / size[1]:.2f} reads per slice)")
    pairs = sorted(a[0] / b[0] for a, b in zip(runs[1], runs[2]))
    print(f"speed-up 1 -> 2 workers: {times[1] / times[2]:.2f}x, median of {repeats} ({times[1] / times[2] / 2:.0%} "
          f"per worker; runs {', '.join(f'{p:.2f}' for p in pairs)}); scheduler overhead (1 worker vs serial): "
          f"{times[1] / times[0] - 1:+.1%}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    ceiling = process_scaling()  # right after the runs, under the same load
    print(f"machine ceiling: 2 processes of one single-thread matrix product at once run {ceiling['ratio']:.2f}x one "
          f"alone (median of {len(ceiling['rounds'])}); the 1 -> 2 worker speed-up is "
          f"{times[1] / times[2] / ceiling['ratio']:.0%} of it")
    return times, max(r[3][0] for rs in runs.values() for r in rs) / size[0]


def _estimate(bundle, per_cell, tissue, efficiency, label_bytes_per_px, read_ratio):
    """The full volume on 1, 16, 128 workers from the per-cell seconds of one worker (one core); the bytes
    read at the largest measured ratio (every slice is read once, whatever the stride and the bands)."""
    S, H, W = FULL["slices"], FULL["h"], FULL["w"]
    n_classes = len(bundle.class_names)
    print(f"\nestimate: {S} slices of {H} x {W} px, tissue fraction {tissue:.2f}, "
          f"parallel efficiency {efficiency:.0%} per worker (measured 1 -> 2)")
    for s, sec in sorted(per_cell.items()):
        R, C = -(-H // s), -(-W // s)
        per_slice = sec * R * C * tissue
        size = S * H * W * FULL["dtype_bytes"]
        probs = S * R * C * n_classes * 4
        labels = S * H * W * label_bytes_per_px
        row = ", ".join(f"{n} worker{'s' * (n > 1)}: {S * per_slice / (n * (efficiency if n > 1 else 1)) / 3600:.2f} h"
                        for n in (1, 16, 128))
        print(f"  stride {s}: {per_slice:.0f} s per slice per worker -> {row}")
        print(f"    read: {read_ratio * size / 1e9:.1f} GB ({read_ratio:.2f}x the {size / 1e9:.1f} GB input, as "
              f"measured: each slice is read once and its plan shared by its bands)")
        print(f"    written: labels + pyramid {labels / 1e9:.1f} GB (compressed, as measured per pixel), "
              f"probabilities {probs / 1e9:.1f} GB raw float32 (twice during the run: the unsmoothed scratch), "
              f"features if featurized {S * R * C * 64 * 4 / 1e12:.2f} TB raw float32")


if __name__ == "__main__":
    main()
