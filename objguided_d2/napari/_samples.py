"""File > Open Sample: the embedded synthetic families, each a small stack with its ground truth.

Each sample is a stack of :data:`NUM_PLANES` images (one per slider position) so that "add to
training set" on a sample gives a training set a tiny model can learn something from.
"""
import numpy as np

__all__ = ["NUM_PLANES", "IMAGE_SIZE", "render", "nuclei", "neural", "leaves"]

NUM_PLANES = 4
IMAGE_SIZE = 256
_NAMES = {"nuclei": "nuclei", "neural": "neural cells", "leaves": "leaves"}


def render(family: str, index: int):
    """(image, labels) of one synthetic sample: RGB or gray uint8, uint16 labels.

    The one place that knows where the synthetic generator lives.
    """
    from objguided_d2.data.datasets.synthetic import render_sample

    return render_sample(family, IMAGE_SIZE, seed=0, split="test", index=index)


def _sample(family: str):
    pairs = [render(family, i) for i in range(NUM_PLANES)]
    image = np.stack([p[0] for p in pairs])
    labels = np.stack([p[1] for p in pairs]).astype(np.int32)
    name = _NAMES[family]
    return [
        (image, {"name": f"{name}", "rgb": image.ndim == 4}, "image"),
        (labels, {"name": f"{name} ground truth", "opacity": 0.5}, "labels"),
    ]


def nuclei():
    return _sample("nuclei")


def neural():
    return _sample("neural")


def leaves():
    return _sample("leaves")
