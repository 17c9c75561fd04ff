"""Helpers of the batched ROI segmentation (``MODEL.OBJGUIDED.BATCHED_SEG``) and the padded
"size bucket" building blocks of its first version.

The batched path itself now packs every level's ROIs into one canvas (:mod:`.canvas`); from
here it uses :func:`check_batchable` and :func:`draw_refine_points`. The padded-batch functions
(:func:`bucket_rois`, :func:`valid_masks`, :func:`crop_masks_padded`, :func:`resize_bilinear`,
:func:`masked_instance_norm`) are kept as small, tested references of the same per-ROI rules
(ROI grid crops, PyTorch's bilinear resize, InstanceNorm over valid pixels) for padded batches.

Shapes: B ROIs of a bucket, (Hp, Wp) padded size, (h, w) an ROI's own size, C channels.
"""
import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .point_refine import num_refine_points
from .roi_sampling import enlarge_boxes

__all__ = [
    "size_bins",
    "bucket_rois",
    "valid_masks",
    "crop_masks_padded",
    "resize_bilinear",
    "masked_instance_norm",
    "draw_refine_points",
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


def check_batchable(mask_head: nn.Module) -> None:
    """Raise a clear error when ``mask_head`` uses a layer the padded path cannot reproduce."""
    for name, m in mask_head.named_modules():
        if isinstance(m, nn.InstanceNorm2d) and (m.affine or m.track_running_stats):
            raise ValueError(f"MODEL.OBJGUIDED.BATCHED_SEG: {name} is an affine / tracked "
                             "InstanceNorm; only the paper's affine=False one is supported")
        if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)) or type(m).__name__ == "FrozenBatchNorm2d":
            raise ValueError(f"MODEL.OBJGUIDED.BATCHED_SEG: {name} ({type(m).__name__}) mixes "
                             "ROIs; set BATCHED_SEG False for this norm")


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
