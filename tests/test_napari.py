"""The napari plugin (issue 12): manifest, sample data, reader, and each widget in a real viewer.

Widget tests use napari's ``make_napari_viewer`` and pytest-qt on the demo slice with the
shipped synthetic-demo bundle. napari's canvas needs OpenGL: on a headless machine install
``xvfb`` and ``libgl1-mesa-dri`` (and the xcb libraries Qt asks for) with apt-get and the
pip package ``pytest-xvfb``, which starts a virtual display for the run. Without a display
the viewer tests skip and say so; ``QT_QPA_PLATFORM=offscreen`` is not enough (vispy gets
no OpenGL context).
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from conftest import ROOT

napari = pytest.importorskip("napari", reason="napari is not installed (pip install -e '.[napari]')")
pytest.importorskip("pytestqt", reason="pytest-qt is not installed (pip install -e '.[napari]')")

DEMO_BUNDLE = ROOT / "models" / "synthetic-demo"
NO_DISPLAY = ("no display for napari's OpenGL canvas: install xvfb and libgl1-mesa-dri (plus the xcb libraries, "
              "see README) with apt-get and pytest-xvfb with pip, or run under a desktop session")
needs_display = pytest.mark.skipif(not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"),
                                   reason=NO_DISPLAY)
PX = 1.17


def test_base_import_needs_no_qt_or_napari():
    code = ("import sys, brainrt, brainrt.cli, brainrt.api; "
            "bad = [m for m in ('napari', 'PyQt5', 'qtpy', 'magicgui', 'brainrt.napari') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_jobs_report_progress_and_stop_at_cancel(synthetic_slice, tiny_bundle_path):
    """The jobs run the library's loop with a per-block callback: progress after every block, Cancel at the next."""
    from brainrt.napari import _work

    source = _work.Source(synthetic_slice.image[:192], (1.0, 1.0), (0.0, 0.0), "s")
    seen = []  # stride 7: the per-patch path (no dense graph within 5 steps), blocks of 12 grid rows
    layers = _work.clusters_job(source, tiny_bundle_path, stride=7, on_block=_work.Progress(report=seen.append))
    assert layers and len(seen) > 1 and seen == sorted(seen) and seen[-1] == 1.0
    calls = []
    cancel = _work.Progress(report=calls.append, cancelled=lambda: len(calls) >= 1)
    with pytest.raises(_work.Cancelled):
        _work.area_map_job(source, tiny_bundle_path, stride=7, on_block=cancel)
    assert len(calls) == 1  # stopped at the block after the first report
    bundle = _work.load_bundle(tiny_bundle_path)
    if "int8" in bundle.manifest.precisions:  # the plugin passes the precision on (it used to drop it)
        assert _work.featurize(source, bundle, stride=16, precision="int8").stats["precision"] == "int8"


def test_napari_finds_the_plugin():
    from npe2 import PluginManager

    pm = PluginManager()
    pm.discover()
    manifest = pm.get_manifest("brainrt")
    assert {w.display_name for w in manifest.contributions.widgets} == {"Area map", "Outliers and clusters",
                                                                         "Sub-divide", "Train areas"}
    assert [s.key for s in manifest.contributions.sample_data] == ["demo"]
    assert manifest.contributions.readers[0].accepts_directories


def test_sample_data_is_the_demo_slice_with_truth():
    from brainrt.napari._sample import demo_slice

    (image, ikw, itype), (truth, tkw, ttype) = demo_slice()
    assert itype == "image" and ttype == "labels" and image.shape == truth.shape == (768, 1152)
    assert ikw["scale"] == tkw["scale"] == (PX, PX)
    assert "sparse-large" in tkw["features"]["name"]


