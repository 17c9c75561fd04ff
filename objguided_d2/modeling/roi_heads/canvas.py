"""Canvas-packed variable-size ROI segmentation: the per-ROI loop's maths
(``ObjGuidedMaskHead.forward_single``, ``roi_refine_logits``) for all ROIs at once.

At each level, the ROIs that have that level are packed into one 2-D *canvas* (shelf packing:
rows of ROIs sorted by height) with >= 1 zero pixel between any two ROIs. Every layer then runs
once for all ROIs and is made to see exactly what the per-ROI layer sees:

- 3x3 convs: an ROI's border reads the zero gap, i.e. the per-ROI conv's zero padding; the gap is
  re-zeroed after every layer (multiplication by the canvas validity mask);
- InstanceNorm (affine=False): per-ROI statistics from shelf row sums and float64 column
  prefix sums (:func:`segment_instance_norm`);
- crops: each canvas pixel knows its ROI and its grid position, hence the same ``grid_sample``
  coordinates as :func:`crop_roi`; one ``grid_sample`` per level writes the whole canvas (the
  "border" padding is reproduced by clamped coordinates so that the gaps can read zeros);
- the bilinear upsampling of the deep input of S_i: each destination pixel's source position
  under PyTorch's ``interpolate(align_corners=False)`` rule in its own ROI, clamped to the ROI's
  last cell (so the zero gap never gets weight), read by one ``grid_sample`` from the
  level-(i+1) canvas (:func:`upsample_to_canvas`);
- losses and refinement points: gathers over the canvas.

Equality with the loop is up to float rounding (grid coordinates on a large canvas are float32;
measured differences in mask probabilities ~1e-7; ``tests/modeling/test_batched_seg.py``).

Canvas of level i: its ROIs that have a deeper level ("merged": they receive S_i's output) fill
rows [0, Hm_i), the ROIs whose deepest level is i fill rows [Hm_i + 1, H_i) (their level-i crop
is their x). The merged ROIs of level i are exactly the ROIs of the level-(i+1) canvas.

Shapes: R ROIs, n ROIs of a level, P valid pixels of a level, (H, W) a canvas, C channels,
K mask classes, D drawn / M kept refinement points.
"""
import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .point_refine import calculate_uncertainty
from .roi_sampling import enlarge_boxes

__all__ = [
    "LevelLayout",
    "CanvasLayout",
    "pack_canvas",
    "crop_to_canvas",
    "crop_masks_at_pixels",
    "class_logits_at_pixels",
    "upsample_to_canvas",
    "segment_sums",
    "segment_instance_norm",
    "CanvasSegOutput",
    "mask_head_forward_canvas",
    "sample_canvas_points",
    "select_uncertain_points",
    "refine_logits_canvas",
]


@dataclass
class LevelLayout:
    """Where the ROIs of one level lie in its canvas.

    rois: (n,) int64 global ROI index of each slot (merged ROIs first).
    y0, x0, h, w: (n,) int64 top-left corner and size of each slot.
    height, width: canvas size; merged_rows: Hm (rows [0, Hm) hold the merged ROIs).
    num_merged: how many slots are merged ROIs (the first ones).
    pix_flat: (P,) int64 canvas index (y * W + x) of each valid pixel, slot-major, row-major.
    pix_slot, pix_y, pix_x: (P,) int64 slot and local (row, col) of each valid pixel.
    slot_map: (H * W,) int64 slot of each canvas pixel, n in the gaps.
    mask: (1, 1, H, W) float validity.
    slot_shelf: (n,) int64 shelf of each slot; row_shelf: (H,) int64 shelf of each row.
    col_slot: (S * W,) int64 slot spanning each column of each shelf, n where none.
    shelf_spans: per shelf its rows [start, end) (a gap row belongs to the shelf above), as
        Python ints so that per-shelf slicing never syncs with a device.
    """

    rois: torch.Tensor
    y0: torch.Tensor
    x0: torch.Tensor
    h: torch.Tensor
    w: torch.Tensor
    height: int
    width: int
    merged_rows: int
    num_merged: int
    pix_flat: torch.Tensor
    pix_slot: torch.Tensor
    pix_y: torch.Tensor
    pix_x: torch.Tensor
    slot_map: torch.Tensor
    mask: torch.Tensor
    slot_shelf: torch.Tensor
    row_shelf: torch.Tensor
    col_slot: torch.Tensor
    shelf_spans: List[Tuple[int, int]]


