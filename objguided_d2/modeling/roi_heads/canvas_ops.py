"""Operations on packed ROI canvases (layout: :mod:`.canvas_layout`): the paper's one-ROI-at-a-time
maths for all ROIs of a level at once. The mask head runs its own layers through these
(:meth:`~.mask_head.ObjGuidedMaskHead.layers`); each operation makes a canvas layer see exactly
what the layer would see on one ROI alone (the one-ROI reference implementation is the test
oracle, ``tests/modeling/reference_seg.py``):

- 3x3 convs (:func:`conv_canvas`): an ROI's border reads the zero gap, i.e. the per-ROI conv's
  zero padding; the gap is re-zeroed after every layer (multiplication by the validity mask);
- InstanceNorm (affine=False): per-ROI statistics from shelf row sums and float64 column
  prefix sums (:func:`segment_instance_norm`);
- crops (:func:`crop_to_canvas`): each canvas pixel knows its ROI and its grid position on the
  ROI grid (:mod:`.roi_grid`); one ``grid_sample`` per level writes
  the whole canvas (the "border" padding is reproduced by clamped coordinates so that the gaps
  can read zeros);
- the bilinear upsampling of the deep input of S_i (:func:`upsample_to_canvas`): each destination
  pixel's source position under PyTorch's ``interpolate(align_corners=False)`` rule in its own
  ROI, clamped to the ROI's last cell (so the zero gap never gets weight), read by one
  ``grid_sample`` from the level-(i+1) canvas;
- GT masks and class logits: gathers over the canvas (GT masks with the ROI grid's taps; the
  refinement points likewise, in :mod:`.point_refine`).

Equality with the one-ROI reference is up to float rounding (grid coordinates on a large canvas
are float32; measured differences in mask probabilities ~1e-7; ``tests/modeling/test_batched_seg.py``).

Shapes: R ROIs, n ROIs of a level, P valid pixels of a level, (H, W) a canvas, C channels,
K mask classes, M points.
"""
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .canvas_layout import CanvasLayout, LevelLayout, pack_canvas
from .roi_grid import bilinear_read, border_index, enlarge_boxes, feature_grid, grid_positions, linear_taps

__all__ = [
    "PackedROIs",
    "crop_packed_rois",
    "crop_to_canvas",
    "crop_masks_at_pixels",
    "upsample_to_canvas",
    "segment_sums",
    "segment_instance_norm",
    "conv_canvas",
    "scatter_pixels",
    "class_logits_at_pixels",
    "roi_class_probs",
]


@dataclass
class PackedROIs:
    """ROIs cropped into one canvas per level: what the mask head's canvas forward reads.

    layout: their :class:`CanvasLayout`.
    crops: per level the (1, C_i, H_i, W_i) crop canvas (0 in the gaps).
    level_sizes: per ROI its level sizes (the argument of :func:`pack_canvas`).
    """

    layout: CanvasLayout
    crops: List[torch.Tensor]
    level_sizes: Sequence[Sequence[Tuple[int, int]]]


def crop_packed_rois(
    feats: Sequence[torch.Tensor],
    strides: Sequence[float],
    boxes: torch.Tensor,
    image_index: torch.Tensor,
    level_sizes: Sequence[Sequence[Tuple[int, int]]],
    *,
    enlarge: float,
) -> PackedROIs:
    """Pack R ROIs (:func:`pack_canvas`) and crop every level they have into its canvas.

    Args:
        feats: L maps (N, C_i, H_i, W_i), shallow first; strides: theirs.
        boxes: (R, 4) XYXY before enlargement; image_index: (R,) int64.
        level_sizes: per ROI its >= 1 level sizes (:func:`~.roi_grid.roi_level_sizes`).
    """
    layout = pack_canvas(level_sizes, device=boxes.device)
    crops = [crop_to_canvas(feats[l], boxes, image_index, lay, strides[l], enlarge=enlarge)
             for l, lay in enumerate(layout.levels)]
    return PackedROIs(layout=layout, crops=crops, level_sizes=level_sizes)


