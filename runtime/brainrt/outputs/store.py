"""The output store interface: one output of one run, and the finished-output rule applied to it.

Every store has a target ``out`` and applies the rule of :mod:`brainrt.outputs.finished` through the same
three calls, whatever it writes:

- :meth:`OutputStore.check`: refuse, before any work, a target that cannot be written: one whose name says
  another format than the one written (``-o a.png``), that is one of the command's inputs (``out`` or a side
  file), or whose folder is missing or read-only (the whole rule "may I write OUT", in this one call);
- :meth:`OutputStore.finished`: True when ``out`` is a finished output of the same run (nothing to
  do), False when there is nothing there (or ``overwrite``), else the one-line refusal naming what
  differs (the target checked first);
- :meth:`OutputStore.members`: the paths written with ``out`` (its side files), which must not be
  inputs either.

The two stores: :class:`~brainrt.outputs.tiff_set.TiffSet`, the OME-TIFF set of one slice (the
map and its side files, committed as one by renames, its record ``X.run.json`` written last), and
:class:`~brainrt.outputs.zarr_stack.ZarrStack`, the OME-Zarr (or zarr) stack of a volume (assembled
under ``.NAME.partial`` with its record inside, resumed task by task, renamed into place when done).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import file_error
from ..io import check_not_input, check_target
from .finished import is_finished


class OutputStore:
    """One output of one run: a file with side files (``is_dir`` False) or a folder (True)."""

    #: Whether the output is a folder (its record inside it) or a file (its record beside it).
    is_dir = False

    def __init__(self, out):
        self.out = Path(out)

    @property
    def members(self) -> list[Path]:
        """The side files that go with ``out`` (none for a folder)."""
        return []

    def check(self, *, inputs=(), named=None):
        """Raise the one-line error that writing ``out`` would raise, before any work: ``inputs`` (the command's input
        files) refuses ``out`` or a side file that is one of them; ``named`` (the command, and (suffixes, what it
        writes, the default output's suffix): a job's :attr:`~brainrt.job.Job.output`) a name that says another
        format; then the target itself (:func:`brainrt.io.check_target`)."""
        check_not_input([self.out, *self.members], inputs)
        if named is not None:
            command, (suffixes, what, suffix) = named
            if not str(self.out).rstrip("/").lower().endswith(suffixes):
                raise file_error(self.out, f"{command} writes {what}; name the output like NAME{suffix}")
        check_target(self.out, is_dir=self.is_dir)

    def finished(self, record, *, overwrite=False, read=None) -> bool:
        """The finished-output rule (:func:`brainrt.outputs.finished.is_finished`) for a run of ``record``, once
        :meth:`check` passes; ``read(out)`` reads the record of an output that keeps it elsewhere."""
        self.check()
        return is_finished(self.out, record, members=self.members, is_dir=self.is_dir, overwrite=overwrite, read=read)
