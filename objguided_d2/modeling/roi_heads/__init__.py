"""Object-guided ROI heads and segmentation branch (registers ``ObjGuidedROIHeads`` and
``ObjGuidedMaskHead``), and the PointRend baseline's ``EmptySafePointRendROIHeads``.

- :mod:`.roi_grid`: the ROI grid's geometry (box enlargement, per-level ROI sizes, grid and tap
  rules); :mod:`.roi_pooler`: its settings given once and the crops it makes;
- :mod:`.mask_head`: the segmentation branch (S modules, mask predictor) and its losses;
- :mod:`.point_refine`: the auxiliary point refinement (point rule, RefineHeads, logits);
- :mod:`.canvas_layout` / :mod:`.canvas_ops`: packing ROIs into per-level canvases and the
  operations the mask head's layers run on them;
- :mod:`.objguided_roi_heads`: instance selection, cropping, calling the mask head.
"""
from .mask_head import MaskHeadOutput, ObjGuidedMaskHead, refine_loss, seg_loss
from .objguided_roi_heads import ObjGuidedROIHeads
from .point_refine import PointRefineHead
from .pointrend_baseline import EmptySafePointRendROIHeads
from .roi_grid import enlarge_boxes, roi_level_sizes
from .roi_pooler import ROIGridPooler

__all__ = [k for k in globals().keys() if not k.startswith("_")]
