"""Training widget: add the current image and its (corrected) labels to a training set, then
fine-tune (or train the tiny model from scratch) in a subprocess, with loss, ETA and cancel; the
new model folder goes to the open segment widgets when it is done."""
import os
import time

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, Label, LineEdit, ProgressBar, PushButton, SpinBox
from napari.layers import Image, Labels
from napari.qt.threading import thread_worker
from napari.utils.notifications import show_error, show_info

from ._layers import Failed
from ._model_picker import _path, layer_choices
from ._training import TrainingRun, add_to_training_set

__all__ = ["TrainWidget"]


class TrainWidget(Container):
    def __init__(self, napari_viewer):
        self.viewer = napari_viewer
        self.training_set = FileEdit(mode="d", label="training set folder", nullable=True)
        self.image = ComboBox(label="image", choices=layer_choices(napari_viewer, Image))
        self.labels_layer = ComboBox(label="labels", choices=layer_choices(napari_viewer, Labels))
        self.add_button = PushButton(text="Add to training set")
        self.base_model = FileEdit(mode="d", label="fine-tune model (empty: segment widget's)", nullable=True)
        self.scratch = CheckBox(value=False, text="train the tiny model from scratch instead")
        self.iterations = SpinBox(value=100, min=1, max=100000, label="iterations")
        self.device = ComboBox(choices=["cpu", "cuda"], value="cpu", label="device")
        self.output_dir = FileEdit(mode="d", label="new model folder (empty: automatic)", nullable=True)
        self.train_button = PushButton(text="Train")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(value=0, min=0, max=1, label="iterations")
        self.status = Label(value="")
        self.sample_name = LineEdit(label="name (empty: image layer's)", nullable=True)
        super().__init__(widgets=[
            Label(value="<b>Training set</b>"), self.training_set, self.image, self.labels_layer, self.sample_name,
            self.add_button, Label(value="<b>Train</b>"), self.base_model, self.scratch, self.iterations,
            self.device, self.output_dir, self.train_button, self.cancel_button, self.progress, self.status])
        for ev in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed):
            ev.connect(lambda e=None: self.reset_choices())
        self.add_button.changed.connect(self.add)
        self.train_button.changed.connect(self.train)
        self.cancel_button.changed.connect(self.cancel)
        self.worker, self.run_ = None, None
        self.model_dir = None  # the last trained model folder

    # ------------------------------------------------------------------ training set
    def add(self):
        """Write the image and labels layers into the training set; a notification says what happened."""
        folder = _path(self.training_set)
        img = self.viewer.layers[self.image.value] if self.image.value in self.viewer.layers else None
        lab = self.viewer.layers[self.labels_layer.value] if self.labels_layer.value in self.viewer.layers else None
        try:
            if not folder:
                raise ValueError("choose a training set folder (a new or existing one)")
            if img is None:
                raise ValueError("no image layer: open an image (or File > Open Sample) first")
            if lab is None:
                raise ValueError("no labels layer: segment the image or add a labels layer and paint the objects")
            name = self.sample_name.value.strip() or img.name
            if not name or any(c in name for c in '/\\:*?"<>|') or name.startswith("."):
                raise ValueError(f"name {name!r}: use letters, digits, '-' and '_' only")
            written = add_to_training_set(folder, name, np.asarray(img.data), img.rgb, np.asarray(lab.data))
        except (ValueError, OSError) as e:
            show_error(str(e))
            return None
        n = len(os.listdir(os.path.join(folder, "images")))
        msg = f"added {len(written)} image(s) to {folder} ({n} in the training set)"
        self.status.value = msg
        show_info(msg)
        return written

    # ------------------------------------------------------------------ train
    def _base(self):
        if self.scratch.value:
            return None
        base = _path(self.base_model)
        if base:
            return base
        from ._segment import segment_widgets

        for w in segment_widgets(self.viewer):
            d = w.model.settings()["model_dir"]
            if d:
                return d
        raise ValueError("no model to fine-tune: choose a model folder, or tick 'train the tiny model from scratch'")

    def train(self):
        if self.worker is not None:
            return
        folder = _path(self.training_set)
        try:
            if not folder:
                raise ValueError("choose the training set folder")
            base = self._base()
            out = _path(self.output_dir) or os.path.join(
                os.path.dirname(os.path.abspath(folder)),
                f"{os.path.basename(os.path.abspath(folder))}_models", time.strftime("run-%Y%m%d-%H%M%S"))
            self.run_ = TrainingRun(folder, out, model_dir=base, iterations=self.iterations.value,
                                    device=self.device.value)
        except (ValueError, OSError) as e:
            show_error(str(e))
            return
        except Exception as e:  # a model folder the safe loader refuses, ...
            show_error(f"{type(e).__name__}: {e}")
            return
        self.status.value = f"starting ({'fine-tune ' + base if base else 'tiny model from scratch'}) -> {out}"
        self.worker = self._watch(self.run_)
        self.worker.yielded.connect(self._on_progress)
        self.worker.returned.connect(self._on_done)
        self.worker.finished.connect(self._on_finished)
        self.train_button.enabled, self.cancel_button.enabled = False, True
        self.worker.start()

    def cancel(self):
        # Stop the subprocess now (napari's quit() only stops the watcher at its next yield).
        if self.run_ is not None:
            self.run_.cancel()
        if self.worker is not None:
            self.worker.quit()

    @thread_worker(ignore_errors=True)  # failures come back as Failed
    def _watch(self, run):
        try:
            while run.running:
                yield run.poll()
                time.sleep(0.5)
        finally:  # an error here: the subprocess must not outlive its watcher
            if run.running:
                run.cancel()
        yield run.poll()
        if run.cancelled:
            return None
        try:
            return run.finish()
        except (RuntimeError, OSError) as e:
            return Failed(str(e))

    def _on_progress(self, p):
        self.progress.max, self.progress.value = p.max_iter, max(p.iteration, 0)
        if p.loss is None:
            self.status.value = "preparing data and model..."
        else:
            eta = f", ETA {int(p.eta_seconds // 60)}:{int(p.eta_seconds % 60):02d}" if p.eta_seconds is not None else ""
            self.status.value = f"iteration {p.iteration}/{p.max_iter}, loss {p.loss:.3f}{eta}"

    def _on_done(self, model_dir):
        from ._segment import segment_widgets

        if model_dir is None:
            self.status.value = "cancelled"
            return
        if isinstance(model_dir, Failed):
            self.status.value = "failed"
            show_error(model_dir.message)
            return
        self.model_dir = model_dir
        for w in segment_widgets(self.viewer):
            w.set_model_dir(model_dir)
        self.progress.value = self.progress.max
        msg = f"trained: {model_dir} (now the segment widget's model)"
        self.status.value = msg
        show_info(msg)

    def _on_finished(self):
        if self.model_dir is None or (self.run_ is not None and self.model_dir != self.run_.output_dir):
            if self.status.value != "failed":
                self.status.value = "cancelled"
        self.worker = None
        self.train_button.enabled, self.cancel_button.enabled = True, False
