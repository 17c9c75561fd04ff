"""Object-guided ROI heads and segmentation branch (registers ``ObjGuidedROIHeads`` and
``ObjGuidedMaskHead``), and the PointRend baseline's ``EmptySafePointRendROIHeads``."""
from .mask_head import MaskHeadOutput, ObjGuidedMaskHead
from .pointrend_baseline import EmptySafePointRendROIHeads
from .objguided_roi_heads import ObjGuidedROIHeads, ROIMaskProbs, gt_bitmasks
from .point_refine import (
    PointRefineHead,
    calculate_uncertainty,
    point_sample,
    sample_uncertain_points,
)
from .roi_sampling import (
    crop_mask_roi,
    crop_roi,
    enlarge_boxes,
    largest_component_boxes,
    paste_roi_masks,
    roi_level_sizes,
)

__all__ = [k for k in globals().keys() if not k.startswith("_")]