def test_reader_opens_feature_zarr(tmp_path):
    import brainrt
    from brainrt.napari._reader import get_reader
    from brainrt.napari._sample import demo_slice

    bundle = brainrt.Bundle.load(DEMO_BUNDLE)
    image = demo_slice()[0][0]
    out = tmp_path / "demo.features.zarr"
    grid = brainrt.featurize(image, bundle, stride=32, out=out)
    assert get_reader(str(tmp_path)) is None and get_reader(str(tmp_path / "nothing.zarr")) is None
    layers = get_reader(str(out))(str(out))
    (feats, fkw, _), (rgb, rkw, _) = layers
    assert feats.shape == (bundle.n_features, *grid.shape) and fkw["scale"] == (1.0, 32 * PX, 32 * PX)
    assert rgb.shape == (*grid.shape, 3) and rkw["rgb"] and rkw["scale"] == (32 * PX, 32 * PX)
    assert rgb[~grid.valid].max() == 0 and rgb[grid.valid].max() > 0.5


# --------------------------------------------------------------------------- widgets in a viewer
@pytest.fixture
def viewer(make_napari_viewer):
    from brainrt.napari._sample import demo_slice

    v = make_napari_viewer()
    for data, kw, kind in demo_slice():
        getattr(v, f"add_{kind}")(data, **kw)
    return v


@pytest.fixture
def notes():
    """Notifications shown during the test (message strings)."""
    from napari.utils.notifications import notification_manager

    seen = []

    def keep(event):
        seen.append(str(event.message if hasattr(event, "message") else event))

    notification_manager.notification_ready.connect(keep)
    yield seen
    notification_manager.notification_ready.disconnect(keep)


def _widget(cls, viewer, *, image="brainrt demo slice", bundle=DEMO_BUNDLE, stride=16):
    w = cls(viewer)
    viewer.window.add_dock_widget(w)
    w.reset_choices()
    w.bundle.value = bundle
    w.image.value = viewer.layers[image]
    w.stride.value = stride
    return w


def _run(qtbot, w, timeout=120_000):
    assert w.run() is not None
    qtbot.waitUntil(lambda: w.worker is None, timeout=timeout)  # the widget is idle again (finished)


@needs_display
def test_area_map_adds_labels_and_probabilities_at_the_layer_scale(viewer, qtbot):
    from napari.layers import Labels

    from brainrt.napari._widgets import AreaMapWidget

    w = _widget(AreaMapWidget, viewer)
    n0 = len(viewer.layers)
    _run(qtbot, w)
    areas = viewer.layers["areas (brainrt demo slice)"]
    names = areas.metadata["brainrt_names"]
    assert isinstance(areas, Labels) and areas.data.shape == (768, 1152)
    assert tuple(areas.scale) == (PX, PX)
    assert list(areas.features["name"]) == ["none", *names]  # hovering shows the area's name
    probs = [viewer.layers[f"p({n}) (brainrt demo slice)"] for n in names]
    assert len(viewer.layers) == n0 + 1 + len(names)
    for p in probs:
        assert p.data.shape == (48, 72) and np.allclose(p.scale, (16 * PX, 16 * PX))
        assert np.allclose(p.translate, (7.5 * PX, 7.5 * PX))  # cell (0, 0) covers pixels 0..15
    # the map is right on the demo slice most of the time (truth codes 1..4 = class index + 1)
    truth = viewer.layers["brainrt demo truth"].data
    sel = (truth > 0) & (areas.data > 0)
    assert (areas.data[sel] == truth[sel]).mean() > 0.6
    assert w.progress.value == 100


@needs_display
def test_cancel_leaves_no_layer(viewer, qtbot, notes):
    from brainrt.napari._widgets import AreaMapWidget

    w = _widget(AreaMapWidget, viewer, stride=4)
    n0 = len(viewer.layers)
    w.relay.fraction.connect(lambda f: w.cancel())  # cancel at the first progress report
    assert w.run() is not None
    qtbot.waitUntil(lambda: w.worker is None, timeout=60_000)
    assert len(viewer.layers) == n0 and w.status.value == "cancelled" and w.run_button.enabled
    assert 0 < w.progress.value < 100  # it stopped between two blocks