def _pixel_grid(lay: LevelLayout, boxes: torch.Tensor, extent_hw, enlarge: float,
                pixels: Optional[torch.Tensor] = None):
    """The ROI grid (:func:`~.roi_grid.grid_positions`) evaluated at valid pixels (all, or ``pixels``): float64
    normalised (gx, gy) and whether the sample lies inside the map's extent [0, extent].

    Args:
        boxes: (n, 4) XYXY before enlargement, one per slot of ``lay``.
    """
    slot, py, px = lay.pix_slot, lay.pix_y, lay.pix_x
    if pixels is not None:
        slot, py, px = slot[pixels], py[pixels], px[pixels]
    eb = enlarge_boxes(boxes.double(), enlarge)[slot]  # (P, 4)
    h, w = lay.h[slot], lay.w[slot]
    gx, in_x = feature_grid(grid_positions(eb[:, 0], eb[:, 2], px, w), extent_hw[1])
    gy, in_y = feature_grid(grid_positions(eb[:, 1], eb[:, 3], py, h), extent_hw[0])
    return gx, gy, in_x & in_y


def scatter_pixels(values: torch.Tensor, lay: LevelLayout, rows: Optional[int] = None) -> torch.Tensor:
    """(C, P) values of the valid pixels -> (1, C, H, W) canvas, 0 in the gaps (differentiable).
    With ``rows``, only the first P pixels lying in rows [0, rows) are given."""
    H = lay.height if rows is None else rows
    C = values.shape[0]
    flat = lay.pix_flat[: values.shape[1]]
    out = values.new_zeros((C, H * lay.width)).index_copy(1, flat, values)
    return out.reshape(1, C, H, lay.width)


def crop_to_canvas(
    feature: torch.Tensor,
    boxes: torch.Tensor,
    image_index: torch.Tensor,
    lay: LevelLayout,
    stride: float,
    *,
    enlarge: float,
) -> torch.Tensor:
    """Every ROI of a level cropped into its canvas slot: ``grid_sample`` (bilinear, "border"
    padding, align_corners=False) of ``feature`` on each ROI's grid, 0 outside the map's extent.

    Args:
        feature: (N, C, Hf, Wf) at ``stride``.
        boxes: (R, 4) XYXY input pixels before enlargement (all ROIs; the level's are used).
        image_index: (R,) int64 image of each ROI.
    Returns:
        (1, C, H, W) canvas.
    """
    fh, fw = feature.shape[-2:]
    gx, gy, inside = _pixel_grid(lay, boxes[lay.rois], (stride * fh, stride * fw), enlarge)
    grid = torch.stack([gx, gy], dim=-1).to(feature.dtype)  # (P, 2)
    img = image_index[lay.rois][lay.pix_slot]
    images = torch.unique(img).tolist() if feature.shape[0] > 1 else [0]
    keep = inside.to(feature.dtype)
    if len(images) == 1:
        # One grid_sample straight into the canvas. "border" padding is reproduced by clamping
        # the coordinates to the border cells' centres, so that "zeros" padding can zero the gaps
        # and the samples outside the map's extent: they read far outside (-8).
        i = images[0]
        lo = torch.tensor([-1 + 1 / fw, -1 + 1 / fh], dtype=torch.float64, device=grid.device)
        g = torch.stack([gx, gy], dim=-1).clamp(min=lo, max=-lo).to(feature.dtype)
        g = torch.where(inside[:, None], g, torch.full_like(g, -8.0))
        full = g.new_full((lay.height * lay.width, 2), -8.0).index_copy(0, lay.pix_flat, g)
        return F.grid_sample(feature[i : i + 1], full.reshape(1, lay.height, lay.width, 2),
                             mode="bilinear", padding_mode="zeros", align_corners=False)
    vals = feature.new_zeros((feature.shape[1], grid.shape[0]))
    for i in images:  # one grid_sample per image over its ROIs' pixels
        sel = (img == i).nonzero().flatten()
        s = F.grid_sample(feature[i : i + 1], grid[sel][None, None], mode="bilinear",
                          padding_mode="border", align_corners=False)[0, :, 0]
        vals = vals.index_copy(1, sel, s)
    return scatter_pixels(vals * keep, lay)


