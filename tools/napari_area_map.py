"""Run the napari Area map widget on a slice as a user would, time it, and save a screenshot.

    python tools/napari_area_map.py                                   # the demo slice, synthetic-demo bundle
    python tools/napari_area_map.py --image ../shared/data/slice309.tif --stride 16
    python tools/napari_area_map.py --screenshot docs/napari-area-map.png

Times the widget from Run to the layers being in the viewer (bundle load, plan,
featurize in a thread worker, heads, layers added). Without a display it starts a
virtual one (Xvfb, through pyvirtualdisplay; see the README's napari section).
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _display():
    if os.environ.get("DISPLAY"):
        return None
    from pyvirtualdisplay import Display

    return Display(visible=False, size=(1600, 1000)).start()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image", default=None, help="Slice TIFF (default: the demo slice).")
    ap.add_argument("--model", default=None, help="Bundle (default: synthetic-demo for the demo, else the shipped one).")
    ap.add_argument("--stride", type=int, default=16)
    ap.add_argument("--screenshot", default=None, help="Save viewer.screenshot here (PNG).")
    args = ap.parse_args(argv)
    display = _display()
    try:
        return _run(args)
    finally:
        if display is not None:
            display.stop()


def _run(args):
    import napari
    from qtpy.QtWidgets import QApplication

    import brainrt
    from brainrt.napari._sample import demo_slice
    from brainrt.napari._widgets import AreaMapWidget

    warnings.filterwarnings("ignore", message=".*PyQt5.*")  # napari 0.9's notice would cover the canvas
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1500, 900)
    if args.image:
        image, px = brainrt.read_tiff(args.image)
        px = px or brainrt.engine.plan.DEFAULT_PIXEL_SIZE_UM
        layer = viewer.add_image(image, name=Path(args.image).stem, scale=(px, px))
        model = args.model or brainrt.api.default_model()
    else:
        for data, kw, kind in demo_slice():
            getattr(viewer, f"add_{kind}")(data, **kw)
        layer, model = viewer.layers["brainrt demo slice"], args.model or ROOT / "models" / "synthetic-demo"
    w = AreaMapWidget(viewer)
    viewer.window.add_dock_widget(w, name="brainrt: Area map")
    w.reset_choices()
    w.bundle.value, w.image.value, w.stride.value = model, layer, args.stride
    app = QApplication.instance()
    t0 = time.perf_counter()
    w.run()
    while w.worker is not None:
        app.processEvents()
        time.sleep(0.01)
    dt = time.perf_counter() - t0
    added = [lay.name for lay in viewer.layers if lay.name.startswith(("areas", "p("))]
    print(f"area map of {layer.name} {layer.data.shape} at stride {args.stride} with {Path(model).name}: "
          f"{dt:.1f} s from Run to {len(added)} layers in the viewer ({w.status.value})")
    if args.screenshot:
        _screenshot(viewer, app, added, args.screenshot)
    viewer.close()
    return 0


def _screenshot(viewer, app, added, path):
    """The first added layer alone, the whole slice in view, saved as a PNG at ``path``."""
    for name in added[1:]:
        viewer.layers[name].visible = False
    viewer.layers.selection.active = viewer.layers[added[0]]
    viewer.reset_view()
    app.processEvents()
    viewer.screenshot(path, canvas_only=False, flash=False)
    print(f"wrote {path}")


if __name__ == "__main__":
    raise SystemExit(main())
