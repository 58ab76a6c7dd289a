"""Writing files safely (reading is :mod:`brainrt.sources`'; OME-TIFF maps are :mod:`brainrt.outputs.ome_tiff`'s).

Every writer writes to a temporary name beside the target and renames it into place, so an
interrupted run never leaves a half-written file (:func:`atomic_path`; JSON: :func:`write_json`,
figures: :func:`save_figure`); an output is never written over an input (:func:`check_not_input`)
and its folder is checked before any work (:func:`check_target`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import numpy as np

from .errors import file_error
from .runfiles import temp_path


def check_not_input(targets, inputs):
    """Raise the one-line error if an output path resolves to one of the command's input files."""
    ins = {Path(p).resolve(): p for p in inputs if p is not None and isinstance(p, (str, Path)) and Path(p).exists()}
    for target in targets:
        if Path(target).resolve() in ins:
            raise file_error(target, "is an input of this command; refusing to overwrite it (choose another -o)")


def check_target(target, *, overwrite=True, is_dir=False):
    """Raise the one-line error that writing ``target`` would raise, before any work is done.

    The folder must exist and be writable; an existing target is replaced only with
    ``overwrite`` and only by the same kind (a file by a file, a folder by a folder).
    """
    target = Path(target)
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise file_error(target, f"output folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise file_error(target, f"output folder {parent} is not writable")
    if target.exists() and not overwrite:
        raise file_error(target, "already exists; pass --overwrite to replace it")
    if target.exists() and target.is_dir() != is_dir:
        kind = "a folder" if target.is_dir() else "a file"
        raise file_error(target, f"is {kind}; refusing to replace it by {'a folder' if is_dir else 'a file'}")
    return target


@contextlib.contextmanager
def atomic_path(target, *, overwrite=True, is_dir=False):
    """Yield a temporary path beside ``target``; rename it into place on success.

    On any error the temporary file or folder is removed and ``target`` is untouched.
    """
    target = check_target(target, overwrite=overwrite, is_dir=is_dir)
    tmp = temp_path(target, is_dir=is_dir)
    try:
        yield tmp
        # mkstemp/mkdtemp create 0600/0700; give the result the usual umask-based mode
        os.chmod(tmp, (0o777 if is_dir else 0o666) & ~current_umask())
        if is_dir:
            if target.exists():
                shutil.rmtree(target) if target.is_dir() else target.unlink()
            os.replace(tmp, target)
        else:
            os.replace(tmp, target)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()
        raise


def current_umask():
    """The process umask, read without changing it where /proc allows (thread-safe)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_json(path, obj, *, overwrite=True):
    """Write JSON atomically."""
    import json

    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def save_figure(fig, path, tight=True):
    """Save a matplotlib figure as PNG atomically and close it (``tight``: cropped to what is drawn; else at
    the figure's own size in pixels)."""
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=fig.dpi, bbox_inches="tight" if tight else None)
    plt.close(fig)
