"""COCO instances JSON: building annotations from masks, and the ``coco`` dataset format.

Masks are stored as compressed RLE (``counts`` a str) so one-pixel-wide structures (neurites,
leaf stalks) survive exactly; polygons would round them away. ``bbox`` is XYWH of the mask,
category ids start at 1, ``iscrowd`` is always 0.

The ``coco`` format (:func:`prepare_coco`) takes an existing COCO dataset. Its files must have
unique image / annotation / category ids and only known ``category_id`` values (Detectron2 would
silently merge two images sharing an id), and every image's ``file_name`` must lie inside the
image root (``../x.png`` or an absolute path elsewhere is a DataError naming the JSON).
"""
import json
import os
from typing import Iterable, List, Optional, Sequence, Tuple

import numpy as np
import pycocotools.mask as mask_util
from scipy import ndimage

from objguided_d2.utils.io import path_inside, write_json

from ..io import DataError
from .cache import CONVERTER_VERSION, ConvertedDataset, cache_transaction, converted_dir, read_manifest
from .splits import SPLITS, seeded_split

__all__ = [
    "encode_mask",
    "label_map_to_annotations",
    "masks_to_annotations",
    "make_coco_dict",
    "prepare_coco",
]


# ----------------------------------------------------------------------------- writing COCO
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


# ----------------------------------------------------------------------------- the coco format
def _load_coco(path: str, image_root: str) -> dict:
    if not os.path.isfile(path):
        raise DataError(f"{path}: COCO json not found")
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot parse COCO json ({e})") from e
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations", "categories")):
        raise DataError(f"{path}: not a COCO instances file (expected lists 'images', 'annotations', 'categories')")
    if not data["categories"]:
        raise DataError(f"{path}: 'categories' is empty")
    _check_coco_ids(path, data)
    for im in data["images"]:
        if not isinstance(im["file_name"], str) or path_inside(image_root, im["file_name"]) is None:
            raise DataError(f"{path}: image id {im['id']!r} has file_name {im['file_name']!r}, which points outside "
                            f"the image root {image_root}; file names must lie inside it")
    return data


def _first_duplicate(values) -> Optional[object]:
    seen = set()
    for v in values:
        if v in seen:
            return v
        seen.add(v)
    return None


def _check_coco_ids(path: str, data: dict) -> None:
    """Ids Detectron2's ``load_coco_json`` would otherwise mishandle: pycocotools indexes images
    by id, so two images with one id silently become one image carrying both images' objects
    (wrong labels); duplicate annotation ids trip a bare assert, unknown category ids a KeyError."""
    for kind, key in (("images", "image"), ("annotations", "annotation"), ("categories", "category")):
        for i, item in enumerate(data[kind]):
            if not isinstance(item, dict) or "id" not in item:
                raise DataError(f"{path}: {kind}[{i}] has no 'id'")
        dup = _first_duplicate(item["id"] for item in data[kind])
        if dup is not None:
            users = [str(x.get("file_name", x.get("name", i))) for i, x in enumerate(data[kind]) if x["id"] == dup]
            raise DataError(f"{path}: {key} id {dup!r} is used more than once ({', '.join(users[:5])}); "
                            f"{key} ids must be unique")
    for i, im in enumerate(data["images"]):
        missing = [k for k in ("file_name", "height", "width") if k not in im]
        if missing:
            raise DataError(f"{path}: image id {im['id']!r} (images[{i}]) lacks {missing}")
    cat_ids = {c["id"] for c in data["categories"]}
    for a in data["annotations"]:
        if a.get("category_id") not in cat_ids:
            raise DataError(f"{path}: annotation id {a['id']!r} has category_id {a.get('category_id')!r}, "
                            f"not among the categories {sorted(cat_ids)}")


def _class_names(data: dict) -> List[str]:
    return [c["name"] for c in sorted(data["categories"], key=lambda c: c["id"])]


def _coco_image_root(folder: str, image_root: Optional[str]) -> str:
    root = image_root or (os.path.join(folder, "images") if os.path.isdir(os.path.join(folder, "images")) else folder)
    return os.path.abspath(root)


def prepare_coco(
    path: str,
    *,
    image_root: Optional[str] = None,
    seed: int = 0,
    ratios: Tuple[float, float, float] = (0.6, 0.2, 0.2),
    cache: Optional[str] = None,
) -> ConvertedDataset:
    """An existing COCO instances dataset.

    ``path`` is either a folder holding ``train.json``, ``val.json`` and ``test.json`` (used as
    they are, nothing is written), or a single COCO JSON file (or a folder holding exactly one
    ``*.json``) which is split 60/20/20 by image with ``seed`` into the cache. ``image_root``
    defaults to ``<folder>/images`` when it exists, else the folder itself. Every image's
    ``file_name`` must lie inside the image root (``../x.png`` or an absolute path elsewhere is a
    DataError naming the JSON): a dataset never reads files outside its folder.
    """
    path = os.path.abspath(os.path.expanduser(path))
    if os.path.isdir(path):
        folder = path
        split_files = {s: os.path.join(path, f"{s}.json") for s in SPLITS}
        present = [s for s in SPLITS if os.path.isfile(split_files[s])]
        if len(present) == 3:
            names = None
            root = _coco_image_root(folder, image_root)
            for s in SPLITS:
                n = _class_names(_load_coco(split_files[s], root))
                if names is not None and n != names:
                    raise DataError(f"{split_files[s]}: categories {n} differ from train.json's {names}")
                names = n
            return ConvertedDataset(split_files, root, names)
        if present:
            raise DataError(f"{path}: has {[s + '.json' for s in present]} but not all of train.json, val.json, test.json")
        jsons = sorted(f for f in os.listdir(path) if f.lower().endswith(".json"))
        if len(jsons) != 1:
            raise DataError(f"{path}: expected train.json/val.json/test.json or exactly one COCO json, found {jsons}")
        single = os.path.join(path, jsons[0])
    else:
        single, folder = path, os.path.dirname(path)
    root = _coco_image_root(folder, image_root)
    data = _load_coco(single, root)
    names = _class_names(data)
    payload = {"format": "coco", "version": CONVERTER_VERSION, "options": {"seed": int(seed), "ratios": list(ratios)}}
    out_dir = converted_dir("coco", single, payload, cache)
    result = ConvertedDataset({s: os.path.join(out_dir, f"{s}.json") for s in SPLITS}, root, names)
    if read_manifest(out_dir) is not None:
        return result
    ids = [str(im["id"]) for im in data["images"]]
    assignment = seeded_split(ids, seed, ratios)
    manifest = {"source": single, "format": "coco", "options": payload["options"]}
    with cache_transaction(out_dir, manifest, drop_stale=True) as tmp:
        for s in SPLITS:
            keep = set(assignment[s])
            sub = dict(data)
            sub["images"] = [im for im in data["images"] if str(im["id"]) in keep]
            sub["annotations"] = [a for a in data["annotations"] if str(a.get("image_id")) in keep]
            write_json(os.path.join(tmp, f"{s}.json"), sub, sort_keys=True, compact=True)
    return result