@dataclass
class CanvasLayout:
    """All levels' layouts plus, per ROI, its slot at every level it has.

    levels: L' layouts, level 0 first (L' = the most levels any ROI has).
    slots: (R, L') int64 slot of each ROI at each level, -1 where it has no such level.
    num_levels: (R,) int64 levels per ROI.
    """

    levels: List[LevelLayout]
    slots: torch.Tensor
    num_levels: torch.Tensor


def _shelf_pack(sizes: List[Tuple[int, int]], groups: List[List[int]], width: int):
    """Greedy shelf packing with 1-px gaps; a new shelf starts at each group.

    Returns per item (y0, x0) and its shelf, the shelves' top rows, the canvas height and, per
    group, the first row after it.
    """
    pos = [(0, 0)] * len(sizes)
    shelf_of = [0] * len(sizes)
    tops: List[int] = []
    top, group_ends = 0, []
    for items in groups:
        x, shelf_h = 0, 0
        for k in items:
            h, w = sizes[k]
            if x > 0 and x + w > width:  # next shelf
                top += shelf_h + 1
                x, shelf_h = 0, 0
            if x == 0:
                tops.append(top)
            pos[k] = (top, x)
            shelf_of[k] = len(tops) - 1
            x += w + 1
            shelf_h = max(shelf_h, h)
        if items:
            top += shelf_h + 1
        group_ends.append(top)
    return pos, shelf_of, tops, max(top - 1, 1), group_ends


def pack_canvas(level_sizes: Sequence[Sequence[Tuple[int, int]]], device=None) -> CanvasLayout:
    """Pack ROIs with per-level sizes into one canvas per level.

    Args:
        level_sizes: per ROI its (h, w) at levels 0..n_r-1 (n_r >= 1; ``roi_level_sizes``).
    Returns:
        :class:`CanvasLayout`.
    """
    R = len(level_sizes)
    nlev = [len(s) for s in level_sizes]
    if R == 0 or min(nlev) < 1:
        raise ValueError("pack_canvas: need >= 1 ROI, each with >= 1 level")
    L = max(nlev)
    slots = torch.full((R, L), -1, dtype=torch.int64)
    levels = []
    for l in range(L):
        merged = [r for r in range(R) if nlev[r] > l + 1]
        entry = [r for r in range(R) if nlev[r] == l + 1]
        rois = merged + entry
        sizes = [tuple(level_sizes[r][l]) for r in rois]
        # Tall ROIs first inside each group: shelves waste little height.
        order_m = sorted(range(len(merged)), key=lambda k: (-sizes[k][0], -sizes[k][1]))
        order_e = sorted(range(len(merged), len(rois)), key=lambda k: (-sizes[k][0], -sizes[k][1]))
        area = sum((h + 1) * (w + 1) for h, w in sizes)
        width = max(max(w for _, w in sizes), int(math.ceil(math.sqrt(area))))
        pos, shelf_of, tops, height, ends = _shelf_pack(sizes, [order_m, order_e], width)
        merged_rows = max(ends[0] - 1, 0) if merged else 0
        width = max(x + w for (_, x), (_, w) in zip(pos, sizes))
        # Row -> shelf (a gap row belongs to the shelf above it; it is 0 wherever it is read).
        row_shelf = torch.bucketize(torch.arange(height), torch.as_tensor(tops), right=True) - 1
        spans = list(zip(tops, tops[1:] + [height]))
        levels.append(_level_layout(rois, pos, sizes, height, width, merged_rows, len(merged),
                                    shelf_of, row_shelf, spans, device))
        slots[torch.as_tensor(rois), l] = torch.arange(len(rois))
    return CanvasLayout(levels=levels, slots=slots.to(device),
                        num_levels=torch.as_tensor(nlev, dtype=torch.int64, device=device))


