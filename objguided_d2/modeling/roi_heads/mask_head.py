"""The object-guided segmentation branch (method card §3): S merge modules over the per-level ROI
crops, deepest level present first, then the mask predictor on e1; plus the refinement heads
(method card §4) that read e1 and e2 at training time.

One ROI at a time (the authors' design: ROI sizes vary and InstanceNorm normalises each ROI on
its own). ``forward_single`` is the per-ROI reference that a batched implementation can be
checked against.

Shapes: L levels (0 = stride 1), (h_i, w_i) ROI size at level i, C_i crop channels,
K mask classes (1 when class-agnostic).
"""
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec
from detectron2.modeling.roi_heads.mask_head import ROI_MASK_HEAD_REGISTRY

from ..layers import MergeModule
from .point_refine import PointRefineHead

__all__ = ["ObjGuidedMaskHead", "MaskHeadOutput"]


@dataclass
class MaskHeadOutput:
    """What the segmentation branch returns for one ROI.

    mask_logits: (1, K, h_0, w_0).
    e1: (1, C_e1, h_0, w_0), the S0 output (or the level-0 crop when no deeper level exists).
    e2: (1, C_e2, h_1, w_1), the S1 output, or None when the ROI has a single level.
    """

    mask_logits: torch.Tensor
    e1: torch.Tensor
    e2: Optional[torch.Tensor]


@ROI_MASK_HEAD_REGISTRY.register()
class ObjGuidedMaskHead(nn.Module):
    """S modules S_i = M(level i+1 -> level i) with InstanceNorm (affine=False), merged from the
    deepest level an ROI has down to level 0, and conv3x3 + ReLU + conv3x3 -> K logits on e1.

    When a crop's channels differ from the S output width it stands in for (a custom
    ``SEG_CHANNELS``), a 1x1 projection adapts it; with the paper's widths there is none.
    """

    @configurable
    def __init__(
        self,
        *,
        in_channels: Sequence[int],
        seg_channels: Sequence[int],
        num_classes: int,
        cls_agnostic_mask: bool = False,
        mask_head_channels: int = 64,
        seg_norm: str = "IN",
        refine_on: bool = True,
    ):
        """
        Args:
            in_channels: C_0..C_{L-1}, channels of the cropped levels, shallow to deep.
            seg_channels: L-1 output widths of S_0..S_{L-2}.
            num_classes: foreground classes (MODEL.ROI_HEADS.NUM_CLASSES).
            cls_agnostic_mask: predict one mask for every class.
            mask_head_channels: hidden width of the mask predictor.
            seg_norm: norm of the S modules ("IN" in the paper).
            refine_on: build the two point-refinement heads (training only).
        """
        super().__init__()
        in_channels = [int(c) for c in in_channels]
        seg_channels = [int(c) for c in seg_channels]
        if len(in_channels) < 1:
            raise ValueError("ObjGuidedMaskHead: need at least one input level")
        if len(seg_channels) != len(in_channels) - 1:
            raise ValueError(
                f"ObjGuidedMaskHead: MODEL.OBJGUIDED.SEG_CHANNELS needs {len(in_channels) - 1} "
                f"widths (S0..S{len(in_channels) - 2}), got {seg_channels}"
            )
        if num_classes < 1:
            raise ValueError(f"ObjGuidedMaskHead: num_classes must be >= 1, got {num_classes}")
        self.in_channels = in_channels
        self.seg_channels = seg_channels
        self.num_levels = len(in_channels)
        # Width of the feature that represents level i after merging: S_i's output, or the raw
        # crop for the deepest level (no S module above it).
        level_width = seg_channels + [in_channels[-1]]
        self.merges = nn.ModuleList(
            MergeModule(level_width[i + 1], in_channels[i], seg_channels[i], norm=seg_norm)
            for i in range(self.num_levels - 1)
        )
        # A level that is the deepest one an ROI has enters S_{i-1} as "deep" input in place of
        # S_i's output: adapt its width when they differ (never with the default widths).
        self.entry = nn.ModuleList(
            Conv2d(in_channels[i], level_width[i], kernel_size=1)
            if in_channels[i] != level_width[i] else nn.Identity()
            for i in range(self.num_levels)
        )
        self.num_mask_classes = 1 if cls_agnostic_mask else num_classes
        e1_channels = level_width[0]
        self.mask_fcn = Conv2d(e1_channels, mask_head_channels, 3, padding=1, activation=F.relu)
        self.predictor = Conv2d(mask_head_channels, self.num_mask_classes, 3, padding=1)
        nn.init.kaiming_normal_(self.mask_fcn.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.mask_fcn.bias)
        nn.init.normal_(self.predictor.weight, std=0.001)
        nn.init.zeros_(self.predictor.bias)
        self.refine_head = (
            PointRefineHead(e1_channels, level_width[1], self.num_mask_classes)
            if refine_on and self.num_levels > 1 else None
        )

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        og = cfg.MODEL.OBJGUIDED
        missing = [f for f in og.SEG_IN_FEATURES if f not in input_shape]
        if missing:
            raise ValueError(
                f"ObjGuidedMaskHead: MODEL.OBJGUIDED.SEG_IN_FEATURES {list(og.SEG_IN_FEATURES)} "
                f"names {missing}, not among the backbone outputs {sorted(input_shape)}"
            )
        in_channels = [input_shape[f].channels for f in og.SEG_IN_FEATURES]
        seg_channels = list(og.SEG_CHANNELS) or in_channels[:-1]
        return {
            "in_channels": in_channels,
            "seg_channels": seg_channels,
            "num_classes": cfg.MODEL.ROI_HEADS.NUM_CLASSES,
            "cls_agnostic_mask": cfg.MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK,
            "mask_head_channels": og.MASK_HEAD_CHANNELS,
            "refine_on": og.REFINE_ON,
        }

    def forward_single(self, roi_feats: List[torch.Tensor]) -> MaskHeadOutput:
        """Segment one ROI.

        Args:
            roi_feats: crops of levels 0..l-1 (l >= 1), each (1, C_i, h_i, w_i), shallow first.
        Returns:
            :class:`MaskHeadOutput`.
        """
        n = len(roi_feats)
        if not 1 <= n <= self.num_levels:
            raise ValueError(f"ObjGuidedMaskHead: got {n} ROI levels, expected 1..{self.num_levels}")
        for i, x in enumerate(roi_feats):
            if x.ndim != 4 or x.shape[1] != self.in_channels[i]:
                raise ValueError(
                    f"ObjGuidedMaskHead: level {i} crop must be (1, {self.in_channels[i]}, h, w), "
                    f"got {tuple(x.shape)}"
                )
        x = self.entry[n - 1](roi_feats[n - 1])
        e2 = x if n == 2 else None
        for i in range(n - 2, -1, -1):
            x = self.merges[i](x, roi_feats[i])
            if i == 1:
                e2 = x
        e1 = x
        mask_logits = self.predictor(self.mask_fcn(e1))
        return MaskHeadOutput(mask_logits=mask_logits, e1=e1, e2=e2)

    def forward(self, rois: List[List[torch.Tensor]]) -> List[MaskHeadOutput]:
        """Segment ROIs one at a time; ``rois[r]`` is the argument of :meth:`forward_single`."""
        return [self.forward_single(r) for r in rois]

    def class_index(self, cls: int) -> int:
        """Channel of the mask / refinement logits for class ``cls``."""
        return 0 if self.num_mask_classes == 1 else int(cls)
