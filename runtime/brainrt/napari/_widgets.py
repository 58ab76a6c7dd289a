"""The plugin's dock widgets (magicgui): area map, outliers and clusters, sub-division.

Each widget runs its job (:mod:`._work`) in a napari thread worker: the job's per-block
callback (:class:`._work.Progress`) moves the progress bar after every block of the
engine and stops the job between two blocks when Cancel is pressed; the viewer stays
responsive. The job's layers are added together when it ends; an error (bad bundle, image
too small, no tissue, ...) is one notification line and adds nothing.
"""

from __future__ import annotations

import functools
import logging
import threading
import time

import napari
import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, FloatSpinBox, Label, LineEdit, ProgressBar
from magicgui.widgets import PushButton, SpinBox
from napari.layers import Image, Labels, Shapes
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QObject, Signal

from ..api import default_model
from ..derive import ClassTable, save_bundle
from ..errors import BrainrtError
from ..heads import CLASSIFIER_HEADS
from ..manifest import PRECISIONS
from ..plan import DEFAULT_PRECISION
from . import _work
from ._train import FeatureCache, strokes_layer, train_job

log = logging.getLogger("brainrt")
HEADS = ("default", *CLASSIFIER_HEADS)
AREA = "(an area of the classifier)"


def _default_bundle():
    try:
        return str(default_model())
    except BrainrtError:
        return ""


class _Relay(QObject):
    """Carries the job's progress from the worker thread to the widget (a queued Qt signal)."""

    fraction = Signal(float)


def _guarded(job):
    """Run ``job``; return ("ok", layers), ("cancelled", None) or ("error", one line). Never raises, so no
    traceback dialog."""
    try:
        layers = job()
    except _work.Cancelled:
        return "cancelled", None
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
        self.precision = ComboBox(choices=("auto",) + PRECISIONS, value=DEFAULT_PRECISION, label="precision")
        self.run_button, self.cancel_button = PushButton(text="Run"), PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(value=0, min=0, max=100, label="progress")
        self.status = Label(value="")
        super().__init__(widgets=[self.bundle, self.image, self.stride, self.precision, *extra, self.run_button, self.cancel_button,
                                  self.progress, self.status])
        self.image.changed.connect(self._bundle_of_image)
        self._bundle_of_image()
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        for event in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed):
            event.connect(self.reset_choices)
        self.worker, self.cancelled = None, threading.Event()
        self.relay = _Relay()
        self.relay.fraction.connect(lambda f: setattr(self.progress, "value", int(round(100 * f))))

    def _bundle_of_image(self, *_):
        """The sample slice's own bundle (synthetic-demo) while the bundle field holds the default."""
        layer = self.image.value
        if layer is not None:
            self.bundle.value = _work.suggested_bundle(layer.metadata, self.bundle.value, _default_bundle())

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

    def job(self, source, **kw):  # pragma: no cover - abstract
        """The job's function of ``source`` with the common options ``kw`` (stride, precision, on_block)."""
        raise NotImplementedError

    def run(self):
        """Start the job in a thread worker (returned, for tests); errors before it starts are notified."""
        if self.worker is not None:
            return self.worker
        self.cancelled = cancelled = threading.Event()
        progress = _work.Progress(report=self.relay.fraction.emit, cancelled=cancelled.is_set)
        try:
            job = self.job(self.source(), stride=self.stride.value, precision=self.precision.value,
                           on_block=progress)
        except BrainrtError as exc:
            show_error(str(exc))
            return None
        self.worker = worker = create_worker(_guarded, job)
        worker.returned.connect(self._finish)
        worker.finished.connect(self._idle)
        self._busy()
        worker.start()
        return worker

    def cancel(self):
        """Stop the running job at its next block (its callback raises :class:`._work.Cancelled`)."""
        if self.worker is not None:
            self.status.value = "cancelling..."
            self.cancelled.set()

    def _busy(self):
        self.run_button.enabled, self.cancel_button.enabled = False, True
        self.progress.value, self.status.value = 0, "running..."

    def _idle(self):
        self.run_button.enabled, self.cancel_button.enabled = True, False
        self.worker = None

    def _finish(self, result):
        status, payload = result
        if status == "cancelled":
            self.status.value = "cancelled"
            return
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

    def job(self, source, **kw):
        head = None if self.head.value == "default" else self.head.value
        smooth = None if self.smooth.value < 0 else float(self.smooth.value)
        return functools.partial(_work.area_map_job, source, self.bundle.value, head=head, smooth=smooth, **kw)


