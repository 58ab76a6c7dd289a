"""The files a run keeps beside its output while it writes: temporary outputs (named so that the next run removes
those of killed processes) and the output's lock (one run at a time into one output).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path

from .errors import file_error

log = logging.getLogger("brainrt")

#: A temporary output's name: ``.NAME.partial-HOST-PID-RANDOM`` (+ NAME's suffixes), hidden beside NAME. The host
#: and process say whose it is, so the next run in the folder removes those of processes that died (a kill -9,
#: a power cut) and never one that is still writing. Volumes' resumable ``.NAME.partial`` stores are not such.
TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.partial-(?P<host>[A-Za-z0-9]*)-(?P<pid>\d+)-[A-Za-z0-9_]+")
_SWEPT: set = set()


def _host():
    return re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32]


def temp_path(final, *, is_dir=False) -> Path:
    """A new temporary file (or folder) beside ``final`` named by :data:`TEMP_NAME`; the stale ones of dead
    processes in that folder are removed first (once per folder and process)."""
    final = Path(final)
    parent = final.parent if str(final.parent) else Path(".")
    remove_stale_temporaries(parent)
    prefix, suffix = f".{final.name}.partial-{_host()}-{os.getpid()}-", "".join(final.suffixes)
    if is_dir:
        return Path(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=parent))
    fd, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=parent)
    os.close(fd)
    return Path(name)


def remove_stale_temporaries(folder):
    """Remove the temporary outputs (:data:`TEMP_NAME`) that processes of this host left in ``folder`` when they
    were killed; returns their names. Those of live processes, and of other hosts, are left alone."""
    folder = Path(folder)
    key = (os.getpid(), str(folder.resolve()))
    if key in _SWEPT:
        return []
    _SWEPT.add(key)
    removed, host = [], _host()
    try:
        entries = [e for e in os.scandir(folder) if e.name.startswith(".") and ".partial-" in e.name]
    except OSError:
        return removed
    for e in entries:
        m = TEMP_NAME.match(e.name)
        if m is None or m["host"] != host or _alive(int(m["pid"])):
            continue
        try:
            shutil.rmtree(e.path) if e.is_dir(follow_symlinks=False) else os.unlink(e.path)
            removed.append(e.name)
        except OSError:
            pass
    if removed:
        log.info("removed %d temporary file(s) of killed runs in %s", len(removed), folder)
    return removed


def _alive(pid):
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


_HELD: dict = {}  # lock path -> times taken by this process (a run takes its output's lock once, nested calls reuse it)


@contextlib.contextmanager
def output_lock(out):
    """Hold ``out``'s lock (``.NAME.lock`` beside it, an exclusive ``flock``) while a run writes it: a second run
    into the same output is refused in one line instead of writing into the first one's files. The kernel drops
    the lock of a killed process; the lock file is removed when the run ends."""
    out = Path(str(out).rstrip("/"))
    path = (out.parent if str(out.parent) else Path(".")) / f".{out.name}.lock"
    key = str(path.resolve())
    if _HELD.get(key):
        _HELD[key] += 1
        try:
            yield
        finally:
            _HELD[key] -= 1
        return
    fd = _lock(path, out)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"process {os.getpid()} on {socket.gethostname()}".encode(), 0)
    _HELD[key] = 1
    try:
        yield
    finally:
        del _HELD[key]
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)


def _lock(path, out):
    """The descriptor of the lock file ``path``, locked; the one-line error naming ``out`` when a run holds it."""
    import fcntl

    while True:  # the file locked must still be the one at ``path`` (a run ending meanwhile removes it)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)  # the umask applies
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise file_error(out, f"another brainrt run is writing it ({holder}); wait for it to end or choose "
                                  "another -o") from None
        try:
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)
