"""The center-point detector's training losses (docs/method.md §2) as functions of tensors, like
Detectron2's ``mask_rcnn_loss``: CornerNet focal loss on the heatmap, L1 (or smooth L1) on wh and
offset at the centre cells, and (beyond the paper) a GIoU loss on the decoded box.

Shapes: N images, C classes, (H, W) the feature grid, K centres in the batch.
"""
from dataclasses import dataclass
from typing import Dict, List

import torch
import torch.nn.functional as F
from torchvision.ops import generalized_box_iou_loss

from detectron2.structures import Instances

from .centernet_utils import build_targets, focal_loss

__all__ = ["TargetRule", "centernet_losses"]


@dataclass(frozen=True)
class TargetRule:
    """How GT boxes become heatmap / wh / offset targets (:func:`~.centernet_utils.build_targets`).

    stride: n of the feature grid; num_classes: C; min_overlap: IoU o of ``gaussian_radius``;
    min_box_size: boxes <= this (input pixels) in either side get no target; min_radius,
    positive_radius: beyond the paper (0 = off).
    """

    stride: int
    num_classes: int
    min_overlap: float
    min_box_size: float
    min_radius: int = 0
    positive_radius: int = 0

    def __post_init__(self):
        if self.min_radius < 0 or self.positive_radius < 0:
            raise ValueError(
                f"MODEL.OBJGUIDED.MIN_GAUSSIAN_RADIUS / POSITIVE_RADIUS must be >= 0, got "
                f"{self.min_radius} / {self.positive_radius}"
            )


def centernet_losses(
    logits: torch.Tensor,
    wh: torch.Tensor,
    offset: torch.Tensor,
    gt_instances: List[Instances],
    rule: TargetRule,
    *,
    focal_alpha: float,
    focal_beta: float,
    reg_loss: str,
    loss_weights: Dict[str, float],
) -> Dict[str, torch.Tensor]:
    """Focal loss on the heatmap; L1 (or smooth L1) on wh and offset at the centre cells, as in
    the authors' code: summed, divided by the number of regressed values (2 per centre). With no
    centre in the batch the regression losses are 0 yet still in the graph (DDP needs every
    parameter used).

    Args:
        logits: (N, C, H, W) heatmap logits; wh, offset: (N, 2, H, W) in cells.
        gt_instances: per image ``gt_boxes`` (XYXY input pixels) and ``gt_classes``.
        loss_weights: {"loss_heatmap", "loss_wh", "loss_offset", "loss_giou"} -> weight; a
            positive "loss_giou" adds the GIoU loss of the decoded box.
    Returns:
        {"loss_heatmap", "loss_wh", "loss_offset"[, "loss_giou"]}, weighted.
    """
    n, _, h, w = logits.shape
    heatmaps, indices, wh_t, off_t, box_t = [], [], [], [], []
    for i, inst in enumerate(gt_instances):
        if not inst.has("gt_boxes") or not inst.has("gt_classes"):
            raise ValueError(
                f"CenterNetProposalGenerator: gt_instances[{i}] needs 'gt_boxes' and "
                f"'gt_classes', has {list(inst.get_fields())}"
            )
        t = build_targets(
            inst.gt_boxes.tensor.to(logits.device),
            inst.gt_classes.to(logits.device),
            (h, w),
            rule.stride,
            rule.num_classes,
            min_overlap=rule.min_overlap,
            min_box_size=rule.min_box_size,
            min_radius=rule.min_radius,
            positive_radius=rule.positive_radius,
        )
        heatmaps.append(t["heatmap"])
        indices.append(t["indices"] + i * h * w)  # flat index into the batch
        wh_t.append(t["wh"])
        off_t.append(t["offset"])
        box_t.append(t["boxes"])
    gt_heatmap = torch.stack(heatmaps)
    indices = torch.cat(indices)
    num = max(indices.numel(), 1)

    def gather(x: torch.Tensor) -> torch.Tensor:  # (N, 2, H, W) -> (K, 2)
        return x.permute(0, 2, 3, 1).reshape(-1, 2)[indices]

    def reg(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if reg_loss == "l1":
            loss = F.l1_loss(pred, target, reduction="sum")
        else:
            loss = F.smooth_l1_loss(pred, target, reduction="sum", beta=1.0)
        return loss / (2 * num)

    loss_heatmap = focal_loss(logits, gt_heatmap, focal_alpha, focal_beta)
    loss_wh = reg(gather(wh), torch.cat(wh_t))
    loss_offset = reg(gather(offset), torch.cat(off_t))
    losses = {
        "loss_heatmap": loss_heatmap * loss_weights["loss_heatmap"],
        "loss_wh": loss_wh * loss_weights["loss_wh"],
        "loss_offset": loss_offset * loss_weights["loss_offset"],
    }
    if loss_weights["loss_giou"] > 0:
        # The box the decoder would output from each positive cell, in cells. A negative
        # predicted size gets no GIoU gradient; the L1 wh loss keeps sizes positive.
        pix = indices % (h * w)
        cell = torch.stack([pix % w, pix // w], dim=1).to(wh.dtype)
        centre, size = cell + gather(offset), gather(wh).clamp(min=0)
        pred = torch.cat([centre - size / 2, centre + size / 2], dim=1)
        giou = generalized_box_iou_loss(pred, torch.cat(box_t), reduction="sum") / num
        losses["loss_giou"] = giou * loss_weights["loss_giou"]
    return losses