@pytest.mark.parametrize("case", ["bad bundle", "image too small", "no tissue"])
@needs_display
def test_errors_notify_one_line_and_add_nothing(case, viewer, qtbot, notes, tmp_path):
    from brainrt.napari._widgets import AreaMapWidget

    if case == "image too small":
        viewer.add_image(np.full((40, 50), 120, np.uint8), name="tiny")
    if case == "no tissue":
        viewer.add_image(np.zeros((300, 300), np.uint8), name="empty")
    image = {"image too small": "tiny", "no tissue": "empty"}.get(case, "brainrt demo slice")
    bundle = tmp_path if case == "bad bundle" else DEMO_BUNDLE
    w = _widget(AreaMapWidget, viewer, image=image, bundle=bundle)
    n0 = len(viewer.layers)
    _run(qtbot, w)
    qtbot.waitUntil(lambda: bool(notes), timeout=5000)
    expected = {"bad bundle": "not a model bundle", "image too small": "smaller than one",
                "no tissue": "no tissue found"}[case]
    assert any(expected in n for n in notes), notes
    assert all("\n" not in n and "Traceback" not in n for n in notes), notes
    assert len(viewer.layers) == n0 and w.status.value == "failed"


@needs_display
def test_clusters_widget(viewer, qtbot):
    import brainrt
    from brainrt.napari._widgets import ClustersWidget

    w = _widget(ClustersWidget, viewer, stride=32)
    _run(qtbot, w)
    clusters = viewer.layers["clusters (brainrt demo slice)"]
    assert clusters.data.shape == (768, 1152) and tuple(clusters.scale) == (PX, PX)
    for name in brainrt.Bundle.load(DEMO_BUNDLE).class_names:
        ll = viewer.layers[f"loglik({name}) (brainrt demo slice)"]
        assert ll.data.shape == (24, 36) and np.allclose(ll.scale, (32 * PX, 32 * PX))


@needs_display
def test_subdivide_inside_a_drawn_shape(viewer, qtbot):
    from brainrt.napari._widgets import SubdivideWidget

    # a rectangle over pixels 100..600 x 100..700, drawn in world units (um) like the image
    viewer.add_shapes([np.array([[100, 100], [100, 700], [600, 700], [600, 100]]) * PX], shape_type="rectangle",
                      name="roi")
    w = _widget(SubdivideWidget, viewer)
    w.region.value = viewer.layers["roi"]
    w.k.value, w.interior.value = 3, False
    _run(qtbot, w)
    sub = viewer.layers["subdivide (brainrt demo slice)"]
    inside = sub.data > 0
    assert tuple(sub.scale) == (PX, PX) and set(np.unique(sub.data)) == {0, 1, 2, 3}
    ys, xs = np.nonzero(inside)
    assert ys.min() >= 100 - 16 and ys.max() < 600 + 16 and xs.min() >= 100 - 16 and xs.max() < 700 + 16


@needs_display
def test_subdivide_one_area_of_an_area_map(viewer, qtbot):
    from brainrt.napari._widgets import AreaMapWidget, SubdivideWidget

    _run(qtbot, _widget(AreaMapWidget, viewer))
    areas = viewer.layers["areas (brainrt demo slice)"]
    name = areas.metadata["brainrt_names"][1]
    w = _widget(SubdivideWidget, viewer)
    w.region.value, w.area.value, w.k.value = areas, name, 3
    _run(qtbot, w)
    sub = viewer.layers["subdivide (brainrt demo slice)"].data
    assert (sub > 0).any() and np.all(areas.data[sub > 0] == 2)  # only inside that area


@needs_display
def test_a_3d_layer_follows_the_viewer_z(make_napari_viewer):
    from brainrt.napari._widgets import AreaMapWidget

    viewer = make_napari_viewer()
    stack = np.stack([np.full((200, 200), v, np.uint8) for v in (10, 20, 30)])
    viewer.add_image(stack, name="stack", scale=(5.0, PX, PX))
    viewer.dims.set_current_step(0, 2)
    w = AreaMapWidget(viewer)
    w.reset_choices()
    w.image.value = viewer.layers["stack"]
    src = w.source()
    assert src.z == 2 and src.image.shape == (200, 200) and src.image[0, 0] == 30
    assert src.scale == (PX, PX) and src.label("areas") == "areas (stack, z=2)"


