"""The ROI grid's settings given once (docs/method.md §3, §5), like Detectron2's ``ROIPooler``: the
levels' strides, the box enlargement and the smallest ROI side. Everything that crops, sizes or
enlarges ROIs for the object-guided heads goes through one :class:`ROIGridPooler`.

Shapes: N images, R ROIs, L levels, C_i channels, (h, w) ROI size, P_0 level-0 canvas pixels.
"""
from typing import List, Sequence, Tuple

import torch

from .canvas_ops import PackedROIs, crop_masks_at_pixels, crop_packed_rois
from .roi_grid import enlarge_boxes, grow_boxes_at_touched_borders, mask_boxes, roi_level_sizes

__all__ = ["ROIGridPooler"]


class ROIGridPooler:
    """Variable-size ROIs on several levels: an ROI's side at level i is int(enlarge * box side /
    stride_i), so unlike ``ROIPooler``'s fixed output the ROI keeps the object's shape and size.
    """

    def __init__(self, strides: Sequence[int], enlarge: float, min_size: int):
        """
        Args:
            strides: L strides of the cropped levels, shallow to deep (e.g. [1, 2, 4, 8, 16]).
            enlarge: box enlargement about its centre before cropping (1.1 in the paper).
            min_size: a level is used while both ROI sides are >= this.
        """
        if enlarge <= 0 or min_size < 1:
            raise ValueError(f"ROIGridPooler: need enlarge > 0 and min_size >= 1, got {enlarge}, {min_size}")
        self.strides = [int(s) for s in strides]
        self.enlarge = float(enlarge)
        self.min_size = int(min_size)

    def level_sizes(self, boxes: torch.Tensor) -> List[List[Tuple[int, int]]]:
        """Per box its (h, w) at levels 0.. (empty when the box is too small for level 0).

        Args:
            boxes: (R, 4) XYXY, input pixels.
        """
        return roi_level_sizes(boxes, self.strides, self.enlarge, self.min_size)

    def enlarged(self, boxes: torch.Tensor) -> torch.Tensor:
        """(R, 4) the boxes the ROI grids span (the mask maps' extent in input pixels)."""
        return enlarge_boxes(boxes, self.enlarge)

    def crop(self, feats: Sequence[torch.Tensor], boxes: torch.Tensor, image_index: torch.Tensor,
             level_sizes: Sequence[Sequence[Tuple[int, int]]]) -> PackedROIs:
        """Crop every level each ROI has, packed into one canvas per level.

        Args:
            feats: L maps (N, C_i, H_i, W_i), shallow first.
            boxes: (R, 4) XYXY before enlargement; image_index: (R,) int64.
            level_sizes: per ROI its >= 1 level sizes (:meth:`level_sizes`).
        """
        return crop_packed_rois(feats, self.strides, boxes, image_index, level_sizes, enlarge=self.enlarge)

    def crop_gt_masks(self, rois: PackedROIs, masks: Sequence[torch.Tensor], boxes: torch.Tensor,
                      dtype: torch.dtype) -> torch.Tensor:
        """GT masks sampled on the ROIs' level-0 grids (soft at the edges), at the level-0 canvas
        pixels: the training target.

        Args:
            rois: the packed ROIs; masks: per image (n_i, H, W) bool masks of its ROIs, in ROI
                order (the ROIs of image 0 first); boxes: (R, 4) the ROIs' boxes.
        Returns:
            (P_0,) in [0, 1].
        """
        lay0 = rois.layout.levels[0]
        target = torch.zeros(len(lay0.pix_flat), dtype=dtype, device=boxes.device)
        start = 0
        for m in masks:
            sel = torch.arange(start, start + len(m), device=boxes.device)
            start += len(m)
            pix, vals = crop_masks_at_pixels(m, boxes[sel], rois.layout.slots[sel, 0], lay0,
                                             enlarge=self.enlarge)
            target[pix] = vals.to(dtype)
        return target

    def grow_at_touched_borders(self, boxes: torch.Tensor, probs: Sequence[torch.Tensor],
                                threshold: float, expand: float, image_size: Tuple[int, int]):
        """:func:`~.roi_grid.grow_boxes_at_touched_borders` with this grid's enlargement."""
        return grow_boxes_at_touched_borders(boxes, probs, threshold, expand, image_size, self.enlarge)

    def mask_boxes(self, boxes: torch.Tensor, probs: Sequence[torch.Tensor], threshold: float):
        """:func:`~.roi_grid.mask_boxes` with this grid's enlargement."""
        return mask_boxes(boxes, probs, threshold, self.enlarge)
