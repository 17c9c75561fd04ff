"""ObjGuidedRCNN (method card §3, §5): GeneralizedRCNN with two changes.

- Training: each GT box becomes the box of its mask's largest 4-connected component (when
  ``MODEL.OBJGUIDED.GT_LARGEST_COMPONENT_ON``) before the detector and the ROI heads see it.
- Inference: the ROI heads' variable-size mask probabilities are pasted at their enlarged boxes
  directly at the output resolution (bilinear, one resampling), thresholded, cleaned by mask
  NMS, and returned as standard ``pred_masks`` (R, H, W) bool.

Shapes: R instances, (H, W) output (original) image size.
"""
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN
from detectron2.structures import BitMasks, Boxes, Instances

from ..roi_heads.objguided_roi_heads import gt_bitmasks
from ..roi_heads.roi_sampling import largest_component_boxes, paste_roi_masks

__all__ = ["ObjGuidedRCNN", "mask_nms", "postprocess_instances"]


def mask_nms(
    masks: torch.Tensor, scores: torch.Tensor, iou_threshold: float,
    classes: Optional[torch.Tensor] = None,
    pixels: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
) -> torch.Tensor:
    """Greedy mask NMS: visiting masks by decreasing score, drop one whose IoU with an already
    kept mask (of the same class, when ``classes`` is given) exceeds ``iou_threshold``.

    IoUs come from a sparse product (cost ~ overlapping pixels, not R^2 * H * W).

    Args:
        masks: (R, H, W) bool; with ``pixels`` only its (H, W) is read (any leading size).
        scores: (R,).
        classes: (R,) int or None (class-agnostic).
        pixels: the masks' foreground as (mask index (M,), y * W + x (M,)) when already known
            (``paste_roi_masks(..., return_pixels=True)``): saves a scan of the full masks.
    Returns:
        (R',) int64 indices of the kept masks, by decreasing score.
    """
    import scipy.sparse

    R = len(scores)
    if pixels is None and masks.shape[0] != R:
        raise ValueError(f"mask_nms: {masks.shape[0]} masks but {R} scores")
    order = torch.argsort(scores, descending=True)
    if R <= 1:
        return order
    if pixels is None:
        rows, cols = masks.reshape(R, -1).nonzero(as_tuple=True)
    else:
        rows, cols = pixels
    rows, cols = rows.cpu().numpy(), cols.cpu().numpy()
    m = scipy.sparse.csr_matrix(
        (np.ones(len(rows), dtype=np.float32), (rows, cols)),
        shape=(R, masks.shape[-2] * masks.shape[-1]),
    )
    inter = np.asarray((m @ m.T).todense())
    area = np.diag(inter)
    union = area[:, None] + area[None, :] - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0)
    if classes is not None:
        c = classes.cpu().numpy()
        iou = np.where(c[:, None] == c[None, :], iou, 0.0)
    suppress = iou > iou_threshold
    order_np = order.cpu().numpy()
    removed = np.zeros(R, dtype=bool)
    keep = []
    # Greedy NMS is sequential by nature; the loop runs over an R x R boolean table.
    for i in order_np:
        if removed[i]:
            continue
        keep.append(i)
        removed |= suppress[i]
    return torch.as_tensor(keep, dtype=torch.int64, device=scores.device)


def postprocess_instances(
    results: Instances,
    output_height: int,
    output_width: int,
    mask_threshold: float = 0.5,
    mask_nms_thresh: float = 0.0,
) -> Instances:
    """Turn the ROI heads' output of one image into standard full-image instances.

    Args:
        results: Instances at the network's input size with ``pred_boxes``, ``scores``,
            ``pred_classes``, ``pred_mask_probs`` (R maps (h_r, w_r)) and ``pred_mask_boxes``
            (Boxes the maps span, input pixels).
        output_height, output_width: the original image size to produce.
        mask_threshold: probability threshold of the pasted masks.
        mask_nms_thresh: mask NMS IoU threshold (<= 0 disables).
    Returns:
        Instances of size (output_height, output_width) with ``pred_boxes`` (scaled, clipped),
        ``scores``, ``pred_classes`` and ``pred_masks`` ((R', H, W) bool). Instances whose mask
        vanishes after thresholding are dropped.
    """
    in_h, in_w = results.image_size
    out_h, out_w = int(output_height), int(output_width)
    sx, sy = out_w / in_w, out_h / in_h
    boxes = Boxes(results.pred_boxes.tensor.clone())
    boxes.scale(sx, sy)
    boxes.clip((out_h, out_w))
    scale = boxes.tensor.new_tensor([sx, sy, sx, sy])
    grid_boxes = results.pred_mask_boxes.tensor * scale
    masks, (pix_inst, pix_flat) = paste_roi_masks(
        list(results.pred_mask_probs), grid_boxes, (out_h, out_w), mask_threshold,
        return_pixels=True)
    R = len(masks)
    area = torch.bincount(pix_inst, minlength=R)
    keep = (area > 0).nonzero().flatten()
    if mask_nms_thresh > 0 and len(keep) > 1:
        # The kept masks' pixels, renumbered 0..len(keep)-1 (no copy or scan of full masks).
        new_id = torch.full((R,), -1, dtype=torch.int64, device=pix_inst.device)
        new_id[keep.to(new_id.device)] = torch.arange(len(keep), device=new_id.device)
        sub = mask_nms(masks[:0], results.scores[keep], mask_nms_thresh, results.pred_classes[keep],
                       pixels=(new_id[pix_inst], pix_flat)) if len(keep) else keep
        keep = keep[sub.to(keep.device)]
    out = Instances((out_h, out_w))
    out.pred_boxes = boxes[keep]
    out.scores = results.scores[keep]
    out.pred_classes = results.pred_classes[keep]
    # Skip the copy of the full masks when nothing was dropped (and the order is unchanged).
    unchanged = len(keep) == R and bool((keep == torch.arange(R, device=keep.device)).all())
    out.pred_masks = masks if unchanged else masks[keep]
    return out


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
