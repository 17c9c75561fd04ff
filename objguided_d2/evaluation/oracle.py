"""Segmentation quality given the ground-truth boxes ("oracle detection").

Every method segments each test object from that object's own ground-truth box (Detectron2's
``inference(..., detected_instances=...)``, the path ``forward_with_given_boxes`` takes), so the
mask quality is measured apart from whether the detector found the object. This separates the
paper's two claims: the object-guided branch segments thin and touching objects better than
box-based mask heads, and the centre-point detector finds them.

Per object: the IoU of its predicted mask with its ground-truth mask (0 when the method returns
no mask for it, e.g. an ROI too small to crop), and its *thin fraction*: the share of its pixels
removed by a 3x3 morphological opening, i.e. in structures at most ~2 px wide (protrusions,
stalks).
"""
from __future__ import annotations

from typing import Dict, List, Sequence

import cv2
import numpy as np
import pycocotools.mask as mask_util
import torch
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import Boxes, Instances

from .evaluator import _segmentation_to_rle, gt_instances_from_dict
from .paper_ap import mask_iou

__all__ = ["THIN_THRESHOLD", "thin_fraction", "oracle_object_ious", "summarize_oracle"]

# Objects whose thin fraction exceeds this are reported separately as "thin".
THIN_THRESHOLD = 0.2


def thin_fraction(mask: np.ndarray) -> float:
    """Share of a binary mask's pixels in structures a 3x3 opening removes (<= ~2 px wide)."""
    m = mask.astype(np.uint8)
    area = int(m.sum())
    if area == 0:
        return 0.0
    opened = cv2.morphologyEx(m, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    return float(area - int(opened.sum())) / area


@torch.no_grad()
def oracle_object_ious(model, dataset_dicts: Sequence[Dict], *, min_size_test: int, max_size_test: int,
                       input_format: str = "BGR") -> List[Dict]:
    """Segment every ground-truth object of ``dataset_dicts`` from its own box.

    Args:
        model: a Detectron2 meta-architecture in eval mode whose ``inference`` accepts
            ``detected_instances`` (GeneralizedRCNN, PointRend, ObjGuidedRCNN).
        dataset_dicts: Detectron2 dataset dicts with ``file_name``, ``height``, ``width`` and
            annotations with masks.
        min_size_test, max_size_test: the test resize (``INPUT.MIN/MAX_SIZE_TEST``).
    Returns:
        One dict per object: ``image`` (file name), ``iou``, ``thin`` (thin fraction), ``area``.
    """
    resize = T.ResizeShortestEdge(min_size_test, max_size_test)
    # Ours removes overlapping masks at the end (mask NMS); here each object is scored alone.
    saved_nms = getattr(model, "mask_nms_thresh", None)
    if saved_nms is not None:
        model.mask_nms_thresh = 0.0
    out: List[Dict] = []
    try:
        for record in dataset_dicts:
            gt = gt_instances_from_dict(record)
            if len(gt.classes) == 0:
                continue
            h, w = int(record["height"]), int(record["width"])
            image = utils.read_image(record["file_name"], format=input_format)
            if image.shape[:2] != (h, w):
                raise ValueError(f"{record['file_name']}: image is {image.shape[:2]}, the dataset says {(h, w)}")
            tfm = resize.get_transform(image)
            resized = tfm.apply_image(image)
            boxes = torch.as_tensor(tfm.apply_box(np.asarray(gt.boxes, dtype=np.float64)), dtype=torch.float32)
            n = len(boxes)
            det = Instances(resized.shape[:2])
            det.pred_boxes = Boxes(boxes)
            det.pred_classes = torch.as_tensor(np.asarray(gt.classes), dtype=torch.int64)
            # Distinct scores in GT order: outputs may be re-sorted or dropped; the score says
            # which object each output is.
            det.scores = torch.linspace(1.0, 0.5, n) if n > 1 else torch.ones(1)
            inputs = [{"image": torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1))),
                       "height": h, "width": w}]
            res = model.inference(inputs, detected_instances=[det])[0]["instances"].to("cpu")
            pred = {}
            if len(res) and res.has("pred_masks"):
                idx = (res.scores[:, None].float() - det.scores[None]).abs().argmin(1).tolist()
                pred = {i: m for i, m in zip(idx, res.pred_masks.numpy())}
            gt_masks = mask_util.decode(gt.masks).astype(bool)  # (h, w, G)
            for i in range(n):
                g = gt_masks[:, :, i]
                p = pred.get(i)
                if p is None:
                    iou = 0.0
                else:
                    rle = _segmentation_to_rle(p, h, w, f"{record['file_name']}, predicted mask {i}")
                    iou = float(mask_iou([rle], [gt.masks[i]])[0, 0])
                out.append({"image": record["file_name"], "iou": iou, "thin": thin_fraction(g),
                            "area": int(g.sum())})
    finally:
        if saved_nms is not None:
            model.mask_nms_thresh = saved_nms
    return out


def summarize_oracle(objects: Sequence[Dict]) -> Dict[str, float]:
    """Mean IoU and the shares above IoU 0.5 / 0.75 (in percent), for all objects and for the thin
    (thin fraction > ``THIN_THRESHOLD``) and compact ones."""
    def block(sel):
        ious = np.asarray([o["iou"] for o in sel], dtype=np.float64)
        if len(ious) == 0:
            return {"n": 0, "mIoU": float("nan"), "IoU>0.5": float("nan"), "IoU>0.75": float("nan")}
        return {"n": int(len(ious)), "mIoU": 100 * float(ious.mean()),
                "IoU>0.5": 100 * float((ious > 0.5).mean()), "IoU>0.75": 100 * float((ious > 0.75).mean())}

    res = {}
    for name, sel in (("all", list(objects)),
                      ("thin", [o for o in objects if o["thin"] > THIN_THRESHOLD]),
                      ("compact", [o for o in objects if o["thin"] <= THIN_THRESHOLD])):
        for k, v in block(sel).items():
            res[f"{name} {k}"] = v
    return res
