"""The runtime's layers: the input edge (Plan), the windowing engine, the typed manifest, and the boundaries
between them (no trainer import, no string-key manifest access, short functions)."""

from __future__ import annotations

import ast
import json
import re

import numpy as np
import pytest

import brainrt
from brainrt.engine.loop import Meter, blocks
from brainrt.errors import BrainrtError
from brainrt.model.manifest import SCHEMA_VERSION, Manifest
from brainrt.engine.plan import DEFAULT_PIXEL_SIZE_UM, make_plan
from conftest import ROOT, listing, write_tiff

RUNTIME = ROOT / "runtime" / "brainrt"
#: Every runtime module, the napari plugin's and the volume package's included.
RUNTIME_FILES = sorted(RUNTIME.rglob("*.py"))
TOOLS_FILES = sorted((ROOT / "tools").rglob("*.py"))
SHIPPED = [ROOT / "models" / "synthetic-demo"]  # schema 1 as exported (slice309-paper6 is schema 2 since its retraining)


# --------------------------------------------------------------------------- manifest
@pytest.mark.parametrize("bundle", SHIPPED, ids=lambda p: p.name)
def test_schema_1_bundles_load_migrated(bundle):
    d = json.loads((bundle / "manifest.json").read_text())
    assert d["schema_version"] == 1  # the shipped bundles stay as exported
    m = brainrt.model.seal.verify_bundle(bundle)
    assert m.schema_version == SCHEMA_VERSION == 2
    assert m.net_stride == d["stride"] == 16 and m.patch_size == 128 and m.n_features == 64
    assert m.class_names == [c["name"] for c in d["classes"]]
    assert m.normalization.mean == d["normalization"]["mean"]
    assert m.dense_strides == (1, 2, 4, 8, 16) and m.dense_onnx.file(4) == "features_dense_s4.onnx"
    assert m.training.taken("test") == {n: v["taken"] for n, v in d["training"]["counts"]["test"].items()}
    want = {("net_stride" if k == "stride" else k): v for k, v in d.items()}
    assert m.to_dict() == {**want, "schema_version": 2}  # the migration renames one key, nothing else
    assert Manifest.from_dict(m.to_dict()) == m


def test_unknown_keys_survive_a_round_trip(tiny_bundle):
    d = tiny_bundle.manifest.to_dict()
    d["intensity_quantiles"] = [0.1, 0.5, 0.9]
    d["normalization"] = {**d["normalization"], "quantiles": {"p1": 3}}
    d["training"] = {**d["training"], "augment": "gray-depth"}
    d["dense_onnx"] = {**d["dense_onnx"], "context": {"footprint": 512}}
    m = Manifest.from_dict(json.loads(json.dumps(d)))
    assert m.extra["intensity_quantiles"] == [0.1, 0.5, 0.9]
    assert m.to_dict() == d
    assert Manifest.from_json(m.to_json()) == m


def test_context_scales_round_trip_and_one_scale_writes_none(tiny_bundle):
    d = tiny_bundle.manifest.to_dict()
    one = {**d, "context": {"factor": 4, "footprint": 256, "note": "n"}}
    m = Manifest.from_dict(json.loads(json.dumps(one)))
    assert m.context.factors == (4,) and m.context.scales is None and m.to_dict() == one
    two = {**d, "context": {"factor": 16, "footprint": 1024, "scales": [4, 16]}}
    m = Manifest.from_dict(json.loads(json.dumps(two)))
    assert m.context.factors == (4, 16) and m.footprint == 1024 and m.to_dict() == two
    with pytest.raises(BrainrtError, match="largest"):
        Manifest.from_dict({**d, "context": {"factor": 4, "footprint": 256, "scales": [4, 16]}}, source="b/manifest.json")


@pytest.mark.parametrize(("change", "named"), [
    (lambda d: d.update(schema_version=99), "99"),
    (lambda d: d.pop("onnx"), "'onnx'"),
    (lambda d: d["normalization"].pop("mean"), "'mean'"),
    (lambda d: d.update(patch_size="large"), "patch_size"),
])
def test_bad_manifests_are_one_line_errors_naming_the_file(tiny_bundle, change, named):
    d = json.loads(tiny_bundle.manifest.to_json())
    change(d)
    with pytest.raises(BrainrtError) as info:
        Manifest.from_dict(d, source="b/manifest.json")
    msg = str(info.value)
    assert msg.startswith("b/manifest.json: ") and "\n" not in msg, msg
    assert named in msg or "invalid literal" in msg, msg


