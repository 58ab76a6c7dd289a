"""The study (``python -m tools.study``) end to end (--quick) on a tiny synthetic slice and bundle, plus its kernels."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

torch = pytest.importorskip("torch")
pytest.importorskip("skimage")

EXPECTED_KEYS = {"setup", "features", "exp1_heads", "exp2_baselines", "exp3_unsupervised", "exp4_noise",
                 "exp5_structure", "exp6_subdivision", "exp7_scale", "timings", "command", "paper", "skipped"}


@pytest.fixture(scope="module")
def study_data(tmp_path_factory):
    """Synthetic slice (background on the left beside 'Ctx', 'WM' next to it): its folder,
    holding img.tif, mask.tif and classes.json."""
    import tifffile

    from brainrt.synth import make_slice

    d = tmp_path_factory.mktemp("study")
    s = make_slice((320, 576), seed=3, n_areas=4)
    image, mask = s.image.copy(), s.mask.copy()
    rng = np.random.default_rng(0)
    image[:, :40] = rng.integers(0, 12, (image.shape[0], 40))  # background beside the first area
    mask[:, :40] = 0
    tifffile.imwrite(d / "img.tif", image)
    tifffile.imwrite(d / "mask.tif", mask)
    cmap = {"classes": {"Ctx": [1], "WM": [2], "VP": [3], "ZI": [4]}, "ignore": [], "unlabeled": [0]}
    (d / "classes.json").write_text(json.dumps(cmap))
    return d


def run_study(d, bundle, out, *extra):
    cmd = [sys.executable, "-m", "tools.study", "--model", str(bundle), "--image", str(d / "img.tif"),
           "--mask", str(d / "mask.tif"), "-o", str(out), "--quick", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)


@pytest.fixture(scope="module")
def study_run(study_data):
    """A 1-epoch 64 px bundle, random ResNet-18 weights in torchvision's format, and one --quick run."""
    from brainrt_train.pipeline import train_and_export
    from tools.study import features as sf

    d = study_data
    train_and_export([(d / "img.tif", d / "mask.tif")], d / "bundle", class_map=str(d / "classes.json"),
                     patch_size=64, n_train=20, n_val=8, n_test=10, epochs=1, lr=1e-3, seed=0)
    sd = sf.build_resnet18().state_dict()
    sd["fc.weight"], sd["fc.bias"] = torch.zeros(1000, 512), torch.zeros(1000)
    torch.save(sd, d / "resnet18.pth")
    out = d / "study"
    proc = run_study(d, d / "bundle", out, "--resnet18-weights", str(d / "resnet18.pth"), "--threads", "2",
                     "--noise-levels", "0", "0.1", "0.3")
    return proc, out


@pytest.fixture(scope="module")
def context_bundle(study_data):
    """A 1-epoch bundle with the context branch: 64 px patches, 256 px footprints (no dense or
    int8 graphs: the runtime's per-patch path, and a fast export)."""
    from brainrt_train.pipeline import train_and_export

    d = study_data
    train_and_export([(d / "img.tif", d / "mask.tif")], d / "ctx-bundle", class_map=str(d / "classes.json"),
                     patch_size=64, n_train=20, n_val=8, n_test=10, epochs=1, lr=1e-3, seed=0, context=4,
                     dense=False, int8=False, smooth_choice=False)
    return d / "ctx-bundle"


