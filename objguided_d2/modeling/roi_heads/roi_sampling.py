"""Pure tensor functions for the variable-size object-guided ROIs (method card §3, §5).

Pixel-coordinate convention (Detectron2's, used for every box here): input pixel (y, x) covers
[x, x + 1) x [y, y + 1) and has its centre at (x + 0.5, y + 0.5). A feature cell i at stride s
covers input pixels [s*i, s*(i + 1)) with centre s*(i + 0.5); a feature map is read as the bilinear
interpolant of its cell centres over its extent [0, s*W] (clamped to the border cells inside that
extent, zero outside it).

ROI grid: a box is enlarged by ``enlarge`` (1.1) about its centre to [X0, Y0, X1, Y1]; at a level
where the ROI is (h, w) the samples lie at x_j = X0 + j * (X1 - X0) / (w - 1), j = 0..w-1 (the
endpoints are the enlarged box's edges: align_corners=True semantics over the box), likewise y.
Every level of one ROI therefore spans the same box, and a box-normalised coordinate t in [0, 1]
(x = X0 + t * (X1 - X0)) addresses any level's ROI map with ``align_corners=True``; the point
refinement (``point_refine.point_sample``) and the pasting (:func:`paste_roi_masks`) rely on it.

Shapes: R ROIs, L levels, C channels, (H, W) map size, (h, w) ROI size.
"""
from typing import List, Sequence, Tuple

import cv2
import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "enlarge_boxes",
    "roi_level_sizes",
    "crop_roi",
    "crop_mask_roi",
    "largest_component_boxes",
    "paste_roi_masks",
]

# ROI sizes are int(enlarge * side / stride); boxes arrive as float32 XYXY, so side lengths carry
# ~1e-5 rounding error that must not flip int(22.0) into 21.
_SIZE_EPS = 1e-4


def _check_boxes(boxes: torch.Tensor, name: str = "boxes") -> None:
    if boxes.ndim != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"{name}: expected an (R, 4) XYXY tensor, got shape {tuple(boxes.shape)}")


def enlarge_boxes(boxes: torch.Tensor, enlarge: float = 1.1) -> torch.Tensor:
    """
    Args:
        boxes: (R, 4) XYXY, input pixels.
        enlarge: scale factor about each box's centre.
    Returns:
        (R, 4) XYXY: the boxes the ROI grids span (their edges are the grids' endpoints).
    """
    _check_boxes(boxes)
    ctr = (boxes[:, :2] + boxes[:, 2:]) * 0.5
    half = (boxes[:, 2:] - boxes[:, :2]) * (0.5 * enlarge)
    return torch.cat([ctr - half, ctr + half], dim=1)


def roi_level_sizes(
    boxes: torch.Tensor,
    strides: Sequence[int],
    enlarge: float = 1.1,
    min_size: int = 2,
) -> List[List[Tuple[int, int]]]:
    """ROI size (h, w) of each box at each level, level 0 first.

    h = int(enlarge * box_h / stride) (likewise w); the list of a box stops before the first level
    where a side is < ``min_size`` and is empty when level 0 already is (the instance is skipped).

    Args:
        boxes: (R, 4) XYXY, input pixels.
        strides: L strides, shallow to deep (e.g. [1, 2, 4, 8, 16]).
    Returns:
        R lists of at most L (h, w) tuples.
    """
    _check_boxes(boxes)
    if len(boxes) == 0:
        return []
    hw = torch.stack([boxes[:, 3] - boxes[:, 1], boxes[:, 2] - boxes[:, 0]], dim=1).double().cpu()
    s = torch.as_tensor(list(strides), dtype=torch.float64)
    sizes = torch.floor(enlarge * hw[:, None, :] / s[None, :, None] + _SIZE_EPS).long()  # (R, L, 2)
    # A level counts only if it and every shallower level are large enough.
    ok = (sizes >= min_size).all(dim=2).long().cumprod(dim=1).bool()  # (R, L)
    counts = ok.sum(dim=1).tolist()
    sizes_list = sizes.tolist()
    return [[tuple(sizes_list[r][l]) for l in range(counts[r])] for r in range(len(counts))]


