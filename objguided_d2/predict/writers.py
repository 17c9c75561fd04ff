"""Turn detections into a label image, a per-object table, COCO results and an overlay, and
write files atomically without overwriting.

The label image is the reference: overlaps between predicted masks are given to the higher
score, objects left with no pixel are dropped, and ids 1..N follow decreasing score. The table
(scikit-image ``regionprops``) and the COCO segmentations are both computed from it, so a label
id, a table row and a COCO entry describe exactly the same pixels.
"""
import csv
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pycocotools.mask as mask_util
from skimage.measure import regionprops

from objguided_d2.utils.io import OutputExistsError, atomic_write, write_json
from objguided_d2.utils.label_map import paint_label_map

from .tiling import Detection

__all__ = [
    "OutputExistsError",
    "atomic_write",
    "label_image",
    "measure_objects",
    "write_label_tif",
    "write_csv",
    "write_json",
    "write_overlay",
    "CSV_COLUMNS",
]

CSV_COLUMNS = [
    "image", "id", "class_id", "class", "score", "area", "centroid_y", "centroid_x",
    "bbox_min_row", "bbox_min_col", "bbox_max_row", "bbox_max_col", "perimeter", "eccentricity",
]


def label_image(detections: Sequence[Detection], shape: Tuple[int, int]) -> Tuple[np.ndarray, List[Detection]]:
    """Paint detections into an (H, W) label image, 0 = background.

    Higher scores are painted first and keep their pixels. Returns the label image (uint16, or
    uint32 past 65535 objects) and the detections that kept at least one pixel: detection k of
    that list has label id k + 1.
    """
    order = sorted(range(len(detections)), key=lambda i: -detections[i].score)
    lab, kept_idx = paint_label_map([d.mask for d in detections], shape, priority=order,
                                    boxes=[d.box for d in detections])
    kept: List[Detection] = [detections[i] for i in kept_idx]
    dtype = np.uint16 if len(kept) <= np.iinfo(np.uint16).max else np.uint32
    return lab.astype(dtype), kept


def _rle_from_crop(crop: np.ndarray, offset: Tuple[int, int], shape: Tuple[int, int]) -> Dict:
    """COCO compressed RLE of a mask given as a crop at ``offset`` = (row, col) in an image of
    ``shape`` = (H, W), without building the full-size mask (column-major runs)."""
    h, w = shape
    cols, rows = np.nonzero(crop.T)  # column-major order of the crop = of the image
    idx = (cols + offset[1]).astype(np.int64) * h + rows + offset[0]
    if idx.size == 0:
        counts = [h * w]
    else:
        breaks = np.flatnonzero(np.diff(idx) != 1)
        starts = np.concatenate([idx[:1], idx[breaks + 1]])
        ends = np.concatenate([idx[breaks], idx[-1:]]) + 1
        gaps = starts - np.concatenate([[0], ends[:-1]])
        counts = np.stack([gaps, ends - starts], axis=1).reshape(-1).tolist()
        counts.append(h * w - int(ends[-1]))
    rle = mask_util.frPyObjects({"counts": counts, "size": [h, w]}, h, w)
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def measure_objects(
    labels: np.ndarray,
    kept: Sequence[Detection],
    *,
    image_name: str,
    image_id: int,
    class_names: Optional[Sequence[str]] = None,
    category_ids: Optional[Sequence[int]] = None,
) -> Tuple[List[Dict], List[Dict]]:
    """Table rows (:data:`CSV_COLUMNS`) and COCO result entries, one per label id.

    Args:
        labels: (H, W) label image from :func:`label_image`; ``kept[k]`` is label k + 1.
        class_names: names of the contiguous classes (metadata ``thing_classes``), if known.
        category_ids: COCO category id of each contiguous class; default: the contiguous index
            (what Detectron2 writes when no dataset mapping is known).
    """
    rows, coco = [], []
    for r in regionprops(labels):
        d = kept[r.label - 1]
        c = d.category
        rows.append({
            "image": image_name,
            "id": int(r.label),
            "class_id": c,
            "class": class_names[c] if class_names is not None and c < len(class_names) else str(c),
            "score": round(float(d.score), 6),
            "area": int(r.area),
            "centroid_y": float(r.centroid[0]),
            "centroid_x": float(r.centroid[1]),
            "bbox_min_row": int(r.bbox[0]),
            "bbox_min_col": int(r.bbox[1]),
            "bbox_max_row": int(r.bbox[2]),
            "bbox_max_col": int(r.bbox[3]),
            "perimeter": float(r.perimeter),
            "eccentricity": float(r.eccentricity),
        })
        y0, x0, y1, x1 = r.bbox
        coco.append({
            "image_id": image_id,
            "category_id": int(category_ids[c]) if category_ids is not None else c,
            "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
            "score": float(d.score),
            "segmentation": _rle_from_crop(r.image, (y0, x0), labels.shape),
            "label_id": int(r.label),
        })
    return rows, coco


def write_label_tif(path: str, labels: np.ndarray, *, overwrite: bool = False) -> None:
    import tifffile

    atomic_write(path, lambda tmp: tifffile.imwrite(tmp, labels, compression="zlib"), overwrite=overwrite)


def write_csv(path: str, rows: Sequence[Dict], *, overwrite: bool = False) -> None:
    def write(tmp):
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
            w.writeheader()
            w.writerows(rows)

    atomic_write(path, write, overwrite=overwrite)


def _polygons(crop: np.ndarray, offset: Tuple[int, int]) -> List[np.ndarray]:
    import cv2

    contours, _ = cv2.findContours(crop.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polys = []
    for c in contours:
        area = cv2.contourArea(c) if len(c) >= 3 else 0.0
        c = c.reshape(-1, 2).astype(np.float64) + (offset[1], offset[0])
        if area < 1.0:  # a pixel or a thin line rasterises to nothing: draw its box instead
            x0, y0 = c.min(0)
            x1, y1 = c.max(0) + 1
            c = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float64)
        polys.append(c.reshape(-1))
    return polys


def write_overlay(
    path: str, image_bgr: np.ndarray, labels: np.ndarray, *, metadata=None, overwrite: bool = False,
    max_labelled: int = 300,
) -> None:
    """Detectron2 ``Visualizer`` drawing of the label image's objects on the image (PNG).

    Masks are passed as polygons (no full-size mask per object); objects are annotated with their
    label id when there are at most ``max_labelled`` of them.
    """
    import cv2
    from detectron2.utils.visualizer import Visualizer

    masks, ids = [], []
    for r in regionprops(labels):
        polys = _polygons(r.image, r.bbox[:2])
        if polys:
            masks.append(polys)
            ids.append(str(r.label))
    vis = Visualizer(image_bgr[:, :, ::-1], metadata=metadata, scale=1.0)
    if masks:
        out = vis.overlay_instances(masks=masks, labels=ids if len(ids) <= max_labelled else None, alpha=0.4)
    else:
        out = vis.output
    rgb = out.get_image()
    atomic_write(path, lambda tmp: _imwrite(cv2, tmp, rgb[:, :, ::-1]), overwrite=overwrite)


def _imwrite(cv2, path, bgr):
    if not cv2.imwrite(path, bgr):
        raise OSError(f"{path}: cannot write image")
