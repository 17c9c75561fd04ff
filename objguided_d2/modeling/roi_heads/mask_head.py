"""The object-guided mask head (docs/method.md §3, §4): the whole segmentation branch and its
losses, registered in ``ROI_MASK_HEAD_REGISTRY``.

S merge modules run over the per-level ROI crops, deepest level present first, then the mask
predictor on e1; the refinement heads (:mod:`.point_refine`) read e1 and e2 at training time.
ROI sizes vary and InstanceNorm normalises each ROI on its own, so the paper's authors segment one
ROI at a time; here all ROIs are packed into one zero-separated canvas per level and every layer
runs once per level (:meth:`ObjGuidedMaskHead.layers`, operations in :mod:`.canvas_ops`) with
the same per-ROI results. The one-ROI-at-a-time version is kept as the test oracle
(``tests/modeling/reference_seg.py``), as Detectron2 keeps ``paste_mask_in_image_old``.

Like Detectron2's ``BaseMaskRCNNHead``, :meth:`ObjGuidedMaskHead.forward` returns the losses
(``loss_seg``, ``loss_refine``) in training and the mask probabilities at inference.

Shapes: R ROIs, L levels (0 = stride 1), (h_i, w_i) ROI size at level i, C_i crop channels,
K mask classes (1 when class-agnostic), P_0 level-0 canvas pixels.
"""
from dataclasses import dataclass
from functools import partial
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec
from detectron2.modeling.roi_heads.mask_head import ROI_MASK_HEAD_REGISTRY

from ..layers import MergeModule
from .canvas_layout import LevelLayout
from .canvas_ops import (
    PackedROIs,
    class_logits_at_pixels,
    conv_canvas,
    roi_class_probs,
    upsample_to_canvas,
)
from .point_refine import PointRefineHead, point_refine_logits

__all__ = ["ObjGuidedMaskHead", "MaskHeadOutput", "seg_loss", "refine_loss"]


