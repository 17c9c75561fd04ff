"""``dsb2018``: the Kaggle Data Science Bowl 2018 stage1 layout, one mask file per nucleus.

``PATH/<id>/images/<id>.png`` + ``PATH/<id>/masks/*.png`` (one binary mask per nucleus; an empty
``masks/`` folder = no nucleus, an all-zero mask file is skipped with a warning). Keys are the
sample ids.
"""
import logging
import os
from typing import Dict, List, Tuple

import numpy as np

from ..io import DataError, check_same_size, is_image_name, read_image_pages, require_dir
from .coco import masks_to_annotations

__all__ = ["DEFAULT_CLASS", "scan", "annotations"]

logger = logging.getLogger(__name__)

DEFAULT_CLASS = "nucleus"


def scan(root: str) -> Dict[str, Tuple[str, str]]:
    """key (sample id) -> (image path, masks folder)."""
    out = {}
    for sid in sorted(os.listdir(root)):
        d = os.path.join(root, sid)
        if sid.startswith(".") or not os.path.isdir(d):
            continue
        img_dir = os.path.join(d, "images")
        require_dir(img_dir, f"sample {sid!r}: 'images/'")
        cands = [os.path.join(img_dir, f) for f in sorted(os.listdir(img_dir)) if is_image_name(f)]
        preferred = [c for c in cands if os.path.splitext(os.path.basename(c))[0] == sid]
        if preferred:
            cands = preferred
        if len(cands) != 1:
            raise DataError(f"{img_dir}: expected exactly one image ({sid}.png), found {len(cands)}")
        masks = os.path.join(d, "masks")
        if not os.path.isdir(masks):
            raise DataError(f"{cands[0]}: image has no 'masks/' folder ({masks}); stage1_test has no labels")
        out[sid] = (cands[0], masks)
    if not out:
        raise DataError(f"{root}: no DSB2018 sample folders (<id>/images/<id>.png + <id>/masks/*.png)")
    return out


def annotations(img_path: str, image: np.ndarray, masks_dir: str, image_id: int, first_ann_id: int) -> List[dict]:
    """COCO annotations of one sample: one per non-empty mask file."""
    masks = []
    for f in sorted(os.listdir(masks_dir)):
        if not is_image_name(f):
            continue
        p = os.path.join(masks_dir, f)
        m = read_image_pages(p)[0]
        check_same_size(img_path, image, p, m)
        m = (m[..., :3].max(axis=-1) if m.ndim == 3 else m) > 0
        if not m.any():
            logger.warning(f"{p}: empty mask, skipped")
            continue
        masks.append(m)
    return masks_to_annotations(masks, image_id, first_ann_id)
