"""Folder widget: predict every image of a folder into an output folder, as ``objguided-predict``
does (same files), with a progress bar and cancel."""
import os

from magicgui.widgets import CheckBox, Container, FileEdit, Label, ProgressBar, PushButton, SpinBox
from napari.qt.threading import thread_worker
from napari.utils.notifications import show_error, show_info, show_warning

from ._layers import Failed
from ._model_picker import ModelPicker, _path
from ._predict import PredictOptions, predict_to_folder

__all__ = ["FolderWidget"]


class FolderWidget(Container):
    def __init__(self, napari_viewer):
        self.viewer = napari_viewer
        self.input_dir = FileEdit(mode="d", label="image folder", nullable=True)
        self.recursive = CheckBox(value=False, text="include sub-folders")
        self.output_dir = FileEdit(mode="d", label="output folder (new)", nullable=True)
        self.model = ModelPicker()
        self.tile_size = SpinBox(value=0, min=0, max=100000, label="tile size (0: model's)")
        self.overlap = SpinBox(value=-1, min=-1, max=100000, label="overlap (-1: tile/4)")
        self.overlay = CheckBox(value=False, text="overlay PNGs")
        self.roi_zip = CheckBox(value=True, text="Fiji ROI zips")
        self.geojson = CheckBox(value=True, text="QuPath GeoJSON")
        self.run_button = PushButton(text="Predict folder")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(value=0, min=0, max=1, label="images")
        self.status = Label(value="")
        super().__init__(widgets=[self.input_dir, self.recursive, self.output_dir, self.model, self.tile_size,
                                  self.overlap, self.overlay, self.roi_zip, self.geojson, self.run_button,
                                  self.cancel_button, self.progress, self.status])
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        self.worker, self.summary, self._stop = None, None, False

    def _check(self):
        src, out = _path(self.input_dir), _path(self.output_dir)
        if not src or not os.path.isdir(src):
            raise ValueError(f"image folder {src or '(none)'}: not a folder")
        if not out:
            raise ValueError("choose an output folder")
        if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
            raise ValueError(f"{out}: output folder exists and is not empty; choose a new folder (nothing is replaced)")
        return src, out

    def run(self):
        if self.worker is not None:
            return
        try:
            src, out = self._check()
        except ValueError as e:
            show_error(str(e))
            return
        opts = PredictOptions(overlay=self.overlay.value, roi_zip=self.roi_zip.value, geojson=self.geojson.value,
                              recursive=self.recursive.value, tile_size=self.tile_size.value or None,
                              tile_overlap=None if self.overlap.value < 0 else self.overlap.value)
        self._stop, self.summary = False, None
        self.worker = self._work(src, out, opts, self.model.settings())
        self.worker.yielded.connect(self._on_progress)
        self.worker.returned.connect(self._on_done)
        self.worker.finished.connect(self._on_finished)
        self.run_button.enabled, self.cancel_button.enabled = False, True
        self.status.value = "loading model..."
        self.worker.start()

    def cancel(self):
        self._stop = True  # predict_to_folder stops after the current image; its outputs stay

    @thread_worker(ignore_errors=True)  # failures come back as Failed
    def _work(self, src, out, opts, settings):
        import queue

        try:
            model = self.model.load(settings)
        except (ValueError, OSError, RuntimeError) as e:  # ModelError
            return Failed(str(e))
        done = queue.SimpleQueue()

        def on_image(k, n, path):
            done.put((k, n, path))

        # predict_to_folder runs in this thread; its callbacks feed the yields below, one image late at most.
        import threading

        result = {}

        def target():
            try:
                result["summary"] = predict_to_folder([src], out, model, opts, on_image=on_image,
                                                      should_stop=lambda: self._stop)
            except BaseException as e:  # re-raised in the worker thread
                result["error"] = e

        t = threading.Thread(target=target, daemon=True)
        t.start()
        while t.is_alive() or not done.empty():
            try:
                yield done.get(timeout=0.2)
            except queue.Empty:
                yield None
        if "error" in result:
            e = result["error"]
            return Failed(str(e) if isinstance(e, (ValueError, OSError, RuntimeError)) else
                          f"prediction failed ({type(e).__name__}: {e})")
        return result["summary"]

    def _on_progress(self, p):
        if p is None:
            return
        k, n, path = p
        self.progress.max, self.progress.value = n, k
        self.status.value = f"{k}/{n}: {os.path.basename(path)}"

    def _on_done(self, s):
        if isinstance(s, Failed):
            self.status.value = "failed"
            show_error(s.message)
            return
        self.summary = s
        msg = f"{s.images} images, {s.objects} objects in {s.seconds:.0f} s -> {_path(self.output_dir)}"
        self.status.value = msg
        if s.failures:
            show_warning(f"{len(s.failures)} failed: " + "; ".join(s.failures[:3]))
        else:
            show_info(msg)

    def _on_finished(self):
        if self.summary is not None and self.summary.cancelled:
            self.status.value = "cancelled: " + self.status.value
        self.worker = None
        self.run_button.enabled, self.cancel_button.enabled = True, False
