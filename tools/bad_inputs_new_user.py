"""The cases of issue 28's new user for tools/bad_inputs.py (its table's last group): inputs, cases, SIGTERM.

Imported by tools/bad_inputs.py, which runs them as it runs its own cases.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import tifffile

try:
    from tools.bad_inputs import DEMO, Case, Result, informational, same_map, says
except ImportError:  # run as a script from tools/
    from bad_inputs import DEMO, Case, Result, informational, same_map, says


NEW_USER = "issue 28: a new user's tracebacks and wrong messages"


def make_new_user_data(t):
    """The inputs of :func:`new_user_cases` (synthetic; written before any case runs)."""
    from brainrt.synth import make_slice, synthetic_class_map

    s = make_slice((256, 384), seed=3)
    tifffile.imwrite(t / "narrow.tif", s.image[:, :192])  # 3 grid cells wide at stride 64
    tifffile.imwrite(t / "s_areas_f32.tif", s.mask.astype(np.float32))
    tifffile.imwrite(t / "s_areas_half.tif", s.mask.astype(np.float32) + 0.5)
    clicks, many = np.zeros_like(s.mask), np.zeros_like(s.mask)
    for c in range(1, 5):
        ys, xs = np.nonzero(s.mask == c)
        clicks[ys[len(ys) // 2], xs[len(ys) // 2]] = c
    for k in range(21):  # 21 areas, one 64 px stroke each on its own grid row
        many[16 * (k % 14) + 8, 32 + 160 * (k // 14):96 + 160 * (k // 14)] = k + 1
    tifffile.imwrite(t / "clicks.tif", clicks)
    tifffile.imwrite(t / "strokes21.tif", many)
    (t / "classes21.json").write_text(json.dumps({"classes": {f"area{k}": [k + 1] for k in range(21)}}))
    tifffile.imwrite(t / "strokes_rgb.tif", np.stack([s.mask] * 3, -1))
    big = make_slice((384, 576), seed=1)  # large enough to place training patches of 64 px
    tifffile.imwrite(t / "t.tif", big.image)
    tifffile.imwrite(t / "t_areas.tif", big.mask)
    tifffile.imwrite(t / "t_two_areas.tif", np.where(big.mask > 2, 0, big.mask).astype(np.uint8))
    (t / "classes4.json").write_text(json.dumps({"classes": synthetic_class_map()}))
    tifffile.imwrite(t / "zero_tissue.tif", np.zeros_like(s.mask))
    for comp in ("lzw", "zstd", "jpeg"):
        tifffile.imwrite(t / f"s_{comp}.tif", s.image, compression=comp)
    for dt in ("int8", "int16", "int32"):  # the uint8 levels spread over the signed type's range
        info = np.iinfo(dt)
        tifffile.imwrite(t / f"s_{dt}.tif", (s.image.astype(np.int64) * ((info.max - info.min) // 255)
                                             + info.min).astype(dt))
    make_broken_inputs(t, s)


def make_broken_inputs(t, s):
    """Files a new user had: a TIFF header with no page, channels, a cut slice, NaN, a cut head file."""
    import zarr

    from brainrt.model.seal import sha256_file
    from brainrt.synth import make_volume

    (t / "no_pages.tif").write_bytes(b"II*\x00\x00\x00\x00\x00")
    tifffile.imwrite(t / "two_channels.ome.tif", np.stack([s.image, 255 - s.image]), ome=True,
                     metadata={"axes": "CYX"}, photometric="minisblack")
    v = make_volume((3, 256, 256), seed=1).image
    (t / "cut_folder").mkdir()
    for z in range(3):
        tifffile.imwrite(t / "cut_folder" / f"s{z}.tif", v[z])
    data = (t / "cut_folder" / "s1.tif").read_bytes()
    (t / "cut_folder" / "s1.tif").write_bytes(data[: len(data) // 2])
    nan = v.astype(np.float32) / 255
    nan[1, 100:110, 100:110] = np.nan
    zarr.open_array(str(t / "nan.zarr"), mode="w", shape=nan.shape, chunks=(1, 256, 256), dtype="float32")[:] = nan
    tifffile.imwrite(t / "nan_stack.tif", nan, photometric="minisblack")
    tifffile.imwrite(t / "small_stack.tif", v, photometric="minisblack")
    shutil.copytree(DEMO, t / "cut_head")
    m = json.loads((t / "cut_head" / "manifest.json").read_text())
    for rel in ("heads/gmm.joblib", "heads/area_density.joblib"):
        data = (t / "cut_head" / rel).read_bytes()
        (t / "cut_head" / rel).write_bytes(data[: len(data) // 2])
        m["files"][rel] = sha256_file(t / "cut_head" / rel)  # the hash of the cut file: it verifies
    (t / "cut_head" / "manifest.json").write_text(json.dumps(m, indent=1))


@contextlib.contextmanager
def another_run_holds(out):
    """Another process holds ``out``'s lock (a run writing it) while the case runs."""
    code = ("import sys; from brainrt.runfiles import output_lock\n"
            "with output_lock(sys.argv[1]):\n print('held', flush=True); sys.stdin.read()")  # until told to end
    proc = subprocess.Popen([sys.executable, "-c", code, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    try:
        proc.stdout.readline()
        yield
    finally:
        proc.stdin.close()  # that run ends (and removes its lock file)
        proc.wait(timeout=60)


@contextlib.contextmanager
def stale_temporaries():
    """The temporary files of a killed 2D classify (their process gone) in a folder, before a rerun there."""
    Path("rerun").mkdir(exist_ok=True)
    code = ("import sys; from brainrt.runfiles import temp_path\n"
            "for name in sys.argv[1:]: temp_path(name).write_bytes(bytes(1 << 20))")  # then it exits: a dead PID
    subprocess.run([sys.executable, "-c", code, "rerun/x.ome.tif", "rerun/x.probabilities.ome.tif"], check=True)
    yield


def no_stale_temporaries(res, t):
    left = [p.name for p in (t / "rerun").iterdir() if ".partial-" in p.name]
    return f"WRONG: left {', '.join(left)}" if left else None


def quiet_training(res, t):
    """A run with stderr not a terminal (the runner's): no progress bar, no library FutureWarning."""
    if "\r" in res.stderr or "patch/s" in res.stderr:
        return "WRONG: a progress bar on a redirected stderr"
    if "FutureWarning" in res.stderr + " ".join(res.warnings):
        return "WRONG: a FutureWarning"
    return None


def loglik_readable(name):
    def check(res, t):
        with tifffile.TiffFile(t / name) as tif:
            return None if tif.series[0].axes == "CYX" else f"WRONG: axes {tif.series[0].axes}"
    return check


def new_user_cases(t):  # long: one row per case of issue 28's table
    m = ["-m", DEMO]
    c = ["classify"]
    train = ["train-and-export", "--image", "t.tif", "--class-map", "classes4.json", "--patch-size", "64",
             "--n-val", "4", "--n-test", "4", "--epochs", "1"]
    return [
        Case("cluster on a grid 3 cells wide (192 px at --stride 64)",
             ["cluster", "narrow.tif", *m, "--stride", "64", "-o", "narrow.clusters.ome.tif"],
             loglik_readable("narrow.clusters.loglik.ome.tif"), group=NEW_USER),
        Case("--truth a float32 mask of whole numbers", c + ["s.tif", *m, "--truth", "s_areas_f32.tif",
                                                          "-o", "tf.ome.tif"], says("pixel accuracy")),
        Case("--truth a float32 mask of fractions", c + ["s.tif", *m, "--truth", "s_areas_half.tif",
                                                      "-o", "th.ome.tif"]),
        Case("fit with 21 classes", ["fit", "s.tif", "--labels", "strokes21.tif", *m, "--class-map", "classes21.json",
                                     "--all-cells", "-o", "b21"], "ok"),
        Case("fit with one-pixel clicks (1 cell per class)", ["fit", "s.tif", "--labels", "clicks.tif", *m,
                                                              "-o", "bc"]),
        Case("fit --labels an RGB strokes TIFF", ["fit", "s.tif", "--labels", "strokes_rgb.tif", *m, "-o", "br"]),
        Case("fit --threads 0", ["fit", "s.tif", "--labels", "s_areas.tif", *m, "--threads", "0", "-o", "bt"]),
        Case("fit --stride 10000", ["fit", "s.tif", "--labels", "s_areas.tif", *m, "--stride", "10000",
                                    "-o", "bs"]),
        Case("featurize --stride 5000", ["featurize", "s.tif", *m, "--stride", "5000", "-o", "fs.zarr"]),
        Case("train-and-export, the mask holds 2 of the class map's 4 classes",
             train + ["--mask", "t_two_areas.tif", "--n-train", "8", "-o", "b2of4"]),
        Case("train-and-export --n-train 0", train + ["--mask", "t_areas.tif", "--n-train", "0", "-o", "bn0"]),
        Case("train-and-export, stderr not a terminal", train + ["--mask", "t_areas.tif", "--n-train", "8",
                                                                 "-o", "bquiet"], quiet_training),
        Case("an all-zero --tissue-mask", c + ["s.tif", *m, "--tissue-mask", "zero_tissue.tif", "-o", "zt.ome.tif"]),
        Case("--scheduler 127.0.0.1 (no port)", c + ["small_stack.tif", "--z", "all", *m, "--scheduler", "127.0.0.1",
                                                     "-o", "sch.ome.zarr"]),
        Case("--scheduler 'not an address'", c + ["small_stack.tif", "--z", "all", *m, "--scheduler",
                                                  "not an address", "-o", "sch.ome.zarr"]),
        Case("a second volume run into an output another run is writing",
             c + ["small_stack.tif", "--z", "all", "--stride", "64", *m, "-o", "busy.ome.zarr"],
             setup=lambda: another_run_holds(t / "busy.ome.zarr")),
        Case("a TIFF folder with one truncated slice", c + ["cut_folder", "--stride", "64", *m, "-o", "cut.ome.zarr"]),
        Case("NaN in a zarr stack", c + ["nan.zarr", "--stride", "64", *m, "-o", "nanz.ome.zarr"]),
        Case("NaN in a TIFF stack", c + ["nan_stack.tif", "--z", "all", "--stride", "64", *m, "-o", "nant.ome.zarr"]),
        *[Case(f"a {comp.upper()} TIFF", c + [f"s_{comp}.tif", *m, "-o", f"c_{comp}.ome.tif"], "ok")
          for comp in ("lzw", "zstd", "jpeg")],
        Case("uint8 reference for the signed types", c + ["s.tif", *m, "-o", "u8.ome.tif"], "ok"),
        *[Case(f"an {dt} TIFF (the uint8 levels spread over its range)",
               c + [f"s_{dt}.tif", *m, "-o", f"{dt}.ome.tif"], same_map("u8.ome.tif", f"{dt}.ome.tif"))
          for dt in ("int8", "int16", "int32")],
        Case("a TIFF header with no pages", c + ["no_pages.tif", *m, "-o", "np.ome.tif"]),
        Case("a 2-channel CYX OME-TIFF", c + ["two_channels.ome.tif", *m, "-o", "cyx.ome.tif"]),
        Case("a bundle folder given as the image", c + [DEMO, *m, "-o", "bundle.ome.tif"]),
        Case("a truncated head .joblib (its sha256 updated), then cluster",
             ["cluster", "s.tif", "-m", "cut_head", "-o", "ch.ome.tif"]),
        Case("temporary files of a killed 2D classify, then a rerun", c + ["s.tif", *m, "-o", "rerun/x.ome.tif"],
             no_stale_temporaries, setup=stale_temporaries),
    ]


def sigterm_case(t):
    """SIGTERM during a 2D classify (a real process, as ``kill`` sends it): one line, exit 143, nothing left."""
    from brainrt.synth import make_slice

    tifffile.imwrite(t / "term.tif", make_slice((768, 1152), seed=5).image)
    cmd = [sys.executable, "-m", "brainrt.cli", "classify", str(t / "term.tif"), "--stride", "4", "--threads", "1",
           "-m", str(DEMO), "-o", str(t / "term.ome.tif")]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=t)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline and not list(t.glob(".term.*.partial-*")):
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    bad = [ln for ln in lines if not (ln.startswith("Interrupted") or informational(ln))]
    left = [p.name for p in t.iterdir() if p.name.startswith((".term.", "term.ome", "term.prob", "term.over"))]
    v = ("ok" if proc.returncode == 143 and not bad and not left
         else f"exit {proc.returncode}, {len(bad)} other lines, left {left}")
    return ("SIGTERM during a 2D classify", cmd[3:], Result(proc.returncode, stdout, stderr),
            lines[-1] if lines else "", v)
