"""The plugin's dock widgets (magicgui): area map, outliers and clusters, sub-division.

Each widget runs its job (:mod:`._work`) in a napari thread worker: a progress bar follows
the engine's blocks, Cancel stops the job between two blocks, and the viewer stays
responsive. The job's layers are added together when it ends; an error (bad bundle, image
too small, no tissue, ...) is one notification line and adds nothing.
"""

from __future__ import annotations

import logging

import napari
import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, FloatSpinBox, Label, LineEdit, ProgressBar
from magicgui.widgets import PushButton, SpinBox
from napari.layers import Image, Labels, Shapes
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info

from ..errors import BrainrtError
from . import _work

log = logging.getLogger("brainrt")
HEADS = ("default", "logreg", "linsvm", "rbfsvm", "cnn")
AREA = "(an area of the classifier)"


def _default_bundle():
    try:
        from ..api import default_model

        return str(default_model())
    except BrainrtError:
        return ""


def _guarded(job):
    """Run ``job`` (a generator); return ("ok", layers) or ("error", one line). Never raises, so no traceback dialog."""
    try:
        layers = yield from job
    except BrainrtError as exc:
        return "error", str(exc)
    except MemoryError:
        return "error", "out of memory: use a larger stride or a smaller image"
    except Exception as exc:  # an unexpected failure is still one line in the viewer; the log has the traceback
        log.exception("brainrt job failed")
        text = str(exc).strip().splitlines()
        return "error", f"{type(exc).__name__}: {text[0] if text else 'no message'}"
    return "ok", layers


class JobWidget(Container):
    """Bundle, image layer and stride, then Run / Cancel and a progress bar; subclasses add options and a job."""

    title = "brainrt"

    def __init__(self, napari_viewer: napari.viewer.Viewer, extra=()):
        self.viewer = napari_viewer
        self.bundle = FileEdit(mode="d", value=_default_bundle(), label="bundle")
        self.image = ComboBox(choices=self._images, label="image")
        self.stride = SpinBox(value=16, min=2, max=256, label="stride (px)")
        self.run_button, self.cancel_button = PushButton(text="Run"), PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(value=0, min=0, max=100, label="progress")
        self.status = Label(value="")
        super().__init__(widgets=[self.bundle, self.image, self.stride, *extra, self.run_button, self.cancel_button,
                                  self.progress, self.status])
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        for event in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed):
            event.connect(self.reset_choices)
        self.worker = None

    def _images(self, widget=None):
        return [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, Image) and not layer.rgb]

    def source(self):
        """The image layer's current 2D slice (a 3D layer follows the viewer's z) and its placement."""
        layer = self.image.value
        if layer is None:
            raise BrainrtError("choose a grayscale image layer")
        data = layer.data[0] if layer.multiscale else layer.data
        z = None
        if data.ndim == 3:
            z = int(np.clip(np.rint(layer.world_to_data(self.viewer.dims.point)[0]), 0, data.shape[0] - 1))
            data = data[z]
        elif data.ndim != 2:
            raise BrainrtError(f"{layer.name}: expected a 2D or 3D grayscale layer, got shape {data.shape}")
        return _work.Source(np.asarray(data), tuple(layer.scale[-2:]), tuple(layer.translate[-2:]), layer.name, z)

    def job(self, source):  # pragma: no cover - abstract
        raise NotImplementedError

    def run(self):
        """Start the job in a thread worker (returned, for tests); errors before it starts are notified."""
        if self.worker is not None:
            return self.worker
        try:
            job = self.job(self.source())
        except BrainrtError as exc:
            show_error(str(exc))
            return None
        self.worker = worker = create_worker(_guarded, job)
        worker.yielded.connect(lambda f: setattr(self.progress, "value", int(round(100 * f))))
        worker.returned.connect(self._finish)
        worker.aborted.connect(lambda: setattr(self.status, "value", "cancelled"))
        worker.finished.connect(self._idle)
        self._busy()
        worker.start()
        return worker

    def cancel(self):
        if self.worker is not None:
            self.status.value = "cancelling..."
            self.worker.quit()

    def _busy(self):
        self.run_button.enabled, self.cancel_button.enabled = False, True
        self.progress.value, self.status.value = 0, "running..."

    def _idle(self):
        self.run_button.enabled, self.cancel_button.enabled = True, False
        self.worker = None

    def _finish(self, result):
        status, payload = result
        if status == "error":
            self.status.value = "failed"
            show_error(payload)
            return
        added = []
        try:
            for data, kwargs, kind in payload:
                added.append(getattr(self.viewer, f"add_{kind}")(data, **kwargs))
        except Exception as exc:  # nothing half-added: take back what was added
            for layer in added:
                self.viewer.layers.remove(layer)
            show_error(f"{self.title}: could not add the layers ({type(exc).__name__}: {exc})")
            return
        self.progress.value, self.status.value = 100, f"added {len(added)} layers"
        show_info(f"{self.title}: added {', '.join(layer.name for layer in added[:3])}"
                  f"{' ...' if len(added) > 3 else ''}")


