"""The test oracle of the segmentation branch: the paper's maths one ROI at a time, written
plainly (as Detectron2 keeps ``paste_mask_in_image_old`` in its tests). The package runs the same
maths on packed canvases (``objguided_d2/modeling/roi_heads``); ``test_batched_seg.py`` checks
that both agree (crops, S modules, InstanceNorm, mask logits, losses, refinement points, gradients).

Shapes: R ROIs, (h, w) ROI size, C channels, K mask classes, P points.
"""
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from detectron2.projects.point_rend.point_features import point_sample
from detectron2.structures import Instances

from objguided_d2.modeling.roi_heads.mask_head import MaskHeadOutput, ObjGuidedMaskHead
from objguided_d2.modeling.roi_heads.point_refine import (
    PointRefineHead,
    calculate_uncertainty,
    num_refine_points,
)
from objguided_d2.modeling.roi_heads.roi_grid import enlarge_boxes, feature_grid, grid_positions
from objguided_d2.structures import gt_bitmasks


# ----------------------------------------------------------------------------- one-ROI crops
def crop_roi(
    feature: torch.Tensor,
    box: torch.Tensor,
    out_hw: Tuple[int, int],
    stride: float,
    *,
    enlarge: float,
    batch_index: int = 0,
) -> torch.Tensor:
    """Bilinearly sample a feature map on the ROI grid of ``box`` (``roi_grid``'s docstring).

    Args:
        feature: (N, C, H, W) or (C, H, W) map at ``stride`` (input pixels per cell).
        box: (4,) XYXY, input pixels, *before* enlargement.
        out_hw: (h, w) ROI size, both >= 1.
        stride: the map's stride.
        enlarge: box enlargement about its centre.
        batch_index: which image of an (N, C, H, W) map.
    Returns:
        (C, h, w), differentiable w.r.t. ``feature``.
    """
    if feature.ndim == 3:
        feature = feature[None]
    if feature.ndim != 4:
        raise ValueError(f"crop_roi: feature must be (N, C, H, W), got {tuple(feature.shape)}")
    if not 0 <= batch_index < feature.shape[0]:
        raise ValueError(f"crop_roi: batch_index {batch_index} out of range for {feature.shape[0]} images")
    h, w = int(out_hw[0]), int(out_hw[1])
    if h < 1 or w < 1:
        raise ValueError(f"crop_roi: out_hw must be positive, got {out_hw}")
    box = torch.as_tensor(box, dtype=torch.float64).reshape(1, 4)
    x0, y0, x1, y1 = enlarge_boxes(box, enlarge)[0].tolist()
    fh, fw = feature.shape[-2:]

    def axis(lo, hi, n, extent):
        j = torch.arange(n, device=feature.device, dtype=torch.float64)
        g, inside = feature_grid(grid_positions(lo, hi, j, torch.tensor(n)), extent)
        return g.to(feature.dtype), inside

    gx, in_x = axis(x0, x1, w, stride * fw)
    gy, in_y = axis(y0, y1, h, stride * fh)
    grid = torch.stack([gx[None, :].expand(h, w), gy[:, None].expand(h, w)], dim=-1)
    out = F.grid_sample(
        feature[batch_index : batch_index + 1], grid[None], mode="bilinear",
        padding_mode="border", align_corners=False,
    )[0]
    inside = (in_y[:, None] & in_x[None, :]).to(out.dtype)
    return out * inside


def crop_mask_roi(
    mask: torch.Tensor, box: torch.Tensor, out_hw: Tuple[int, int], *, enlarge: float
) -> torch.Tensor:
    """Sample a ground-truth mask on the same ROI grid as :func:`crop_roi` (soft at edges).

    Args:
        mask: (H, W) bool/uint8/float bitmask at input resolution (stride 1).
        box: (4,) XYXY, input pixels, before enlargement.
        out_hw: (h, w) level-0 ROI size.
    Returns:
        (h, w) float in [0, 1].
    """
    if mask.ndim != 2:
        raise ValueError(f"crop_mask_roi: mask must be (H, W), got {tuple(mask.shape)}")
    return crop_roi(mask[None].float(), box, out_hw, 1, enlarge=enlarge)[0]


