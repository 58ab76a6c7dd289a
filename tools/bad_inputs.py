"""A new user's bad inputs (issue 19): run each case and write the table docs/bad-inputs.md.

    python tools/bad_inputs.py [-o docs/bad-inputs.md] [--data ../shared/data] [--only WORD]

Every case runs the real `brainrt` command (click's runner, in this process, so the whole
table takes about a minute) on synthetic data in a temporary folder, plus a crop of
slice309 where the shared data is present (the crop stays in the temporary folder). The
table gives the command, the exit status, the message (the error line, else the warnings,
else the last line of output) and a verdict: **ok** when a refusal is one line with exit 2
and nothing half-written, or when a run that succeeds gives the right result; anything
else says what is wrong (a traceback, a wrong result with exit 0, more than one line).
Volume runs go through the in-process serial runner (the same task functions as the Dask
workers, so the same outputs and refusals; the CLI starts a local cluster); the Ctrl-C case
runs a real process on two Dask workers and sends SIGINT to its process group, as a terminal's
Ctrl-C does (the workers get it too).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import io
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tifffile

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "models" / "synthetic-demo"
SHIPPED = ROOT / "models" / "slice309-paper6"


@dataclass
class Case:
    title: str
    args: list
    expect: object = "refuse"  # "refuse", "complete", "ok", or check(result) -> problem or None
    setup: object = None  # called before the run (a context manager factory: monkeypatching)
    group: str = ""


@dataclass
class Result:
    exit: int
    stdout: str
    stderr: str
    warnings: list = field(default_factory=list)
    exception: str = ""
    before: dict = field(default_factory=dict)
    after: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- data
def make_data(t: Path, data: Path | None):
    """Write every input the cases read into ``t``."""
    from brainrt.synth import make_slice, make_volume

    s = make_slice((256, 384), seed=3)
    tifffile.imwrite(t / "s.tif", s.image)
    tifffile.imwrite(t / "s_areas.tif", s.mask)
    tifffile.imwrite(t / "zeros_areas.tif", np.zeros_like(s.mask))
    tifffile.imwrite(t / "odd_areas.tif", np.where(s.mask == 2, 42, np.where(s.mask == 3, 200, s.mask)).astype(np.uint8))
    tifffile.imwrite(t / "big.tif", make_slice((640, 960), seed=4).image)
    v = make_volume((6, 256, 384), seed=2).image
    tifffile.imwrite(t / "stack.tif", v, photometric="minisblack")
    tifffile.imwrite(t / "stack_syx.tif", v[:3])  # no photometric: tifffile stores 3 planes as samples (SYX)
    (t / "folder").mkdir()
    for z in range(4):
        tifffile.imwrite(t / "folder" / f"s{z}.tif", v[z] if z != 2 else v[z, :200])
    import zarr

    zarr.open_array(str(t / "stack.zarr"), mode="w", shape=v.shape, chunks=(1, 256, 384), dtype="uint8")[:] = v
    zarr.open_array(str(t / "plane.zarr"), mode="w", shape=v.shape[1:], dtype="uint8")[:] = v[0]
    for name, change in (("halved", _halve_patch), ("dsstore", _ds_store)):
        shutil.copytree(DEMO, t / name)
        change(t / name)
    if data is not None and (data / "slice309.tif").is_file():
        img = tifffile.imread(data / "slice309.tif")[300:1200, 900:2700]
        tifffile.imwrite(t / "c309.tif", img)
        tifffile.imwrite(t / "c309_areas.tif", tifffile.imread(data / "slice309_areas.tif")[300:1200, 900:2700])
        tifffile.imwrite(t / "c309_f32.tif", (img / 255).astype(np.float32))
        tifffile.imwrite(t / "c309_f32_255.tif", img.astype(np.float32))
        tifffile.imwrite(t / "c309_f64.tif", (img / 255).astype(np.float64))
        tifffile.imwrite(t / "c309_u16.tif", (1000 + img.astype(np.uint16) * 95 // 255).astype(np.uint16))
        for name in ("slice309.tif", "slice309_areas.tif"):  # the whole training slice (a crop has another sha256)
            shutil.copyfile(data / name, t / name)
    _new_user().make_new_user_data(t)
    _companion("bad_inputs_maps").make_maps_data(t, data)


def _halve_patch(b):
    m = json.loads((b / "manifest.json").read_text())
    m["patch_size"] //= 2
    (b / "manifest.json").write_text(json.dumps(m, indent=1))


def _ds_store(b):
    (b / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")


# --------------------------------------------------------------------------- running
@contextlib.contextmanager
def _logs():
    """Collect the log records of one run (warnings and above are reported)."""
    buf, root = io.StringIO(), logging.getLogger()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    old = root.handlers[:]
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    try:
        yield buf
    finally:
        root.handlers[:] = old


def snapshot(t):
    """Name -> (size, mtime) of every output in ``t`` (inputs are written before any case)."""
    return {str(p.relative_to(t)): (p.stat().st_size, p.stat().st_mtime_ns) for p in t.rglob("*") if p.is_file()}


def run(case, t):
    from click.testing import CliRunner

    from brainrt.cli import main

    before = snapshot(t)
    with _logs() as buf, (case.setup() if case.setup else contextlib.nullcontext()):
        r = CliRunner().invoke(main, [str(a) for a in case.args], prog_name="brainrt")
    exc = ""
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        exc = f"{type(r.exception).__name__}: {str(r.exception).splitlines()[0] if str(r.exception) else ''}"
    warnings = [ln.split(" ", 1)[1] for ln in buf.getvalue().splitlines() if ln.startswith(("WARNING", "ERROR"))]
    return Result(r.exit_code, r.stdout, r.stderr, warnings, exc, before, snapshot(t))


def verdict(case, res, t):
    """'ok' or what is wrong."""
    err = [ln for ln in res.stderr.splitlines() if ln.strip()]
    if res.exception or "Traceback" in res.stderr:
        return f"traceback ({res.exception or 'on stderr'})"
    if case.expect == "refuse":
        if res.exit != 2:
            return f"not refused: exit {res.exit}"
        if len(err) != 1 or not err[0].startswith("Error: "):
            return f"{len(err)} lines on stderr"
        new = sorted(set(res.after) - set(res.before))
        changed = sorted(k for k in res.before if res.after.get(k) != res.before[k])
        return f"left {', '.join(new + changed)[:80]}" if new or changed else "ok"
    if res.exit != 0:
        return f"exit {res.exit}"
    if case.expect == "complete":
        changed = sorted(k for k in set(res.after) | set(res.before) if res.after.get(k) != res.before.get(k))
        if "complete" not in res.stdout or changed:
            return f"WRONG: recomputed ({', '.join(changed)[:60]})"
        return "ok"
    if callable(case.expect):
        return case.expect(res, t) or "ok"
    return "ok"


def message(res):
    err = [ln for ln in res.stderr.splitlines() if ln.startswith("Error: ")]
    if err:
        return err[0][len("Error: "):]
    if res.exception:
        return res.exception
    if res.warnings:
        return "warning: " + " / ".join(res.warnings)
    out = [ln for ln in res.stdout.splitlines() if ln.strip()]
    return out[-1] if out else ""


# --------------------------------------------------------------------------- checks of results that succeed
def same_map(ref, path, min_equal=0.995):
    """A check: the label map at ``path`` equals the one at ``ref`` on >= ``min_equal`` of the tissue."""

    def check(res, t):
        a, b = tifffile.imread(t / ref), tifffile.imread(t / path)
        tissue = (a != 255) | (b != 255)
        eq = float((a == b)[tissue].mean())
        return None if eq >= min_equal else f"WRONG: {100 * eq:.1f}% of tissue labels equal to the uint8 run"
    return check


def no_files(*names):
    def check(res, t):
        left = [n for n in names if (t / n).exists()]
        return f"WRONG: stale {', '.join(left)}" if left else None
    return check


def one_slice_tiff(name):
    def check(res, t):
        p = t / name
        if not p.is_file():
            return f"WRONG: {name} is {'a folder' if p.is_dir() else 'missing'}"
        return None if tifffile.imread(p).ndim == 2 else "WRONG: not one slice"
    return check


def says(*words):
    def check(res, t):
        text = res.stdout + res.stderr + " ".join(res.warnings)
        missing = [w for w in words if w not in text]
        return f"does not say {', '.join(missing)}" if missing else None
    return check


@contextlib.contextmanager
def disk_full():
    """tifffile.imwrite fails with ENOSPC on the probabilities (the label map before it succeeds)."""
    real = tifffile.imwrite

    def full(path, data=None, *a, **kw):  # the probabilities are laid out first (no data), then streamed
        if ".probabilities." in str(path) or (data is not None and np.ndim(data) == 3):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, data, *a, **kw)

    tifffile.imwrite = full
    try:
        yield
    finally:
        tifffile.imwrite = real


# --------------------------------------------------------------------------- the cases
def cases(t, data_present):  # long: the table's rows, in the order
    m = ["-m", DEMO]
    c, f = ["classify"], ["featurize"]
    vol = ["--stride", "32"]
    rows = [
        # wrong results with exit 0 (issue 19, 1-7)
        Case("finished volume, same arguments", c + ["stack.tif", "--z", "all", *vol, *m, "-o", "v.ome.zarr"],
             "ok", group="3. finished outputs"),
        Case("... rerun, same arguments", c + ["stack.tif", "--z", "all", *vol, *m, "-o", "v.ome.zarr"], "complete"),
        Case("... rerun with --stride 16", c + ["stack.tif", "--z", "all", "--stride", "16", *m, "-o", "v.ome.zarr"]),
        Case("... rerun with --z 0:3", c + ["stack.tif", "--z", "0:3", *vol, *m, "-o", "v.ome.zarr"]),
        Case("... featurize into it", f + ["stack.tif", "--z", "all", *vol, *m, "-o", "v.ome.zarr"]),
        Case("2D classify, then same arguments", c + ["s.tif", *m, "-o", "x.ome.tif", "--truth", "s_areas.tif"], "ok"),
        Case("... rerun, same arguments", c + ["s.tif", *m, "-o", "x.ome.tif", "--truth", "s_areas.tif"], "complete"),
        Case("... rerun with --stride 8", c + ["s.tif", *m, "-o", "x.ome.tif", "--stride", "8"]),
        Case("2D featurize, rerun with --stride 8", f + ["s.tif", *m, "-o", "f.zarr"], "ok"),
        Case("...", f + ["s.tif", *m, "-o", "f.zarr", "--stride", "8"]),
        Case("cluster over a file brainrt did not write", ["cluster", "s.tif", *m, "-o", "s_areas.tif"]),
        Case("stale metrics: rerun without --truth", c + ["s.tif", *m, "-o", "x.ome.tif", "--overwrite"],
             no_files("x.metrics.json", "x.confusion.png"), group="5. stale side files"),
        Case("stale overlay: classify a feature zarr", c + ["f.zarr", *m, "-o", "x.ome.tif", "--overwrite"],
             no_files("x.overlay.png")),
        Case("--z 3:100 on a 6-slice stack", c + ["stack.tif", "--z", "3:100", *vol, *m, "-o", "z.ome.zarr"],
             group="7. options"),
        Case("--z 0 on a 2D image", c + ["s.tif", "--z", "0", *m, "-o", "z0.ome.tif"]),
        Case("--threads 0", c + ["s.tif", "--threads", "0", *m, "-o", "t0.ome.tif"]),
        Case("--workers 0", c + ["stack.tif", "--z", "all", "--workers", "0", *m, "-o", "w0.ome.zarr"]),
        Case("--workers on a 2D image", c + ["s.tif", "--workers", "2", *m, "-o", "w2.ome.tif"]),
        Case("-o a.png", c + ["s.tif", *m, "-o", "a.png"]),
        Case("a volume with -o x.ome.tif", c + ["stack.tif", "--z", "all", *m, "-o", "x2.ome.tif"]),
        Case("a zarr stack with --z 0 -o a.ome.tif", c + ["stack.zarr", "--z", "0", *vol, *m, "-o", "a.ome.tif"],
             one_slice_tiff("a.ome.tif")),
        Case("bad mask codes (42, 200) in --truth", c + ["s.tif", *m, "--truth", "odd_areas.tif", "-o", "o.ome.tif"],
             says("42", "200"), group="6. masks"),
        Case("the image passed as --truth", c + ["s.tif", *m, "--truth", "s.tif", "-o", "o2.ome.tif"]),
        Case("an all-zero --truth", c + ["s.tif", *m, "--truth", "zeros_areas.tif", "-o", "o3.ome.tif"]),
        # tracebacks where one line belongs
        Case("disk full while writing the probabilities", c + ["s.tif", *m, "-o", "df.ome.tif"], setup=disk_full,
             group="tracebacks"),
        Case("subdivide -k 0", ["subdivide", "s.tif", *m, "--area", "fibrous", "-k", "0", "-o", "k0.ome.tif"]),
        Case("a TIFF folder with one slice of another shape", c + ["folder", *vol, *m, "-o", "fold.ome.zarr"]),
        Case("--z 2:100 on a 6-slice zarr stack", c + ["stack.zarr", "--z", "2:100", *vol, *m, "-o", "z2.ome.zarr"]),
        Case("a stack saved without photometric (SYX), --z all",
             c + ["stack_syx.tif", "--z", "all", *vol, *m, "-o", "syx.ome.zarr"], "ok", group="inputs users have"),
        Case("feature volume -> classify", f + ["stack.tif", "--z", "0:2", *vol, *m, "-o", "fv.zarr"], "ok"),
        Case("... without --z (2 slices)", c + ["fv.zarr", *m, "-o", "fv.ome.tif"]),
        Case("... with --z 1", c + ["fv.zarr", "--z", "1", *m, "-o", "fv.ome.tif"], one_slice_tiff("fv.ome.tif")),
        Case("a 2D zarr", c + ["plane.zarr", *vol, *m, "-o", "plane.ome.tif"], "ok"),
        Case("bundle with patch_size halved in its manifest", c + ["s.tif", "-m", "halved", "-o", "h.ome.tif"]),
        Case("bundle with a .DS_Store", c + ["s.tif", "-m", "dsstore", "-o", "ds.ome.tif"], "ok"),
        Case("--device nosuch", c + ["s.tif", *m, "--device", "nosuch", "-o", "dev.ome.tif"]),
        Case("brainrt info BUNDLE", ["info", DEMO], "ok", group="what users expect"),
        Case("brainrt --version", ["--version"], "ok"),
        Case("parameter error names the command", c + ["s.tif", *m, "--pixel-size", "-1", "-o", "p.ome.tif"]),
        Case("--area that the bundle does not have", ["subdivide", "s.tif", *m, "--area", "Ctx", "-o", "ar.ome.tif"]),
    ]
    if data_present:
        shipped = ["-m", SHIPPED, "--stride", "32"]
        rows += [
            Case("slice309 crop, uint8", c + ["c309.tif", *shipped, "-o", "r8.ome.tif"], "ok", group="1. pixel types"),
            *[Case(f"... as {kind}", c + [f"c309_{kind}.tif", *shipped, "-o", f"r_{kind}.ome.tif"],
                   same_map("r8.ome.tif", f"r_{kind}.ome.tif")) for kind in ("f32", "f32_255", "f64")],
            Case("... as u16 spanning 1000..1090 (a tiny part of its range: mapped onto the training tissue's gray "
                 "values as fitted on the tissue in view, so the map depends on the areas in view: warned)",
                 c + ["c309_u16.tif", *shipped, "-o", "r_u16.ome.tif"], says("c309_u16.tif", "areas")),
            Case("--truth on the training slice (the whole slice309: a crop is another image)",
                 c + ["slice309.tif", *shipped, "--truth", "slice309_areas.tif", "-o", "tr.ome.tif"],
                 says("training slice", "training.final"), group="2. scoring"),
            Case("... --held-out (the shipped heads saw every label: nothing is held out)",
                 c + ["slice309.tif", *shipped, "--truth", "slice309_areas.tif", "--held-out", "-o", "tr2.ome.tif"]),
        ]
    return rows + _companion("bad_inputs_maps").maps_cases(data_present)


def informational(line):
    """Whether a stderr line is one of a run's informational log lines (bundle, precision, Dask dashboard, a pixel
    size assumed, the input check), not something it says about the case."""
    return line.startswith(("brainrt: bundle", "precision ", "dask dashboard")) or any(
        h in line for h in (": pixel size unknown (", ": input check: "))


def ctrl_c_case(t):
    """Ctrl-C during a volume run (a real process, SIGINT after its first blocks): the lines it prints."""
    out = t / "cc.ome.zarr"
    cmd = [sys.executable, "-m", "brainrt.cli", "classify", str(t / "stack.tif"), "--z", "all", "--stride", "8",
           "-m", str(DEMO), "--workers", "2", "-o", str(out)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=t,
                            start_new_session=True)  # its own process group, as in a terminal
    deadline = time.monotonic() + 60
    partial = t / ".cc.ome.zarr.partial" / ".brainrt" / "done"
    while proc.poll() is None and time.monotonic() < deadline and not (partial.is_dir() and any(partial.iterdir())):
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C reaches every process of the group: the workers too
    stdout, stderr = proc.communicate(timeout=60)
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    res = Result(proc.returncode, stdout, stderr)
    bad = [ln for ln in lines if not (ln.startswith("Interrupted") or informational(ln))]
    v = "ok" if proc.returncode == 130 and not bad else f"{len(bad)} other lines on stderr"
    return ("Ctrl-C during a volume run", _cmd(cmd[3:], t), res,
            lines[-1] if lines else "", v)


def _companion(name):
    """A module of more cases beside this script (tools/NAME.py), as a package module or a script's neighbour."""
    import importlib

    try:
        return importlib.import_module(f"tools.{name}")
    except ImportError:
        return importlib.import_module(name)


