"""Segment widget: the chosen image layer (every plane of a stack on its own) -> a Labels layer
whose ``features`` are the ``objects.csv`` table. Runs in a worker thread, can be cancelled."""
import weakref

import numpy as np
from magicgui.widgets import ComboBox, Container, Label, ProgressBar, PushButton, SpinBox
from napari.layers import Image
from napari.qt.threading import thread_worker
from napari.utils.notifications import show_error, show_info

from ._layers import Failed, check_image, plane_name, planes, spatial_shape, stack_labels
from ._model_picker import ModelPicker, layer_choices
from ._predict import ModelError, default_tiling, segment_image
from ._training import model_channels

__all__ = ["SegmentWidget", "segment_widgets"]

_OPEN = weakref.WeakSet()


def _unwrap(viewer):
    # npe2 hands each widget its own public-only proxy of the viewer: compare what they wrap.
    return getattr(viewer, "__wrapped__", viewer)


def segment_widgets(viewer):
    """The open segment widgets of ``viewer`` (the training widget hands them its new model)."""
    return [w for w in list(_OPEN) if _unwrap(w.viewer) is _unwrap(viewer)]


class _Cancelled(Exception):
    pass


class SegmentWidget(Container):
    def __init__(self, napari_viewer):
        self.viewer = napari_viewer
        self.image = ComboBox(label="image", choices=layer_choices(napari_viewer, Image))
        self.model = ModelPicker()
        self.tile_size = SpinBox(value=0, min=0, max=100000, label="tile size (0: model's)")
        self.overlap = SpinBox(value=-1, min=-1, max=100000, label="overlap (-1: tile/4)")
        self.run_button = PushButton(text="Segment")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(value=0, min=0, max=1, label="progress")
        self.status = Label(value="")
        super().__init__(widgets=[self.image, self.model, self.tile_size, self.overlap, self.run_button,
                                  self.cancel_button, self.progress, self.status])
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        for ev in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed):
            ev.connect(lambda e=None: self.image.reset_choices())
        self.worker = None
        self._abort = False
        _OPEN.add(self)

    def _layer(self):
        name = self.image.value
        return self.viewer.layers[name] if name in self.viewer.layers else None

    def run(self):
        """Check the inputs (one-line notifications), then segment in a worker thread."""
        if self.worker is not None:
            return
        layer = self._layer()
        try:
            check_image(layer)
            want = model_channels(self.model.settings()["model_dir"])
            have = "rgb" if layer.rgb else "gray"
            if want and want != have:
                raise ValueError(f"image layer '{layer.name}' is {have} but the model was trained on {want} images; "
                                 "choose a model trained on images like this one")
        except ValueError as e:
            show_error(str(e))
            return
        self._abort = False
        # Widget values are read here, in the GUI thread; the worker gets plain values.
        tiling = (self.tile_size.value or None, None if self.overlap.value < 0 else self.overlap.value)
        self.worker = self._work(layer.data, layer.rgb, layer.name, self.model.settings(), tiling)
        self.worker.yielded.connect(self._on_progress)
        self.worker.returned.connect(lambda r, lyr=layer: self._on_done(lyr, r))
        self.worker.finished.connect(self._on_finished)
        self.run_button.enabled, self.cancel_button.enabled = False, True
        self.status.value = "loading model..."
        self.worker.start()

    def cancel(self):
        self._abort = True
        if self.worker is not None:
            self.worker.quit()

    @thread_worker(ignore_errors=True)  # failures come back as Failed; napari reports anything else
    def _work(self, data, rgb, name, settings, tiling):
        try:
            return (yield from self._segment(data, rgb, name, settings, tiling))
        except _Cancelled:
            return None
        except (ModelError, ValueError, OSError) as e:
            return Failed(str(e))
        except Exception as e:
            return Failed(f"segmentation failed ({type(e).__name__}: {e})")

    def _segment(self, data, rgb, name, settings, tiling):
        loaded = self.model.load(settings)
        tile, overlap = default_tiling(loaded, *tiling)
        images = list(planes(np.asarray(data), rgb))
        per_plane, rows = [], []
        yield 0, len(images)

        def check_abort(tiles):  # between tiles, so a big image stops promptly
            for t in tiles:
                if self._abort:
                    raise _Cancelled()
                yield t

        from objguided_d2.predict.writers import measure_objects

        for k, img in enumerate(images):
            labels, kept = segment_image(img, loaded, tile_size=tile, overlap=overlap, progress=check_abort)
            per_plane.append((labels, kept))
            yield k + 1, len(images)
        lab, offsets = stack_labels([p[0] for p in per_plane], spatial_shape(data, rgb)[:-2])
        for k, ((labels, kept), off) in enumerate(zip(per_plane, offsets)):
            r, _ = measure_objects(labels, kept, image_name=plane_name(name, k, len(per_plane)), image_id=k + 1,
                                   class_names=loaded.class_names, category_ids=loaded.category_ids)
            for row in r:
                row["id"] += off
                row["index"], row["plane"] = row["id"], k
            rows += r
        return lab, rows

    def _on_progress(self, p):
        done, total = p
        self.progress.max, self.progress.value = max(total, 1), done
        self.status.value = f"plane {done}/{total}" if total > 1 else ("segmenting..." if not done else "done")

    def _on_done(self, image_layer, result):
        import pandas as pd

        from objguided_d2.predict.writers import CSV_COLUMNS

        if result is None or isinstance(result, Failed):
            self.status.value = "cancelled" if result is None else "failed"
            if result is not None:
                show_error(result.message)
            return
        labels, rows = result
        cols = ["index", "plane"] + CSV_COLUMNS
        feats = pd.DataFrame(rows, columns=cols) if rows else pd.DataFrame({c: [] for c in cols})
        layer = self.viewer.add_labels(labels, name=f"{image_layer.name} objects", features=feats,
                                       scale=image_layer.scale[-labels.ndim:],
                                       translate=image_layer.translate[-labels.ndim:])
        layer.metadata["objguided"] = {"image_layer": image_layer.name, "model": self.model.settings()}
        n = len(rows)
        self.status.value = f"{n} objects"
        show_info(f"{image_layer.name}: {n} objects found")

    def _on_finished(self):
        if self._abort and self.status.value not in ("cancelled",) and not self.status.value.endswith("objects"):
            self.status.value = "cancelled"
        self.worker = None
        self.run_button.enabled, self.cancel_button.enabled = True, False

    def set_model_dir(self, path):
        """Use the model folder ``path`` from now on (a fresh training run)."""
        self.model.config_file.value, self.model.weights.value = None, None
        self.model.model_dir.value = path
