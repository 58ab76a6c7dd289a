"""Finished outputs: one rule for every output of every command, and the record that decides it.

The rule (README, "Finished outputs"):

- nothing at the target: write it;
- a finished output written by the same command with the same arguments: say it is complete
  and do nothing (exit 0);
- anything else there (other arguments, an unfinished or damaged set, files without a run
  record): refuse with one line unless ``--overwrite`` (``overwrite=True``).

The **run record** (:func:`run_record`) is a small JSON dict: the command, its arguments by
option name, the identity of every input file (resolved path, size, modification time) and
the bundle's manifest sha256; the library version is kept but not compared. A folder output
(zarr, a 2D feature grid or a volume) holds it as ``.brainrt/run.json`` (a volume from the
start of its ``.partial`` folder, so a resume is checked against the same record); a file output ``X.ome.tif`` and its side files
(``X.probabilities.ome.tif``, ``X.overlay.png``, ...) are one **set** whose record
``X.run.json`` also lists each file's size.

Every output is written atomically, never taken as finished half-written: the two output stores
(:mod:`brainrt.outputs`, one interface) apply this rule. The OME-TIFF set of a slice
(:class:`~brainrt.outputs.tiff_set.TiffSet`) renames its files into place together, its record
after them; the zarr stack of a volume (:class:`~brainrt.outputs.zarr_stack.ZarrStack`)
is assembled under ``.NAME.partial`` (resumable task by task) and renamed into place when done.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import BrainrtError, file_error
from ..sources import file_of
from ..version import __version__

FORMAT = "brainrt-run/1"
#: The record of a folder output, inside it.
FOLDER_RECORD = Path(".brainrt") / "run.json"
#: The record of a file output ``X.ome.tif``: ``X`` + this suffix.
SET_RECORD = ".run.json"
#: Keys of a record that are not compared ("same arguments" means the rest is equal).
NOT_COMPARED = ("files", "brainrt", "input_check")


def input_identity(path) -> dict | None:
    """What identifies an input file or folder: resolved path, size and modification time (None: no path)."""
    if path is None:
        return None
    p, inner = Path(file_of(path)), str(path)[len(file_of(path)):]  # inner: the dataset inside an HDF5 file
    if not p.exists():
        return {"path": str(path)}
    st = p.stat()
    ident = {"path": str(p.resolve()) + inner, "mtime_ns": st.st_mtime_ns}
    if p.is_file():
        ident["size"] = st.st_size
    return ident


def run_record(command: str, arguments: dict, inputs: dict, model_hash: str | None) -> dict:
    """The run record of ``command`` (arguments by option name, inputs by option name -> path)."""
    rec = {"format": FORMAT, "command": command, "arguments": arguments,
           "inputs": {k: [input_identity(x) for x in v] if isinstance(v, (list, tuple)) else input_identity(v)
                      for k, v in inputs.items()}, "model": model_hash, "brainrt": __version__}
    return json.loads(json.dumps(rec, default=str))  # the form it has once read back


def record_path(out, *, is_dir=False) -> Path:
    """Where the record of output ``out`` lives."""
    out = Path(out)
    return out / FOLDER_RECORD if is_dir else set_member(out, SET_RECORD)


def set_member(out, suffix) -> Path:
    """The side file ``X<suffix>`` of a file output ``X.ome.tif`` (``X.tif``, ...)."""
    out = Path(out)
    name = out.name
    for ext in (".ome.tif", ".ome.tiff", ".tif", ".tiff"):
        if name.endswith(ext):
            name = name[: -len(ext)]
            break
    return out.parent / f"{name}{suffix}"


def read_record(out, *, is_dir=False) -> dict | None:
    """The output's run record, or None (none, or unreadable)."""
    try:
        rec = json.loads(record_path(out, is_dir=is_dir).read_text())
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) and rec.get("format") == FORMAT else None


def _compared(rec):
    return {k: v for k, v in rec.items() if k not in NOT_COMPARED}


def same_run(old: dict, new: dict) -> bool:
    """Whether two run records are of the same run (all but the files and the library version equal)."""
    return _compared(old) == _compared(new)


def differences(old: dict, new: dict, n=3) -> str:
    """The first ``n`` differing arguments or inputs, as ``--opt OLD vs NEW`` (for refusals)."""
    out = []
    if old.get("command") != new.get("command"):
        out.append(f"written by {old.get('command')}, not {new.get('command')}")
    for group in ("arguments", "inputs"):
        a, b = old.get(group) or {}, new.get(group) or {}
        for key in dict.fromkeys([*b, *a]):
            x, y = a.get(key), b.get(key)
            if x == y:
                continue
            if group == "arguments":
                out.append(f"{key} {_show(x)} vs {_show(y)}")
            elif x and y and x.get("path") == y.get("path"):
                out.append(f"{key} {Path(x['path']).name} changed since")
            else:
                out.append(f"{key} {_show(x and Path(x['path']).name)} vs {_show(y and Path(y['path']).name)}")
    if old.get("model") != new.get("model"):
        out.append("another model")
    return ", ".join(out[:n]) or "another run"


def _show(value, n=40):
    text = "unset" if value is None else json.dumps(value)
    return text if len(text) <= n else text[: n - 3] + "..."


#: What a command says when its output is already finished by the same arguments.
COMPLETE = "{} is complete (written by the same command and arguments); nothing to do (--overwrite recomputes it)"


def refusal(out, problem) -> BrainrtError:
    """The one-line refusal to replace an existing output (the same words for every command)."""
    return file_error(out, f"{problem}; pass --overwrite to replace it")


def is_finished(out, record, *, members=(), is_dir=False, overwrite=False, read=None) -> bool:
    """Apply the rule to output ``out`` (with the side files ``members`` of a set) for a run of ``record``.

    True: ``out`` is a finished output of the same run (do nothing). False: go ahead and
    write (nothing there, or ``overwrite``). Otherwise raise the one-line refusal. ``read(out)``
    reads the record of an output that keeps it elsewhere (a bundle, in its manifest).
    """
    out = Path(out)
    there = [p for p in (out, *members, record_path(out, is_dir=is_dir)) if p.exists() and not _empty_dir(p)]
    if not there or overwrite:
        return False
    old = read(out) if read is not None else read_record(out, is_dir=is_dir)
    if old is None:
        raise refusal(there[0], "already exists and has no brainrt run record (unknown arguments)")
    if not same_run(old, record):
        raise refusal(out, f"already holds the output of other arguments ({differences(old, record)})")
    missing = _set_problems(out, old, members) if not is_dir else ([] if out.is_dir() else [out.name])
    if missing:
        raise refusal(out, f"is an incomplete output ({', '.join(missing[:3])} missing or changed)")
    return True


def _empty_dir(p):
    return p.is_dir() and not any(p.iterdir())


def _set_problems(out, rec, members):
    """Files of a set that are missing, of another size, or present but not in its record."""
    files = rec.get("files") or {}
    bad = [name for name, size in files.items()
           if not (out.parent / name).is_file() or (out.parent / name).stat().st_size != size]
    names = {p.name for p in (out, *members)} - {record_path(out).name}
    return bad + sorted(n for n in names - set(files) if (out.parent / n).exists())


def write_record(path, rec):
    """Write a run record atomically (a folder output's, or a set's)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(rec, indent=1) + "\n")
    os.replace(tmp, path)
