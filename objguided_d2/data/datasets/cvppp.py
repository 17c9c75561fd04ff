"""``cvppp``: the CVPPP leaf segmentation layout, ``<stem>_rgb.png`` next to ``<stem>_label.png``.

Searched recursively. Labels are index-coded (palette or gray: the index is the leaf id) or
colour-coded (each distinct RGB colour is one leaf, black is background). Keys are paths relative
to ``PATH`` without the suffix (``A1/plant001``); a split file may also use the bare stem if unique.
"""
import glob
import os
from typing import Dict, List, Tuple

import numpy as np

from ..io import DataError, check_same_size, read_image_pages, read_label_map
from .coco import label_map_to_annotations

__all__ = ["DEFAULT_CLASS", "read_cvppp_label", "scan", "annotations"]

DEFAULT_CLASS = "leaf"


def scan(root: str) -> Dict[str, Tuple[str, str]]:
    """key (relative path without '_rgb.png') -> (image path, label path)."""
    out = {}
    for img in sorted(glob.glob(os.path.join(root, "**", "*_rgb.png"), recursive=True)):
        key = os.path.relpath(img, root)[: -len("_rgb.png")].replace(os.sep, "/")
        lab = img[: -len("_rgb.png")] + "_label.png"
        if not os.path.isfile(lab):
            raise DataError(f"{img}: no label file {os.path.basename(lab)} next to it")
        out[key] = (img, lab)
    if not out:
        raise DataError(f"{root}: no CVPPP images (*_rgb.png with *_label.png)")
    return out


def read_cvppp_label(path: str) -> np.ndarray:
    """Decode a CVPPP ``*_label.png`` into an (H, W) int64 instance map (0 = background).

    Palette PNGs give their indices; gray maps their values; colour-coded maps one id per
    distinct RGB colour (black = background), numbered in increasing packed-RGB order.
    """
    pages = read_image_pages(path)  # validates existence / decoding / truncation
    if path.lower().endswith(".png"):
        from PIL import Image

        try:
            with Image.open(path) as im:
                if im.mode == "P":
                    return np.asarray(im, dtype=np.int64)
        except OSError as e:
            raise DataError(f"{path}: cannot read label ({e})") from e
    lab = pages[0]
    if lab.ndim == 3:
        rgb = lab[..., :3].astype(np.int64)
        if np.all(rgb == rgb[..., :1]):
            lab = lab[..., 0]
        else:
            packed = (rgb[..., 0] << 32) | (rgb[..., 1] << 16) | rgb[..., 2]
            colours, inv = np.unique(packed, return_inverse=True)
            inv = inv.reshape(packed.shape)
            if colours[0] == 0:
                return inv.astype(np.int64)
            return (inv + 1).astype(np.int64)
    if not np.issubdtype(lab.dtype, np.integer):
        return read_label_map(path)  # float maps: reuse the integer / sign checks
    return lab.astype(np.int64)


def annotations(img_path: str, image: np.ndarray, label_path: str, image_id: int, first_ann_id: int) -> List[dict]:
    """COCO annotations of one sample: one per leaf of its label."""
    label = read_cvppp_label(label_path)
    check_same_size(img_path, image, label_path, label)
    return label_map_to_annotations(label, image_id, first_ann_id)