def _level_layout(rois, pos, sizes, height, width, merged_rows, num_merged, shelf_of, row_shelf,
                  shelf_spans, device) -> LevelLayout:
    n = len(rois)
    t = torch.as_tensor
    y0 = t([p[0] for p in pos], dtype=torch.int64)
    x0 = t([p[1] for p in pos], dtype=torch.int64)
    h = t([s[0] for s in sizes], dtype=torch.int64)
    w = t([s[1] for s in sizes], dtype=torch.int64)
    counts = h * w
    slot = torch.repeat_interleave(torch.arange(n), counts)
    start = torch.cumsum(counts, 0) - counts
    off = torch.arange(int(counts.sum())) - start[slot]
    py, px = off // w[slot], off % w[slot]
    flat = (y0[slot] + py) * width + x0[slot] + px
    slot_map = torch.full((height * width,), n, dtype=torch.int64)
    slot_map[flat] = slot
    mask = (slot_map < n).float().reshape(1, 1, height, width)
    # Shelf column -> slot (n where no slot spans it): per-slot values become shelf rows.
    sh = t(shelf_of, dtype=torch.int64)
    num_shelves = int(row_shelf[-1]) + 1
    cslot = torch.repeat_interleave(torch.arange(n), w)
    cstart = torch.cumsum(w, 0) - w
    ccol = x0[cslot] + torch.arange(int(w.sum())) - cstart[cslot]
    col_slot = torch.full((num_shelves * width,), n, dtype=torch.int64)
    col_slot[sh[cslot] * width + ccol] = cslot
    d = device
    return LevelLayout(
        rois=t(rois, dtype=torch.int64, device=d), y0=y0.to(d), x0=x0.to(d), h=h.to(d), w=w.to(d),
        height=int(height), width=int(width), merged_rows=int(merged_rows), num_merged=num_merged,
        pix_flat=flat.to(d), pix_slot=slot.to(d), pix_y=py.to(d), pix_x=px.to(d),
        slot_map=slot_map.to(d), mask=mask.to(d),
        slot_shelf=t(shelf_of, dtype=torch.int64, device=d), row_shelf=row_shelf.to(d),
        col_slot=col_slot.to(d), shelf_spans=[(int(a), int(b)) for a, b in shelf_spans],
    )


def _pixel_grid(lay: LevelLayout, boxes: torch.Tensor, extent_hw, enlarge: float,
                pixels: Optional[torch.Tensor] = None):
    """``_axis_grid`` of :func:`crop_roi` evaluated at valid pixels (all, or ``pixels``): float64
    normalised (gx, gy) and whether the sample lies inside the map's extent [0, extent].

    Args:
        boxes: (n, 4) XYXY before enlargement, one per slot of ``lay``.
    """
    slot, py, px = lay.pix_slot, lay.pix_y, lay.pix_x
    if pixels is not None:
        slot, py, px = slot[pixels], py[pixels], px[pixels]
    eb = enlarge_boxes(boxes.double(), enlarge)[slot]  # (P, 4)
    h, w = lay.h[slot], lay.w[slot]
    # Same float64 operations as ``_axis_grid``: t = j / max(n - 1, 1), x = lo + (hi - lo) * t.
    tx = px.double() / (w - 1).clamp(min=1).double()
    ty = py.double() / (h - 1).clamp(min=1).double()
    x = eb[:, 0] + (eb[:, 2] - eb[:, 0]) * tx
    y = eb[:, 1] + (eb[:, 3] - eb[:, 1]) * ty
    ext_h, ext_w = extent_hw
    gx, gy = 2.0 * x / ext_w - 1.0, 2.0 * y / ext_h - 1.0
    inside = (x >= 0) & (x <= ext_w) & (y >= 0) & (y <= ext_h)
    return gx, gy, inside


