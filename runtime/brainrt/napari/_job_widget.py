"""The base of the plugin's dock widgets (magicgui): bundle, image layer, stride and precision, Run / Cancel
and a progress bar (:class:`JobWidget`; the widgets themselves are :mod:`._widgets`).

A widget runs its job (:mod:`._work`) in a napari thread worker: the job's per-block callback
(:class:`._work.Progress`) moves the progress bar after every block of the engine and stops the job
between two blocks when Cancel is pressed; the viewer stays responsive. The job's layers are added
together when it ends; an error (bad bundle, image too small, no tissue, ...) is one notification line
and adds nothing.
"""

from __future__ import annotations

import logging
import threading

import napari
import numpy as np
from magicgui.widgets import ComboBox, Container, FileEdit, Label, ProgressBar, PushButton, SpinBox
from napari.layers import Image
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QObject, Signal

from ..api import default_model
from ..engine.plan import DEFAULT_PRECISION
from ..errors import BrainrtError
from ..model.manifest import PRECISIONS
from . import _work

log = logging.getLogger("brainrt")


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
