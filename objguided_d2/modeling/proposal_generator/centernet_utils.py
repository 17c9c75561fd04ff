"""Pure tensor maths of the center-point detector (docs/method.md §2): Gaussian targets, the
penalty-reduced focal loss and peak decoding. No module state, no config.

Shapes: C classes, (H, W) output grid at stride n (the "down ratio"), M objects, K kept centres.
Coordinates here are in output cells unless a name says otherwise: a cell (x, y) covers
[x, x+1) x [y, y+1), so a box centre c in input pixels lies in cell floor(c / n).
"""

import math
from typing import Dict, List, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

__all__ = [
    "gaussian_radius",
    "gaussian_2d",
    "draw_gaussian",
    "build_targets",
    "focal_loss",
    "decode_detections",
]


def gaussian_radius(det_size: Sequence[float], min_overlap: float = 0.7) -> float:
    """CornerNet's radius of the disc of corner positions that keep IoU >= ``min_overlap``.

    Reproduces the formula the CenterNet family (and the authors) use, including its known quirk:
    each root is (b + sqrt(b^2 - 4ac)) / 2 rather than divided by 2a. Changing it would change
    every target, so it is kept on purpose.

    Args:
        det_size: (h, w) of the box, in output cells.
        min_overlap: the IoU o.
    Returns:
        the radius (float, not rounded), min of the three cases.
    """
    if len(det_size) != 2:
        raise ValueError(f"gaussian_radius: det_size must be (h, w), got {det_size}")
    height, width = float(det_size[0]), float(det_size[1])
    o = float(min_overlap)

    a1 = 1.0
    b1 = height + width
    c1 = width * height * (1 - o) / (1 + o)
    r1 = (b1 + math.sqrt(max(b1**2 - 4 * a1 * c1, 0.0))) / 2

    a2 = 4.0
    b2 = 2 * (height + width)
    c2 = (1 - o) * width * height
    r2 = (b2 + math.sqrt(max(b2**2 - 4 * a2 * c2, 0.0))) / 2

    a3 = 4 * o
    b3 = -2 * o * (height + width)
    c3 = (o - 1) * width * height
    r3 = (b3 + math.sqrt(max(b3**2 - 4 * a3 * c3, 0.0))) / 2
    return min(r1, r2, r3)


def gaussian_2d(radius: int, sigma: float, *, dtype=torch.float32, device=None) -> torch.Tensor:
    """(2r+1, 2r+1) kernel exp(-(dx^2 + dy^2) / (2 sigma^2)), 1 at the centre; values below
    float eps are zeroed (as CenterNet does) so a target's support is exactly the kernel."""
    d = torch.arange(-radius, radius + 1, dtype=torch.float64, device=device)
    g = torch.exp(-(d[None, :] ** 2 + d[:, None] ** 2) / (2 * sigma * sigma))
    g[g < torch.finfo(torch.float64).eps * g.max()] = 0
    return g.to(dtype)


def draw_gaussian(heatmap: torch.Tensor, center: Sequence[int], radius: int) -> torch.Tensor:
    """Max-merge a Gaussian of sigma = (2r+1)/6 centred at ``center`` into ``heatmap`` in place.

    Args:
        heatmap: (H, W) float tensor, modified in place.
        center: integer cell (x, y); it may lie outside the grid (the Gaussian is cropped).
        radius: integer r >= 0.
    Returns:
        ``heatmap``.
    """
    if heatmap.dim() != 2:
        raise ValueError(f"draw_gaussian: heatmap must be (H, W), got {tuple(heatmap.shape)}")
    radius = int(radius)
    if radius < 0:
        raise ValueError(f"draw_gaussian: radius must be >= 0, got {radius}")
    x, y = int(center[0]), int(center[1])
    height, width = heatmap.shape
    g = gaussian_2d(radius, (2 * radius + 1) / 6.0, dtype=heatmap.dtype, device=heatmap.device)
    left, right = min(x, radius), min(width - x, radius + 1)
    top, bottom = min(y, radius), min(height - y, radius + 1)
    if left + right <= 0 or top + bottom <= 0:
        return heatmap  # entirely off the grid
    region = heatmap[y - top : y + bottom, x - left : x + right]
    patch = g[radius - top : radius + bottom, radius - left : radius + right]
    torch.maximum(region, patch, out=region)
    return heatmap


