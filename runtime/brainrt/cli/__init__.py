"""The ``brainrt`` command line: thin click commands over the library, one module a command.

Lives here: the ``brainrt`` group (this module: logging, one-line usage errors, the commands other
packages register), one module per command (:mod:`.featurize`, :mod:`.classify`, :mod:`.cluster`,
:mod:`.subdivide`, :mod:`.fit`, :mod:`.info`, :mod:`.demo`, :mod:`.export`), what they share (:mod:`.common`: one
start and run of every command's job, :mod:`brainrt.job`'s, with the output's checks and the finished-output
rule before any work) and the option declarations and error reporting (:mod:`.options`). Each command turns
its options into one job (one slice or a volume: the job decides) and runs it. Commands of other packages (the trainer's ``train-and-export``) are registered
under the entry-point group ``brainrt.commands`` and imported only when invoked (or listed by
``--help``), so the runtime never imports the trainer.

May import: every room of the runtime (the face); nothing of the runtime imports it.
"""

from __future__ import annotations

import logging
import sys

import click

from .classify import classify
from .cluster import cluster
from .demo import demo
from .export import export
from .featurize import featurize
from .fit import fit
from .info import info
from .options import one_line_errors, sigterm_as_interrupt
from .subdivide import subdivide

__all__ = ["COMMAND_GROUP", "main", "one_line_errors"]

log = logging.getLogger("brainrt")

#: Entry-point group of commands other packages add to ``brainrt``.
COMMAND_GROUP = "brainrt.commands"


def _plugins():
    """Name -> entry point of the commands registered by other packages."""
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=COMMAND_GROUP)}


class _Commands(click.Group):
    """This module's commands plus the registered ones, each loaded when first needed."""

    def list_commands(self, ctx):
        return sorted({*super().list_commands(ctx), *_plugins()})

    def get_command(self, ctx, name):
        cmd = super().get_command(ctx, name)
        if cmd is None and name in (plugins := _plugins()):
            cmd = plugins[name].load()
        return cmd

    def main(self, *args, standalone_mode=True, **kwargs):
        """Usage errors (a bad option value, a missing argument) as one line too, exit status 2."""
        with sigterm_as_interrupt():
            return self._main(*args, standalone_mode=standalone_mode, **kwargs)

    def _main(self, *args, standalone_mode=True, **kwargs):
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            super().main(*args, standalone_mode=False, **kwargs)
        except click.ClickException as exc:
            where = getattr(exc, "ctx", None)
            hint = f" (see '{where.command_path} --help')" if where is not None else ""
            click.echo(f"Error: {exc.format_message()}{hint}", err=True)
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(0)


@click.group(cls=_Commands)
@click.version_option(None, "--version", package_name="brainrt", message="brainrt %(version)s")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only errors.")
@click.option("--progress/--no-progress", default=None,
              help="Progress bars on stderr (default: only when stderr is a terminal).")
@click.pass_context
def main(ctx, verbose, quiet, progress):
    """brainrt: maps of brain architecture from micron-scale images with CNN features."""
    ctx.obj = {"progress": progress}
    level = logging.ERROR if quiet else logging.DEBUG if verbose > 1 else logging.INFO
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)


for _command in (featurize, classify, cluster, subdivide, fit, info, demo, export):
    main.add_command(_command)