class ClustersWidget(JobWidget):
    """Outliers and clusters: the GMM cluster map and one log-likelihood map per area."""

    title = "clusters"

    def job(self, source, **kw):
        return functools.partial(_work.clusters_job, source, self.bundle.value, **kw)


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

    def job(self, source, **kw):
        layer, area = self.region.value, self.area.value.strip() or None
        kw.update(k=self.k.value, interior=self.interior.value)
        if layer is None:
            if area is None:
                raise BrainrtError("name the area to sub-divide, or choose a Shapes or Labels region")
            return functools.partial(_work.subdivide_job, source, self.bundle.value, region=None, area=area, **kw)
        region = self._layer_region(layer, area, source)
        return functools.partial(_work.subdivide_job, source, self.bundle.value, region=region, **kw)

    def _layer_region(self, layer, area, source):
        scale, translate = np.asarray(layer.scale[-2:]), np.asarray(layer.translate[-2:])
        if isinstance(layer, Shapes):
            if not len(layer.data):
                raise BrainrtError(f"{layer.name}: draw a shape first")
            return _work.layer_region("shapes", list(zip(layer.shape_type, layer.data)), scale, translate)
        value = self.value.value
        names = layer.metadata.get("brainrt_names")
        if area is not None and names:  # an area of a brainrt area map (its value: the area's mask code)
            value = _work.area_value(layer.metadata, area)
            if value is None:
                raise BrainrtError(f"{layer.name}: no area {area!r}; its areas are {', '.join(names)}")
        return _work.layer_region("labels", layer.data, scale, translate, value=value, z=source.z)


class TrainAreasWidget(JobWidget):
    """Train areas: paint strokes in a Labels layer over the image (values = class codes), Fit, correct, refit.

    The image's features are computed at the first Fit and cached (:class:`._train.FeatureCache`); each
    refit reads the stroke cells from the cache, so the map comes back in seconds. Adds (then updates) the
    map and an uncertainty layer (1 - margin between the two likeliest areas: paint where it is bright).
    Save bundle writes the fitted heads as a bundle derived from the parent (as ``brainrt fit`` does).
    """

    title = "train areas"

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        self.viewer = napari_viewer  # the strokes choices list its layers
        self.strokes = ComboBox(choices=self._labels, label="strokes")
        self.class_map = FileEdit(mode="r", value="", filter="*.json", label="class map (JSON, optional)")
        self.new_button = PushButton(text="New strokes layer")
        self.save_path = FileEdit(mode="d", value="", label="bundle folder to save")
        self.save_button = PushButton(text="Save bundle", enabled=False)
        self.cache, self.state, self.t0 = FeatureCache(), {}, None
        super().__init__(napari_viewer, extra=[self.strokes, self.class_map, self.new_button])
        self.extend([self.save_path, self.save_button])
        self.run_button.text = "Fit"
        self.new_button.changed.connect(self.add_strokes_layer)
        self.save_button.changed.connect(self.save)

    def _labels(self, widget=None):
        return [(layer.name, layer) for layer in self.viewer.layers
                if isinstance(layer, Labels) and not layer.metadata.get("brainrt_names")]

    def _class_map(self):
        value = str(self.class_map.value or "").strip()
        return None if value in ("", ".") else value

    def add_strokes_layer(self):
        """An empty strokes layer over the chosen image, its values and colours those of the class map."""
        try:
            source, layer = self.source(), self.image.value
            table = ClassTable.resolve(self._class_map(), _work.load_bundle(self.bundle.value))
            data, kw, _ = strokes_layer(source, table, f"strokes ({layer.name})", layer.data.shape)
        except BrainrtError as exc:
            show_error(str(exc))
            return None
        added = self.viewer.add_labels(data, **kw)
        added.mode, added.brush_size, added.selected_label = "paint", 8, table.codes[0][0]
        self.reset_choices()
        self.strokes.value = added
        return added

    def job(self, source, **kw):
        layer = self.strokes.value
        if layer is None:
            raise BrainrtError("add a strokes layer (New strokes layer) and paint strokes on the image")
        data = layer.data
        strokes = np.asarray(data[source.z] if source.z is not None and np.ndim(data) == 3 else data)
        return functools.partial(train_job, source, strokes, self.bundle.value, cache=self.cache, state=self.state,
                                 class_map=self._class_map(), strokes_name=layer.name, **kw)

    def run(self):
        self.t0 = time.perf_counter()
        return super().run()

    def _finish(self, result):
        """Update the map layers of an earlier fit in place (no pile of layers), add the new ones."""
        status, payload = result
        if status == "ok":
            new = []
            for data, kwargs, kind in payload:
                if kwargs["name"] in self.viewer.layers:
                    self.viewer.layers[kwargs["name"]].data = data
                else:
                    new.append((data, kwargs, kind))
            result = (status, new)
        super()._finish(result)
        if status == "ok":
            fitted, secs = self.state["fitted"], self.state["seconds"]
            cv = fitted.record["cv"]
            score = f"CV {cv['balanced_accuracy'][str(cv['C'])]:.2f}" if cv["folds"] else "no CV (< 2 strokes/class)"
            self.status.value = (f"map in {time.perf_counter() - self.t0:.1f} s "
                                 f"({'features cached' if self.state['cached'] else 'features computed'}); {score}")
            self.save_button.enabled = True

    def save(self):
        """Write the last fit as a derived bundle in the chosen folder."""
        out = str(self.save_path.value or "").strip()
        if "fitted" not in self.state or out in ("", "."):
            show_error("fit first, then choose a folder for the bundle")
            return None
        try:
            path = save_bundle(self.state["fitted"], self.state["bundle"], out)
        except BrainrtError as exc:
            show_error(str(exc))
            return None
        show_info(f"train areas: saved the bundle {path}")
        return path
