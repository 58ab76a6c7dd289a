"""The command line's shared options, defined once (rasterio's ``rio/options.py``): the model, the
grid and evaluation options of every command (their defaults are :mod:`brainrt.model.params`'), the
volume options, the argument types they need, every command's run record (:mod:`brainrt.outputs.finished`), and how every command
reports an error (:func:`one_line_errors`)."""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import signal
import sys
import threading
from pathlib import Path

import click

from ..bundle.load import DEVICES, default_model
from ..engine.plan import DEFAULT_PRECISION, METHODS
from ..errors import BrainrtError, file_error
from ..model import params
from ..model.manifest import PRECISIONS, Manifest
from ..outputs.finished import run_record

log = logging.getLogger("brainrt")


def model_option(f):
    """-m/--model: the bundle folder."""
    return click.option("-m", "--model", "model", default=None, type=click.Path(),
                        help="Model bundle folder (default: the shipped slice309 bundle).")(f)


def threads_option(f):
    """--threads: onnxruntime threads, as :data:`brainrt.model.params.PARAMS` declares them (every command's)."""
    return click.option("--threads", type=click.IntRange(min=params.PARAMS["threads"].constraint.low), default=None,
                        help="onnxruntime threads (default: all cores).")(f)


def grid_options(f):
    """The grid, evaluation and input options of featurize, classify, cluster and subdivide."""
    opts = [
        click.option("--stride", type=click.IntRange(min=1), default=params.default("stride"), show_default=True,
                     help="Grid step in pixels."),
        click.option("--method", type=click.Choice(METHODS), default=params.default("method"), show_default=True,
                     help="Dense (whole tiles) or per-patch evaluation; auto picks dense when it applies."),
        click.option("--precision", type=click.Choice(("auto",) + PRECISIONS), default=DEFAULT_PRECISION,
                     show_default=True, help="Network arithmetic: int8 runs the bundle's int8 graphs (dense path "
                     "about 3x faster, maps 99.4% equal on slice309); auto: int8 where the CPU has VNNI."),
        click.option("--tissue-mask", type=click.Path(), default=None,
                     help="Mask of the tissue (nonzero = tissue): a TIFF; for a volume, a mask stack of its shape."),
        click.option("--threshold", type=float, default=None, help="Tissue intensity threshold (default: Otsu)."),
        click.option("--all-cells", is_flag=True, help="Featurize every cell, background included."),
        click.option("--z", type=ZArg(), default=None,
                     help="Slice index of a 3D stack; featurize and classify also take a range a:b or 'all' (a volume)."),
        click.option("--series", type=int, default=None, help="Series of a multi-series (OME-)TIFF."),
        click.option("--pixel-size", type=float, default=None, help="Pixel size in um (default: from the TIFF or zarr, else the bundle's, logged); "
                          "another than the bundle's is resampled to it for the network, outputs on the input's pixels."),
        threads_option,
        click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True,
                     help="Where the network runs: cuda needs onnxruntime's GPU build (brainrt[gpu]); auto takes it "
                          "where usable."),
        click.option("--batch-size", type=click.IntRange(min=1), default=params.default("batch_size"),
                     show_default=True, help="Patches per onnxruntime call."),
        click.option("--overwrite", is_flag=True,
                     help="Replace an existing output of other arguments (same arguments: nothing to do)."),
        standardize_option("Map the slice's tissue histogram onto the training tissue's (when the bundle "
                             "records it): auto only where the pixel range demands it (a tiny part of its type's "
                             "range), so a crop is mapped like the whole slice; match always (a whole slice of "
                             "another contrast; the map then depends on the areas in view); off never."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def standardize_option(help_text):
    """Decorator: ``--standardize auto|match|off`` and its older spelling ``--no-standardize`` (= off)."""
    choice = click.option("--standardize", type=click.Choice(params.PARAMS["standardize"].constraint.values),
                          default=params.default("standardize"), show_default=True, help=help_text)
    off = click.option("--no-standardize", "standardize", flag_value="off", help="Same as --standardize off.")
    return lambda f: choice(off(f))


class ZArg(click.ParamType):
    """--z: an int (one slice) or, for volumes, "a:b" or "all" (kept as a string)."""
    name = "z"

    def convert(self, value, param, ctx):
        if isinstance(value, int) or value is None:
            return value
        text = str(value).strip()
        return int(text) if text.lstrip("-").isdigit() else text


class SchedulerAddress(click.ParamType):
    """--scheduler: a Dask scheduler's address, ``[PROTOCOL://]HOST:PORT``, checked before any work (distributed's
    own parse fails deep in the client with a traceback)."""
    name = "address"
    PATTERN = re.compile(r"^(?:(?:tcp|tls|ws|wss|ucx|inproc)://)?(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):\d{1,5}$")

    def convert(self, value, param, ctx):
        text = str(value).strip()
        if not self.PATTERN.match(text) or not 0 < int(text.rsplit(":", 1)[1]) < 65536:
            self.fail(f"{value!r} is not a scheduler address; give --scheduler HOST:PORT (e.g. tcp://127.0.0.1:8786, "
                      "the address the scheduler prints)", param, ctx)
        return text


def volume_options(f):
    """--workers and --scheduler: where a volume runs (refused for one slice)."""
    f = click.option("--scheduler", type=SchedulerAddress(), default=None,
                     help="Volumes: address of a running Dask scheduler (HOST:PORT).")(f)
    return click.option("--workers", type=click.IntRange(min=1), default=None,
                        help="Volumes: worker processes of a local Dask cluster (default: one per core).")(f)


class LabelsList(click.Command):
    """``--labels A B C``: every word after ``--labels`` up to the next option is one stroke image."""

    def parse_args(self, ctx, args):
        out, taking = [], False
        for a in args:
            if a == "--labels":
                taking = True
            elif taking and not a.startswith("-"):
                out += ["--labels", a]
            else:
                taking = False
                out.append(a)
        return super().parse_args(ctx, out)


#: Options that change how fast a command runs, not what it writes: left out of run records.
NOT_RECORDED = ("threads", "batch_size", "workers", "scheduler", "device", "out", "overwrite", "model")


def command_record(ctx, model_hash, *, by_value=()):
    """The run record (:mod:`brainrt.outputs.finished`) of the command being run: its arguments by option name,
    its input files (path options, except those in ``by_value``: recorded as given), the bundle's hash."""
    args, inputs = {}, {}
    for p in ctx.command.params:
        if p.name in NOT_RECORDED:
            continue
        name = p.human_readable_name if isinstance(p, click.Argument) else max(p.opts, key=len)
        is_input = isinstance(p.type, click.Path) and p.name not in by_value
        (inputs if is_input else args)[name] = ctx.params.get(p.name)
    return run_record(ctx.info_name, args, inputs, model_hash)


class AreaOption(click.Option):
    """--area: its help lists the default bundle's areas (read from its manifest when help is shown)."""

    def get_help_record(self, ctx):
        try:
            names = Manifest.from_json((default_model() / "manifest.json").read_text()).class_names
            self.help = f"Sub-divide the cells classified as this area: one of the bundle's ({', '.join(names)} " \
                        "for the default bundle)."
        except (BrainrtError, OSError):
            self.help = "Sub-divide the cells classified as this area (one of the bundle's classes)."
        return super().get_help_record(ctx)


def show_progress():
    """Progress bars: as asked (--progress/--no-progress), else only on a terminal and never with -q."""
    ctx = click.get_current_context(silent=True)
    asked = (ctx.find_root().obj or {}).get("progress") if ctx else None
    if asked is not None:
        return asked
    return log.isEnabledFor(logging.INFO) and sys.stderr.isatty()


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a batch system's stop), raised where Ctrl-C's KeyboardInterrupt is: the same clean stop
    (temporary files removed, one line), exit status 143."""

    signum = signal.SIGTERM


def interrupted_status(exc):
    """Exit status of a run stopped by a signal: 128 + its number, as shells expect (130 Ctrl-C, 143 SIGTERM)."""
    return 128 + int(getattr(exc, "signum", signal.SIGINT))


@contextlib.contextmanager
def sigterm_as_interrupt():
    """While a command runs: SIGTERM raises :class:`Terminated` (a second one is ignored while it stops)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated()

    old = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def one_line_errors(fn):
    """Turn BrainrtError (and missing optional packages) into one line and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except BrainrtError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(2)
        except ModuleNotFoundError as exc:
            click.echo(f"Error: {exc.name} is not installed; install brainrt with the [train] extra "
                       "for training (pip install 'brainrt[train]')", err=True)
            sys.exit(2)
        except KeyboardInterrupt as exc:  # a job that keeps what it finished says so (brainrt.job)
            click.echo(str(exc) or "Interrupted; no output was written", err=True)
            sys.exit(interrupted_status(exc))
        except OSError as exc:  # a failed read or write the checks could not foresee (disk full, permissions)
            click.echo(f"Error: {exc.filename or 'brainrt'}: {exc.strerror or exc}", err=True)
            sys.exit(2)

    return wrapper