@dataclass
class MaskHeadOutput:
    """What the segmentation branch returns, for one ROI or for a packed canvas.

    mask_logits: (1, K, h_0, w_0) (one ROI) or (1, K, H_0, W_0) (level-0 canvas).
    e1: the S0 output (or the level-0 crop when no deeper level exists), same layout.
    e2: the S1 output, or None when there is no level 1.
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
        seg_loss_weight: float = 2.0,
        refine_loss_weight: float = 1.0,
        refine_point_divisor: int = 8,
        refine_oversample_ratio: float = 3.0,
        refine_importance_sample_ratio: float = 0.75,
    ):
        """
        Args:
            in_channels: C_0..C_{L-1}, channels of the cropped levels, shallow to deep.
            seg_channels: L-1 output widths of S_0..S_{L-2}.
            num_classes: foreground classes (MODEL.ROI_HEADS.NUM_CLASSES).
            cls_agnostic_mask: predict one mask for every class.
            mask_head_channels: hidden width of the mask predictor.
            seg_norm: norm of the S modules ("IN" in the paper).
            refine_on: build the two point-refinement heads and train ``loss_refine``.
            seg_loss_weight / refine_loss_weight: loss weights.
            refine_point_divisor / refine_oversample_ratio / refine_importance_sample_ratio:
                D, k, beta of the point sampling.
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
        self.seg_loss_weight = seg_loss_weight
        self.refine_loss_weight = refine_loss_weight
        self.point_rule = dict(point_divisor=int(refine_point_divisor),
                               oversample_ratio=refine_oversample_ratio,
                               importance_sample_ratio=refine_importance_sample_ratio)
        self._check_per_roi_norms()

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
        return {
            "in_channels": in_channels,
            "seg_channels": list(og.SEG_CHANNELS) or in_channels[:-1],
            "num_classes": cfg.MODEL.ROI_HEADS.NUM_CLASSES,
            "cls_agnostic_mask": cfg.MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK,
            "mask_head_channels": og.MASK_HEAD_CHANNELS,
            "refine_on": og.REFINE_ON,
            "seg_loss_weight": og.SEG_LOSS_WEIGHT,
            "refine_loss_weight": og.REFINE_LOSS_WEIGHT,
            "refine_point_divisor": og.REFINE_POINT_DIVISOR,
            "refine_oversample_ratio": og.REFINE_OVERSAMPLE_RATIO,
            "refine_importance_sample_ratio": og.REFINE_IMPORTANCE_SAMPLE_RATIO,
        }

    def _check_per_roi_norms(self) -> None:
        """Refuse a norm that mixes ROIs or keeps statistics: the canvas runs all ROIs at once and
        must normalise each one on its own (the paper's affine-free InstanceNorm, or no norm)."""
        for name, m in self.named_modules():
            if isinstance(m, nn.InstanceNorm2d) and (m.affine or m.track_running_stats):
                raise ValueError(f"ObjGuidedMaskHead: {name} is an affine / tracked InstanceNorm; "
                                 "only the paper's affine=False one is supported")
            if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)) or type(m).__name__ == "FrozenBatchNorm2d":
                raise ValueError(f"ObjGuidedMaskHead: seg_norm gives {name} a {type(m).__name__}, "
                                 "which mixes ROIs; use \"IN\" (the paper's) or \"\" (none)")

    # ------------------------------------------------------------------------ the layers
    def layers(self, rois: PackedROIs) -> MaskHeadOutput:
        """The S modules and the mask predictor on every ROI of a packed canvas at once, each ROI
        on its own as in the paper (canvases in, canvases out: e1 and the logits on the level-0
        canvas, e2 on the level-1 canvas).

        Per ROI with l levels: x = entry(crop_{l-1}); x = S_i(x, crop_i) for i = l-2 .. 0;
        logits = predictor(mask_fcn(x)); e1 = x after S_0, e2 = x after S_1.
        """
        layout = rois.layout
        levels = layout.levels
        if len(levels) > self.num_levels:
            raise ValueError(f"ObjGuidedMaskHead: ROIs with {len(levels)} levels, the head has "
                             f"{self.num_levels}")
        xs: List[Optional[torch.Tensor]] = [None] * len(levels)
        for i in range(len(levels) - 1, -1, -1):
            lay, crop = levels[i], rois.crops[i]
            hm = lay.merged_rows
            parts = []
            if lay.num_merged:  # rows [0, hm): S_i merges the deeper canvas into these ROIs
                deep_slot = layout.slots[lay.rois[: lay.num_merged], i + 1]
                up = upsample_to_canvas(xs[i + 1], levels[i + 1], lay, deep_slot)
                parts.append(self.merges[i].merge_upsampled(
                    up, crop[:, :, :hm], run_conv=partial(conv_canvas, lay=lay, rows=hm)))
            if lay.num_merged < len(lay.rois):  # ROIs whose deepest level is i: x = entry(crop)
                rest = crop[:, :, hm:]
                if not isinstance(self.entry[i], nn.Identity):
                    rest = self.entry[i](rest) * lay.mask[:, :, hm:]
                parts.append(rest)
            xs[i] = parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)
        run0 = partial(conv_canvas, lay=levels[0], rows=levels[0].height)
        logits = run0(self.predictor, run0(self.mask_fcn, xs[0]))
        return MaskHeadOutput(mask_logits=logits, e1=xs[0], e2=xs[1] if len(xs) > 1 else None)

    # ------------------------------------------------------------------------ head interface
    def forward(
        self,
        rois: Optional[PackedROIs],
        classes: torch.Tensor,
        gt_roi_masks: Optional[torch.Tensor] = None,
    ):
        """
        Args:
            rois: R ROIs' crops packed into per-level canvases (:class:`PackedROIs`), or None
                when there is nothing to segment.
            classes: (R,) int64 class of each ROI.
            gt_roi_masks: (P_0,) training targets: the GT masks sampled on the ROI grids at the
                level-0 canvas pixels; None at inference.
        Returns:
            training: {"loss_seg", ["loss_refine"]}; inference: R (h_0, w_0) probability maps of
            each ROI's class (views into one canvas).
        """
        training = gt_roi_masks is not None
        if rois is None:
            return self.weighted_losses(None, None) if training else []
        cidx = self.class_indices(classes)
        out = self.layers(rois)
        if not training:
            return roi_class_probs(out.mask_logits, rois.layout, cidx)
        lay0 = rois.layout.levels[0]
        logits = class_logits_at_pixels(out.mask_logits, lay0, cidx)  # (P_0,)
        refine = None
        if self.refine_head is not None:
            refine = point_refine_logits(
                self.refine_head, rois.layout, out.e1, out.e2, [s[0] for s in rois.level_sizes],
                logits, gt_roi_masks, cidx, **self.point_rule)
        return self.weighted_losses(seg_loss(logits, gt_roi_masks, lay0), refine)

    def weighted_losses(self, loss_seg: Optional[torch.Tensor],
                        refine: Optional[Tuple[torch.Tensor, torch.Tensor]]) -> Dict[str, torch.Tensor]:
        """``loss_seg`` and ``loss_refine`` (:func:`refine_loss` of ``refine``) with their weights.

        Both stay connected to every head parameter (a zero term) so that a batch with nothing to
        segment has finite, backward-able losses and DDP sees no unused parameter.
        """
        zero = sum(p.sum() for p in self.parameters()) * 0.0
        losses = {"loss_seg": (zero if loss_seg is None else loss_seg + zero) * self.seg_loss_weight}
        if self.refine_head is not None:
            loss_ref = refine_loss(refine)
            losses["loss_refine"] = (zero if loss_ref is None else loss_ref + zero) * self.refine_loss_weight
        return losses

    def class_indices(self, classes: torch.Tensor) -> torch.Tensor:
        """(R,) logit channel of each class: 0 when class-agnostic."""
        if self.num_mask_classes == 1:
            return torch.zeros_like(classes, dtype=torch.int64)
        return classes.long()


def seg_loss(pixel_logits: torch.Tensor, pixel_targets: torch.Tensor, lay0: LevelLayout) -> torch.Tensor:
    """L_seg (docs/method.md §4): the mean over ROIs of each ROI's mean per-pixel BCE, so that a
    large ROI weighs as much as a small one.

    Args:
        pixel_logits: (P_0,) logit of each level-0 canvas pixel for its ROI's class.
        pixel_targets: (P_0,) GT ROI masks at those pixels, in [0, 1].
        lay0: the level-0 layout.
    Returns:
        scalar.
    """
    bce = F.binary_cross_entropy_with_logits(pixel_logits, pixel_targets, reduction="none")
    per_roi = bce.new_zeros(len(lay0.rois)).index_add(0, lay0.pix_slot, bce)
    per_roi = per_roi / (lay0.h * lay0.w).to(bce.dtype)  # the mean over ROIs is order-free
    return per_roi.mean()


def refine_loss(refine: Optional[Tuple[torch.Tensor, torch.Tensor]]) -> Optional[torch.Tensor]:
    """L_refine (docs/method.md §4): the BCE over every point entry of both RefineHeads, or None
    when no point was kept.

    Args:
        refine: (logits (M,), soft labels (M,)) from :func:`~.point_refine.point_refine_logits`.
    """
    if refine is None or refine[0].numel() == 0:
        return None
    return F.binary_cross_entropy_with_logits(refine[0], refine[1])