def _scatter_pixels(values: torch.Tensor, lay: LevelLayout, rows: Optional[int] = None) -> torch.Tensor:
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
    enlarge: float = 1.1,
) -> torch.Tensor:
    """Every ROI of a level cropped into its canvas slot (:func:`crop_roi` per ROI).

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
    return _scatter_pixels(vals * keep, lay)


def crop_masks_at_pixels(
    masks: torch.Tensor, boxes: torch.Tensor, slots: torch.Tensor, lay: LevelLayout,
    *, enlarge: float = 1.1,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """:func:`crop_mask_roi` of some ROIs at their level-0 canvas pixels, reading the bool masks
    directly (the 4 bilinear taps of ``grid_sample``'s border / ``align_corners=False`` rule).

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

    def taps(g, size):  # grid_sample: unnormalise, clip to the border, two neighbours
        ix = ((g.float() + 1) * size - 1) / 2
        ix = ix.clamp(0, size - 1)
        i0 = ix.floor()
        w1 = ix - i0
        i0 = i0.long()
        return i0, (i0 + 1).clamp(max=size - 1), 1 - w1, w1

    x0, x1, wx0, wx1 = taps(gx, W)
    y0, y1, wy0, wy1 = taps(gy, H)
    flat = masks.reshape(-1)
    base = local * (H * W)

    def tap(ys, xs):
        return flat[base + ys * W + xs].float()

    vals = (wy0 * (wx0 * tap(y0, x0) + wx1 * tap(y0, x1))
            + wy1 * (wx0 * tap(y1, x0) + wx1 * tap(y1, x1)))
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


def _conv_canvas(conv: nn.Module, x, lay: LevelLayout, rows: int) -> torch.Tensor:
    """A Detectron2 ``Conv2d`` (conv -> norm -> activation) on the first ``rows`` rows of a
    canvas whose gaps are 0; the gaps are 0 again afterwards.

    ``x`` may be a list of canvases whose channel concatenation is the input (a 1x1 conv then
    runs as a sum of convs over the parts: no concatenated copy)."""
    w, b = conv.weight, conv.bias
    if isinstance(x, (list, tuple)):
        if w.shape[-2:] != (1, 1):
            raise ValueError("_conv_canvas: a split input needs a 1x1 conv")
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


@dataclass
class CanvasSegOutput:
    """The segmentation branch's canvases.

    layout: the :class:`CanvasLayout`.
    mask_logits: (1, K, H_0, W_0) level-0 canvas.
    xs: per level the merged feature x_i (1, C_i, H_i, W_i); xs[0] is e1, xs[1] is e2 (for the
        ROIs with >= 2 levels).
    """

    layout: CanvasLayout
    mask_logits: torch.Tensor
    xs: List[torch.Tensor]


def mask_head_forward_canvas(
    head: nn.Module,
    feats: Sequence[torch.Tensor],
    strides: Sequence[float],
    boxes: torch.Tensor,
    image_index: torch.Tensor,
    layout: CanvasLayout,
    *,
    enlarge: float = 1.1,
) -> CanvasSegOutput:
    """``ObjGuidedMaskHead.forward_single`` for every ROI of ``layout`` at once.

    Args:
        head: an ``ObjGuidedMaskHead``.
        feats: its L input maps (N, C_i, H_i, W_i), shallow first; strides: theirs.
        boxes: (R, 4) XYXY before enlargement; image_index: (R,) int64.
    """
    levels = layout.levels
    if len(levels) > head.num_levels:
        raise ValueError(f"mask_head_forward_canvas: ROIs with {len(levels)} levels, the head "
                         f"has {head.num_levels}")
    xs: List[Optional[torch.Tensor]] = [None] * len(levels)
    for i in range(len(levels) - 1, -1, -1):
        lay = levels[i]
        crop = crop_to_canvas(feats[i], boxes, image_index, lay, strides[i], enlarge=enlarge)
        hm = lay.merged_rows
        parts = []
        if lay.num_merged:
            m = head.merges[i]
            deep_slot = layout.slots[lay.rois[: lay.num_merged], i + 1]
            up = upsample_to_canvas(xs[i + 1], levels[i + 1], lay, deep_slot)
            up = _conv_canvas(m.up_conv, up, lay, hm)
            parts.append(_conv_canvas(m.cat_conv, [crop[:, :, :hm], up], lay, hm))
        if lay.num_merged < len(lay.rois):  # ROIs whose deepest level is i: x = entry(crop)
            entry = head.entry[i]
            rest = crop[:, :, hm:]
            if not isinstance(entry, nn.Identity):
                rest = entry(rest) * lay.mask[:, :, hm:]
            parts.append(rest)
        xs[i] = parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)
    lay0 = levels[0]
    h = _conv_canvas(head.mask_fcn, xs[0], lay0, lay0.height)
    logits = _conv_canvas(head.predictor, h, lay0, lay0.height)
    return CanvasSegOutput(layout=layout, mask_logits=logits, xs=xs)


def class_logits_at_pixels(out: CanvasSegOutput, class_index: torch.Tensor) -> torch.Tensor:
    """(P_0,) logit of each level-0 valid pixel for its ROI's class channel.

    Args:
        class_index: (R,) int64 logit channel of each ROI.
    """
    lay = out.layout.levels[0]
    flat = out.mask_logits[0].reshape(out.mask_logits.shape[1], -1)
    if flat.shape[0] == 1:
        return flat[0, lay.pix_flat]
    cls = class_index[lay.rois][lay.pix_slot]
    return flat[cls, lay.pix_flat]


