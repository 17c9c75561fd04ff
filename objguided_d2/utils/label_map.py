"""The one label-map painter: instance masks -> one (H, W) label image, each pixel to one object.

Used by the evaluation (challenge metrics), the comparison worker (qualitative figures) and
prediction (``<name>_labels.tif``); each chooses the priority order and the ids, the painting
rule is this one.
"""
from typing import List, Optional, Sequence, Tuple

import numpy as np
import pycocotools.mask as mask_util

__all__ = ["paint_label_map"]


def _region(mask, box) -> Tuple[Tuple[slice, slice], np.ndarray]:
    """(slices of the image, bool pixels inside them) of one mask."""
    if box is not None:  # a crop at box = (y0, x0, y1, x1)
        y0, x0, y1, x1 = (int(v) for v in box)
        return (slice(y0, y1), slice(x0, x1)), np.asarray(mask, dtype=bool)
    if isinstance(mask, dict):  # a pycocotools RLE: paint only inside its box
        x, y, w, h = (int(v) for v in mask_util.toBbox(mask))
        sl = (slice(y, y + h), slice(x, x + w))
        return sl, mask_util.decode(mask)[sl].astype(bool)
    m = np.asarray(mask)
    return (slice(0, m.shape[0]), slice(0, m.shape[1])), m.astype(bool)


def paint_label_map(
    masks: Sequence,
    shape: Tuple[int, int],
    priority: Optional[Sequence[int]] = None,
    labels: Optional[Sequence[int]] = None,
    boxes: Optional[Sequence[Sequence[int]]] = None,
) -> Tuple[np.ndarray, List[int]]:
    """Paint masks into an (H, W) int64 label image, 0 = background.

    Masks are taken in ``priority`` order (default 0..K-1): a pixel covered by several masks goes
    to the first of them in that order; a mask left with no pixel is not in the image.

    Args:
        masks: K masks, each an (H, W) bool/0-1 array, a pycocotools RLE, or (with ``boxes``) the
            bool crop of box k.
        shape: (H, W) of the label image.
        priority: indices into ``masks`` to paint, highest priority first (others are skipped).
        labels: the id of each painted mask, aligned with ``priority``; default: 1, 2, ... over
            the masks that keep at least one pixel, in priority order.
        boxes: (y0, x0, y1, x1) of each mask's crop, when ``masks`` are crops.
    Returns:
        (label image, indices of the masks that kept at least one pixel, in priority order).
    Raises:
        ValueError: a full-size mask whose shape is not ``shape``.
    """
    out = np.zeros(tuple(shape), dtype=np.int64)
    order = range(len(masks)) if priority is None else priority
    kept: List[int] = []
    for j, idx in enumerate(order):
        mask = masks[idx]
        if boxes is None:
            full = tuple(mask["size"]) if isinstance(mask, dict) else np.shape(mask)
            if tuple(full) != out.shape:
                raise ValueError(f"mask {idx} is {tuple(full)}, the label image {out.shape}")
        sl, m = _region(mask, None if boxes is None else boxes[idx])
        view = out[sl]
        free = m & (view == 0)
        if free.any():
            kept.append(idx)
            view[free] = len(kept) if labels is None else labels[j]
    return out, kept
