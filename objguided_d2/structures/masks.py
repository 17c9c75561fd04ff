"""Mask structures (Detectron2 keeps its own in ``detectron2/structures/masks.py``).

- :class:`ROIMaskProbs`: the ROI heads' variable-size mask probability maps, one per instance,
  indexable like a Detectron2 structure so that ``Instances`` can hold it;
- :func:`gt_bitmasks`: (R, H, W) bool GT masks from BitMasks, PolygonMasks or a tensor;
- :func:`largest_component_boxes`: the box of each mask's largest 4-connected component
  (docs/method.md §5: the GT boxes the model trains on).

Shapes: R instances, (H, W) image size, (h_r, w_r) ROI map size.
"""
from typing import List, Sequence, Union

import cv2
import numpy as np
import torch

from detectron2.structures import BitMasks, Instances, PolygonMasks

__all__ = ["ROIMaskProbs", "gt_bitmasks", "largest_component_boxes"]


class ROIMaskProbs:
    """A list of variable-size ROI mask probability maps that ``Instances`` can hold: indexing by
    int, slice, bool mask or int tensor, ``len``, ``to`` and ``cat`` like Detectron2 structures.

    Each item is an (h_r, w_r) float tensor spanning the instance's ``pred_mask_boxes``.
    """

    def __init__(self, masks: Sequence[torch.Tensor]):
        self.masks = list(masks)

    def __len__(self) -> int:
        return len(self.masks)

    def __iter__(self):
        return iter(self.masks)

    def __getitem__(self, item: Union[int, slice, torch.Tensor]) -> Union[torch.Tensor, "ROIMaskProbs"]:
        if isinstance(item, int):
            return self.masks[item]
        if isinstance(item, slice):
            return ROIMaskProbs(self.masks[item])
        item = torch.as_tensor(item)
        if item.dtype == torch.bool:
            if item.ndim != 1 or len(item) != len(self.masks):
                raise IndexError(f"ROIMaskProbs: bool index of shape {tuple(item.shape)} for "
                                 f"{len(self.masks)} masks")
            item = item.nonzero().flatten()
        return ROIMaskProbs([self.masks[i] for i in item.flatten().tolist()])

    def to(self, *args, **kwargs) -> "ROIMaskProbs":
        return ROIMaskProbs([m.to(*args, **kwargs) for m in self.masks])

    @classmethod
    def cat(cls, lists: List["ROIMaskProbs"]) -> "ROIMaskProbs":
        return cls([m for x in lists for m in x.masks])

    def __repr__(self) -> str:
        return f"ROIMaskProbs(num={len(self)}, sizes={[tuple(m.shape) for m in self.masks[:5]]}...)"


def gt_bitmasks(instances: Instances) -> torch.Tensor:
    """(R, H, W) bool GT masks of ``instances`` at its image size, from BitMasks, PolygonMasks or a
    tensor in ``gt_masks``."""
    if not instances.has("gt_masks"):
        raise ValueError("ObjGuidedROIHeads: training targets need `gt_masks` (set MODEL.MASK_ON)")
    m = instances.gt_masks
    h, w = instances.image_size
    if isinstance(m, BitMasks):
        t = m.tensor
    elif isinstance(m, PolygonMasks):
        t = BitMasks.from_polygon_masks(m, h, w).tensor if len(m) else torch.zeros(0, h, w)
    elif isinstance(m, torch.Tensor):
        t = m
    else:
        raise ValueError(f"ObjGuidedROIHeads: unsupported gt_masks type {type(m).__name__}; "
                         "expected BitMasks, PolygonMasks or a (R, H, W) tensor")
    if t.ndim != 3 or t.shape[0] != len(instances):
        raise ValueError(f"ObjGuidedROIHeads: gt_masks must be ({len(instances)}, H, W), "
                         f"got {tuple(t.shape)}")
    return t.to(device=instances.gt_boxes.device).bool()


def largest_component_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Box of each mask's largest 4-connected component (ties: the first found in raster order).

    Args:
        masks: (R, H, W) bool.
    Returns:
        (R, 4) float32 XYXY, input pixels ([x_min, y_min, x_max + 1, y_max + 1], the convention of
        ``BitMasks.get_bounding_boxes``); all zeros for an empty mask.
    """
    if masks.ndim != 3:
        raise ValueError(f"largest_component_boxes: masks must be (R, H, W), got {tuple(masks.shape)}")
    out = np.zeros((masks.shape[0], 4), dtype=np.float32)
    if masks.shape[0] == 0:
        return torch.from_numpy(out).to(masks.device)
    m = masks.bool()
    ys_any, xs_any = m.any(dim=2), m.any(dim=1)  # (R, H), (R, W)
    nonempty = ys_any.any(dim=1).cpu().numpy()
    m_np = m.cpu().numpy()
    ys_np, xs_np = ys_any.cpu().numpy(), xs_any.cpu().numpy()
    # Connected components are per mask; label each inside its own bounding box to stay cheap.
    for r in np.flatnonzero(nonempty):
        ys, xs = np.flatnonzero(ys_np[r]), np.flatnonzero(xs_np[r])
        y0, y1, x0, x1 = ys[0], ys[-1] + 1, xs[0], xs[-1] + 1
        crop = np.ascontiguousarray(m_np[r, y0:y1, x0:x1], dtype=np.uint8)
        n, _, stats, _ = cv2.connectedComponentsWithStats(crop, connectivity=4)
        best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        bx, by, bw, bh = stats[best, :4]
        out[r] = (x0 + bx, y0 + by, x0 + bx + bw, y0 + by + bh)
    return torch.from_numpy(out).to(masks.device)