def test_no_string_key_manifest_access_outside_the_manifest_module():
    pattern = re.compile(r"manifest(\(\))?\s*(\[|\.get\()")
    for path in [*RUNTIME_FILES, *(ROOT / "tools" / "study").glob("*.py"), ROOT / "tools" / "bench_dense.py"]:
        if path.name == "manifest.py":
            continue
        hits = [n for n, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
        assert not hits, f"{path.name}: lines {hits}"


# --------------------------------------------------------------------------- the input edge
def test_plan_of_an_array_and_of_its_tiff_are_the_same(tiny_bundle, synthetic_slice, tmp_path):
    image = synthetic_slice.image
    path = write_tiff(tmp_path / "s.tif", image)
    a = make_plan(image, tiny_bundle, stride=16)
    b = make_plan(path, tiny_bundle, stride=16)
    np.testing.assert_array_equal(a.valid, b.valid)
    assert (a.method, a.stride, a.pixel_size_um, a.source) == ("dense", 16, DEFAULT_PIXEL_SIZE_UM, "image")
    assert b.source == str(path) and b.image_shape == image.shape
    assert make_plan(image, tiny_bundle, stride=5).method == "dense"  # stride 1, every 5th position
    assert make_plan(image, tiny_bundle, stride=7).method == "patch"  # 49 positions a cell: per patch is cheaper
    assert make_plan(image, tiny_bundle, pixel_size_um=0.65).grid_pixel_size_um == 0.65  # resampled for the network


def test_plan_is_frozen(tiny_bundle, synthetic_slice):
    import dataclasses

    plan = make_plan(synthetic_slice.image, tiny_bundle)
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.stride = 3


@pytest.mark.parametrize(("kw", "message"), [
    (dict(stride=-3), "The 'stride' parameter of featurize must be a positive int. Got -3 instead."),
    (dict(batch_size=0), "The 'batch_size' parameter of featurize must be a positive int. Got 0 instead."),
    (dict(min_tissue=2.0), "The 'min_tissue' parameter of featurize must be a float in [0.0, 1.0]. Got 2.0 instead."),
    (dict(pixel_size_um=-1.0), "The 'pixel_size_um' parameter of featurize must be a positive float. Got -1.0 instead."),
    (dict(tissue="most"), "The 'tissue' parameter of featurize must be 'otsu', 'all', a mask TIFF or a 2D mask"),
])
def test_plan_parameter_errors_use_one_template(tiny_bundle, synthetic_slice, kw, message):
    with pytest.raises(BrainrtError) as info:
        make_plan(synthetic_slice.image, tiny_bundle, **kw)
    assert str(info.value).startswith(message), str(info.value)


def test_plan_file_errors_name_the_file(tiny_bundle, synthetic_slice, tmp_path):
    img = synthetic_slice.image[:192, :256]
    stack = write_tiff(tmp_path / "stack.tif", np.stack([img] * 3), photometric="minisblack")
    with pytest.raises(BrainrtError) as info:
        make_plan(stack, tiny_bundle)
    assert str(info.value) == (f"{stack}: expected a 2D grayscale image, got shape (3, 192, 256); "
                               "pass --z to choose a slice")
    np.testing.assert_array_equal(make_plan(stack, tiny_bundle, z=1, standardize=False).image, img)
    small_mask = write_tiff(tmp_path / "mask.tif", np.ones((10, 10), np.uint8))
    with pytest.raises(BrainrtError, match=rf"^{re.escape(str(small_mask))}: tissue mask shape \(10, 10\)"):
        make_plan(img, tiny_bundle, tissue=small_mask)
    with pytest.raises(BrainrtError, match=r"^image: unsupported pixel type uint32; expected uint8, uint16, float32 "
                                           r"or float64 \(or int8, int16, int32\)$"):
        make_plan(img.astype(np.uint32), tiny_bundle)


# --------------------------------------------------------------------------- the engine
@pytest.mark.parametrize(("method", "stride"), [("patch", 12), ("dense", 8)])
def test_engine_on_row_bands_equals_the_whole(tiny_bundle, synthetic_slice, method, stride):
    """A scheduler may run the engine band by band (e.g. one Dask task per band): same blocks, same features."""
    plan = make_plan(synthetic_slice.image[:, :300], tiny_bundle, stride=stride, method=method, batch_size=64)
    predictor = tiny_bundle.predictor(plan.method, stride=plan.stride)
    whole = np.concatenate([b.features for b in blocks(plan, predictor)])
    R = plan.shape[0]
    bands = [(0, 7), (7, 19), (19, R)]
    parts = [b for r in bands for b in blocks(plan, predictor, rows=r)]
    assert [(p.r0, p.r1) for p in parts][0][0] == 0 and parts[-1].r1 == R
    got = np.concatenate([p.features for p in parts])
    if method == "patch":
        np.testing.assert_array_equal(got, whole)
    else:  # tiles start elsewhere: the same windows, summed in another order at most
        assert np.abs(got - whole).max() <= 1e-4


def test_meter_counts_every_cell_once(tiny_bundle, synthetic_slice):
    plan = make_plan(synthetic_slice.image, tiny_bundle, stride=16)
    meter = Meter()
    for _ in blocks(plan, tiny_bundle.predictor("dense", stride=16), meter=meter):
        pass
    stats = meter.close("dense")
    assert stats["patches"] == plan.n_cells and set(stats["timings"]) == {"tiling", "onnx", "stitching"}


def test_run_feeds_every_block_to_the_sink_in_order(tiny_bundle, synthetic_slice):
    from brainrt.engine.loop import run
    from brainrt.outputs.sinks import ArraySink

    plan = make_plan(synthetic_slice.image, tiny_bundle, stride=16)
    predictor = tiny_bundle.predictor_for(plan)
    seen = []
    got = run(plan, predictor, ArraySink.features(plan.shape, tiny_bundle.n_features),
              on_block=lambda b, meter: seen.append((b.r0, b.r1, meter.n)))
    np.testing.assert_array_equal(got, np.concatenate([b.features for b in blocks(plan, predictor)]))
    assert seen[0][0] == 0 and seen[-1][1] == plan.shape[0] and seen[-1][2] == plan.n_cells
    assert all(a[1] == b[0] for a, b in zip(seen, seen[1:]))  # consecutive bands, each reported once


def test_predictor_for_a_plan_follows_its_method_and_precision(tiny_bundle, synthetic_slice):
    for kw in (dict(stride=16), dict(stride=12), dict(stride=16, precision="int8")):
        plan = make_plan(synthetic_slice.image, tiny_bundle, **kw)
        p = tiny_bundle.predictor_for(plan)
        want = tiny_bundle.predictor(plan.method, stride=plan.stride, precision=plan.precision)
        assert (p.kind, p.session) == (want.kind, want.session) and p.kind == plan.method


def test_a_cancelled_run_leaves_no_feature_zarr(tiny_bundle, synthetic_slice, tmp_path):
    """Raising from the per-block callback stops the loop; the zarr sink removes its temporary folder."""
    from brainrt.api import featurize_plan

    plan = make_plan(synthetic_slice.image, tiny_bundle, stride=8)

    def stop(block, meter):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        featurize_plan(plan, tiny_bundle, out=tmp_path / "f.zarr", on_block=stop)
    assert listing(tmp_path) == []


def test_unused_pca_kmeans_head_is_verified_but_never_loaded():
    """Old bundles keep their pca_kmeans file (listed and hashed); the runtime does not unpickle it
    (sub-division fits its own PCA + KMeans per region)."""
    bundle = brainrt.Bundle.load(SHIPPED[0])
    assert "pca_kmeans" in bundle.manifest.heads and bundle.manifest.heads["pca_kmeans"] in bundle.manifest.files
    assert "pca_kmeans" not in bundle.heads and {"logreg", "gmm", "area_density"} <= set(bundle.heads)


def test_volume_plan_opens_no_session(tiny_bundle_path, tmp_path, monkeypatch):
    """The band height comes from the bundle's dense geometry, not from a session opened on the client."""
    from brainrt.model import sessions
    from brainrt.synth import make_volume
    from brainrt.volumes import make_volume_plan

    bundle = brainrt.Bundle.load(tiny_bundle_path)
    stack = write_tiff(tmp_path / "v.tif", make_volume((2, 192, 256), seed=1).image, photometric="minisblack")
    monkeypatch.setattr(sessions, "open_session", None)  # any session opened now would fail
    vplan = make_volume_plan(stack, bundle, stride=16)
    assert vplan.method == "dense" and len(vplan.bands) >= 1


def test_predictors_say_what_they_read(tiny_bundle):
    p = tiny_bundle.predictor("patch")
    assert p.kind == "patch" and p.windows == (64,) and p.footprint == 64 and p.n_features == 64
    d = tiny_bundle.predictor("dense", stride=32)
    assert d.kind == "dense" and d.stride == 16 and (d.window, d.offset) == (54, 5)
    assert [tiny_bundle.predictor("dense", stride=s).stride for s in (3, 5, 6, 12, 24, 48, 7)] == [1, 1, 2, 4, 8, 16, 1]


# --------------------------------------------------------------------------- boundaries
def test_runtime_sources_never_name_the_trainer():
    """The runtime imports nothing from brainrt_train (tests/test_runtime.py's no-torch test checks the
    modules a real session, CLI included, ends up with)."""
    for path in RUNTIME_FILES:
        assert "brainrt_train" not in path.read_text(), path.name


def test_trainer_command_is_registered_by_entry_point():
    from click.testing import CliRunner

    from brainrt.cli import main

    result = CliRunner().invoke(main, ["--help"])
    assert "train-and-export" in result.output
    assert "train-and-export" not in main.commands  # not defined by the runtime itself


def test_no_function_over_40_lines_in_the_runtime_packages():
    """The 40-line rule of the runtime's modules also holds in its packages (napari/, volumes/)."""
    too_long = [f for path in RUNTIME_FILES if path.parent != RUNTIME for f in _long_functions(path)]
    assert not too_long, too_long


def test_no_runtime_module_over_300_lines():
    too_long = [f"{p.relative_to(RUNTIME)} ({n})" for p in RUNTIME_FILES if (n := len(p.read_text().splitlines())) > 300]
    assert not too_long, too_long


def _calls_blocks(tree):
    """Lines that import or call the engine's ``blocks`` (the loop over them belongs to ``engine.loop.drain``, through ``run``)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").endswith("loop"):
            yield from (node.lineno for a in node.names if a.name == "blocks")
        elif isinstance(node, ast.Call):
            f = node.func
            if (isinstance(f, ast.Name) and f.id == "blocks") or (isinstance(f, ast.Attribute) and f.attr == "blocks"
                                                                   and isinstance(f.value, ast.Name)
                                                                   and f.value.id == "loop"):
                yield node.lineno


def test_no_loop_over_the_engine_blocks_outside_the_engine():
    hits = [f"{p.relative_to(ROOT)}:{n}" for p in RUNTIME_FILES + TOOLS_FILES if p != RUNTIME / "engine" / "loop.py"
            for n in _calls_blocks(ast.parse(p.read_text()))]
    assert not hits, hits


def _is_module(path, node, name):
    """Whether ``from <node> import name`` in ``path`` names a module file (a private module of the same package)."""
    base = path.parent
    for _ in range(max(node.level - 1, 0)):
        base = base.parent
    if node.level == 0:
        base = RUNTIME.parent
    base = base.joinpath(*(node.module or "").split(".")) if node.module else base
    return (base / f"{name}.py").exists() or (base / name).is_dir()


def _private_imports(path):
    """``from <brainrt module> import _name`` and ``<brainrt module>._name`` in ``path`` (dunders allowed)."""
    tree, bound = ast.parse(path.read_text()), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("brainrt")):
            for a in node.names:
                bound.add(a.asname or a.name)
                if a.name.startswith("_") and not a.name.startswith("__") and not _is_module(path, node, a.name):
                    yield f"{path.relative_to(ROOT)}:{node.lineno} imports {a.name}"
        elif isinstance(node, ast.Import):
            bound |= {a.asname or a.name.split(".")[0] for a in node.names if a.name.startswith("brainrt")}
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in bound
                and node.attr.startswith("_") and not node.attr.startswith("__")):
            yield f"{path.relative_to(ROOT)}:{node.lineno} uses {node.value.id}.{node.attr}"


def test_no_cross_module_private_imports():
    hits = [h for p in RUNTIME_FILES + TOOLS_FILES for h in _private_imports(p)]
    assert not hits, hits


def test_runtime_imports_its_siblings_at_the_top():
    """Only heavy optional packages (dask, zarr, Qt, scikit-learn, ...) are imported inside functions."""
    hits = []
    for p in RUNTIME_FILES:
        for fn in ast.walk(ast.parse(p.read_text())):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                hits += [f"{p.relative_to(ROOT)}:{n.lineno}" for n in ast.walk(fn) if isinstance(n, ast.ImportFrom)
                         and (n.level or (n.module or "").startswith("brainrt"))]
    assert not hits, hits


# --------------------------------------------------------------------------- option declarations
PLAN_OPTIONS = ("stride", "batch_size", "min_tissue", "threshold", "pixel_size_um", "method", "precision")
VOLUME_OPTIONS = PLAN_OPTIONS + ("z_spacing_um", "smooth_z", "band_rows", "threads")


def _bad_values(names):
    from brainrt.model.params import PARAMS

    return [(n, bad) for n in names for bad in PARAMS[n].constraint.invalid()]


def _message(name, owner):
    from brainrt.model.params import PARAMS

    return rf"^The '{name}' parameter of {re.escape(owner)} must be {re.escape(PARAMS[name].constraint.describe())}\. Got "


@pytest.mark.parametrize(("name", "bad"), _bad_values(PLAN_OPTIONS), ids=repr)
def test_make_plan_refuses_what_the_declarations_refuse(tiny_bundle, synthetic_slice, name, bad):
    with pytest.raises(BrainrtError, match=_message(name, "featurize")):
        make_plan(synthetic_slice.image, tiny_bundle, **{name: bad})


@pytest.mark.parametrize(("name", "bad"), _bad_values(VOLUME_OPTIONS), ids=repr)
def test_volume_plan_refuses_what_the_declarations_refuse(tiny_bundle, tmp_path, name, bad):
    """Same declarations, checked before the stack is even opened (the source need not exist)."""
    from brainrt.volumes import make_volume_plan

    with pytest.raises(BrainrtError, match=_message(name, "classify (volume)")):
        make_volume_plan(tmp_path / "missing.tif", tiny_bundle, **{name: bad})


@pytest.mark.parametrize("bad", [b for _, b in _bad_values(["smooth"])], ids=repr)
def test_classify_refuses_bad_smoothing_before_the_engine_runs(tiny_bundle, synthetic_slice, bad, monkeypatch):
    import brainrt.api

    monkeypatch.setattr(brainrt.api, "run", None)  # calling it would fail with a TypeError, not this message
    plan = make_plan(synthetic_slice.image, tiny_bundle)
    with pytest.raises(BrainrtError, match=_message("smooth", "classify")):
        brainrt.api.classify_plan(plan, tiny_bundle, smooth=bad)


def test_plan_and_volume_defaults_are_the_declared_ones(tiny_bundle, tmp_path):
    from brainrt.model import params
    from brainrt.synth import make_volume
    from brainrt.volumes import make_volume_plan

    stack = write_tiff(tmp_path / "v.tif", make_volume((2, 192, 256), seed=1).image, photometric="minisblack")
    v = make_volume_plan(stack, tiny_bundle)
    p = make_plan(make_volume((1, 192, 256), seed=1).image[0], tiny_bundle)
    for name in ("stride", "batch_size", "min_tissue"):
        assert v.slice_options[name] == getattr(p, name, params.default(name)) == params.default(name), name
    auto = tiny_bundle.check_precision(params.default("precision"))  # "auto", decided once per run
    assert v.slice_options["precision"] == p.precision == auto


def _long_functions(path, limit=40):
    """Functions of ``path`` longer than ``limit`` lines without a ``# long:`` comment saying why."""
    text = path.read_text()
    lines = text.splitlines()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            n = node.end_lineno - node.lineno + 1
            if n > limit and not any("# long:" in ln for ln in lines[node.lineno - 1 : node.end_lineno]):
                yield f"{path.name}:{node.name} ({n} lines)"


def test_no_runtime_function_over_40_lines():
    too_long = [f for path in sorted(RUNTIME.glob("*.py")) for f in _long_functions(path)]
    assert not too_long, too_long


# --------------------------------------------------------------------------- outside the runtime: trainer and tools
TRAINER = ROOT / "trainer" / "brainrt_train"
TOOLS = ROOT / "tools"


def test_no_tools_function_over_40_lines():
    """The runtime's rule for tools/ too (a ``# long:`` comment saying why lets one through)."""
    too_long = [f for path in sorted(TOOLS.rglob("*.py")) for f in _long_functions(path)]
    assert not too_long, too_long


def test_no_trainer_function_over_40_lines():
    """The runtime's rule for the trainer too (a ``# long:`` comment saying why lets one through)."""
    too_long = [f for path in sorted(TRAINER.rglob("*.py")) for f in _long_functions(path)]
    assert not too_long, too_long


def test_no_tools_file_over_500_lines():
    sizes = {p.relative_to(ROOT).as_posix(): len(p.read_text().splitlines()) for p in sorted(TOOLS.rglob("*.py"))}
    assert not {p: n for p, n in sizes.items() if n > 500}, sizes


def _private_names(path):
    """``line: name`` for every private name (``_x``, dunders aside) imported from a brainrt or
    brainrt_train module, or module path part, in ``path``."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in ("brainrt", "brainrt_train"):
            parts = node.module.split(".") + [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            parts = [p for a in node.names if a.name.split(".")[0] in ("brainrt", "brainrt_train")
                     for p in a.name.split(".")]
        else:
            continue
        yield from (f"{node.lineno}: {p}" for p in parts if p.startswith("_") and not p.startswith("__"))


def test_private_name_check_finds_both_spellings(tmp_path):
    src = tmp_path / "t.py"
    src.write_text("from brainrt.engine.tiling import _gather_patches, gather_patches\nimport brainrt.napari._sample\n"
                   "from .data import _layout\nfrom __future__ import annotations\n")
    assert list(_private_names(src)) == ["1: _gather_patches", "2: _sample"]


def test_trainer_imports_only_public_runtime_names():
    hits = [f"{p.name}:{h}" for p in sorted(TRAINER.rglob("*.py")) for h in _private_names(p)]
    assert not hits, hits


def test_no_runtime_module_imports_the_trainer():
    """Imports parsed (the napari plugin included): nothing under runtime/brainrt imports brainrt_train."""
    hits = []
    for path in sorted(RUNTIME.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            mods = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                    [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            hits += [f"{path.relative_to(RUNTIME)}:{node.lineno}" for m in mods if m.split(".")[0] == "brainrt_train"]
    assert not hits, hits


# --------------------------------------------------------------------------- one seal, one device list
def test_every_bundle_writer_seals_through_seal_bundle():
    """Only :func:`brainrt.model.seal.seal_bundle` writes a manifest (hash the tree, write, verify); the runtime, the
    trainer and the tools call it (tools/bad_inputs.py crafts broken manifests on purpose)."""
    pattern = re.compile(r"write_text\(.*to_json\(\)|hash_tree\(")
    hits = [f"{p.relative_to(ROOT)}:{n}" for p in [*RUNTIME_FILES, *TRAINER.rglob("*.py"), *TOOLS_FILES]
            if p.name not in ("seal.py", "bad_inputs.py")
            for n, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not hits, hits


def test_seal_bundle_hashes_writes_and_verifies(tiny_bundle_path, tmp_path):
    import shutil

    from brainrt.model.seal import MANIFEST, seal_bundle, verify_bundle

    b = tmp_path / "b"
    shutil.copytree(tiny_bundle_path, b)
    (b / "notes.txt").write_text("added after export\n")
    with pytest.raises(BrainrtError, match="not listed in its manifest: notes.txt"):
        verify_bundle(b)
    m = seal_bundle(b, verify_bundle(tiny_bundle_path))
    assert "notes.txt" in m.files and Manifest.from_json((b / MANIFEST).read_text()) == m == verify_bundle(b)
    (b / "notes.txt").write_text("changed\n")
    with pytest.raises(BrainrtError, match="notes.txt does not match its sha256"):
        verify_bundle(b)


def test_the_device_list_is_declared_once():
    from brainrt.bundle import load
    from brainrt.model import params

    assert load.DEVICES is params.PARAMS["device"].constraint.values
    for p in RUNTIME_FILES:
        assert p.name == "params.py" or '"cuda")' not in p.read_text(), p.name


def test_classifier_head_names_are_declared_once():
    """The head kinds declare the heads' names; the trainer fits the scikit-learn kind's by those names, and
    the napari plugin and the command line offer the registry's classifiers (no list of names of their own)."""
    from brainrt.heads import CLASSIFIER_HEADS, scikit
    from brainrt_train.heads import CLASSIFIERS, make_heads

    assert CLASSIFIER_HEADS == ("logreg", "linsvm", "rbfsvm", "cnn", "ctx")  # the order the choices are offered in
    assert CLASSIFIERS == scikit.CLASSIFIERS and set(make_heads(n_classes=3)) == set(scikit.HEADS)
    for p in RUNTIME_FILES:
        assert p.parent.name == "heads" or '"linsvm", "rbfsvm"' not in p.read_text(), p.name


@pytest.mark.parametrize("bundle", sorted((ROOT / "models").glob("*/manifest.json")), ids=lambda p: p.parent.name)
def test_every_shipped_head_file_is_claimed_by_one_kind(bundle):
    """A head kind is one module: every head file a bundle lists is claimed by exactly one kind, whose
    names include the head's (the unused ``pca_kmeans`` aside)."""
    from brainrt.heads import KINDS, UNUSED_HEADS

    m = brainrt.model.seal.verify_bundle(bundle.parent)
    for name, rel in m.heads.items():
        spec = (m.context_heads or {}).get(name)
        kinds = [k for k in KINDS if k.claims(rel, spec)]
        assert len(kinds) == 1, (name, rel, kinds)
        assert name in kinds[0].HEADS or name in UNUSED_HEADS, (name, kinds[0].KIND)


# --------------------------------------------------------------------------- rooms: the runtime's layers by concern
#: The runtime's rooms, lowest first. A module imports modules of its own room and of lower rooms, never of a
#: higher one; every module is in exactly one room (a new module is placed here, by its concern). A room is a
#: subpackage (``name/``, whose docstring says what lives there and what it may import) or top-level modules.
ROOMS = {
    "base": ["errors.py", "version.py", "geometry.py", "runfiles.py", "io.py", "integrity.py", "ngff.py",
             "plots.py", "synth.py", "split.py", "densities.py"],
    "sources": ["sources/"],
    "model": ["model/"],
    "heads": ["maps/", "heads/"],
    "bundle": ["bundle/"],
    "engine": ["engine/"],
    "outputs": ["outputs/"],
    "jobs": ["job.py", "api.py", "familiar.py", "fit.py", "demo.py", "volumes/", "zoo/"],
    "face": ["__init__.py", "cli/", "napari/"],
}


def _room(rel):
    """The index of the room of ``rel`` (a path under runtime/brainrt), None if it is in none."""
    for i, members in enumerate(ROOMS.values()):
        if any(rel.startswith(m) if m.endswith("/") else rel == m for m in members):
            return i
    return None


def _imported(path, text=None):
    """(line, module) of each runtime module that ``path`` (or ``text`` as if it were ``path``) imports by
    ``from X import Y``, a module or a name of it (modules as paths under runtime/brainrt)."""
    rel = path.relative_to(RUNTIME)
    for node in ast.walk(ast.parse(path.read_text() if text is None else text)):
        if not isinstance(node, ast.ImportFrom) or not (node.level or (node.module or "").startswith("brainrt.")):
            continue
        base = list(rel.parent.parts)[: len(rel.parent.parts) - node.level + 1] if node.level else []
        mod = (node.module or "").split(".")[0 if node.level else 1:] if node.module else []
        for name in (a.name for a in node.names):
            for parts in ([*base, *mod, name], [*base, *mod]):
                where = RUNTIME.joinpath(*parts)
                hit = where.with_suffix(".py") if where.with_suffix(".py").is_file() else where / "__init__.py"
                if parts and hit.is_file():
                    yield node.lineno, hit.relative_to(RUNTIME).as_posix()
                    break


def test_every_runtime_module_is_in_one_room():
    rels = [p.relative_to(RUNTIME).as_posix() for p in RUNTIME_FILES]
    assert not [r for r in rels if _room(r) is None], "place it in ROOMS"
    assert all(sum(any(r.startswith(m) if m.endswith("/") else r == m for m in ms) for ms in ROOMS.values()) == 1
               for r in rels)


def test_no_module_imports_a_higher_room():
    names = list(ROOMS)
    up = [f"{p.relative_to(RUNTIME)}:{n} ({names[_room(p.relative_to(RUNTIME).as_posix())]}) imports {t} "
          f"({names[_room(t)]})" for p in RUNTIME_FILES for n, t in _imported(p)
          if _room(t) > _room(p.relative_to(RUNTIME).as_posix())]
    assert not up, up


def test_the_room_check_sees_every_spelling_of_an_import():
    """The check is not blind: relative, package-relative and absolute imports of a module or of a name."""
    text = ("from ..engine.loop import run\nfrom . import plan\nfrom ..outputs import writers\nfrom brainrt.cli.common import prepare\n"
            "from ..sources import read_image\nfrom ..errors import BrainrtError\nimport numpy\n")
    got = [t for _, t in _imported(RUNTIME / "volumes" / "blocks.py", text)]
    assert got == ["engine/loop.py", "volumes/plan.py", "outputs/writers.py", "cli/common.py", "sources/__init__.py", "errors.py"]
    assert [t for _, t in _imported(RUNTIME / "geometry.py", "from .engine.loop import run\nfrom .engine import plan\n")] == [
        "engine/loop.py", "engine/plan.py"]
    assert _room("engine/loop.py") > _room("geometry.py") and _room("outputs/writers.py") > _room("sources/tiff.py")


def test_the_job_decides_one_slice_or_a_volume(tmp_path, synthetic_slice):
    """One place chooses the path (brainrt.job.make_job), names the output and refuses what does not apply."""
    from brainrt.job import make_job

    img = synthetic_slice.image[:192, :256]
    one = write_tiff(tmp_path / "s.tif", img)
    stack = write_tiff(tmp_path / "stack.tif", np.stack([img] * 3), photometric="minisblack")
    job = make_job("classify", one, truth=None)
    assert not job.volume and job.records and job.suffix == ".labels.ome.tif" and job.output[0] == (".tif", ".tiff")
    assert not make_job("classify", stack, z=1).volume and make_job("featurize", one).suffix == ".features.zarr"
    vol = make_job("classify", stack, z="all", head=None, smooth=None, smooth_z=1.0)
    assert vol.volume and not vol.records and vol.suffix == ".ome.zarr" and vol.output[0] == (".zarr",)
    assert make_job("featurize", stack, z="0:2").suffix == ".features.zarr"
    with pytest.raises(BrainrtError, match="^--z 0:2 names several slices"):
        make_job("cluster", stack, z="0:2")
    with pytest.raises(BrainrtError, match="^--truth, --preview-width: scores or draws one slice"):
        make_job("classify", stack, z="all", truth="t.tif", preview_width=100)
    with pytest.raises(BrainrtError, match="--workers runs a volume on Dask"):
        make_job("featurize", one, workers=2)
    with pytest.raises(BrainrtError, match="^--smooth-z smooths across slices"):
        make_job("classify", one, smooth_z=2.0)


def test_no_command_chooses_between_a_slice_and_a_volume():
    """The commands build a job and run it; none of them asks whether the source is a volume."""
    for path in sorted((RUNTIME / "cli").glob("*.py")):
        text = path.read_text()
        assert not [w for w in ("is_volume_input", "process_volume", "make_plan(") if w in text], path.name


def test_every_subpackage_names_its_room():
    """Each runtime subpackage's docstring says what lives there and what it may import."""
    for init in sorted(RUNTIME.glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert "Lives here" in doc and "May import" in doc, init.relative_to(ROOT)
