"""Data structures of the object-guided model, beside Detectron2's ``detectron2.structures``:
variable-size ROI mask probabilities (what the ROI heads return) and the GT-mask helpers
(bitmasks from any mask format, largest-component boxes)."""
from .masks import ROIMaskProbs, gt_bitmasks, largest_component_boxes

__all__ = ["ROIMaskProbs", "gt_bitmasks", "largest_component_boxes"]