class AreaMapWidget(JobWidget):
    """Area map: class labels (hover shows the area's name) and per-class probabilities."""

    title = "area map"

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        self.head = ComboBox(choices=HEADS, value="default", label="head")
        self.smooth = FloatSpinBox(value=-1.0, min=-1.0, max=10000.0, step=5.0, label="smoothing (um, -1: bundle's)")
        super().__init__(napari_viewer, extra=[self.head, self.smooth])

    def job(self, source):
        head = None if self.head.value == "default" else self.head.value
        smooth = None if self.smooth.value < 0 else float(self.smooth.value)
        return _work.area_map_job(source, self.bundle.value, stride=self.stride.value, head=head, smooth=smooth)


class ClustersWidget(JobWidget):
    """Outliers and clusters: the GMM cluster map and one log-likelihood map per area."""

    title = "clusters"

    def job(self, source):
        return _work.clusters_job(source, self.bundle.value, stride=self.stride.value)


class SubdivideWidget(JobWidget):
    """PCA + KMeans inside a Shapes or Labels region, or inside one area (of the classifier or an area map)."""

    title = "sub-divide"

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        self.viewer = napari_viewer  # the region choices list its layers
        self.region = ComboBox(choices=self._regions, label="region")
        self.area = LineEdit(value="", label="area name")
        self.value = SpinBox(value=0, min=0, max=65535, label="label value (0: any)")
        self.k = SpinBox(value=4, min=2, max=32, label="clusters k")
        self.interior = CheckBox(value=True, text="only patches inside the region")
        super().__init__(napari_viewer, extra=[self.region, self.area, self.value, self.k, self.interior])

    def _regions(self, widget=None):
        layers = [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, (Shapes, Labels))]
        return [(AREA, None), *layers]

    def job(self, source):
        layer, area = self.region.value, self.area.value.strip() or None
        kw = dict(stride=self.stride.value, k=self.k.value, interior=self.interior.value)
        if layer is None:
            if area is None:
                raise BrainrtError("name the area to sub-divide, or choose a Shapes or Labels region")
            return _work.subdivide_job(source, self.bundle.value, region=None, area=area, **kw)
        return _work.subdivide_job(source, self.bundle.value, region=self._layer_region(layer, area, source), **kw)

    def _layer_region(self, layer, area, source):
        scale, translate = np.asarray(layer.scale[-2:]), np.asarray(layer.translate[-2:])
        if isinstance(layer, Shapes):
            if not len(layer.data):
                raise BrainrtError(f"{layer.name}: draw a shape first")
            return _work.layer_region("shapes", list(zip(layer.shape_type, layer.data)), scale, translate)
        value = self.value.value
        names = layer.metadata.get("brainrt_names")
        if area is not None and names:  # an area of a brainrt area map
            if area not in names:
                raise BrainrtError(f"{layer.name}: no area {area!r}; its areas are {', '.join(names)}")
            value = names.index(area) + 1
        return _work.layer_region("labels", layer.data, scale, translate, value=value, z=source.z)