def _axis_grid(lo: float, hi: float, n: int, extent: float, device, dtype):
    """Samples lo..hi (n points, endpoints included) as grid_sample coordinates (align_corners=
    False) of a map whose extent is [0, extent] input pixels, and whether each lies inside it."""
    t = torch.arange(n, device=device, dtype=torch.float64) / max(n - 1, 1)
    x = lo + (hi - lo) * t
    # Cell i (centre s*(i+0.5)) sits at normalised 2*(i+0.5)/W - 1 = 2*x/(s*W) - 1.
    g = 2.0 * x / extent - 1.0
    inside = (x >= 0) & (x <= extent)
    return g.to(dtype), inside


def crop_roi(
    feature: torch.Tensor,
    box: torch.Tensor,
    out_hw: Tuple[int, int],
    stride: float,
    *,
    enlarge: float = 1.1,
    batch_index: int = 0,
) -> torch.Tensor:
    """Bilinearly sample a feature map on the ROI grid of ``box`` (see the module docstring).

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
    gx, in_x = _axis_grid(x0, x1, w, stride * fw, feature.device, feature.dtype)
    gy, in_y = _axis_grid(y0, y1, h, stride * fh, feature.device, feature.dtype)
    grid = torch.stack([gx[None, :].expand(h, w), gy[:, None].expand(h, w)], dim=-1)
    out = F.grid_sample(
        feature[batch_index : batch_index + 1], grid[None], mode="bilinear",
        padding_mode="border", align_corners=False,
    )[0]
    inside = (in_y[:, None] & in_x[None, :]).to(out.dtype)
    return out * inside


def crop_mask_roi(
    mask: torch.Tensor, box: torch.Tensor, out_hw: Tuple[int, int], *, enlarge: float = 1.1
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


def paste_roi_masks(
    mask_probs: Sequence[torch.Tensor],
    grid_boxes: torch.Tensor,
    image_hw: Tuple[int, int],
    threshold: float = 0.5,
    max_elements: int = 1 << 24,
    return_pixels: bool = False,
):
    """Paste variable-size ROI probability maps into full images and threshold them.

    Each output pixel centre is mapped into its ROI's grid and the map is read there by bilinear
    interpolation (``align_corners=True``: the map's corner samples sit on the grid box's edges);
    pixels outside the grid box get 0. Pasting at the *output* resolution (boxes scaled by the
    caller) resamples once, without aliasing. Instances are processed in chunks of similar size,
    each as one ``grid_sample`` over per-instance windows bounded by ``max_elements``.

    Args:
        mask_probs: R maps, each (h_r, w_r) in [0, 1].
        grid_boxes: (R, 4) XYXY boxes the maps' grids span (the *enlarged* boxes), in output pixels.
        image_hw: (H, W) output size.
        threshold: a pixel is foreground where the resampled probability >= threshold.
        return_pixels: also return the foreground pixels as (instance (M,), y * W + x (M,))
            int64, found inside each instance's window (no scan of the full masks).
    Returns:
        (R, H, W) bool, or (masks, (instance, flat_pixel)) with ``return_pixels``.
    """
    _check_boxes(grid_boxes, "grid_boxes")
    if len(mask_probs) != len(grid_boxes):
        raise ValueError(
            f"paste_roi_masks: {len(mask_probs)} mask maps but {len(grid_boxes)} grid boxes"
        )
    H, W = int(image_hw[0]), int(image_hw[1])
    device = grid_boxes.device
    R = len(mask_probs)
    out = torch.zeros((R, H, W), dtype=torch.bool, device=device)
    pixels = []
    if R == 0 or H == 0 or W == 0:
        empty = torch.zeros(0, dtype=torch.int64, device=device)
        return (out, (empty, empty)) if return_pixels else out
    boxes = grid_boxes.double()
    # Integer pixel windows covering each box, clipped to the image.
    lo = torch.floor(boxes[:, :2]).clamp(min=0)
    hi = torch.ceil(boxes[:, 2:])
    lo = torch.minimum(lo, torch.tensor([W, H], device=device, dtype=lo.dtype))
    hi = torch.minimum(hi, torch.tensor([W, H], device=device, dtype=hi.dtype))
    win = (hi - lo).clamp(min=1).long()  # (R, 2) as (w, h)
    area = (win[:, 0] * win[:, 1]).clamp(min=1)
    order = torch.argsort(area)
    area_sorted = area[order].cpu()

    start = 0
    while start < R:
        # Largest chunk whose (count * largest window) fits the budget; windows grow along order.
        rest = area_sorted[start:]
        fits = rest * torch.arange(1, len(rest) + 1) <= max_elements
        n = max(1, int(fits.sum()))
        idx = order[start : start + n]
        start += n
        pixels.append(_paste_chunk(out, [mask_probs[i] for i in idx.tolist()], idx, boxes[idx],
                                   lo[idx], win[idx], threshold))
    if not return_pixels:
        return out
    return out, (torch.cat([p[0] for p in pixels]), torch.cat([p[1] for p in pixels]))


def _paste_chunk(out, maps, idx, boxes, lo, win, threshold):
    H, W = out.shape[-2:]
    device = out.device
    n = len(maps)
    hm = max(int(m.shape[0]) for m in maps)
    wm = max(int(m.shape[1]) for m in maps)
    padded = torch.zeros((n, 1, hm, wm), dtype=torch.float32, device=device)
    sizes = torch.zeros((n, 2), dtype=torch.float64, device=device)  # (h_r, w_r)
    for k, m in enumerate(maps):
        if m.ndim != 2:
            raise ValueError(f"paste_roi_masks: each mask map must be (h, w), got {tuple(m.shape)}")
        padded[k, 0, : m.shape[0], : m.shape[1]] = m.to(device=device, dtype=torch.float32)
        sizes[k, 0], sizes[k, 1] = m.shape[0], m.shape[1]
    ww, wh = int(win[:, 0].max()), int(win[:, 1].max())
    # Shift windows left/up so they stay inside the image: indices stay distinct and in range.
    x_start = torch.minimum(lo[:, 0].long(), torch.full_like(lo[:, 0].long(), W - ww))
    y_start = torch.minimum(lo[:, 1].long(), torch.full_like(lo[:, 1].long(), H - wh))
    xs = x_start[:, None] + torch.arange(ww, device=device)[None]  # (n, ww)
    ys = y_start[:, None] + torch.arange(wh, device=device)[None]  # (n, wh)

    def to_grid(pix, b0, b1, size, size_max):
        t = (pix.double() + 0.5 - b0[:, None]) / (b1 - b0).clamp(min=1e-6)[:, None]  # box-normalised
        j = t * (size[:, None] - 1)  # fractional sample index in the ROI map
        g = 2.0 * j / max(size_max - 1, 1) - 1.0  # align_corners=True over the padded map
        return g.float(), (t >= 0) & (t <= 1)

    gx, vx = to_grid(xs, boxes[:, 0], boxes[:, 2], sizes[:, 1], wm)
    gy, vy = to_grid(ys, boxes[:, 1], boxes[:, 3], sizes[:, 0], hm)
    grid = torch.stack(
        [gx[:, None, :].expand(n, wh, ww), gy[:, :, None].expand(n, wh, ww)], dim=-1
    )
    probs = F.grid_sample(padded, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    fg = (probs[:, 0] >= threshold) & vy[:, :, None] & vx[:, None, :]
    idx = idx.to(device)
    out[idx[:, None, None], ys[:, :, None], xs[:, None, :]] = fg
    # The windows' foreground pixels (each (instance, y, x) once: a window's pixels are distinct).
    k, wy, wx = fg.nonzero(as_tuple=True)
    return idx[k], ys[k, wy] * W + xs[k, wx]