def _new_user():
    """The cases of issue 28's new user (tools/bad_inputs_new_user.py)."""
    return _companion("bad_inputs_new_user")


# --------------------------------------------------------------------------- the table
@contextlib.contextmanager
def serial_volumes():
    """Volume runs in this process (no Dask client: the serial runner) instead of a cluster per run."""
    from brainrt.volumes import executors

    real = executors.dask_client

    @contextlib.contextmanager
    def none(**_):
        yield None

    executors.dask_client = none
    try:
        yield
    finally:
        executors.dask_client = real


def _cmd(args, t):
    text = " ".join(str(a) for a in args)
    return text.replace(str(t) + "/", "").replace(str(DEMO), "models/synthetic-demo").replace(
        str(SHIPPED), "models/slice309-paper6")


def _cell(text, n=220):
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= n else text[: n - 3] + "..."


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--out", default=str(ROOT / "docs" / "bad-inputs.md"))
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--only", default=None, help="Run only the cases whose title contains this.")
    ap.add_argument("--no-ctrl-c", action="store_true", help="Skip the Ctrl-C case (a real process).")
    a = ap.parse_args(argv)
    data = Path(a.data) if Path(a.data, "slice309.tif").is_file() else None
    t0 = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="brainrt-bad-") as tmp:
        t = Path(tmp)
        make_data(t, data)
        cwd = os.getcwd()
        os.chdir(t)
        try:
            with serial_volumes():
                for case in [*cases(t, data is not None), *_new_user().new_user_cases(t)]:
                    if a.only and a.only not in case.title:
                        continue
                    t1 = time.perf_counter()
                    res = run(case, t)
                    rows.append((case.group, case.title, _cmd(case.args, t), res.exit, message(res),
                                 verdict(case, res, t)))
                    print(f"{time.perf_counter() - t1:5.1f} s {rows[-1][5]:>8.8}  {case.title}", file=sys.stderr)
            if not a.no_ctrl_c and not a.only:
                title, cmd, res, msg, v = ctrl_c_case(t)
                rows.append(("tracebacks", title, cmd, res.exit, msg, v))
                title, cmd, res, msg, v = _new_user().sigterm_case(t)
                rows.append((_new_user().NEW_USER, title, _cmd(cmd, t), res.exit, msg, v))
        finally:
            os.chdir(cwd)
    write_table(Path(a.out), rows, time.perf_counter() - t0, data is not None)
    bad = [r for r in rows if r[5] != "ok"]
    print(f"wrote {a.out}: {len(rows)} cases, {len(bad)} not ok, {time.perf_counter() - t0:.0f} s", file=sys.stderr)


def write_table(path, rows, seconds, data_present):
    lines = ["# Bad inputs: what a new user gets", "",
             "Generated by `python tools/bad_inputs.py` (do not edit by hand; rerun it). Each row runs the real",
             "command on synthetic data in a temporary folder" + (" and on a crop of slice309" if data_present else "")
             + "; the", "message is the error line, else the warnings, else the last line of output. **ok**: a "
             "refusal", "is one line with exit status 2 and leaves no file, a rerun of a finished output does "
             "nothing, and", "a run that succeeds gives the right result. Anything else is a defect.", "",
             f"{len(rows)} cases, {sum(r[5] != 'ok' for r in rows)} not ok; {seconds:.0f} s.", "",
             "| case | command | exit | message | verdict |", "|---|---|---|---|---|"]
    group = None
    for g, title, cmd, code, msg, v in rows:
        if g and g != group:
            lines.append(f"| **{g}** | | | | |")
            group = g
        lines.append(f"| {_cell(title)} | `brainrt {_cell(cmd, 160)}` | {code} | {_cell(msg)} | "
                     f"{'ok' if v == 'ok' else '**' + _cell(v, 100) + '**'} |")
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