def test_quick_run_writes_report_figures_and_results(study_run):
    proc, out = study_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = (out / "REPORT.md").read_text()
    assert report.startswith("# ")
    assert "python -m tools.study --model" in report.split("## Setup")[0]  # the command at the top
    for n in range(1, 8):
        assert f"## {n}." in report
    results = json.loads((out / "results.json").read_text())
    assert EXPECTED_KEYS <= set(results)
    assert "errors" not in results
    assert results["setup"]["split_matches_manifest"] is True
    assert results["setup"]["image_sha256_matches_bundle"] is True
    assert set(results["features"]) == {"trained", "random", "handcrafted", "resnet18"}
    assert results["features"]["resnet18"]["dim"] == 512
    for kind in ("random", "handcrafted", "resnet18"):
        assert set(results["exp2_baselines"][kind]) >= {"logreg", "linsvm", "rbfsvm"}
    assert set(results["exp1_heads"]) >= {"logreg", "linsvm", "rbfsvm", "cnn"}
    assert len(results["exp4_noise"]["accuracy"]["trained"]) == len(results["exp4_noise"]["levels"])
    assert set(results["exp5_structure"]["block_error"]) == {"trained", "random", "handcrafted", "resnet18"}
    e6 = results["exp6_subdivision"]
    assert e6["primary_depth"] == "relative" and e6["cells"] >= 4
    e7 = results["exp7_scale"]
    assert 0.0 <= e7["labeled"]["pixel_accuracy"] <= 1.0 and e7["held_out"]["n_pixels"] > 0
    figs = sorted(out.glob("*.png"))
    names = {f.name for f in figs}
    assert {"exp2_baselines.png", "exp4_noise.png", "exp5_gram_trained.png", "exp5_pca3d.png",
            "exp5_class_similarity.png", "exp6_subdivision.png", "exp7_area_map.png"} <= names
    for f in figs:
        assert f.stat().st_size < 300_000, f
        assert f"]({f.name})" in report
    assert results["skipped"] == []  # ResNet-18 weights were given


