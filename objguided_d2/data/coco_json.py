"""COCO-instances helpers shared by the synthetic generator and the format converters.

Masks are stored as compressed RLE (``counts`` a str) so one-pixel-wide structures (neurites,
leaf stalks) survive exactly; polygons would round them away. ``bbox`` is XYWH of the mask,
category ids start at 1, ``iscrowd`` is always 0.
"""
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import pycocotools.mask as mask_util
from scipy import ndimage

__all__ = [
    "encode_mask",
    "label_map_to_annotations",
    "masks_to_annotations",
    "make_coco_dict",
    "seeded_split",
]


def encode_mask(mask: np.ndarray) -> dict:
    """(H, W) bool/uint8 mask -> COCO compressed RLE with a str ``counts`` (JSON-serialisable)."""
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _annotation(rle: dict, image_id: int, ann_id: int, category_id: int) -> dict:
    x, y, w, h = (float(v) for v in mask_util.toBbox(rle))
    return {
        "id": int(ann_id),
        "image_id": int(image_id),
        "category_id": int(category_id),
        "segmentation": rle,
        "area": float(mask_util.area(rle)),
        "bbox": [x, y, w, h],
        "iscrowd": 0,
    }


def label_map_to_annotations(
    label: np.ndarray, image_id: int, first_ann_id: int, category_id: int = 1
) -> List[dict]:
    """One COCO annotation per positive id of an (H, W) integer label map.

    Ids need not be contiguous. An id made of several disconnected blobs is ONE object (one RLE
    holding all its pixels): occlusion legitimately splits an object, and relabelling blobs
    would invent objects the annotator never drew. Annotation ids are ``first_ann_id, +1, ...``
    in increasing label-id order.
    """
    label = np.asarray(label)
    # Compact the ids first: 32-bit maps may use huge, sparse ids (find_objects allocates max id).
    ids, compact = np.unique(label, return_inverse=True)
    compact = compact.reshape(label.shape)
    if ids[0] == 0:
        ids = ids[1:]
    else:
        compact = compact + 1  # no background pixel at all: every compact index is an object
    if len(ids) == 0:
        return []
    # Work inside each object's bounding box: cost ~ object area, not (#objects x image area).
    slices = ndimage.find_objects(compact)
    buf = np.zeros(label.shape, dtype=np.uint8, order="F")
    anns = []
    for k in range(len(ids)):
        sl = slices[k]
        buf[sl] = compact[sl] == k + 1
        rle = mask_util.encode(buf)
        rle["counts"] = rle["counts"].decode("ascii")
        buf[sl] = 0
        anns.append(_annotation(rle, image_id, first_ann_id + k, category_id))
    return anns


def masks_to_annotations(
    masks: Iterable[np.ndarray], image_id: int, first_ann_id: int, category_id: int = 1
) -> List[dict]:
    """One COCO annotation per (H, W) binary mask (overlaps between masks are kept as given)."""
    return [
        _annotation(encode_mask(m), image_id, first_ann_id + k, category_id)
        for k, m in enumerate(masks)
    ]


def make_coco_dict(
    images: List[dict], annotations: List[dict], class_names: Sequence[str], info: Optional[dict] = None
) -> dict:
    """Assemble a COCO instances dict; category ids are 1..len(class_names)."""
    return {
        "info": dict(info or {}),
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": n, "supercategory": n} for i, n in enumerate(class_names)],
    }


def seeded_split(
    keys: Sequence[str], seed: int, ratios: Tuple[float, float, float] = (0.6, 0.2, 0.2)
) -> Dict[str, List[str]]:
    """Random train/val/test split of ``keys``, reproducible from ``seed``.

    ``n_train = round(r0 * n)``, ``n_val = round(r1 * n)``, test gets the rest (so 670 DSB2018
    images give the paper's 402/134/134, 473 CVPPP images 284/95/94, 644 neural 386/129/129).
    Each split is returned sorted.
    """
    if len(ratios) != 3 or any(r < 0 for r in ratios) or sum(ratios) <= 0:
        raise ValueError(f"split ratios must be three non-negative numbers, got {ratios}")
    total = float(sum(ratios))
    keys = sorted(keys)
    n = len(keys)
    perm = np.random.default_rng(seed).permutation(n)
    n_train = int(round(ratios[0] / total * n))
    n_val = min(n - n_train, int(round(ratios[1] / total * n)))
    shuffled = [keys[i] for i in perm]
    return {
        "train": sorted(shuffled[:n_train]),
        "val": sorted(shuffled[n_train : n_train + n_val]),
        "test": sorted(shuffled[n_train + n_val :]),
    }
