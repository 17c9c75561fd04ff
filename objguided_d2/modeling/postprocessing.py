"""Post-processing of the object-guided model (docs/method.md §5), in Detectron2's place
(``detectron2/modeling/postprocessing.py``; its pasting lives in ``layers/mask_ops.py``):

- :func:`paste_roi_masks`: variable-size ROI probability maps pasted into full images at their
  enlarged boxes (bilinear, one resampling at the output resolution) and thresholded;
- :func:`mask_nms`: greedy mask NMS from the pasted masks' foreground pixels;
- :func:`postprocess_instances`: the ROI heads' output of one image -> standard full-image
  ``Instances`` with ``pred_masks``.

Shapes: R instances, (H, W) output image size, (h_r, w_r) ROI map size.
"""
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from detectron2.structures import Boxes, Instances

from .roi_heads.roi_grid import check_boxes

__all__ = ["paste_roi_masks", "mask_nms", "postprocess_instances"]


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
    check_boxes(grid_boxes, "grid_boxes")
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



def mask_nms(
    masks: torch.Tensor, scores: torch.Tensor, iou_threshold: float,
    classes: Optional[torch.Tensor] = None,
    pixels: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
) -> torch.Tensor:
    """Greedy mask NMS: visiting masks by decreasing score, drop one whose IoU with an already
    kept mask (of the same class, when ``classes`` is given) exceeds ``iou_threshold``.

    IoUs come from a sparse product (cost ~ overlapping pixels, not R^2 * H * W).

    Args:
        masks: (R, H, W) bool; with ``pixels`` only its (H, W) is read (any leading size).
        scores: (R,).
        classes: (R,) int or None (class-agnostic).
        pixels: the masks' foreground as (mask index (M,), y * W + x (M,)) when already known
            (``paste_roi_masks(..., return_pixels=True)``): saves a scan of the full masks.
    Returns:
        (R',) int64 indices of the kept masks, by decreasing score.
    """
    import scipy.sparse

    R = len(scores)
    if pixels is None and masks.shape[0] != R:
        raise ValueError(f"mask_nms: {masks.shape[0]} masks but {R} scores")
    order = torch.argsort(scores, descending=True)
    if R <= 1:
        return order
    if pixels is None:
        rows, cols = masks.reshape(R, -1).nonzero(as_tuple=True)
    else:
        rows, cols = pixels
    rows, cols = rows.cpu().numpy(), cols.cpu().numpy()
    m = scipy.sparse.csr_matrix(
        (np.ones(len(rows), dtype=np.float32), (rows, cols)),
        shape=(R, masks.shape[-2] * masks.shape[-1]),
    )
    inter = np.asarray((m @ m.T).todense())
    area = np.diag(inter)
    union = area[:, None] + area[None, :] - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0)
    if classes is not None:
        c = classes.cpu().numpy()
        iou = np.where(c[:, None] == c[None, :], iou, 0.0)
    suppress = iou > iou_threshold
    order_np = order.cpu().numpy()
    removed = np.zeros(R, dtype=bool)
    keep = []
    # Greedy NMS is sequential by nature; the loop runs over an R x R boolean table.
    for i in order_np:
        if removed[i]:
            continue
        keep.append(i)
        removed |= suppress[i]
    return torch.as_tensor(keep, dtype=torch.int64, device=scores.device)


def postprocess_instances(
    results: Instances,
    output_height: int,
    output_width: int,
    mask_threshold: float = 0.5,
    mask_nms_thresh: float = 0.0,
) -> Instances:
    """Turn the ROI heads' output of one image into standard full-image instances.

    Args:
        results: Instances at the network's input size with ``pred_boxes``, ``scores``,
            ``pred_classes``, ``pred_mask_probs`` (R maps (h_r, w_r)) and ``pred_mask_boxes``
            (Boxes the maps span, input pixels).
        output_height, output_width: the original image size to produce.
        mask_threshold: probability threshold of the pasted masks.
        mask_nms_thresh: mask NMS IoU threshold (<= 0 disables).
    Returns:
        Instances of size (output_height, output_width) with ``pred_boxes`` (scaled, clipped),
        ``scores``, ``pred_classes`` and ``pred_masks`` ((R', H, W) bool). Instances whose mask
        vanishes after thresholding are dropped.
    """
    in_h, in_w = results.image_size
    out_h, out_w = int(output_height), int(output_width)
    sx, sy = out_w / in_w, out_h / in_h
    boxes = Boxes(results.pred_boxes.tensor.clone())
    boxes.scale(sx, sy)
    boxes.clip((out_h, out_w))
    scale = boxes.tensor.new_tensor([sx, sy, sx, sy])
    grid_boxes = results.pred_mask_boxes.tensor * scale
    masks, (pix_inst, pix_flat) = paste_roi_masks(
        list(results.pred_mask_probs), grid_boxes, (out_h, out_w), mask_threshold,
        return_pixels=True)
    R = len(masks)
    area = torch.bincount(pix_inst, minlength=R)
    keep = (area > 0).nonzero().flatten()
    if mask_nms_thresh > 0 and len(keep) > 1:
        # The kept masks' pixels, renumbered 0..len(keep)-1 (no copy or scan of full masks).
        new_id = torch.full((R,), -1, dtype=torch.int64, device=pix_inst.device)
        new_id[keep.to(new_id.device)] = torch.arange(len(keep), device=new_id.device)
        sub = mask_nms(masks[:0], results.scores[keep], mask_nms_thresh, results.pred_classes[keep],
                       pixels=(new_id[pix_inst], pix_flat)) if len(keep) else keep
        keep = keep[sub.to(keep.device)]
    out = Instances((out_h, out_w))
    out.pred_boxes = boxes[keep]
    out.scores = results.scores[keep]
    out.pred_classes = results.pred_classes[keep]
    # Skip the copy of the full masks when nothing was dropped (and the order is unchanged).
    unchanged = len(keep) == R and bool((keep == torch.arange(R, device=keep.device)).all())
    out.pred_masks = masks if unchanged else masks[keep]
    return out
