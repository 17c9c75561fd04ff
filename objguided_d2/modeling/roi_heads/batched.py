"""Batched variable-size ROI segmentation: the same maths as the per-ROI loop
(``ObjGuidedMaskHead.forward_single``, ``roi_refine_logits``), many ROIs per call.

ROIs are grouped into *buckets*: same number of levels, level-0 sizes in the same geometric size
bin (:func:`size_bins`). Inside a bucket each level is zero-padded to the bucket's largest ROI
(bottom / right), and every operation is made blind to the padding:

- crops: one ``grid_sample`` per level and image on the concatenated ROI grids (identical grid
  values to :func:`crop_roi`), padding zeroed;
- 3x3 convs: their input is zero outside the ROI, which is exactly the zero "same" padding the
  per-ROI conv sees at the ROI border;
- InstanceNorm: statistics over the valid pixels only (:func:`masked_instance_norm`);
- bilinear resizing of the deep input of each S module: per-ROI source indices and weights
  (PyTorch's ``align_corners=False`` rule) gathered from the padded map (:func:`resize_bilinear`);
- losses: per-ROI means over valid pixels / valid points.

Shapes: B ROIs of a bucket, (Hp_i, Wp_i) the bucket's padded size at level i, (h_i, w_i) an ROI's
own size, C channels, K mask classes, P points.
"""
import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .point_refine import calculate_uncertainty, num_refine_points
from .roi_sampling import enlarge_boxes

__all__ = [
    "size_bins",
    "bucket_rois",
    "valid_masks",
    "crop_rois_padded",
    "crop_masks_padded",
    "resize_bilinear",
    "masked_instance_norm",
    "BatchedSegOutput",
    "mask_head_forward_padded",
    "draw_refine_points",
    "refine_logits_padded",
    "check_batchable",
]

# Geometric size bins: a bucket's padded side is at most ~25% (or 4 cells) above its ROIs' sides.
_BIN_RATIO = 1.25
_BIN_MIN_STEP = 4


def size_bins(max_size: int, ratio: float = _BIN_RATIO, min_step: int = _BIN_MIN_STEP) -> torch.Tensor:
    """Upper edges of the size bins, 2, 6, 10, ... growing by ``ratio`` once that exceeds
    ``min_step``; covers ``max_size``. Returns (E,) int64."""
    edges = [2]
    while edges[-1] < max_size:
        edges.append(max(edges[-1] + min_step, int(math.ceil(edges[-1] * ratio))))
    return torch.as_tensor(edges, dtype=torch.int64)


