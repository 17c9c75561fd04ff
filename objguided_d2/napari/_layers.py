"""napari layer data <-> what predict reads and writes: planes of a stack, checks with one-line
messages, and the ``objects.csv`` table of a (possibly hand-edited) labels array.

A stack's labels carry ids that are unique over the whole stack (plane k's ids follow plane
k-1's), so that napari shows the right table row for any object; ``features`` has one row per
id with the ``objects.csv`` columns plus ``index`` (the label value, napari's key) and ``plane``.
"""
from types import SimpleNamespace
from typing import Dict, Iterator, List, NamedTuple, Optional, Sequence

import numpy as np

__all__ = ["Failed", "spatial_shape", "planes", "plane_name", "check_image", "check_labels", "stack_labels", "measure_rows"]


class Failed(NamedTuple):
    """What a worker returns when it fails, in one line. Returned, not raised: superqt's workers
    swallow a RuntimeError (``ModelError`` is one) without ``finished``, and napari adds a
    traceback notification for any other."""

    message: str


def spatial_shape(data, rgb: bool):
    return tuple(data.shape[:-1] if rgb else data.shape)


def planes(data: np.ndarray, rgb: bool) -> Iterator[np.ndarray]:
    """2D planes (with their channel axis if ``rgb``) of an (..., H, W[, C]) array, in C order."""
    lead = spatial_shape(data, rgb)[:-2]
    for idx in np.ndindex(*lead):
        yield np.asarray(data[idx])


def plane_name(name: str, k: int, n: int) -> str:
    return name if n == 1 else f"{name}_z{k}"


def check_image(layer) -> None:
    """ValueError naming the problem for an image layer predict cannot read."""
    if layer is None:
        raise ValueError("no image layer: open an image (or File > Open Sample) first")
    if getattr(layer, "multiscale", False):
        raise ValueError(f"image layer '{layer.name}' is multiscale; open it as a single-resolution image")
    shape = spatial_shape(layer.data, layer.rgb)
    if len(shape) < 2:
        raise ValueError(f"image layer '{layer.name}' has shape {layer.data.shape}; expected 2D images")
    if layer.rgb and layer.data.shape[-1] not in (3, 4):
        raise ValueError(f"image layer '{layer.name}' has {layer.data.shape[-1]} channels; expected gray, RGB or RGBA")


def check_labels(labels: np.ndarray, image: np.ndarray, rgb: bool) -> None:
    """ValueError unless ``labels`` is a non-negative integer map with the image's shape."""
    want = spatial_shape(image, rgb)
    if tuple(labels.shape) != want:
        raise ValueError(f"labels shape {tuple(labels.shape)} differs from the image's {want}; "
                         "choose the labels layer drawn on this image")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels dtype {labels.dtype} is not an integer type; labels must hold one integer id per object")
    if labels.size and labels.min() < 0:
        raise ValueError(f"labels hold negative ids (min {labels.min()}); expected 0 = background and positive ids")


def stack_labels(per_plane: Sequence[np.ndarray], lead_shape) -> (np.ndarray, List[int]):
    """One int32 labels array from per-plane label images (ids made unique over the stack);
    also returns each plane's id offset."""
    out, offsets, offset = [], [], 0
    for lab in per_plane:
        offsets.append(offset)
        out.append(np.where(lab > 0, lab.astype(np.int64) + offset, 0))
        offset += int(lab.max()) if lab.size else 0
    if offset > np.iinfo(np.int32).max:
        raise ValueError(f"{offset} objects in the stack: too many for one labels layer")
    arr = np.stack(out).astype(np.int32) if out else np.zeros((0,), np.int32)
    return arr.reshape(tuple(lead_shape) + arr.shape[-2:]), offsets


def measure_rows(labels2d: np.ndarray, image_name: str, known: Optional[Dict[int, Dict]] = None) -> List[Dict]:
    """``objects.csv`` rows of a label image, measured now (edits count); score and class come from
    ``known`` (id -> row of the segmentation's table), objects painted by hand get score 1."""
    from objguided_d2.predict.writers import measure_objects

    known = known or {}
    n = int(labels2d.max()) if labels2d.size else 0
    kept = [SimpleNamespace(score=1.0, category=0) for _ in range(n)]
    names: Dict[int, str] = {}
    for i, row in known.items():
        if 1 <= i <= n:
            kept[i - 1] = SimpleNamespace(score=float(row.get("score", 1.0)), category=int(row.get("class_id", 0)))
            names[int(row.get("class_id", 0))] = str(row.get("class", row.get("class_id", 0)))
    class_names = [names.get(c, str(c)) for c in range(max(names, default=0) + 1)]
    rows, _ = measure_objects(labels2d, kept, image_name=image_name, image_id=1, class_names=class_names)
    return rows