def crop_masks_at_pixels(
    masks: torch.Tensor, boxes: torch.Tensor, slots: torch.Tensor, lay: LevelLayout,
    *, enlarge: float,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """GT masks sampled on some ROIs' level-0 grids (as :func:`crop_to_canvas` samples a stride-1
    map: soft at the edges), at their canvas pixels, reading the bool masks directly (the 4
    bilinear taps of ``grid_sample``'s border / align_corners=False rule).

    Args:
        masks: (n_i, H, W) bool GT masks (one image), boxes: (n_i, 4) before enlargement,
            slots: (n_i,) int64 their slots in ``lay``.
    Returns:
        pixels (P_i,) int64 indices into ``lay.pix_*`` and the (P_i,) float values in [0, 1].
    """
    n, H, W = masks.shape
    local_of_slot = torch.full((len(lay.rois),), -1, dtype=torch.int64, device=slots.device)
    local_of_slot[slots] = torch.arange(n, device=slots.device)
    local = local_of_slot[lay.pix_slot]
    pixels = (local >= 0).nonzero().flatten()
    local = local[pixels]
    slot_boxes = boxes.new_zeros((len(lay.rois), 4))
    slot_boxes[slots] = boxes
    gx, gy, inside = _pixel_grid(lay, slot_boxes, (float(H), float(W)), enlarge, pixels)

    flat = masks.reshape(-1)
    base = local * (H * W)

    def tap(ys, xs):
        return flat[base + ys * W + xs].float()

    vals = bilinear_read(tap, linear_taps(border_index(gx, W), W - 1),
                         linear_taps(border_index(gy, H), H - 1))
    return pixels, vals * inside.float()


def upsample_to_canvas(x_deep: torch.Tensor, deep: LevelLayout, lay: LevelLayout,
                       deep_slot: torch.Tensor) -> torch.Tensor:
    """Per ROI ``F.interpolate(x_r, size=(h, w), mode="bilinear")`` from the level-(i+1) canvas
    into the merged rows of the level-i canvas.

    Args:
        x_deep: (1, C, H', W') level-(i+1) canvas.
        deep_slot: (num_merged,) slot in ``deep`` of each merged slot of ``lay``.
    Returns:
        (1, C, Hm, W), 0 in the gaps.
    """
    P = int((lay.pix_slot < lay.num_merged).sum())  # merged slots come first, so do their pixels
    slot = lay.pix_slot[:P]
    ds = deep_slot[slot]

    def source(in_size, out_size, dst, start, extent):
        # PyTorch's rule: src = (in/out) * (dst + 0.5) - 0.5, clamped to [0, in - 1] (its last
        # cell's "i1 = i0" becomes a zero weight on the right neighbour), in float32 like
        # upsample_bilinear2d; then canvas coordinates for grid_sample (align_corners=True).
        scale = in_size.float() / out_size.float()
        src = (scale * (dst.float() + 0.5) - 0.5).clamp(min=0)
        src = torch.minimum(src, (in_size - 1).float())
        return 2.0 * (start.double() + src.double()) / max(extent - 1, 1) - 1.0

    gy = source(deep.h[ds], lay.h[slot], lay.pix_y[:P], deep.y0[ds], deep.height)
    gx = source(deep.w[ds], lay.w[slot], lay.pix_x[:P], deep.x0[ds], deep.width)
    rows = lay.merged_rows
    # Gap pixels read far outside the deep canvas: 0 ("zeros" padding).
    grid = torch.full((rows * lay.width, 2), -8.0, dtype=x_deep.dtype, device=x_deep.device)
    grid = grid.index_copy(0, lay.pix_flat[:P], torch.stack([gx, gy], dim=-1).to(x_deep.dtype))
    return F.grid_sample(x_deep, grid.reshape(1, rows, lay.width, 2), mode="bilinear",
                         padding_mode="zeros", align_corners=True)


def segment_sums(x: torch.Tensor, lay: LevelLayout, n: int) -> torch.Tensor:
    """Per-slot sums of a canvas that is 0 in its gaps: each shelf's rows are added up (an
    ``index_add`` over rows), then each slot's column range is read off a float64 prefix sum.

    Args:
        x: (C, rows, W) the first ``rows`` rows of ``lay``'s canvas; n: slots inside them.
    Returns:
        (C, n) float64.
    """
    C, rows, W = x.shape
    shelves = lay.row_shelf[:rows]
    per_shelf = x.new_zeros((C, int(shelves[-1]) + 1, W)).index_add(1, shelves, x)
    return _shelf_sums_to_slots(per_shelf, lay, n)


def _shelf_sums_to_slots(per_shelf: torch.Tensor, lay: LevelLayout, n: int) -> torch.Tensor:
    """(C, S, W) column sums of each shelf -> (C, n) float64 per-slot sums (prefix sums)."""
    cs = F.pad(per_shelf.double().cumsum(2), (1, 0))  # (C, S, W + 1)
    sh, x0 = lay.slot_shelf[:n], lay.x0[:n]
    return cs[:, sh, x0 + lay.w[:n]] - cs[:, sh, x0]


def segment_instance_norm(
    x: torch.Tensor, lay: LevelLayout, rows: int, eps: float = 1e-5, *, gaps_are_zero: bool = False
) -> torch.Tensor:
    """InstanceNorm2d (affine=False, biased variance) of every ROI of a canvas on its own
    (two passes, like PyTorch's: mean, then the mean squared deviation).

    Args:
        x: (1, C, rows, W) the first ``rows`` rows of ``lay``'s canvas (ROIs fully inside);
            any values in the gaps unless ``gaps_are_zero``. Overwritten (a fresh conv output).
    Returns:
        (1, C, rows, W), 0 in the gaps.
    """
    C = x.shape[1]
    n = int((lay.y0 < rows).sum())  # slots in these rows (merged ones come first)
    cnt = (lay.h[:n] * lay.w[:n]).double()
    mask = lay.mask[0, :, :rows]
    xm = x[0] if gaps_are_zero else x[0].mul_(mask)
    shelves = lay.row_shelf[:rows]
    num_shelves = int(shelves[-1]) + 1
    col_slot = lay.col_slot[: num_shelves * lay.width].clamp(max=n)
    zero = x.new_zeros((C, 1))

    def per_shelf(v):  # (C, n) per slot -> (C, S, W): each shelf's row of per-slot values
        return torch.cat([v.to(x.dtype), zero], 1).index_select(1, col_slot).reshape(C, num_shelves, lay.width)

    mean = segment_sums(xm, lay, n) / cnt
    if not (torch.is_grad_enabled() and x.requires_grad):
        # Inference: the same two passes in place, shelf by shelf, so that no per-pixel copy of
        # the statistics is made (the per-slot values broadcast down each shelf's rows).
        spans = [(a, min(b, rows)) for a, b in lay.shelf_spans[:num_shelves]]
        m = per_shelf(mean)
        for s, (a, b) in enumerate(spans):
            xm[:, a:b].sub_(m[:, s, None])
        xm.mul_(mask)  # 0 in the gaps again (also below shorter ROIs of a shelf)
        sq = torch.stack([xm[:, a:b].square().sum(1) for a, b in spans], 1)  # (C, S, W)
        var = _shelf_sums_to_slots(sq, lay, n) / cnt
        r = per_shelf(torch.rsqrt(var + eps))
        for s, (a, b) in enumerate(spans):
            xm[:, a:b].mul_(r[:, s, None])
        return xm[None]
    # Training (autograd through the statistics): per-pixel copies, out of place.
    shelf_rows = torch.bincount(shelves, minlength=num_shelves)

    def per_pixel(v):  # (C, n) -> (C, rows, W): each shelf's row repeated down the shelf
        return per_shelf(v).repeat_interleave(shelf_rows, dim=1)

    d = (xm - per_pixel(mean)).mul_(mask)  # 0 in the gaps (also below shorter ROIs of a shelf)
    var = segment_sums(d * d, lay, n) / cnt
    return (d * per_pixel(torch.rsqrt(var + eps)))[None]


def _conv3x3_by_shifts(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]):
    """A 3x3 / stride 1 / zero-padding 1 conv with few output channels as one 1x1 conv to 9 * K
    channels plus 9 shifted sums (oneDNN is slow for K ~ 1)."""
    K, C = weight.shape[:2]
    H, W = x.shape[-2:]
    z = F.conv2d(x, weight.permute(2, 3, 0, 1).reshape(9 * K, C, 1, 1))
    z = F.pad(z, (1, 1, 1, 1)).reshape(1, 3, 3, K, H + 2, W + 2)
    out = None
    for dy in range(3):
        for dx in range(3):
            t = z[:, dy, dx, :, dy : dy + H, dx : dx + W]
            out = t.clone() if out is None else out.add_(t)
    return out if bias is None else out.add_(bias[None, :, None, None])