def bucket_rois(
    level_sizes: Sequence[Sequence[Tuple[int, int]]],
    *,
    max_elements: int = 1 << 22,
    ratio: float = _BIN_RATIO,
) -> List[List[int]]:
    """Group ROIs that can share a padded batch.

    Args:
        level_sizes: per ROI its (h, w) per level (``roi_level_sizes``); empty lists are skipped.
        max_elements: a bucket is split so that B * Hp_0 * Wp_0 stays under this (memory bound).
        ratio: bin growth factor (padding overhead per side).
    Returns:
        lists of ROI indices (each sorted ascending); every ROI with >= 1 level is in one.
    """
    valid = [r for r, s in enumerate(level_sizes) if len(s) > 0]
    if not valid:
        return []
    hw0 = torch.as_tensor([level_sizes[r][0] for r in valid], dtype=torch.int64)  # (R, 2)
    edges = size_bins(int(hw0.max()), ratio)
    bins = torch.bucketize(hw0, edges)  # first edge >= size
    nlev = [len(level_sizes[r]) for r in valid]
    groups: Dict[Tuple[int, int, int], List[int]] = {}
    for r, n, (bh, bw) in zip(valid, nlev, bins.tolist()):
        groups.setdefault((n, bh, bw), []).append(r)
    out = []
    for key in sorted(groups):
        members = groups[key]
        hp = max(level_sizes[r][0][0] for r in members)
        wp = max(level_sizes[r][0][1] for r in members)
        per = max(1, max_elements // max(hp * wp, 1))
        out.extend(members[i : i + per] for i in range(0, len(members), per))
    return out


def valid_masks(sizes: torch.Tensor, pad_hw: Tuple[int, int]) -> torch.Tensor:
    """(B, 1, Hp, Wp) float: 1 inside each ROI's own (h, w) (top-left), 0 in its padding.

    Args:
        sizes: (B, 2) int64 (h, w).
    """
    hp, wp = pad_hw
    dev = sizes.device
    ys = torch.arange(hp, device=dev)[None, :, None] < sizes[:, 0, None, None]
    xs = torch.arange(wp, device=dev)[None, None, :] < sizes[:, 1, None, None]
    return (ys & xs)[:, None].float()


def _axis_grids(lo, hi, n, pad, extent):
    """Vectorised ``roi_sampling._axis_grid``: same float64 maths, hence identical samples.

    Args:
        lo, hi: (B,) float64 grid ends; n: (B,) int64 ROI sizes; pad: padded size.
    Returns:
        g (B, pad) float64 normalised coordinates, inside (B, pad) bool.
    """
    j = torch.arange(pad, device=lo.device, dtype=torch.float64)[None]
    t = j / (n - 1).clamp(min=1).to(torch.float64)[:, None]
    x = lo[:, None] + (hi - lo)[:, None] * t
    g = 2.0 * x / extent - 1.0
    return g, (x >= 0) & (x <= extent)


def crop_rois_padded(
    feature: torch.Tensor,
    boxes: torch.Tensor,
    image_index: torch.Tensor,
    sizes: torch.Tensor,
    pad_hw: Tuple[int, int],
    stride: float,
    *,
    enlarge: float = 1.1,
) -> torch.Tensor:
    """Batched :func:`crop_roi`: each ROI sampled on its own grid, zero-padded to ``pad_hw``.

    Args:
        feature: (N, C, H, W) at ``stride``.
        boxes: (B, 4) XYXY input pixels before enlargement.
        image_index: (B,) int64 image of each box.
        sizes: (B, 2) int64 (h, w) ROI sizes at this level, <= ``pad_hw``.
    Returns:
        (B, C, Hp, Wp); equal to ``crop_roi`` on each ROI's (h, w) window, 0 elsewhere.
    """
    hp, wp = int(pad_hw[0]), int(pad_hw[1])
    B = boxes.shape[0]
    fh, fw = feature.shape[-2:]
    eb = enlarge_boxes(boxes.double(), enlarge)
    gx, in_x = _axis_grids(eb[:, 0], eb[:, 2], sizes[:, 1], wp, stride * fw)
    gy, in_y = _axis_grids(eb[:, 1], eb[:, 3], sizes[:, 0], hp, stride * fh)
    grid = torch.stack(
        [gx[:, None, :].expand(B, hp, wp), gy[:, :, None].expand(B, hp, wp)], dim=-1
    ).to(feature.dtype)  # (B, Hp, Wp, 2)
    # One grid_sample per image: the ROI grids are stacked along the height of a single grid.
    images = torch.unique(image_index).tolist()
    parts, order = [], []
    for i in images:
        sel = (image_index == i).nonzero().flatten() if len(images) > 1 else None
        g = (grid if sel is None else grid[sel]).reshape(1, -1, wp, 2)
        s = F.grid_sample(feature[i : i + 1], g, mode="bilinear", padding_mode="border",
                          align_corners=False)  # (1, C, b*Hp, Wp)
        parts.append(s[0].reshape(s.shape[1], -1, hp, wp).transpose(0, 1))
        if sel is not None:
            order.append(sel)
    out = parts[0] if len(parts) == 1 else torch.cat(parts)
    if order:  # back to the ROIs' order
        out = out[torch.argsort(torch.cat(order))]
    keep = (in_y[:, :, None] & in_x[:, None, :]) & valid_masks(sizes, (hp, wp))[:, 0].bool()
    return out * keep[:, None].to(out.dtype)


def crop_masks_padded(
    masks: torch.Tensor,
    boxes: torch.Tensor,
    sizes: torch.Tensor,
    pad_hw: Tuple[int, int],
    *,
    enlarge: float = 1.1,
) -> torch.Tensor:
    """Batched :func:`crop_mask_roi` without converting whole masks to float: the 4 bilinear
    neighbours of each sample are gathered from the bool masks (``grid_sample``'s border /
    ``align_corners=False`` arithmetic, reproduced).

    Args:
        masks: (B, H, W) bool masks at input resolution, one per box.
        boxes: (B, 4) XYXY before enlargement.
        sizes: (B, 2) level-0 (h, w).
    Returns:
        (B, Hp, Wp) float in [0, 1], 0 in the padding.
    """
    hp, wp = int(pad_hw[0]), int(pad_hw[1])
    B, H, W = masks.shape
    eb = enlarge_boxes(boxes.double(), enlarge)
    gx, in_x = _axis_grids(eb[:, 0], eb[:, 2], sizes[:, 1], wp, float(W))
    gy, in_y = _axis_grids(eb[:, 1], eb[:, 3], sizes[:, 0], hp, float(H))

    def neighbours(g, n):  # grid_sample: unnormalise, clip to the border, split into 2 taps
        ix = ((g.float() + 1) * n - 1) / 2
        ix = ix.clamp(0, n - 1)
        i0 = ix.floor()
        w1 = ix - i0
        i0 = i0.long()
        return i0, (i0 + 1).clamp(max=n - 1), 1 - w1, w1

    x0, x1, wx0, wx1 = neighbours(gx, W)  # (B, Wp)
    y0, y1, wy0, wy1 = neighbours(gy, H)  # (B, Hp)
    flat = masks.reshape(B, H * W)

    def tap(ys, xs):
        idx = (ys[:, :, None] * W + xs[:, None, :]).reshape(B, -1)
        return flat.gather(1, idx).reshape(B, hp, wp).float()

    out = (wy0[:, :, None] * (wx0[:, None, :] * tap(y0, x0) + wx1[:, None, :] * tap(y0, x1))
           + wy1[:, :, None] * (wx0[:, None, :] * tap(y1, x0) + wx1[:, None, :] * tap(y1, x1)))
    inside = (in_y[:, :, None] & in_x[:, None, :]).float()
    return out * inside * valid_masks(sizes, (hp, wp))[:, 0]


def _linear_taps(in_size: torch.Tensor, out_size: torch.Tensor, pad: int):
    """Source taps of PyTorch's bilinear resize (``align_corners=False``, no scale factor) per
    ROI: src = (in/out) * (dst + 0.5) - 0.5 clamped at 0; i1 = i0 + 1 unless at the last cell.
    Returns i0, i1 (B, pad) int64 and w0, w1 (B, pad) float32."""
    scale = in_size.float() / out_size.float()  # (B,)
    dst = torch.arange(pad, device=in_size.device, dtype=torch.float32)[None]
    src = (scale[:, None] * (dst + 0.5) - 0.5).clamp(min=0)
    last = (in_size - 1)[:, None]
    i0 = torch.minimum(src.floor().long(), last)
    w1 = (src - i0.float()).clamp(0, 1)
    i1 = torch.where(i0 < last, i0 + 1, i0)
    return i0, i1, 1 - w1, w1


def resize_bilinear(
    x: torch.Tensor, in_sizes: torch.Tensor, out_sizes: torch.Tensor, out_pad: Tuple[int, int]
) -> torch.Tensor:
    """Per-ROI ``F.interpolate(x_r[:h, :w], size=out_r, mode="bilinear")`` on a padded batch.

    Args:
        x: (B, C, Hp, Wp) padded maps; ROI r occupies [:h_r, :w_r].
        in_sizes: (B, 2) int64 (h_r, w_r); out_sizes: (B, 2) target sizes; out_pad: (Ho, Wo).
    Returns:
        (B, C, Ho, Wo); values outside each ROI's output size are unspecified (mask them).
    """
    B, C, _, wp = x.shape
    ho, wo = int(out_pad[0]), int(out_pad[1])
    y0, y1, wy0, wy1 = _linear_taps(in_sizes[:, 0], out_sizes[:, 0], ho)
    x0, x1, wx0, wx1 = _linear_taps(in_sizes[:, 1], out_sizes[:, 1], wo)

    def rows(idx):
        return x.gather(2, idx[:, None, :, None].expand(B, C, ho, wp))

    t = rows(y0) * wy0[:, None, :, None] + rows(y1) * wy1[:, None, :, None]  # (B, C, Ho, Wp)

    def cols(idx):
        return t.gather(3, idx[:, None, None, :].expand(B, C, ho, wo))

    return cols(x0) * wx0[:, None, None, :] + cols(x1) * wx1[:, None, None, :]


def masked_instance_norm(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """InstanceNorm2d (affine=False, biased variance) with statistics over ``mask`` only.

    Args:
        x: (B, C, H, W); mask: (B, 1, H, W) in {0, 1}, at least one 1 per ROI.
    Returns:
        (B, C, H, W), 0 where ``mask`` is 0.
    """
    cnt = mask.sum(dim=(2, 3), keepdim=True)
    mean = (x * mask).sum(dim=(2, 3), keepdim=True) / cnt
    d = (x - mean) * mask
    var = (d * d).sum(dim=(2, 3), keepdim=True) / cnt
    return d * torch.rsqrt(var + eps)


def _conv_masked(conv: nn.Module, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A Detectron2 ``Conv2d`` (conv -> norm -> activation) on a zero-padded batch, the norm
    (InstanceNorm or none) restricted to the valid pixels. ``x`` must be 0 in the padding."""
    y = F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)
    norm = getattr(conv, "norm", None)
    if isinstance(norm, nn.InstanceNorm2d):
        y = masked_instance_norm(y, mask, norm.eps)
    elif norm is not None:
        raise ValueError(f"batched ROI segmentation supports InstanceNorm or no norm, got {norm}")
    act = getattr(conv, "activation", None)
    if act is not None:
        y = act(y)
    # Masked InstanceNorm already zeroes the padding (and ReLU keeps 0 at 0).
    return y if isinstance(norm, nn.InstanceNorm2d) else y * mask


def check_batchable(mask_head: nn.Module) -> None:
    """Raise a clear error when ``mask_head`` uses a layer the padded path cannot reproduce."""
    for name, m in mask_head.named_modules():
        if isinstance(m, nn.InstanceNorm2d) and (m.affine or m.track_running_stats):
            raise ValueError(f"MODEL.OBJGUIDED.BATCHED_SEG: {name} is an affine / tracked "
                             "InstanceNorm; only the paper's affine=False one is supported")
        if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)) or type(m).__name__ == "FrozenBatchNorm2d":
            raise ValueError(f"MODEL.OBJGUIDED.BATCHED_SEG: {name} ({type(m).__name__}) mixes "
                             "ROIs; set BATCHED_SEG False for this norm")


@dataclass
class BatchedSegOutput:
    """The segmentation branch's outputs for one bucket (padded; see :class:`MaskHeadOutput`).

    mask_logits: (B, K, Hp_0, Wp_0), 0 in the padding.
    e1: (B, C_e1, Hp_0, Wp_0).
    e2: (B, C_e2, Hp_1, Wp_1) or None when the bucket's ROIs have a single level.
    masks: per level (B, 1, Hp_i, Wp_i) validity.
    sizes: (B, L_b, 2) int64 per-level ROI sizes.
    """

    mask_logits: torch.Tensor
    e1: torch.Tensor
    e2: Optional[torch.Tensor]
    masks: List[torch.Tensor]
    sizes: torch.Tensor


def mask_head_forward_padded(
    head: nn.Module, crops: List[torch.Tensor], sizes: torch.Tensor, masks: List[torch.Tensor]
) -> BatchedSegOutput:
    """``ObjGuidedMaskHead.forward_single`` for a bucket of ROIs with the same number of levels.

    Args:
        head: an ``ObjGuidedMaskHead``.
        crops: levels 0..n-1, each (B, C_i, Hp_i, Wp_i), zero in the padding.
        sizes: (B, n, 2) int64 ROI sizes per level.
        masks: levels 0..n-1 validity (B, 1, Hp_i, Wp_i).
    """
    n = len(crops)
    if not 1 <= n <= head.num_levels:
        raise ValueError(f"mask_head_forward_padded: got {n} levels, expected 1..{head.num_levels}")
    entry = head.entry[n - 1]
    x = crops[n - 1] if isinstance(entry, nn.Identity) else entry(crops[n - 1]) * masks[n - 1]
    e2 = x if n == 2 else None
    for i in range(n - 2, -1, -1):
        m = head.merges[i]
        skip = crops[i]
        up = resize_bilinear(x, sizes[:, i + 1], sizes[:, i], skip.shape[-2:]) * masks[i]
        up = _conv_masked(m.up_conv, up, masks[i])
        x = _conv_masked(m.cat_conv, torch.cat([skip, up], dim=1), masks[i])
        if i == 1:
            e2 = x
    e1 = x
    h = _conv_masked(head.mask_fcn, e1, masks[0])
    logits = _conv_masked(head.predictor, h, masks[0])
    return BatchedSegOutput(mask_logits=logits, e1=e1, e2=e2, masks=masks, sizes=sizes)


def draw_refine_points(
    level0_sizes: Sequence[Tuple[int, int]],
    point_divisor: int,
    oversample_ratio: float,
    generator: Optional[torch.Generator] = None,
) -> List[Optional[torch.Tensor]]:
    """The uniform draws of ``sample_uncertain_points`` for many ROIs in one RNG call.

    The per-ROI loop draws ``torch.rand(int(k*N), 2)`` on the CPU for each ROI with N > 0, in
    order; one CPU draw of the summed length yields the same numbers, so a seeded loop and the
    batched path see identical points.

    Returns:
        per ROI a (int(k*N), 2) CPU tensor, or None where N = 0.
    """
    counts = []
    for h, w in level0_sizes:
        n = num_refine_points(h, w, point_divisor)
        counts.append(int(oversample_ratio * n) if n > 0 else -1)
    total = sum(c for c in counts if c > 0)
    draws = torch.rand(total, 2, generator=generator, dtype=torch.float32)
    out, start = [], 0
    for c in counts:
        if c < 0:
            out.append(None)
            continue
        out.append(draws[start : start + c])
        start += c
    return out


def _sample_padded(maps: torch.Tensor, sizes: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """``point_sample`` on padded ROI maps: box-normalised (x, y) -> each ROI's own cells.

    Args:
        maps: (B, C, Hp, Wp); sizes: (B, 2) (h, w); coords: (B, P, 2) in [0, 1].
    Returns:
        (B, C, P).
    """
    hp, wp = maps.shape[-2:]
    sx = (sizes[:, 1] - 1).to(coords.dtype) / max(wp - 1, 1)
    sy = (sizes[:, 0] - 1).to(coords.dtype) / max(hp - 1, 1)
    g = torch.stack([coords[..., 0] * sx[:, None], coords[..., 1] * sy[:, None]], dim=-1)
    grid = (2.0 * g - 1.0).to(maps.dtype)[:, :, None, :]
    return F.grid_sample(maps, grid, mode="bilinear", align_corners=True)[..., 0]


def refine_logits_padded(
    refine_head: nn.Module,
    out: BatchedSegOutput,
    mask_probs: torch.Tensor,
    targets: torch.Tensor,
    class_index: torch.Tensor,
    draws: Sequence[Optional[torch.Tensor]],
    *,
    point_divisor: int,
    oversample_ratio: float,
    importance_sample_ratio: float,
) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
    """``roi_refine_logits`` for a bucket: uncertain-point selection, point features of e1 / e2,
    the two heads, soft labels.

    Args:
        out: the bucket's :class:`BatchedSegOutput`.
        mask_probs: (B, 1, Hp_0, Wp_0) predicted probabilities of each ROI's class (detached).
        targets: (B, Hp_0, Wp_0) GT ROI masks.
        class_index: (B,) int64 logit channel of each ROI.
        draws: per ROI its uniform (k*N, 2) draw (:func:`draw_refine_points`) or None.
    Returns:
        (logits (M,), labels (M,)) over the bucket's entries (e1 head first, then the e12 head),
        or None when no ROI has points. Same multiset of entries as the per-ROI loop.
    """
    dev = mask_probs.device
    sizes0 = out.sizes[:, 0]
    B = len(draws)
    drawn, kept = [], []
    for (h, w), d in zip(sizes0.tolist(), draws):
        n = num_refine_points(h, w, point_divisor)
        nd = 0 if d is None else len(d)
        drawn.append(nd)
        kept.append(min(int(importance_sample_ratio * n), nd) if nd else 0)
    if max(kept, default=0) == 0:
        return None
    dmax = max(drawn)
    coords = torch.zeros((B, dmax, 2), dtype=torch.float32)
    for b, d in enumerate(draws):
        if d is not None and len(d):
            coords[b, : len(d)] = d
    coords = coords.to(dev)
    drawn_t = torch.as_tensor(drawn, device=dev)
    kept_t = torch.as_tensor(kept, device=dev)
    slot = torch.arange(dmax, device=dev)[None]
    # Uncertainty at the drawn points; padding slots rank last.
    u = calculate_uncertainty(_sample_padded(mask_probs.float(), sizes0, coords))[:, 0]
    u = torch.where(slot < drawn_t[:, None], u, torch.full_like(u, -float("inf")))
    kmax = max(kept)
    top = torch.topk(u, k=kmax, dim=1).indices  # (B, kmax), most uncertain first
    pts = coords.gather(1, top[:, :, None].expand(B, kmax, 2))
    valid = torch.arange(kmax, device=dev)[None] < kept_t[:, None]  # (B, kmax)

    e1_pts = _sample_padded(out.e1, sizes0, pts)
    e2_pts = _sample_padded(out.e2, out.sizes[:, 1], pts) if out.e2 is not None else None
    labels = _sample_padded(targets[:, None].to(out.e1.dtype), sizes0, pts)[:, 0]  # (B, kmax)
    idx = class_index[:, None, None].expand(B, 1, kmax)
    logits, labs = [], []
    for lg in refine_head(e1_pts, e2_pts):  # (B, K, kmax) each
        logits.append(lg.gather(1, idx)[:, 0][valid])
        labs.append(labels[valid])
    return torch.cat(logits), torch.cat(labs)
