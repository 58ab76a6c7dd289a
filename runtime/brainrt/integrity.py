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

import numpy as np

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
    """A zarr array whose reads raise the one-line error naming the store when a chunk fails to decode.

    ``prefix``: leading indices taken (a volume's z); ``channels_first``: the array holds its last axis first
    (an OME-NGFF feature image, (F, [Z,] R, C)) and is read as (R, C, F), every channel of the rows asked."""

    def __init__(self, array, store, prefix=(), channels_first=False):
        self.array, self.store, self.prefix, self.cf = array, store, tuple(prefix), channels_first

    shape = property(lambda self: Guarded._moved(self, self.array.shape))
    dtype = property(lambda self: self.array.dtype)
    ndim = property(lambda self: len(self.shape))
    chunks = property(lambda self: Guarded._moved(self, self.array.chunks))

    def _moved(self, t):
        """``t`` (a shape or chunk shape of the stored array) as this view's axes."""
        t = tuple(t)
        if not self.cf:
            return t[len(self.prefix) :]
        return t[1 + len(self.prefix) :] + t[:1]

    def __len__(self):
        return self.shape[0]

    def __array__(self, dtype=None, copy=None):
        data = self[...]
        return data if dtype is None else data.astype(dtype)

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        try:
            if self.cf:  # rows and columns of every channel, channels last, then the channel key
                if Ellipsis in key:
                    i = key.index(Ellipsis)
                    key = key[:i] + (slice(None),) * (3 - len(key) + 1) + key[i + 1 :]
                yx, ch = key[:2], key[2:]
                out = np.moveaxis(np.asarray(self.array[(slice(None),) + self.prefix + yx]), 0, -1)
                return out[(Ellipsis,) + ch] if ch else out
            return self.array[self.prefix + key]
        except BrainrtError:
            raise
        except Exception as exc:  # the codecs raise many types for damaged chunks
            text = (str(exc).splitlines() or [type(exc).__name__])[0][:120]
            raise file_error(self.store, f"damaged: a chunk of {self.array.path!r} cannot be decoded "
                                         f"({type(exc).__name__}: {text}); compute it again") from None
