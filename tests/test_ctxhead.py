"""Context heads: neighbourhood pooling (streamed == whole grid, in 2D and across z), the folded head
(== the fitted pipeline), the manifest's new head kind, and classify / classify_image serving it."""

import dataclasses
import json

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter1d

import brainrt
from brainrt.errors import BrainrtError
from brainrt.heads.context import ContextHead, ContextStream, context_probabilities
from brainrt.model.manifest import ContextHeadSpec, Manifest, PoolScale
from brainrt.maps.pooling import RowPooler, combine_z, pool_grid, pool_volume, z_kernel


def naive_pool(values, valid, sigmas):
    """Normalized Gaussian convolution over tissue cells with scipy in float64; ``sigmas`` per axis (0: none)."""
    v = valid.astype(np.float64)
    num = np.where(valid[..., None], values, 0).astype(np.float64)
    den = v[..., None]
    for axis, s in enumerate(sigmas):
        if s > 0:
            num = gaussian_filter1d(num, s, axis=axis, mode="constant", truncate=4.0)
            den = gaussian_filter1d(den, s, axis=axis, mode="constant", truncate=4.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(valid[..., None], num / den, 0)


GRIDS = [((37, 23, 5), 1.7), ((5, 40, 3), 2.0), ((60, 7, 4), 0.6), ((3, 3, 2), 3.0), ((41, 19, 6), 5.0)]


def _grid(shape, seed):
    rng = np.random.default_rng(seed)
    return rng.normal(size=shape).astype(np.float32), rng.random(shape[:-1]) > 0.3


@pytest.mark.parametrize("shape, sigma", GRIDS)
def test_pooling_is_the_normalized_convolution_over_tissue(shape, sigma):
    x, valid = _grid(shape, 0)
    got = pool_grid(x, valid, sigma).mean()
    np.testing.assert_allclose(got, naive_pool(x, valid, (sigma, sigma)), atol=1e-5)
    assert (got[~valid] == 0).all()


@pytest.mark.parametrize("shape, sigma", GRIDS)
@pytest.mark.parametrize("block", [1, 2, 5, 11, 1000])
def test_streamed_pooling_equals_whole_grid_pooling(shape, sigma, block):
    x, valid = _grid(shape, 1)
    whole = pool_grid(x, valid, sigma)
    pooler, parts = RowPooler(sigma), []
    for y in range(0, shape[0], block):
        parts += list(pooler.push(x[y : y + block], valid[y : y + block]))
        assert sum(len(p.num) for p in parts) <= y + block  # never ahead of the input
        assert len(pooler._num) <= block + 2 * pooler.r  # bounded: a block plus its halos
    parts += list(pooler.flush())
    for f in ("num", "den", "valid"):
        assert np.array_equal(np.concatenate([getattr(p, f) for p in parts]), getattr(whole, f))  # bit for bit


@pytest.mark.parametrize("sigma_z", [0.0, 0.7, 1.5])
def test_volume_pooling_is_the_3d_normalized_convolution(sigma_z):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(7, 21, 17, 3)).astype(np.float32)
    valid = rng.random((7, 21, 17)) > 0.25
    got = np.stack([p.mean() for p in pool_volume(x, valid, 1.8, sigma_z)])
    np.testing.assert_allclose(got, naive_pool(x, valid, (sigma_z, 1.8, 1.8)), atol=1e-5)


@pytest.mark.parametrize("block", [1, 4, 100])
def test_z_pooling_streamed_by_slice_and_row_block_equals_whole_volume(block):
    """What a volume task does: for slice z, stream each slice within reach in row blocks and combine."""
    rng = np.random.default_rng(3)
    Z, sigma, sigma_z = 6, 1.3, 1.1
    x = rng.normal(size=(Z, 19, 11, 4)).astype(np.float32)
    valid = rng.random((Z, 19, 11)) > 0.3
    whole = pool_volume(x, valid, sigma, sigma_z)
    kz = z_kernel(sigma_z)
    r = len(kz) // 2
    for z in range(Z):
        near = [z + t - r for t in range(len(kz))]
        poolers = {j: RowPooler(sigma) for j in near if 0 <= j < Z}
        got, queues = [], {j: [] for j in poolers}
        for y in range(0, x.shape[1], block):
            for j, p in poolers.items():
                queues[j] += list(p.push(x[j, y : y + block], valid[j, y : y + block]))
        for j, p in poolers.items():
            queues[j] += list(p.flush())
        for i in range(len(queues[z])):  # every slice's pooler emits the same row blocks
            got.append(combine_z([queues[j][i] if j in queues else None for j in near], kz, queues[z][i].valid))
        for f in ("num", "den"):
            assert np.array_equal(np.concatenate([getattr(g, f) for g in got]), getattr(whole[z], f))