def conv_canvas(conv: nn.Module, x, lay: LevelLayout, rows: int) -> torch.Tensor:
    """A Detectron2 ``Conv2d`` (conv -> norm -> activation) on the first ``rows`` rows of a
    canvas whose gaps are 0; the gaps are 0 again afterwards.

    ``x`` may be a list of canvases whose channel concatenation is the input (a 1x1 conv then
    runs as a sum of convs over the parts: no concatenated copy)."""
    w, b = conv.weight, conv.bias
    if isinstance(x, (list, tuple)):
        if w.shape[-2:] != (1, 1):
            raise ValueError("conv_canvas: a split input needs a 1x1 conv")
        y, c0 = None, 0
        for part in x:
            c1 = c0 + part.shape[1]
            t = F.conv2d(part, w[:, c0:c1], b if y is None else None)
            y = t if y is None else y.add_(t)
            c0 = c1
    elif (w.shape[-2:] == (3, 3) and tuple(conv.padding) == (1, 1) and tuple(conv.stride) == (1, 1)
          and tuple(conv.dilation) == (1, 1) and conv.groups == 1 and w.shape[0] <= 4):
        y = _conv3x3_by_shifts(x, w, b)
    else:
        y = F.conv2d(x, w, b, conv.stride, conv.padding, conv.dilation, conv.groups)
    norm = getattr(conv, "norm", None)
    if isinstance(norm, nn.InstanceNorm2d):
        # A bias-free 1x1 conv of gap-free inputs keeps the gaps at 0.
        y = segment_instance_norm(y, lay, rows, norm.eps,
                                  gaps_are_zero=w.shape[-2:] == (1, 1) and b is None)
    elif norm is not None:
        raise ValueError(f"batched ROI segmentation supports InstanceNorm or no norm, got {norm}")
    else:
        y = y.mul_(lay.mask[:, :, :rows])  # a fresh conv output: autograd-safe in place
    act = getattr(conv, "activation", None)
    if act is F.relu:
        y = F.relu(y, inplace=True)  # no producer above needs y for its backward
    elif act is not None:
        y = act(y) * lay.mask[:, :, :rows]
    return y