def build_targets(
    boxes: torch.Tensor,
    classes: torch.Tensor,
    output_size: Tuple[int, int],
    stride: int,
    num_classes: int,
    *,
    min_overlap: float = 0.7,
    min_box_size: float = 2.0,
    min_radius: int = 0,
    positive_radius: int = 0,
) -> Dict[str, torch.Tensor]:
    """Targets of one image.

    Boxes are first clipped to the grid's extent in input pixels (W*n, H*n); an object whose
    clipped box is <= ``min_box_size`` pixels in either side gets no target. M' is the number of
    remaining objects, never more than H*W (extra objects are dropped, in input order).

    Two options beyond the paper (0 = the paper): ``min_radius`` raises every Gaussian radius to
    at least that many cells; ``positive_radius`` r makes the (2r+1)^2 cells around each centre
    (inside the grid) positives: heatmap 1 there, and wh / offset regressed there too (offset =
    centre - cell, so it may leave [0, 1)), which gives small objects more than one positive.
    K = M' with ``positive_radius`` 0, else the number of (object, positive cell) pairs.

    Args:
        boxes: (M, 4) XYXY in input-image pixels.
        classes: (M,) int64 in [0, num_classes).
        output_size: (H, W) of the output grid.
        stride: n, input pixels per output cell.
        num_classes: C.
    Returns:
        dict with
          "heatmap": (C, H, W) float32 Gaussian targets (1 exactly at each centre cell),
          "indices": (K,) int64 flat index y*W + x of each centre (positive) cell,
          "wh": (K, 2) float32 (w/n, h/n),
          "offset": (K, 2) float32 (cx/n - x, cy/n - y), in [0, 1) at the centre cell,
          "mask": (K,) bool (all True: objects without a target are removed, not masked),
          "classes": (K,) int64,
          "radius": (M',) int64 Gaussian radius in cells,
          "boxes": (K, 4) float32 the object's box XYXY in cells (what a box loss compares with).
    """
    if boxes.dim() != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"build_targets: boxes must be (M, 4) XYXY, got {tuple(boxes.shape)}")
    if classes.shape != boxes.shape[:1]:
        raise ValueError(
            f"build_targets: classes must be ({boxes.shape[0]},), got {tuple(classes.shape)}"
        )
    classes = classes.long()
    if classes.numel() and (classes.min() < 0 or classes.max() >= num_classes):
        raise ValueError(
            f"build_targets: classes must lie in [0, {num_classes}), got "
            f"[{int(classes.min())}, {int(classes.max())}] (check MODEL.ROI_HEADS.NUM_CLASSES)"
        )
    height, width = int(output_size[0]), int(output_size[1])
    device = boxes.device
    heatmap = torch.zeros((num_classes, height, width), dtype=torch.float32, device=device)

    b = boxes.detach().to(torch.float64).clone()
    b[:, 0::2] = b[:, 0::2].clamp(0, width * stride)
    b[:, 1::2] = b[:, 1::2].clamp(0, height * stride)
    w_px, h_px = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    keep = (w_px > min_box_size) & (h_px > min_box_size)
    keep_idx = keep.nonzero().flatten()[: height * width]
    b, cls = b[keep_idx], classes[keep_idx]

    center = torch.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2], dim=1) / stride
    wh = torch.stack([b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], dim=1) / stride
    # A centre exactly on the far border would fall off the grid.
    cell = center.floor()
    cell[:, 0] = cell[:, 0].clamp(0, width - 1)
    cell[:, 1] = cell[:, 1].clamp(0, height - 1)
    offset = center - cell

    radii = []
    for (cx, cy), (w, h), c in zip(cell.long().tolist(), wh.tolist(), cls.tolist()):
        # The authors (and every CenterNet implementation) take the radius of the ceil'd integer
        # size in cells; the float size gives a radius 1 smaller for some boxes.
        r = max(int(min_radius), int(gaussian_radius((math.ceil(h), math.ceil(w)), min_overlap)))
        draw_gaussian(heatmap[c], (cx, cy), r)
        radii.append(r)

    cell = cell.long()
    obj = torch.arange(len(cell), device=device)
    if positive_radius > 0 and len(cell):
        d = torch.arange(-int(positive_radius), int(positive_radius) + 1, device=device)
        dy, dx = torch.meshgrid(d, d, indexing="ij")
        pos = cell[:, None, :] + torch.stack([dx.flatten(), dy.flatten()], dim=1)[None]  # (M', P, 2)
        inside = (pos[..., 0] >= 0) & (pos[..., 0] < width) & (pos[..., 1] >= 0) & (pos[..., 1] < height)
        obj = obj[:, None].expand(inside.shape)[inside]
        cell = pos[inside]
        heatmap[cls[obj], cell[:, 1], cell[:, 0]] = 1.0
        offset = center[obj] - cell.to(center.dtype)
    boxes_cells = torch.cat([center - wh / 2, center + wh / 2], dim=1)[obj]
    return {
        "heatmap": heatmap,
        "indices": cell[:, 1] * width + cell[:, 0],
        "wh": wh[obj].float(),
        "offset": offset.float(),
        "mask": torch.ones(len(cell), dtype=torch.bool, device=device),
        "classes": cls[obj],
        "radius": torch.tensor(radii, dtype=torch.long, device=device),
        "boxes": boxes_cells.float(),
    }


