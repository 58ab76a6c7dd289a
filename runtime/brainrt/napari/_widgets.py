"""The plugin's dock widgets (magicgui): area map, outliers and clusters, sub-division, training areas from strokes.

Each is a :class:`._job_widget.JobWidget` (bundle, image layer, stride, Run / Cancel, progress, its job run
in a napari thread worker) with its own options and job (:mod:`._work`, :mod:`._train`).
"""

from __future__ import annotations

import functools
import time

import napari
import numpy as np
from magicgui.widgets import CheckBox, ComboBox, FileEdit, FloatSpinBox, LineEdit, PushButton, SpinBox
from napari.layers import Labels, Shapes
from napari.utils.notifications import show_error, show_info

from ..bundle.derive import ClassTable, save_bundle
from ..errors import BrainrtError
from ..heads import CLASSIFIER_HEADS
from . import _work
from ._job_widget import JobWidget
from ._train import FeatureCache, strokes_layer, train_job

HEADS = ("default", *CLASSIFIER_HEADS)
AREA = "(an area of the classifier)"


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
