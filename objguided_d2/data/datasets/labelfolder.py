"""``labelfolder``: images and instance label maps in two folders, matched by file stem.

``PATH/images/*`` and ``PATH/labels/*``; the label of ``images/a.png`` is
``labels/a{,_label,_labels,_mask,_masks}.<ext>`` (exactly one of them). Labels are 8/16/32-bit
TIFF/PNG maps, 0 = background, one id per object; images may be gray/RGB/RGBA, 8- or 16-bit.
Keys (for split files) are image stems.
"""
import os
from typing import Dict, List, Tuple

import numpy as np

from ..io import IMAGE_EXTENSIONS, DataError, check_same_size, is_image_name, read_label_map, require_dir
from .coco import label_map_to_annotations

__all__ = ["DEFAULT_CLASS", "LABEL_SUFFIXES", "scan", "annotations"]

DEFAULT_CLASS = "object"
LABEL_SUFFIXES = ("", "_label", "_labels", "_mask", "_masks")


def scan(root: str) -> Dict[str, Tuple[str, str]]:
    """key (image stem) -> (image path, label path)."""
    img_dir, lab_dir = os.path.join(root, "images"), os.path.join(root, "labels")
    require_dir(img_dir, "'images/'")
    require_dir(lab_dir, "'labels/'")
    images: Dict[str, str] = {}
    for f in sorted(os.listdir(img_dir)):
        if not is_image_name(f):
            continue
        stem = os.path.splitext(f)[0]
        if stem in images:
            raise DataError(f"{os.path.join(img_dir, f)}: two images with stem {stem!r} ({os.path.basename(images[stem])})")
        images[stem] = os.path.join(img_dir, f)
    if not images:
        raise DataError(f"{img_dir}: no image files (expected {', '.join(IMAGE_EXTENSIONS)})")
    labels: Dict[str, List[str]] = {}
    for f in sorted(os.listdir(lab_dir)):
        if is_image_name(f):
            labels.setdefault(os.path.splitext(f)[0], []).append(os.path.join(lab_dir, f))
    out = {}
    for stem, img in images.items():
        cands = [p for suf in LABEL_SUFFIXES for p in labels.get(stem + suf, [])]
        if not cands:
            raise DataError(
                f"{img}: no label file in {lab_dir} (looked for {stem}{{{','.join(LABEL_SUFFIXES)}}} with an image extension)"
            )
        if len(cands) > 1:
            raise DataError(f"{img}: several label files match: {[os.path.basename(c) for c in cands]}")
        out[stem] = (img, cands[0])
    return out


def annotations(img_path: str, image: np.ndarray, label_path: str, image_id: int, first_ann_id: int) -> List[dict]:
    """COCO annotations of one sample: one per id of its label map."""
    label = read_label_map(label_path)
    check_same_size(img_path, image, label_path, label)
    return label_map_to_annotations(label, image_id, first_ann_id)
