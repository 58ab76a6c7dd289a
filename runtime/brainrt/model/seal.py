"""A bundle's seal: every file's sha256 in its manifest, written by one function and checked by one.

joblib unpickles arbitrary code, so a bundle is treated as code: :func:`seal_bundle` hashes the
folder's files into the manifest and writes it (every writer of a bundle ends with it: derived
bundles, the trainer, the int8 and head tools), and :func:`verify_bundle` checks them all before
anything is unpickled or handed to onnxruntime.

May import: :mod:`brainrt.errors` and :mod:`brainrt.model.manifest`.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

from ..errors import file_error
from .manifest import Manifest

MANIFEST = "manifest.json"


def sha256_file(path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


#: Files that file managers leave in folders (Finder, Windows Explorer); never part of a bundle.
OS_FILES = (".DS_Store", "Thumbs.db", "desktop.ini")


def is_os_file(name) -> bool:
    """Whether the file ``name`` is file-manager litter (``.DS_Store``, ``Thumbs.db``, AppleDouble ``._*``)."""
    base = Path(name).name
    return base in OS_FILES or base.startswith("._")


def hash_tree(folder, *, exclude=(MANIFEST,)) -> dict:
    """sha256 of every file below ``folder`` (relative POSIX paths), manifest and OS litter excluded."""
    folder = Path(folder)
    return {
        p.relative_to(folder).as_posix(): sha256_file(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.relative_to(folder).as_posix() not in exclude and not is_os_file(p)
    }


def verify_bundle(folder) -> Manifest:
    """Check a bundle's manifest and every file's hash; return the :class:`Manifest`.

    Raises
    ------
    BrainrtError
        One line naming the bundle and the problem.
    """
    folder = Path(folder)
    mpath = folder / MANIFEST
    if not folder.is_dir():
        raise file_error(folder, "not a model bundle folder")
    if not mpath.is_file():
        raise file_error(folder, f"not a model bundle: {MANIFEST} is missing")
    try:
        text = mpath.read_text()
    except OSError as exc:
        raise file_error(mpath, f"unreadable manifest ({exc})") from None
    manifest = Manifest.from_json(text, source=mpath)
    if not manifest.files:
        raise file_error(mpath, "manifest lists no files and hashes")
    actual = hash_tree(folder)
    for name, digest in manifest.files.items():
        if name not in actual:
            raise file_error(folder, f"bundle file {name} is missing")
        if actual[name] != digest:
            raise file_error(folder, f"bundle file {name} does not match its sha256 in the manifest; refusing to load it")
    extra = sorted(set(actual) - set(manifest.files))
    if extra:
        raise file_error(folder, f"bundle holds files not listed in its manifest: {', '.join(extra)}")
    return manifest


def seal_bundle(folder, manifest: Manifest) -> Manifest:
    """Seal the bundle folder ``folder``: ``manifest`` with the sha256 of every file in it, written as its
    ``manifest.json``, and the folder verified against it. Returns the sealed manifest."""
    folder = Path(folder)
    manifest = dataclasses.replace(manifest, files=hash_tree(folder))
    (folder / MANIFEST).write_text(manifest.to_json())
    verify_bundle(folder)
    return manifest
