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

Sensitivity to the box: :func:`perturb_boxes` scales each true box about its centre and shifts it
by a fraction of its side (seeded), so the same objects can be segmented from boxes as wrong as a
detector's. :func:`detected_object_ious` gives the other end: each object's best mask IoU among
the model's own predictions (normal inference), from the matching of
:func:`.errors.error_breakdown`.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import pycocotools.mask as mask_util
import torch
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import Boxes, Instances

from ..modeling.roi_heads.roi_grid import scale_shift_boxes
from .errors import error_breakdown
from .evaluator import _segmentation_to_rle, gt_instances_from_dict
from .paper_ap import ImageInstances, mask_iou

__all__ = ["THIN_THRESHOLD", "thin_fraction", "perturb_boxes", "oracle_object_ious", "detected_object_ious",
           "summarize_oracle"]

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


def perturb_boxes(boxes: torch.Tensor, scale: float, shift: float, generator: torch.Generator,
                  image_size: Tuple[int, int]) -> torch.Tensor:
    """Boxes as wrong as a detector's: each scaled about its centre and shifted in a random direction.

    Args:
        boxes: (R, 4) XYXY.
        scale: width and height are multiplied by it (> 0), the centre kept.
        shift: the centre moves by ``shift`` x the box's side along a direction drawn uniformly
            from ``generator`` (per axis: ``shift * w * cos(a)``, ``shift * h * sin(a)``).
        image_size: (H, W); the result is clipped to it.
    Returns:
        (R, 4) XYXY, same dtype. R angles are drawn on every call, so a generator seeded alike
        gives the same boxes whatever ``scale`` and ``shift`` are.
    """
    if not scale > 0 or not math.isfinite(scale):
        raise ValueError(f"perturb_boxes: scale must be a finite number > 0, got {scale}")
    if not shift >= 0 or not math.isfinite(shift):
        raise ValueError(f"perturb_boxes: shift must be a finite number >= 0, got {shift}")
    b = boxes.reshape(-1, 4)
    angle = torch.rand(len(b), generator=generator, dtype=torch.float64) * (2 * math.pi)
    direction = torch.stack([angle.cos(), angle.sin()], dim=1)
    return scale_shift_boxes(b, torch.tensor(float(scale)), shift * direction, image_size)


def _network_input(record: Dict, resize, input_format: str):
    """``(inputs, tfm)``: one record's image resized as at test time (DefaultPredictor's
    ``ResizeShortestEdge``) as a one-image model batch, and the transform to map boxes with."""
    h, w = int(record["height"]), int(record["width"])
    image = utils.read_image(record["file_name"], format=input_format)
    if image.shape[:2] != (h, w):
        raise ValueError(f"{record['file_name']}: image is {image.shape[:2]}, the dataset says {(h, w)}")
    tfm = resize.get_transform(image)
    resized = tfm.apply_image(image)
    inputs = [{"image": torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1))),
               "height": h, "width": w}]
    return inputs, tfm


def _object_record(record: Dict, iou: float, gt_mask: np.ndarray) -> Dict:
    return {"image": record["file_name"], "iou": iou, "thin": thin_fraction(gt_mask), "area": int(gt_mask.sum())}


@torch.no_grad()
def oracle_object_ious(model, dataset_dicts: Sequence[Dict], *, min_size_test: int, max_size_test: int,
                       input_format: str = "BGR", scale: float = 1.0, shift: float = 0.0,
                       generator: Optional[torch.Generator] = None) -> List[Dict]:
    """Segment every ground-truth object of ``dataset_dicts`` from its own box.

    Args:
        model: a Detectron2 meta-architecture in eval mode whose ``inference`` accepts
            ``detected_instances`` (GeneralizedRCNN, PointRend, ObjGuidedRCNN).
        dataset_dicts: Detectron2 dataset dicts with ``file_name``, ``height``, ``width`` and
            annotations with masks.
        min_size_test, max_size_test: the test resize (``INPUT.MIN/MAX_SIZE_TEST``).
        scale, shift, generator: when not (1, 0), each image's true boxes go through
            :func:`perturb_boxes` (in original image pixels, ``generator`` drawn image by image;
            None: seed 0) before they are handed to the model.
    Returns:
        One dict per object: ``image`` (file name), ``iou``, ``thin`` (thin fraction), ``area``.
    """
    perturb = scale != 1.0 or shift != 0.0
    if perturb and generator is None:
        generator = torch.Generator().manual_seed(0)
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
            inputs, tfm = _network_input(record, resize, input_format)
            boxes = np.asarray(gt.boxes, dtype=np.float64)
            if perturb:
                boxes = perturb_boxes(torch.from_numpy(boxes), scale, shift, generator, (h, w)).numpy()
            boxes = torch.as_tensor(tfm.apply_box(boxes), dtype=torch.float32)
            n = len(boxes)
            det = Instances(tuple(inputs[0]["image"].shape[1:]))
            det.pred_boxes = Boxes(boxes)
            det.pred_classes = torch.as_tensor(np.asarray(gt.classes), dtype=torch.int64)
            # Distinct scores in GT order: outputs may be re-sorted or dropped; the score says
            # which object each output is.
            det.scores = torch.linspace(1.0, 0.5, n) if n > 1 else torch.ones(1)
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
                out.append(_object_record(record, iou, g))
    finally:
        if saved_nms is not None:
            model.mask_nms_thresh = saved_nms
    return out


@torch.no_grad()
def detected_object_ious(model, dataset_dicts: Sequence[Dict], *, min_size_test: int, max_size_test: int,
                         input_format: str = "BGR", max_dets: Optional[int] = None) -> List[Dict]:
    """Every ground-truth object's best mask IoU among the model's own predictions.

    The model runs its normal inference (its own boxes, its mask NMS) on each image, resized as
    in :func:`oracle_object_ious`; each object takes its best mask IoU with any prediction of its
    class (``best_iou`` of :func:`.errors.error_breakdown`, over the ``max_dets`` highest-scoring
    predictions per image as the evaluation counts them; 0 without one).

    Returns:
        One dict per object, as :func:`oracle_object_ious` (objects in the same order).
    """
    resize = T.ResizeShortestEdge(min_size_test, max_size_test)
    gts, preds, used = [], [], []
    for record in dataset_dicts:
        gt = gt_instances_from_dict(record)
        if len(gt.classes) == 0:
            continue  # as in the oracle; its false positives would not change any object's IoU
        inputs, _ = _network_input(record, resize, input_format)
        res = model.inference(inputs)[0]["instances"].to("cpu")
        rles = []
        if len(res):
            masks = res.pred_masks if res.pred_masks.dtype == torch.bool else res.pred_masks >= 0.5
            rles = mask_util.encode(np.asfortranarray(masks.numpy().astype(np.uint8).transpose(1, 2, 0)))
        preds.append(ImageInstances(classes=res.pred_classes.numpy(), boxes=res.pred_boxes.tensor.numpy(),
                                    masks=list(rles), scores=res.scores.numpy()))
        gts.append(gt)
        used.append(record)
    best = error_breakdown(gts, preds, max_dets=max_dets)["best_iou"] if gts else []
    out: List[Dict] = []
    for record, gt, ious in zip(used, gts, best):
        gt_masks = mask_util.decode(gt.masks).astype(bool)  # (h, w, G)
        out.extend(_object_record(record, float(ious[i]), gt_masks[:, :, i]) for i in range(len(gt.classes)))
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