# ----------------------------------------------------------------------------- one-ROI head
def forward_single(head: ObjGuidedMaskHead, roi_feats: List[torch.Tensor]) -> MaskHeadOutput:
    """Segment one ROI with ``head``'s layers.

    Args:
        roi_feats: crops of levels 0..l-1 (l >= 1), each (1, C_i, h_i, w_i), shallow first.
    Returns:
        mask logits (1, K, h_0, w_0), e1 (the S0 output), e2 (the S1 output or None).
    """
    n = len(roi_feats)
    assert 1 <= n <= head.num_levels, n
    for i, x in enumerate(roi_feats):
        assert x.ndim == 4 and x.shape[1] == head.in_channels[i], (i, tuple(x.shape))
    x = head.entry[n - 1](roi_feats[n - 1])
    e2 = x if n == 2 else None
    for i in range(n - 2, -1, -1):
        x = head.merges[i](x, roi_feats[i])  # upsample + conv3x3 + IN + ReLU, cat, conv1x1 + IN + ReLU
        if i == 1:
            e2 = x
    return MaskHeadOutput(mask_logits=head.predictor(head.mask_fcn(x)), e1=x, e2=e2)


# ----------------------------------------------------------------------------- one-ROI refinement
def sample_uncertain_points(
    mask_probs: torch.Tensor,
    num_points: int,
    oversample_ratio: float,
    importance_sample_ratio: float,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Draw k*N uniform random points in the ROI, keep the beta*N most uncertain .

    When beta >= k every drawn point is kept (the paper's "uniform" strategies).

    Args:
        mask_probs: (1, 1, h, w) predicted ROI mask probabilities (read detached).
        num_points: N.
        oversample_ratio: k.
        importance_sample_ratio: beta.
        generator: optional RNG for the uniform draw.
    Returns:
        (P, 2) box-normalised (x, y) in [0, 1], P = min(int(beta*N), int(k*N)).
    """
    if mask_probs.ndim != 4 or mask_probs.shape[:2] != (1, 1):
        raise ValueError(f"sample_uncertain_points: mask_probs must be (1, 1, h, w), got "
                         f"{tuple(mask_probs.shape)}")
    if num_points < 0 or oversample_ratio <= 0 or importance_sample_ratio <= 0:
        raise ValueError(
            f"sample_uncertain_points: need N >= 0, k > 0, beta > 0; got N={num_points}, "
            f"k={oversample_ratio}, beta={importance_sample_ratio}"
        )
    num_drawn = int(oversample_ratio * num_points)
    num_kept = min(int(importance_sample_ratio * num_points), num_drawn)
    coords = torch.rand(num_drawn, 2, generator=generator, dtype=torch.float32)
    coords = coords.to(mask_probs.device)
    if num_kept == num_drawn:
        return coords
    u = calculate_uncertainty(point_sample(mask_probs.float(), coords[None], align_corners=True))[0, 0]  # (k*N,)
    top = torch.topk(u, k=num_kept, sorted=False).indices
    return coords[top]


def roi_refine_logits(
    head: PointRefineHead,
    e1: torch.Tensor,
    e2: Optional[torch.Tensor],
    mask_probs: torch.Tensor,
    gt_roi_mask: torch.Tensor,
    class_index: int,
    *,
    point_divisor: int,
    oversample_ratio: float,
    importance_sample_ratio: float,
) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
    """Refinement logits and soft labels of one ROI.

    Args:
        e1: (1, C1, h, w) level-0 segmentation feature.
        e2: (1, C2, h1, w1) level-1 feature, or None.
        mask_probs: (1, 1, h, w) predicted mask probabilities (the instance's class).
        gt_roi_mask: (h, w) GT mask sampled on the ROI grid.
        class_index: channel of the heads' output to use (0 when they are class-agnostic).
    Returns:
        (logits (M,), labels (M,)) over both heads' entries, or None when N = h*w // D is 0.
    """
    h, w = gt_roi_mask.shape
    n = num_refine_points(h, w, point_divisor)
    if n == 0:
        return None
    coords = sample_uncertain_points(mask_probs, n, oversample_ratio, importance_sample_ratio)
    if len(coords) == 0:
        return None
    coords = coords[None]
    e2_points = _roi_point_sample(e2, coords) if e2 is not None else None
    logits = [x[:, class_index] for x in head(_roi_point_sample(e1, coords), e2_points)]  # (1, P) each
    labels = _roi_point_sample(gt_roi_mask[None, None].to(e1.dtype), coords)[:, 0]  # (1, P)
    return torch.cat(logits, dim=1).flatten(), labels.repeat(1, len(logits)).flatten()


def _roi_point_sample(maps: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """PointRend's ``point_sample`` at box-normalised points of (N, C, h, w) ROI maps
    (``align_corners=True``: the corner samples sit on the box's edges)."""
    return point_sample(maps, coords.to(maps.dtype), align_corners=True)


# ----------------------------------------------------------------------------- the ROI heads
def roi_crops(heads, feats: Sequence[torch.Tensor], boxes: torch.Tensor, image_index: torch.Tensor,
              level_sizes) -> List[List[torch.Tensor]]:
    """Per ROI its list of level crops (1, C_i, h_i, w_i)."""
    p = heads.pooler
    return [[crop_roi(feats[l], boxes[r], hw, p.strides[l], enlarge=p.enlarge,
                      batch_index=int(image_index[r]))[None] for l, hw in enumerate(sizes)]
            for r, sizes in enumerate(level_sizes)]


def reference_probs(heads, features: Dict[str, torch.Tensor], image_index: int,
                    boxes: torch.Tensor, classes: torch.Tensor) -> List[torch.Tensor]:
    """Each box's (h_0, w_0) mask probabilities of its class, one ROI at a time."""
    feats = [features[f] for f in heads.in_features]
    sizes = heads.pooler.level_sizes(boxes)
    assert all(sizes), "every box must be large enough to segment"
    image = torch.full((len(boxes),), image_index, dtype=torch.int64)
    cidx = heads.mask_head.class_indices(classes).tolist()
    outs = [forward_single(heads.mask_head, c) for c in roi_crops(heads, feats, boxes, image, sizes)]
    return [o.mask_logits[0, c].sigmoid() for o, c in zip(outs, cidx)]


def reference_losses(heads, features: Dict[str, torch.Tensor], targets: List[Instances]):
    """The ROI heads' training losses, one ROI at a time: the same GT sample (the same
    ``randperm`` calls in the same order), crops, S modules, BCE and refinement points."""
    head = heads.mask_head
    feats = [features[f] for f in heads.in_features]
    seg, refine = [], []
    jobs = []
    for i, t in enumerate(targets):
        if len(t) == 0:
            continue
        n = len(t)
        cap = heads.max_train_instances
        order = torch.randperm(n)[:cap] if 0 < cap < n else torch.arange(n)
        idx, sizes, _ = heads._select(t.gt_boxes.tensor, order)
        jobs.extend((i, int(j), s, gt_bitmasks(t)[j]) for j, s in zip(idx.tolist(), sizes))
    for i, j, sizes, mask in jobs:  # segmentation first, then the refinement draws, per ROI in order
        t = targets[i]
        box = t.gt_boxes.tensor[j]
        crops = roi_crops(heads, feats, box[None], torch.tensor([i]), [sizes])[0]
        out = forward_single(head, crops)
        c = int(head.class_indices(t.gt_classes[j : j + 1])[0])
        target = crop_mask_roi(mask, box, sizes[0], enlarge=heads.pooler.enlarge)
        logits = out.mask_logits[:, c : c + 1]
        seg.append(F.binary_cross_entropy_with_logits(logits[0, 0], target.to(logits.dtype)))
        if head.refine_head is not None:
            r = roi_refine_logits(head.refine_head, out.e1, out.e2, logits.detach().sigmoid(), target, c,
                                  **head.point_rule)
            if r is not None:
                refine.append(r)
    loss_seg = torch.stack(seg).mean() if seg else None
    ref = (torch.cat([r[0] for r in refine]), torch.cat([r[1] for r in refine])) if refine else None
    return head.weighted_losses(loss_seg, ref)
