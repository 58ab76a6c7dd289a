"""``brainrt train-and-export``: the trainer's command, registered with the ``brainrt`` CLI by entry point.

pyproject.toml lists it under ``[project.entry-points."brainrt.commands"]``; the runtime
CLI loads it only when it is invoked, so the runtime never imports the trainer.
"""

from __future__ import annotations

import click

from brainrt.cli import one_line_errors
from brainrt.cli.options import show_progress
from brainrt.errors import BrainrtError

#: The network candidates ``--cv`` compares by default (every tile candidate of brainrt_train.netcv).
FINAL_CANDIDATES = ("tiles", "strong-aug", "wd+ls", "mixup+swa")
#: The options of the final fit (the rest belong to the split run).
FINAL_OPTIONS = {"images", "masks", "class_map", "out", "overwrite", "final", "choices", "cv_k", "candidates", "budget",
                 "threads", "seed"}
#: The options only ``--cv`` reads.
CV_OPTIONS = ("candidates", "budget", "threads", "seed", "class_map")


def _context_scales(text):
    """``"0"`` -> 0, ``"4"`` -> 4, ``"4,16"`` -> (4, 16); anything else is a one-line error."""
    try:
        scales = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        scales = None
    if not scales or any(k != 0 and (k < 2 or k & (k - 1)) for k in scales) or (0 in scales and len(scales) > 1):
        raise BrainrtError(f"--context: expected 0 or comma-separated powers of two >= 2 (4 or 4,16), got {text!r}")
    return scales[0] if len(scales) == 1 else scales


@click.command("train-and-export")
@click.option("--image", "images", multiple=True, required=True, type=click.Path(), help="Image TIFF (repeat for several slices).")
@click.option("--mask", "masks", multiple=True, required=True, type=click.Path(), help="Label-mask TIFF, one per --image.")
@click.option("--class-map", default="prasad2020", show_default=True, help="Preset name or JSON file {classes, ignore, unlabeled}.")
@click.option("-o", "--out", required=True, type=click.Path(), help="Bundle folder to write.")
@click.option("--patch-size", default=128, show_default=True)
@click.option("--n-train", default=2000, show_default=True, help="Training patches per class (at most).")
@click.option("--n-val", default=1000, show_default=True)
@click.option("--n-test", default=1000, show_default=True)
@click.option("--epochs", default=30, show_default=True)
@click.option("--batch-size", default=64, show_default=True)
@click.option("--lr", default=1e-4, show_default=True, help="Adam learning rate (the paper's 1e-4).")
@click.option("--schedule", type=click.Choice(["constant", "onecycle"]), default="constant", show_default=True)
@click.option("--max-minutes", type=float, default=None, help="Stop training before an epoch that would overrun this.")
@click.option("--seed", default=0, show_default=True)
@click.option("--gap", type=int, default=None, help="Min. pixels between training and evaluation patches (default: one patch).")
@click.option("--z", type=int, default=None, help="Slice index in 3D stacks.")
@click.option("--context", default="0", show_default=True,
              help="Context scales: 4 adds the context branch (the 4x wider field, pooled to the patch size); "
                   "4,16 adds a second, 16x wider field with its own branch; 0: the paper's network.")
@click.option("--layout", type=click.Choice(["rows", "interior"]), default="rows", show_default=True,
              help="Split bands per class (see brainrt_train.data.split_regions).")
@click.option("--redraw/--no-redraw", default=False, show_default=True, help="Draw fresh training positions every epoch.")
@click.option("--border-p", type=click.FloatRange(0, 1), default=None, help="Share of samples given a tissue border in their context (default 0.6).")
@click.option("--rotate-p", type=click.FloatRange(0, 1), default=None, help="Share of batches turned by a free angle and rescaled (default 0).")
@click.option("--final", is_flag=True, help="With --choices: the final fit (the network trained on every labeled "
              "pixel, the heads chosen by spatial cross-validation on its features). Alone: after the split run's "
              "choices, refit the heads on every split's patches (recorded metrics stay the split run's).")
@click.option("--choices", type=click.Path(), default=None,
              help="With --final: a choices JSON (network recipe, budget, seed, folds, heads' grid) or a bundle made "
                   "by a final fit (refitted from its own record).")
@click.option("--cv", "cv_k", type=click.IntRange(3), default=None,
              help="Make the choices: the network candidates under a K-fold spatial cross-validation (results, report "
                   "and choices.json in OUT.cv/, resumable), then the final fit.")
@click.option("--candidates", default=",".join(FINAL_CANDIDATES), show_default=True,
              help="With --cv: the network candidates compared (brainrt_train.netcv).")
@click.option("--budget", default="8x40x8x12", show_default=True,
              help="With --cv: training budget per network, EPOCHSxBATCHESxTILES_PER_BATCHxOUTPUTS_PER_TILE_SIDE.")
@click.option("--threads", type=click.IntRange(1), default=2, show_default=True, help="With --cv: torch threads.")
@click.option("--tiles", type=click.IntRange(0), default=0, show_default=True,
              help="Train on tiles of N x N stride-16 output positions (neighbours share their convolutions; "
                   "every class anchors its share of tiles); 0: per patch.")
@click.option("--tile-batch", default=8, show_default=True, help="Tiles per batch with --tiles.")
@click.option("--init-from", type=click.Path(), default=None,
              help="Weights from a --checkpoint file instead of training (same data, split and seed).")