def focal_loss(
    pred_logits: torch.Tensor, gt: torch.Tensor, alpha: float = 2.0, beta: float = 4.0
) -> torch.Tensor:
    """CornerNet's penalty-reduced focal loss, from logits (log-sigmoid, so never inf).

        L = -1/max(P, 1) * sum( [y == 1] (1-p)^alpha log p + [y < 1] (1-y)^beta p^alpha log(1-p) )

    with P the number of centres (cells with y == 1); with no centre it is the negative part
    alone, as in the authors' code.

    Args:
        pred_logits: (N, C, H, W) heatmap logits.
        gt: (N, C, H, W) Gaussian targets in [0, 1].
    Returns:
        scalar loss.
    """
    if pred_logits.shape != gt.shape:
        raise ValueError(
            f"focal_loss: pred_logits {tuple(pred_logits.shape)} and gt {tuple(gt.shape)} differ"
        )
    pred_logits = pred_logits.float()
    gt = gt.float()
    pos = gt.eq(1)
    p = torch.sigmoid(pred_logits)
    log_p = F.logsigmoid(pred_logits)
    log_1mp = F.logsigmoid(-pred_logits)
    pos_loss = torch.where(pos, (1 - p).pow(alpha) * log_p, torch.zeros_like(p))
    neg_loss = torch.where(pos, torch.zeros_like(p), (1 - gt).pow(beta) * p.pow(alpha) * log_1mp)
    num_pos = pos.sum().clamp(min=1)
    return -(pos_loss.sum() + neg_loss.sum()) / num_pos


def decode_detections(
    heatmap: torch.Tensor,
    wh: torch.Tensor,
    offset: torch.Tensor,
    K: int,
    score_thresh: float,
    *,
    return_indices: bool = False,
) -> Union[List[torch.Tensor], Tuple[List[torch.Tensor], List[torch.Tensor]]]:
    """Peaks of the heatmap as boxes.

    3x3 max-pool NMS (a cell is kept where it equals its neighbourhood max), top-K over all
    classes and cells (K clamped to C*H*W), then score > ``score_thresh``.

    Args:
        heatmap: (N, C, H, W) probabilities.
        wh: (N, 2, H, W) (w, h) in cells.
        offset: (N, 2, H, W) (dx, dy) in cells.
        K: maximum peaks per image.
        score_thresh: keep peaks with score strictly above it.
        return_indices: also return each row's flat index c*H*W + y*W + x into the heatmap
            (to gather the logit or any other per-cell value).
    Returns:
        N tensors (D_i, 6) of rows [cx, cy, w, h, score, class] in output cells, by decreasing
        score, D_i <= K; with ``return_indices`` also N int64 tensors (D_i,).
    """
    if heatmap.dim() != 4:
        raise ValueError(
            f"decode_detections: heatmap must be (N, C, H, W), got {tuple(heatmap.shape)}"
        )
    n, c, h, w = heatmap.shape
    for name, t in (("wh", wh), ("offset", offset)):
        if tuple(t.shape) != (n, 2, h, w):
            raise ValueError(
                f"decode_detections: {name} must be {(n, 2, h, w)}, got {tuple(t.shape)}"
            )
    if int(K) <= 0:
        raise ValueError(f"decode_detections: K must be positive, got {K}")
    hmax = F.max_pool2d(heatmap, kernel_size=3, stride=1, padding=1)
    peaks = torch.where(hmax == heatmap, heatmap, torch.zeros_like(heatmap))
    k = min(int(K), c * h * w)
    scores, flat = peaks.reshape(n, -1).topk(k, dim=1)
    cls = flat // (h * w)
    pix = flat % (h * w)
    ys, xs = (pix // w).to(heatmap.dtype), (pix % w).to(heatmap.dtype)
    idx = pix[:, None, :].expand(n, 2, k)
    wh_k = wh.reshape(n, 2, -1).gather(2, idx).to(heatmap.dtype)
    off_k = offset.reshape(n, 2, -1).gather(2, idx).to(heatmap.dtype)
    rows = torch.stack(
        [xs + off_k[:, 0], ys + off_k[:, 1], wh_k[:, 0], wh_k[:, 1], scores, cls.to(heatmap.dtype)],
        dim=2,
    )
    keep = scores > score_thresh
    dets = [rows[i][keep[i]] for i in range(n)]
    if return_indices:
        return dets, [flat[i][keep[i]] for i in range(n)]
    return dets