@needs_display
def test_plugin_contributions_load_in_napari(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("brainrt", "demo")
    assert [layer.name for layer in viewer.layers] == ["brainrt demo slice", "brainrt demo truth"]
    for name in ("Area map", "Outliers and clusters", "Sub-divide", "Train areas"):
        dock, widget = viewer.window.add_plugin_dock_widget("brainrt", name)
        widget.reset_choices()
        assert widget.image.value is viewer.layers["brainrt demo slice"]


# --------------------------------------------------------------------------- train areas (issue 20)
def _demo_strokes(truth, n=3, seed=0):
    from brainrt.synth import draw_strokes

    return draw_strokes(truth, n, length=120, margin=48, seed=seed)


def _drain(job, **kw):
    """Run a job without Qt with a progress callback; return (progress reports, its value)."""
    from brainrt.napari._work import Progress

    reports = []
    return reports, job(**kw, on_block=Progress(report=reports.append))


def test_train_job_featurizes_once_and_maps_the_known_areas():
    from brainrt.napari._sample import demo_slice
    from brainrt.napari._train import FeatureCache, train_job
    from brainrt.napari._work import Source

    (image, ikw, _), (truth, _, _) = demo_slice()
    src = Source(image, ikw["scale"], (0.0, 0.0), "demo")
    cache, state = FeatureCache(), {}
    strokes = _demo_strokes(truth)
    reports, layers = _drain(train_job, source=src, strokes=strokes, bundle_path=DEMO_BUNDLE, cache=cache, state=state)
    assert reports and not state["cached"] and cache.nbytes() == 48 * 72 * 64 * 4
    (areas, akw, kind), (doubt, dkw, _) = layers
    assert kind == "labels" and areas.shape == truth.shape and doubt.shape == (48, 72)
    sel = (truth > 0) & (areas > 0)
    assert (areas[sel] == truth[sel]).mean() > 0.85  # class index + 1 = the demo's codes
    assert np.nanmax(doubt) <= 1.0 and np.nanmin(doubt) >= 0.0
    more = np.where(strokes > 0, strokes, _demo_strokes(truth, 1, seed=9))  # corrections: one more per area
    reports, _ = _drain(train_job, source=src, strokes=more, bundle_path=DEMO_BUNDLE, cache=cache, state=state)
    assert state["cached"] and reports == []  # no featurizing: straight to the fit
    assert sum(c["strokes"] for c in state["fitted"].record["counts"].values()) > 12


def test_train_job_errors_are_one_line():
    from brainrt.napari._sample import demo_slice
    from brainrt.napari._train import FeatureCache, train_job
    from brainrt.napari._work import Source

    src = Source(demo_slice()[0][0][:300, :300], (PX, PX), (0.0, 0.0), "crop")
    for strokes, expected in [(np.zeros((300, 299), np.uint8), "differs from the image's"),
                              (np.zeros((300, 300), np.uint8), "no strokes yet"),
                              (np.full((300, 300), 9, np.uint8), r"holds codes \[9\] that are not in the class map")]:
        with pytest.raises(brainrt_error(), match=expected):
            _drain(train_job, source=src, strokes=strokes, bundle_path=DEMO_BUNDLE, cache=FeatureCache(), state={},
                       stride=32)


def brainrt_error():
    from brainrt.errors import BrainrtError

    return BrainrtError


@needs_display
def test_train_areas_widget_paint_fit_refit_save(viewer, qtbot, tmp_path):
    import brainrt
    from brainrt.napari._widgets import TrainAreasWidget

    w = _widget(TrainAreasWidget, viewer)
    layer = w.add_strokes_layer()
    assert layer is w.strokes.value and layer.data.shape == (768, 1152) and tuple(layer.scale) == (PX, PX)
    truth = viewer.layers["brainrt demo truth"].data
    layer.data = _demo_strokes(truth)  # what a user paints, in the class codes
    _run(qtbot, w)
    areas = viewer.layers["trained areas (brainrt demo slice)"]
    assert "features computed" in w.status.value and w.save_button.enabled
    sel = (truth > 0) & (areas.data > 0)
    assert (areas.data[sel] == truth[sel]).mean() > 0.85
    n = len(viewer.layers)
    layer.data = np.where(layer.data > 0, layer.data, _demo_strokes(truth, 1, seed=9))  # corrections
    _run(qtbot, w)
    assert len(viewer.layers) == n and "features cached" in w.status.value  # layers updated, not added
    w.save_path.value = tmp_path / "mine"
    saved = w.save()
    assert brainrt.Bundle.load(saved).manifest.extra["fit"]["strokes"][0]["image"] == "brainrt demo slice"


@needs_display
def test_train_areas_cancel_leaves_no_layer(viewer, qtbot):
    from brainrt.napari._widgets import TrainAreasWidget

    w = _widget(TrainAreasWidget, viewer, stride=4)
    w.add_strokes_layer().data = _demo_strokes(viewer.layers["brainrt demo truth"].data)
    n0 = len(viewer.layers)
    w.relay.fraction.connect(lambda f: w.cancel())  # cancel at the first progress report
    assert w.run() is not None
    qtbot.waitUntil(lambda: w.worker is None, timeout=60_000)
    assert len(viewer.layers) == n0 and w.status.value == "cancelled"


VOLUME_PX, VOLUME_STRIDE = 2.0, 16


@pytest.fixture(scope="module")
def volume_output(tmp_path_factory, tiny_bundle):
    from dask.distributed import Client

    from brainrt.synth import make_volume
    from brainrt.volumes import process_volume

    d = tmp_path_factory.mktemp("omezarr")
    tifffile.imwrite(d / "s.tif", make_volume((2, 192, 256), seed=3).image, photometric="minisblack")
    with Client(processes=False, n_workers=1, threads_per_worker=1) as client:
        process_volume(str(d / "s.tif"), tiny_bundle, str(d / "o.ome.zarr"), task="classify", client=client,
                       stride=VOLUME_STRIDE, pixel_size_um=VOLUME_PX)
    return d / "o.ome.zarr"


def test_napari_ome_zarr_opens_the_output(volume_output, tiny_bundle):
    reader = pytest.importorskip("napari_ome_zarr._reader", reason="napari-ome-zarr (the [napari] extra) is missing")
    layers = reader.napari_get_reader(str(volume_output))(str(volume_output))
    kinds = [kind for _, _, kind in layers]
    assert kinds == ["image", "labels"], kinds
    (_, img, _), (_, lab, _) = layers
    assert img["channel_axis"] == 0
    assert [n.split(": ")[-1] for n in img["name"]] == [*tiny_bundle.class_names, "margin", "entropy"]
    np.testing.assert_allclose(img["scale"], [VOLUME_PX, VOLUME_PX * VOLUME_STRIDE, VOLUME_PX * VOLUME_STRIDE])
    np.testing.assert_allclose(lab["scale"], [VOLUME_PX, VOLUME_PX, VOLUME_PX])
    np.testing.assert_allclose(np.asarray(lab["affine"].translate)[-2:], [0.0, 0.0])
    # The half-cell offset (cell (i, j) covers pixels i*s .. i*s + s - 1) is each level's translation after its
    # scale, as NGFF 0.5 requires; napari-ome-zarr 0.10 applies only the first transform of the first level
    # (ome/napari-ome-zarr#73), so it is read from the metadata here, not from the layer.
    import zarr

    half = (VOLUME_STRIDE - 1) / 2 * VOLUME_PX
    ds = zarr.open_group(str(volume_output), mode="r").attrs["ome"]["multiscales"][0]["datasets"]
    assert all(d["coordinateTransformations"][1]["translation"][-2:] == pytest.approx([half, half]) for d in ds)


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
