"""Damaged stores are refused: feature zarrs record their chunks and carry a checksum.

A zarr store reads a missing chunk as its fill value, so a deleted chunk would give
silently wrong labels. Feature arrays are therefore written with a CRC-32C codec after
their compressor (:func:`compressors`: an altered or truncated chunk fails to decode),
and a finished store lists every chunk it holds and its size (:func:`seal`, in
:data:`CHUNKS_FILE`). :func:`verify` checks that listing when the store is opened
(missing and truncated chunks, without reading data); :class:`Guarded` turns a decode
error met while reading into the one-line error naming the store.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import BrainrtError, file_error

#: The chunk listing of a finished store (inside the store folder; zarr ignores it).
CHUNKS_FILE = "brainrt-chunks.json"


def compressors():
    """Compressor chain of checked arrays: Zstandard, then a CRC-32C checksum of each chunk."""
    from zarr.codecs import Crc32cCodec, ZstdCodec

    return [ZstdCodec(), Crc32cCodec()]


def _chunk_files(store, name):
    folder = Path(store) / name
    return {p.relative_to(folder).as_posix(): p.stat().st_size for p in folder.rglob("*")
            if p.is_file() and p.name != "zarr.json"}


def seal(store, names):
    """Record the chunk files (and sizes) of the arrays ``names`` of a finished ``store``."""
    listing = {n: _chunk_files(store, n) for n in names if (Path(store) / n).is_dir()}
    tmp = Path(store) / f".{CHUNKS_FILE}.tmp"
    tmp.write_text(json.dumps(listing))
    os.replace(tmp, Path(store) / CHUNKS_FILE)


def verify(store, shown=None):
    """Raise the one-line error if a chunk recorded by :func:`seal` is missing or has another size.

    A store without a listing (written before brainrt recorded them) is not checked.
    """
    path = Path(store) / CHUNKS_FILE
    if not path.is_file():
        return
    shown = shown or store
    try:
        listing = json.loads(path.read_text())
    except ValueError:
        raise file_error(shown, f"damaged: its chunk listing {CHUNKS_FILE} is unreadable") from None
    for name, chunks in listing.items():
        have = _chunk_files(store, name)
        missing = [k for k in chunks if k not in have]
        if missing:
            raise file_error(shown, f"damaged: {len(missing)} of the {len(chunks)} chunks of {name!r} are missing "
                                    f"(first: {name}/{missing[0]}); compute it again")
        short = [k for k, size in chunks.items() if have[k] != size]
        if short:
            raise file_error(shown, f"damaged: chunk {name}/{short[0]} has {have[short[0]]} bytes, not the "
                                    f"{chunks[short[0]]} written ({len(short)} chunks differ); compute it again")


class Guarded:
    """A zarr array whose reads raise the one-line error naming the store when a chunk fails to decode."""

    def __init__(self, array, store, prefix=()):
        self.array, self.store, self.prefix = array, store, tuple(prefix)  # prefix: leading indices (a volume's z)

    shape = property(lambda self: self.array.shape[len(self.prefix):])
    dtype = property(lambda self: self.array.dtype)
    ndim = property(lambda self: len(self.shape))
    chunks = property(lambda self: self.array.chunks[len(self.prefix):])

    def __len__(self):
        return self.shape[0]

    def __array__(self, dtype=None, copy=None):
        data = self[...]
        return data if dtype is None else data.astype(dtype)

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        try:
            return self.array[self.prefix + key]
        except BrainrtError:
            raise
        except Exception as exc:  # the codecs raise many types for damaged chunks
            text = (str(exc).splitlines() or [type(exc).__name__])[0][:120]
            raise file_error(self.store, f"damaged: a chunk of {self.array.path!r} cannot be decoded "
                                         f"({type(exc).__name__}: {text}); compute it again") from None
