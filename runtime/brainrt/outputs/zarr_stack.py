"""The zarr stack of a volume: an OME-Zarr (classify) or zarr (featurize) folder, assembled resumably.

A :class:`ZarrStack` (an :class:`~brainrt.outputs.store.OutputStore`) is assembled in the hidden
folder ``.NAME.partial`` beside ``NAME``, with the run record of :mod:`brainrt.outputs.finished` inside from
the start (``.brainrt/run.json``) and one completion record per task (``.brainrt/done/NAME``, written
after the task's data: :func:`mark_done`) and the notes tasks leave for the run
(``.brainrt/notes/NAME.json``, :func:`write_note`: a slice's input check), folded into the run record when
the stack is finished. A rerun of the same run resumes it (recorded tasks are
skipped), a rerun with other arguments is refused naming what differs, and the folder is renamed into
place when every task is done (:meth:`ZarrStack.commit`), keeping its run record: a finished stack of
the same run is then left alone (:meth:`~brainrt.outputs.store.OutputStore.finished`). What the
arrays are is the volume's business (:mod:`brainrt.volumes.layout`); this module knows folders and
records.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ..errors import file_error
from .finished import FOLDER_RECORD, differences, read_record, same_run, write_record
from .store import OutputStore

#: Folder of the run record and of the completion records (``done/``) inside the stack.
STATE = str(FOLDER_RECORD.parent)


def partial_path(out) -> Path:
    """The folder a volume output is assembled in (kept by an interrupted run, for its resume)."""
    out = Path(out)
    return out.parent / f".{out.name}.partial"


def _done(store, name) -> Path:
    return Path(store) / STATE / "done" / name


def is_done(store, name) -> bool:
    """Whether task ``name`` of the partial ``store`` has its completion record."""
    return _done(store, name).exists()


def _write_whole(p, text):
    """``text`` into ``p``, which appears whole or not at all (a record of a task, written after its data)."""
    tmp = p.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, p)


def mark_done(store, name):
    """Write task ``name``'s completion record into the partial ``store`` (after its data)."""
    _write_whole(_done(store, name), "")


def _note(store, name) -> Path:
    return Path(store) / STATE / "notes" / f"{name}.json"


def write_note(store, name, value):
    """Task ``name``'s note (a JSON value) in the partial ``store``, for the run (:func:`read_note`); whole or absent."""
    p = _note(store, name)
    p.parent.mkdir(parents=True, exist_ok=True)
    _write_whole(p, json.dumps(value))


def read_note(store, name):
    """Task ``name``'s note in the partial ``store``, None if it wrote none."""
    p = _note(store, name)
    return json.loads(p.read_text()) if p.is_file() else None


def _n_done(tmp) -> int:
    done = Path(tmp) / STATE / "done"
    return sum(1 for p in done.iterdir() if not p.name.endswith(".tmp")) if done.is_dir() else 0


class ZarrStack(OutputStore):
    """The folder output ``out`` of a volume, assembled under :attr:`partial`."""

    is_dir = True

    @property
    def partial(self) -> Path:
        return partial_path(self.out)

    def open(self, record, create, *, overwrite=False):
        """The partial stack for a run of ``record``: resumed when its record is the same run's, else
        refused (a new one with ``overwrite``); a new one when there is none, laid out by ``create(tmp)``.
        Returns ``(folder, completion records found)``."""
        self.check()
        tmp, old = self.partial, read_record(self.partial, is_dir=True)
        if old is not None and same_run(old, record):
            return tmp, _n_done(tmp)
        if old is not None and not overwrite:
            raise file_error(self.out, f"an unfinished run with other arguments is in {tmp} ({differences(old, record)}); "
                                       "rerun it with the same arguments to resume, --overwrite to start again, or "
                                       "delete that folder")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        create(tmp)
        (tmp / STATE / "done").mkdir(parents=True, exist_ok=True)
        write_record(tmp / FOLDER_RECORD, record)
        return tmp, 0

    def discard(self):
        """Remove the partial stack (a run that no resume can use: a bad input)."""
        shutil.rmtree(self.partial, ignore_errors=True)

    def commit(self, **notes):
        """Drop the completion records and the tasks' notes and rename the finished stack into place; its run
        record stays, with ``notes`` (what the run made of the tasks' notes) added (not compared by a rerun)."""
        if notes:
            write_record(self.partial / FOLDER_RECORD, {**read_record(self.partial, is_dir=True), **notes})
        shutil.rmtree(self.partial / STATE / "done")
        shutil.rmtree(self.partial / STATE / "notes", ignore_errors=True)
        if self.out.exists():
            shutil.rmtree(self.out)
        os.replace(self.partial, self.out)

    def interrupted_line(self) -> str:
        """What an interrupted run says once it has stopped: where its finished tasks are kept for the resume,
        or that no output was written (a partial stack without a finished task is removed)."""
        tmp = self.partial
        if tmp.is_dir() and not _n_done(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
        if tmp.is_dir():
            return f"Interrupted; the finished blocks are kept in {tmp}: rerun the same command to resume"
        return "Interrupted; no output was written"
