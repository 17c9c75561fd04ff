"""ObjGuidedRCNN (docs/method.md §3, §5): GeneralizedRCNN with two changes.

- Training: each GT box becomes the box of its mask's largest 4-connected component (when
  ``MODEL.OBJGUIDED.GT_LARGEST_COMPONENT_ON``) before the detector and the ROI heads see it.
- Inference: the ROI heads' variable-size mask probabilities are pasted at their enlarged boxes
  directly at the output resolution (bilinear, one resampling), thresholded, cleaned by mask
  NMS, and returned as standard ``pred_masks`` (R, H, W) bool
  (:func:`~objguided_d2.modeling.postprocessing.postprocess_instances`).

Shapes: R instances, (H, W) output (original) image size.
"""
from typing import Dict, List, Optional

import torch

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN
from detectron2.structures import BitMasks, Boxes, Instances

from ...structures import gt_bitmasks, largest_component_boxes
from ..postprocessing import postprocess_instances

__all__ = ["ObjGuidedRCNN"]


@META_ARCH_REGISTRY.register()
class ObjGuidedRCNN(GeneralizedRCNN):
    """GeneralizedRCNN (backbone -> CenterNet proposals -> object-guided ROI heads) with the
    largest-component GT boxes in training and variable-size mask pasting at inference."""

    @configurable
    def __init__(
        self,
        *,
        gt_largest_component: bool = True,
        mask_threshold: float = 0.5,
        mask_nms_thresh: float = 0.2,
        **kwargs,
    ):
        """
        Args:
            gt_largest_component: replace GT boxes by their mask's largest-component box.
            mask_threshold: probability threshold of the pasted masks.
            mask_nms_thresh: mask NMS IoU threshold (<= 0 disables).
            kwargs: for :class:`GeneralizedRCNN`.
        """
        super().__init__(**kwargs)
        self.gt_largest_component = gt_largest_component
        self.mask_threshold = mask_threshold
        self.mask_nms_thresh = mask_nms_thresh

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        og = cfg.MODEL.OBJGUIDED
        ret.update(
            gt_largest_component=og.GT_LARGEST_COMPONENT_ON,
            mask_threshold=og.MASK_THRESHOLD,
            mask_nms_thresh=og.MASK_NMS_THRESH,
        )
        return ret

    def forward(self, batched_inputs: List[Dict[str, torch.Tensor]]):
        """Same as :meth:`GeneralizedRCNN.forward`; in training the GT boxes are first replaced
        by largest-component boxes (the input dicts are not modified)."""
        if self.training and self.gt_largest_component and "instances" in batched_inputs[0]:
            batched_inputs = [self._with_component_boxes(x) for x in batched_inputs]
        return super().forward(batched_inputs)

    @staticmethod
    def _with_component_boxes(inputs: Dict) -> Dict:
        inst: Instances = inputs["instances"]
        if len(inst) == 0 or not inst.has("gt_masks"):
            return inputs
        masks = gt_bitmasks(inst)
        comp = largest_component_boxes(masks).to(inst.gt_boxes.tensor)
        empty = ~masks.flatten(1).any(dim=1)
        comp[empty] = inst.gt_boxes.tensor[empty]  # nothing to take a component of: keep the box
        new = Instances(inst.image_size, **inst.get_fields())
        new.gt_boxes = Boxes(comp)
        new.gt_masks = BitMasks(masks)  # rasterised once for the ROI heads too
        out = dict(inputs)
        out["instances"] = new
        return out

    def inference(
        self,
        batched_inputs: List[Dict[str, torch.Tensor]],
        detected_instances: Optional[List[Instances]] = None,
        do_postprocess: bool = True,
    ):
        """Like :meth:`GeneralizedRCNN.inference`; post-processing pastes the variable-size
        masks (:func:`postprocess_instances`) at each input's ``height`` x ``width``."""
        results = super().inference(batched_inputs, detected_instances, do_postprocess=False)
        if not do_postprocess:
            return results
        processed = []
        for res, inputs in zip(results, batched_inputs):
            height = inputs.get("height", res.image_size[0])
            width = inputs.get("width", res.image_size[1])
            processed.append({"instances": postprocess_instances(
                res, height, width, self.mask_threshold, self.mask_nms_thresh
            )})
        return processed