@click.option("--checkpoint", type=click.Path(), default=None, help="Keep the best weights here as training goes.")
@click.option("--overwrite", is_flag=True, help="Replace an existing bundle folder.")
@one_line_errors
def train_and_export_cmd(images, masks, class_map, out, **kw):
    """Train the paper's CNN on annotated slices and write a verified model bundle.

    An existing bundle at -o trained by the same arguments on the same files is left as it is
    (said, exit 0); any other is replaced only with --overwrite (README, "Finished outputs").
    """
    if len(images) != len(masks):
        raise BrainrtError(f"got {len(images)} --image and {len(masks)} --mask; give one mask per image")
    from brainrt.cli.options import command_record
    from brainrt.outputs.finished import is_finished

    from .pipeline import train_and_export

    ctx = click.get_current_context()
    final = kw["choices"] is not None or kw["cv_k"] is not None
    _check_final_options(ctx, images, out, kw) if final else _check_split_options(ctx)
    record = command_record(ctx, None, by_value=("checkpoint",))
    if is_finished(out, record, is_dir=True, overwrite=kw["overwrite"], read=_bundle_record):
        click.echo(f"{out} is complete (trained by the same command and arguments); nothing to do "
                   "(--overwrite trains it again)")
        return
    if final:
        return _final(ctx, images[0], masks[0], class_map, out, record, kw)
    for name in ("choices", "cv_k", "candidates", "budget", "threads"):
        kw.pop(name)
    kw["context"] = _context_scales(kw["context"])
    m = train_and_export(list(zip(images, masks)), out, class_map=class_map, progress=show_progress(), record=record,
                         **kw)
    click.echo(f"wrote {out}: CNN test accuracy {m.test_accuracy('cnn'):.3f}, "
               f"logreg {m.test_accuracy('logreg') or float('nan'):.3f}")


def _given(ctx):
    """The options given on the command line (not defaults)."""
    from click.core import ParameterSource

    return [p for p in ctx.command.params if ctx.get_parameter_source(p.name) == ParameterSource.COMMANDLINE]


def _command(ctx):
    """The command line as given (its options, values quoted), for the manifest's record."""
    import shlex

    parts = [ctx.command_path]
    for p in _given(ctx):
        name, value = max(p.opts, key=len), ctx.params[p.name]
        for v in (value if isinstance(value, tuple) else (value,)):
            parts += [name] if getattr(p, "is_flag", False) else [name, shlex.quote(str(v))]
    return " ".join(parts)


def _check_final_options(ctx, images, out, kw):
    """The final fit's one-line errors, before any work."""
    from pathlib import Path

    if kw["choices"] is not None and kw["cv_k"] is not None:
        raise BrainrtError("--choices and --cv: give the choices, or make them with --cv, not both")
    if kw["choices"] is not None and not kw["final"]:
        raise BrainrtError("--choices goes with --final (the final fit of those choices)")
    if len(images) != 1:
        raise BrainrtError(f"the final fit trains on one slice; got {len(images)} --image")
    if kw["choices"] is not None and Path(kw["choices"]).resolve() == Path(out).resolve():
        raise BrainrtError(f"{out}: -o is the --choices bundle; write the refit to another folder")
    extra = [max(p.opts, key=len) for p in _given(ctx) if p.name not in FINAL_OPTIONS
             or (kw["cv_k"] is None and p.name in CV_OPTIONS)]
    if extra:
        raise BrainrtError(f"{', '.join(extra)} {'does' if len(extra) == 1 else 'do'} not apply to the final fit "
                           "(its recipe, budget and seed are the choices')")


def _check_split_options(ctx):
    """``--candidates``, ``--budget``, ``--threads`` belong to ``--cv``."""
    extra = [max(p.opts, key=len) for p in _given(ctx) if p.name in ("candidates", "budget", "threads")]
    if extra:
        raise BrainrtError(f"{', '.join(extra)} {'goes' if len(extra) == 1 else 'go'} with --cv")


def _final(ctx, image, mask, class_map, out, record, kw):
    """``--final --choices FILE`` or ``--cv K``: the choices read or made, then the final fit."""
    from .final_bundle import Choices, make_choices, parse_budget

    command = _command(ctx)
    if kw["cv_k"] is not None:
        cands = [c.strip() for c in kw["candidates"].split(",") if c.strip()]
        bad = [c for c in cands if c not in FINAL_CANDIDATES]
        if bad or not cands:
            raise BrainrtError(f"--candidates: {', '.join(bad) or 'none given'}; choose among {', '.join(FINAL_CANDIDATES)}")
        choices = make_choices(image, mask, out, k=kw["cv_k"], candidates=cands,
                               budget=parse_budget(kw["budget"], kw["threads"]), seed=kw["seed"], class_map=class_map,
                               command=command)
    else:
        choices = Choices.read(kw["choices"])
    from .final_bundle import final_fit_bundle

    m = final_fit_bundle(image, mask, out, choices, overwrite=kw["overwrite"], record=record, command=command)
    click.echo(f"wrote {out}: network {choices.network}, default head {m.training.extra['final']['recipe']['head']} "
               f"+ {m.smoothing.sigma_um:g} um {m.smoothing.space}; heads' cross-validation on its features (in-sample "
               f"for the network): smoothed pixel accuracy {m.metrics['cv_pixel_accuracy']:.3f}, macro F1 "
               f"{m.metrics['cv_macro_f1']:.3f}")


def _bundle_record(out):
    """The run record in a bundle's manifest (None: none, or a bundle that does not verify)."""
    from brainrt.model.seal import verify_bundle

    try:
        return verify_bundle(out).extra.get("run")
    except BrainrtError:
        return None
