"""Size-aware prediction (``objguided-predict --diameter D``).

The model folder's ``object_size.json`` (:mod:`objguided_d2.data.object_size`) holds the median
object diameter the network saw in training, ``d_train``, in pixels at the network input. For
images whose objects have a median equivalent diameter of ``D`` pixels, every image (or tile) is
resized by exactly ``d_train / D`` (instead of the config's ``ResizeShortestEdge``), so its
objects reach the network at the training size; the model's own post-processing then pastes the
masks at the original image size (the ``height`` / ``width`` Detectron2 passes through), so all
outputs are on the original pixel grid. Tiles are cut in original pixels at
``INPUT.MAX_SIZE_TEST / scale`` so that a resized tile is at most ``MAX_SIZE_TEST`` wide.

No ``--diameter auto``: estimating D from a first pass at the default scale was measured in
``benchmarks/size_aware.py`` (see benchmarks/README.md) and is not offered.
"""
import math

from detectron2.data import transforms as T

__all__ = ["FixedScale", "diameter_scale", "scaled_size"]


def scaled_size(height: int, width: int, scale: float):
    """(h, w) of an image of ``height`` x ``width`` resized by ``scale`` (at least 1 pixel)."""
    return max(1, int(round(height * scale))), max(1, int(round(width * scale)))


class FixedScale(T.Augmentation):
    """Resize by one fixed factor (Detectron2 ``ResizeTransform``, bilinear)."""

    def __init__(self, scale: float):
        super().__init__()
        if not (scale > 0 and math.isfinite(scale)):
            raise ValueError(f"scale {scale}: expected a positive number")
        self.scale = float(scale)

    def get_transform(self, image):
        h, w = image.shape[:2]
        nh, nw = scaled_size(h, w, self.scale)
        return T.ResizeTransform(h, w, nh, nw)


def diameter_scale(train_diameter: float, diameter: float) -> float:
    """The resize factor that brings objects of ``diameter`` px to ``train_diameter`` px."""
    if not (diameter > 0 and math.isfinite(diameter)):
        raise ValueError(f"--diameter {diameter}: expected a positive number of pixels")
    return float(train_diameter) / float(diameter)