def sample_canvas_points(canvas: torch.Tensor, lay: LevelLayout, slot: torch.Tensor,
                         coords: torch.Tensor) -> torch.Tensor:
    """``point_sample`` (``align_corners=True`` over each ROI, zeros outside) on a canvas.

    Args:
        canvas: (1, C, H, W), 0 in the gaps; slot: (M,) slot of each point; coords: (M, 2)
            box-normalised (x, y) in [0, 1].
    Returns:
        (C, M).
    """
    C = canvas.shape[1]
    flat = canvas[0].reshape(C, -1)
    h, w = lay.h[slot], lay.w[slot]
    g = (2.0 * coords - 1.0).to(canvas.dtype)

    def taps(gc, size):  # grid_sample, align_corners=True: ((g + 1) / 2) * (size - 1)
        ix = ((gc + 1) / 2) * (size - 1).to(gc.dtype)
        i0 = ix.floor()
        w1 = ix - i0
        i0 = torch.minimum(i0.long(), size - 1)
        # The right / lower neighbour is outside the ROI only when w1 = 0 (ix = size - 1): reading
        # the last cell with weight 0 equals grid_sample's zero padding.
        return i0, torch.minimum(i0 + 1, size - 1), 1 - w1, w1

    x0, x1, wx0, wx1 = taps(g[:, 0], w)
    y0, y1, wy0, wy1 = taps(g[:, 1], h)
    Y, X = lay.y0[slot], lay.x0[slot]

    def tap(ys, xs):
        return flat.index_select(1, (Y + ys) * lay.width + X + xs)

    return (wy0 * (wx0 * tap(y0, x0) + wx1 * tap(y0, x1))
            + wy1 * (wx0 * tap(y1, x0) + wx1 * tap(y1, x1)))


def select_uncertain_points(
    u: torch.Tensor, owner: torch.Tensor, kept: torch.Tensor, num_owners: int
) -> torch.Tensor:
    """Per owner, the ``kept[owner]`` entries of largest ``u`` (a ragged top-k).

    Args:
        u: (D,) scores; owner: (D,) int64 in [0, num_owners), non-decreasing; kept: (num_owners,).
    Returns:
        (M,) int64 indices into u, grouped by owner, most uncertain first.
    """
    by_u = torch.argsort(u, descending=True, stable=True)
    order = by_u[torch.argsort(owner[by_u], stable=True)]
    counts = torch.bincount(owner, minlength=num_owners)
    start = torch.cumsum(counts, 0) - counts
    rank = torch.arange(len(u), device=u.device) - start[owner[order]]
    return order[rank < kept[owner[order]]]


def refine_logits_canvas(
    refine_head: nn.Module,
    out: CanvasSegOutput,
    pixel_logits: torch.Tensor,
    pixel_targets: torch.Tensor,
    class_index: torch.Tensor,
    draws: torch.Tensor,
    draw_roi: torch.Tensor,
    kept: torch.Tensor,
) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
    """``roi_refine_logits`` for every ROI: uncertain points, point features of e1 / e2, the two
    heads, soft labels.

    Args:
        pixel_logits: (P_0,) class logits at the level-0 pixels (:func:`class_logits_at_pixels`).
        pixel_targets: (P_0,) GT ROI masks at those pixels.
        class_index: (R,) int64.
        draws: (D, 2) uniform draws, grouped by ROI (:func:`draw_refine_points` order);
            draw_roi: (D,) their ROI; kept: (R,) points kept per ROI.
    Returns:
        (logits (M',), labels (M',)) over all entries (e1 head, then e12 head), or None when no
        point is kept. Same multiset of entries as the per-ROI loop.
    """
    layout = out.layout
    lay0 = layout.levels[0]
    if len(draws) == 0 or int(kept.sum()) == 0:
        return None
    dt = pixel_logits.dtype

    def canvas_of(vals):
        return _scatter_pixels(vals[None].to(dt), lay0)

    slot0 = layout.slots[draw_roi, 0]
    probs = canvas_of(pixel_logits.detach().sigmoid())
    u = calculate_uncertainty(sample_canvas_points(probs, lay0, slot0, draws))[0]
    sel = select_uncertain_points(u, draw_roi, kept, len(kept))
    pts, roi, slot0 = draws[sel], draw_roi[sel], slot0[sel]
    e1 = sample_canvas_points(out.xs[0], lay0, slot0, pts)  # (C1, M)
    labels = sample_canvas_points(canvas_of(pixel_targets), lay0, slot0, pts)[0]
    cls = class_index[roi]
    lg1 = refine_head(e1[None], None)[0][0]  # (K, M)
    logits = [lg1.gather(0, cls[None])[0]]
    labs = [labels]
    has2 = (layout.num_levels[roi] >= 2).nonzero().flatten()
    if len(has2) and len(layout.levels) > 1:
        slot1 = layout.slots[roi[has2], 1]
        e2 = sample_canvas_points(out.xs[1], layout.levels[1], slot1, pts[has2])
        lg12 = refine_head(e1[:, has2][None], e2[None])[1][0]
        logits.append(lg12.gather(0, cls[has2][None])[0])
        labs.append(labels[has2])
    return torch.cat(logits), torch.cat(labs)
