"""Sources: one registry of readers (TIFF, a folder of TIFFs, zarr / OME-Zarr, HDF5), each giving the same
shape, dtype, sizes and ``read(z, rows)``; HDF5 files written here (2D, 3D, chunked) read, featurize and
classify as the same pixels in a TIFF do; a missing dataset is refused in one line."""

from __future__ import annotations

import types

import numpy as np
import pytest

import brainrt
from brainrt import sources
from brainrt.errors import BrainrtError
from conftest import listing, one_cli_error, run_cli, write_tiff

h5py = pytest.importorskip("h5py")

SHAPE = (3, 192, 256)


@pytest.fixture(scope="module")
def stack():
    from brainrt.synth import make_volume

    return make_volume(SHAPE, seed=5).image


def _h5(path, datasets, attrs=None):
    """An HDF5 file of ``{path: array or (array, chunks)}``; ``attrs`` go on the first dataset."""
    with h5py.File(path, "w") as f:
        for i, (name, data) in enumerate(datasets.items()):
            arr, chunks = data if isinstance(data, tuple) else (data, None)
            ds = f.create_dataset(name, data=arr, chunks=chunks)
            if i == 0:
                ds.attrs.update(attrs or {})
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, stack):
    """The same stack as each reader reads it: name -> path."""
    import zarr

    d = tmp_path_factory.mktemp("sources")
    folder = d / "slices"
    folder.mkdir()
    for z in range(SHAPE[0]):
        write_tiff(folder / f"s{z}.tif", stack[z])
    zarr.create_array(str(d / "stack.zarr"), shape=SHAPE, chunks=(1, 64, 64), dtype="uint8")[:] = stack
    tomo = _h5(d / "tomo.h5", {"/exchange/data": (stack, (1, 64, 64)), "/exchange/data_white": stack[:2]},
               {"element_size_um": [2.0, 0.65, 0.65]})
    return {"tiff": write_tiff(d / "stack.tif", stack, photometric="minisblack"), "folder": folder,
            "zarr": d / "stack.zarr", "hdf5": f"{tomo}:/exchange/data"}


@pytest.mark.parametrize("kind", ["tiff", "folder", "zarr", "hdf5"])
def test_every_reader_gives_shape_dtype_and_reads_one_z_or_its_rows(inputs, stack, kind):
    src = sources.open_volume(inputs[kind])
    assert type(src).kind == kind == sources.reader_of(inputs[kind]).KIND
    assert (src.shape, np.dtype(src.dtype)) == (SHAPE, np.dtype(np.uint8))
    np.testing.assert_array_equal(src.read(2), stack[2])
    np.testing.assert_array_equal(src.read(1, rows=(10, 70)), stack[1, 10:70])


def test_hdf5_pixel_size_from_attributes_and_its_name(inputs, tmp_path, stack):
    src = sources.open_volume(inputs["hdf5"])
    assert (src.pixel_size_um, src.z_spacing_um, src.array, src.name) == (0.65, 2.0, "/exchange/data", inputs["hdf5"])
    plain = sources.open_volume(_h5(tmp_path / "p.h5", {"v": stack}, {"pixel_size_um": 1.5}))
    assert (plain.pixel_size_um, plain.z_spacing_um, plain.array) == (1.5, None, "/v")


def test_hdf5_dataset_found_when_it_is_the_only_image_or_the_tomography_one(inputs, tmp_path, stack):
    only = _h5(tmp_path / "one.h5", {"/a/b": (stack, (1, 32, 32)), "/meta": np.arange(5)})
    assert sources.open_volume(only).array == "/a/b"
    assert sources.open_volume(str(inputs["hdf5"]).split(":")[0]).array == "/exchange/data"  # beside data_white
    two = _h5(tmp_path / "two.h5", {"x": stack, "y": stack})
    with pytest.raises(BrainrtError, match=r"holds 2 2D and 3D datasets \(/x \(3, 192, 256\) uint8; /y .*name one as"):
        sources.open_volume(two)


def test_a_named_file_of_any_suffix_with_the_signature_is_hdf5(tmp_path, stack):
    path = _h5(tmp_path / "recon.dat", {"v": stack})
    assert sources.reader_of(path) is sources.hdf5 and sources.open_volume(path).shape == SHAPE


def test_2d_hdf5_reads_and_featurizes_as_its_pixels(tmp_path, synthetic_slice, tiny_bundle):
    img = synthetic_slice.image[:192, :256]
    path = _h5(tmp_path / "slice.h5", {"img": (img, (64, 64))})
    got, px = brainrt.read_tiff(path)
    np.testing.assert_array_equal(got, img)
    assert px is None and not sources.is_volume_input(path)
    a, b = brainrt.featurize(str(path), tiny_bundle, stride=32), brainrt.featurize(img, tiny_bundle, stride=32)
    np.testing.assert_array_equal(a.valid, b.valid)
    np.testing.assert_array_equal(a.features, b.features)
    with pytest.raises(BrainrtError, match=r"is a 2D image; --z 1 does not apply$"):
        brainrt.read_tiff(path, z=1)