def test_handcrafted_kernels_match_skimage():
    from skimage.feature import graycomatrix, graycoprops, local_binary_pattern

    from tools.study import features as sf

    rng = np.random.default_rng(1)
    x8 = (rng.integers(0, 19, (6, 48, 48)) * 255 // 18).astype(np.uint8)  # 19 gray levels, as slice309
    for r in sf.LBP_RADII:
        m = r + 1
        ref = np.stack([local_binary_pattern(p, 8, r, "uniform")[m:-m, m:-m] for p in x8])
        assert (sf.lbp_codes(x8.astype(np.float64), r) == ref).mean() > 0.999
    got = sf.glcm_props(x8 / 255.0)
    q = np.clip((x8 / 255.0 * sf.GLCM_LEVELS).astype(int), 0, sf.GLCM_LEVELS - 1)
    for p, g in zip(q, got):
        G = graycomatrix(p, list(sf.GLCM_DISTANCES), list(sf.GLCM_ANGLES), levels=sf.GLCM_LEVELS, symmetric=True,
                         normed=True)
        ref = np.concatenate([[graycoprops(G, pr)[i].mean() for pr in sf.GLCM_PROPS]
                              for i in range(len(sf.GLCM_DISTANCES))])
        np.testing.assert_allclose(g, ref, rtol=1e-9, atol=1e-12)
    f = sf.handcrafted(x8 / 255.0)
    assert f.shape == (6, len(sf.handcrafted_names())) and np.isfinite(f).all()


def test_gabor_energy_peaks_at_the_grating():
    from tools.study import features as sf

    yy, xx = np.mgrid[0:64, 0:64]
    e = sf.gabor_energy((0.5 + 0.3 * np.sin(2 * np.pi * 0.1 * xx))[None])[0]
    k = sf.GABOR_FREQS.index(0.1) * len(sf.GABOR_THETAS) + sf.GABOR_THETAS.index(0.0)
    assert e.argmax() == k


def test_neighbour_verdict_and_ray():
    from tools.study.exp5_structure import neighbour_verdict
    from tools.study.exp6_subdivision import ray_to_background

    names = ["Ctx", "Str", "VP", "ZI"]
    S = np.array([[1, .9, .2, .3], [.9, 1, .3, .4], [.2, .3, 1, .8], [.3, .4, .8, 1]])
    v = neighbour_verdict(names, S)
    assert v["neighbours_closer"] and v["far"] == {"Ctx-VP": 0.2}
    S2 = S.copy()
    S2[2, 3] = S2[3, 2] = 0.1
    assert not neighbour_verdict(names, S2)["neighbours_closer"]
    assert neighbour_verdict(["A", "B"], np.eye(2)) is None
    tissue = np.ones((20, 30), bool)
    tissue[:, 25:] = False
    d = ray_to_background(tissue, np.array([5.0, 5.0, 5.0]), np.array([10.0, 10.0, 10.0]),
                                 np.array([0.0, 0.0, 0.0]), np.array([1.0, -1.0, 0.0]))
    assert d[0] == 15 and np.isnan(d[1]) and np.isnan(d[2])


def test_quick_run_on_a_context_bundle_feeds_the_trained_network_its_footprints(study_data, context_bundle):
    """The trained features of a context bundle come from each patch's footprint (256 px here),
    the baselines' from the 64 px patch; every experiment gives numbers."""
    out = study_data / "study-ctx"
    proc = run_study(study_data, context_bundle, out, "--threads", "1", "--noise-levels", "0", "0.3")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    results = json.loads((out / "results.json").read_text())
    assert "errors" not in results
    s = results["setup"]
    assert s["footprint"] == 256 and s["context"]["factor"] == 4 and s["patch_size"] == 64
    assert set(results["features"]) == {"trained", "random", "handcrafted"}
    assert results["features"]["trained"]["dim"] == 64
    e1 = results["exp1_heads"]
    assert e1["full_test_split"]  # 10 test patches per class: the bundle's whole test split
    for h in ("logreg", "linsvm", "rbfsvm", "cnn"):
        acc, recorded = e1[h]["test_accuracy"], e1[h]["bundle_manifest_accuracy"]
        assert 0.0 <= acc <= 1.0 and abs(acc - recorded) <= 1.5 / 40  # the trainer's number (one patch of slack)
    assert 0.0 <= results["exp2_baselines"]["trained"]["logreg_train_accuracy"] <= 1.0
    assert np.isfinite(results["exp3_unsupervised"]["trained"]["v_measure"])
    e4 = results["exp4_noise"]["accuracy"]
    assert len(e4["trained"]) == 2 and all(0.0 <= a <= 1.0 for a in e4["trained"])
    assert np.isfinite(results["exp5_structure"]["block_error"]["trained"])
    assert results["exp6_subdivision"]["cells"] > 0 and results["exp7_scale"]["cells"] > 0
    report = (out / "REPORT.md").read_text()
    assert "context branch** (footprint 256 px)" in report.split("## 1.")[0]


def test_trained_features_are_the_runtime_features_of_the_footprint(context_bundle, study_data):
    """``features_of`` cuts what the extractor reads: for a context network, the footprint the
    runtime's per-patch path reads (edges mirrored alike); for the baselines, the patch."""
    from types import SimpleNamespace

    import tifffile

    import brainrt
    from tools.study import features as sf
    from tools.study.common import features_of

    image = tifffile.imread(study_data / "img.tif")
    bundle = brainrt.Bundle.load(context_bundle, threads=1)
    st = SimpleNamespace(image=image, scale=1 / 255, P=64, F=256, extractors={"trained": sf.trained_extractor(bundle),
                         "handcrafted": sf.handcrafted_extractor()}, sides={"trained": 256})
    stride = 32
    grid = brainrt.featurize(image, bundle, stride=stride, method="patch", tissue="all", standardize=False)
    cells = np.array([[0, 0], [3, 7], [grid.shape[0] - 1, grid.shape[1] - 1]])
    centres = cells * stride + stride // 2
    got = features_of(st, "trained", centres)
    np.testing.assert_allclose(got, grid.features[cells[:, 0], cells[:, 1]], atol=1e-4)
    cy, cx = centres[1]
    patch = image[cy - 32 : cy + 32, cx - 32 : cx + 32]
    np.testing.assert_allclose(features_of(st, "handcrafted", centres[1:2])[0],
                               sf.handcrafted(patch[None] / 255.0)[0], rtol=1e-5, atol=1e-6)
