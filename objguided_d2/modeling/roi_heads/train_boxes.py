"""Beyond the paper (off by default): the boxes the segmentation branch trains on. The paper
trains it on the exact GT boxes only, so at test time a box as wrong as a detector's is new to it
(its masks follow the box, not the object). Two ways to train it on boxes like the detector's:

- :func:`jitter_boxes`: every GT box scaled and shifted at random (``TRAIN_BOX_JITTER_*``);
- :func:`match_detections`: the detector's own decoded box of a GT object, where it overlaps
  it enough (``TRAIN_DETECTED_BOXES_*``), as Mask R-CNN's mask head trains on proposals.

In both cases the GT mask is sampled on the ROI grid of the box used (truncated where the box is
too small), exactly as a mask is predicted at test time.

Shapes: R GT boxes, D detections.
"""
from typing import Optional, Sequence, Tuple

import torch

from detectron2.structures import pairwise_iou, Boxes

from .roi_grid import check_boxes, scale_shift_boxes

__all__ = ["jitter_boxes", "match_detections"]


def jitter_boxes(boxes: torch.Tensor, scale_range: Sequence[float], max_shift: float,
                 image_size: Tuple[int, int], generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Each box's width and height scaled by factors drawn uniformly from ``scale_range`` (one per
    side) and its centre shifted by up to ``max_shift`` of its width / height along each axis.

    Args:
        boxes: (R, 4) XYXY, input pixels.
        scale_range: (lo, hi) with 0 < lo <= hi.
        max_shift: >= 0, a fraction of the box side.
        image_size: (H, W) the result is clipped to.
    Returns:
        (R, 4) XYXY.
    """
    check_boxes(boxes)
    lo, hi = float(scale_range[0]), float(scale_range[1])
    if not 0 < lo <= hi or max_shift < 0:
        raise ValueError(f"jitter_boxes: need 0 < scale lo <= hi and shift >= 0, got {scale_range}, {max_shift}")
    r = len(boxes)
    u = torch.rand(r, 4, generator=generator, dtype=torch.float64).to(boxes.device)
    scale = lo + (hi - lo) * u[:, :2]
    shift = (2 * u[:, 2:] - 1) * max_shift
    return scale_shift_boxes(boxes, scale, shift, image_size)


def match_detections(gt_boxes: torch.Tensor, det_boxes: torch.Tensor,
                     iou_thresh: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Each GT box's best-overlapping detection, where the box IoU is >= ``iou_thresh``.

    Args:
        gt_boxes: (R, 4); det_boxes: (D, 4), XYXY input pixels.
    Returns:
        (R, 4) the matched detection's box (the GT box where none matches) and (R,) bool matched.
    """
    check_boxes(gt_boxes)
    if len(gt_boxes) == 0 or len(det_boxes) == 0:
        return gt_boxes.clone(), torch.zeros(len(gt_boxes), dtype=torch.bool, device=gt_boxes.device)
    iou = pairwise_iou(Boxes(gt_boxes), Boxes(det_boxes.to(gt_boxes.dtype)))  # (R, D)
    best, j = iou.max(dim=1)
    matched = best >= iou_thresh
    out = torch.where(matched[:, None], det_boxes.to(gt_boxes.dtype)[j], gt_boxes)
    return out, matched
