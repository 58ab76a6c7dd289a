"""The OME-Zarr output opens in napari with the shipped [napari] extra (issue 19).

napari-ome-zarr (in the extra) reads the volume written by ``classify --z all``: the
probabilities as one image layer per class, named by class, at grid scale and shifted by
half a grid cell so each cell sits on the label pixels it covers; the area labels at full
resolution. The 2D label OME-TIFF names its classes.
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

PX, STRIDE = 2.0, 16


@pytest.fixture(scope="module")
def volume_output(tmp_path_factory, tiny_bundle):
    from dask.distributed import Client

    from brainrt.synth import make_volume
    from brainrt.volrun import process_volume

    d = tmp_path_factory.mktemp("omezarr")
    tifffile.imwrite(d / "s.tif", make_volume((2, 192, 256), seed=3).image, photometric="minisblack")
    with Client(processes=False, n_workers=1, threads_per_worker=1) as client:
        process_volume(str(d / "s.tif"), tiny_bundle, str(d / "o.ome.zarr"), task="classify", client=client,
                       stride=STRIDE, pixel_size_um=PX)
    return d / "o.ome.zarr"


def test_napari_ome_zarr_opens_the_output(volume_output, tiny_bundle):
    reader = pytest.importorskip("napari_ome_zarr._reader", reason="napari-ome-zarr (the [napari] extra) is missing")
    layers = reader.napari_get_reader(str(volume_output))(str(volume_output))
    kinds = [kind for _, _, kind in layers]
    assert kinds == ["image", "labels"], kinds
    (_, img, _), (_, lab, _) = layers
    assert img["channel_axis"] == 0
    assert [n.split(": ")[-1] for n in img["name"]] == list(tiny_bundle.class_names)
    np.testing.assert_allclose(img["scale"], [PX, PX * STRIDE, PX * STRIDE])
    np.testing.assert_allclose(lab["scale"], [PX, PX, PX])
    half = (STRIDE - 1) / 2 * PX  # cell (i, j) covers pixels i*s .. i*s + s - 1: its centre
    np.testing.assert_allclose(np.asarray(img["affine"].translate)[-2:], [half, half])
    np.testing.assert_allclose(np.asarray(lab["affine"].translate)[-2:], [0.0, 0.0])


def test_2d_label_ome_tiff_names_its_classes(tmp_path, tiny_bundle, slice_tif):
    from click.testing import CliRunner

    from brainrt.cli import main

    out = tmp_path / "a.ome.tif"
    r = CliRunner().invoke(main, ["classify", str(slice_tif), "-m", str(tiny_bundle.path), "--stride", "32",
                                  "-o", str(out)])
    assert r.exit_code == 0, r.output
    with tifffile.TiffFile(out) as tif:
        xml = tif.ome_metadata
    for name, code in zip(tiny_bundle.class_names, tiny_bundle.class_codes):
        assert f"{code} {name}" in xml, xml[:400]
