"""The OME-TIFF set of one slice: a map ``X.ome.tif`` and its side files, written as one.

The files a writer may put beside ``X.ome.tif`` (as ``X<suffix>``, :data:`SIBLING_SUFFIXES`) and the
set's run record ``X.run.json`` are one output (:class:`TiffSet`, an
:class:`~brainrt.outputs.store.OutputStore`). :class:`OutputSet` writes it as one: every file goes to
a temporary name first; only when all are written are they renamed into place, the files of the set
that this run does not write are removed, and the record is written last (and removed first), so a
set without its record is never taken as finished (:mod:`brainrt.outputs.finished`).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from ..errors import BrainrtError, file_error
from ..io import current_umask
from ..runfiles import temp_path
from .finished import SET_RECORD, record_path, set_member, write_record
from .store import OutputStore

#: Files the writers put beside their main output ``X.ome.tif`` (as ``X<suffix>``); with it, one output set
#: (:class:`OutputSet`), whose run record is ``X.run.json``.
SIBLING_SUFFIXES = (".probabilities.ome.tif", ".uncertainty.ome.tif", ".overlay.png", ".metrics.json", ".confusion.png", ".loglik.ome.tif")


def siblings(out):
    """Every path a writer may put beside the main output ``out`` (its record included)."""
    return [set_member(out, suffix) for suffix in (*SIBLING_SUFFIXES, SET_RECORD)]


def probabilities_path(out):
    """Where the probabilities of the label map ``out`` go."""
    return set_member(out, ".probabilities.ome.tif")


def uncertainty_path(out):
    """Where the uncertainty map (margin, entropy) of the label map ``out`` goes."""
    return set_member(out, ".uncertainty.ome.tif")


class TiffSet(OutputStore):
    """The output set of the map ``out`` (one slice): ``out``, its side files and its record beside it."""

    @property
    def members(self) -> list[Path]:
        return siblings(self.out)

    def writing(self, record) -> OutputSet:
        """The set, to write as one (``with``; see :class:`OutputSet`) with the run ``record``."""
        return OutputSet(self.out, self.members[:-1], record=record)


class OutputSet:
    """Write the files of one output set atomically as a set (see the module docstring).

    ``with OutputSet(out, members, record=rec) as s:`` then write each file to
    ``s.path(final)``; on success the set is committed, on any error every temporary file is
    removed and the existing set is left as it was. A write that fails for lack of space (or
    any OS error) becomes the one-line error naming the output.
    """

    def __init__(self, out, members, *, record=None):
        self.out, self.members, self.record = Path(out), [Path(m) for m in members], record
        self._tmp: dict[Path, Path] = {}

    def path(self, final) -> Path:
        """A temporary path for the set's file ``final``."""
        final = Path(final)
        self._tmp[final] = temp_path(final)
        return self._tmp[final]

    def written(self, final):
        """The temporary path of the set's file ``final`` (what this run wrote so far), None if it has none."""
        return self._tmp.get(Path(final))

    def has(self, final) -> bool:
        """Whether the set's file ``final`` has a temporary path (it is written by this run)."""
        return Path(final) in self._tmp

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        try:
            if kind is None:
                self._commit()
        except OSError as err:
            self._discard()
            raise _os_error(self.out, err) from None
        if kind is not None:
            self._discard()
            if issubclass(kind, OSError):
                raise _os_error(self.out, exc) from None
        return False

    def _commit(self):
        rec_path = record_path(self.out)
        rec_path.unlink(missing_ok=True)  # removed first: a half-committed set has no record
        mode = 0o666 & ~current_umask()
        for final, tmp in self._tmp.items():
            os.chmod(tmp, mode)
            os.replace(tmp, final)
        for stale in [self.out, *self.members]:
            if stale not in self._tmp and stale.is_file():
                stale.unlink()
        self._tmp = {}
        if self.record is not None:
            rec = {**self.record, "files": {p.name: p.stat().st_size for p in [self.out, *self.members] if p.is_file()}}
            write_record(rec_path, rec)

    def _discard(self):
        for tmp in self._tmp.values():
            tmp.unlink(missing_ok=True)
        self._tmp = {}


def _os_error(out, err) -> BrainrtError:
    why = "no space left on device" if getattr(err, "errno", None) == errno.ENOSPC else (err.strerror or str(err))
    return file_error(out, f"cannot write the output ({why}); nothing was written or replaced")