def test_one_z_of_a_3d_hdf5_is_a_slice_and_cli_maps_equal_the_tiffs(inputs, stack, tiny_bundle_path, tmp_path):
    h5 = inputs["hdf5"]
    assert sources.is_volume_input(h5) and not sources.is_volume_input(h5, 1)
    np.testing.assert_array_equal(brainrt.read_tiff(h5, z=1)[0], stack[1])
    maps = {}
    for kind in ("tiff", "hdf5"):
        out = tmp_path / f"{kind}.labels.ome.tif"
        r = run_cli(["classify", inputs[kind], "--z", "1", "-m", tiny_bundle_path, "--stride", "32",
                     "--pixel-size", "0.65", "-o", out])
        assert r.exit_code == 0, (r.output, r.exception)
        maps[kind] = brainrt.read_tiff(out, what="label mask")[0]
    np.testing.assert_array_equal(maps["tiff"], maps["hdf5"])


def test_hdf5_volume_featurizes_serially_as_the_tiff_stack(inputs, tiny_bundle, tmp_path):
    import zarr

    from brainrt.engine.grid import FEATURES, TISSUE
    from brainrt.volumes import make_volume_plan, run_volume

    feats = {}
    for kind in ("tiff", "hdf5"):
        out = tmp_path / f"{kind}.features.zarr"
        run_volume(make_volume_plan(inputs[kind], tiny_bundle, task="featurize", stride=32, pixel_size_um=0.65,
                                    z_spacing_um=2.0), out, bundle=tiny_bundle)
        root = zarr.open_group(str(out), mode="r")
        feats[kind] = np.asarray(root[FEATURES]), np.asarray(root[TISSUE])
    for a, b in zip(feats["tiff"], feats["hdf5"]):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(("spec", "problem"), [
    ("{f}:/exchange/nothing", "holds no dataset '/exchange/nothing' (its 2D and 3D datasets: /exchange/data "),
    ("{d}/absent.h5:/exchange/data", "no such file"),
])
def test_a_missing_dataset_or_file_is_refused_in_one_line(inputs, tiny_bundle_path, tmp_path, spec, problem):
    f = str(inputs["hdf5"]).split(":")[0]
    source = spec.format(f=f, d=tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    line = one_cli_error(run_cli(["classify", source, "-m", tiny_bundle_path, "-o", out / "v.ome.zarr"]))
    assert line.startswith(f"Error: {source.split(':/')[0]}: {problem}"), line
    assert listing(out) == []


def test_without_h5py_the_error_names_the_extra(tmp_path, monkeypatch, stack):
    import sys

    path = _h5(tmp_path / "v.h5", {"v": stack})
    monkeypatch.setitem(sys.modules, "h5py", None)  # import h5py raises ModuleNotFoundError
    with pytest.raises(BrainrtError, match=r"v\.h5: reading HDF5 needs h5py; install brainrt with the \[hdf5\] extra"):
        sources.open_volume(path)


def test_a_new_format_is_one_module_and_one_registry_line():
    """Every reader declares the same small interface; nothing outside the package sniffs a format."""
    for reader in sources.READERS:
        assert isinstance(reader.KIND, str) and isinstance(reader.SUFFIXES, tuple)
        assert callable(reader.claims) and callable(reader.open), reader.__name__
    assert sources.READERS[-1] is sources.tiff  # the fallback, asked last
    assert len({r.KIND for r in sources.READERS}) == len(sources.READERS)
    assert all(r.VOLUME in sources.VOLUME_RULES for r in sources.READERS)


@pytest.mark.parametrize("rule", sources.VOLUME_RULES)
def test_when_an_input_is_a_volume_and_its_series_are_the_readers_declarations(tmp_path, monkeypatch, rule):
    """A new reader's ``VOLUME`` and ``SERIES`` decide the job and the series, with no line elsewhere."""
    opened = []
    stack = np.zeros((3, 8, 8), np.uint8)

    def open_(path, *series):
        opened.append(series)
        return sources.Source(str(path), stack.shape, str(stack.dtype))

    fake = types.SimpleNamespace(KIND="fake", SUFFIXES=(".fake",), VOLUME=rule, SERIES=rule == "always",
                                 claims=lambda p: p.endswith(".fake"), open=open_)
    monkeypatch.setattr(sources, "READERS", (fake, *sources.READERS))
    path = tmp_path / "v.fake"
    path.write_bytes(b"")
    assert sources.is_volume_input(path) is {"always": True, "with z": False, "by shape": True}[rule]
    assert sources.is_volume_input(path, "0:2")  # a range of slices: a volume, whatever the reader
    assert sources.is_volume_input(path, 1) is (rule == "always")  # one slice of it: a slice, but of a folder
    if fake.SERIES:
        sources.open_volume(path, 1)
        assert opened[-1] == (1,)
    else:
        with pytest.raises(BrainrtError, match="--series 1 picks a series of a multi-series TIFF"):
            sources.open_volume(path, 1)
