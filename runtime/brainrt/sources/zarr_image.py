"""A zarr array, or an OME-Zarr image (its full-resolution level), 2D or a (Z, Y, X) stack, by local
path or an fsspec URL where the filesystem package is installed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import file_error
from .base import Source

KIND = "zarr"
#: A 3D array is a volume without --z (:data:`brainrt.sources.VOLUME_RULES`).
VOLUME = "by shape"
SUFFIXES = (".zarr",)


def claims(path: str) -> bool:
    """A ``.zarr`` name, a folder holding zarr metadata, or a URL."""
    return "://" in path or path.endswith(".zarr") or any((Path(path) / m).exists()
                                                          for m in ("zarr.json", ".zarray", ".zgroup"))


@dataclass(frozen=True)
class ZarrSource(Source):
    kind = KIND
    modules = ("tifffile", "zarr")

    def _read(self, z, rows):
        import zarr

        node = zarr.open(self.path, mode="r")
        return (node[self.array] if self.array else node)[self.index(z, rows)]


def open_image(path):
    """(array, its path in the store, pixel size, z spacing) of a zarr array or an OME-Zarr image
    (its full-resolution level); sizes are None where the metadata gives none."""
    import zarr

    try:
        node = zarr.open(str(path).rstrip("/"), mode="r")
    except Exception as exc:
        raise file_error(path, f"cannot open as zarr ({type(exc).__name__})") from None
    if not isinstance(node, zarr.Group):
        return node, "", None, None
    attrs = dict(node.attrs)
    ms = attrs.get("ome", attrs).get("multiscales")
    if not ms:
        raise file_error(path, "is a zarr group but not an OME-Zarr image (no multiscales); give the array's path")
    ds = ms[0]["datasets"][0]
    names = [a["name"] if isinstance(a, dict) else a for a in ms[0].get("axes", [])]
    scale = next((t["scale"] for t in ds.get("coordinateTransformations", []) if t["type"] == "scale"), None)
    px = float(scale[-1]) if scale and names[-2:] == ["y", "x"] else None
    dz = float(scale[-3]) if scale and names[-3:] == ["z", "y", "x"] else None
    return node[ds["path"]], ds["path"], px, dz


def open(path) -> ZarrSource:  # noqa: A001 - every reader's ``open``
    """The :class:`ZarrSource` of a zarr array or OME-Zarr image (metadata only)."""
    node, array, px, dz = open_image(path)
    return ZarrSource(str(path).rstrip("/"), tuple(node.shape), np.dtype(node.dtype).str, px, dz, array=array)
