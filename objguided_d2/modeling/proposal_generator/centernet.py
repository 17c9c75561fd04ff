"""Center-point proposal generator (docs/method.md §2): heatmap / wh / offset heads on the decoder
feature d2 (stride n = 4), CornerNet focal loss + L1 regression, and peak decoding into
proposals for the object-guided segmentation branch.

Shapes: N images, C classes (``MODEL.ROI_HEADS.NUM_CLASSES``), (H, W) the feature grid,
K centres in the batch, D_i decoded peaks of image i.
"""

import math
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling.proposal_generator import PROPOSAL_GENERATOR_REGISTRY
from detectron2.structures import Boxes, ImageList, Instances

from .centernet_losses import TargetRule, centernet_losses
from .centernet_utils import decode_detections

__all__ = ["CenterNetProposalGenerator"]


def _head(in_ch: int, hidden: int, out_ch: int, k1: int, k2: int) -> nn.Sequential:
    """conv(k1, in->hidden) + ReLU + conv(k2, hidden->out), 'same' padding."""
    return nn.Sequential(
        nn.Conv2d(in_ch, hidden, kernel_size=k1, padding=k1 // 2, bias=True),
        nn.ReLU(inplace=True),
        nn.Conv2d(hidden, out_ch, kernel_size=k2, padding=k2 // 2, bias=True),
    )


@PROPOSAL_GENERATOR_REGISTRY.register()
class CenterNetProposalGenerator(nn.Module):
    """Detects objects as heatmap peaks and returns them as proposals.

    Outputs per image an ``Instances`` with ``proposal_boxes`` (``Boxes``, XYXY input pixels,
    clipped, non-empty), ``objectness_logits`` (the heatmap logit at the peak), ``scores``
    (sigmoid of it) and ``pred_classes`` (int64). They are decoded in training as well (under
    no_grad) so callers see the same structure in both modes.
    """

    @configurable
    def __init__(
        self,
        *,
        in_feature: str,
        in_channels: int,
        stride: int,
        num_classes: int,
        head_channels: int = 256,
        heatmap_kernel_size: int = 3,
        wh_kernel_size: int = 7,
        offset_kernel_size: int = 3,
        heatmap_prior: float = 0.1,
        min_overlap: float = 0.7,
        focal_alpha: float = 2.0,
        focal_beta: float = 4.0,
        reg_loss: str = "l1",
        min_box_size: float = 2.0,
        min_radius: int = 0,
        positive_radius: int = 0,
        loss_weights: Optional[Dict[str, float]] = None,
        topk: int = 500,
        score_thresh: float = 0.3,
    ):
        """
        Args:
            in_feature: name of the feature the heads read (e.g. "d2").
            in_channels, stride: channels and stride n of that feature.
            num_classes: C, heatmap channels.
            head_channels: hidden width of the three heads.
            heatmap_kernel_size, wh_kernel_size, offset_kernel_size: first-conv kernels (wh uses
                it for both convs).
            heatmap_prior: p of the heatmap bias init -log((1-p)/p).
            min_overlap: IoU o of ``gaussian_radius``.
            focal_alpha, focal_beta: focal loss exponents.
            reg_loss: "l1" or "smooth_l1" for wh and offset.
            min_box_size: boxes <= this (input pixels) in either side get no target.
            min_radius, positive_radius: beyond the paper (0 = off), see
                :func:`~.centernet_utils.build_targets`.
            loss_weights: {"loss_heatmap", "loss_wh", "loss_offset", "loss_giou"} -> weight
                (default 1, 0.1, 1, 0). A positive "loss_giou" weight adds a GIoU loss of the box
                decoded from the predicted wh and offset (beyond the paper; 0 = off).
            topk: K peaks kept per image; score_thresh: keep peaks scoring above it.
        """
        super().__init__()
        if reg_loss not in ("l1", "smooth_l1"):
            raise ValueError(
                f"MODEL.OBJGUIDED.REG_LOSS must be 'l1' or 'smooth_l1', got {reg_loss!r}"
            )
        if num_classes <= 0:
            raise ValueError(f"MODEL.ROI_HEADS.NUM_CLASSES must be positive, got {num_classes}")
        if not 0 < heatmap_prior < 1:
            raise ValueError(
                f"MODEL.OBJGUIDED.HEATMAP_PRIOR must be in (0, 1), got {heatmap_prior}"
            )
        for name, k in (
            ("HEATMAP", heatmap_kernel_size),
            ("WH", wh_kernel_size),
            ("OFFSET", offset_kernel_size),
        ):
            if k <= 0 or k % 2 == 0:
                raise ValueError(
                    f"MODEL.OBJGUIDED.{name}_KERNEL_SIZE must be odd and positive, got {k}"
                )
        self.in_feature = in_feature
        self.stride = int(stride)
        self.num_classes = int(num_classes)
        self.focal_alpha = float(focal_alpha)
        self.focal_beta = float(focal_beta)
        self.reg_loss = reg_loss
        self.target_rule = TargetRule(self.stride, self.num_classes, float(min_overlap),
                                      float(min_box_size), int(min_radius), int(positive_radius))
        weights = {"loss_heatmap": 1.0, "loss_wh": 0.1, "loss_offset": 1.0, "loss_giou": 0.0}
        weights.update(loss_weights or {})
        self.loss_weights = weights
        self.topk = int(topk)
        self.score_thresh = float(score_thresh)

        self.heatmap_head = _head(in_channels, head_channels, num_classes, heatmap_kernel_size, 1)
        self.wh_head = _head(in_channels, head_channels, 2, wh_kernel_size, wh_kernel_size)
        self.offset_head = _head(in_channels, head_channels, 2, offset_kernel_size, 1)
        # PyTorch's default conv weights with zero biases, as the authors' code: a fan-out
        # Kaiming init makes the initial wh/offset outputs (and losses) several times larger.
        for head in (self.heatmap_head, self.wh_head, self.offset_head):
            for m in head:
                if isinstance(m, nn.Conv2d):
                    nn.init.zeros_(m.bias)
        # Focal-loss prior: start every cell near p, so the many negatives do not swamp step one.
        nn.init.constant_(
            self.heatmap_head[-1].bias, -math.log((1 - heatmap_prior) / heatmap_prior)
        )

    @property
    def min_radius(self) -> int:
        return self.target_rule.min_radius

    @property
    def positive_radius(self) -> int:
        return self.target_rule.positive_radius

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        og = cfg.MODEL.OBJGUIDED
        if og.DET_IN_FEATURE not in input_shape:
            raise ValueError(
                f"MODEL.OBJGUIDED.DET_IN_FEATURE={og.DET_IN_FEATURE!r} is not a backbone output; "
                f"available: {sorted(input_shape)}"
            )
        shape = input_shape[og.DET_IN_FEATURE]
        return {
            "in_feature": og.DET_IN_FEATURE,
            "in_channels": shape.channels,
            "stride": shape.stride,
            "num_classes": cfg.MODEL.ROI_HEADS.NUM_CLASSES,
            "head_channels": og.HEAD_CHANNELS,
            "heatmap_kernel_size": og.HEATMAP_KERNEL_SIZE,
            "wh_kernel_size": og.WH_KERNEL_SIZE,
            "offset_kernel_size": og.OFFSET_KERNEL_SIZE,
            "heatmap_prior": og.HEATMAP_PRIOR,
            "min_overlap": og.GAUSSIAN_MIN_OVERLAP,
            "focal_alpha": og.FOCAL_ALPHA,
            "focal_beta": og.FOCAL_BETA,
            "reg_loss": og.REG_LOSS,
            "min_box_size": og.MIN_BOX_SIZE,
            "min_radius": og.MIN_GAUSSIAN_RADIUS,
            "positive_radius": og.POSITIVE_RADIUS,
            "loss_weights": {
                "loss_heatmap": og.HEATMAP_LOSS_WEIGHT,
                "loss_wh": og.WH_LOSS_WEIGHT,
                "loss_offset": og.OFFSET_LOSS_WEIGHT,
                "loss_giou": og.GIOU_LOSS_WEIGHT,
            },
            "topk": og.TOPK,
            "score_thresh": og.SCORE_THRESH_TEST,
        }

    def predict(self, feature: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """
        Args:
            feature: (N, C_in, H, W).
        Returns:
            heatmap logits (N, C, H, W), wh (N, 2, H, W) and offset (N, 2, H, W) in cells.
        """
        return self.heatmap_head(feature), self.wh_head(feature), self.offset_head(feature)

    def forward(
        self,
        images: ImageList,
        features: Dict[str, torch.Tensor],
        gt_instances: Optional[List[Instances]] = None,
    ) -> Tuple[List[Instances], Dict[str, torch.Tensor]]:
        """
        Args:
            images: the padded batch; ``image_sizes`` bound the boxes.
            features: backbone outputs, ``features[in_feature]`` is (N, C_in, H, W).
            gt_instances: training only: per image ``gt_boxes`` (XYXY input pixels) and
                ``gt_classes``.
        Returns:
            proposals: N ``Instances`` (see class docstring), by decreasing score.
            losses: {"loss_heatmap", "loss_wh", "loss_offset"} (weighted; and "loss_giou" when its
                weight is positive) in training, else {}.
        """
        if self.in_feature not in features:
            raise KeyError(
                f"CenterNetProposalGenerator: feature {self.in_feature!r} missing; "
                f"got {sorted(features)}"
            )
        feature = features[self.in_feature]
        logits, wh, offset = self.predict(feature)

        losses: Dict[str, torch.Tensor] = {}
        if self.training:
            if gt_instances is None:
                raise ValueError(
                    "CenterNetProposalGenerator: gt_instances are required in training"
                )
            if len(gt_instances) != feature.shape[0]:
                raise ValueError(
                    f"CenterNetProposalGenerator: {len(gt_instances)} gt_instances for a batch of "
                    f"{feature.shape[0]} images"
                )
            losses = centernet_losses(logits, wh, offset, gt_instances, self.target_rule,
                                      focal_alpha=self.focal_alpha, focal_beta=self.focal_beta,
                                      reg_loss=self.reg_loss, loss_weights=self.loss_weights)

        with torch.no_grad():
            proposals = self.decode(
                logits.detach(), wh.detach(), offset.detach(), images.image_sizes
            )
        return proposals, losses

    def decode(
        self,
        logits: torch.Tensor,
        wh: torch.Tensor,
        offset: torch.Tensor,
        image_sizes: List[Tuple[int, int]],
    ) -> List[Instances]:
        """Peaks -> ``Instances`` in input pixels.

        Args:
            logits: (N, C, H, W); wh, offset: (N, 2, H, W).
            image_sizes: N (height, width) of the unpadded images.
        """
        n, c, h, w = logits.shape
        dets, flat = decode_detections(
            logits.sigmoid(), wh, offset, self.topk, self.score_thresh, return_indices=True
        )
        out = []
        for i in range(n):
            d = dets[i]
            cx, cy = d[:, 0] * self.stride, d[:, 1] * self.stride
            bw, bh = d[:, 2] * self.stride, d[:, 3] * self.stride
            boxes = Boxes(torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], dim=1))
            boxes.clip(image_sizes[i])
            # Drops negative/zero sizes and boxes entirely in the padding.
            keep = boxes.nonempty(threshold=0.0)
            inst = Instances(tuple(image_sizes[i]))
            inst.proposal_boxes = boxes[keep]
            inst.objectness_logits = logits[i].reshape(-1)[flat[i][keep]]
            inst.scores = d[keep, 4]
            inst.pred_classes = d[keep, 5].long()
            out.append(inst)
        return out
