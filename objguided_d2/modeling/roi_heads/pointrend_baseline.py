"""The PointRend baseline's ROI heads: Detectron2's ``PointRendROIHeads``, plus one guard.

Detectron2's ``PointRendMaskHead`` crashes in training when no image of a batch has a foreground
ROI (``sample_point_labels`` concatenates an empty list: ``torch.cat(): expected a non-empty list
of Tensors``). That happens whenever every image of a batch has no annotated object, which
biological data has (empty fields of view; the embedded datasets include some). Mask R-CNN's mask
loss is 0 in that case; here too.
"""
from typing import Dict, List

import torch
from detectron2.modeling import ROI_HEADS_REGISTRY
from detectron2.modeling.roi_heads.roi_heads import select_foreground_proposals
from detectron2.projects.point_rend.roi_heads import PointRendROIHeads
from detectron2.structures import Instances

__all__ = ["EmptySafePointRendROIHeads"]


@ROI_HEADS_REGISTRY.register()
class EmptySafePointRendROIHeads(PointRendROIHeads):
    """``PointRendROIHeads`` whose mask losses are 0 (still connected to every mask-head
    parameter, as DDP needs) for a training batch without foreground ROIs."""

    def _forward_mask(self, features: Dict[str, torch.Tensor], instances: List[Instances]):
        if self.training and self.mask_on:
            fg, _ = select_foreground_proposals(instances, self.num_classes)
            if sum(len(x) for x in fg) == 0:
                zero = sum(p.sum() for p in self.mask_head.parameters()) * 0.0
                losses = {"loss_mask": zero}
                if getattr(self.mask_head, "mask_point_on", False):
                    losses["loss_mask_point"] = zero
                return losses
        return super()._forward_mask(features, instances)
