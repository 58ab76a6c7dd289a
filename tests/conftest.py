"""Shared fixtures: a synthetic annotated slice and a tiny bundle trained on it once per session.

The tiny bundle (64 px patches, 60 training patches per class, one epoch) trains in
about 15 s on 2 cores. Its accuracy is meaningless; it exists so that every runtime
path (per patch, dense, heads, CLI, hardening) runs against a real exported bundle
without any data on disk.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest

import brainrt

ROOT = Path(__file__).resolve().parents[1]
#: The shared dataset (slice309) lives beside the checkout; tests that need it skip without it.
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
#: The shipped real-data bundle; tests that need it skip when it has not been trained yet.
SHIPPED_BUNDLE = ROOT / "models" / "slice309-paper6"

TINY_SHAPE = (384, 576)
TINY_SEED = 1
TINY_PATCH = 64
TINY_TRAIN = dict(patch_size=TINY_PATCH, n_train=60, n_val=30, n_test=30, epochs=1, lr=1e-3, seed=0)


def write_tiff(path, array, **kw):
    """Write ``array`` as a plain TIFF and return the path."""
    import tifffile

    tifffile.imwrite(path, array, **kw)
    return Path(path)


def listing(folder):
    """Every entry below ``folder`` (hidden ones included), as sorted relative paths."""
    folder = Path(folder)
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")) if folder.exists() else []


def valid_ngff(path):
    """Validate the OME-Zarr image at ``path`` (and each of its label images) as OME-NGFF 0.5 with
    ``ome-zarr-models`` (a strict reader of the specification); returns the image model."""
    import zarr
    from ome_zarr_models.v05.image import Image
    from ome_zarr_models.v05.image_label import ImageLabel

    root = zarr.open_group(str(path), mode="r")
    image = Image.from_zarr(root)
    for name in (image.labels.label_paths if image.labels is not None else []):
        ImageLabel.from_zarr(zarr.open_group(str(Path(path) / "labels" / name), mode="r"))
    return image


@pytest.fixture(autouse=True, scope="session")
def _fp32_by_default():
    """Precision "auto" (the default) picks int8 on CPUs with VNNI; the tests see the same default on every
    machine (fp32, as without VNNI) and test "auto" itself by patching the probe back (test_runtime).
    Session-wide, before any other fixture computes features."""
    import brainrt.model.sessions

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(brainrt.model.sessions, "cpu_has_vnni", lambda: False)
        yield


@pytest.fixture(scope="session")
def synthetic_slice():
    """The synthetic slice the tiny bundle is trained on (uint8 image, uint8 area codes 0..4)."""
    from brainrt.synth import make_slice

    return make_slice(TINY_SHAPE, seed=TINY_SEED)


@pytest.fixture(scope="session")
def class_map_dict():
    """Class map of the synthetic slice: four areas, code 0 = background (unlabeled)."""
    from brainrt.synth import synthetic_class_map

    return {"classes": synthetic_class_map(), "unlabeled": [0]}


@pytest.fixture(scope="session")
def training_data(tmp_path_factory, synthetic_slice, class_map_dict):
    """Paths of the synthetic slice as TIFFs: ``image``, ``mask`` and the ``class_map`` JSON."""
    folder = tmp_path_factory.mktemp("synthetic-data")
    paths = {"image": write_tiff(folder / "slice.tif", synthetic_slice.image),
             "mask": write_tiff(folder / "slice_areas.tif", synthetic_slice.mask),
             "class_map": folder / "classes.json"}
    paths["class_map"].write_text(json.dumps(class_map_dict))
    return paths


@pytest.fixture(scope="session")
def slice_tif(training_data):
    return training_data["image"]


@pytest.fixture(scope="session")
def mask_tif(training_data):
    return training_data["mask"]


@pytest.fixture(scope="session")
def class_map_json(training_data):
    return training_data["class_map"]


@pytest.fixture(scope="session")
def tiny_bundle_path(tmp_path_factory, training_data):
    """Folder of a bundle trained once per session on the synthetic slice (read-only use)."""
    from brainrt_train.pipeline import train_and_export

    out = tmp_path_factory.mktemp("bundles") / "tiny"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch/sklearn deprecation chatter
        train_and_export([(training_data["image"], training_data["mask"])], out,
                         class_map=str(training_data["class_map"]), **TINY_TRAIN)
    return out


@pytest.fixture(scope="session")
def tiny_bundle(tiny_bundle_path):
    """The tiny bundle, loaded once (shared by tests; do not mutate)."""
    import brainrt

    return brainrt.Bundle.load(tiny_bundle_path)


@pytest.fixture
def tiny_bundle_copy(tiny_bundle_path, tmp_path):
    """A private copy of the tiny bundle that a test may damage."""
    dst = tmp_path / "bundle-copy"
    shutil.copytree(tiny_bundle_path, dst)
    return dst


@pytest.fixture(scope="session")
def shared_data():
    """The shared dataset folder (slice309); skips the test where it is missing."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is missing")
    return SHARED_DATA


@pytest.fixture(scope="session")
def shipped_bundle_path():
    """The shipped slice309 bundle; skips the test where it has not been built."""
    if not (SHIPPED_BUNDLE / "manifest.json").is_file():
        pytest.skip(f"{SHIPPED_BUNDLE} is missing")
    return SHIPPED_BUNDLE


#: How the informational log lines of a run begin (the bundle, the precision, the Dask dashboard), and what the
#: per-slice ones hold after the slice's name (a pixel size assumed, the input check).
LOG_STARTS = ("brainrt: bundle", "precision ", "dask dashboard")
LOG_HOLDS = (": pixel size unknown (", ": input check: ")


def said(stderr):
    """The lines of a run's stderr that are not its informational log lines: what it said to the user."""
    return [ln for ln in stderr.splitlines() if ln.strip() and not ln.startswith(LOG_STARTS)
            and not any(h in ln for h in LOG_HOLDS)]


def run_cli(args):
    """``brainrt ARGS`` through click's runner (arguments turned to strings)."""
    from click.testing import CliRunner

    from brainrt.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


def one_cli_error(result):
    """The one ``Error: ...`` line of a refused command (exit status 2); fails otherwise."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


def small_slice(synthetic_slice):
    return synthetic_slice.image[:192, :256]


def error_line(result_or_text):
    """The one line of a failed command's stderr (progress bars aside); fails on anything else."""
    text = result_or_text if isinstance(result_or_text, str) else result_or_text.stderr
    assert "Traceback" not in text, text
    lines = [ln for ln in text.replace("\r", "\n").splitlines() if ln.strip() and not ln.startswith("featurize:")]
    assert len(lines) == 1, text
    assert lines[0].startswith("Error: "), text
    if not isinstance(result_or_text, str):
        assert result_or_text.stdout == "", result_or_text.stdout  # nothing claims success
    return lines[0]


@pytest.fixture
def io_dirs(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    out.mkdir()
    return src, out


@pytest.fixture(scope="module")
def grid16(tiny_bundle, synthetic_slice):
    return brainrt.featurize(synthetic_slice.image, tiny_bundle, stride=16)
