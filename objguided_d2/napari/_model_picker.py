"""The model fields shared by the segment and folder widgets, and a per-settings model cache."""
from typing import Optional

from magicgui.widgets import ComboBox, Container, FileEdit, FloatSpinBox, Label

from ._predict import ModelError, load_predictor

__all__ = ["ModelPicker", "layer_choices"]


def layer_choices(viewer, kind):
    """A ComboBox choices callable: names of the viewer's layers of type ``kind``."""
    def choices(_widget=None):
        return [lyr.name for lyr in viewer.layers if isinstance(lyr, kind)]

    return choices


def _path(edit: FileEdit) -> Optional[str]:
    v = "" if edit.value is None else str(edit.value)
    return v if v not in ("", ".") else None


class ModelPicker(Container):
    """Model folder (a ``train_net.py`` output) or config + weights, device, thresholds, diameter."""

    def __init__(self):
        self.model_dir = FileEdit(mode="d", label="model folder", nullable=True)
        self.config_file = FileEdit(mode="r", label="or config", filter="*.yaml", nullable=True)
        self.weights = FileEdit(mode="r", label="weights", filter="*.pth", nullable=True)
        self.device = ComboBox(choices=["cpu", "cuda"], value="cpu", label="device")
        self.score_thresh = FloatSpinBox(value=0.0, min=0.0, max=1.0, step=0.05, label="score thresh (0: model's)")
        self.mask_thresh = FloatSpinBox(value=0.0, min=0.0, max=1.0, step=0.05, label="mask thresh (0: model's)")
        self.diameter = FloatSpinBox(value=0.0, min=0.0, max=10000.0, step=1.0, label="diameter px (0: as trained)")
        super().__init__(widgets=[Label(value="<b>Model</b>"), self.model_dir, self.config_file, self.weights,
                                  self.device, self.score_thresh, self.mask_thresh, self.diameter])
        self._cache = (None, None)

    def settings(self) -> dict:
        return dict(
            model_dir=_path(self.model_dir), config_file=_path(self.config_file), weights=_path(self.weights),
            device=self.device.value, score_thresh=self.score_thresh.value or None,
            mask_thresh=self.mask_thresh.value or None, diameter=self.diameter.value or None,
        )

    def load(self, s: Optional[dict] = None):
        """The model for ``s`` (default: the current :meth:`settings`; read them in the GUI thread
        and pass them to a worker), cached; ModelError in one line if it cannot load."""
        s = s if s is not None else self.settings()
        if not s["model_dir"] and not s["config_file"]:
            raise ModelError("no model: choose a model folder (a train_net.py output), or a config and weights")
        if s["model_dir"] and s["config_file"]:
            raise ModelError("choose a model folder or a config file, not both")
        key = tuple(sorted(s.items()))
        if self._cache[0] != key:
            self._cache = (key, load_predictor(**s))
        return self._cache[1]