def class_logits_at_pixels(mask_logits: torch.Tensor, lay: LevelLayout,
                           class_index: torch.Tensor) -> torch.Tensor:
    """(P_0,) logit of each level-0 valid pixel for its ROI's class channel.

    Args:
        mask_logits: (1, K, H_0, W_0) level-0 logit canvas; lay: its layout.
        class_index: (R,) int64 logit channel of each ROI.
    """
    flat = mask_logits[0].reshape(mask_logits.shape[1], -1)
    if flat.shape[0] == 1:
        return flat[0, lay.pix_flat]
    cls = class_index[lay.rois][lay.pix_slot]
    return flat[cls, lay.pix_flat]


def roi_class_probs(mask_logits: torch.Tensor, layout: CanvasLayout,
                    class_index: torch.Tensor) -> List[torch.Tensor]:
    """Each ROI's (h_0, w_0) probability map of its class channel, in ROI order (views into one
    level-0 probability canvas).

    Args:
        mask_logits: (1, K, H_0, W_0); class_index: (R,) int64 logit channel of each ROI.
    """
    lay0 = layout.levels[0]
    lg = mask_logits[0]
    if lg.shape[0] == 1:
        probs = lg[0].sigmoid()
    else:  # each pixel's own ROI class channel
        cls_px = class_index[lay0.rois]
        cls_px = torch.cat([cls_px, cls_px.new_zeros(1)])[lay0.slot_map]
        probs = lg.reshape(lg.shape[0], -1).gather(0, cls_px[None])[0].reshape(lg.shape[1:]).sigmoid()
    y0, x0, h, w = (t.tolist() for t in (lay0.y0, lay0.x0, lay0.h, lay0.w))
    return [probs[y0[k] : y0[k] + h[k], x0[k] : x0[k] + w[k]] for k in layout.slots[:, 0].tolist()]