# --------------------------------------------------------------------------- the folded head
def _fitted(rng, shape=(30, 26), F=5, K=3, scales=None):
    """A grid of features, a stage-1 head, a fitted pipeline on explicitly pooled inputs, its folded twin."""
    from sklearn.linear_model import LogisticRegression

    from brainrt_train import ctxhead as ch

    f = rng.normal(size=shape + (F,)).astype(np.float32)
    f[: shape[0] // 2, :, 0] += 1.5  # three areas the features and their neighbourhoods tell apart
    f[:, : shape[1] // 3, 1] += 1.5
    valid = rng.random(shape) > 0.15
    y = (f[..., 0] > 0.7).astype(int) + (f[..., 1] > 0.7)
    stage1 = LogisticRegression(max_iter=500).fit(f[valid], y[valid])
    scales = scales or (PoolScale(source="features", sigma_um=3.0), PoolScale(source="probabilities", sigma_um=6.0))
    x = ch.pooled_inputs(f, valid, scales, stage1, pixel_size_um=1.0, stride=1)
    pipe = ch.fit_pipeline(x[valid], y[valid], C=1.0)
    head = ch.fold(pipe, scales, n_features=F, n_classes=K, stage1=stage1)
    return f, valid, x, pipe, head


def test_folded_context_head_equals_the_fitted_pipeline_on_pooled_features():
    f, valid, x, pipe, head = _fitted(np.random.default_rng(4))
    from brainrt_train.ctxhead import head_probabilities

    got = head_probabilities(head, f, valid, pixel_size_um=1.0, stride=1)
    np.testing.assert_allclose(got[valid], pipe.predict_proba(x[valid]), atol=1e-4)
    assert (got[~valid] == 0).all()


def test_sigma_is_in_micrometres_so_strides_agree():
    head = ContextHead(np.zeros((2, 3)), np.zeros(2), [np.zeros((2, 3))], (PoolScale(source="features", sigma_um=150.0),))
    assert head.sigmas_cells(1.17, 16) == [pytest.approx(150 / 18.72)]
    assert head.sigmas_cells(1.17, 4)[0] == pytest.approx(4 * head.sigmas_cells(1.17, 16)[0])


@pytest.mark.parametrize("block", [1, 3, 7, 1000])
def test_streamed_context_head_equals_whole_grid(block):
    f, valid, _, _, head = _fitted(np.random.default_rng(5))
    terms = np.zeros(valid.shape + (head.n_terms,), np.float32)
    terms[valid] = head.terms(f[valid])
    sig = head.sigmas_cells(1.0, 1)
    whole = context_probabilities(head, terms, valid, sig)
    stream, rows = ContextStream(head, sig), []
    for y in range(0, len(valid), block):
        rows += list(stream.push(terms[y : y + block], valid[y : y + block]))
    rows += list(stream.flush())
    assert np.array_equal(np.concatenate(rows), whole)


def test_context_head_file_round_trip(tmp_path):
    f, valid, _, _, head = _fitted(np.random.default_rng(6))
    head.save(tmp_path / "ctx.npz")
    back = ContextHead.load(tmp_path / "ctx.npz", head.scales, head.stage1)
    assert np.array_equal(back.terms(f[valid]), head.terms(f[valid]))


# --------------------------------------------------------------------------- manifest and bundle
SPEC = {"scales": [{"source": "features", "sigma_um": 75.0}, {"source": "probabilities", "sigma_um": 150.0,
                                                              "sigma_z_um": 20.0}],
        "stage1": "logreg", "C": 0.1, "chosen_on": "validation", "table": [{"name": "f75", "macro_f1": 0.6}]}


def test_manifest_round_trip_of_a_context_head(tiny_bundle):
    d = tiny_bundle.manifest.to_dict()
    assert "context_heads" not in d  # bundles without one are written as before
    d = {**d, "heads": {**d["heads"], "ctx": "heads/ctx.npz"}, "context_heads": {"ctx": SPEC}}
    m = Manifest.from_dict(json.loads(json.dumps(d)))
    spec = m.context_heads["ctx"]
    assert isinstance(spec, ContextHeadSpec) and spec.stage1 == "logreg" and spec.C == 0.1
    assert spec.scales == (PoolScale(source="features", sigma_um=75.0),
                           PoolScale(source="probabilities", sigma_um=150.0, sigma_z_um=20.0))
    assert spec.extra["table"] == SPEC["table"]
    back = m.to_dict()
    assert back["context_heads"]["ctx"]["scales"][0] == {"source": "features", "sigma_um": 75.0, "sigma_z_um": 0.0}
    assert Manifest.from_json(m.to_json()) == m


@pytest.mark.parametrize("scale", [{"source": "edges", "sigma_um": 5.0}, {"source": "features", "sigma_um": 0}])
def test_a_bad_context_head_scale_is_a_one_line_error(tiny_bundle, scale):
    d = tiny_bundle.manifest.to_dict()
    d["context_heads"] = {"ctx": {**SPEC, "scales": [scale]}}
    with pytest.raises(BrainrtError) as info:
        Manifest.from_dict(d, source="b/manifest.json")
    assert str(info.value).startswith("b/manifest.json: ") and "\n" not in str(info.value)


@pytest.fixture(scope="module")
def ctx_bundle(tiny_bundle, tiny_bundle_path, synthetic_slice, tmp_path_factory):
    """A copy of the tiny bundle with a context head fitted on its stride-8 features (every labeled cell)."""
    from brainrt_train import ctxhead as ch

    g = brainrt.featurize(synthetic_slice.image, tiny_bundle, stride=8)
    scales = (PoolScale(source="features", sigma_um=20.0), PoolScale(source="probabilities", sigma_um=40.0))
    ys = np.minimum(np.arange(g.shape[0]) * 8 + 4, synthetic_slice.mask.shape[0] - 1)
    xs = np.minimum(np.arange(g.shape[1]) * 8 + 4, synthetic_slice.mask.shape[1] - 1)
    lab = synthetic_slice.mask[np.ix_(ys, xs)].astype(np.int64) - 1
    r, c = np.nonzero(g.valid & (lab >= 0))
    head = ch.fit_candidate(np.asarray(g.features), g.valid, (r, c, lab[r, c]), scales, tiny_bundle.head("logreg"),
                            C=1.0, pixel_size_um=g.pixel_size_um, stride=8, n_classes=len(tiny_bundle.class_names))
    out = tmp_path_factory.mktemp("ctx") / "bundle"
    m = ch.add_context_head(tiny_bundle_path, out, {"stage1": "logreg", "C": 1.0}, head, default=True)
    assert m.default_head == "ctx" and brainrt.model.seal.verify_bundle(out) == m
    return brainrt.Bundle.load(out)


@pytest.mark.parametrize("stride", [8, 4])
def test_classify_image_streams_the_context_head_like_classify(ctx_bundle, synthetic_slice, stride):
    grid = brainrt.featurize(synthetic_slice.image, ctx_bundle, stride=stride)
    whole = brainrt.classify(grid, ctx_bundle, smooth=0)
    streamed = brainrt.classify_image(synthetic_slice.image, ctx_bundle, stride=stride, smooth=0)
    np.testing.assert_allclose(streamed.probabilities, whole.probabilities, atol=1e-5)
    assert (streamed.labels == whole.labels).mean() > 0.999
    smoothed = brainrt.classify_image(synthetic_slice.image, ctx_bundle, stride=stride, smooth=20)
    np.testing.assert_allclose(smoothed.probabilities, brainrt.classify(grid, ctx_bundle, smooth=20).probabilities,
                               atol=1e-5)


def test_the_plain_head_stays_available_and_old_bundles_load(ctx_bundle, tiny_bundle, synthetic_slice):
    grid = brainrt.featurize(synthetic_slice.image, ctx_bundle, stride=8)
    plain = brainrt.classify(grid, ctx_bundle, head="logreg", smooth=0)
    ref = brainrt.classify(grid, tiny_bundle, head="logreg", smooth=0)
    assert np.array_equal(plain.probabilities, ref.probabilities)
    ctx = brainrt.classify(grid, ctx_bundle, smooth=0)  # the default: ctx
    truth = synthetic_slice.mask
    acc = {n: brainrt.api.score(r, truth, ctx_bundle)["pixel_accuracy"] for n, r in (("ctx", ctx), ("logreg", plain))}
    assert acc["ctx"] > 0.5 and acc["logreg"] > 0.5, acc
    assert tiny_bundle.manifest.context_heads is None


def test_a_context_head_without_its_stage1_is_refused(ctx_bundle, tmp_path):
    import shutil

    from brainrt.model.seal import MANIFEST, hash_tree

    dst = tmp_path / "b"
    shutil.copytree(ctx_bundle.path, dst)
    (dst / "heads" / "logreg.joblib").unlink()
    m = dataclasses.replace(ctx_bundle.manifest, heads={k: v for k, v in ctx_bundle.manifest.heads.items()
                                                        if k != "logreg"})
    m = dataclasses.replace(m, files=hash_tree(dst))
    (dst / MANIFEST).write_text(m.to_json())
    with pytest.raises(BrainrtError, match="stage 1"):
        brainrt.Bundle.load(dst)


def test_a_bundle_derived_from_one_with_a_context_head_loads(ctx_bundle, synthetic_slice, tmp_path):
    """brainrt fit drops the parent's class-bound heads, the context head with them: its spec must go too."""
    from brainrt.synth import draw_strokes

    strokes = draw_strokes(synthetic_slice.mask, 2, length=80, margin=32, seed=1)
    fitted = brainrt.fit_heads(synthetic_slice.image, strokes, ctx_bundle, cv=False)
    b = brainrt.Bundle.load(brainrt.save_bundle(fitted, ctx_bundle, tmp_path / "derived"))
    assert b.manifest.context_heads is None and "ctx" not in b.heads and b.manifest.default_head == "logreg"


def test_cli_classify_with_the_context_head_and_a_clear_error_without_one(ctx_bundle, tiny_bundle_path, slice_tif,
                                                                           tmp_path):
    import tifffile
    from click.testing import CliRunner

    from brainrt.cli import main

    out = tmp_path / "ctx.ome.tif"
    r = CliRunner().invoke(main, ["classify", str(slice_tif), "-m", str(ctx_bundle.path), "--head", "ctx",
                                  "--stride", "8", "--smooth", "0", "-o", str(out)])
    assert r.exit_code == 0, r.output
    ref = brainrt.classify_image(str(slice_tif), ctx_bundle, stride=8, head="ctx", smooth=0)
    assert np.array_equal(tifffile.imread(out), brainrt.upsample(ref.cell_codes(), 8, ref.grid.image_shape))
    r = CliRunner().invoke(main, ["classify", str(slice_tif), "-m", str(tiny_bundle_path), "--head", "ctx",
                                  "-o", str(tmp_path / "x.ome.tif")])
    assert r.exit_code == 2 and "no head 'ctx'" in r.stderr, r.stderr


@pytest.mark.parametrize("sigma_z_um", [0.0, 12.0])
def test_volume_classify_with_a_context_head_equals_whole_volume_pooling(ctx_bundle, tmp_path, sigma_z_um):
    """The volume path pools each slice's terms in the plane and across z (sigma_z in um, z spacing 10 um)
    band by band; it equals the whole-volume normalized pooling of the same terms."""
    import zarr

    from brainrt.heads import apply_rows
    from brainrt.synth import make_volume
    from brainrt.volumes import make_volume_plan, run_volume
    from brainrt_train.ctxhead import add_context_head
    from conftest import write_tiff

    head = ctx_bundle.head("ctx")
    scales = tuple(dataclasses.replace(s, sigma_z_um=sigma_z_um) for s in head.scales)
    zhead = ContextHead(head.w_self, head.bias, head.w, scales, head.stage1)
    bpath = tmp_path / "zbundle"
    add_context_head(ctx_bundle.path, bpath, {"stage1": "logreg", "C": 1.0}, zhead, default=True)
    bundle = brainrt.Bundle.load(bpath)
    vol = make_volume((4, 192, 256), seed=5)
    stack = write_tiff(tmp_path / "stack.tif", vol.image, photometric="minisblack")
    plan = make_volume_plan(stack, bundle, stride=16, band_rows=3, smooth=0, z_spacing_um=10.0)
    assert plan.context and plan.n_terms == zhead.n_terms
    run_volume(plan, tmp_path / "out.ome.zarr", bundle=bundle)
    got = np.moveaxis(np.asarray(zarr.open_group(str(tmp_path / "out.ome.zarr"), mode="r")["0"]), 0, -1)[..., : zhead.n_classes]
    grids = [brainrt.featurize(vol.image[z], bundle, stride=16) for z in range(4)]
    valid = np.stack([g.valid for g in grids])
    terms = np.stack([apply_rows(g.features, g.valid, zhead.terms, np.zeros(g.valid.shape + (zhead.n_terms,),
                                                                           np.float32)) for g in grids])
    K = zhead.n_classes
    sig = zhead.sigmas_cells(grids[0].pixel_size_um, 16)
    pooled = [pool_volume(terms[..., K * (s + 1) : K * (s + 2)], valid, sig[s], sc.sigma_z_um / 10.0)
              for s, sc in enumerate(scales)]
    for z in range(4):
        want = np.where(valid[z][..., None], zhead.probabilities(terms[z][..., :K], [p[z].mean() for p in pooled]), 0)
        np.testing.assert_allclose(got[z], want, atol=2e-5)
    if sigma_z_um == 0:  # in-plane only: each slice as the 2D path maps it
        res = brainrt.classify_image(vol.image[2], bundle, stride=16, smooth=0)
        np.testing.assert_allclose(got[2], res.probabilities, atol=2e-5)


def test_the_choice_reads_validation_only():
    from brainrt_train.ctxhead import choose

    def row(name, val, test, scales=(), C=1.0):
        return {"name": name, "scales": [list(s) for s in scales], "C": C,
                "smoothed_val": {"macro_f1": val}, "smoothed_test": {"macro_f1": test}}

    table = [row("plain", 0.70, 0.90), row("f75", 0.80, 0.10, [("features", 75.0)]),
             row("f300", 0.803, 0.20, [("features", 300.0)])]
    assert choose(table)["name"] == "f75"  # f300 ties within 0.005: the smaller field; test scores never read
    assert choose([{**r, "smoothed_test": None} for r in table])["name"] == "f75"


def test_the_tool_adds_a_context_head_chosen_on_validation(tiny_bundle_path, slice_tif, mask_tif, tmp_path, capsys):
    """tools/context_heads.py: candidates fitted on the training split, chosen on validation, written into a
    copy of the bundle (the parent untouched; the manifest records validation scores only)."""
    import importlib.util

    from conftest import ROOT

    spec = importlib.util.spec_from_file_location("context_heads_tool", ROOT / "tools" / "context_heads.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    before = (tiny_bundle_path / "manifest.json").read_text()
    out, dst = tmp_path / "run", tmp_path / "with-ctx"
    tool.main(["--model", str(tiny_bundle_path), "--image", str(slice_tif), "--mask", str(mask_tif),
               "--stride", "8", "--train", "region", "--candidates", "plain", "f75", "--C", "0.1", "1",
               "-o", str(out), "--write", str(dst)])
    table = json.loads((out / "results.json").read_text())["table"]
    rows = [r for r in table if not r.get("baseline")]
    best = max(rows, key=lambda r: r["smoothed_val"]["macro_f1"])
    chosen = [r for r in rows if r.get("chosen")]
    assert len(chosen) == 1 and chosen[0]["smoothed_val"]["macro_f1"] >= best["smoothed_val"]["macro_f1"] - 0.005
    assert (tiny_bundle_path / "manifest.json").read_text() == before
    b = brainrt.Bundle.load(dst)
    spec = b.manifest.context_heads["ctx"]
    assert b.manifest.default_head == "logreg" and "validation" in spec.chosen_on and spec.C == chosen[0]["C"]
    assert all(not k.endswith("_test") for r in spec.extra["table"] for k in r)
    assert [[s.source, s.sigma_um] for s in spec.scales] == chosen[0]["scales"]
    assert (out / "REPORT.md").is_file() and (out / "maps.png").is_file()
    res = brainrt.classify_image(str(slice_tif), b, stride=8, head="ctx", smooth=0)
    assert res.probabilities.shape[-1] == len(b.class_names)
    again = (dst / "manifest.json").read_text()
    with pytest.raises(SystemExit) as info:  # an existing bundle is not replaced without --overwrite
        tool.main(["--model", str(tiny_bundle_path), "--image", str(slice_tif), "--mask", str(mask_tif),
                   "-o", str(out), "--write", str(dst)])
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and "already exists" in err and "\n" not in err, err
    assert (dst / "manifest.json").read_text() == again
